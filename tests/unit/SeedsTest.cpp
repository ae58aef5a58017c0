// The randomized tests' seeds (tests/common/Seeds.h): fixed by default, fresh under a run seed.
#include "../common/Seeds.h"

#include <gtest/gtest.h>

#include <set>

namespace {

using kvarn::testing::mixSeed;

TEST(TestSeeds, RunSeedZeroKeepsEveryTestsOwnSeed) {
  for (uint64_t base : {uint64_t(0), uint64_t(1), uint64_t(77), uint64_t(20261130), ~uint64_t(0)})
    EXPECT_EQ(mixSeed(base, 0), base);
}

TEST(TestSeeds, ARunSeedGivesNewDistinctSeedsAndTheSameOnesAgain) {
  for (uint64_t run : {uint64_t(1), uint64_t(2), uint64_t(20261201), ~uint64_t(0)}) {
    std::set<uint64_t> mixed;
    for (uint64_t base = 0; base < 10000; ++base) {
      const uint64_t seed = mixSeed(base, run);
      EXPECT_NE(seed, base) << "base " << base << ", run " << run;
      EXPECT_EQ(mixSeed(base, run), seed); // the same run seed reproduces the inputs
      mixed.insert(seed);
    }
    EXPECT_EQ(mixed.size(), 10000u) << "two bases share a seed under run " << run;
  }
  // Different run seeds give a test different inputs.
  EXPECT_NE(mixSeed(50, 1), mixSeed(50, 2));
  EXPECT_NE(mixSeed(1000, 1), mixSeed(1000, 20261201));
}

} // namespace
