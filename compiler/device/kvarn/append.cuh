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
  /// Aligned inputs are staged in shared memory (AppendSharedLayout, params.h): a lane copies
  /// its E channels of each of a pass's heads in CHUNK-byte pieces. (Loaded into registers
  /// instead, 8 heads per pass took 72 registers and ran 4-5% slower than 4 heads at 56;
  /// docs/benchmarks.md.)
  static constexpr AppendSharedLayout sharedLayout() { return AppendSharedLayout{D, WARPS}; }
  static constexpr int SHARED_BYTES = sharedLayout().bytes();
  static constexpr int STAGED_HEADS = AppendSharedLayout::HEADS;
  static constexpr int CHUNK = E * 2 < 16 ? E * 2 : 16;
  static constexpr int CHUNKS = E * 2 / CHUNK;
  static_assert(D % 32 == 0 && E >= 2, "head_dim must be a multiple of 32");
  static_assert(sharedLayout().laneBytes() == E * 2, "a lane stages E channels per row");
  AppendParams p;
  int warp, lane, half, halfLane;
  bool vectorLoads; ///< inputs aligned for E-element vector loads (else element loads)
  unsigned char *stage; ///< this warp's staging area (sharedLayout().warpBytes())
  static __device__ __forceinline__ AppendContext begin(const AppendParams &params) {
    AppendContext c;
    extern __shared__ __align__(16) unsigned char kvarnShared[];
    if (dynamicSharedBytes() < SHARED_BYTES)
      __trap();
    c.p = params;
    c.warp = threadIdx.x / 32;
    c.lane = threadIdx.x % 32;
    c.half = c.lane / 16;
    c.halfLane = c.lane % 16;
    c.stage = kvarnShared + c.warp * sharedLayout().warpBytes();
    constexpr uint64_t vectorBytes = pairVectorBytes<WORDS>();
    c.vectorLoads = ((reinterpret_cast<uint64_t>(params.key) | reinterpret_cast<uint64_t>(params.value) |
                      uint64_t(params.keyStride * 2) | uint64_t(params.valueStride * 2)) %
                     vectorBytes) == 0;
    return c;
  }
};

/// One row of one head: butterflies inside the lane's contiguous chunk, then across the
/// half-warp; scale by fp16(1/sqrt(D)), round to fp16 and store the lane's channels of the pool
/// row (none for a negative slot).
template <typename Ctx>
__device__ __forceinline__ void rotateHead(const Ctx &c, const uint32_t (&words)[Ctx::WORDS],
                                           Half *pool, int64_t slot, int head) {
  typedef typename Ctx::Type T;
  constexpr int E = Ctx::E, WORDS = Ctx::WORDS;
  float x[E];
#pragma unroll
  for (int w = 0; w < WORDS; ++w) {
    const float2 pair = unpackPair<T>(words[w]);
    x[2 * w] = pair.x;
    x[2 * w + 1] = pair.y;
  }
  laneGroupFwht<E, 16>(x, c.halfLane);
  if (slot < 0)
    return;
  const float scale = hadamardScale<Ctx::HD>();
  uint32_t out[WORDS];
#pragma unroll
  for (int w = 0; w < WORDS; ++w)
    out[w] = packHalf2(x[2 * w] * scale, x[2 * w + 1] * scale);
  storeWords(pool + (slot * c.p.numKvHeads + head) * Ctx::HD, out);
}

/// Rotates one token's K and V rows of every kv head (half-warp FWHT per row) and writes its pool
/// rows. One warp owns the token (K in its lower half-warp, V in the upper) and issues all the
/// loads of a pass, and the slot lookup, before it rotates any, so it waits on one memory round
/// trip per pass. Aligned inputs: STAGED_HEADS heads per pass, copied asynchronously into the
/// warp's staging area (each lane copies, then reads back, only its own channels, so no barrier).
/// Inputs not aligned for that (an odd row stride or base): element loads, one head at a time.
template <int KB, int VB, int G, int D, int Q, int W, int S, int SP, int R, bool C, typename T>
__device__ __forceinline__ void rotateRow(AppendContext<KB, VB, G, D, Q, W, S, SP, R, C, T> &c,
                                          int row) {
  typedef AppendContext<KB, VB, G, D, Q, W, S, SP, R, C, T> Ctx;
  constexpr int E = Ctx::E, WORDS = Ctx::WORDS;
  constexpr int CHUNK = Ctx::CHUNK, CHUNKS = Ctx::CHUNKS, STAGED = Ctx::STAGED_HEADS;
  const int64_t slot = c.p.slotMapping[row]; // not waited for until the stores
  const T *tensor = static_cast<const T *>(c.half ? c.p.value : c.p.key) +
                    row * (c.half ? c.p.valueStride : c.p.keyStride) + c.halfLane * E;
  Half *pool = static_cast<Half *>(c.half ? c.p.poolValue : c.p.poolKey) + c.halfLane * E;
  if (c.vectorLoads) { // warp-uniform
    // Chunk `part` of head k sits at ((k * CHUNKS + part) * 32 + lane) * CHUNK: the lanes'
    // pieces of one chunk are contiguous, so copies and reads are free of bank conflicts.
    auto piece = [&](int k, int part) { return c.stage + ((k * CHUNKS + part) * 32 + c.lane) * CHUNK; };
    for (int first = 0; first < c.p.numKvHeads; first += STAGED) {
#pragma unroll
      for (int k = 0; k < STAGED; ++k) {
        if (first + k >= c.p.numKvHeads)
          break;
        const unsigned char *from = reinterpret_cast<const unsigned char *>(tensor + (first + k) * D);
#pragma unroll
        for (int part = 0; part < CHUNKS; ++part)
          copyAsync<CHUNK>(piece(k, part), from + part * CHUNK);
      }
      copyAsyncCommit();
      copyAsyncWait<0>();
#pragma unroll 1 // one head's words and butterflies live at a time (registers, so warps per SM)
      for (int k = 0; k < STAGED; ++k) {
        const int head = first + k;
        if (head >= c.p.numKvHeads)
          break;
        uint32_t words[WORDS];
#pragma unroll
        for (int part = 0; part < CHUNKS; ++part) {
          uint32_t chunk[CHUNK / 4];
          loadWords(chunk, piece(k, part));
#pragma unroll
          for (int w = 0; w < CHUNK / 4; ++w)
            words[part * (CHUNK / 4) + w] = chunk[w];
        }
        rotateHead(c, words, pool, slot, head);
      }
    }
    return;
  }
#pragma unroll 1
  for (int head = 0; head < c.p.numKvHeads; ++head) {
    uint32_t words[WORDS];
    loadPairs(words, tensor + head * D, false);
    rotateHead(c, words, pool, slot, head);
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
