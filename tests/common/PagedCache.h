// Synthetic paged caches for the CPU and GPU decode tests (kvarn/synthetic.h), with a failed
// record write reported as a test failure.
#pragma once

#include "Seeds.h"
#include "kvarn/synthetic.h"

#include <gtest/gtest.h>

namespace kvarn::testing {

using synthetic::randomRows;
using synthetic::toFloats;

/// Random queries from `seed` mixed with the run seed (Seeds.h).
inline std::vector<uint16_t> randomQueries(size_t count, DType dtype, uint64_t seed) {
  return synthetic::randomQueries(count, dtype, testSeed(seed));
}

/// A synthetic cache from `seed` mixed with the run seed (Seeds.h).
struct PagedCache : synthetic::PagedCache {
  PagedCache() = default;
  PagedCache(const Format &f, int hk, const std::vector<int32_t> &lengths, uint64_t seed)
      : synthetic::PagedCache(f, hk, lengths, testSeed(seed)) {
    EXPECT_TRUE(status) << status.error().str();
  }
};

} // namespace kvarn::testing
