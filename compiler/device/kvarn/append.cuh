// kvarn device library: append (rotate incoming K/V rows by H16 into pool slots) and
// dequantize (records -> fp16 rows) building blocks.
#pragma once

#include "kvarn/common.cuh"
#include "kvarn/params.h"

namespace kvarn {
namespace dev {

template <int KB, int VB, int G, int D, int Q, int WARPS, int STAGES, int SPLITS, int ROWS,
          bool COMPACT, typename T>
struct AppendContext {
  typedef T Type;
  static constexpr int HD = D, NWARPS = WARPS, ROWS_PER_CTA = ROWS;
  static constexpr int PER_LANE = D / 32; ///< contiguous channels per lane
  static constexpr int SHARED_BYTES = 0;
  AppendParams p;
  int warp, lane;
  static __device__ __forceinline__ AppendContext begin(const AppendParams &params) {
    AppendContext c;
    c.p = params;
    c.warp = threadIdx.x / 32;
    c.lane = threadIdx.x % 32;
    return c;
  }
};

/// Rotates one token's K and V rows of every kv head (warp FWHT) and writes its pool row.
template <int KB, int VB, int G, int D, int Q, int W, int S, int SP, int R, bool C, typename T>
__device__ __forceinline__ void rotateRow(AppendContext<KB, VB, G, D, Q, W, S, SP, R, C, T> &c,
                                          int row) {
  constexpr int E = D / 32;
  const int64_t slot = c.p.slotMapping[row];
  if (slot < 0)
    return;
  const float scale = hadamardScale<D>();
  for (int item = c.warp; item < 2 * c.p.numKvHeads; item += W) {
    const int head = item >> 1;
    const bool isValue = item & 1;
    const T *source = static_cast<const T *>(isValue ? c.p.value : c.p.key) +
                      row * (isValue ? c.p.valueStride : c.p.keyStride) + head * D + c.lane * E;
    float x[E];
#pragma unroll
    for (int e = 0; e < E; ++e)
      x[e] = toFloat<T>(source[e]);
    // Step 1. Butterflies inside the lane's contiguous chunk, then across lanes.
#pragma unroll
    for (int h = 1; h < E; h <<= 1)
#pragma unroll
      for (int e = 0; e < E; ++e)
        if ((e & h) == 0) {
          const float a = x[e], b = x[e + h];
          x[e] = a + b;
          x[e + h] = a - b;
        }
#pragma unroll
    for (int laneMask = 1; laneMask < 32; laneMask <<= 1) {
      const bool upper = (c.lane & laneMask) != 0;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const float partner = __shfl_xor_sync(0xffffffffu, x[e], laneMask);
        x[e] = upper ? partner - x[e] : x[e] + partner;
      }
    }
    // Step 2. Scale by fp16(1/sqrt(D)), round to fp16, store.
    Half *target = static_cast<Half *>(isValue ? c.p.poolValue : c.p.poolKey) +
                     (slot * c.p.numKvHeads + head) * D + c.lane * E;
#pragma unroll
    for (int e = 0; e < E; e += 2)
      *reinterpret_cast<uint32_t *>(target + e) = packHalf2(x[e] * scale, x[e + 1] * scale);
  }
}

template <int KB, int VB, int G, int D, int Q, int W, int S, int SP, int R, bool C, typename T>
__device__ __forceinline__ int rowFirst(AppendContext<KB, VB, G, D, Q, W, S, SP, R, C, T> &c) {
  return blockIdx.x * R;
}
template <int KB, int VB, int G, int D, int Q, int W, int S, int SP, int R, bool C, typename T>
__device__ __forceinline__ int rowEnd(AppendContext<KB, VB, G, D, Q, W, S, SP, R, C, T> &c) {
  return min(int(blockIdx.x + 1) * R, c.p.numTokens);
}
template <int KB, int VB, int G, int D, int Q, int W, int S, int SP, int R, bool C, typename T>
__device__ __forceinline__ int rowStep(AppendContext<KB, VB, G, D, Q, W, S, SP, R, C, T> &c) {
  return 1;
}

template <int KB, int VB, int G, int D, int Q, int WARPS, int STAGES, int SPLITS, int ROWS,
          bool COMPACT, typename T>
struct DequantizeContext {
  typedef RecordLayout<KB, VB, G, D, COMPACT> Layout;
  static constexpr int SHARED_BYTES = 0;
  DequantizeParams p;
  int warp, lane;
  static __device__ __forceinline__ DequantizeContext begin(const DequantizeParams &params) {
    DequantizeContext c;
    c.p = params;
    c.warp = threadIdx.x / 32;
    c.lane = threadIdx.x % 32;
    return c;
  }
};

template <int KB, int VB, int G, int D, int Q, int W, int S, int SP, int R, bool C, typename T>
__device__ __forceinline__ int rowFirst(DequantizeContext<KB, VB, G, D, Q, W, S, SP, R, C, T> &c) {
  return blockIdx.x * W + c.warp;
}
template <int KB, int VB, int G, int D, int Q, int W, int S, int SP, int R, bool C, typename T>
__device__ __forceinline__ int rowEnd(DequantizeContext<KB, VB, G, D, Q, W, S, SP, R, C, T> &c) {
  return c.p.numEntries * G;
}
template <int KB, int VB, int G, int D, int Q, int W, int S, int SP, int R, bool C, typename T>
__device__ __forceinline__ int rowStep(DequantizeContext<KB, VB, G, D, Q, W, S, SP, R, C, T> &c) {
  return gridDim.x * W;
}

/// Reconstructs token row `row` (= entry * G + token) of K and V (warp per row), exactly as the
/// CPU reference: (code * s + zp) * s_other in fp32 without contraction.
template <int KB, int VB, int G, int D, int Q, int W, int S, int SP, int R, bool C, typename T>
__device__ __forceinline__ void
dequantizeRow(DequantizeContext<KB, VB, G, D, Q, W, S, SP, R, C, T> &c, int row) {
  typedef RecordLayout<KB, VB, G, D, C> L;
  const int entry = row / G, token = row % G;
  const int block = c.p.entries[2 * entry], head = c.p.entries[2 * entry + 1];
  const unsigned char *rec =
      c.p.cache + (int64_t(block) * c.p.numKvHeads + head) * L::tileBytesAligned;
  const Half *keyScaleCol = reinterpret_cast<const Half *>(rec + L::keyScaleCol);
  const Half *keyZero = reinterpret_cast<const Half *>(rec + L::keyZeroPoint);
  const Half *keyScaleRow = reinterpret_cast<const Half *>(rec + L::keyScaleRow);
  const Half *valueScaleCol = reinterpret_cast<const Half *>(rec + L::valueScaleCol);
  const Half *valueScaleRow = reinterpret_cast<const Half *>(rec + L::valueScaleRow);
  const Half *valueZero = reinterpret_cast<const Half *>(rec + L::valueZeroPoint);
  const float tokenKeyScale = halfToFloat(keyScaleRow[token]);
  const float tokenValueScale = halfToFloat(valueScaleRow[token]);
  const float tokenValueZero = halfToFloat(valueZero[token]);
  Half *keyOut = static_cast<Half *>(c.p.key) + (int64_t(entry) * G + token) * D;
  Half *valueOut = static_cast<Half *>(c.p.value) + (int64_t(entry) * G + token) * D;
  for (int channel = c.lane; channel < D; channel += 32) {
    const int keyBit = token * KB;
    const unsigned keyCode =
        (rec[L::keyPacked + channel * (G * KB / 8) + keyBit / 8] >> (keyBit % 8)) & ((1u << KB) - 1u);
    const float k = __fmul_rn(__fadd_rn(__fmul_rn(float(keyCode), halfToFloat(keyScaleCol[channel])),
                                        halfToFloat(keyZero[channel])),
                              tokenKeyScale);
    keyOut[channel] = floatToHalf(k);
    const int valueBit = channel * VB;
    const unsigned valueCode = (rec[L::valuePacked + token * (D * VB / 8) + valueBit / 8] >>
                                (valueBit % 8)) & ((1u << VB) - 1u);
    const float v = __fmul_rn(__fadd_rn(__fmul_rn(float(valueCode), tokenValueScale), tokenValueZero),
                              halfToFloat(valueScaleCol[channel]));
    valueOut[channel] = floatToHalf(v);
  }
}

} // namespace dev
} // namespace kvarn
