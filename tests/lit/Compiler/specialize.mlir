// RUN: kvarn-opt %s -kvarn-specialize | FileCheck %s
// kvarn-specialize resolves the defaults: softmax_scale 0 -> 1/sqrt(D), heads_per_cta 0 -> Q,
// and records the record size and threads per CTA.

// CHECK-LABEL: func.func @decode
// CHECK: kvarn.decode
// CHECK-SAME: kvarn.threads = 256 : i64, kvarn.tile_bytes = 13824 : i64
// CHECK-SAME: schedule = #kvarn.schedule<decode, warps = 8, heads_per_cta = 8>
// CHECK-SAME: softmax_scale = 0.0883883461 : f32
func.func @decode(%q: memref<?x64x128xf16>, %cache: memref<?x8x13824xi8>,
                  %pk: memref<?x128x8x128xf16>, %pv: memref<?x128x8x128xf16>,
                  %b2s: memref<?xi32>, %table: memref<?x?xi32>, %lens: memref<?xi32>,
                  %out: memref<?x64x128xf16>) {
  kvarn.decode %q, %cache, %pk, %pv, %b2s, %table, %lens, %out {
      format = #kvarn.format<kvarn_k4v2_g128, head_dim = 128>, q_per_kv = 8 : i64,
      softmax_scale = 0.0 : f32, schedule = #kvarn.schedule<decode, warps = 8>}
      : memref<?x64x128xf16>, memref<?x8x13824xi8>, memref<?x128x8x128xf16>,
        memref<?x128x8x128xf16>, memref<?xi32>, memref<?x?xi32>, memref<?xi32>,
        memref<?x64x128xf16>
  return
}

// CHECK-LABEL: func.func @explicit_scale
// CHECK: softmax_scale = 1.250000e-01 : f32
func.func @explicit_scale(%q: memref<?x4x64xbf16>, %cache: memref<?x1x3840xi8>,
                          %pk: memref<?x64x1x64xf16>, %pv: memref<?x64x1x64xf16>,
                          %b2s: memref<?xi32>, %table: memref<?x?xi32>, %lens: memref<?xi32>,
                          %out: memref<?x4x64xbf16>) {
  kvarn.decode %q, %cache, %pk, %pv, %b2s, %table, %lens, %out {
      format = #kvarn.format<kvarn_k4v2_g64, head_dim = 64>, q_per_kv = 4 : i64,
      softmax_scale = 0.125 : f32, schedule = #kvarn.schedule<decode>}
      : memref<?x4x64xbf16>, memref<?x1x3840xi8>, memref<?x64x1x64xf16>, memref<?x64x1x64xf16>,
        memref<?xi32>, memref<?x?xi32>, memref<?xi32>, memref<?x4x64xbf16>
  return
}
