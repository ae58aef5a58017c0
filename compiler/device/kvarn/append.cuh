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
  /// Lane layout of a row: D channels over ROW_LANES lanes, lane l of the row's lane group
  /// holding PIECES pieces of PIECE contiguous channels (one vector load and store each):
  /// channels PIECE * ROW_LANES * k + PIECE * l + j. A warp instruction covers 32 / ROW_LANES
  /// rows (K and V of ROW_HEADS heads), so the transform runs log2(E) levels inside the lane and
  /// log2(ROW_LANES) across the group, a shuffle per value and level. Eight lanes per row (three
  /// levels of D / 8 values, four rows per instruction) issue three quarters of the shuffles of
  /// sixteen (four levels of D / 16 values, two rows) at the same registers: D = 128 ran 2%
  /// faster; four lanes (64 registers) gained less, two (96 registers) lost 11%
  /// (docs/benchmarks.md).
  static constexpr int PIECE = D / 16 < 8 ? D / 16 : 8;
  static constexpr int ROW_LANES = 8, ROW_HEADS = 16 / ROW_LANES;
  static constexpr int E = D / ROW_LANES, PIECES = E / PIECE;
  static constexpr int WORDS = PIECE / 2; ///< 32-bit words of input per piece
  /// Row groups a warp loads before it rotates any: four heads per pass keep the D = 128 kernel
  /// at 56 registers (more warps per SM); eight (72 registers, with half-warp rows) were 4-5%
  /// slower, two (48 registers) 3% slower (docs/benchmarks.md).
  static constexpr int GROUPS = 4 / ROW_HEADS;
  static constexpr int SHARED_BYTES = 0;
  static_assert(D % 64 == 0 && PIECE >= 4 && PIECES * PIECE == E,
                "head_dim must be a multiple of 64");
  static_assert(2 * PIECE == BufferAlignment::appendPool(D),
                "the C API checks the pools against the pieces' stores (storeWords)");
  AppendParams p;
  int warp, lane, groupLane, tensor, headOffset;
  bool vectorLoads; ///< inputs aligned for PIECE-element vector loads (else element loads)
  static __device__ __forceinline__ AppendContext begin(const AppendParams &params) {
    AppendContext c;
    c.p = params;
    c.warp = threadIdx.x / 32;
    c.lane = threadIdx.x % 32;
    c.groupLane = c.lane % ROW_LANES;
    c.tensor = (c.lane / ROW_LANES) & 1;
    c.headOffset = c.lane / ROW_LANES / 2;
    constexpr uint64_t vectorBytes = pairVectorBytes<WORDS>();
    c.vectorLoads = ((reinterpret_cast<uint64_t>(params.key) | reinterpret_cast<uint64_t>(params.value) |
                      uint64_t(params.keyStride * 2) | uint64_t(params.valueStride * 2)) %
                     vectorBytes) == 0;
    return c;
  }
};

/// Rotates one token's K and V rows of every kv head and writes its pool rows. One warp owns the
/// token: per pass it issues the loads of GROUPS row groups (ROW_HEADS heads each, K and V) and
/// the slot lookup before it rotates any, so a warp waits on one memory round trip per pass. The
/// transform's levels run in ascending channel-bit order (inside a piece, across the group's
/// lanes, across pieces), the natural-order FWHT's, whatever the layout.
template <int KB, int VB, int G, int D, int Q, int W, int S, int SP, int R, bool C, typename T>
__device__ __forceinline__ void rotateRow(AppendContext<KB, VB, G, D, Q, W, S, SP, R, C, T> &c,
                                          int row) {
  typedef AppendContext<KB, VB, G, D, Q, W, S, SP, R, C, T> Ctx;
  constexpr int PIECE = Ctx::PIECE, PIECES = Ctx::PIECES, E = Ctx::E, L = Ctx::ROW_LANES,
                WORDS = Ctx::WORDS, GROUPS = Ctx::GROUPS, HEADS = Ctx::ROW_HEADS;
  const int64_t slot = c.p.slotMapping[row]; // not waited for until the stores
  const T *tensor = static_cast<const T *>(c.tensor ? c.p.value : c.p.key) +
                    row * (c.tensor ? c.p.valueStride : c.p.keyStride) + PIECE * c.groupLane;
  Half *pool = static_cast<Half *>(c.tensor ? c.p.poolValue : c.p.poolKey) + PIECE * c.groupLane;
  const float scale = hadamardScale<D>();
  for (int first = 0; first < c.p.numKvHeads; first += HEADS * GROUPS) {
    // Step 1. Every load of the pass (zeros for heads past the last: their lanes still take
    // part in the shuffles).
    uint32_t words[GROUPS][PIECES][WORDS];
#pragma unroll
    for (int g = 0; g < GROUPS; ++g) {
      const int head = first + g * HEADS + c.headOffset;
#pragma unroll
      for (int k = 0; k < PIECES; ++k) {
        if (head < c.p.numKvHeads)
          loadPairs(words[g][k], tensor + head * D + PIECE * L * k, c.vectorLoads);
        else
#pragma unroll
          for (int w = 0; w < WORDS; ++w)
            words[g][k][w] = 0;
      }
    }
    // Step 2. Butterflies inside the pieces, across the lane group, across the pieces; scale by
    // fp16(1/sqrt(D)), round to fp16, store.
#pragma unroll
    for (int g = 0; g < GROUPS; ++g) {
      const int head = first + g * HEADS + c.headOffset;
      float x[E];
#pragma unroll
      for (int k = 0; k < PIECES; ++k)
#pragma unroll
        for (int w = 0; w < WORDS; ++w) {
          const float2 pair = unpackPair<T>(words[g][k][w]);
          x[PIECE * k + 2 * w] = pair.x;
          x[PIECE * k + 2 * w + 1] = pair.y;
        }
      butterflyLevels<E, 1, PIECE>(x);
      laneGroupLevels<E, L>(x, c.groupLane);
      butterflyLevels<E, PIECE, E>(x);
      if (slot < 0 || head >= c.p.numKvHeads)
        continue;
#pragma unroll
      for (int k = 0; k < PIECES; ++k) {
        uint32_t out[WORDS];
#pragma unroll
        for (int w = 0; w < WORDS; ++w)
          out[w] = packHalf2(x[PIECE * k + 2 * w] * scale, x[PIECE * k + 2 * w + 1] * scale);
        storeWords(pool + (slot * c.p.numKvHeads + head) * D + PIECE * L * k, out);
      }
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
