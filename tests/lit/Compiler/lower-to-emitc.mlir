// RUN: kvarn-opt %s -kvarn-specialize -kvarn-lower-to-tile -kvarn-lower-to-emitc | FileCheck %s
// Kernels become extern "C" __global__ EmitC functions calling the device library; the format,
// GQA ratio, dtype and schedule travel as template arguments of the context struct.

// CHECK: emitc.include "kvarn/device.cuh"
// CHECK-LABEL: emitc.func @decode(%{{.*}}: !emitc.opaque<"kvarn::dev::DecodeParams">)
// CHECK-SAME: specifiers = ["extern \22C\22 __global__", "__launch_bounds__(64)"]
// CHECK: %[[CTX:.*]] = call_opaque "kvarn::dev::DecodeContext<4, 4, 64, 256, 5, 2, 1, 3, 4, false, kvarn::dev::BFloat16, 2, 2, false, true>::begin"
// CHECK: call_opaque "kvarn::dev::pageFirst"(%[[CTX]])
// CHECK: call_opaque "kvarn::dev::rotateQuery"(%[[CTX]])
// CHECK: call_opaque "kvarn::dev::loadKeys"(%[[CTX]], %{{.*}}, %{{.*}}) : (!emitc.opaque
// CHECK: call_opaque "kvarn::dev::loadValues"(%[[CTX]], %{{.*}}, %{{.*}}) : (!emitc.opaque
// CHECK-NEXT: call_opaque "kvarn::dev::releaseMerge"(%[[CTX]])
// CHECK: for
// CHECK: call_opaque "kvarn::dev::scoresOnCodes"(%[[CTX]], %{{.*}}, %{{.*}}) : (!emitc.opaque
// CHECK: call_opaque "kvarn::dev::loadKeys"(%[[CTX]], %{{.*}}, %{{.*}}) : (!emitc.opaque
// CHECK: call_opaque "kvarn::dev::pvOnCodes"(%[[CTX]], %{{.*}}) : (!emitc.opaque
// CHECK: call_opaque "kvarn::dev::loadValues"(%[[CTX]], %{{.*}}, %{{.*}}) : (!emitc.opaque
// CHECK: call_opaque "kvarn::dev::storeOutput"(%[[CTX]]) {template_args = [true]}
// CHECK-LABEL: emitc.func @decode_merge
// CHECK: call_opaque "kvarn::dev::mergeSplits"
module attributes {kvarn.target = "sm_80"} {
func.func @decode(%q: memref<?x10x256xbf16>, %cache: memref<?x2x32768xi8>,
                  %pk: memref<?x64x2x256xf16>, %pv: memref<?x64x2x256xf16>,
                  %b2s: memref<?xi32>, %table: memref<?x?xi32>, %lens: memref<?xi32>,
                  %out: memref<?x10x256xbf16>) {
  kvarn.decode %q, %cache, %pk, %pv, %b2s, %table, %lens, %out {
      format = #kvarn.format<kvarn_k4v4_g64, head_dim = 256>, q_per_kv = 5 : i64,
      softmax_scale = 0.0 : f32, schedule = #kvarn.schedule<decode, warps = 2, splits = 3>}
      : memref<?x10x256xbf16>, memref<?x2x32768xi8>, memref<?x64x2x256xf16>,
        memref<?x64x2x256xf16>, memref<?xi32>, memref<?x?xi32>, memref<?xi32>,
        memref<?x10x256xbf16>
  return
}
}
