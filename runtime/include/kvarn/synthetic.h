// Synthetic paged KVarN caches built on the host with the CPU reference (records, fp16 pool
// pages, block tables, queries): the inputs of the decode tests, the tuner's correctness checks
// and the benchmarks.
#pragma once

#include "kvarn/reference.h"
#include "kvarn/status.h"

#include <cstdint>
#include <random>
#include <vector>

namespace kvarn::synthetic {

/// Random rotated fp16 rows [rows][D]: keys with outlier channels and per-channel offsets (the
/// shape that makes attention peaked), values plain normals.
std::vector<uint16_t> randomRows(size_t rows, int headDim, std::mt19937_64 &rng, bool outliers);

/// A paged cache in the engine layout. Every request owns its blocks; with `poolEnds` its first
/// block (the sink) and its last, partly filled block stay in the fp16 pool and the others are
/// records, otherwise every block is a record. Pool rows past a request's end and the unused
/// pool slot hold NaN; table entries past the end are -1.
struct PagedCache {
  Format format;
  int numKvHeads = 0, numBlocks = 0, poolSlots = 0, maxBlocks = 0;
  RecordLayout layout;
  std::vector<int32_t> seqLens, blockTable, blockToSlot;
  std::vector<uint8_t> records;
  std::vector<uint16_t> poolKey, poolValue;
  Status status; ///< failure to write a record (a bug in the reference), else success

  PagedCache() = default;
  PagedCache(const Format &format, int numKvHeads, const std::vector<int32_t> &lengths,
             uint64_t seed, bool poolEnds = true);

  reference::PagedCacheView view() const;
};

/// Random queries [count] in `dtype`.
std::vector<uint16_t> randomQueries(size_t count, DType dtype, uint64_t seed);

/// `dtype` bits to floats.
std::vector<float> toFloats(const std::vector<uint16_t> &values, DType dtype);

} // namespace kvarn::synthetic
