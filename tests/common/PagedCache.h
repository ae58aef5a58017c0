// Builds random paged KVarN caches on the host (records from the CPU reference, pool pages,
// block tables) for the CPU and GPU decode tests.
#pragma once

#include "kvarn/reference.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace kvarn::testing {

/// Random rotated fp16 rows [rows][D] with outlier channels (K) or plain normals (V).
inline std::vector<uint16_t> randomRows(size_t rows, int headDim, std::mt19937_64 &rng,
                                        bool outliers) {
  std::normal_distribution<float> normal;
  std::vector<uint16_t> out(rows * headDim);
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = floatToHalf(normal(rng) * (outliers && i % headDim % 29 == 3 ? 5.0f : 1.0f) +
                         (outliers ? 0.3f * float(i % headDim % 7) : 0.0f));
  return out;
}

/// A paged cache in the engine layout. Every request owns its blocks; its first block (the sink)
/// and its last, partly filled block stay in the fp16 pool, the others are records. Pool rows
/// past a request's end and unused pool slots hold NaN; table entries past the end are -1.
struct PagedCache {
  Format format;
  int numKvHeads = 0, numBlocks = 0, poolSlots = 0, maxBlocks = 0;
  RecordLayout layout;
  std::vector<int32_t> seqLens, blockTable, blockToSlot;
  std::vector<uint8_t> records;
  std::vector<uint16_t> poolKey, poolValue;

  PagedCache(const Format &f, int hk, const std::vector<int32_t> &lengths, uint64_t seed)
      : format(f), numKvHeads(hk), layout(recordLayout(f)), seqLens(lengths) {
    const int g = f.tileTokens, d = f.headDim;
    std::mt19937_64 rng(seed);
    for (int32_t len : lengths)
      maxBlocks = std::max(maxBlocks, (len + g - 1) / g);
    maxBlocks = std::max(maxBlocks, 1);
    blockTable.assign(lengths.size() * maxBlocks, -1);
    std::vector<bool> isPool;
    for (size_t b = 0; b < lengths.size(); ++b) {
      const int pages = (lengths[b] + g - 1) / g;
      for (int k = 0; k < pages; ++k) {
        blockTable[b * maxBlocks + k] = numBlocks++;
        isPool.push_back(k == 0 || k == pages - 1);
      }
    }
    // Step 1. Slots for pool blocks (+1 unused slot), all NaN at first.
    for (bool pool : isPool)
      poolSlots += pool;
    ++poolSlots;
    const size_t pageElements = size_t(g) * hk * d;
    poolKey.assign(poolSlots * pageElements, 0x7e00);
    poolValue.assign(poolSlots * pageElements, 0x7e00);
    records.assign(size_t(std::max(numBlocks, 1)) * hk * layout.tileBytesAligned, 0);
    blockToSlot.assign(std::max(numBlocks, 1), -1);
    int nextSlot = 0;
    // Step 2. Fill each block: pool rows up to the request's end, or a record per head.
    for (size_t b = 0; b < lengths.size(); ++b) {
      const int pages = (lengths[b] + g - 1) / g;
      for (int k = 0; k < pages; ++k) {
        const int block = blockTable[b * maxBlocks + k];
        const int valid = std::min(g, lengths[b] - k * g);
        std::vector<uint16_t> keys = randomRows(size_t(g) * hk, d, rng, true);
        std::vector<uint16_t> values = randomRows(size_t(g) * hk, d, rng, false);
        if (isPool[block]) {
          const int slot = nextSlot++;
          blockToSlot[block] = slot;
          for (size_t row = 0; row < size_t(valid) * hk; ++row)
            for (int c = 0; c < d; ++c) {
              poolKey[slot * pageElements + row * d + c] = keys[row * d + c];
              poolValue[slot * pageElements + row * d + c] = values[row * d + c];
            }
          continue;
        }
        for (int h = 0; h < hk; ++h) {
          std::span<uint8_t> record(records.data() + (size_t(block) * hk + h) * layout.tileBytesAligned,
                                    layout.tileBytesAligned);
          Status s = reference::writeRecord(f, std::span(keys).subspan(size_t(h) * d),
                                            std::span(values).subspan(size_t(h) * d),
                                            size_t(hk) * d, record);
          EXPECT_TRUE(s) << s.error().str();
        }
      }
    }
  }

  reference::PagedCacheView view() const {
    return {records, poolKey, poolValue,
            std::span<const int32_t>(blockToSlot.data(), size_t(std::max(numBlocks, 1)))};
  }
};

/// Random queries [B][Hq][D] in `dtype`.
inline std::vector<uint16_t> randomQueries(size_t count, DType dtype, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<uint16_t> q(count);
  for (uint16_t &x : q)
    x = floatToDType(normal(rng), dtype);
  return q;
}

inline std::vector<float> toFloats(const std::vector<uint16_t> &v, DType dtype) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    f[i] = dtypeToFloat(v[i], dtype);
  return f;
}

} // namespace kvarn::testing
