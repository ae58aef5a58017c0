// The inputs kernels are timed on, made by one piece of code so that every measurement of an op
// times the same work: the decode records and queries (the benchmark and the tuner), the append
// rows (the benchmark), the flush pools (the benchmark and the tuner), and one rule for keeping
// every timed launch's reads cold in L2.
#pragma once

#include "kvarn/format.h"
#include "kvarn/half.h"
#include "kvarn/launch.h"
#include "kvarn/status.h"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvarn::autotune {

/// `count` distinct records (K and V the same random-normal rotated rows, quantized by the CPU
/// reference), back to back, to replicate over a timing cache with DeviceBuffer::fillWithPattern.
Expected<std::vector<uint8_t>> decodeTimingRecords(const Format &format, int count = 16);

/// Every fp16 pool row of the timing inputs holds 1.0: two halves per 32-bit word, for
/// cuMemsetD32.
constexpr uint32_t kDecodeTimingPoolWord = 0x3c003c00u;

/// The timing queries: `count` elements of 0.5 in `dtype`.
std::vector<uint16_t> decodeTimingQueries(size_t count, DType dtype);

/// Disjoint copies of a launch's inputs (`bytes` each) to rotate through, one copy per launch in
/// launch order: enough that one round over all the copies reads more than twice the L2
/// (`l2Bytes`), so the launches between two uses of one copy read more than the L2 and every
/// launch reads cold, as an engine's decode of a long context does; at most 16 (inputs under
/// 1/15 of the L2 can stay partly warm), and 1 when one copy reads twice the L2 already.
int coldCopies(size_t bytes, size_t l2Bytes);

/// The append launch the benchmark times: kTokens tokens x kKvHeads kv heads x D channels of K
/// and V rows of `dtype` (1.0 everywhere) into fp16 pool slots 0 .. kTokens - 1. The rows come
/// in coldCopies copies, one per launch in turn, so no launch finds its input in L2. (With one
/// copy, a kernel whose stores evict first, st.global.cs, kept the previous launch's rows in L2
/// and measured 8% faster than with cold rows; docs/benchmarks.md, twenty-first session.)
class AppendTimingInputs {
public:
  static constexpr int kTokens = 8192, kKvHeads = 8;
  static Expected<AppendTimingInputs> create(int headDim, DType dtype, size_t l2Bytes);
  /// The launch of index `launchIndex` (its copy: launchIndex % copies()).
  dev::AppendParams params(int launchIndex) const;
  /// The K rows, then the V rows, of that launch's copy (rowBytes() contiguous bytes).
  CUdeviceptr rows(int launchIndex) const;
  int copies() const { return copies_; }
  /// K and V rows of one launch at head dim `headDim` (what it reads besides the slot map; it
  /// writes as many).
  static size_t rowBytes(int headDim) { return size_t(2) * kTokens * kKvHeads * headDim * 2; }
  size_t rowBytes() const { return rowBytes(headDim_); }
  /// Bytes a launch at head dim `headDim` moves: K and V rows read and written, and the slot map.
  static double bytesMoved(int headDim) { return 2.0 * double(rowBytes(headDim)) + 8.0 * kTokens; }
  double bytesMoved() const { return bytesMoved(headDim_); }
  int headDim() const { return headDim_; }

private:
  int headDim_ = 0, copies_ = 1;
  DeviceBuffer rows_, mapping_, poolKey_, poolValue_; ///< rows_: copies x (K rows, V rows)
};

/// The flush launch the benchmark and the tuner time: kBlocks blocks x kKvHeads kv heads (512
/// records, 1,024 tiles) of random fp16 K and V pool tiles, in separate K and V pools as an
/// engine keeps them (normal samples whose magnitude grows by up to 2x across the pool, K and V
/// different), entry (b, h) flushing pool slot b of kv head h into record (b, h). The pools come in
/// coldCopies copies with the same contents: params(k) rotates through them, so every launch
/// reads its tiles from HBM, as an engine's flush of blocks filled token by token during decode
/// does; params(0) alone reads the tiles the previous launch read, from L2 (a flush right after
/// the append of a prefill).
class FlushTimingInputs {
public:
  static constexpr int kBlocks = 64, kKvHeads = 8, kEntries = kBlocks * kKvHeads;
  static Expected<FlushTimingInputs> create(const Format &format, size_t l2Bytes);
  /// The launch of index `launchIndex` (its copy: launchIndex % copies()).
  dev::FlushParams params(int launchIndex) const;
  int copies() const { return copies_; }
  /// One pool (K or V) of one copy, on the host: [slot][token][kv head][D] fp16.
  const std::vector<uint16_t> &keys() const { return keys_; }
  const std::vector<uint16_t> &values() const { return values_; }
  /// The entries: (block, kv head, pool slot) triples.
  const std::vector<int32_t> &entries() const { return entries_; }
  /// The records every launch writes (kEntries x the layout's aligned tile bytes).
  const DeviceBuffer &records() const { return records_; }
  /// Bytes a launch of `format` moves: the K and V tiles read and the records' bytes written.
  static double bytesMoved(const Format &format);
  double bytesMoved() const { return bytesMoved(format_); }

private:
  Format format_;
  int copies_ = 1;
  std::vector<uint16_t> keys_, values_;
  std::vector<int32_t> entries_;
  DeviceBuffer pools_, entriesDevice_, status_, records_; ///< pools_: copies x (K pool, V pool)
};

} // namespace kvarn::autotune
