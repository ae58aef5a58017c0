// Seeds of the randomized tests: fixed by default, so a failure reproduces; KVARN_TEST_SEED=N
// mixes N into every seed, so the same tests run on inputs no earlier run saw.
#pragma once

#include <gtest/gtest.h>

#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace kvarn::testing {

/// The run's seed: KVARN_TEST_SEED as an unsigned decimal, 0 (the tests' own seeds) when unset
/// or empty. Anything else is refused before any test runs: a typo must not quietly run the
/// fixed inputs while the caller believes they are fresh.
inline uint64_t testRunSeed() {
  static const uint64_t seed = [] {
    const char *text = std::getenv("KVARN_TEST_SEED");
    if (!text || !*text)
      return uint64_t(0);
    uint64_t value = 0;
    const char *end = text + std::strlen(text);
    const auto [stop, error] = std::from_chars(text, end, value);
    if (error != std::errc() || stop != end) {
      std::fprintf(stderr,
                   "KVARN_TEST_SEED='%s' is not an unsigned decimal integer (it mixes into every "
                   "randomized test's seeds; leave it unset for the tests' own seeds)\n",
                   text);
      std::exit(2);
    }
    return value;
  }();
  return seed;
}

/// `base` itself for run seed 0; otherwise the splitmix64 finalizer of base + run * golden
/// ratio, a bijection of the sum, so distinct bases stay distinct under one run seed and the same
/// run seed gives the same inputs again.
inline uint64_t mixSeed(uint64_t base, uint64_t run) {
  if (run == 0)
    return base;
  uint64_t z = base + run * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// The seed a randomized test uses for its own seed `base` in this run.
inline uint64_t testSeed(uint64_t base) { return mixSeed(base, testRunSeed()); }

/// Says once, at the start of the run, which inputs it uses, and records the run seed in the
/// XML report, so a failure under KVARN_TEST_SEED can be rerun on the same inputs.
class TestSeedEnvironment : public ::testing::Environment {
public:
  void SetUp() override {
    const uint64_t run = testRunSeed();
    if (run != 0)
      std::printf("KVARN_TEST_SEED=%llu: every randomized test's seeds are mixed with it (rerun "
                  "with the same value to reproduce a failure)\n",
                  static_cast<unsigned long long>(run));
    ::testing::Test::RecordProperty("kvarn_test_seed", std::to_string(run));
  }
};

inline ::testing::Environment *const registeredTestSeedEnvironment =
    ::testing::AddGlobalTestEnvironment(new TestSeedEnvironment);

} // namespace kvarn::testing
