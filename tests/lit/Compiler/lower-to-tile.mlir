// RUN: kvarn-opt %s -kvarn-specialize -kvarn-lower-to-tile | FileCheck %s
// The schedule shapes the kernel: the query rotation comes first (its loads would otherwise
// queue behind every warp's page copies); one stage loads the first page (K half, V half), then
// loads the next page's K half once the scores free it and its V half once
// the output update frees it (on the pool-page path too, so every path closes the same copy
// groups); two stages run a rolling
// pipeline (a prologue load, then the next page's load into the other slot before each page's
// compute, one copy of the compute code with a computed slot); one warp needs no warp merge; a
// fixed single split needs no merge kernel, and so releases none (release_merge lets the merge
// kernel launch early). The one-stage order below (a page's load_keys before its is_pool_page and
// its load_values) is also what lets the device code look each page up once (REUSE_LOOKUP in
// decode.cuh), so these CHECK-NEXT lines guard it.

// CHECK-LABEL: func.func @one_stage(%{{.*}}: !kvarn.params<decode>) attributes {kvarn.kernel, kvarn.threads = 128 : i64}
// CHECK: %[[CTX:.*]] = kvarn.tile.begin
// CHECK: %[[FIRST:.*]], %[[END:.*]], %[[STEP:.*]] = kvarn.tile.page_range %[[CTX]]
// CHECK-NEXT: kvarn.tile.rotate_query %[[CTX]]
// CHECK: kvarn.tile.load_keys %[[CTX]], %[[FIRST]], slot %[[SLOT0:.*]] :
// CHECK-NEXT: kvarn.tile.load_values %[[CTX]], %[[FIRST]], slot %[[SLOT0]] :
// CHECK-NEXT: kvarn.tile.release_merge %[[CTX]]
// CHECK: scf.for %[[PAGE:.*]] = %[[FIRST]] to %[[END]] step %[[STEP]] : i32 {
// CHECK:   %[[ZERO:.*]] = arith.constant 0 : i32
// CHECK:   %[[NEXT:.*]] = arith.addi %[[PAGE]], %[[STEP]] : i32
// CHECK:   %[[POOL:.*]] = kvarn.tile.is_pool_page %[[CTX]], %[[PAGE]]
// CHECK:   scf.if %[[POOL]] {
// CHECK-NEXT: kvarn.tile.attend_pool_page %[[CTX]], %[[PAGE]]
// CHECK-NEXT: kvarn.tile.load_keys %[[CTX]], %[[NEXT]], slot %[[ZERO]]
// CHECK-NEXT: } else {
// CHECK-NEXT: kvarn.tile.scores_on_codes %[[CTX]], %[[PAGE]], slot %[[ZERO]]
// CHECK-NEXT: kvarn.tile.load_keys %[[CTX]], %[[NEXT]], slot %[[ZERO]]
// CHECK-NEXT: kvarn.tile.online_softmax %[[CTX]], slot %[[ZERO]]
// CHECK-NEXT: kvarn.tile.pv_on_codes %[[CTX]], slot %[[ZERO]]
// CHECK-NEXT: }
// CHECK-NEXT: kvarn.tile.load_values %[[CTX]], %[[NEXT]], slot %[[ZERO]]
// CHECK-NOT: kvarn.tile.load_record
// CHECK: kvarn.tile.merge_warps %[[CTX]]
// CHECK: kvarn.tile.store_output %[[CTX]] {partial = true}
// CHECK-LABEL: func.func @one_stage_merge
// CHECK: kvarn.tile.merge_splits
module attributes {kvarn.target = "sm_90a"} {
func.func @one_stage(%q: memref<?x64x128xf16>, %cache: memref<?x8x13824xi8>,
                     %pk: memref<?x128x8x128xf16>, %pv: memref<?x128x8x128xf16>,
                     %b2s: memref<?xi32>, %table: memref<?x?xi32>, %lens: memref<?xi32>,
                     %out: memref<?x64x128xf16>) {
  kvarn.decode %q, %cache, %pk, %pv, %b2s, %table, %lens, %out {
      format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>, q_per_kv = 8 : i64,
      softmax_scale = 0.0 : f32, schedule = #kvarn.schedule<decode>}
      : memref<?x64x128xf16>, memref<?x8x13824xi8>, memref<?x128x8x128xf16>,
        memref<?x128x8x128xf16>, memref<?xi32>, memref<?x?xi32>, memref<?xi32>,
        memref<?x64x128xf16>
  return
}

// CHECK-LABEL: func.func @two_stages
// CHECK: %[[CTX:.*]] = kvarn.tile.begin
// CHECK: %[[FIRST:.*]], %[[END:.*]], %[[STEP:.*]] = kvarn.tile.page_range %[[CTX]]
// CHECK-NEXT: kvarn.tile.rotate_query %[[CTX]]
// CHECK: kvarn.tile.load_record %[[CTX]], %[[FIRST]], slot %{{.*}}
// CHECK-NOT: kvarn.tile.release_merge
// CHECK: scf.for %[[PAGE:.*]] = %[[FIRST]] to %[[END]] step %[[STEP]] : i32 {
// CHECK:   %[[TWO:.*]] = arith.constant 2 : i32
// CHECK:   %[[OFFSET:.*]] = arith.subi %[[PAGE]], %[[FIRST]] : i32
// CHECK:   %[[K:.*]] = arith.divsi %[[OFFSET]], %[[STEP]] : i32
// CHECK:   %[[SLOT:.*]] = arith.remsi %[[K]], %[[TWO]] : i32
// CHECK:   %[[NEXTK:.*]] = arith.addi %[[K]], %{{.*}} : i32
// CHECK:   %[[AHEADSLOT:.*]] = arith.remsi %[[NEXTK]], %[[TWO]] : i32
// CHECK:   %[[AHEAD:.*]] = arith.addi %[[PAGE]], %[[STEP]] : i32
// CHECK-NOT: kvarn.tile.load_keys
// CHECK:   kvarn.tile.load_record %[[CTX]], %[[AHEAD]], slot %[[AHEADSLOT]]
// CHECK:   kvarn.tile.scores_on_codes %[[CTX]], %[[PAGE]], slot %[[SLOT]]
// CHECK:   kvarn.tile.pv_on_codes %[[CTX]], slot %[[SLOT]]
// CHECK-NOT: kvarn.tile.scores_on_codes
// CHECK-NOT: kvarn.tile.merge_warps
// CHECK: kvarn.tile.store_output %[[CTX]] {partial = false}
// CHECK-NOT: func.func @two_stages_merge
func.func @two_stages(%q: memref<?x64x128xf16>, %cache: memref<?x8x13824xi8>,
                      %pk: memref<?x128x8x128xf16>, %pv: memref<?x128x8x128xf16>,
                      %b2s: memref<?xi32>, %table: memref<?x?xi32>, %lens: memref<?xi32>,
                      %out: memref<?x64x128xf16>) {
  kvarn.decode %q, %cache, %pk, %pv, %b2s, %table, %lens, %out {
      format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>, q_per_kv = 8 : i64,
      softmax_scale = 0.0 : f32, schedule = #kvarn.schedule<decode, warps = 1, stages = 2, splits = 1>}
      : memref<?x64x128xf16>, memref<?x8x13824xi8>, memref<?x128x8x128xf16>,
        memref<?x128x8x128xf16>, memref<?xi32>, memref<?x?xi32>, memref<?xi32>,
        memref<?x64x128xf16>
  return
}

// CHECK-LABEL: func.func @flush
// CHECK: %[[CTX:.*]] = kvarn.tile.begin %{{.*}} : !kvarn.params<flush> -> !kvarn.context<flush>
// CHECK-NEXT: kvarn.tile.load_tile %[[CTX]] {tensor = 0 : i64}
// CHECK-NEXT: kvarn.tile.normalize %[[CTX]] {iterations = 16 : i64}
// CHECK-NEXT: kvarn.tile.quantize_pack %[[CTX]] {tensor = 0 : i64}
// CHECK-NEXT: kvarn.tile.load_tile %[[CTX]] {tensor = 1 : i64}
// CHECK-NEXT: kvarn.tile.normalize %[[CTX]] {iterations = 16 : i64}
// CHECK-NEXT: kvarn.tile.quantize_pack %[[CTX]] {tensor = 1 : i64}
func.func @flush(%pk: memref<?x128x8x128xf16>, %pv: memref<?x128x8x128xf16>,
                 %entries: memref<?x3xi32>, %cache: memref<?x8x13824xi8>) {
  kvarn.flush %pk, %pv, %entries, %cache {
      format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128, iterations = 16>,
      schedule = #kvarn.schedule<flush, warps = 8>}
      : memref<?x128x8x128xf16>, memref<?x128x8x128xf16>, memref<?x3xi32>, memref<?x8x13824xi8>
  return
}

// CHECK-LABEL: func.func @append
// CHECK: %[[CTX:.*]] = kvarn.tile.begin {{.*}}dtype = bf16
// CHECK: %[[FIRST:.*]], %[[END:.*]], %[[STEP:.*]] = kvarn.tile.row_range %[[CTX]]
// CHECK: scf.for %[[ROW:.*]] = %[[FIRST]] to %[[END]] step %[[STEP]] : i32 {
// CHECK-NEXT: kvarn.tile.rotate_row %[[CTX]], %[[ROW]]
func.func @append(%k: memref<?x8x128xbf16>, %v: memref<?x8x128xbf16>, %slots: memref<?xi64>,
                  %pk: memref<?x128x8x128xf16>, %pv: memref<?x128x8x128xf16>) {
  kvarn.append %k, %v, %slots, %pk, %pv {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      schedule = #kvarn.schedule<append>}
      : memref<?x8x128xbf16>, memref<?x8x128xbf16>, memref<?xi64>, memref<?x128x8x128xf16>,
        memref<?x128x8x128xf16>
  return
}

// CHECK-LABEL: func.func @dequantize
// CHECK: scf.for
// CHECK-NEXT: kvarn.tile.dequantize_row
func.func @dequantize(%cache: memref<?x8x13824xi8>, %entries: memref<?x2xi32>,
                      %k: memref<?x128x128xf16>, %v: memref<?x128x128xf16>) {
  kvarn.dequantize %cache, %entries, %k, %v {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      schedule = #kvarn.schedule<dequantize>}
      : memref<?x8x13824xi8>, memref<?x2xi32>, memref<?x128x128xf16>, memref<?x128x128xf16>
  return
}
}
