// kvarn device library: flush building blocks (Sinkhorn normalization, RTN, folding, packing)
// with the tile held in shared memory. One CTA quantizes one (block, kv head) entry.
#pragma once

#include "kvarn/common.cuh"
#include "kvarn/params.h"

namespace kvarn {
namespace dev {

template <int KB, int VB, int G, int D, int Q, int WARPS, int STAGES, int SPLITS, int ROWS,
          bool COMPACT, typename T>
struct FlushContext {
  typedef RecordLayout<KB, VB, G, D, COMPACT> Layout;
  static constexpr int TG = G, HD = D, NWARPS = WARPS, KBITS = KB, VBITS = VB;
  static constexpr int MAX_DIM = D > G ? D : G;
  static constexpr int TILE_FLOATS = (D * (G + 1) > G * (D + 1)) ? D * (G + 1) : G * (D + 1);
  static constexpr int VECTORS = 10; // col/row: scale, inverse scale, log, best, std
  static constexpr int SHARED_BYTES = TILE_FLOATS * 4 + VECTORS * MAX_DIM * 4 + 64 * 4 + D * G;

  FlushParams p;
  int block, head, slot, warp, lane;
  int rows, cols;  ///< current tensor's view: K = [D][G], V = [G][D]
  float *tile;     ///< [rows][cols + 1]
  float *colScale, *rowScale, *colLog, *rowLog, *colBest, *rowBest, *colStd, *rowStd;
  float *colInverse, *rowInverse; ///< IEEE 1/scale, for exact divisions by multiplication
  float *scratch;  ///< 64 floats: reductions and the best imbalance
  unsigned char *codes;
  bool bad;

  static __device__ __forceinline__ FlushContext begin(const FlushParams &params) {
    FlushContext c;
    extern __shared__ __align__(16) unsigned char kvarnShared[];
    if (dynamicSharedBytes() < SHARED_BYTES)
      __trap();
    c.p = params;
    const int entry = blockIdx.x;
    c.block = params.entries[3 * entry];
    c.head = params.entries[3 * entry + 1];
    c.slot = params.entries[3 * entry + 2];
    c.warp = threadIdx.x / 32;
    c.lane = threadIdx.x % 32;
    float *base = reinterpret_cast<float *>(kvarnShared);
    c.tile = base;
    float *vectors = base + TILE_FLOATS;
    c.colScale = vectors;
    c.rowScale = vectors + MAX_DIM;
    c.colLog = vectors + 2 * MAX_DIM;
    c.rowLog = vectors + 3 * MAX_DIM;
    c.colBest = vectors + 4 * MAX_DIM;
    c.rowBest = vectors + 5 * MAX_DIM;
    c.colStd = vectors + 6 * MAX_DIM;
    c.rowStd = vectors + 7 * MAX_DIM;
    c.colInverse = vectors + 8 * MAX_DIM;
    c.rowInverse = vectors + 9 * MAX_DIM;
    c.scratch = vectors + VECTORS * MAX_DIM;
    c.codes = reinterpret_cast<unsigned char *>(c.scratch + 64);
    c.bad = false;
    return c;
  }
  __device__ __forceinline__ unsigned char *record() const {
    return p.cache + (int64_t(block) * p.numKvHeads + head) * Layout::tileBytesAligned;
  }
};

/// Sample std, one pass, as the reference: var = max(sum x^2/n - mean^2, 0) * n/(n-1).
__device__ __forceinline__ float sampleStd(double sum, double sumSquares, int count) {
  const float n = float(count);
  const float mean = float(sum) / n;
  const float variance = fmaxf(float(sumSquares) / n - mean * mean, 0.0f);
  return sqrtf(variance * (n / (n - 1.0f)));
}

__device__ __forceinline__ double warpSumDouble(double value) {
  for (int mask = 16; mask > 0; mask >>= 1)
    value += __shfl_xor_sync(0xffffffffu, value, mask);
  return value;
}

/// Loads the pool tile of tensor `Tensor` (0 = K as [D][G], 1 = V as [G][D]) into shared memory.
template <int Tensor, typename Ctx> __device__ __forceinline__ void loadTile(Ctx &c) {
  constexpr int G = Ctx::TG, D = Ctx::HD;
  c.rows = Tensor == 0 ? D : G;
  c.cols = Tensor == 0 ? G : D;
  const Half *pool = static_cast<const Half *>(Tensor == 0 ? c.p.poolKey : c.p.poolValue);
  const int64_t rowStride = int64_t(c.p.numKvHeads) * D;
  const Half *base = pool + (int64_t(c.slot) * G * c.p.numKvHeads + c.head) * D;
  bool nonFinite = false;
  for (int item = threadIdx.x; item < G * D / 2; item += blockDim.x) {
    const int token = (2 * item) / D, channel = (2 * item) % D;
    const float2 v =
        unpackHalf2(*reinterpret_cast<const uint32_t *>(base + token * rowStride + channel));
    nonFinite |= !isFinite(v.x) || !isFinite(v.y);
    if (Tensor == 0) {
      c.tile[channel * (G + 1) + token] = v.x;
      c.tile[(channel + 1) * (G + 1) + token] = v.y;
    } else {
      c.tile[token * (D + 1) + channel] = v.x;
      c.tile[token * (D + 1) + channel + 1] = v.y;
    }
  }
  c.bad = __syncthreads_or(nonFinite) != 0;
  if (c.bad && threadIdx.x == 0)
    atomicOr(c.p.status, 1);
}

/// a / b, correctly rounded, from the correctly rounded inverse of b (one Newton correction
/// with FMA: the same value as an IEEE division in the normal range, three instructions).
__device__ __forceinline__ float divideExact(float a, float b, float inverse) {
  const float q = a * inverse;
  const float r = fmaf(-q, b, a);
  return fmaf(r, inverse, q);
}

/// X = M / colScale[col] / rowScale[row] (two exact divisions, as the reference), one element.
template <typename Ctx>
__device__ __forceinline__ float scaled(const Ctx &c, float m, int row, int col) {
  return divideExact(divideExact(m, c.colScale[col], c.colInverse[col]), c.rowScale[row],
                     c.rowInverse[row]);
}

/// Column and/or row std of X = M / colScale[col] / rowScale[row] (two exact divisions, as the
/// reference), sums in double. One thread per column or row walks it sequentially (the padded
/// row stride keeps a warp's accesses on distinct banks); with both, the row threads follow the
/// column threads, so both run at once.
template <typename Ctx> __device__ __forceinline__ void tileStds(Ctx &c, bool columns, bool rows) {
  const int stride = c.cols + 1;
  const int columnThreads = columns ? c.cols : 0;
  const int tid = threadIdx.x;
  for (int col = tid; col < columnThreads; col += blockDim.x) {
    double sum = 0.0, sumSquares = 0.0;
    const float scale = c.colScale[col], inverse = c.colInverse[col];
    for (int row = 0; row < c.rows; ++row) {
      const float x = divideExact(divideExact(c.tile[row * stride + col], scale, inverse),
                                  c.rowScale[row], c.rowInverse[row]);
      sum += x;
      sumSquares += x * x;
    }
    c.colStd[col] = sampleStd(sum, sumSquares, c.rows);
  }
  if (rows) {
    // Row threads start after the column threads (wrapping around the block).
    const int first = (tid - columnThreads % int(blockDim.x) + int(blockDim.x)) % int(blockDim.x);
    for (int row = first; row < c.rows; row += blockDim.x) {
      double sum = 0.0, sumSquares = 0.0;
      const float scale = c.rowScale[row], inverse = c.rowInverse[row];
      for (int col = 0; col < c.cols; ++col) {
        const float x = divideExact(divideExact(c.tile[row * stride + col], c.colScale[col],
                                                c.colInverse[col]),
                                    scale, inverse);
        sum += x;
        sumSquares += x * x;
      }
      c.rowStd[row] = sampleStd(sum, sumSquares, c.cols);
    }
  }
  __syncthreads();
}

/// max/min(col std) + max/min(row std), computed by warp 0 and broadcast through shared memory.
template <typename Ctx> __device__ __forceinline__ float imbalance(Ctx &c) {
  if (c.warp == 0) {
    float colMax = 0.0f, colMin = KVARN_INFINITY, rowMax = 0.0f, rowMin = KVARN_INFINITY;
    for (int k = c.lane; k < c.cols; k += 32) {
      colMax = fmaxf(colMax, c.colStd[k]);
      colMin = fminf(colMin, c.colStd[k]);
    }
    for (int k = c.lane; k < c.rows; k += 32) {
      rowMax = fmaxf(rowMax, c.rowStd[k]);
      rowMin = fminf(rowMin, c.rowStd[k]);
    }
    colMax = warpMaxXor(colMax, 1, 16);
    rowMax = warpMaxXor(rowMax, 1, 16);
    colMin = warpMin(colMin);
    rowMin = warpMin(rowMin);
    if (c.lane == 0)
      c.scratch[1] = colMax / fmaxf(colMin, 1e-8f) + rowMax / fmaxf(rowMin, 1e-8f);
  }
  __syncthreads();
  const float value = c.scratch[1];
  __syncthreads();
  return value;
}

__device__ __forceinline__ float clampf(float v, float lo, float hi) {
  return fminf(fmaxf(v, lo), hi);
}

/// Log-domain Sinkhorn normalization with best-iterate tracking (kvarn-format.md §4.1).
template <int Iterations, typename Ctx> __device__ __forceinline__ void normalize(Ctx &c) {
  if (c.bad)
    return;
  for (int k = threadIdx.x; k < Ctx::MAX_DIM; k += blockDim.x) {
    c.colScale[k] = c.rowScale[k] = c.colBest[k] = c.rowBest[k] = 1.0f;
    c.colInverse[k] = c.rowInverse[k] = 1.0f;
    c.colLog[k] = c.rowLog[k] = 0.0f;
  }
  __syncthreads();
  tileStds(c, true, true);
  float best = imbalance(c);
  for (int iteration = 0; iteration < Iterations; ++iteration) {
    // colStd holds the stds of the current X (the previous iteration's last pass).
    for (int k = threadIdx.x; k < c.cols; k += blockDim.x) {
      c.colLog[k] = clampf(c.colLog[k] + logf(clampf(c.colStd[k], 1e-3f, 1e3f)), -0.3f, 10.0f);
      c.colScale[k] = expf(c.colLog[k]);
      c.colInverse[k] = 1.0f / c.colScale[k];
    }
    __syncthreads();
    tileStds(c, false, true);
    for (int k = threadIdx.x; k < c.rows; k += blockDim.x) {
      c.rowLog[k] = clampf(c.rowLog[k] + logf(clampf(c.rowStd[k], 1e-3f, 1e3f)), -0.3f, 10.0f);
      c.rowScale[k] = expf(c.rowLog[k]);
      c.rowInverse[k] = 1.0f / c.rowScale[k];
    }
    __syncthreads();
    tileStds(c, true, true);
    const float current = imbalance(c);
    if (current <= best) { // ties: the later iterate wins
      best = current;
      for (int k = threadIdx.x; k < c.cols; k += blockDim.x)
        c.colBest[k] = c.colScale[k];
      for (int k = threadIdx.x; k < c.rows; k += blockDim.x)
        c.rowBest[k] = c.rowScale[k];
    }
    __syncthreads();
  }
}

__device__ __forceinline__ Half saturateHalf(float value) {
  return floatToHalf(clampf(value, -65504.0f, 65504.0f));
}

/// RTN per row (half to even), folds the scales and packs the codes into the record.
template <int Tensor, typename Ctx> __device__ __forceinline__ void quantizePack(Ctx &c) {
  typedef typename Ctx::Layout L;
  if (c.bad)
    return;
  constexpr int bits = Tensor == 0 ? Ctx::KBITS : Ctx::VBITS;
  constexpr int perByte = 8 / bits;
  const float qmax = float((1 << bits) - 1);
  const int stride = c.cols + 1;
  const int rowBytes = c.cols / perByte;
  unsigned char *rec = c.record();
  const int packedOffset = Tensor == 0 ? L::keyPacked : L::valuePacked;
  const int rowScaleOffset = Tensor == 0 ? L::keyScaleCol : L::valueScaleRow;
  const int rowZeroOffset = Tensor == 0 ? L::keyZeroPoint : L::valueZeroPoint;
  const int colScaleOffset = Tensor == 0 ? L::keyScaleRow : L::valueScaleCol;
  Half *rowScales = reinterpret_cast<Half *>(rec + rowScaleOffset);
  Half *rowZeros = reinterpret_cast<Half *>(rec + rowZeroOffset);
  Half *colScales = reinterpret_cast<Half *>(rec + colScaleOffset);
  // Step 0. The chosen iterate becomes the current scales (and their inverses).
  for (int k = threadIdx.x; k < c.cols; k += blockDim.x) {
    c.colScale[k] = c.colBest[k];
    c.colInverse[k] = 1.0f / c.colBest[k];
  }
  for (int k = threadIdx.x; k < c.rows; k += blockDim.x) {
    c.rowScale[k] = c.rowBest[k];
    c.rowInverse[k] = 1.0f / c.rowBest[k];
  }
  __syncthreads();
  for (int row = c.warp; row < c.rows; row += Ctx::NWARPS) {
    // Step 1. N = M / best_c / best_r; the row's range.
    float lo = KVARN_INFINITY, hi = -KVARN_INFINITY;
    const float rowBest = c.rowBest[row];
    for (int col = c.lane; col < c.cols; col += 32) {
      const float n = scaled(c, c.tile[row * stride + col], row, col);
      c.tile[row * stride + col] = n;
      lo = fminf(lo, n);
      hi = fmaxf(hi, n);
    }
    lo = warpMin(lo);
    hi = warpMaxXor(hi, 1, 16);
    const float scale = fmaxf((hi - lo) / qmax, 1e-10f);
    // Step 2. Codes into shared memory, then packed bytes (little-endian within a byte).
    for (int col = c.lane; col < c.cols; col += 32) {
      const float code = rintf((c.tile[row * stride + col] - lo) / scale);
      c.codes[row * c.cols + col] = (unsigned char)clampf(code, 0.0f, qmax);
    }
    __syncwarp();
    for (int byte = c.lane; byte < rowBytes; byte += 32) {
      unsigned value = 0;
      for (int k = 0; k < perByte; ++k)
        value |= unsigned(c.codes[row * c.cols + byte * perByte + k]) << (k * bits);
      rec[packedOffset + row * rowBytes + byte] = (unsigned char)value;
    }
    if (c.lane == 0) {
      rowScales[row] = saturateHalf(rowBest * scale);
      rowZeros[row] = saturateHalf(rowBest * lo);
    }
  }
  for (int col = threadIdx.x; col < c.cols; col += blockDim.x)
    colScales[col] = saturateHalf(c.colBest[col]);
  if (Tensor == 1)
    for (int byte = L::tileBytes + threadIdx.x; byte < L::tileBytesAligned; byte += blockDim.x)
      rec[byte] = 0;
  __syncthreads();
}

} // namespace dev
} // namespace kvarn
