// fp16/bf16 conversions against the compiler's own _Float16 and exhaustive round trips.
#include "kvarn/half.h"

#include "../common/Seeds.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

using namespace kvarn;

TEST(Half, EveryHalfRoundTripsThroughFloat) {
  for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const uint16_t h = static_cast<uint16_t>(bits);
    const float f = halfToFloat(h);
    if (std::isnan(f))
      continue;
    ASSERT_EQ(floatToHalf(f), h) << std::hex << bits;
  }
}

TEST(Half, FloatToHalfMatchesTheCompilerOnRandomAndEdgeValues) {
  std::mt19937 rng(kvarn::testing::testSeed(7));
  std::uniform_int_distribution<uint32_t> anyBits;
  auto check = [](float f) {
    _Float16 expected = static_cast<_Float16>(f);
    uint16_t expectedBits;
    std::memcpy(&expectedBits, &expected, 2);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(halfToFloat(floatToHalf(f))));
      return;
    }
    ASSERT_EQ(floatToHalf(f), expectedBits) << f;
  };
  for (int i = 0; i < 2000000; ++i) {
    uint32_t bits = anyBits(rng);
    // Concentrate on the fp16 range (exponents 100..145) half of the time.
    if (i % 2)
      bits = (bits & 0x807fffffu) | ((100u + bits % 46u) << 23);
    float f;
    std::memcpy(&f, &bits, 4);
    check(f);
  }
  for (float f : {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 1e-8f, 2.9802322e-8f, 5.9604645e-8f,
                  6.1035156e-5f, std::numeric_limits<float>::infinity()})
    check(f);
}

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(floatToBf16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties to even (1.0).
  EXPECT_EQ(floatToBf16(1.00390625f), 0x3f80);
  EXPECT_EQ(floatToBf16(1.01171875f), 0x3f82); // halfway above odd 0x3f81 -> 0x3f82
  EXPECT_FLOAT_EQ(bf16ToFloat(0xc000), -2.0f);
  EXPECT_TRUE(std::isnan(bf16ToFloat(floatToBf16(std::nanf("")))));
}
