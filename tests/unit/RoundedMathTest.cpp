// The log and exp the flush's Sinkhorn scales use on the GPU and in the CPU reference
// (compiler/device/kvarn/roundedmath.h): fixed fp32 operation sequences whose error over the
// clamped domains stays within the bounds a scan of every float there measured.
#include "kvarn/roundedmath.h"

#include "../common/Seeds.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>

namespace {

using kvarn::roundedmath::expFloat;
using kvarn::roundedmath::logFloat;

/// The largest error of f against reference (in double) over `samples`, in units of the last
/// place of the exact value's float binade, and how many results differ from the correctly
/// rounded float.
struct ErrorStats {
  double worstUlps = 0;
  float worstInput = 0;
  size_t notCorrectlyRounded = 0, count = 0;
};
template <typename F, typename R>
ErrorStats measure(const std::vector<float> &samples, F f, R reference) {
  ErrorStats stats;
  for (float x : samples) {
    const double exact = reference(double(x));
    const float ours = f(x);
    if (!std::isfinite(ours)) {
      ADD_FAILURE() << "x = " << x << " gives " << ours;
      continue;
    }
    const double ulp = std::ldexp(1.0, std::ilogb(float(exact)) - 23);
    const double error = std::fabs(double(ours) - exact) / ulp;
    if (error > stats.worstUlps)
      stats.worstUlps = error, stats.worstInput = x;
    stats.notCorrectlyRounded += ours != float(exact);
    ++stats.count;
  }
  return stats;
}

/// The floats in order as integers: -m for a negative float with magnitude bits m (-0 and +0
/// both 0), its bits for a positive one; and back.
int32_t orderedKey(float x) {
  const uint32_t bits = kvarn::roundedmath::floatBits(x);
  return bits & 0x80000000u ? -int32_t(bits & 0x7fffffffu) : int32_t(bits);
}
float floatOfKey(int32_t key) {
  return kvarn::roundedmath::floatOfBits(key < 0 ? 0x80000000u | uint32_t(-key) : uint32_t(key));
}

/// Every `stride`-th float of [lo, hi] (both ends included), then `randoms` from `draw`.
template <typename D>
std::vector<float> samplesOf(float lo, float hi, int32_t stride, int randoms, D draw) {
  std::vector<float> samples;
  for (int32_t key = orderedKey(lo); key < orderedKey(hi); key += stride)
    samples.push_back(floatOfKey(key));
  samples.push_back(hi);
  for (int i = 0; i < randoms; ++i)
    samples.push_back(draw());
  return samples;
}

TEST(RoundedMath, ExpStaysWithinItsErrorBoundOverTheLogScales) {
  // Log scales are clamped to [-0.3, 10]. A scan of all 2,142,869,915 floats there: at most
  // 0.733 ulp from exp(x), 1,068,931 results not the correctly rounded float. Here every 61st
  // float and 2^20 random ones.
  std::mt19937 rng(kvarn::testing::testSeed(31));
  std::uniform_real_distribution<float> uniform(-0.3f, 10.0f);
  std::vector<float> samples = samplesOf(-0.3f, 10.0f, 61, 1 << 20, [&] { return uniform(rng); });
  for (float x : {0.0f, -0.0f, 1e-30f, 0.5f, 1.0f, std::log(2.0f), 0.34657359f, -0.2999f})
    samples.push_back(x);
  const ErrorStats stats = measure(samples, expFloat, [](double x) { return std::exp(x); });
  EXPECT_LE(stats.worstUlps, 0.733) << "at x = " << stats.worstInput;
  EXPECT_LE(double(stats.notCorrectlyRounded) / stats.count, 1e-3);
  EXPECT_EQ(expFloat(0.0f), 1.0f);
  EXPECT_EQ(expFloat(-0.0f), 1.0f);
  EXPECT_EQ(expFloat(10.0f), float(std::exp(10.0)));
}

TEST(RoundedMath, LogStaysWithinItsErrorBoundOverTheStds) {
  // Stds are clamped to [1e-3, 1e3]. A scan of all 167,177,618 floats there: at most 0.554 ulp
  // from log(x), 6,276 results not the correctly rounded float. Here every 7th float and 2^20
  // random ones (log-uniform).
  std::mt19937 rng(kvarn::testing::testSeed(32));
  std::uniform_real_distribution<float> exponent(std::log(1e-3f), std::log(1e3f));
  std::vector<float> samples =
      samplesOf(1e-3f, 1e3f, 7, 1 << 20, [&] { return std::exp(exponent(rng)); });
  for (float x : {1.0f, 2.0f, 0.5f, 1.5f, std::nextafter(1.0f, 2.0f), std::nextafter(1.0f, 0.0f)})
    samples.push_back(x);
  const ErrorStats stats = measure(samples, logFloat, [](double x) { return std::log(x); });
  EXPECT_LE(stats.worstUlps, 0.554) << "at x = " << stats.worstInput;
  EXPECT_LE(double(stats.notCorrectlyRounded) / stats.count, 1e-4);
  EXPECT_EQ(logFloat(1.0f), 0.0f);
  EXPECT_EQ(logFloat(2.0f), float(std::log(2.0)));
  EXPECT_EQ(logFloat(0.5f), float(std::log(0.5)));
}

} // namespace
