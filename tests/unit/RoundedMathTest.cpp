// The log and exp the flush's Sinkhorn scales use on the GPU and in the CPU reference
// (compiler/device/kvarn/roundedmath.h): the correctly rounded float but for rare midpoints.
#include "kvarn/roundedmath.h"

#include "../common/Seeds.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace {

using kvarn::roundedmath::expRounded;
using kvarn::roundedmath::logRounded;

/// Compares f with float(reference(double(x))) over `samples`: the count of results that differ,
/// failing at once on any result more than one float ulp away.
template <typename F, typename R>
int countDifferences(const std::vector<float> &samples, F f, R reference) {
  int different = 0;
  for (float x : samples) {
    const float ours = f(x), exact = float(reference(double(x)));
    if (ours == exact)
      continue;
    ++different;
    EXPECT_TRUE(ours == std::nextafter(exact, ours) && std::isfinite(ours))
        << "x = " << x << ": " << ours << " against " << exact;
  }
  return different;
}

TEST(RoundedMath, ExpIsTheRoundedExpOverTheLogScales) {
  // Log scales are clamped to [-0.3, 10]; a scan of every float there found no difference.
  std::mt19937 rng(kvarn::testing::testSeed(31));
  std::uniform_real_distribution<float> uniform(-0.3f, 10.0f);
  std::vector<float> samples = {-0.3f, 0.0f, -0.0f, 1e-30f, 0.5f, 1.0f, 10.0f, std::log(2.0f)};
  for (int i = 0; i < (1 << 20); ++i)
    samples.push_back(uniform(rng));
  EXPECT_EQ(countDifferences(samples, expRounded, [](double x) { return std::exp(x); }), 0);
  EXPECT_EQ(expRounded(0.0f), 1.0f);
}

TEST(RoundedMath, LogIsTheRoundedLogOverTheStds) {
  // Stds are clamped to [1e-3, 1e3]; a scan of every float there found 4 of 1.7e8 one ulp off
  // (values within 1e-16 of a rounding midpoint).
  std::mt19937 rng(kvarn::testing::testSeed(32));
  std::uniform_real_distribution<float> exponent(std::log(1e-3f), std::log(1e3f));
  std::vector<float> samples = {
      1e-3f, 1e3f, 1.0f, 2.0f, 0.5f, 1.5f, std::nextafter(1.0f, 2.0f), std::nextafter(1.0f, 0.0f)};
  for (int i = 0; i < (1 << 20); ++i)
    samples.push_back(std::exp(exponent(rng)));
  EXPECT_LE(countDifferences(samples, logRounded, [](double x) { return std::log(x); }), 1);
  EXPECT_EQ(logRounded(1.0f), 0.0f);
  EXPECT_EQ(logRounded(2.0f), float(std::log(2.0)));
}

} // namespace
