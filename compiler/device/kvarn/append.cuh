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
  /// A half-warp rotates one row of one tensor: lane l of it holds channels [E*l, E*l + E), so
  /// log2(E) butterfly levels run inside the lane and four across the half-warp (shuffles).
  static constexpr int E = D / 16;
  static constexpr int WORDS = E / 2; ///< 32-bit words of input per lane and row
  /// Heads a warp loads before it rotates any: 4 keeps the kernel at 56 registers (more warps per
  /// SM); 8 (72 registers) was 4-5% slower (docs/benchmarks.md).
  static constexpr int HEADS_PER_PASS = 4;
  static constexpr int SHARED_BYTES = 0;
  static_assert(D % 32 == 0 && E >= 2, "head_dim must be a multiple of 32");
  AppendParams p;
  int warp, lane, half, halfLane;
  bool vectorLoads; ///< inputs aligned for E-element vector loads (else element loads)
  static __device__ __forceinline__ AppendContext begin(const AppendParams &params) {
    AppendContext c;
    c.p = params;
    c.warp = threadIdx.x / 32;
    c.lane = threadIdx.x % 32;
    c.half = c.lane / 16;
    c.halfLane = c.lane % 16;
    constexpr uint64_t vectorBytes = pairVectorBytes<WORDS>();
    c.vectorLoads = ((reinterpret_cast<uint64_t>(params.key) | reinterpret_cast<uint64_t>(params.value) |
                      uint64_t(params.keyStride * 2) | uint64_t(params.valueStride * 2)) %
                     vectorBytes) == 0;
    return c;
  }
};

/// Rotates one token's K and V rows of every kv head (half-warp FWHT per row) and writes its pool
/// rows. One warp owns the token: it takes HEADS_PER_PASS heads per pass (K in its lower
/// half-warp, V in the upper) and issues all their loads, and the slot lookup, before it rotates
/// any, so a warp waits on one memory round trip per pass.
template <int KB, int VB, int G, int D, int Q, int W, int S, int SP, int R, bool C, typename T>
__device__ __forceinline__ void rotateRow(AppendContext<KB, VB, G, D, Q, W, S, SP, R, C, T> &c,
                                          int row) {
  typedef AppendContext<KB, VB, G, D, Q, W, S, SP, R, C, T> Ctx;
  constexpr int E = Ctx::E, WORDS = Ctx::WORDS, PASS = Ctx::HEADS_PER_PASS;
  const int64_t slot = c.p.slotMapping[row]; // not waited for until the stores
  const T *tensor = static_cast<const T *>(c.half ? c.p.value : c.p.key) +
                    row * (c.half ? c.p.valueStride : c.p.keyStride) + c.halfLane * E;
  Half *pool = static_cast<Half *>(c.half ? c.p.poolValue : c.p.poolKey) + c.halfLane * E;
  const float scale = hadamardScale<D>();
  for (int first = 0; first < c.p.numKvHeads; first += PASS) {
    // Step 1. Every load of the pass.
    uint32_t words[PASS][WORDS];
#pragma unroll
    for (int k = 0; k < PASS; ++k) {
      const int head = first + k;
      if (head >= c.p.numKvHeads)
        break;
      loadPairs(words[k], tensor + head * D, c.vectorLoads);
    }
    // Step 2. Butterflies inside the lane's contiguous chunk, then across the half-warp; scale by
    // fp16(1/sqrt(D)), round to fp16, store.
#pragma unroll
    for (int k = 0; k < PASS; ++k) {
      const int head = first + k;
      if (head >= c.p.numKvHeads)
        break;
      float x[E];
#pragma unroll
      for (int w = 0; w < WORDS; ++w) {
        const float2 pair = unpackPair<T>(words[k][w]);
        x[2 * w] = pair.x;
        x[2 * w + 1] = pair.y;
      }
      laneGroupFwht<E, 16>(x, c.halfLane);
      if (slot < 0)
        continue;
      uint32_t out[WORDS];
#pragma unroll
      for (int w = 0; w < WORDS; ++w)
        out[w] = packHalf2(x[2 * w] * scale, x[2 * w + 1] * scale);
      static_assert(4 * (WORDS < 4 ? WORDS : 4) == BufferAlignment::appendPool(D),
                    "the C API checks the pools against the stores' alignment");
      storeWords(pool + (slot * c.p.numKvHeads + head) * D, out);
    }
  }
}

template <int KB, int VB, int G, int D, int Q, int W, int S, int SP, int R, bool C, typename T>
__device__ __forceinline__ int rowFirst(AppendContext<KB, VB, G, D, Q, W, S, SP, R, C, T> &c) {
  return blockIdx.x * R + c.warp;
}
template <int KB, int VB, int G, int D, int Q, int W, int S, int SP, int R, bool C, typename T>
__device__ __forceinline__ int rowEnd(AppendContext<KB, VB, G, D, Q, W, S, SP, R, C, T> &c) {
  return min(int(blockIdx.x + 1) * R, c.p.numTokens);
}
template <int KB, int VB, int G, int D, int Q, int W, int S, int SP, int R, bool C, typename T>
__device__ __forceinline__ int rowStep(AppendContext<KB, VB, G, D, Q, W, S, SP, R, C, T> &c) {
  return W; // the CTA's warps take its rows in turn
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
