// Synthetic paged caches for the CPU and GPU decode tests (kvarn/synthetic.h), with a failed
// record write reported as a test failure.
#pragma once

#include "kvarn/synthetic.h"

#include <gtest/gtest.h>

namespace kvarn::testing {

using synthetic::randomQueries;
using synthetic::randomRows;
using synthetic::toFloats;

struct PagedCache : synthetic::PagedCache {
  PagedCache() = default;
  PagedCache(const Format &f, int hk, const std::vector<int32_t> &lengths, uint64_t seed)
      : synthetic::PagedCache(f, hk, lengths, seed) {
    EXPECT_TRUE(status) << status.error().str();
  }
};

} // namespace kvarn::testing
