// Parameter blocks of the generated kernels, shared verbatim by the device library (NVRTC) and
// the host launcher: plain C++ with no CUDA or standard headers. One struct per kernel kind.
#pragma once

namespace kvarn {
namespace dev {

/// Byte alignment the kernels need of the buffers a launch takes: each kernel's widest access to
/// the buffer that has no narrower fallback (query and K/V input rows, and flush's pool tiles, are
/// checked on the device and loaded narrower where misaligned). A misaligned pointer faults on the
/// device, and a fault loses the whole CUDA context, so the C API refuses one first.
/// (Enumerators, not static members: NVRTC would emit each member into every module as a global.)
struct BufferAlignment {
  /// Decode: 16-byte cp.async copies of record pieces, 16-byte loads of fp16 pool rows.
  enum : int { decodeCache = 16, decodePool = 16 };
  /// Decode's split merge: a lane's D / 32 partial floats in float4 (float2 at D = 64) loads.
  static constexpr int decodeWorkspace(int headDim) { return headDim / 32 >= 4 ? 16 : 8; }
  /// Flush: 32-bit code stores (two words at once only where the cache is 8-byte aligned).
  enum : int { flushCache = 4 };
  /// Append: a piece of min(8, D / 16) channels of a pool row per store (storeWords): D / 8
  /// bytes, at most 16.
  static constexpr int appendPool(int headDim) { return 4 * (headDim / 32 < 4 ? headDim / 32 : 4); }
  /// fp16 and bf16 elements, accessed one at a time (dequantize's records and rows, outputs).
  enum : int { element = 2 };
  /// int32 entries, block tables, lengths and status words; int64 slot mappings.
  enum : int { word = 4, wideWord = 8 };
};

/// Decode (grid: x = kv head, y = request, z = split; the merge kernel: z = 1).
struct DecodeParams {
  const void *query;              ///< [B, Hq, D] activation dtype, un-rotated
  void *out;                      ///< [B, Hq, D]
  const unsigned char *cache;     ///< [blocks, Hk, tile bytes]
  const void *poolKey;            ///< fp16 [slots, G, Hk, D], rotated rows
  const void *poolValue;
  const int *blockToSlot;         ///< [blocks], -1 = quantized record
  const int *blockTable;          ///< [B, maxBlocks]
  const int *seqLens;             ///< [B]
  float *partialOut;              ///< [B, Hq, splits, D] workspace
  float *partialLse;              ///< [B, Hq, splits]
  int batch;
  int numKvHeads;
  int maxBlocksPerRequest;
  int numSplits;                  ///< splits of this launch (planned), or the schedule's
  float softmaxScale;
  /// Division by numSplits as a multiply-high and two shifts (unsignedDivisor in launch.h), for
  /// the interleaved kernels' lookup window index (launchDecode sets them).
  unsigned splitMultiplier;
  int splitShift1, splitShift2;
  /// The interleaved kernels' splits that share the pages: numSplits, or numSplits - 1 where the
  /// last split walks the first and the last page (a sink split, decodeSinkSplit in launch.h;
  /// launchDecode sets it). The divisor above divides by it.
  int walkSplits;
};

/// The decode timeline of kernels built with KVARN_TIMELINE (diagnostic builds: `kvarn-tune
/// bench --timeline`; never tuned, cached as tuned or bundled kernels): %globaltimer stamps in
/// ns, one row per CTA of the decode grid (linear block index, the first CTAS only) in
/// `kvarn_timeline` and one per CTA of its split merge in `kvarn_timeline_merge`, zeroed by the
/// host before the launch (0 = not stamped).
struct DecodeTimeline {
  enum Field : int {
    Start,    ///< the query rotation starts (after `begin`'s loads are issued)
    Rotated,  ///< the rotated queries are in registers: the page loop may start
    End,      ///< thread 0 has issued its last store (output or the split's partial)
    Sm,       ///< %smid (not a time)
    WarpEnds, ///< WarpEnds + w: warp w leaves the page loop (w < WARP_STAMPS)
    Fields = WarpEnds + 16
  };
  enum MergeField : int {
    MergeStart,  ///< thread 0 of the merge CTA starts
    MergeWaited, ///< the decode grid's partials are visible (after griddepcontrol.wait)
    MergeEnd,    ///< warp 0 has issued its output stores
    MergeFields = 4
  };
  enum Size : int { WARP_STAMPS = 16, CTAS = 4096 };
};

/// Which pages each warp of a decode launch walks, defined once for DecodeContext (device) and
/// the page-walk test (host): warp w of split s walks pages begin + w, begin + w + stride, ...
/// while below end.
/// - Interleaved kernels (DecodeContext::INTERLEAVED): split s < walkSplits starts at
///   sink + s * warps and strides walkSplits * warps pages, so where a warp starts does not
///   depend on the sequence length (`startInterleaved`, known before it loads). With a sink split
///   (walkSplits = numSplits - 1) the others walk pages 1 .. pages - 2 and the last split's warp 0
///   walks page 0 and its warp 1 the last page.
/// - Otherwise split s walks the contiguous range s * pages / numSplits ..
///   (s + 1) * pages / numSplits, its warps every `warps` pages of it.
struct DecodeWalk {
  int begin = 0;       ///< warp w's first page is begin + w
  int end = 0;         ///< pages from `end` on are not this warp's
  int windowFirst = 0; ///< interleaved: the page where the first lookup window opens

  static constexpr int stride(bool interleaved, int walkSplits, int warps) {
    return interleaved ? walkSplits * warps : warps;
  }
  /// The interleaved walk's start, before the sequence length is known.
  constexpr void startInterleaved(int split, int warp, int numSplits, int walkSplits, int warps) {
    const int sink = numSplits - walkSplits;
    const bool sinkHere = split >= walkSplits;
    begin = sinkHere ? 0 : sink + split * warps;
    windowFirst = begin + warp;
  }
  /// The interleaved walk's end over `pages` pages (after startInterleaved).
  constexpr void endInterleaved(int split, int warp, int numSplits, int walkSplits, int pages) {
    const int sink = numSplits - walkSplits;
    const bool sinkHere = split >= walkSplits;
    if (!sinkHere) {
      end = sink ? (pages > 2 ? pages - 1 : 1) : pages;
    } else if (warp == 1 && pages >= 2) { // the last page: its lookup opens a window there (the
      begin = pages - 2;                  // one startInterleaved opened lies past the page)
      windowFirst = pages;
      end = pages;
    } else {
      end = warp == 0 && pages > 0 ? 1 : 0;
    }
  }
  /// The contiguous walk of split `split` over `pages` pages (windowFirst -1: no window until
  /// the first lookup).
  constexpr void contiguous(int split, int numSplits, int pages) {
    begin = int((long long)split * pages / numSplits);
    end = int((long long)(split + 1) * pages / numSplits);
    windowFirst = -1;
  }
};

/// The decode kernel's shared memory, defined once for DecodeContext (device) and
/// sharedMemoryBytes (host): rotated queries (fp32, Q8 rows), then per warp and stage one staged
/// record (K codes, V codes, scale vectors); the warp merge reuses the staging area.
struct DecodeSharedLayout {
  int keyBits, valueBits, tileTokens, headDim, queryRows, warps, stages; ///< queryRows = Q8

  /// 4-bit K codes of 128-token pages are read with LDMATRIX.TRANS: K rows stored without pads,
  /// 16-byte chunks swizzled (DecodeContext::keySwizzle). Otherwise groups of four K rows are
  /// padded by 32 bytes.
  constexpr bool keyLdsm() const { return keyBits == 4 && tileTokens == 128; }
  /// 2-bit V codes with D = 128 (and LDMATRIX keys) come through LDMATRIX.TRANS too.
  constexpr bool valueLdsm() const { return keyLdsm() && valueBits == 2 && headDim == 128; }
  constexpr int keyRow() const { return tileTokens * keyBits / 8; }
  constexpr int keyGroup() const { return 4 * keyRow() + (keyLdsm() ? 0 : 32); }
  constexpr int keyBytes() const { return headDim / 4 * keyGroup(); }
  constexpr int valueRow() const { return headDim * valueBits / 8; }
  /// Bytes of one lane group's V word (headDim / 8 channels).
  constexpr int valueWord() const { return headDim / 8 * valueBits / 8; }
  /// V rows are padded by valuePad() bytes every valuePadRows() rows (no bank conflicts).
  constexpr int valuePad() const { return valueLdsm() ? 16 : 8 * valueWord(); }
  constexpr int valuePadRows() const { return valueLdsm() ? 4 : keyLdsm() ? 8 : tileTokens / 4; }
  constexpr int valueBytes() const {
    return tileTokens * valueRow() + tileTokens / valuePadRows() * valuePad();
  }
  /// K_s_col, K_zp, K_s_row, V_s_col, V_s_row, V_zp (fp16).
  constexpr int scaleBytes() const { return 6 * (headDim + tileTokens); }
  constexpr int stageBytes() const { return (keyBytes() + valueBytes() + scaleBytes() + 15) / 16 * 16; }
  constexpr int stagingOffset() const { return queryRows * headDim * 4; }
  constexpr int stagingBytes() const { return warps * stages * stageBytes(); }
  constexpr int mergeBytes() const { return (warps * (queryRows * headDim + 2 * queryRows) + queryRows) * 4; }
  constexpr int bytes() const {
    return stagingOffset() + (stagingBytes() > mergeBytes() ? stagingBytes() : mergeBytes());
  }
};

/// The flush kernel's shared memory, defined once for FlushContext (device) and
/// sharedMemoryBytes (host): the tile M in fp16 (unpadded rows, their 16-byte chunks swizzled:
/// chunkSwizzle), the fp32 (sum, sum of squares) pairs of the partial sums, nine row/column
/// vectors of floats and two buffers of each warp's ranges of the row and column stds (two pairs
/// of 32-bit words per warp and buffer).
struct FlushSharedLayout {
  int tileTokens, headDim, warps, stages; ///< stages: the schedule's (sweepStages)

  constexpr int maxDim() const { return headDim > tileTokens ? headDim : tileTokens; }
  /// K is [D][G], V is [G][D]: unpadded rows whose 16-byte chunks (8 fp16 elements) are
  /// permuted, chunk k of row r stored at k ^ chunkSwizzle(r).
  constexpr int tileHalves() const { return headDim * tileTokens; }
  /// The chunk permutation of row `row`: XOR with bits 2-4 of the row, the same for the four rows
  /// of a sweep block (so a block's loads keep immediate row offsets). It spreads the flush's
  /// shared-memory accesses over the banks: the row sweeps' block rows (the eight lanes of a
  /// quarter-warp read four rows of one block, one chunk each), the column sweeps' pair loads
  /// (four block rows), the tile loads' stores, and the RTN's thread-per-row reads, whose rows
  /// are dealt by rtnRow. With rows padded by one chunk instead, the row sweeps' 16-byte loads
  /// took two wavefronts per quarter-warp.
  static constexpr int chunkSwizzle(int row) { return (row >> 2) & 7; }
  /// The row of RTN slot `slot` (threads take consecutive slots): within each run of 32, slot
  /// 8a + b takes row 4b + a, so that the lanes of a quarter- or half-warp read rows of distinct
  /// swizzles.
  static constexpr int rtnRow(int slot) {
    return (slot & ~31) | ((slot & 7) << 2) | ((slot >> 3) & 3);
  }
  /// The K tile load's items (flush.cuh, loadTile): a thread reads eight channels (16 bytes) of a
  /// pair of adjacent tokens per item, tokenPairs x headDim / 16 x 2 items in all. Items 2i and
  /// 2i + 1, which adjacent lanes take, read the two halves of the same 32-byte sectors (channels
  /// keyLoadChannel of token pair keyLoadPair), so each 16-byte load of a warp covers whole sectors;
  /// with one half per warp, as before, L1 had to merge the halves of two warps' loads (about 1%
  /// of the D = 128 launch, docs/benchmarks.md). The pairs' index bits 3 and 4 trade places: a
  /// lane pair's two channel rows lie two chunk swizzles apart, and a warp's token pairs {0-7,
  /// 16-23} (or {8-15, 24-31}) then put the two rows' stores in distinct banks.
  static constexpr int keyLoadPair(int item, int tokenPairs) {
    const int pair = (item >> 1) % tokenPairs;
    return (pair & ~24) | ((pair & 8) << 1) | ((pair & 16) >> 1);
  }
  static constexpr int keyLoadChannel(int item, int tokenPairs) {
    return 16 * ((item >> 1) / tokenPairs) + 8 * (item & 1);
  }
  /// The normalization sweeps' blocks: a thread holds blockRows x 8 elements, a warp a 4 x 8 grid
  /// of blocks (a tile of 4 blockRows rows and 64 columns). blockRows is the largest power of two
  /// up to 4 that still gives every warp a tile, and at least 2 (a thread's column runs hold whole
  /// pairs, the leaves of the sums' tree; warps beyond the tiles then skip the sweeps). Blocks of 8
  /// rows need more registers for their column trees (128 at 8 warps) and were not faster on the
  /// H200 (docs/benchmarks.md).
  static constexpr int blockRows(int threads, int rows, int cols) {
    int r = 4;
    while (r > 2 && rows * cols / (256 * r) < threads / 32)
      r /= 2;
    return r;
  }
  /// Rows by which a sweep round moves a warp's tile (flush.cuh, blockSums): warps take the tiles
  /// of 4 blockRows rows and 64 columns in turn, so where the warps divide the row's 64-column
  /// segments a warp keeps its column segment and moves warps / segments tiles down; 0 elsewhere.
  static constexpr int sweepRoundRows(int threads, int rows, int cols) {
    const int warps = threads / 32, segments = cols / 64;
    return warps % segments == 0 ? warps / segments * 4 * blockRows(threads, rows, cols) : 0;
  }
  /// Whether a sweep round moves every block by whole periods of chunkSwizzle (32 rows), so that
  /// each block keeps its swizzle and its address steps by sweepRoundRows whole rows a round.
  static constexpr bool sweepStepped(int threads, int rows, int cols) {
    return sweepRoundRows(threads, rows, cols) > 0 && sweepRoundRows(threads, rows, cols) % 32 == 0;
  }
  /// Tiles a warp's sweep takes at once: the schedule's stages where they divide every warp's
  /// tiles, else one.
  static constexpr int sweepStages(int threads, int rows, int cols, int stages) {
    const int tiles = cols / 64 * (rows / (4 * blockRows(threads, rows, cols)));
    return stages > 1 && tiles % (threads / 32 * stages) == 0 ? stages : 1;
  }
  /// Tiles a warp walks down one column segment where the sweeps walk (blockSums): where the warps
  /// divide the column segments and each segment's tile rows into equal runs of a power of two,
  /// warp w takes column segment w % segments and the `warpRuns` consecutive tile rows from
  /// (w / segments) x warpRuns. A warp then holds whole subtrees of its columns' pairwise trees, so
  /// it adds its tiles' column sums itself (columnRunTiles). 0 where the tiles are dealt to the
  /// warps in turn (tile warp + u x warps).
  static constexpr int warpRuns(int threads, int rows, int cols) {
    const int warps = threads / 32, segments = cols / 64;
    const int tileRows = rows / (4 * blockRows(threads, rows, cols));
    if (warps % segments != 0 || tileRows % (warps / segments) != 0)
      return 0;
    const int runs = tileRows / (warps / segments);
    return (runs & (runs - 1)) == 0 ? runs : 0;
  }
  /// The tile row of a warp's u-th tile and its column segment.
  static constexpr int sweepTileRow(int threads, int rows, int cols, int warp, int u) {
    const int segments = cols / 64, runs = warpRuns(threads, rows, cols);
    return runs > 0 ? warp / segments * runs + u : (warp + u * (threads / 32)) / segments;
  }
  static constexpr int sweepTileColumn(int threads, int cols, int warp, int u) {
    return (warp + u * (threads / 32)) % (cols / 64);
  }
  /// Tile rows (runs of 4 blockRows rows) that one column partial sums: in walking sweeps a warp
  /// adds its stages' tiles in registers and two rounds' sums through their partial (it rereads
  /// its own store), at most its runs; otherwise one.
  static constexpr int columnRunTiles(int threads, int rows, int cols, int stages) {
    const int runs = warpRuns(threads, rows, cols);
    const int both = 2 * sweepStages(threads, rows, cols, stages);
    return runs == 0 ? 1 : runs < both ? runs : both;
  }
  /// Column partials per column.
  static constexpr int columnPartials(int threads, int rows, int cols, int stages) {
    const int tileRows = rows / (4 * blockRows(threads, rows, cols));
    return tileRows / columnRunTiles(threads, rows, cols, stages);
  }
  /// Whether a walking sweep's blocks step by whole periods of chunkSwizzle (32 rows) from one
  /// round to the next: its rounds then start at multiples of 32 rows past the warp's first (one
  /// offset per stage, advanced by a constant each round).
  static constexpr bool walkStepped(int threads, int rows, int cols, int stages) {
    const int tileRows = 4 * blockRows(threads, rows, cols);
    return warpRuns(threads, rows, cols) > 0 &&
           sweepStages(threads, rows, cols, stages) * tileRows % 32 == 0;
  }
  /// Partial sums of the normalization sweeps: one per row and 64-column run plus columnPartials
  /// per column (both kept at once).
  static constexpr int blockPartials(int threads, int rows, int cols, int stages) {
    return rows * (cols / 64) + cols * columnPartials(threads, rows, cols, stages);
  }
  /// The partial sums of either view (K's [D][G], V's [G][D]).
  constexpr int partials() const {
    const int threads = 32 * warps;
    return maxOf(blockPartials(threads, headDim, tileTokens, stages),
                 blockPartials(threads, tileTokens, headDim, stages));
  }
  static constexpr int maxOf(int a, int b) { return a > b ? a : b; }
  /// col/row: scale, inverse, log; the rows' best iterate's scales (the columns' best and previous
  /// scales stay in their owners' registers: flush.cuh, FlushContext::OWNED_COLUMNS)
  static constexpr int VECTORS = 7;
  constexpr int partialOffset() const { return (tileHalves() * 2 + 15) / 16 * 16; }
  constexpr int vectorOffset() const { return partialOffset() + partials() * 8; }
  constexpr int rangeOffset() const { return vectorOffset() + VECTORS * maxDim() * 4; }
  constexpr int bytes() const { return rangeOffset() + 2 * warps * 16; }
};

/// Flush (grid: x = entry).
struct FlushParams {
  const void *poolKey;            ///< fp16 [slots, G, Hk, D]
  const void *poolValue;
  const int *entries;             ///< [E, 3] (block, kv head, pool slot)
  unsigned char *cache;           ///< [blocks, Hk, tile bytes]
  int *status;                    ///< bit 0 set when a tile held NaN/Inf (its record is left alone)
  int numEntries;
  int numKvHeads;
  /// Set by launchFlush: the CTAs resident at once. CTA b, after its tile's first normalization
  /// iteration (flush.cuh), prefetches CTA b + prefetchStride's pool tile into L2, so the CTAs of
  /// the next wave find theirs there (0: no prefetch).
  int prefetchStride;
};

/// Append (grid: x = groups of rows_per_cta tokens).
struct AppendParams {
  const void *key;                ///< [T, Hk, D] activation dtype; token t at key + t*keyStride
  const void *value;
  const long long *slotMapping;   ///< [T] flat pool row (slot*G + offset); negative = skip
  void *poolKey;                  ///< fp16 [slots, G, Hk, D]
  void *poolValue;
  int numTokens;
  int numKvHeads;
  long long keyStride;            ///< elements between tokens
  long long valueStride;
};

/// Dequantize (grid-stride over entries * G token rows, one warp per row).
struct DequantizeParams {
  const unsigned char *cache;     ///< [blocks, Hk, tile bytes]
  const int *entries;             ///< [E, 2] (block, kv head)
  void *key;                      ///< fp16 [E, G, D], rotated frame
  void *value;
  int numEntries;
  int numKvHeads;
};

} // namespace dev
} // namespace kvarn
