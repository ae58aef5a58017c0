// Synthetic paged caches for tests, tuner checks and benchmarks.
#include "kvarn/synthetic.h"

#include "kvarn/parallel.h"

#include <algorithm>
#include <span>

namespace kvarn::synthetic {

std::vector<uint16_t> randomRows(size_t rows, int headDim, std::mt19937_64 &rng, bool outliers) {
  std::normal_distribution<float> normal;
  std::vector<uint16_t> out(rows * headDim);
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = floatToHalf(normal(rng) * (outliers && i % headDim % 29 == 3 ? 5.0f : 1.0f) +
                         (outliers ? 0.3f * float(i % headDim % 7) : 0.0f));
  return out;
}

PagedCache::PagedCache(const Format &f, int hk, const std::vector<int32_t> &lengths,
                       uint64_t seed, bool poolEnds)
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
      isPool.push_back(poolEnds && (k == 0 || k == pages - 1));
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
  // Step 2. Fill each block: pool rows up to the request's end, or a record per head. The rows
  // are drawn in block order (one generator, so the cache depends only on the seed); the
  // records of a batch of blocks are then written on every host thread.
  struct Quantized {
    int block;
    std::vector<uint16_t> keys, values;
  };
  std::vector<Quantized> batch;
  auto writeBatch = [&] {
    std::vector<Status> results(batch.size() * hk, Status::success());
    parallelFor(results.size(), [&](size_t task) {
      const Quantized &q = batch[task / hk];
      const int h = int(task % hk);
      std::span<uint8_t> record(
          records.data() + (size_t(q.block) * hk + h) * layout.tileBytesAligned,
          layout.tileBytesAligned);
      results[task] = reference::writeRecord(f, std::span(q.keys).subspan(size_t(h) * d),
                                             std::span(q.values).subspan(size_t(h) * d),
                                             size_t(hk) * d, record);
    });
    for (Status &result : results)
      if (status && !result)
        status = std::move(result);
    batch.clear();
  };
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
      batch.push_back({block, std::move(keys), std::move(values)});
      if (batch.size() == 64)
        writeBatch();
    }
  }
  writeBatch();
}

reference::PagedCacheView PagedCache::view() const {
  return {records, poolKey, poolValue,
          std::span<const int32_t>(blockToSlot.data(), size_t(std::max(numBlocks, 1)))};
}

std::vector<uint16_t> randomQueries(size_t count, DType dtype, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<uint16_t> q(count);
  for (uint16_t &x : q)
    x = floatToDType(normal(rng), dtype);
  return q;
}

std::vector<float> toFloats(const std::vector<uint16_t> &values, DType dtype) {
  std::vector<float> f(values.size());
  for (size_t i = 0; i < values.size(); ++i)
    f[i] = dtypeToFloat(values[i], dtype);
  return f;
}

} // namespace kvarn::synthetic
