// kvarn device library: flush building blocks (Sinkhorn normalization, RTN, folding, packing)
// with the tile held in shared memory. One CTA quantizes one tensor (K or V) of one
// (block, kv head) entry: of the 2E CTAs, CTA e handles entry e's K tile and CTA E + e its V
// tile, and each building block acts only on its CTA's tensor.
//
// Both tensors take the same arithmetic, the CPU reference's (normalizeVariance in reference.h),
// so the records agree with it bit for bit: the stds of X = M / c / r in their factored form,
// rowstd(X) = rowstd(M * (1/c)) / r and colstd(X) = colstd(M * (1/r)) / c, each product rounded
// in fp32 and the one-pass sums added in the CPU reference's fixed pairwise tree (sampleStd).
// Shared memory holds M itself, in fp16 as the pool has it (half the bytes of an fp32 buffer, so
// more tiles fit an SM at once), and each sweep computes the products it sums from M on the fly.
// A thread owns a block of rows x 8 columns and a warp a tile of 4 x 8 blocks (blockSums). Per
// iteration:
//   row sums of M * (1/c_new)      one product per element: rowstd with r_old, then with r_new
//   column sums of M * (1/r_new)   one product per element: colstd
// then, by each column's thread from the std it computed, the next column step (columnStep); the
// iterate's imbalance comes from per-warp ranges of the stds and is compared during the next
// row step (normalizeTile). Iteration 0 sums M itself, rows and columns in one sweep. RTN takes N =
// M / best_c / best_r with two correctly rounded divisions (quantizePack), as the reference.
#pragma once

#include "kvarn/common.cuh"
#include "kvarn/params.h"
#include "kvarn/roundedmath.h"

namespace kvarn {
namespace dev {

template <int KB, int VB, int G, int D, int Q, int WARPS, int STAGES, int SPLITS, int ROWS,
          bool COMPACT, typename T>
struct FlushContext {
  typedef RecordLayout<KB, VB, G, D, COMPACT> Layout;
  static constexpr int TG = G, HD = D, NWARPS = WARPS, KBITS = KB, VBITS = VB;
  static constexpr int THREADS = WARPS * 32;
  /// The schedule's stages: tiles a warp's normalization sweeps take at once (blockSums).
  static constexpr int SWEEP_STAGES = STAGES;
  /// M as fp16 (swizzled rows, TileView::at), the partial sums of the row or column chains, the
  /// scale vectors: FlushSharedLayout (params.h), which the host sizes launches with.
  static constexpr FlushSharedLayout sharedLayout() {
    return FlushSharedLayout{G, D, WARPS, STAGES};
  }
  static constexpr int MAX_DIM = sharedLayout().maxDim();
  static constexpr int PARTIALS = sharedLayout().partials(); ///< (sum, sum of squares) pairs
  static constexpr int VECTORS = FlushSharedLayout::VECTORS;
  static constexpr int PARTIAL_OFFSET = sharedLayout().partialOffset();
  static constexpr int VECTOR_OFFSET = sharedLayout().vectorOffset();
  static constexpr int RANGE_OFFSET = sharedLayout().rangeOffset();
  static constexpr int SHARED_BYTES = sharedLayout().bytes();
  static_assert(D % 32 == 0 && G % 32 == 0, "rows and columns are multiples of 32");

  FlushParams p;
  int block, head, slot, tensor, warp, lane;
  bool active;      ///< the tile loaded last is this CTA's tensor and is finite
  Half *m;          ///< [rows][TileView::STRIDE]: the tile M of this CTA's tensor (fp16)
  float2 *partials; ///< (sum, sum of squares) of each chain
  float *colScale, *rowScale, *colLog, *rowLog, *rowBest;
  /// The columns a thread owns in the normalization's column steps and choices: column
  /// tid + j x THREADS (ownedColumns). Their best iterate's scales and the previous iterate's
  /// (until its choice) stay in the owner's registers, so shared memory holds two vectors fewer.
  static constexpr int OWNED_COLUMNS = (MAX_DIM + THREADS - 1) / THREADS;
  float colBest[OWNED_COLUMNS], colPrevious[OWNED_COLUMNS];
  float *colInverse, *rowInverse; ///< IEEE 1/scale, for exact divisions by multiplication
  /// Two buffers (by iteration parity) of one entry per warp: (max, min) of the row stds its
  /// threads computed, then of its column stds (float bits).
  uint4 *ranges;

  static __device__ __forceinline__ FlushContext begin(const FlushParams &params) {
    FlushContext c;
    extern __shared__ __align__(16) unsigned char kvarnShared[];
    if (dynamicSharedBytes() < SHARED_BYTES)
      __trap();
    c.p = params;
    // CTAs 0 .. E - 1 are the K tiles and E .. 2E - 1 the V tiles (both take the same
    // arithmetic, so about the same time).
    const int entries = params.numEntries;
    c.tensor = int(blockIdx.x) >= entries ? 1 : 0;
    const int entry = int(blockIdx.x) - c.tensor * entries;
    c.block = params.entries[3 * entry];
    c.head = params.entries[3 * entry + 1];
    c.slot = params.entries[3 * entry + 2];
    c.warp = threadIdx.x / 32;
    c.lane = threadIdx.x % 32;
    c.active = false;
    c.m = reinterpret_cast<Half *>(kvarnShared);
    c.partials = reinterpret_cast<float2 *>(kvarnShared + PARTIAL_OFFSET);
    float *vectors = reinterpret_cast<float *>(kvarnShared + VECTOR_OFFSET);
    c.colScale = vectors;
    c.rowScale = vectors + MAX_DIM;
    c.colLog = vectors + 2 * MAX_DIM;
    c.rowLog = vectors + 3 * MAX_DIM;
    c.rowBest = vectors + 4 * MAX_DIM;
    c.colInverse = vectors + 5 * MAX_DIM;
    c.rowInverse = vectors + 6 * MAX_DIM;
    c.ranges = reinterpret_cast<uint4 *>(kvarnShared + RANGE_OFFSET);
    return c;
  }
  __device__ __forceinline__ unsigned char *record() const {
    return p.cache + (int64_t(block) * p.numKvHeads + head) * Layout::tileBytesAligned;
  }
};

/// Rows and columns of tensor `Tensor`'s view: K = [D][G], V = [G][D].
template <int Tensor, typename Ctx> struct TileView {
  static constexpr int ROWS = Tensor == 0 ? Ctx::HD : Ctx::TG;
  static constexpr int COLS = Tensor == 0 ? Ctx::TG : Ctx::HD;
  /// fp16 elements per row of the M buffer: rows are unpadded, and each row's 16-byte chunks (8
  /// elements) are permuted instead (chunk k is stored at k ^ FlushSharedLayout::chunkSwizzle(row);
  /// see at()).
  static constexpr int STRIDE = COLS;
  static_assert((STRIDE & (STRIDE - 1)) == 0 && STRIDE >= 64, "rows of a power of two chunks");
  /// The index in M of element (row, col).
  static __device__ __forceinline__ int at(int row, int col) {
    return row * STRIDE + (col ^ (FlushSharedLayout::chunkSwizzle(row) << 3));
  }
  /// The sweeps' blocks (FlushSharedLayout::blockRows): BLOCK_ROWS x 8 elements per thread,
  /// a warp's lanes a 4 x 8 grid of blocks, tiles of TILE_ROWS x 64 (which warp takes which:
  /// WARP_RUNS).
  static constexpr int BLOCK_ROWS = FlushSharedLayout::blockRows(Ctx::THREADS, ROWS, COLS);
  static constexpr int TILE_ROWS = 4 * BLOCK_ROWS;
  static constexpr int BLOCK_ROW_SEGMENTS = COLS / 64;        ///< row partials per row
  static constexpr int BLOCK_COL_SEGMENTS = ROWS / TILE_ROWS; ///< tile rows
  static constexpr int TILES = BLOCK_ROW_SEGMENTS * BLOCK_COL_SEGMENTS;
  /// Tiles a warp's sweep takes at once, and the consecutive tiles it walks down its column
  /// segment (0: tiles dealt to the warps in turn); FlushSharedLayout::warpRuns.
  static constexpr int SWEEP_STAGES =
      FlushSharedLayout::sweepStages(Ctx::THREADS, ROWS, COLS, Ctx::SWEEP_STAGES);
  static constexpr int WARP_RUNS = FlushSharedLayout::warpRuns(Ctx::THREADS, ROWS, COLS);
  /// Tile rows per column partial, and column partials per column.
  static constexpr int COLUMN_RUN_TILES =
      FlushSharedLayout::columnRunTiles(Ctx::THREADS, ROWS, COLS, Ctx::SWEEP_STAGES);
  static constexpr int COLUMN_PARTIALS =
      FlushSharedLayout::columnPartials(Ctx::THREADS, ROWS, COLS, Ctx::SWEEP_STAGES);
  /// The column partials follow the row partials in the partials buffer.
  static constexpr int BLOCK_COL_PARTIALS = ROWS * BLOCK_ROW_SEGMENTS;
  static_assert(COLS % 64 == 0 && ROWS % TILE_ROWS == 0, "block tiles");
  static_assert(BLOCK_COL_PARTIALS + COLS * COLUMN_PARTIALS <= Ctx::PARTIALS,
                "block partial sums fit");
};

/// Sample std, one pass, as the reference: var = max(sum x^2/n - mean^2, 0) * n/(n-1).
__device__ __forceinline__ float sampleStd(float sum, float sumSquares, int count) {
  const float n = float(count);
  const float mean = sum / n;
  // __fmul_rn: mean * mean rounded on its own, never fused into an FMA with the subtraction
  // (as the reference and the CPU reference compute it; the two differ where mean^2 cancels).
  const float variance = fmaxf(sumSquares / n - __fmul_rn(mean, mean), 0.0f);
  return sqrtf(variance * (n / (n - 1.0f)));
}

/// a / b, correctly rounded, from the correctly rounded inverse of b (one Newton correction
/// with FMA: the same value as an IEEE division in the normal range, three instructions).
__device__ __forceinline__ float divideExact(float a, float b, float inverse) {
  const float q = a * inverse;
  const float r = fmaf(-q, b, a);
  return fmaf(r, inverse, q);
}

/// (sum, sum of squares) of two pairwise partial sums; rounded adds that are never fused.
__device__ __forceinline__ float2 addSums(float2 a, float2 b) {
  return make_float2(__fadd_rn(a.x, b.x), __fadd_rn(a.y, b.y));
}
/// (x, x*x) of one element, x*x rounded in fp32 as the reference.
__device__ __forceinline__ float2 leafSums(float x) { return make_float2(x, __fmul_rn(x, x)); }
/// The sums of a pair of adjacent elements (a first), the leaves of sampleStd's tree:
/// (a + b, fma(b, b, a*a)), the second square fused into the add (a.y = a*a rounded, b.y unused).
__device__ __forceinline__ float2 leafPair(float2 a, float2 b) {
  return make_float2(__fadd_rn(a.x, b.x), __fmaf_rn(b.x, b.x, a.y));
}
/// The pairwise sums of first .. first + N - 1 (N a power of two): the two halves' sums, added
/// (the tree of sampleStd in reference.h). leaf(i) gives (sum, sum of squares) of run i; with
/// LEAVES the runs are single elements (leafSums), and adjacent pairs add as leafPair.
template <int N, bool LEAVES = false, typename Leaf>
__device__ __forceinline__ float2 treeSums(const Leaf &leaf, int first) {
  static_assert(N >= 1 && (N & (N - 1)) == 0, "a power of two");
  if constexpr (N == 1)
    return leaf(first);
  else if constexpr (LEAVES && N == 2)
    return leafPair(leaf(first), leaf(first + 1));
  else
    return addSums(treeSums<N / 2, LEAVES>(leaf, first),
                   treeSums<N / 2, LEAVES>(leaf, first + N / 2));
}

/// log and exp by the same fp32 operations as the CPU reference (roundedmath.h): the two agree
/// bit for bit where fp32 library functions would differ in the last place.
using roundedmath::expFloat;
using roundedmath::logFloat;

__device__ __forceinline__ float clampf(float v, float lo, float hi) {
  return fminf(fmaxf(v, lo), hi);
}

/// Four consecutive elements of M (8-byte aligned) as floats.
__device__ __forceinline__ float4 loadHalf4(const Half *src) {
  const uint2 w = *reinterpret_cast<const uint2 *>(src);
  const float2 a = unpackHalf2(w.x), b = unpackHalf2(w.y);
  return make_float4(a.x, a.y, b.x, b.y);
}

/// Starts pulling the pool tile of CTA blockIdx.x + prefetchStride (a CTA of the next wave) into
/// L2, a 128-byte line per prefetch, while this CTA works on its own tile.
template <typename Ctx> __device__ __forceinline__ void prefetchNextTile(const Ctx &c) {
  const int next = int(blockIdx.x) + c.p.prefetchStride;
  if (c.p.prefetchStride <= 0 || next >= 2 * c.p.numEntries)
    return;
  constexpr int G = Ctx::TG, D = Ctx::HD, LINES = D * 2 / 128 > 0 ? D * 2 / 128 : 1;
  const int tensor = next >= c.p.numEntries ? 1 : 0;
  const int entry = next - tensor * c.p.numEntries;
  const int head = c.p.entries[3 * entry + 1], slot = c.p.entries[3 * entry + 2];
  const Half *pool = static_cast<const Half *>(tensor == 0 ? c.p.poolKey : c.p.poolValue);
  const Half *base = pool + (int64_t(slot) * G * c.p.numKvHeads + head) * D;
  for (int item = threadIdx.x; item < G * LINES; item += Ctx::THREADS)
    prefetchL2(base + int64_t(item / LINES) * c.p.numKvHeads * D + (item % LINES) * 64);
}

/// Loads the pool tile of tensor `Tensor` into the M buffer if it is this CTA's tensor; a tile
/// holding NaN/Inf sets status bit 0 and leaves its record alone. A thread reads eight channels
/// (16 bytes) of SPAN adjacent tokens per item. For V (rows = tokens, SPAN 1) a warp reads
/// consecutive pieces of token rows and stores them whole. For K (rows = channels, SPAN 2) a
/// lane pair reads both halves of a 32-byte sector of 16 token pairs
/// (FlushSharedLayout::keyLoadPair): each channel's two halves of a lane's token pair form one
/// 32-bit store, and each of the warp's stores fills 64 bytes of each of two rows (distinct banks).
template <int Tensor, typename Ctx> __device__ __forceinline__ void loadTile(Ctx &c) {
  typedef TileView<Tensor, Ctx> V;
  c.active = false;
  if (c.tensor != Tensor) // CTA-uniform
    return;
  constexpr int G = Ctx::TG, D = Ctx::HD, PIECES = D / 8;
  constexpr int SPAN = Tensor == 0 ? 2 : 1, ITEMS = G / SPAN * PIECES;
  static_assert(G / 2 >= 32 && D % 16 == 0, "FlushSharedLayout::keyLoadPair's index bits");
  const Half *pool = static_cast<const Half *>(Tensor == 0 ? c.p.poolKey : c.p.poolValue);
  const int64_t rowStride = int64_t(c.p.numKvHeads) * D;
  const Half *base = pool + (int64_t(c.slot) * G * c.p.numKvHeads + c.head) * D;
  const bool vector = reinterpret_cast<uint64_t>(pool) % 16 == 0;
  uint32_t nonFinite = 0;
  // Up to 8 pieces in flight per thread (128 bytes, 32 registers; 16 pieces took 64 and held the
  // D = 128 kernel at 128 registers, 4 CTAs per SM instead of 5: 2.4% slower, docs/benchmarks.md).
  constexpr int ITEMS_PER_THREAD = (ITEMS + Ctx::THREADS - 1) / Ctx::THREADS;
  constexpr int LOADS = ITEMS_PER_THREAD < 8 / SPAN ? ITEMS_PER_THREAD : 8 / SPAN;
  // body(b, token, channel) for item b of the LOADS starting at item `first` (those in the tile).
  auto forEachItem = [&](int first, auto &&body) {
#pragma unroll
    for (int b = 0; b < LOADS; ++b) {
      const int item = first + b * Ctx::THREADS;
      if (ITEMS % (LOADS * Ctx::THREADS) != 0 && item >= ITEMS)
        break;
      if (Tensor == 0)
        body(b, 2 * FlushSharedLayout::keyLoadPair(item, G / 2),
             FlushSharedLayout::keyLoadChannel(item, G / 2));
      else
        body(b, item / PIECES, 8 * (item % PIECES));
    }
  };
#pragma unroll 1
  for (int first = threadIdx.x; first < ITEMS; first += LOADS * Ctx::THREADS) {
    uint4 pieces[LOADS][SPAN];
    forEachItem(first, [&](int b, int token, int channel) {
#pragma unroll
      for (int s = 0; s < SPAN; ++s) {
        const Half *src = base + (token + s) * rowStride + channel;
        if (vector) {
          pieces[b][s] = *reinterpret_cast<const uint4 *>(src);
        } else {
          const uint32_t *words = reinterpret_cast<const uint32_t *>(src);
          pieces[b][s] = make_uint4(words[0], words[1], words[2], words[3]);
        }
      }
    });
    forEachItem(first, [&](int b, int token, int channel) {
      uint32_t words[SPAN][4];
#pragma unroll
      for (int s = 0; s < SPAN; ++s) {
        words[s][0] = pieces[b][s].x, words[s][1] = pieces[b][s].y;
        words[s][2] = pieces[b][s].z, words[s][3] = pieces[b][s].w;
        // A half is NaN/Inf when its exponent bits are all set: adding 0x0400 to the masked
        // exponent then carries into its sign bit (and never across halves).
#pragma unroll
        for (int w = 0; w < 4; ++w)
          nonFinite |= (words[s][w] & 0x7c007c00u) + 0x04000400u;
      }
      if constexpr (Tensor == 0) { // K: channel-major rows (channel is a multiple of 8: two
                                   // swizzles; token is even, so each pair is one word)
        const int low = V::at(channel, token), high = V::at(channel + 4, token) - 4 * V::STRIDE;
#pragma unroll
        for (int j = 0; j < 8; ++j)
          *reinterpret_cast<uint32_t *>(c.m + (j < 4 ? low : high) + j * V::STRIDE) =
              __byte_perm(words[0][j / 2], words[SPAN - 1][j / 2], j % 2 == 0 ? 0x5410 : 0x7632);
      } else { // V: token-major rows (16-byte chunks)
        *reinterpret_cast<uint4 *>(c.m + V::at(token, channel)) = pieces[b][0];
      }
    });
  }
  const bool bad = __syncthreads_or(int((nonFinite & 0x80008000u) != 0)) != 0;
  if (bad && threadIdx.x == 0)
    atomicOr(c.p.status, 1);
  c.active = !bad;
  // A finite tile prefetches the next wave's after its first iteration (normalizeTile), when this
  // wave's own loads are no longer in flight; a tile left alone prefetches now.
  if (bad)
    prefetchNextTile(c);
}

__device__ __forceinline__ float2 shuffleXor(float2 v, int mask) {
  return make_float2(__shfl_xor_sync(0xffffffffu, v.x, mask),
                     __shfl_xor_sync(0xffffffffu, v.y, mask));
}

/// The first line a lane keeps in laneTreeSums<N, MASK, LEVELS>: at each level that halves its
/// lines, the lane with the level's bit set keeps the upper half (N / 2 added).
template <int N, int MASK, int LEVELS> __device__ __forceinline__ int laneTreeFirst(int lane) {
  if constexpr (LEVELS == 0 || N == 1)
    return 0;
  else
    return ((lane & MASK) != 0 ? N / 2 : 0) + laneTreeFirst<N / 2, 2 * MASK, LEVELS - 1>(lane);
}
/// Adds the pairs v[0 .. N) of the lanes that differ in lane bit MASK, then 2 MASK, ... (LEVELS
/// levels); each level adds two adjacent runs of the same lines, one level of their pairwise
/// trees. The caller stores line j ^ laneTreeFirst(lane) in v[j], so at a level that halves the
/// lines every lane keeps v[0 .. N/2) and sends v[N/2 .. N), which then hold the same lines of
/// the lane pair (no lane-dependent selects); once a lane holds one pair, both lanes of a level add
/// the same two runs. Afterwards v[k] holds line laneTreeFirst(lane) + k,
/// k < max(N >> LEVELS, 1). XOR-permuting the slots swaps subtrees of a pairwise tree, and
/// a + b == b + a, so sums over the slots in slot order have the same bits as in line order.
template <int N, int MASK, int LEVELS> __device__ __forceinline__ void laneTreeSums(float2 *v) {
  if constexpr (LEVELS == 0) {
    return;
  } else if constexpr (N == 1) {
    v[0] = addSums(v[0], shuffleXor(v[0], MASK));
    laneTreeSums<1, 2 * MASK, LEVELS - 1>(v);
  } else {
#pragma unroll
    for (int j = 0; j < N / 2; ++j)
      v[j] = addSums(v[j], shuffleXor(v[j + N / 2], MASK));
    laneTreeSums<N / 2, 2 * MASK, LEVELS - 1>(v);
  }
}
/// The lane bits of laneTreeSums<N, MASK, LEVELS>'s levels where both lanes hold the same pair
/// (lanes with any of them set hold a copy).
template <int N, int MASK, int LEVELS> constexpr int laneTreeCopies() {
  int copies = 0;
  for (int level = 0, n = N, mask = MASK; level < LEVELS; ++level, mask *= 2) {
    if (n == 1)
      copies |= mask;
    else
      n /= 2;
  }
  return copies;
}

/// The (sum, sum of squares) pairs of eight columns.
struct ColumnSums {
  float2 v[8];
};
/// The pairwise sums of rows first .. first + N - 1 (N >= 2 a power of two) of eight columns;
/// row(i) gives row i's leaves (leafSums). Row i + 1 of an adjacent pair holds the lower row where
/// `swapped`. The tree is walked depth first, so at most log2(N) + 1 rows of sums are live at once.
template <int N, typename Row>
__device__ __forceinline__ ColumnSums columnTree(const Row &row, int first, bool swapped) {
  static_assert(N >= 2 && (N & (N - 1)) == 0, "a power of two, at least a pair");
  ColumnSums a, b;
  if constexpr (N == 2) {
    a = row(first);
    b = row(first + 1);
#pragma unroll
    for (int j = 0; j < 8; ++j)
      a.v[j] = swapped ? leafPair(b.v[j], a.v[j]) : leafPair(a.v[j], b.v[j]);
  } else {
    a = columnTree<N / 2>(row, first, swapped);
    b = columnTree<N / 2>(row, first + N / 2, swapped);
#pragma unroll
    for (int j = 0; j < 8; ++j)
      a.v[j] = addSums(a.v[j], b.v[j]);
  }
  return a;
}

/// What a sweep of blockSums sums: M itself, M * (1/c[col]) or M * (1/r[row]), each product
/// rounded in fp32.
enum class Scale { None, ByColumn, ByRow };

/// One sweep over the products `S` of M (see Scale). Each thread computes the products of its
/// block once (TileView::BLOCK_ROWS rows x 8 columns) and adds, with ROW_SUMS, its rows' runs of 8
/// and, with COLUMN_SUMS, its columns' runs of BLOCK_ROWS as pairwise trees; the lanes of a warp
/// then add their runs (laneTreeSums) up to runs of 64 columns and TILE_ROWS rows. Row partials go
/// to partials[segment * ROWS + row], column partials to
/// partials[ROWS * BLOCK_ROW_SEGMENTS + run * COLS + col], where a run is COLUMN_RUN_TILES tile
/// rows: in walking sweeps (TileView::WARP_RUNS) a warp adds the column sums of its consecutive
/// tiles itself, so each column has COLUMN_PARTIALS partials instead of one per tile row (fewer
/// stores, fewer adds on the column steps' path, less shared memory). Per element: one fp16 load (16
/// bytes per 8 for K rows), one product, its square, and the adds of one or both trees. A warp
/// takes the schedule's `stages` tiles at once (where they divide the warp's tiles): their loads
/// and trees are independent, so one tile's latencies hide behind the other's work.
template <Scale S, bool ROW_SUMS, bool COLUMN_SUMS, typename V, typename Ctx>
__device__ __forceinline__ void blockSums(Ctx &c) {
  static_assert(ROW_SUMS || COLUMN_SUMS, "a sweep sums rows, columns or both");
  constexpr int RB = V::BLOCK_ROWS;
  static_assert(RB >= 2, "a thread's column runs hold whole leaf pairs");
  constexpr int STAGES = V::SWEEP_STAGES;
  // Walking sweeps (V::WARP_RUNS > 0): the warp's tiles are consecutive tile rows of one column
  // segment, and its column sums leave as whole subtrees of V::COLUMN_RUN_TILES tile rows.
  constexpr bool WALK = V::WARP_RUNS > 0;
  // The lanes' 4 x 8 grid of blocks: with row sums, lane bits 0-2 give the block column (the
  // row trees add across them); in column-only sweeps, lane bits 0-1 give the block row, so the
  // eight lanes of each quarter-warp phase of the 16-byte partial stores write 128 contiguous bytes
  // (two block columns, four block rows) instead of eight pieces 64 bytes apart.
  constexpr bool ROWS_FIRST = !ROW_SUMS;
  constexpr int ROW_MASK = ROWS_FIRST ? 1 : 8; ///< the lowest lane bit of the block row
  const int laneRow = ROWS_FIRST ? c.lane % 4 : c.lane / 8;
  const int laneCol = ROWS_FIRST ? c.lane / 4 : c.lane % 8;
  // Slot i of the block's rows holds row i ^ rowPerm and, with COLUMN_SUMS, slot pair k of its
  // columns holds columns 2 (k ^ pairPerm) and + 1, the orders laneTreeSums takes.
  const int rowPerm = ROW_SUMS ? laneTreeFirst<RB, 1, 3>(c.lane) : 0;
  const int pairPerm = COLUMN_SUMS ? laneTreeFirst<8, ROW_MASK, 2>(c.lane) / 2 : 0;
  float2 *rowPartials = c.partials;
  float2 *colPartials = c.partials + V::BLOCK_COL_PARTIALS;
  // Where the warps divide the row segments, a warp's tiles all lie in one column segment: its
  // column inverses load once per sweep (two 16-byte loads) instead of once per tile.
  constexpr bool FIXED_COLUMNS = Ctx::NWARPS % V::BLOCK_ROW_SEGMENTS == 0;
  float colInverses[8] = {};
  if constexpr (S == Scale::ByColumn && FIXED_COLUMNS) {
    static_assert(!COLUMN_SUMS, "column scales with row sums only (the pairs in order)");
    const float4 *src = reinterpret_cast<const float4 *>(
        c.colInverse + (c.warp % V::BLOCK_ROW_SEGMENTS) * 64 + 8 * laneCol);
    const float4 a = src[0], b = src[1];
    colInverses[0] = a.x, colInverses[1] = a.y, colInverses[2] = a.z, colInverses[3] = a.w;
    colInverses[4] = b.x, colInverses[5] = b.y, colInverses[6] = b.z, colInverses[7] = b.w;
  }
  // Where a round moves a warp's tile by whole periods of the chunk swizzle
  // (FlushSharedLayout::sweepStepped), a thread's block keeps its swizzle in every round and sits
  // a constant number of elements further each round: its address is the first round's plus a
  // multiple of that step (one add per round instead of the row, swizzle and column arithmetic of
  // TileView::at).
  // In walking sweeps the same holds for the block of each stage, where a round's stages span
  // whole swizzle periods (FlushSharedLayout::walkStepped).
  constexpr bool STEPPED =
      WALK ? FlushSharedLayout::walkStepped(Ctx::THREADS, V::ROWS, V::COLS, Ctx::SWEEP_STAGES)
           : FlushSharedLayout::sweepStepped(Ctx::THREADS, V::ROWS, V::COLS);
  constexpr int ROUND_ELEMENTS =
      (WALK ? V::TILE_ROWS : FlushSharedLayout::sweepRoundRows(Ctx::THREADS, V::ROWS, V::COLS)) *
      V::STRIDE;
  static_assert(!STEPPED || FIXED_COLUMNS, "a stepped block keeps its column segment");
  static_assert(!WALK || FIXED_COLUMNS, "a walking warp keeps its column segment");
  // The warp's first tile (u = 0).
  const int firstTileRow =
      FlushSharedLayout::sweepTileRow(Ctx::THREADS, V::ROWS, V::COLS, c.warp, 0);
  const int firstTileCol = c.warp % V::BLOCK_ROW_SEGMENTS;
  // The first round's block of each stage (walking sweeps: the stage's tile; otherwise one), as
  // element offsets into M.
  constexpr int FIRST_BLOCKS = WALK ? STAGES : 1;
  int firstBlocks[FIRST_BLOCKS];
#pragma unroll
  for (int s = 0; s < FIRST_BLOCKS; ++s)
    firstBlocks[s] = STEPPED ? V::at((firstTileRow + s) * V::TILE_ROWS + laneRow * RB,
                                     firstTileCol * 64 + 8 * laneCol)
                             : 0;
  struct Block {
    int tileRow, tileCol, row0, col0;
    float2 rows[RB]; ///< with ROW_SUMS: the block rows' sums (slot order)
    ColumnSums cols; ///< with COLUMN_SUMS: the block columns' sums (slot pair order)
  };
  // The sums of this thread's block of the warp's u-th tile, u = round + s (stage s): tile row
  // firstTileRow + u when walking, else tile warp + u * NWARPS.
  auto sums = [&](Block &b, int round, int s) {
    const int u = round + s;
    if constexpr (WALK) {
      b.tileRow = firstTileRow + u;
      b.tileCol = firstTileCol;
    } else if constexpr (STEPPED) { // the first tile's columns, its row a multiple of u further
      b.tileRow = firstTileRow + u * (Ctx::NWARPS / V::BLOCK_ROW_SEGMENTS);
      b.tileCol = firstTileCol;
    } else {
      const int tile = c.warp + u * Ctx::NWARPS;
      b.tileRow = tile / V::BLOCK_ROW_SEGMENTS, b.tileCol = tile % V::BLOCK_ROW_SEGMENTS;
    }
    b.row0 = b.tileRow * V::TILE_ROWS + laneRow * RB, b.col0 = b.tileCol * 64 + 8 * laneCol;
    const int row0 = b.row0, col0 = b.col0;
    // The block's row inverses load at once (a column sweep has no row permutation: slot i holds
    // row i).
    const float *colInverse = c.colInverse + col0;
    float rowInverses[RB] = {};
    if constexpr (S == Scale::ByRow) {
      static_assert(!ROW_SUMS && (RB == 2 || RB == 4), "row inverses in one vector load");
      if constexpr (RB == 4) {
        const float4 v = *reinterpret_cast<const float4 *>(c.rowInverse + row0);
        rowInverses[0] = v.x, rowInverses[1] = v.y, rowInverses[2] = v.z, rowInverses[3] = v.w;
      } else {
        const float2 v = *reinterpret_cast<const float2 *>(c.rowInverse + row0);
        rowInverses[0] = v.x, rowInverses[1] = v.y;
      }
    }
    // Slot `slot` of the block's rows (row slot ^ rowPerm): its eight products, their row run's
    // sums into b.rows[slot], and the column leaves (in slot order).
    // The block's rows share their chunk swizzle (rows row0 .. row0 + RB - 1, RB <= 4).
    static_assert(RB <= 4, "a block's rows share a swizzle");
    const Half *block = c.m + (!STEPPED ? V::at(row0, col0)
                               : WALK   ? firstBlocks[s] + round * ROUND_ELEMENTS
                                        : firstBlocks[0] + u * ROUND_ELEMENTS);
    auto row = [&](int slot) {
      const int i = slot ^ rowPerm;
      const Half *src = block + i * V::STRIDE;
      uint32_t w[4];
      if constexpr (COLUMN_SUMS) { // the pairs in slot order
#pragma unroll
        for (int k = 0; k < 4; ++k)
          w[k] = *reinterpret_cast<const uint32_t *>(src + 2 * (k ^ pairPerm));
      } else { // the chunk at once
        const uint4 q = *reinterpret_cast<const uint4 *>(src);
        w[0] = q.x, w[1] = q.y, w[2] = q.z, w[3] = q.w;
      }
      const float rowInverse = S == Scale::ByRow ? rowInverses[slot] : 1.0f;
      ColumnSums leaves;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int pair = k ^ pairPerm;
        const float2 m = unpackHalf2(w[k]);
        float2 x = m;
        if constexpr (S == Scale::ByColumn) {
          const float2 inv = FIXED_COLUMNS
                                 ? make_float2(colInverses[2 * pair], colInverses[2 * pair + 1])
                                 : *reinterpret_cast<const float2 *>(colInverse + 2 * pair);
          x = make_float2(__fmul_rn(m.x, inv.x), __fmul_rn(m.y, inv.y));
        } else if constexpr (S == Scale::ByRow) {
          x = make_float2(__fmul_rn(m.x, rowInverse), __fmul_rn(m.y, rowInverse));
        }
        leaves.v[2 * k] = leafSums(x.x);
        leaves.v[2 * k + 1] = leafSums(x.y);
      }
      if constexpr (ROW_SUMS)
        b.rows[slot] = treeSums<8, true>([&](int j) { return leaves.v[j]; }, 0);
      return leaves;
    };
    if constexpr (COLUMN_SUMS) {
      b.cols = columnTree<RB>(row, 0, (rowPerm & 1) != 0);
    } else {
#pragma unroll
      for (int i = 0; i < RB; ++i)
        row(i);
    }
  };
  // The warp's runs of the block's sums, added across its lanes, to the partials.
  auto store = [&](Block &b) {
    if constexpr (ROW_SUMS) {
      laneTreeSums<RB, 1, 3>(b.rows);
      if ((c.lane & laneTreeCopies<RB, 1, 3>()) == 0) {
#pragma unroll
        for (int k = 0; k < (RB >= 8 ? RB / 8 : 1); ++k)
          rowPartials[b.tileCol * V::ROWS + b.row0 + rowPerm + k] = b.rows[k];
      }
    }
    if constexpr (COLUMN_SUMS) {
      laneTreeSums<8, ROW_MASK, 2>(b.cols.v);
      // The lane's two columns are adjacent: one 16-byte store (each quarter-warp phase 128
      // contiguous bytes in column-only sweeps).
      if constexpr (!WALK)
        *reinterpret_cast<float4 *>(colPartials + b.tileRow * V::COLS + b.col0 + 2 * pairPerm) =
            make_float4(b.cols.v[0].x, b.cols.v[0].y, b.cols.v[1].x, b.cols.v[1].y);
    }
  };
  // Walking sweeps: the round's column sums (its stages' tiles, consecutive tile rows added as
  // their pairwise tree), to the partial of their run of COLUMN_RUN_TILES tile rows; a round that
  // completes a run adds the run's first half, which this lane stored the round before.
  auto storeColumnRun = [&](const Block (&blocks)[STAGES]) {
    const float2 lo = treeSums<STAGES>([&](int s) { return blocks[s].cols.v[0]; }, 0);
    const float2 hi = treeSums<STAGES>([&](int s) { return blocks[s].cols.v[1]; }, 0);
    const int tileRow = blocks[0].tileRow;
    float4 *dst = reinterpret_cast<float4 *>(colPartials + tileRow / V::COLUMN_RUN_TILES * V::COLS +
                                             blocks[0].col0 + 2 * pairPerm);
    float2 first = lo, second = hi;
    if (V::COLUMN_RUN_TILES > STAGES && tileRow % V::COLUMN_RUN_TILES != 0) {
      const float4 half = *dst;
      first = addSums(make_float2(half.x, half.y), lo);
      second = addSums(make_float2(half.z, half.w), hi);
    }
    *dst = make_float4(first.x, first.y, second.x, second.y);
  };
  // A loop of a fixed trip count (a walking warp takes TILES / NWARPS tiles; where tiles are dealt
  // in turn, a warp with no tile left skips its last round, which only happens where the warps do
  // not divide the tiles).
  constexpr int ROUNDS = (V::TILES + Ctx::NWARPS - 1) / Ctx::NWARPS;
#pragma unroll 1
  for (int round = 0; round < ROUNDS; round += STAGES) {
    const int tile = c.warp + round * Ctx::NWARPS;
    if (!WALK && V::TILES % Ctx::NWARPS != 0 && tile >= V::TILES)
      break;
    Block blocks[STAGES];
#pragma unroll
    for (int s = 0; s < STAGES; ++s)
      sums(blocks[s], round, s);
#pragma unroll
    for (int s = 0; s < STAGES; ++s)
      store(blocks[s]);
    if constexpr (COLUMN_SUMS && WALK)
      storeColumnRun(blocks);
  }
}

/// The range (max, min) of the stds a thread writes, as the bits of non-negative floats, which
/// order as unsigned integers (a -0 std counts as +0; the imbalance's value is the same).
struct StdRange {
  unsigned max = 0, min = 0x7f800000u; // +Inf: no std yet
  __device__ __forceinline__ void add(float std) {
    const unsigned bits = __float_as_uint(std) & 0x7fffffffu;
    max = max > bits ? max : bits;
    min = min < bits ? min : bits;
  }
  /// The range over the warp's lanes (one REDUX each; every supported arch is sm_80 or later).
  __device__ __forceinline__ StdRange warp() const {
    StdRange r;
    r.max = __reduce_max_sync(0xffffffffu, max);
    r.min = __reduce_min_sync(0xffffffffu, min);
    return r;
  }
};

/// Publishes the ranges of the row and column stds the warp's threads computed into buffer
/// `parity`; every warp calls it (a warp without lines publishes empty ranges).
template <typename Ctx>
__device__ __forceinline__ void publishRange(Ctx &c, int parity, const StdRange &rows,
                                             const StdRange &cols) {
  const StdRange r = rows.warp(), k = cols.warp();
  if (c.lane == 0)
    c.ranges[parity * Ctx::NWARPS + c.warp] = make_uint4(r.max, r.min, k.max, k.min);
}

/// max/min(col std) + max/min(row std) of an iterate from the warps' ranges in buffer `parity`,
/// after a barrier that completed them; every warp reduces the (at most 32) ranges itself.
template <typename Ctx> __device__ __forceinline__ float imbalance(const Ctx &c, int parity) {
  StdRange rows, cols;
  if (c.lane < Ctx::NWARPS) {
    const uint4 v = c.ranges[parity * Ctx::NWARPS + c.lane];
    rows.max = v.x, rows.min = v.y, cols.max = v.z, cols.min = v.w;
  }
  rows = rows.warp();
  cols = cols.warp();
  const float colMax = __uint_as_float(cols.max), colMin = __uint_as_float(cols.min);
  const float rowMax = __uint_as_float(rows.max), rowMin = __uint_as_float(rows.min);
  return colMax / fmaxf(colMin, 1e-8f) + rowMax / fmaxf(rowMin, 1e-8f);
}

/// The sums of line `k` (of `lines`) from its segments' partial sums, added pairwise (segment s
/// holds the line's s-th run of elements, so this finishes the line's tree).
template <int SEGMENTS>
__device__ __forceinline__ float2 lineSums(const float2 *partials, int k, int lines) {
  return treeSums<SEGMENTS>([&](int s) { return partials[s * lines + k]; }, 0);
}
/// Calls f(k, j) for each column k < COLUMNS this thread owns, k = tid + j x THREADS (j indexes the
/// owner's registers: Ctx::colBest, Ctx::colPrevious).
template <int COLUMNS, typename Ctx, typename F>
__device__ __forceinline__ void ownedColumns(int tid, const F &f) {
  static_assert(COLUMNS <= Ctx::OWNED_COLUMNS * Ctx::THREADS, "owned columns");
#pragma unroll
  for (int j = 0; j < (COLUMNS + Ctx::THREADS - 1) / Ctx::THREADS; ++j) {
    const int k = tid + j * Ctx::THREADS;
    if (COLUMNS % Ctx::THREADS == 0 || k < COLUMNS)
      f(k, j);
  }
}
/// Every scale 1 and every log 0: the identity iterate.
template <typename Ctx> __device__ __forceinline__ void resetScales(Ctx &c, int tid) {
#pragma unroll
  for (int j = 0; j < Ctx::OWNED_COLUMNS; ++j)
    c.colBest[j] = c.colPrevious[j] = 1.0f;
  for (int k = tid; k < Ctx::MAX_DIM; k += Ctx::THREADS) {
    c.colScale[k] = c.rowScale[k] = c.rowBest[k] = 1.0f;
    c.colInverse[k] = c.rowInverse[k] = 1.0f;
    c.colLog[k] = c.rowLog[k] = 0.0f;
  }
}

/// The column step from column k's std of the current iterate (this thread computed it): the
/// iterate's scale is kept in colPrevious[j] (for a later choice of the best iterate), and the next
/// iteration's log, scale and inverse replace it. log and exp are roundedmath.h's, as in the CPU
/// reference.
template <typename Ctx>
__device__ __forceinline__ void columnStep(Ctx &c, int k, int j, float std) {
  c.colPrevious[j] = c.colScale[k];
  const float log = clampf(c.colLog[k] + logFloat(clampf(std, 1e-3f, 1e3f)), -0.3f, 10.0f);
  const float scale = expFloat(log);
  c.colLog[k] = log;
  c.colScale[k] = scale;
  c.colInverse[k] = 1.0f / scale;
}

/// Whether the iterate whose std ranges are in buffer `parity` becomes the best one: its
/// imbalance is at most `best` (ties: the later iterate wins; iteration 0, `first`, always).
/// CTA-uniform: every thread reduces the same ranges.
template <typename Ctx>
__device__ __forceinline__ bool keepIterate(const Ctx &c, int parity, float &best, bool first) {
  const float current = imbalance(c, parity);
  const bool keep = first || current <= best;
  best = keep ? current : best;
  return keep;
}

/// Log-domain Sinkhorn normalization with best-iterate tracking (kvarn-format.md §4.1) of the
/// tile `Tensor` (compile-time shape), in the CPU reference's factored arithmetic (see the top of
/// this file). The choice of the best iterate waits one phase: iterate t's imbalance is reduced
/// during iteration t + 1's row step (from the std ranges its warps published, double-buffered by
/// iteration), where it overlaps that step's log and exp and needs no barrier of its own; iterate
/// t's column scales wait for it in colPrevious, its row scales in rowScale until the row step
/// replaces them (each row's thread copies its row first).
template <int Iterations, int Tensor, typename Ctx>
__device__ __forceinline__ void normalizeTile(Ctx &c) {
  typedef TileView<Tensor, Ctx> V;
  constexpr int R = V::ROWS, C = V::COLS;
  const int tid = threadIdx.x;
  const float2 *colPartials = c.partials + V::BLOCK_COL_PARTIALS;
  resetScales(c, tid);
  __syncthreads();
  // Iteration 0: the stds of M itself, rows and columns from one sweep, and the column step to
  // c_1 (by each column's thread, from the std it computed).
  blockSums<Scale::None, true, true, V>(c);
  __syncthreads();
  {
    StdRange rows, cols;
    for (int k = tid; k < R; k += Ctx::THREADS) {
      const float2 sums = lineSums<V::BLOCK_ROW_SEGMENTS>(c.partials, k, R);
      rows.add(sampleStd(sums.x, sums.y, C));
    }
    ownedColumns<C, Ctx>(tid, [&](int k, int j) {
      const float2 sums = lineSums<V::COLUMN_PARTIALS>(colPartials, k, C);
      const float std = sampleStd(sums.x, sums.y, R);
      cols.add(std);
      if (Iterations > 0)
        columnStep(c, k, j, std);
    });
    publishRange(c, 0, rows, cols);
  }
  // The next wave's tile into L2, now that this wave's loads are done (prefetching right after
  // the load made those loads compete with the first wave's own: 1% slower from HBM at D = 128).
  prefetchNextTile(c);
  float best = 0.0f; // set by iteration 0
  for (int iteration = 1; iteration <= Iterations; ++iteration) {
    __syncthreads(); // the column scales of this iteration (and the ranges) are complete
    blockSums<Scale::ByColumn, true, false, V>(c); // rows of M * (1/c_new)
    __syncthreads();
    // The previous iterate's choice (its column scales in colPrevious, its row scales still in
    // rowScale), then this iteration's row step.
    const bool keep = keepIterate(c, (iteration - 1) & 1, best, iteration == 1);
#pragma unroll
    for (int j = 0; j < Ctx::OWNED_COLUMNS; ++j)
      c.colBest[j] = keep ? c.colPrevious[j] : c.colBest[j];
    StdRange rows, cols;
    for (int k = tid; k < R; k += Ctx::THREADS) {
      if (keep)
        c.rowBest[k] = c.rowScale[k];
      const float2 sums = lineSums<V::BLOCK_ROW_SEGMENTS>(c.partials, k, R);
      const float unscaled = sampleStd(sums.x, sums.y, C);
      // The divisions by the scales (> 0, normal) as divideExact through their IEEE inverses:
      // the correctly rounded quotients of the CPU reference's divisions.
      const float previous = divideExact(unscaled, c.rowScale[k], c.rowInverse[k]); // old r
      c.rowLog[k] = clampf(c.rowLog[k] + logFloat(clampf(previous, 1e-3f, 1e3f)), -0.3f, 10.0f);
      const float scale = expFloat(c.rowLog[k]), inverse = 1.0f / scale;
      c.rowScale[k] = scale;
      c.rowInverse[k] = inverse;
      rows.add(divideExact(unscaled, scale, inverse)); // X with the new r
    }
    __syncthreads();
    blockSums<Scale::ByRow, false, true, V>(c); // columns of M * (1/r_new)
    __syncthreads();
    ownedColumns<C, Ctx>(tid, [&](int k, int j) {
      const float2 sums = lineSums<V::COLUMN_PARTIALS>(colPartials, k, C);
      const float std = divideExact(sampleStd(sums.x, sums.y, R), c.colScale[k], c.colInverse[k]);
      cols.add(std);
      if (iteration < Iterations)
        columnStep(c, k, j, std);
    });
    publishRange(c, iteration & 1, rows, cols);
  }
  __syncthreads(); // the last iterate's ranges
  // The last iterate's choice: its scales are the current ones.
  if (keepIterate(c, Iterations & 1, best, Iterations == 0)) {
    ownedColumns<C, Ctx>(tid, [&](int k, int j) { c.colBest[j] = c.colScale[k]; });
    for (int k = tid; k < R; k += Ctx::THREADS)
      c.rowBest[k] = c.rowScale[k];
  }
  // quantizePack reads the bests after its own barrier.
}

/// The normalization of the tile loaded last, if it is this CTA's (finite) tensor.
template <int Iterations, typename Ctx> __device__ __forceinline__ void normalize(Ctx &c) {
  if (!c.active)
    return;
  if (c.tensor == 0)
    normalizeTile<Iterations, 0>(c);
  else
    normalizeTile<Iterations, 1>(c);
}

__device__ __forceinline__ Half saturateHalf(float value) {
  return floatToHalf(clampf(value, -65504.0f, 65504.0f));
}

/// Words per store of quantizePack's codes: two (one 8-byte store) where they divide a thread's
/// words and every record keeps them aligned (records lie tileBytesAligned apart). A row's words
/// are its thread's own, so word stores wrote a piece of a different sector in every lane; 16-byte
/// stores measured no faster than 8-byte ones (docs/benchmarks.md).
template <typename L> constexpr int codeStoreRun(int packedOffset, int rowBytes, int words) {
  return words % 2 == 0 && L::tileBytesAligned % 8 == 0 && packedOffset % 8 == 0 && rowBytes % 8 == 0
             ? 2
             : 1;
}
/// Stores RUN (1 or 2) words at dst, as one 8-byte store where `vector` (dst then 8-byte aligned).
template <int RUN>
__device__ __forceinline__ void storeWords(uint32_t *dst, const uint32_t (&w)[RUN], bool vector) {
  static_assert(RUN == 1 || RUN == 2, "runs of one or two words");
  if constexpr (RUN == 2) {
    if (vector) {
      *reinterpret_cast<uint2 *>(dst) = make_uint2(w[0], w[1]);
      return;
    }
  }
#pragma unroll
  for (int r = 0; r < RUN; ++r)
    dst[r] = w[r];
}

/// RTN per row (half to even), folds the scales and packs the codes into the record. LANES
/// adjacent threads share a row, each a contiguous segment of it (whole 32-bit words of codes):
/// the row's range takes one shuffle per lane pair, and each code one exact division by the
/// row's scale through its inverse.
template <int Tensor, typename Ctx> __device__ __forceinline__ void quantizePack(Ctx &c) {
  typedef typename Ctx::Layout L;
  typedef TileView<Tensor, Ctx> V;
  if (!c.active || c.tensor != Tensor)
    return;
  c.active = false;
  constexpr int R = V::ROWS, C = V::COLS;
  constexpr int bits = Tensor == 0 ? Ctx::KBITS : Ctx::VBITS;
  constexpr unsigned qmaxCode = (1u << bits) - 1;
  constexpr int CODES_PER_WORD = 32 / bits;
  // Threads per row: as many as the CTA has per row, at most 4, with at least two words each.
  constexpr int BY_THREADS = Ctx::THREADS / R > 0 ? Ctx::THREADS / R : 1;
  constexpr int BY_WORDS = C / CODES_PER_WORD / 2;
  constexpr int LANES = BY_THREADS < 4 ? (BY_THREADS < BY_WORDS ? BY_THREADS : BY_WORDS)
                                       : (4 < BY_WORDS ? 4 : BY_WORDS);
  constexpr int SEGMENT = C / LANES; ///< columns per thread
  static_assert(LANES >= 1 && SEGMENT % CODES_PER_WORD == 0 && SEGMENT % 4 == 0, "segments");
  static_assert(R % 32 == 0, "FlushSharedLayout::rtnRow deals rows in runs of 32");
  const float qmax = float(qmaxCode);
  constexpr int rowBytes = C * bits / 8;
  unsigned char *rec = c.record();
  // The cache's base allows 8-byte stores (every record then does; codeStoreRun).
  const bool vectorStores = reinterpret_cast<uint64_t>(c.p.cache) % 8 == 0;
  static_assert(BufferAlignment::flushCache == sizeof(uint32_t) && L::tileBytesAligned % 4 == 0,
                "the C API checks the cache for the word stores; records keep its alignment");
  constexpr int packedOffset = Tensor == 0 ? L::keyPacked : L::valuePacked;
  constexpr int rowScaleOffset = Tensor == 0 ? L::keyScaleCol : L::valueScaleRow;
  constexpr int rowZeroOffset = Tensor == 0 ? L::keyZeroPoint : L::valueZeroPoint;
  constexpr int colScaleOffset = Tensor == 0 ? L::keyScaleRow : L::valueScaleCol;
  static_assert(packedOffset % 4 == 0 && rowBytes % 4 == 0, "word stores");
  Half *rowScales = reinterpret_cast<Half *>(rec + rowScaleOffset);
  Half *rowZeros = reinterpret_cast<Half *>(rec + rowZeroOffset);
  Half *colScales = reinterpret_cast<Half *>(rec + colScaleOffset);
  // Step 0. The chosen iterate becomes the current scales (and their inverses).
  ownedColumns<C, Ctx>(threadIdx.x, [&](int k, int j) {
    c.colScale[k] = c.colBest[j];
    c.colInverse[k] = 1.0f / c.colBest[j];
    colScales[k] = saturateHalf(c.colBest[j]);
  });
  for (int k = threadIdx.x; k < R; k += Ctx::THREADS) {
    c.rowScale[k] = c.rowBest[k];
    c.rowInverse[k] = 1.0f / c.rowBest[k];
  }
  __syncthreads();
  const int part = threadIdx.x % LANES;
  const unsigned group = ((1u << LANES) - 1) << (c.lane & ~(LANES - 1));
  for (int slot = threadIdx.x / LANES; slot < R; slot += Ctx::THREADS / LANES) {
    const int row = FlushSharedLayout::rtnRow(slot);
    // Step 1. N = M / best_c / best_r (two true divisions), computed from M where it is used.
    // Column `col` of the row: its chunk swizzled, its place in the chunk kept (loads of four
    // at k and k + 4 share one swizzled chunk address).
    const Half *line = c.m + row * V::STRIDE;
    const int swizzle = FlushSharedLayout::chunkSwizzle(row) << 3;
    auto element = [&](int col) { return line + ((col & ~7) ^ swizzle) + (col & 7); };
    const float *colScale = c.colScale + part * SEGMENT;
    const float *colInverse = c.colInverse + part * SEGMENT;
    const float rowScale = c.rowScale[row], rowInverse = c.rowInverse[row];
    // Y = M / best_c (one true division) and N = Y / best_r.
    auto columnScaled = [&](int k) {
      const float4 m = loadHalf4(element(part * SEGMENT + k));
      const float4 s = *reinterpret_cast<const float4 *>(colScale + k);
      const float4 inv = *reinterpret_cast<const float4 *>(colInverse + k);
      return make_float4(divideExact(m.x, s.x, inv.x), divideExact(m.y, s.y, inv.y),
                         divideExact(m.z, s.z, inv.z), divideExact(m.w, s.w, inv.w));
    };
    auto normalized = [&](int k) {
      const float4 y = columnScaled(k);
      return make_float4(divideExact(y.x, rowScale, rowInverse), divideExact(y.y, rowScale, rowInverse),
                         divideExact(y.z, rowScale, rowInverse), divideExact(y.w, rowScale, rowInverse));
    };
    // Step 2. The row's range. A correctly rounded division by the row's scale (> 0) is
    // monotonic, so min/max of N are the row's min/max of Y divided once: the same values as
    // the reference's min/max over N, for one division per element fewer.
    float lo = KVARN_INFINITY, hi = -KVARN_INFINITY;
#pragma unroll 4
    for (int k = 0; k < SEGMENT; k += 4) {
      const float4 v = columnScaled(k);
      lo = fminf(lo, fminf(fminf(v.x, v.y), fminf(v.z, v.w)));
      hi = fmaxf(hi, fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w)));
    }
#pragma unroll
    for (int offset = 1; offset < LANES; offset *= 2) {
      lo = fminf(lo, __shfl_xor_sync(group, lo, offset));
      hi = fmaxf(hi, __shfl_xor_sync(group, hi, offset));
    }
    lo = divideExact(lo, rowScale, rowInverse); // a zero minimum comes out +0, as on the CPU
    hi = divideExact(hi, rowScale, rowInverse);
    const float scale = fmaxf((hi - lo) / qmax, 1e-10f);
    const float inverse = 1.0f / scale;
    // Step 3. Codes (exact division, half to even), packed little-endian, a word at a time.
    // The quotient q = (n - lo) / scale lies in [0, qmax (1 + 2^-23)] (n >= lo exactly, and
    // scale >= (hi - lo) / qmax rounded), so the reference's clamp of rint(q) to [0, qmax] never
    // acts. q + 1.5 * 2^23 is q rounded to an integer, half to even (the ulp there is 1), with
    // bits ROUND_BITS + code: each word adds its codes' bits shifted into place (one LEA each)
    // and subtracts the shifted ROUND_BITS once.
    constexpr float ROUND_MAGIC = 12582912.0f;
    constexpr uint32_t ROUND_BITS = 0x4b400000u;
    constexpr uint32_t WORD_BIAS = [] {
      uint32_t bias = 0;
      for (int e = 0; e < CODES_PER_WORD; ++e)
        bias += ROUND_BITS << (e * bits);
      return bias;
    }();
    static_assert(qmaxCode < 16, "codes are exact integers below 2^22 in the rounded sum");
    uint32_t *dst = reinterpret_cast<uint32_t *>(rec + packedOffset + row * rowBytes) +
                    part * (SEGMENT / CODES_PER_WORD);
    // Word w's codes from the reference's chain of correctly rounded operations.
    auto exactWord = [&](int w) {
      uint32_t word = 0u - WORD_BIAS;
#pragma unroll
      for (int k = 0; k < CODES_PER_WORD; k += 4) {
        const float4 v = normalized(w * CODES_PER_WORD + k);
        const float n[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float quotient = divideExact(n[e] - lo, scale, inverse);
          word += __float_as_uint(__fadd_rn(quotient, ROUND_MAGIC)) << ((k + e) * bits);
        }
      }
      return word;
    };
    // The same codes, first from one FFMA per element (roundedmath::codeMargin gives the bound):
    // where every q~ of a word lies further than the margin from a rounding midpoint, it rounds
    // to the chain's integer; otherwise the word is recomputed by the chain (a midpoint, ties
    // included, is never decided by q~, and a row whose range is tiny against its magnitude takes
    // the chain for every word). A unit test checks the margin against the chain
    // (Quantize.OneFmaCodesAgreeWithTheChainWhereTheirMarginDecidesThem).
    const float rowFactor = rowInverse * inverse, offset = -lo * inverse;
    const float margin = roundedmath::codeMargin(fmaxf(fabsf(lo), fabsf(hi)), inverse);
    // The words go out RUN at a time (codeStoreRun), one store each.
    constexpr int WORDS = SEGMENT / CODES_PER_WORD, RUN = codeStoreRun<L>(packedOffset, rowBytes, WORDS);
#pragma unroll(RUN == 1 ? 2 : 1)
    for (int first = 0; first < WORDS; first += RUN) {
      uint32_t words[RUN];
      unsigned undecided = 0; // bit r: word first + r needs the chain
#pragma unroll
      for (int r = 0; r < RUN; ++r) {
        const int w = first + r;
        uint32_t word = 0u - WORD_BIAS;
        bool decided = true;
#pragma unroll
        for (int k = 0; k < CODES_PER_WORD; k += 4) {
          const int col = w * CODES_PER_WORD + k;
          const float4 m = loadHalf4(element(part * SEGMENT + col));
          const float4 inv = *reinterpret_cast<const float4 *>(colInverse + col);
          const float mv[4] = {m.x, m.y, m.z, m.w}, iv[4] = {inv.x, inv.y, inv.z, inv.w};
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float quotient = fmaf(mv[e], iv[e] * rowFactor, offset);
            const float rounded = __fadd_rn(quotient, ROUND_MAGIC);
            decided = decided && fabsf(__fsub_rn(quotient, __fsub_rn(rounded, ROUND_MAGIC))) < margin;
            word += __float_as_uint(rounded) << ((k + e) * bits);
          }
        }
        words[r] = word;
        undecided |= decided ? 0u : 1u << r;
      }
      // The chain for the undecided words, from one copy of its code (rare; a loop by set bit).
      while (undecided != 0) {
        const int r = __ffs(undecided) - 1;
        undecided &= undecided - 1;
        const uint32_t word = exactWord(first + r);
#pragma unroll
        for (int k = 0; k < RUN; ++k)
          words[k] = k == r ? word : words[k];
      }
      storeWords<RUN>(dst + first, words, vectorStores);
    }
    if (part == 0) {
      rowScales[row] = saturateHalf(rowScale * scale);
      rowZeros[row] = saturateHalf(rowScale * lo);
    }
  }
  if (Tensor == 1)
    for (int byte = L::tileBytes + threadIdx.x; byte < L::tileBytesAligned; byte += Ctx::THREADS)
      rec[byte] = 0;
}

} // namespace dev
} // namespace kvarn
