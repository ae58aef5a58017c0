// RUN: kvarn-opt %s | kvarn-opt | FileCheck %s
// Every operation-level op, attribute and type round-trips.

module attributes {kvarn.target = "sm_90a"} {

// CHECK-LABEL: func.func @decode
// CHECK: kvarn.decode %{{.*}} {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>, q_per_kv = 8 : i64, schedule = #kvarn.schedule<decode, stages = 2>, softmax_scale = 0.000000e+00 : f32}
func.func @decode(%q: memref<?x64x128xf16>, %cache: memref<?x8x13824xi8>,
                  %pk: memref<?x128x8x128xf16>, %pv: memref<?x128x8x128xf16>,
                  %b2s: memref<?xi32>, %table: memref<?x?xi32>, %lens: memref<?xi32>,
                  %out: memref<?x64x128xf16>) {
  kvarn.decode %q, %cache, %pk, %pv, %b2s, %table, %lens, %out {
      format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>, q_per_kv = 8 : i64,
      softmax_scale = 0.0 : f32, schedule = #kvarn.schedule<decode, warps = 4, stages = 2>}
      : memref<?x64x128xf16>, memref<?x8x13824xi8>, memref<?x128x8x128xf16>,
        memref<?x128x8x128xf16>, memref<?xi32>, memref<?x?xi32>, memref<?xi32>,
        memref<?x64x128xf16>
  return
}

// CHECK-LABEL: func.func @extend_bf16
// CHECK: kvarn.extend
// CHECK-SAME: #kvarn.format<kvarn_k4v4_g64, head_dim = 64>
func.func @extend_bf16(%q: memref<?x10x64xbf16>, %starts: memref<?xi32>,
                       %cache: memref<?x2x4864xi8>, %pk: memref<?x64x2x64xf16>,
                       %pv: memref<?x64x2x64xf16>, %b2s: memref<?xi32>, %table: memref<?x?xi32>,
                       %lens: memref<?xi32>, %out: memref<?x10x64xbf16>) {
  kvarn.extend %q, %starts, %cache, %pk, %pv, %b2s, %table, %lens, %out {
      format = #kvarn.format<kvarn_k4v4_g64, head_dim = 64>, q_per_kv = 5 : i64,
      softmax_scale = 0.125 : f32, schedule = #kvarn.schedule<extend>}
      : memref<?x10x64xbf16>, memref<?xi32>, memref<?x2x4864xi8>, memref<?x64x2x64xf16>,
        memref<?x64x2x64xf16>, memref<?xi32>, memref<?x?xi32>, memref<?xi32>,
        memref<?x10x64xbf16>
  return
}

// CHECK-LABEL: func.func @append
// CHECK: kvarn.append {{.*}}schedule = #kvarn.schedule<append, rows_per_cta = 8>
func.func @append(%k: memref<?x8x256xbf16>, %v: memref<?x8x256xbf16>, %slots: memref<?xi64>,
                  %pk: memref<?x128x8x256xf16>, %pv: memref<?x128x8x256xf16>) {
  kvarn.append %k, %v, %slots, %pk, %pv {
      format = #kvarn.format<kvarn_k2v2_g128, head_dim = 256>,
      schedule = #kvarn.schedule<append, rows_per_cta = 8>}
      : memref<?x8x256xbf16>, memref<?x8x256xbf16>, memref<?xi64>, memref<?x128x8x256xf16>,
        memref<?x128x8x256xf16>
  return
}

// CHECK-LABEL: func.func @flush
// CHECK: #kvarn.format<kvarn_k4v2_g128, head_dim = 256, iterations = 16, layout = compact>
// CHECK-SAME: schedule = #kvarn.schedule<flush, warps = 8, mma = "none">
func.func @flush(%pk: memref<?x128x4x256xf16>, %pv: memref<?x128x4x256xf16>,
                 %entries: memref<?x3xi32>, %cache: memref<?x4x26880xi8>) {
  kvarn.flush %pk, %pv, %entries, %cache {
      format = #kvarn.format<kvarn_k4v2_g128, head_dim = 256, iterations = 16, layout = compact>,
      schedule = #kvarn.schedule<flush, warps = 8, mma = "none">}
      : memref<?x128x4x256xf16>, memref<?x128x4x256xf16>, memref<?x3xi32>, memref<?x4x26880xi8>
  return
}

// CHECK-LABEL: func.func @dequantize
// CHECK: kvarn.dequantize
func.func @dequantize(%cache: memref<?x8x32768xi8>, %entries: memref<?x2xi32>,
                      %k: memref<?x128x256xf16>, %v: memref<?x128x256xf16>) {
  kvarn.dequantize %cache, %entries, %k, %v {
      format = #kvarn.format<k4v2_g128, head_dim = 256>, schedule = #kvarn.schedule<dequantize>}
      : memref<?x8x32768xi8>, memref<?x2xi32>, memref<?x128x256xf16>, memref<?x128x256xf16>
  return
}

// CHECK-LABEL: func.func @tile_ops
// CHECK: %[[CTX:.*]] = kvarn.tile.begin %{{.*}} {dtype = f16, format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>, q_per_kv = 8 : i64, schedule = #kvarn.schedule<decode, stages = 2>} : !kvarn.params<decode> -> !kvarn.context<decode>
// CHECK: kvarn.tile.rotate_query %[[CTX]]
// CHECK: kvarn.tile.release_merge %[[CTX]]
// CHECK: %[[FIRST:.*]], %[[END:.*]], %[[STEP:.*]] = kvarn.tile.page_range %[[CTX]]
// CHECK: kvarn.tile.is_pool_page %[[CTX]], %[[FIRST]]
// CHECK: %[[SLOT:.*]] = arith.constant 1 : i32
// CHECK: kvarn.tile.load_record %[[CTX]], %[[FIRST]], slot %[[SLOT]]
// CHECK: kvarn.tile.scores_on_codes %[[CTX]], %[[FIRST]], slot %[[SLOT]]
// CHECK: kvarn.tile.online_softmax %[[CTX]], slot %[[SLOT]]
// CHECK: kvarn.tile.pv_on_codes %[[CTX]], slot %[[SLOT]]
// CHECK: kvarn.tile.attend_pool_page %[[CTX]], %[[END]]
// CHECK: kvarn.tile.merge_warps %[[CTX]]
// CHECK: kvarn.tile.store_output %[[CTX]] {partial = true}
// CHECK: kvarn.tile.merge_splits %[[CTX]]
func.func @tile_ops(%params: !kvarn.params<decode>) {
  %ctx = kvarn.tile.begin %params {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      schedule = #kvarn.schedule<decode, stages = 2>, q_per_kv = 8 : i64, dtype = f16}
      : !kvarn.params<decode> -> !kvarn.context<decode>
  kvarn.tile.rotate_query %ctx : !kvarn.context<decode>
  kvarn.tile.release_merge %ctx : !kvarn.context<decode>
  %first, %end, %step = kvarn.tile.page_range %ctx : !kvarn.context<decode> -> i32, i32, i32
  %pool = kvarn.tile.is_pool_page %ctx, %first : !kvarn.context<decode>, i32
  %slot = arith.constant 1 : i32
  kvarn.tile.load_record %ctx, %first, slot %slot : !kvarn.context<decode>, i32
  kvarn.tile.scores_on_codes %ctx, %first, slot %slot : !kvarn.context<decode>, i32
  kvarn.tile.online_softmax %ctx, slot %slot : !kvarn.context<decode>
  kvarn.tile.pv_on_codes %ctx, slot %slot : !kvarn.context<decode>
  kvarn.tile.attend_pool_page %ctx, %end : !kvarn.context<decode>, i32
  kvarn.tile.merge_warps %ctx : !kvarn.context<decode>
  kvarn.tile.store_output %ctx {partial = true} : !kvarn.context<decode>
  kvarn.tile.merge_splits %ctx : !kvarn.context<decode>
  return
}

// CHECK-LABEL: func.func @split_loads
// CHECK: kvarn.tile.load_keys %[[CTX:.*]], %[[PAGE:.*]], slot %[[SLOT:.*]] : !kvarn.context<decode>, i32
// CHECK-NEXT: kvarn.tile.load_values %[[CTX]], %[[PAGE]], slot %[[SLOT]] : !kvarn.context<decode>, i32
func.func @split_loads(%params: !kvarn.params<decode>, %page: i32) {
  %ctx = kvarn.tile.begin %params {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      schedule = #kvarn.schedule<decode>, q_per_kv = 8 : i64, dtype = f16}
      : !kvarn.params<decode> -> !kvarn.context<decode>
  %slot = arith.constant 0 : i32
  kvarn.tile.load_keys %ctx, %page, slot %slot : !kvarn.context<decode>, i32
  kvarn.tile.load_values %ctx, %page, slot %slot : !kvarn.context<decode>, i32
  return
}

// CHECK-LABEL: func.func @flush_tile_ops
// CHECK: kvarn.tile.load_tile %{{.*}} {tensor = 1 : i64}
// CHECK: kvarn.tile.normalize %{{.*}} {iterations = 8 : i64}
// CHECK: kvarn.tile.quantize_pack %{{.*}} {tensor = 1 : i64}
// CHECK: kvarn.tile.row_range
// CHECK: kvarn.tile.rotate_row
// CHECK: kvarn.tile.dequantize_row
func.func @flush_tile_ops(%params: !kvarn.params<flush>, %other: !kvarn.context<append>,
                          %deq: !kvarn.context<dequantize>, %row: i32) {
  %ctx = kvarn.tile.begin %params {format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>,
      schedule = #kvarn.schedule<flush>, q_per_kv = 1 : i64, dtype = f16}
      : !kvarn.params<flush> -> !kvarn.context<flush>
  kvarn.tile.load_tile %ctx {tensor = 1 : i64} : !kvarn.context<flush>
  kvarn.tile.normalize %ctx {iterations = 8 : i64} : !kvarn.context<flush>
  kvarn.tile.quantize_pack %ctx {tensor = 1 : i64} : !kvarn.context<flush>
  %a, %b, %c = kvarn.tile.row_range %other : !kvarn.context<append> -> i32, i32, i32
  kvarn.tile.rotate_row %other, %row : !kvarn.context<append>, i32
  kvarn.tile.dequantize_row %deq, %row : !kvarn.context<dequantize>, i32
  return
}

}
