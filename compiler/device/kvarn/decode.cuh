// kvarn device library: decode attention building blocks over the quantized paged cache.
//
// Thread mapping (one warp, lane = 4*i + t): m16n8k16 tiles with tokens as rows for QK
// (S^T = codes^T * q') and channels as rows for PV (O^T = codes * P'). A lane owns
//  - K code rows 16*kc + 4*t + j (j = 0..3) over tokens TPI*i .. TPI*i + TPI - 1,
//  - V code rows (tokens) 2*TPI*t .. 2*TPI*t + 2*TPI - 1 over channels CPI*i .. CPI*i + CPI - 1,
// so both loads are whole rows per warp instruction and every fragment is built in registers
// (PRMT, then one AND per code pair, see CodeForm) with no shared-memory round trip. 4-bit K
// codes of 128-token pages instead come transposed from LDMATRIX (DecodeContext::KEY_LDSM): the
// lane owns tokens 64h + 4i + n (+ 32) of those rows, and V rows 8t .. 8t + 7 (+ 32, + 64, + 96);
// with 2-bit V codes and D = 128 the V codes come from LDMATRIX too (VALUE_LDSM) and the lane
// owns output channels 8i .. 8i + 7 and 64 + 8i .. (DecodeContext::channelOf).
// Scores move from the QK accumulator layout to the PV operand layout with MOVMATRIX.
#pragma once

#include "kvarn/common.cuh"
#include "kvarn/params.h"

namespace kvarn {
namespace dev {

#ifndef KVARN_TIMELINE
#define KVARN_TIMELINE 0
#endif
#if KVARN_TIMELINE
extern "C" __device__ unsigned long long kvarn_timeline[DecodeTimeline::CTAS][DecodeTimeline::Fields];
__device__ unsigned long long kvarn_timeline[DecodeTimeline::CTAS][DecodeTimeline::Fields];
extern "C" __device__ unsigned long long
    kvarn_timeline_merge[DecodeTimeline::CTAS][DecodeTimeline::MergeFields];
__device__ unsigned long long kvarn_timeline_merge[DecodeTimeline::CTAS][DecodeTimeline::MergeFields];
#endif

/// KVARN_TIMELINE builds: stores %globaltimer (or for DecodeTimeline::Sm, %smid) in this CTA's
/// row of the decode (MERGE = false) or merge timeline. Other builds: nothing.
template <bool MERGE = false> __device__ __forceinline__ void timelineStamp(int field) {
#if KVARN_TIMELINE
  const unsigned cta = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  if (cta >= unsigned(DecodeTimeline::CTAS))
    return;
  unsigned long long value;
  if (!MERGE && field == DecodeTimeline::Sm) {
    unsigned sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    value = sm;
  } else {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(value));
  }
  if constexpr (MERGE)
    kvarn_timeline_merge[cta][field] = value;
  else
    kvarn_timeline[cta][field] = value;
#endif
}

/// Index within its byte of the K codes of m-tile `pt`, rows r (half 0) or r + 8 (half 1): one
/// token per nibble for 4-bit codes, two token pairs per byte for 2-bit codes.
template <int KBITS> __host__ __device__ constexpr int keyCode(int pt, int half) {
  return (pt % (4 / KBITS)) * (4 / KBITS) + half;
}

/// Index within its byte of the V codes of m-tile `m` (channels 2m in rows r, 2m + 1 in rows
/// r + 8).
template <int VBITS> __host__ __device__ constexpr int valueCode(int m, int half) {
  return (2 * m) % (8 / VBITS) + half;
}

template <int KB, int VB, int G, int D, int Q, int WARPS, int STAGES, int SPLITS, int ROWS,
          bool COMPACT, typename T, int QUERY_TERMS, int WEIGHT_TERMS, bool CENTERED_QUERY,
          bool EARLY_WINDOW>
struct DecodeContext {
  typedef RecordLayout<KB, VB, G, D, COMPACT> Layout;
  static constexpr int TPI = G / 8;           ///< tokens per lane group (QK rows)
  static constexpr int P = TPI / 2;           ///< QK m-tiles per page = PV k-chunks
  static constexpr int KC = D / 16;           ///< QK k-chunks = PV m-tiles
  static constexpr int CPI = D / 8;           ///< channels per lane group (PV rows)
  static constexpr int NQ = (Q + 7) / 8;      ///< n8 tiles of query heads
  static constexpr int Q8 = NQ * 8;
  static constexpr int KEY_WORD = TPI * KB / 8;
  static constexpr int VALUE_WORD = CPI * VB / 8;
  static constexpr int SCALE_BYTES = Layout::keyScaleBytes + Layout::valueScaleBytes;
  typedef typename Packed<KEY_WORD>::Type KeyWord;
  typedef typename Packed<VALUE_WORD>::Type ValueWord;
  typedef T Type;
  static constexpr int KBITS = KB, VBITS = VB, TG = G, HD = D, QH = Q, NWARPS = WARPS;
  static constexpr int NSTAGES = STAGES;
  /// One stage: each page is staged in two copy groups (loadKeys, loadValues) that use the slot
  /// as soon as it frees up; more stages: one group per page (loadRecord).
  static constexpr bool SPLIT_LOADS = STAGES == 1;
  /// Copy groups a consumer may leave in flight: the later groups of the pipeline.
  static constexpr int GROUPS_IN_FLIGHT = SPLIT_LOADS ? 1 : STAGES - 1;
  /// fp16 terms per fp32 MMA operand, q' (scores) and P' (output update): 2 = high + low
  /// (about 22 bits), 1 = rounded once.
  static constexpr int Q_TERMS = QUERY_TERMS, P_TERMS = WEIGHT_TERMS;
  /// With one q' term: the low terms' sum over the channels times the codes' middle value joins
  /// each query's bias (scoresOnCodes), so the rounding of q' errs by sum_d low_d (code_d -
  /// middle) per score instead of sum_d low_d code_d.
  static constexpr bool Q_CENTERED = CENTERED_QUERY;
  /// The first lookup window's block ids load in begin, so their latency passes under the query
  /// rotation (the compiler sets it where the schedule leaves 255 registers per thread). The
  /// same kernels also interleave the splits' pages (INTERLEAVED), load their query rows in
  /// begin (`queryWords`), look each page up once (REUSE_LOOKUP) and store a split's partial
  /// straight from the warps' rows (`combinesInStore`); the 168-register kernels keep the code
  /// they were measured fastest with.
  static constexpr bool EARLY = EARLY_WINDOW;
  /// One lookup per page in the one-stage pipeline: the page's K staging keeps its block id for
  /// the page's pool check and its V staging (`stagedBlock`, one more register across the page
  /// loop; only where the schedule leaves 255 registers, like the early window).
  static constexpr bool REUSE_LOOKUP = SPLIT_LOADS && EARLY;
  /// The splits' pages interleaved (where the early window is on): warp w of split s walks
  /// pages s * WARPS + w, then every numSplits * WARPS pages, so which pages a warp walks does
  /// not depend on the sequence length and its first block ids load together with the length
  /// instead of after it. Otherwise a split walks a contiguous range split * pages / numSplits
  /// .. (split + 1) * pages / numSplits, its warps every WARPS pages of it: interleaved, ptxas
  /// spilled more in the 168-register kernels and B = 4 ran 4-6% slower (docs/benchmarks.md).
  static constexpr bool INTERLEAVED = EARLY;
  /// Operand form of the K and V codes (see CodeForm).
  static constexpr CodeForm KEY_FORM = CodeForm::Subnormal, VALUE_FORM = CodeForm::SubnormalHigh;
  static_assert((Q_TERMS == 1 || Q_TERMS == 2) && (P_TERMS == 1 || P_TERMS == 2),
                "one or two fp16 terms per operand");
  static_assert(!Q_CENTERED || Q_TERMS == 1, "the centered correction replaces q's low term");
  static_assert(KB == 2 || KB == 4, "key bits must be 2 or 4");
  static_assert(VB == 2 || VB == 4, "value bits must be 2 or 4");
  static_assert(Q >= 1 && Q <= 16, "1 to 16 query heads per kv head");

  /// Shared memory: rotated queries, then per warp and stage one staged record (K codes in groups
  /// of four rows padded by 32 bytes, or swizzled without pads with KEY_LDSM; V codes in groups
  /// of VALUE_PAD_ROWS rows padded by VALUE_PAD bytes, so fragment reads are free of bank
  /// conflicts; then the scale vectors). The warp-merge state reuses the staging area after the
  /// page loop.
  static __host__ __device__ constexpr DecodeSharedLayout sharedLayout() {
    return {KB, VB, G, D, Q8, WARPS, STAGES};
  }
  static constexpr int QUERY_FLOATS = Q8 * D;
  static constexpr int KEY_ROW = sharedLayout().keyRow();
  /// 4-bit K codes of 128-token pages are read with LDMATRIX.TRANS (see scoresOnCodes): QK row i
  /// of m-tile pt then holds token 64(pt/4) + 4i + pt%4 (rows i + 8: + 32) instead of
  /// TPI*i + 2pt (+ 1). The K rows (64 bytes) are then stored without pads, 16-byte chunk c of
  /// row R at 64R + 16(c ^ (R/4 % 4)) (keySwizzle): both that read and the copies are free of
  /// bank conflicts, and each copy instruction writes 512 contiguous bytes. V rows are padded
  /// every 8 rows.
  static constexpr bool KEY_LDSM = sharedLayout().keyLdsm();
  static constexpr int KEY_GROUP = sharedLayout().keyGroup();
  /// With KEY_LDSM: the 16-byte chunk that chunk c of K row R is stored at.
  static __host__ __device__ constexpr int keySwizzle(int row, int chunk) {
    return chunk ^ ((row / 4) % 4);
  }
  static constexpr int KEY_BYTES = sharedLayout().keyBytes();
  static constexpr int VALUE_ROW = sharedLayout().valueRow();
  /// 2-bit V codes with D = 128 (and LDMATRIX keys) come through LDMATRIX.TRANS too (see
  /// pvOnCodes): V rows padded by 16 bytes every 4 rows, and lane group i owns output channels
  /// 8i .. 8i + 7 and 64 + 8i .. 64 + 8i + 7 (channelOf) instead of CPI*i .. CPI*i + CPI - 1.
  static constexpr bool VALUE_LDSM = sharedLayout().valueLdsm();
  static constexpr int VALUE_PAD = sharedLayout().valuePad();
  static constexpr int VALUE_PAD_ROWS = sharedLayout().valuePadRows(); ///< V rows per pad
  static constexpr int VALUE_BYTES = sharedLayout().valueBytes();
  static constexpr int STAGE_BYTES = sharedLayout().stageBytes();
  static constexpr int STAGING_OFFSET = sharedLayout().stagingOffset();
  static constexpr int STAGING_BYTES = sharedLayout().stagingBytes();
  static constexpr int MERGE_BYTES = sharedLayout().mergeBytes();
  static constexpr int SHARED_BYTES = sharedLayout().bytes();
  static_assert(sharedLayout().valueWord() == VALUE_WORD && sharedLayout().scaleBytes() == SCALE_BYTES,
                "the shared layout's V word and scale vectors match the record's");

  DecodeParams p;
  int request, kvHead, split, numSplits, warp, lane, t, i;
  int seqLen, pageBegin, pageEnd;
  bool merged;
  unsigned char *shared;
  uint32_t query[NQ][KC][2];       ///< q_rot pairs (fp16 bits), B-fragment order
  int windowFirst;                 ///< first page of the lookup window (-1: none yet)
  int windowBlock, windowSlot;     ///< lane k: block and pool slot of page windowFirst + k*WARPS
  bool slotsPending;               ///< EARLY: the window's block ids are loading, its slots not yet
  float scores[NQ][P][4];
  uint32_t weights[NQ][P][2];      ///< P' as PV B fragments (after the transpose)
  uint32_t weightsLow[NQ][P][2];   ///< record pages: P' - fp16(P'), the second fp16 term
  float valueBias[NQ][2];          ///< sum_g w[g] V_zp[g] of the page, times the P' prescale
  float weightUnscale;             ///< one-term record pages: 2^-e, undoes the P' prescale
  float runningMax[NQ][2], runningSum[NQ][2];
  float out[NQ][KC][4];
  /// EARLY: this warp's query rows (rows warp + k * WARPS), loaded in begin before anything waits
  /// on the sequence length, for rotateQuery.
  static constexpr int QUERY_ROWS = (Q8 + WARPS - 1) / WARPS, QUERY_WORDS = D / 64;
  uint32_t queryWords[QUERY_ROWS][QUERY_WORDS];
  int stagedBlock; ///< REUSE_LOOKUP: block id of the page whose K half was staged last (-1: pool)

  static __device__ __forceinline__ DecodeContext begin(const DecodeParams &params) {
    DecodeContext c;
    extern __shared__ __align__(16) unsigned char kvarnShared[];
    if (dynamicSharedBytes() < SHARED_BYTES)
      __trap(); // the launcher sized shared memory for another schedule
    c.p = params;
    c.shared = kvarnShared;
    c.kvHead = blockIdx.x;
    c.request = blockIdx.y;
    c.split = blockIdx.z;
    c.numSplits = SPLITS > 0 ? SPLITS : params.numSplits;
    c.warp = threadIdx.x / 32;
    c.lane = threadIdx.x % 32;
    c.t = c.lane % 4;
    c.i = c.lane / 4;
    constexpr int QUERY_BYTES = Q * D * int(sizeof(T));
    if constexpr (EARLY) {
      // This warp's query rows load now, so their latency passes under the sequence length's
      // and the page range's (rotateQuery takes them from registers).
      const unsigned char *group = static_cast<const unsigned char *>(params.query) +
                                   (int64_t(c.request) * params.numKvHeads + c.kvHead) * QUERY_BYTES;
      const bool vector =
          reinterpret_cast<uint64_t>(params.query) % pairVectorBytes<QUERY_WORDS>() == 0;
#pragma unroll
      for (int k = 0; k < QUERY_ROWS; ++k) {
        const int row = c.warp + k * WARPS;
        if (row < Q)
          loadPairs(c.queryWords[k],
                    group + (row * D + QUERY_WORDS * 2 * c.lane) * int(sizeof(T)), vector);
      }
    } else {
      // rotateQuery reads the queries next, before the first page's lookups and copies: every
      // thread of the group's rows starts pulling its line into L2 now.
      if (int(threadIdx.x) * 128 < QUERY_BYTES) // every address inside this group's rows
        prefetchL2(static_cast<const unsigned char *>(params.query) +
                   (int64_t(c.request) * params.numKvHeads + c.kvHead) * QUERY_BYTES +
                   128 * threadIdx.x);
    }
    if constexpr (INTERLEAVED) {
      // The pages this warp walks do not depend on the sequence length, so the first lookup
      // window's block ids load now, together with the length; the pool slots, which need the
      // ids and the length, load at the first copy (settleWindow). Entries past the request's
      // end are read inside the table's row and never used. With a sink split (walkSplits <
      // numSplits) its warp 0 walks page 0 and its warp 1 the last page (the pages an engine
      // keeps in the pool), and the other splits walk the pages between.
      DecodeWalk walk;
      walk.startInterleaved(c.split, c.warp, c.numSplits, c.walkSplits(), WARPS);
      c.pageBegin = walk.begin;
      c.windowFirst = walk.windowFirst;
      const int mine = c.windowFirst + c.lane * c.pageStride();
      c.windowBlock =
          mine < params.maxBlocksPerRequest
              ? params.blockTable[int64_t(c.request) * params.maxBlocksPerRequest + mine]
              : 0;
      c.slotsPending = true;
      c.seqLen = params.seqLens[c.request];
      walk.endInterleaved(c.split, c.warp, c.numSplits, c.walkSplits(), (c.seqLen + G - 1) / G);
      c.pageBegin = walk.begin;
      c.pageEnd = walk.end;
      c.windowFirst = walk.windowFirst;
    } else {
      // A contiguous range per split (a division: the host's multiplier made ptxas spill more
      // in these 168-register kernels); the window opens at the first lookup.
      c.seqLen = params.seqLens[c.request];
      DecodeWalk walk;
      walk.contiguous(c.split, c.numSplits, (c.seqLen + G - 1) / G);
      c.pageBegin = walk.begin;
      c.pageEnd = walk.end;
      c.windowFirst = walk.windowFirst;
      c.slotsPending = false;
    }
    c.merged = false;
    c.weightUnscale = 1.0f;
    if constexpr (REUSE_LOOKUP)
      c.stagedBlock = -1;
#pragma unroll
    for (int n = 0; n < NQ; ++n) {
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        c.runningMax[n][q] = -KVARN_INFINITY;
        c.runningSum[n][q] = 0.0f;
      }
#pragma unroll
      for (int m = 0; m < KC; ++m)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          c.out[n][m][e] = 0.0f;
    }
    return c;
  }

  /// The token of QK m-tile pt in row `row` (half 0) or `row` + 8 (half 1): rowPart(row) +
  /// pagePart(pt, half). With the PV B fragments built by MOVMATRIX from those rows, PV k index
  /// kk < 8 of k-chunk pt is token(pt, 0, kk) and kk >= 8 is token(pt, 1, kk - 8).
  static __host__ __device__ constexpr int rowPart(int row) { return KEY_LDSM ? 4 * row : TPI * row; }
  static __host__ __device__ constexpr int pagePart(int pt, int half) {
    return KEY_LDSM ? 64 * (pt / 4) + 32 * half + pt % 4 : 2 * pt + half;
  }
  static __device__ __forceinline__ int tokenOf(int pt, int half, int row) {
    return rowPart(row) + pagePart(pt, half);
  }
  /// The value of one unit of the K code in QK m-tile pt, rows c.i (half 0) or c.i + 8 (half 1).
  static __host__ __device__ constexpr float keyUnit(int pt, int half) {
    return codeUnit<KEY_FORM, KB>(KEY_LDSM ? pt % 2 : keyCode<KB>(pt, half));
  }
  /// fp16 vector `v` (one value per token) at this lane's two tokens of m-tile pt, as floats
  /// (with LDMATRIX keys: tokens 64h + 4i + n and 64h + 32 + 4i + n, two 8-byte loads per h).
  __device__ __forceinline__ float2 tokenPair(const Half *v, int pt) const {
    if constexpr (KEY_LDSM) {
      const uint2 first = *reinterpret_cast<const uint2 *>(v + tokenOf(pt & ~3, 0, i));
      const uint2 second = *reinterpret_cast<const uint2 *>(v + tokenOf(pt & ~3, 1, i));
      const float2 a = unpackHalf2(pt % 4 < 2 ? first.x : first.y);
      const float2 b = unpackHalf2(pt % 4 < 2 ? second.x : second.y);
      return pt % 2 == 0 ? make_float2(a.x, b.x) : make_float2(a.y, b.y);
    } else {
      return unpackHalf2(*reinterpret_cast<const uint32_t *>(v + tokenOf(pt, 0, i)));
    }
  }
  /// Output channel of accumulator out[n][m] rows c.i (half 0) or c.i + 8 (half 1) of this lane.
  __device__ __forceinline__ int channelOf(int m, int half) const {
    return VALUE_LDSM ? 64 * half + 8 * i + m : CPI * i + 2 * m + half;
  }
  /// The value of one unit of the V code in PV m-tile m, rows c.i (half 0) or c.i + 8 (half 1):
  /// with LDMATRIX values, code m % 8 of a 16-bit element sits at bits 8..9 (m even) or 6..7.
  static __host__ __device__ constexpr float valueUnit(int m, int half) {
    return VALUE_LDSM ? bitUnit(m % 2 == 0 ? 8 : 6)
                      : codeUnit<VALUE_FORM, VB>(valueCode<VB>(m, half));
  }
  /// Byte offset of V code row `token` in a staged record's V area.
  static __host__ __device__ constexpr int valueRowOffset(int token) {
    return token * VALUE_ROW + (token / VALUE_PAD_ROWS) * VALUE_PAD;
  }

  /// Scores reach the softmax as t = s - reference(n, q): the running maximum, or 0 before the
  /// first attended token. A page whose t all stay <= the step's threshold keeps the running
  /// maximum (weights exp2(t) <= 2^threshold) and skips the reductions; see `recordSoftmax`.
  __device__ __forceinline__ float reference(int n, int q) const {
    return runningMax[n][q] == -KVARN_INFINITY ? 0.0f : runningMax[n][q];
  }
  /// log2 of the largest weight a record page may keep without moving the running maximum: with
  /// one P' term the prescale leaves that headroom below fp16's range; with two P' terms (not
  /// prescaled) weights stay <= 1. Pool pages always take their exact maximum.
  static constexpr int RECORD_THRESHOLD = P_TERMS == 1 ? 2 : 0;

  __device__ __forceinline__ float *queryShared() { return reinterpret_cast<float *>(shared); }
  __device__ __forceinline__ unsigned char *stageShared(int stage) {
    return shared + STAGING_OFFSET + (warp * STAGES + stage) * STAGE_BYTES;
  }
  __device__ __forceinline__ unsigned char *scaleShared(int stage) {
    return stageShared(stage) + KEY_BYTES + VALUE_BYTES;
  }
  __device__ __forceinline__ float *mergeShared() {
    return reinterpret_cast<float *>(shared + STAGING_OFFSET);
  }
  __device__ __forceinline__ const unsigned char *recordOfBlock(int block) const {
    return p.cache + (int64_t(block) * p.numKvHeads + kvHead) * Layout::tileBytesAligned;
  }
  /// The splits that share the pages (all but a sink split, see DecodeParams::walkSplits).
  __device__ __forceinline__ int walkSplits() const { return SPLITS > 0 ? SPLITS : p.walkSplits; }
  /// Pages between two consecutive pages of a warp.
  __device__ __forceinline__ int pageStride() const {
    return DecodeWalk::stride(INTERLEAVED, walkSplits(), WARPS);
  }
  /// How many of this warp's pages lie from `first` to `page` (page - first is a multiple of
  /// the stride).
  __device__ __forceinline__ int pagesBetween(int first, int page) const {
    if constexpr (!INTERLEAVED)
      return (page - first) / WARPS;
    const unsigned steps = unsigned(page - first) / WARPS;
    if constexpr (SPLITS > 0)
      return int(steps / unsigned(SPLITS));
    else
      return int(divideInvariant(steps, p.splitMultiplier, p.splitShift1, p.splitShift2));
  }
  /// EARLY: loads the pool slots of the window begin opened (the first copy of every warp calls
  /// it, so later lookups see no pending slots and the check folds away).
  __device__ __forceinline__ void settleWindow() {
    if (slotsPending) {
      const int mine = windowFirst + lane * pageStride();
      windowSlot = mine < pageEnd ? p.blockToSlot[windowBlock] : -1;
      slotsPending = false;
    }
  }
  /// Block id and pool slot of one of this warp's pages (warp-uniform call). The lookups of 32
  /// pages of the warp are loaded together, one lane each, so a page costs no dependent global
  /// loads on the critical path. A window opened by a prefetch STAGES - 1 pages ahead starts at
  /// the page being computed, so the pipeline's two lookups share one window.
  __device__ __forceinline__ int2 lookup(int page) {
    settleWindow();
    int k; // windowFirst < 0: no window yet (never with EARLY, whose window begin opened)
    if constexpr (EARLY) // interleaved: a page before the window counts as far past it
      k = pagesBetween(windowFirst, page);
    else
      k = windowFirst < 0 ? 32 : pagesBetween(windowFirst, page);
    if (k >= 32 || k < 0) {
      windowFirst = max(page - (STAGES - 1) * pageStride(), pageBegin + warp);
      const int mine = windowFirst + lane * pageStride();
      windowBlock = mine < pageEnd ? p.blockTable[int64_t(request) * p.maxBlocksPerRequest + mine] : 0;
      windowSlot = mine < pageEnd ? p.blockToSlot[windowBlock] : -1;
      k = pagesBetween(windowFirst, page);
    }
    return make_int2(__shfl_sync(0xffffffffu, windowBlock, k),
                     __shfl_sync(0xffffffffu, windowSlot, k));
  }
  __device__ __forceinline__ int validTokens(int page) const {
    return min(G, seqLen - page * G);
  }
};

//===----------------------------------------------------------------------===//
// Building blocks called by the generated kernels.
//===----------------------------------------------------------------------===//

/// q_rot = fp16(q * H16) for the GQA group (fp16 whatever the query dtype: the format is fp16
/// from the rotation on): a warp per query row, lane l holding its HD / 32 contiguous channels
/// (one vector load, butterflies in registers and across the warp), written to shared memory for
/// the pool-page path; then each lane keeps its B-fragment pairs: channels 16*kc + 4*t + {0,1}
/// and {2,3} of query 8*n + i.
template <typename Ctx> __device__ __forceinline__ void rotateQuery(Ctx &c) {
  if (threadIdx.x == 0) {
    timelineStamp(DecodeTimeline::Start);
    timelineStamp(DecodeTimeline::Sm);
  }
  typedef typename Ctx::Type T;
  constexpr int E = Ctx::HD / 32, WORDS = E / 2;
  static_assert(E >= 2 && Ctx::HD % 32 == 0, "a lane holds at least one pair of channels");
  float *qs = c.queryShared();
  const T *query = static_cast<const T *>(c.p.query) +
                   (int64_t(c.request) * c.p.numKvHeads + c.kvHead) * Ctx::QH * Ctx::HD;
  // Rows start at multiples of HD elements, so the base pointer decides the alignment.
  const bool vector = reinterpret_cast<uint64_t>(c.p.query) % pairVectorBytes<WORDS>() == 0;
  const float scale = hadamardScale<Ctx::HD>();
  static_assert(Ctx::QUERY_WORDS == WORDS, "begin's query words are this lane's pairs");
  for (int row = c.warp; row < Ctx::Q8; row += Ctx::NWARPS) { // warp-uniform
    float x[E];
    if (row < Ctx::QH) {
      uint32_t words[WORDS];
      if constexpr (Ctx::EARLY) {
        // Loaded by begin; unrolled so that the row index is a constant.
#pragma unroll
        for (int k = 0; k < Ctx::QUERY_ROWS; ++k)
          if (row == c.warp + k * Ctx::NWARPS)
#pragma unroll
            for (int w = 0; w < WORDS; ++w)
              words[w] = c.queryWords[k][w];
      } else {
        loadPairs(words, query + row * Ctx::HD + E * c.lane, vector);
      }
#pragma unroll
      for (int w = 0; w < WORDS; ++w) {
        const float2 pair = unpackPair<T>(words[w]);
        x[2 * w] = pair.x;
        x[2 * w + 1] = pair.y;
      }
      laneGroupFwht<E, 32>(x, c.lane);
#pragma unroll
      for (int e = 0; e < E; ++e)
        x[e] = roundTo<Half>(x[e] * scale);
    } else {
#pragma unroll
      for (int e = 0; e < E; ++e)
        x[e] = 0.0f; // padding rows of the last n8 tile
    }
    float *target = qs + row * Ctx::HD + E * c.lane;
    if constexpr (E % 4 == 0) {
#pragma unroll
      for (int e = 0; e < E; e += 4)
        *reinterpret_cast<float4 *>(target + e) = make_float4(x[e], x[e + 1], x[e + 2], x[e + 3]);
    } else {
      *reinterpret_cast<float2 *>(target) = make_float2(x[0], x[1]);
    }
  }
  __syncthreads();
#pragma unroll
  for (int n = 0; n < Ctx::NQ; ++n)
#pragma unroll
    for (int kc = 0; kc < Ctx::KC; ++kc)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const float *row = qs + (8 * n + c.i) * Ctx::HD + 16 * kc + 4 * c.t + 2 * half;
        c.query[n][kc][half] = packHalf2(row[0], row[1]); // exact: fp16 values
      }
  if (threadIdx.x == 0)
    timelineStamp(DecodeTimeline::Rotated);
}

template <typename Ctx> __device__ __forceinline__ int pageFirst(Ctx &c) {
  return c.pageBegin + c.warp;
}
template <typename Ctx> __device__ __forceinline__ int pageEnd(Ctx &c) { return c.pageEnd; }
template <typename Ctx> __device__ __forceinline__ int pageStep(Ctx &c) { return c.pageStride(); }

/// True if `page` is in this warp's range and still fp16 in the pool.
template <typename Ctx> __device__ __forceinline__ bool isPoolPage(Ctx &c, int page) {
  if (page >= c.pageEnd)
    return false;
  if constexpr (Ctx::REUSE_LOOKUP) // the lookup of the page's K copy, staged just before
    return c.stagedBlock < 0;
  return c.lookup(page).y >= 0;
}

/// Parts of a record page that one copy group stages.
enum RecordPart : int { KeyPart = 1, ValuePart = 2, WholeRecord = KeyPart | ValuePart };

/// Issues the asynchronous copies of the parts `PARTS` of a record page (codes and scales) into
/// this warp's staging buffer of stage `stage` (16-byte cp.async, bypassing L1) if the page is in
/// this warp's range and quantized, and closes one copy group either way (the pipeline counts
/// groups).
template <int PARTS, typename Ctx>
__device__ __forceinline__ void stageRecord(Ctx &c, int page, int stage) {
  typedef typename Ctx::Layout L;
  static_assert(BufferAlignment::decodeCache == 16 && L::tileBytesAligned % 16 == 0,
                "the C API checks the cache for these 16-byte copies; records keep its alignment");
  __syncwarp(); // every lane is done reading the slot's previous page
  c.settleWindow();
  if (page >= c.pageEnd) {
    copyAsyncCommit();
    return;
  }
  // The record's block id; a pool page is attended directly from global memory. With
  // REUSE_LOOKUP a page's V half takes the lookup of its K half, staged just before it
  // (`load_values` follows `load_keys` of the same page in the one-stage pipeline).
  int block;
  if constexpr (Ctx::REUSE_LOOKUP) {
    if constexpr (PARTS == ValuePart) {
      block = c.stagedBlock;
    } else {
      const int2 entry = c.lookup(page);
      block = c.stagedBlock = entry.y >= 0 ? -1 : entry.x;
    }
    if (block < 0) {
      copyAsyncCommit();
      return;
    }
  } else {
    const int2 entry = c.lookup(page);
    if (entry.y >= 0) {
      copyAsyncCommit();
      return;
    }
    block = entry.x;
  }
  const unsigned char *rec = c.recordOfBlock(block);
  unsigned char *staging = c.stageShared(stage);
  // Chunk lane + 32k of a code block sits at a lane-dependent base plus a constant offset per k
  // (rows per warp step are a multiple of 4 and divide or are divided by the V pad period), so
  // the addresses cost one register per stage instead of one per chunk.
  constexpr int KEY_PER_ROW = Ctx::KEY_ROW / 16, KEY_STEP_ROWS = 32 / KEY_PER_ROW;
  constexpr int KEY_CHUNKS = Ctx::HD * Ctx::KEY_ROW / 16;
  static_assert(KEY_STEP_ROWS % 4 == 0 && KEY_CHUNKS % 32 == 0, "key staging pattern");
  if constexpr ((PARTS & KeyPart) != 0 && Ctx::KEY_LDSM) {
    // Rows lane / 4 + 8k, chunk lane % 4: the swizzle of row lane / 4 + 8k is that of row
    // lane / 4 with bit 1 flipped for odd k, so two base addresses serve every k.
    static_assert(KEY_PER_ROW == 4 && KEY_STEP_ROWS == 8, "64-byte K rows");
    const int row = c.lane / 4, chunk = c.lane % 4;
    unsigned char *even = staging + row * Ctx::KEY_ROW + 16 * Ctx::keySwizzle(row, chunk);
    unsigned char *odd = staging + row * Ctx::KEY_ROW + 16 * Ctx::keySwizzle(row + 8, chunk);
    const unsigned char *src = rec + L::keyPacked + 16 * c.lane;
#pragma unroll
    for (int k = 0; k < KEY_CHUNKS / 32; ++k)
      copyAsync16((k % 2 == 0 ? even : odd) + 512 * k, src + 512 * k);
  } else if constexpr ((PARTS & KeyPart) != 0) {
    const int row = c.lane / KEY_PER_ROW, column = 16 * (c.lane % KEY_PER_ROW);
    unsigned char *dst = staging + (row / 4) * Ctx::KEY_GROUP + (row % 4) * Ctx::KEY_ROW + column;
    const unsigned char *src = rec + L::keyPacked + 16 * c.lane;
#pragma unroll
    for (int k = 0; k < KEY_CHUNKS / 32; ++k)
      copyAsync16(dst + k * (KEY_STEP_ROWS / 4) * Ctx::KEY_GROUP, src + 512 * k);
  }
  constexpr int VALUE_PER_ROW = Ctx::VALUE_ROW / 16;
  constexpr int VALUE_CHUNKS = Ctx::TG * Ctx::VALUE_ROW / 16;
  static_assert(VALUE_PER_ROW <= 32 && 32 % VALUE_PER_ROW == 0 && VALUE_CHUNKS % 32 == 0,
                "value staging pattern");
  constexpr int VALUE_STEP_ROWS = 32 / VALUE_PER_ROW, PAD_ROWS = Ctx::VALUE_PAD_ROWS;
  static_assert(VALUE_STEP_ROWS % PAD_ROWS == 0 || PAD_ROWS % VALUE_STEP_ROWS == 0,
                "value staging pattern");
  if constexpr ((PARTS & ValuePart) != 0) {
    const int row = c.lane / VALUE_PER_ROW, column = 16 * (c.lane % VALUE_PER_ROW);
    unsigned char *dst = staging + Ctx::KEY_BYTES + row * Ctx::VALUE_ROW +
                         (row / PAD_ROWS) * Ctx::VALUE_PAD + column;
    const unsigned char *src = rec + L::valuePacked + 16 * c.lane;
#pragma unroll
    for (int k = 0; k < VALUE_CHUNKS / 32; ++k)
      copyAsync16(dst + k * VALUE_STEP_ROWS * Ctx::VALUE_ROW +
                      (k * VALUE_STEP_ROWS / PAD_ROWS) * Ctx::VALUE_PAD,
                  src + 512 * k);
  }
  unsigned char *scales = c.scaleShared(stage);
  if constexpr ((PARTS & KeyPart) != 0)
    copyAsyncWarp<L::keyScaleBytes>(scales, rec + L::keyScaleCol, c.lane);
  if constexpr ((PARTS & ValuePart) != 0)
    copyAsyncWarp<L::valueScaleBytes>(scales + L::keyScaleBytes, rec + L::valueScaleCol, c.lane);
  copyAsyncCommit();
}

/// The whole page in one copy group (pipelines of two or more stages).
template <typename Ctx> __device__ __forceinline__ void loadRecord(Ctx &c, int page, int stage) {
  stageRecord<WholeRecord>(c, page, stage);
}
/// The page's K codes and K scales in one copy group (one-stage pipeline, after the scores).
template <typename Ctx> __device__ __forceinline__ void loadKeys(Ctx &c, int page, int stage) {
  static_assert(Ctx::SPLIT_LOADS, "split loads pair with the one-stage pipeline");
  stageRecord<KeyPart>(c, page, stage);
}
/// The page's V codes and V scales in one copy group (one-stage pipeline, after the output
/// update).
template <typename Ctx> __device__ __forceinline__ void loadValues(Ctx &c, int page, int stage) {
  static_assert(Ctx::SPLIT_LOADS, "split loads pair with the one-stage pipeline");
  stageRecord<ValuePart>(c, page, stage);
}

/// Scores of a record page (log2 domain, softmax scale folded):
/// s[g] = K_s_row[g] * (sum_d (q[d] K_s_col[d]) code[d][g] + sum_d q[d] K_zp[d]).
/// The MMAs run on the codes (exact in fp16) with q' = q_rot * K_s_col split into two fp16 terms
/// (high = q' rounded once, low = the rounded residual: about 22 significant bits) or, with one
/// operand term, rounded once (Q_CENTERED: the low terms' share at the codes' middle value added
/// to the bias). The zero-point bias (in code units) starts the accumulators, so
/// the epilogue only applies K_s_row, the code unit and the softmax scale.
template <typename Ctx>
__device__ __forceinline__ void scoresOnCodes(Ctx &c, int page, int stage) {
  copyAsyncWait<Ctx::GROUPS_IN_FLIGHT>(); // this page's (K) group; later groups may still fly
  __syncwarp();
  constexpr int KBITS = Ctx::KBITS;
  constexpr int PAIRS_PER_BYTE = 4 / KBITS; // token pairs per code byte
  const unsigned char *staging = c.scaleShared(stage);
  const Half *keyScaleCol = reinterpret_cast<const Half *>(staging);
  const Half *keyZeroPoint = keyScaleCol + Ctx::HD;
  const Half *keyScaleRow = keyZeroPoint + Ctx::HD;
  uint32_t b[Ctx::NQ][Ctx::KC][2], bLow[Ctx::NQ][Ctx::KC][2]; // q' = high + low (fp16 each)
  float bias[Ctx::NQ][4], centered[Ctx::NQ][4];
  // Step 1. q' = q_rot * K_s_col as fp16 B fragments, and the bias sum_d q[d] K_zp[d] of each
  // query (accumulator order: queries 2t, 2t + 1, 2t, 2t + 1).
  // q_rot is fp16 for either query dtype. HMUL2 rounds the exact product q * K_s_col once, HFMA2
  // the exact residual; the bias is one MMA per k-chunk with rows 0..7 of A holding K_zp (exact
  // products). Rows 8..15 are left as they are (their sums, accumulators 2 and 3, are never
  // read), so A is the two loaded words in place, with no register copies to build the fragment.
  // With Q_CENTERED, q' is one term and the low terms only feed `centered`: per k-chunk one MMA
  // whose A is the codes' middle value (exact in fp16: 7.5 or 1.5, exact products), so each
  // query's bias gains middle * sum_d low_d, the low terms' share of a score whose codes all sat
  // at the middle; a score then errs by sum_d low_d (code_d - middle), not sum_d low_d code_d.
  // A chain of its own, so the bias MMAs do not wait on it.
#pragma unroll
  for (int n = 0; n < Ctx::NQ; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      bias[n][e] = 0.0f;
      centered[n][e] = 0.0f;
    }
  constexpr uint32_t middle = KBITS == 4 ? 0x47804780u : 0x3e003e00u; // fp16 pairs 7.5, 1.5
#pragma unroll
  for (int kc = 0; kc < Ctx::KC; ++kc) {
    const int channel = 16 * kc + 4 * c.t;
    const uint2 scaleBits = *reinterpret_cast<const uint2 *>(keyScaleCol + channel);
    // Two 32-bit loads, so that each lands in its A register (ptxas copies the halves of an
    // 8-byte load into place).
    const uint32_t zero01 = loadShared32(keyZeroPoint + channel);
    const uint32_t zero23 = loadShared32(keyZeroPoint + channel + 2);
#pragma unroll
    for (int n = 0; n < Ctx::NQ; ++n) {
      b[n][kc][0] = hmul2(c.query[n][kc][0], scaleBits.x);
      b[n][kc][1] = hmul2(c.query[n][kc][1], scaleBits.y);
      if constexpr (Ctx::Q_TERMS == 2 || Ctx::Q_CENTERED) {
        bLow[n][kc][0] = hfma2Sub(c.query[n][kc][0], scaleBits.x, b[n][kc][0]);
        bLow[n][kc][1] = hfma2Sub(c.query[n][kc][1], scaleBits.y, b[n][kc][1]);
      }
      uint32_t rowsBelow; // rows 8..15 of A: whatever the register holds (no instruction)
      asm("" : "=r"(rowsBelow));
      mma16816(bias[n], zero01, rowsBelow, zero23, rowsBelow, c.query[n][kc][0],
               c.query[n][kc][1]);
      if constexpr (Ctx::Q_CENTERED)
        mma16816(centered[n], middle, middle, middle, middle, bLow[n][kc][0], bLow[n][kc][1]);
    }
  }
  // Step 2. MMA over the code tiles: rows = tokens (Ctx::tokenOf), k = channels. Each
  // row's accumulator starts at the bias in its code unit (exact: a power of two); every token
  // row takes its query's bias from accumulators 0 and 1 (see step 1).
#pragma unroll
  for (int n = 0; n < Ctx::NQ; ++n)
#pragma unroll
    for (int pt = 0; pt < Ctx::P; ++pt)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        c.scores[n][pt][e] = (Ctx::Q_CENTERED ? bias[n][e % 2] + centered[n][e % 2]
                                              : bias[n][e % 2]) *
                             Ctx::keyUnit(pt, e / 2);
  const unsigned char *keyCodes = c.stageShared(stage);
  if constexpr (Ctx::KEY_LDSM) {
    // 4-bit codes, 128 tokens: per k-chunk and half page h, one LDMATRIX.X4.TRANS. Matrix j
    // holds channels 16kc + 4(r/2) + r%2 + 2(j/2) (row r; the B fragments' channel order) over
    // tokens 64h + 32(j%2) .. + 31 (16 bytes); lane (i, t) gets channels 4t (+2), 4t + 1 (+2) of
    // tokens 64h (+32) + 4i .. 4i + 3, one nibble per token: nibble n is QK m-tile 4h + n.
    // Row 4(r/2) + r%2 + 2(j/2) + 16kc, chunk 2h + j%2; its swizzle does not depend on kc.
    const int r = c.lane % 8, j = c.lane / 8, row = 4 * (r / 2) + r % 2 + 2 * (j / 2);
    const unsigned char *rowBase[2] = {
        keyCodes + row * Ctx::KEY_ROW + 16 * Ctx::keySwizzle(row, j % 2),
        keyCodes + row * Ctx::KEY_ROW + 16 * Ctx::keySwizzle(row, 2 + j % 2)};
#pragma unroll
    for (int kc = 0; kc < Ctx::KC; ++kc)
#pragma unroll
      for (int h = 0; h < Ctx::P / 4; ++h) {
        uint32_t x[4], y[4];
        loadMatricesTransposed(rowBase[h] + 4 * kc * Ctx::KEY_GROUP, x[0], x[1], x[2], x[3]);
#pragma unroll
        for (int k = 0; k < 4; ++k)
          y[k] = x[k] >> 8; // nibbles 2 and 3 of each half down to bits 0..7
        uint32_t a[4][4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          a[0][k] = x[k] & 0x000f000fu;
          a[1][k] = x[k] & 0x00f000f0u;
          a[2][k] = y[k] & 0x000f000fu;
          a[3][k] = y[k] & 0x00f000f0u;
        }
#pragma unroll
        for (int term = 0; term < Ctx::Q_TERMS; ++term) // high terms, then low terms
#pragma unroll
          for (int n = 0; n < Ctx::NQ; ++n)
#pragma unroll
            for (int g = 0; g < 4; ++g) {
              const uint32_t(&q)[2] = term == 0 ? b[n][kc] : bLow[n][kc];
              mma16816(c.scores[n][4 * h + g], a[g][0], a[g][1], a[g][2], a[g][3], q[0], q[1]);
            }
      }
  } else {
#pragma unroll
  for (int kc = 0; kc < Ctx::KC; ++kc) {
    typename Ctx::KeyWord words[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) // code row 16*kc + 4*t + j, tokens TPI*i ...
      words[j] = *reinterpret_cast<const typename Ctx::KeyWord *>(
          keyCodes + (4 * kc + c.t) * Ctx::KEY_GROUP + j * Ctx::KEY_ROW + c.i * Ctx::KEY_WORD);
    // GROUP m-tiles at a time: their high-term MMAs, then their low-term MMAs, so an MMA does
    // not wait on the one just issued into the same accumulator.
    constexpr int GROUP = Ctx::P % 4 == 0 ? 4 : (Ctx::P % 2 == 0 ? 2 : 1);
#pragma unroll
    for (int first = 0; first < Ctx::P; first += GROUP) {
      uint32_t a[GROUP][4];
#pragma unroll
      for (int g = 0; g < GROUP; ++g) {
        const int pt = first + g;
        const int byteIndex = pt / PAIRS_PER_BYTE;
        const uint32_t x01 = duplicateBytes(part32(words[0], byteIndex / 4),
                                            part32(words[1], byteIndex / 4), byteIndex % 4);
        const uint32_t x23 = duplicateBytes(part32(words[2], byteIndex / 4),
                                            part32(words[3], byteIndex / 4), byteIndex % 4);
        if (keyCode<KBITS>(pt, 0) == 0)
          codeFragment<Ctx::KEY_FORM, KBITS, 0>(x01, x23, a[g][0], a[g][1], a[g][2], a[g][3]);
        else // 2-bit codes, second token pair of the byte
          codeFragment<Ctx::KEY_FORM, KBITS, 2>(x01, x23, a[g][0], a[g][1], a[g][2], a[g][3]);
      }
#pragma unroll
      for (int term = 0; term < Ctx::Q_TERMS; ++term) // high terms, then low terms
#pragma unroll
        for (int n = 0; n < Ctx::NQ; ++n)
#pragma unroll
          for (int g = 0; g < GROUP; ++g) {
            const uint32_t(&q)[2] = term == 0 ? b[n][kc] : bLow[n][kc];
            mma16816(c.scores[n][first + g], a[g][0], a[g][1], a[g][2], a[g][3], q[0], q[1]);
          }
    }
  }
  }
  // Step 3. Epilogue: K_s_row and the softmax scale per token, minus the reference (one FFMA per
  // score); tokens past the end masked.
  const float scale = c.p.softmaxScale * 1.4426950408889634f;
  const int valid = c.validTokens(page);
  float reference[Ctx::NQ][2];
#pragma unroll
  for (int n = 0; n < Ctx::NQ; ++n)
#pragma unroll
    for (int q = 0; q < 2; ++q)
      reference[n][q] = -c.reference(n, q);
#pragma unroll
  for (int pt = 0; pt < Ctx::P; ++pt) {
    const float2 rowScale = c.tokenPair(keyScaleRow, pt);
    const float r0 = rowScale.x * (scale / Ctx::keyUnit(pt, 0));
    const float r1 = rowScale.y * (scale / Ctx::keyUnit(pt, 1));
#pragma unroll
    for (int n = 0; n < Ctx::NQ; ++n) {
      float *sc = c.scores[n][pt];
      sc[0] = fmaf(sc[0], r0, reference[n][0]);
      sc[1] = fmaf(sc[1], r0, reference[n][1]);
      sc[2] = fmaf(sc[2], r1, reference[n][0]);
      sc[3] = fmaf(sc[3], r1, reference[n][1]);
    }
  }
  // The last page of a request masks the tokens past its end: one branch for the whole page
  // (inside the loop above ptxas kept one branch per m-tile).
  if (valid < Ctx::TG) {
#pragma unroll
    for (int pt = 0; pt < Ctx::P; ++pt) {
      const int token0 = Ctx::tokenOf(pt, 0, c.i), token1 = Ctx::tokenOf(pt, 1, c.i);
#pragma unroll
      for (int n = 0; n < Ctx::NQ; ++n) {
        float *sc = c.scores[n][pt];
        sc[0] = token0 < valid ? sc[0] : -KVARN_INFINITY;
        sc[1] = token0 < valid ? sc[1] : -KVARN_INFINITY;
        sc[2] = token1 < valid ? sc[2] : -KVARN_INFINITY;
        sc[3] = token1 < valid ? sc[3] : -KVARN_INFINITY;
      }
    }
  }
}

/// Multiplies query tile n's output by the rescale factors of its two queries, unless every lane
/// keeps both at 1 (once the running maximum settles, most pages leave it alone).
template <typename Ctx>
__device__ __forceinline__ void rescaleOutput(Ctx &c, int n, const float (&alpha)[2]) {
  if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
    for (int m = 0; m < Ctx::KC; ++m) {
      c.out[n][m][0] *= alpha[0];
      c.out[n][m][1] *= alpha[1];
      c.out[n][m][2] *= alpha[0];
      c.out[n][m][3] *= alpha[1];
    }
  }
}

/// The page's weights of query tile n, w = exp2(score - offset[query]), added to the running
/// sums and stored as the PV B fragments P' (times V_s_row and the prescale for record pages,
/// with the V zero-point bias sum_g w[g] V_zp[g] to start the PV accumulators).
template <bool Record, typename Ctx>
__device__ __forceinline__ void pageWeights(Ctx &c, int n, const float (&offset)[2],
                                            float weightScale, const Half *valueScaleRow,
                                            const Half *valueZeroPoint) {
  float bias[2] = {0.0f, 0.0f};
#pragma unroll
  for (int pt = 0; pt < Ctx::P; ++pt) {
    float w[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      w[e] = fastExp2(c.scores[n][pt][e] - offset[e % 2]);
      c.runningSum[n][e % 2] += w[e];
    }
    if constexpr (Record) {
      const float2 rowScale = c.tokenPair(valueScaleRow, pt);
      const float2 zero = c.tokenPair(valueZeroPoint, pt);
      bias[0] += w[0] * zero.x + w[2] * zero.y;
      bias[1] += w[1] * zero.x + w[3] * zero.y;
      const float scaled0 = rowScale.x * weightScale, scaled1 = rowScale.y * weightScale;
      w[0] *= scaled0;
      w[1] *= scaled0;
      w[2] *= scaled1;
      w[3] *= scaled1;
    }
    const uint32_t first = packHalf2(w[0], w[1]), second = packHalf2(w[2], w[3]);
    if constexpr (Record && Ctx::P_TERMS == 2) { // P' = high + low fp16 terms
      const float2 f = unpackHalf2(first), g = unpackHalf2(second);
      c.weightsLow[n][pt][0] = transpose8x8(packHalf2(w[0] - f.x, w[1] - f.y));
      c.weightsLow[n][pt][1] = transpose8x8(packHalf2(w[2] - g.x, w[3] - g.y));
    }
    c.weights[n][pt][0] = transpose8x8(first);
    c.weights[n][pt][1] = transpose8x8(second);
  }
  // The zero-point term in the units of P' (times the prescale), to start the PV accumulators.
  c.valueBias[n][0] = Record ? warpSumXor(bias[0], 4, 16) * weightScale : 0.0f;
  c.valueBias[n][1] = Record ? warpSumXor(bias[1], 4, 16) * weightScale : 0.0f;
}

/// Online-softmax step of a record page on `c.scores`, which hold t = s - reference (see
/// `Ctx::reference`): running max/sum, output rescale, and the PV weights (times V_s_row, with
/// the V zero-point bias). The running maximum moves only when some t exceeds RECORD_THRESHOLD
/// (or nothing was attended yet); otherwise the weights are exp2(t) <= 2^RECORD_THRESHOLD and the
/// step skips the cross-lane reductions, the rescale and the subtraction. With one operand term,
/// P' = w * V_s_row is prescaled by a power of two 2^e with
/// max|V_s_row| * 2^e < 2^(15 - RECORD_THRESHOLD), so the fp16 operands stay below fp16's range
/// and normal numbers however small the weights of a long context get; the PV epilogue
/// multiplies by 2^-e (exact).
template <typename Ctx>
__device__ __forceinline__ void recordSoftmax(Ctx &c, const Half *valueScaleRow,
                                              const Half *valueZeroPoint) {
  constexpr int THRESHOLD = Ctx::RECORD_THRESHOLD;
  float weightScale = 1.0f;
  if constexpr (Ctx::P_TERMS == 1) { // two terms keep ~22 bits: no prescale
    float largest = 0.0f;
#pragma unroll
    for (int pt = 0; pt < Ctx::P; ++pt) {
      const float2 rowScale = c.tokenPair(valueScaleRow, pt);
      largest = fmaxf(largest, fmaxf(fabsf(rowScale.x), fabsf(rowScale.y)));
    }
    largest = warpMaxXor(largest, 4, 16);
    // largest is 0 or a finite fp16 value: its exponent is in [-24, 15], so e is in
    // [-1 - THRESHOLD, 38 - THRESHOLD].
    constexpr int TOP = 14 - THRESHOLD;
    const int exponent =
        largest > 0.0f ? int((__float_as_uint(largest) >> 23) & 0xffu) - 127 : TOP;
    weightScale = __uint_as_float(uint32_t(127 + TOP - exponent) << 23);
    c.weightUnscale = __uint_as_float(uint32_t(127 - TOP + exponent) << 23);
  }
  // Does the running maximum move? Per lane: the largest t of each query, against the threshold.
  float local[Ctx::NQ][2];
  bool moves = false;
#pragma unroll
  for (int n = 0; n < Ctx::NQ; ++n)
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      local[n][q] = -KVARN_INFINITY;
#pragma unroll
      for (int pt = 0; pt < Ctx::P; ++pt)
        local[n][q] = fmaxf(local[n][q], fmaxf(c.scores[n][pt][q], c.scores[n][pt][q + 2]));
      moves |= local[n][q] > float(THRESHOLD) || c.runningMax[n][q] == -KVARN_INFINITY;
    }
  if (__any_sync(0xffffffffu, moves)) {
#pragma unroll
    for (int n = 0; n < Ctx::NQ; ++n) {
      float alpha[2], shift[2];
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const float reference = c.reference(n, q);
        const float newMax =
            fmaxf(c.runningMax[n][q], reference + warpMaxXor(local[n][q], 4, 16));
        // -inf (nothing attended yet) is subtracted as 0, so masked scores give weight 0.
        const float safeMax = newMax == -KVARN_INFINITY ? 0.0f : newMax;
        alpha[q] = fastExp2(c.runningMax[n][q] - safeMax);
        shift[q] = safeMax - reference;
        c.runningMax[n][q] = newMax;
        c.runningSum[n][q] *= alpha[q];
      }
#pragma unroll
      for (int pt = 0; pt < Ctx::P; ++pt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          c.scores[n][pt][e] -= shift[e % 2];
      rescaleOutput(c, n, alpha);
    }
  }
  const float none[2] = {0.0f, 0.0f};
#pragma unroll
  for (int n = 0; n < Ctx::NQ; ++n)
    pageWeights<true>(c, n, none, weightScale, valueScaleRow, valueZeroPoint);
}

/// Online-softmax step of a pool page on `c.scores` (absolute scores): the page's maximum,
/// running max/sum, output rescale and the PV weights P' = w (no scales).
template <typename Ctx> __device__ __forceinline__ void poolSoftmax(Ctx &c) {
#pragma unroll
  for (int n = 0; n < Ctx::NQ; ++n) {
    float alpha[2], newMax[2];
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      float local = -KVARN_INFINITY;
#pragma unroll
      for (int pt = 0; pt < Ctx::P; ++pt)
        local = fmaxf(local, fmaxf(c.scores[n][pt][q], c.scores[n][pt][q + 2]));
      local = warpMaxXor(local, 4, 16);
      newMax[q] = fmaxf(c.runningMax[n][q], local);
      // -inf (nothing attended yet) is subtracted as 0, so masked scores give weight 0, not NaN.
      const float safeMax = newMax[q] == -KVARN_INFINITY ? 0.0f : newMax[q];
      alpha[q] = fastExp2(c.runningMax[n][q] - safeMax);
      c.runningMax[n][q] = newMax[q];
      newMax[q] = safeMax;
      c.runningSum[n][q] *= alpha[q];
    }
    rescaleOutput(c, n, alpha);
    pageWeights<false>(c, n, newMax, 1.0f, nullptr, nullptr);
  }
}

template <typename Ctx> __device__ __forceinline__ void onlineSoftmax(Ctx &c, int stage) {
  if constexpr (Ctx::SPLIT_LOADS) { // this page's V group; the next page's K group may still fly
    copyAsyncWait<1>();
    __syncwarp();
  }
  const unsigned char *staging = c.scaleShared(stage) + Ctx::Layout::keyScaleBytes;
  const Half *valueScaleRow = reinterpret_cast<const Half *>(staging) + Ctx::HD;
  recordSoftmax(c, valueScaleRow, valueScaleRow + Ctx::TG);
}

/// Output update of a record page: o[d] += V_s_col[d] * (sum_g P'[g] code[g][d] + bias).
/// The MMAs run on the codes (exact in fp16, see CodeForm) and P' (one or two fp16 terms) into
/// per-page accumulators that start at the zero-point bias in code units; the fp32 epilogue
/// applies V_s_col and undoes the code unit and the P' prescale.
template <typename Ctx> __device__ __forceinline__ void pvOnCodes(Ctx &c, int stage) {
  constexpr int VBITS = Ctx::VBITS;
  constexpr int CHANNELS_PER_BYTE = 8 / VBITS;
  const Half *valueScaleCol =
      reinterpret_cast<const Half *>(c.scaleShared(stage) + Ctx::Layout::keyScaleBytes);
  // This lane's V rows: token rowPart(2t + k) + pagePart(pt, half); rowPart(2t) is a multiple of
  // the pad period, so the per-row offsets are constants.
  static_assert(Ctx::rowPart(2) % Ctx::VALUE_PAD_ROWS == 0, "value rows per lane group");
  const unsigned char *rows = c.stageShared(stage) + Ctx::KEY_BYTES + c.i * Ctx::VALUE_WORD +
                              Ctx::valueRowOffset(Ctx::rowPart(2 * c.t));
  float acc[Ctx::NQ][Ctx::KC][4];
#pragma unroll
  for (int n = 0; n < Ctx::NQ; ++n)
#pragma unroll
    for (int m = 0; m < Ctx::KC; ++m)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        acc[n][m][e] = c.valueBias[n][e % 2] * Ctx::valueUnit(m, e / 2);
  if constexpr (Ctx::VALUE_LDSM) {
    // Per k-chunk one LDMATRIX.X4.TRANS: matrix j holds the V rows of PV k indices 0..7 (j < 2)
    // or 8..15 over channels 64(j%2) .. + 63 (16 bytes, 8 channels per 16-bit element); lane
    // (i, t) gets channels 8i .. 8i + 7 (+ 64) of the tokens of k indices 2t, 2t + 1 (+ 8). Code
    // m of an element is output channel 8i + m (rows i) or 64 + 8i + m (rows i + 8), moved to
    // mantissa bits 6..9 (see valueUnit).
    const int r = c.lane % 8, j = c.lane / 8;
    static_assert(Ctx::rowPart(1) % Ctx::VALUE_PAD_ROWS == 0, "value rows per matrix row");
    static_assert(Ctx::pagePart(0, 1) % Ctx::VALUE_PAD_ROWS == 0, "value row halves");
    const unsigned char *rowBase =
        c.stageShared(stage) + Ctx::KEY_BYTES + Ctx::valueRowOffset(Ctx::rowPart(r)) +
        (j < 2 ? 0 : Ctx::valueRowOffset(Ctx::pagePart(0, 1))) + 16 * (j % 2);
#pragma unroll
    for (int pt = 0; pt < Ctx::P; ++pt) {
      uint32_t x[4];
      loadMatricesTransposed(rowBase + Ctx::valueRowOffset(Ctx::pagePart(pt, 0)), x[0], x[1], x[2],
                             x[3]);
      uint32_t up[4], down[4], swapped[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        up[k] = x[k] << 4;                   // codes 1, 2 to bits 6..9
        down[k] = x[k] >> 4;                 // codes 5, 6
        swapped[k] = __byte_perm(x[k], 0, 0x2301); // codes 0, 7 (bytes swapped in each half)
      }
#pragma unroll
      for (int m = 0; m < Ctx::KC; ++m) {
        uint32_t a[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const uint32_t source = m == 0 || m == 7 ? swapped[k]
                                  : m == 1 || m == 2 ? up[k]
                                  : m == 5 || m == 6 ? down[k]
                                                     : x[k];
          a[k] = source & (m % 2 == 0 ? 0x03000300u : 0x00c000c0u);
        }
        // a[0]: rows i (k 2t, 2t + 1), a[1]: rows i + 8, a[2], a[3]: k 2t + 8, 2t + 9.
#pragma unroll
        for (int n = 0; n < Ctx::NQ; ++n) {
          mma16816(acc[n][m], a[0], a[1], a[2], a[3], c.weights[n][pt][0], c.weights[n][pt][1]);
          if constexpr (Ctx::P_TERMS == 2)
            mma16816(acc[n][m], a[0], a[1], a[2], a[3], c.weightsLow[n][pt][0],
                     c.weightsLow[n][pt][1]);
        }
      }
    }
  } else {
#pragma unroll
  for (int pt = 0; pt < Ctx::P; ++pt) {
    // The token rows of PV k indices 2t, 2t + 8, 2t + 1, 2t + 9 of k-chunk pt (Ctx::tokenOf);
    // channels CPI*i ...
    typedef typename Ctx::ValueWord Word;
    auto row = [&](int half, int k) {
      return *reinterpret_cast<const Word *>(
          rows + Ctx::valueRowOffset(Ctx::rowPart(k) + Ctx::pagePart(pt, half)));
    };
    const Word r0 = row(0, 0), r1 = row(1, 0), r2 = row(0, 1), r3 = row(1, 1);
#pragma unroll
    for (int m = 0; m < Ctx::KC; ++m) {
      // Channels 2m (rows i) and 2m + 1 (rows i + 8) of the lane's word.
      const int byteIndex = (2 * m) / CHANNELS_PER_BYTE;
      const uint32_t x02 =
          duplicateBytes(part32(r0, byteIndex / 4), part32(r2, byteIndex / 4), byteIndex % 4);
      const uint32_t x13 =
          duplicateBytes(part32(r1, byteIndex / 4), part32(r3, byteIndex / 4), byteIndex % 4);
      uint32_t a0, a1, a2, a3;
      if (valueCode<VBITS>(m, 0) == 0)
        codeFragment<Ctx::VALUE_FORM, VBITS, 0>(x02, x13, a0, a1, a2, a3);
      else // 2-bit codes in the high nibble
        codeFragment<Ctx::VALUE_FORM, VBITS, 2>(x02, x13, a0, a1, a2, a3);
#pragma unroll
      for (int n = 0; n < Ctx::NQ; ++n) {
        mma16816(acc[n][m], a0, a1, a2, a3, c.weights[n][pt][0], c.weights[n][pt][1]);
        if constexpr (Ctx::P_TERMS == 2)
          mma16816(acc[n][m], a0, a1, a2, a3, c.weightsLow[n][pt][0], c.weightsLow[n][pt][1]);
      }
    }
  }
  }
  const float unscale = Ctx::P_TERMS == 1 ? c.weightUnscale : 1.0f;
  // V_s_col at this lane's channels: with LDMATRIX values 8i .. 8i + 7 and 64 + 8i .. (two
  // 16-byte loads), else the pair 2m, 2m + 1 of its CPI channels.
  auto columnScales = [&](int m) {
    if constexpr (Ctx::VALUE_LDSM) {
      const uint4 low = *reinterpret_cast<const uint4 *>(valueScaleCol + c.channelOf(0, 0));
      const uint4 high = *reinterpret_cast<const uint4 *>(valueScaleCol + c.channelOf(0, 1));
      const float2 a = unpackHalf2(part32(low, m / 2)), b = unpackHalf2(part32(high, m / 2));
      return m % 2 == 0 ? make_float2(a.x, b.x) : make_float2(a.y, b.y);
    } else {
      return unpackHalf2(*reinterpret_cast<const uint32_t *>(valueScaleCol + c.channelOf(m, 0)));
    }
  };
#pragma unroll
  for (int m = 0; m < Ctx::KC; ++m) {
    // exact: 2^-e and the code unit's reciprocal are powers of two
    const float2 colScale = columnScales(m);
    const float s0 = colScale.x * (unscale / Ctx::valueUnit(m, 0));
    const float s1 = colScale.y * (unscale / Ctx::valueUnit(m, 1));
#pragma unroll
    for (int n = 0; n < Ctx::NQ; ++n) {
      c.out[n][m][0] = fmaf(s0, acc[n][m][0], c.out[n][m][0]);
      c.out[n][m][1] = fmaf(s0, acc[n][m][1], c.out[n][m][1]);
      c.out[n][m][2] = fmaf(s1, acc[n][m][2], c.out[n][m][2]);
      c.out[n][m][3] = fmaf(s1, acc[n][m][3], c.out[n][m][3]);
    }
  }
}

/// Scores, softmax step and output update of one fp16 pool page. Lane t reads channels
/// [D/4 * t, D/4 * (t + 1)) of its key rows and lane i channels [CPI * i, CPI * (i + 1)) of its
/// value rows with 16-byte loads, one vector of each row at a time, so the path holds few rows in
/// registers and leaves the kernel's register count to the record path. Rows past the request's
/// end are never read (a lane whose row is past it reads the last valid row, so the loads need no
/// branches) and weigh nothing.
template <typename Ctx> __device__ __forceinline__ void attendPoolPage(Ctx &c, int page) {
  constexpr int D = Ctx::HD, VALUE_VECTORS = Ctx::CPI / 8;
  const int slot = c.lookup(page).y;
  const int valid = c.validTokens(page);
  const int64_t rowStride = int64_t(c.p.numKvHeads) * D;
  const int64_t pageBase = (int64_t(slot) * Ctx::TG * c.p.numKvHeads + c.kvHead) * D;
  const Half *keyBase = static_cast<const Half *>(c.p.poolKey) + pageBase + (D / 4) * c.t;
  // This lane's value channels: CPI*i .. (VALUE_VECTORS vectors of 8), or with LDMATRIX values
  // 8i .. 8i + 7 and 64 + 8i .. (Ctx::channelOf).
  const Half *valueBase = static_cast<const Half *>(c.p.poolValue) + pageBase + c.channelOf(0, 0);
  constexpr int VALUE_VECTOR_STEP = Ctx::VALUE_LDSM ? 64 : 8;
  const float scale = c.p.softmaxScale * 1.4426950408889634f;
  // Step 1. B fragments of q_rot in this path's channel order (lane t: channels
  // [D/4 * t, D/4 * (t + 1)), from the rotated queries in shared memory).
  uint32_t bq[Ctx::NQ][Ctx::KC][2];
  const float *qs = c.queryShared();
#pragma unroll
  for (int n = 0; n < Ctx::NQ; ++n)
#pragma unroll
    for (int kc = 0; kc < Ctx::KC; ++kc) {
      const float4 q =
          *reinterpret_cast<const float4 *>(qs + (8 * n + c.i) * D + (D / 4) * c.t + 4 * kc);
      bq[n][kc][0] = packHalf2(q.x, q.y);
      bq[n][kc][1] = packHalf2(q.z, q.w);
    }
  // Step 2. S^T = K q_rot: per token pair, two key rows in 16-byte vectors.
#pragma unroll
  for (int pt = 0; pt < Ctx::P; ++pt) {
    const int token = Ctx::TPI * c.i + 2 * pt;
    // Rows past the end read the last valid row (branch-free loads) and are zeroed.
    const Half *row0 = keyBase + min(token, valid - 1) * rowStride;
    const Half *row1 = keyBase + min(token + 1, valid - 1) * rowStride;
#pragma unroll
    for (int n = 0; n < Ctx::NQ; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        c.scores[n][pt][e] = 0.0f;
#pragma unroll
    for (int u = 0; u < D / 32; ++u) {
      uint4 k0 = *reinterpret_cast<const uint4 *>(row0 + 8 * u);
      uint4 k1 = *reinterpret_cast<const uint4 *>(row1 + 8 * u);
      k0 = token < valid ? k0 : make_uint4(0u, 0u, 0u, 0u);
      k1 = token + 1 < valid ? k1 : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int kc = 2 * u + half;
#pragma unroll
        for (int n = 0; n < Ctx::NQ; ++n)
          mma16816(c.scores[n][pt], part32(k0, 2 * half), part32(k1, 2 * half),
                   part32(k0, 2 * half + 1), part32(k1, 2 * half + 1), bq[n][kc][0],
                   bq[n][kc][1]);
      }
    }
#pragma unroll
    for (int n = 0; n < Ctx::NQ; ++n) {
      float *s = c.scores[n][pt];
      s[0] = token < valid ? s[0] * scale : -KVARN_INFINITY;
      s[1] = token < valid ? s[1] * scale : -KVARN_INFINITY;
      s[2] = token + 1 < valid ? s[2] * scale : -KVARN_INFINITY;
      s[3] = token + 1 < valid ? s[3] * scale : -KVARN_INFINITY;
    }
  }
  // Step 3. Softmax step (no scales).
  poolSoftmax(c);
  // Step 4. O^T += V^T P: per k-chunk and 8 channels, four value rows.
#pragma unroll
  for (int pt = 0; pt < Ctx::P; ++pt) {
    const int first = 2 * Ctx::TPI * c.t;
    const int rows[4] = {first + 2 * pt, first + 2 * pt + 1, first + Ctx::TPI + 2 * pt,
                         first + Ctx::TPI + 2 * pt + 1};
    auto valueRow = [&](int r, int u) { // as for the keys: clamped row, then zeroed past the end
      const uint4 v = *reinterpret_cast<const uint4 *>(
          valueBase + min(rows[r], valid - 1) * rowStride + VALUE_VECTOR_STEP * u);
      return rows[r] < valid ? v : make_uint4(0u, 0u, 0u, 0u);
    };
    if constexpr (Ctx::VALUE_LDSM) {
      // Output channel 8i + m (rows i) from vector 0 and 64 + 8i + m (rows i + 8) from vector 1.
      uint4 v[4][2];
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int u = 0; u < 2; ++u)
          v[r][u] = valueRow(r, u);
#pragma unroll
      for (int m = 0; m < Ctx::KC; ++m) {
        const uint32_t select = m % 2 == 0 ? 0x5410 : 0x7632;
        const uint32_t a0 = __byte_perm(part32(v[0][0], m / 2), part32(v[2][0], m / 2), select);
        const uint32_t a1 = __byte_perm(part32(v[0][1], m / 2), part32(v[2][1], m / 2), select);
        const uint32_t a2 = __byte_perm(part32(v[1][0], m / 2), part32(v[3][0], m / 2), select);
        const uint32_t a3 = __byte_perm(part32(v[1][1], m / 2), part32(v[3][1], m / 2), select);
#pragma unroll
        for (int n = 0; n < Ctx::NQ; ++n)
          mma16816(c.out[n][m], a0, a1, a2, a3, c.weights[n][pt][0], c.weights[n][pt][1]);
      }
    } else {
#pragma unroll
      for (int u = 0; u < VALUE_VECTORS; ++u) { // 8 channels (four m-tiles) at a time
        uint4 v[4];
#pragma unroll
        for (int r = 0; r < 4; ++r)
          v[r] = valueRow(r, u);
#pragma unroll
        for (int word = 0; word < 4; ++word) {
          const int m = 4 * u + word;
          const uint32_t x0 = part32(v[0], word), x1 = part32(v[1], word);
          const uint32_t x2 = part32(v[2], word), x3 = part32(v[3], word);
          const uint32_t a0 = __byte_perm(x0, x2, 0x5410), a1 = __byte_perm(x0, x2, 0x7632);
          const uint32_t a2 = __byte_perm(x1, x3, 0x5410), a3 = __byte_perm(x1, x3, 0x7632);
#pragma unroll
          for (int n = 0; n < Ctx::NQ; ++n)
            mma16816(c.out[n][m], a0, a1, a2, a3, c.weights[n][pt][0], c.weights[n][pt][1]);
        }
      }
    }
  }
}

/// True where the split's partial is stored straight from the warps' rows (storePartial sums
/// them as it stores, without a barrier and a pass through shared memory): the early-window
/// schedules' launches of more than one split.
template <typename Ctx> __device__ __forceinline__ bool combinesInStore(const Ctx &c) {
  return Ctx::EARLY && c.numSplits > 1;
}

/// Merges the warps' (max, sum, output) into shared memory: normalized output [Q8][D] and the
/// natural-log LSE [Q8] at the start of the merge area (with combinesInStore, the warps' rows
/// and weights, summed by storePartial).
template <typename Ctx> __device__ __forceinline__ void mergeWarps(Ctx &c) {
  if (c.lane == 0 && c.warp < DecodeTimeline::WARP_STAMPS)
    timelineStamp(DecodeTimeline::WarpEnds + c.warp);
  float *mergeArea = c.mergeShared();
  float *outputs = mergeArea;                                  // [WARPS][Q8][D]
  float *maxima = mergeArea + Ctx::NWARPS * Ctx::Q8 * Ctx::HD; // [WARPS][Q8]
  float *sums = maxima + Ctx::NWARPS * Ctx::Q8;                // [WARPS][Q8]
  __syncthreads(); // the merge area reuses the staging buffers of every warp
  // Step 1. Each warp publishes its state.
#pragma unroll
  for (int n = 0; n < Ctx::NQ; ++n) {
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const float total = warpSumXor(c.runningSum[n][q], 4, 16);
      if (c.i == 0) {
        maxima[c.warp * Ctx::Q8 + 8 * n + 2 * c.t + q] = c.runningMax[n][q];
        sums[c.warp * Ctx::Q8 + 8 * n + 2 * c.t + q] = total;
      }
    }
    if constexpr (Ctx::VALUE_LDSM) {
      // Channels 8i + m (and 64 + 8i + m) of m = 0..7 are contiguous: two 16-byte stores per
      // (query, half) instead of eight 4-byte ones (8-way bank conflicts).
      static_assert(Ctx::KC == 8, "eight m-tiles per half");
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float *row = outputs + (c.warp * Ctx::Q8 + 8 * n + 2 * c.t + e % 2) * Ctx::HD +
                     c.channelOf(0, e / 2);
#pragma unroll
        for (int m = 0; m < Ctx::KC; m += 4)
          *reinterpret_cast<float4 *>(row + m) =
              make_float4(c.out[n][m][e], c.out[n][m + 1][e], c.out[n][m + 2][e],
                          c.out[n][m + 3][e]);
      }
    } else {
#pragma unroll
      for (int m = 0; m < Ctx::KC; ++m)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int query = 8 * n + 2 * c.t + (e % 2);
          const int channel = c.channelOf(m, e / 2);
          outputs[(c.warp * Ctx::Q8 + query) * Ctx::HD + channel] = c.out[n][m][e];
        }
    }
  }
  __syncthreads();
  // Step 2. Per query: the combined maximum, each warp's weight exp2(max_w - max) / total (in
  // place of its maximum) and the natural-log LSE; then every output element is a weighted sum
  // of the warps' (the result overwrites warp 0's slot).
  float *lseArea = sums + Ctx::NWARPS * Ctx::Q8;
  for (int query = threadIdx.x; query < Ctx::Q8; query += blockDim.x) {
    float best = -KVARN_INFINITY;
#pragma unroll
    for (int w = 0; w < Ctx::NWARPS; ++w)
      best = fmaxf(best, maxima[w * Ctx::Q8 + query]);
    float total = 0.0f, weight[Ctx::NWARPS];
#pragma unroll
    for (int w = 0; w < Ctx::NWARPS; ++w) {
      weight[w] = best == -KVARN_INFINITY ? 0.0f : exp2f(maxima[w * Ctx::Q8 + query] - best);
      total += weight[w] * sums[w * Ctx::Q8 + query];
    }
    const float inverse = total > 0.0f ? 1.0f / total : 0.0f;
#pragma unroll
    for (int w = 0; w < Ctx::NWARPS; ++w)
      maxima[w * Ctx::Q8 + query] = weight[w] * inverse;
    lseArea[query] = total > 0.0f ? (best + log2f(total)) * 0.6931471805599453f : -KVARN_INFINITY;
  }
  __syncthreads();
  if (combinesInStore(c)) { // storePartial sums the warps' rows as it stores them
    c.merged = true;
    return;
  }
  for (int item = threadIdx.x; item < Ctx::Q8 * Ctx::HD; item += blockDim.x) {
    const int query = item / Ctx::HD;
    float value = 0.0f;
#pragma unroll
    for (int w = 0; w < Ctx::NWARPS; ++w)
      value += maxima[w * Ctx::Q8 + query] * outputs[w * Ctx::Q8 * Ctx::HD + item];
    outputs[item] = value;
  }
  __syncthreads();
  c.merged = true;
}

/// out = dtype(fp16(fp16(o_rot) * H16)) of the QH rows held in shared memory [QH][D] (complete:
/// the warp merge ends with a barrier): a warp per row, the register FWHT (laneGroupFwht).
template <typename Ctx>
__device__ __forceinline__ void storeUnrotated(Ctx &c, float *rowsShared, int64_t outBase) {
  typedef typename Ctx::Type T;
  constexpr int E = Ctx::HD / 32;
  const float scale = hadamardScale<Ctx::HD>();
  T *out = static_cast<T *>(c.p.out) + outBase;
  for (int row = c.warp; row < Ctx::QH; row += Ctx::NWARPS) { // warp-uniform
    float x[E];
#pragma unroll
    for (int e = 0; e < E; ++e)
      x[e] = roundTo<Half>(rowsShared[row * Ctx::HD + E * c.lane + e]);
    laneGroupFwht<E, 32>(x, c.lane);
#pragma unroll
    for (int e = 0; e < E; ++e)
      out[row * Ctx::HD + E * c.lane + e] = outputValue<T>(x[e] * scale);
  }
}

/// This split's normalized output and LSE, for mergeSplits.
template <typename Ctx>
__device__ __forceinline__ void storePartial(Ctx &c, const float *merged, const float *lse,
                                             int64_t headBase) {
  for (int item = threadIdx.x; item < Ctx::QH * Ctx::HD; item += blockDim.x) {
    const int query = item / Ctx::HD, channel = item % Ctx::HD;
    const int64_t row = (headBase + query) * c.numSplits + c.split;
    float value = merged[item];
    if (combinesInStore(c)) { // mergeWarps left the warps' rows [WARPS][Q8][D] and weights
      const float *weights = merged + Ctx::NWARPS * Ctx::Q8 * Ctx::HD; // [WARPS][Q8]
      value = 0.0f;
#pragma unroll
      for (int w = 0; w < Ctx::NWARPS; ++w)
        value += weights[w * Ctx::Q8 + query] * merged[w * Ctx::Q8 * Ctx::HD + item];
    }
    c.p.partialOut[row * Ctx::HD + channel] = value;
    if (channel == 0)
      c.p.partialLse[row] = lse[query];
  }
}

/// Lets the split-merge kernel, launched as this kernel's programmatic dependent, start early:
/// its CTAs take free slots and wait there (awaitPrerequisites in mergeSplits) for this grid to
/// finish, so the merge's launch and set-up overlap the decode's last pages.
template <typename Ctx> __device__ __forceinline__ void releaseMerge(Ctx &) {
  releaseDependents();
}

/// Final output (one split) or this split's partial (output, LSE) for mergeSplits.
template <bool Partial, typename Ctx> __device__ __forceinline__ void storeOutput(Ctx &c) {
  if (!c.merged)
    mergeWarps(c);
  float *merged = c.mergeShared();
  const float *lse = merged + Ctx::NWARPS * Ctx::Q8 * Ctx::HD + 2 * Ctx::NWARPS * Ctx::Q8;
  const int numQueryHeads = c.p.numKvHeads * Ctx::QH;
  const int64_t headBase = int64_t(c.request) * numQueryHeads + int64_t(c.kvHead) * Ctx::QH;
  if (!Partial || c.numSplits == 1)
    storeUnrotated(c, merged, headBase * Ctx::HD);
  else
    storePartial(c, merged, lse, headBase);
  if (threadIdx.x == 0)
    timelineStamp(DecodeTimeline::End);
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
/// Present in modules whose merge kernel waits for the decode grid (awaitPrerequisites in
/// mergeSplits): the runtime launches only such a merge as the decode's programmatic dependent
/// (a module built for sm_80, whose merge does not wait, launches it plainly).
extern "C" __device__ int kvarn_merge_awaits_decode;
__device__ int kvarn_merge_awaits_decode = 1;
#endif

/// Merges the splits of one (request, kv head, query head = blockIdx.z) by LSE, un-rotates and
/// stores (grid: kv heads x requests x Q). One warp does it all, so no barrier or shared memory
/// sits in its chain of memory round trips: lane l owns channels E*l .. E*l + E - 1 (E = D / 32,
/// the register FWHT's layout) and split l's LSE. The partials of the first EARLY splits load
/// before the LSEs are known; the LSE maximum is a butterfly over the lanes, each lane computes
/// its split's weight, and every channel's sum takes the weights by shuffle in split order. A
/// launch of more than EARLY splits (the planner allows 64) sums them in the same order, EARLY
/// at a time, each later chunk's partials loaded together before its sums; a launch of EARLY + 1
/// splits (the planner's one-request plans with a sink split) loads the last split's partial and
/// LSE with the first chunk and adds it after the chunk's sums. The other warps of the CTA (the
/// decode kernel's block size) leave at once.
template <typename Ctx> __device__ __forceinline__ void mergeSplits(Ctx &c) {
  typedef typename Ctx::Type T;
  constexpr int E = Ctx::HD / 32;
  constexpr int EARLY = 128 / E < 32 ? 128 / E : 32; // at most 128 registers of partials
  static_assert(E == 2 || E % 4 == 0, "channel vectors of 8 or 16 bytes");
  static_assert((E == 2 ? 8 : 16) == BufferAlignment::decodeWorkspace(Ctx::HD),
                "the C API checks the workspace against these loads' alignment");
  if (threadIdx.x == 0)
    timelineStamp<true>(DecodeTimeline::MergeStart);
  if (c.numSplits == 1 || c.warp != 0)
    return; // one split: the decode kernel stored the final output
  const int query = blockIdx.z;
  const int numQueryHeads = c.p.numKvHeads * Ctx::QH;
  const int64_t head = int64_t(c.request) * numQueryHeads + int64_t(c.kvHead) * Ctx::QH + query;
  const float *lse = c.p.partialLse + head * c.numSplits;
  const float *partial = c.p.partialOut + head * c.numSplits * Ctx::HD + E * c.lane;
  auto loadChannels = [&](float (&x)[E], int split) {
    const float *from = partial + int64_t(split) * Ctx::HD;
    if constexpr (E == 2) {
      const float2 v = *reinterpret_cast<const float2 *>(from);
      x[0] = v.x;
      x[1] = v.y;
    } else {
#pragma unroll
      for (int k = 0; k < E; k += 4) {
        const float4 v = *reinterpret_cast<const float4 *>(from + k);
        x[k] = v.x;
        x[k + 1] = v.y;
        x[k + 2] = v.z;
        x[k + 3] = v.w;
      }
    }
  };
  float early[EARLY][E];
  auto loadChunk = [&](int first, int count) { // EARLY splits' partials, 0 past the count
#pragma unroll
    for (int s = 0; s < EARLY; ++s) {
      if (s < count)
        loadChannels(early[s], first + s);
      else
#pragma unroll
        for (int k = 0; k < E; ++k)
          early[s][k] = 0.0f;
    }
  };
  awaitPrerequisites(); // the decode kernel's partials (launched early as its dependent)
  if (c.lane == 0)
    timelineStamp<true>(DecodeTimeline::MergeWaited);
  // Step 1. The first EARLY splits' partials, then the LSEs, all in flight together (and with
  // EARLY + 1 splits the last one's partial and LSE, held by every lane).
  loadChunk(0, c.numSplits);
  const bool oneMore = c.numSplits == EARLY + 1;
  float last[E];
  if (oneMore)
    loadChannels(last, EARLY);
  const float lastLse = oneMore ? lse[EARLY] : -KVARN_INFINITY;
  const float ownLse = c.lane < c.numSplits ? lse[c.lane] : -KVARN_INFINITY;
  // Step 2. The largest LSE (-inf when no split attended anything: every weight is 0).
  float best = ownLse;
  for (int s = c.lane + 32; s < c.numSplits; s += 32)
    best = fmaxf(best, lse[s]);
  best = fmaxf(warpMaxXor(best, 1, 16), lastLse);
  auto weightOf = [&](float splitLse) {
    return best == -KVARN_INFINITY ? 0.0f : __expf(splitLse - best);
  };
  // Step 3. Weighted sums in split order (the weight of a split past the last is 0, and its
  // partial too: the sums start at +0 and an added +0 changes no bits).
  float total = 0.0f, value[E] = {};
  auto addChunk = [&](float ownWeight) { // lane s holds the weight of the chunk's split s
#pragma unroll
    for (int s = 0; s < EARLY; ++s) {
      const float weight = __shfl_sync(0xffffffffu, ownWeight, s);
      total += weight;
#pragma unroll
      for (int k = 0; k < E; ++k)
        value[k] += weight * early[s][k];
    }
  };
  // One chunk's sums in the code: the merge runs once per launch from cold instruction and
  // constant caches, where its size is most of its time (docs/benchmarks.md, nineteenth
  // session). The first chunk's partials came in step 1; each later chunk's load together (with
  // their LSEs) before its sums; with EARLY + 1 splits the last one, loaded in step 1, follows.
  // The sums keep split order, so the bits are those of a chunk-by-chunk merge.
  const int chunked = oneMore ? EARLY : c.numSplits;
  for (int first = 0;;) {
    const int count = min(EARLY, chunked - first);
    addChunk(c.lane < count ? weightOf(first == 0 ? ownLse : lse[first + c.lane]) : 0.0f);
    first += EARLY;
    if (first >= chunked)
      break;
    loadChunk(first, min(EARLY, chunked - first));
  }
  if (oneMore) {
    const float weight = weightOf(lastLse);
    total += weight;
#pragma unroll
    for (int k = 0; k < E; ++k)
      value[k] += weight * last[k];
  }
  // Step 4. Normalize, round to the output type, un-rotate in registers and store.
  float x[E];
#pragma unroll
  for (int k = 0; k < E; ++k)
    x[k] = roundTo<Half>(total > 0.0f ? value[k] / total : 0.0f);
  laneGroupFwht<E, 32>(x, c.lane);
  const float scale = hadamardScale<Ctx::HD>();
  T *out = static_cast<T *>(c.p.out) + head * Ctx::HD + E * c.lane;
#pragma unroll
  for (int k = 0; k < E; ++k)
    out[k] = outputValue<T>(x[k] * scale);
  if (c.lane == 0)
    timelineStamp<true>(DecodeTimeline::MergeEnd);
}

} // namespace dev
} // namespace kvarn
