// Presets, validation messages and the record layout table of kvarn-format.md §5; the float
// identity the FWHT butterflies rely on (§2).
#include "kvarn/format.h"

#include "../common/Seeds.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

using namespace kvarn;
using ::testing::HasSubstr;

namespace {

struct LayoutRow {
  const char *preset;
  int headDim;
  size_t tileBytes;
  size_t tileBytesAligned;
};

// Computed by hand from tile_bytes = D*G*(kb+vb)/8 + 2*(3D+3G) and the alignment rule; the four
// examples of the format doc are among them (13,824; 17,920; 7,296; 26,880 -> 32,768).
const LayoutRow kLayoutTable[] = {
    {"kvarn_k4v2_g128", 64, 7296, 7296},    {"kvarn_k4v2_g128", 128, 13824, 13824},
    {"kvarn_k4v2_g128", 256, 26880, 32768}, {"kvarn_k4v2_g128", 512, 52992, 65536},
    {"kvarn_k4v4_g128", 64, 9344, 9344},    {"kvarn_k4v4_g128", 128, 17920, 17920},
    {"kvarn_k4v4_g128", 256, 35072, 65536}, {"kvarn_k4v4_g128", 512, 69376, 131072},
    {"kvarn_k4v2_g64", 64, 3840, 3840},     {"kvarn_k4v2_g64", 128, 7296, 7296},
    {"kvarn_k4v2_g64", 256, 14208, 16384},  {"kvarn_k4v2_g64", 512, 28032, 32768},
    {"kvarn_k4v4_g64", 64, 4864, 4864},     {"kvarn_k4v4_g64", 128, 9344, 9344},
    {"kvarn_k4v4_g64", 256, 18304, 32768},  {"kvarn_k4v4_g64", 512, 36224, 65536},
    {"kvarn_k2v2_g128", 64, 5248, 5248},    {"kvarn_k2v2_g128", 128, 9728, 9728},
    {"kvarn_k2v2_g128", 256, 18688, 32768}, {"kvarn_k2v2_g128", 512, 36608, 65536},
    {"kvarn_k2v2_g64", 64, 2816, 2816},     {"kvarn_k2v2_g64", 128, 5248, 5248},
    {"kvarn_k2v2_g64", 256, 10112, 16384},  {"kvarn_k2v2_g64", 512, 19840, 32768},
    {"kvarn_k8v8_g128", 128, 34304, 34304}, {"kvarn_k8v4_g64", 256, 26496, 32768},
};

TEST(RecordLayout, TableOfEveryPresetAndHeadDim) {
  for (const LayoutRow &row : kLayoutTable) {
    SCOPED_TRACE(std::string(row.preset) + " D=" + std::to_string(row.headDim));
    Expected<Format> format = parseFormat(row.preset, row.headDim);
    ASSERT_TRUE(format) << format.error().str();
    RecordLayout layout = recordLayout(*format);
    EXPECT_EQ(layout.tileBytes, row.tileBytes);
    EXPECT_EQ(layout.tileBytesAligned, row.tileBytesAligned);
    // Fields follow each other with no gap, in the documented order.
    const size_t d = row.headDim, g = format->tileTokens;
    EXPECT_EQ(layout.keyPacked, 0u);
    EXPECT_EQ(layout.keyScaleCol, d * g * format->keyBits / 8);
    EXPECT_EQ(layout.keyZeroPoint, layout.keyScaleCol + 2 * d);
    EXPECT_EQ(layout.keyScaleRow, layout.keyZeroPoint + 2 * d);
    EXPECT_EQ(layout.valuePacked, layout.keyScaleRow + 2 * g);
    EXPECT_EQ(layout.valueScaleCol, layout.valuePacked + d * g * format->valueBits / 8);
    EXPECT_EQ(layout.valueScaleRow, layout.valueScaleCol + 2 * d);
    EXPECT_EQ(layout.valueZeroPoint, layout.valueScaleRow + 2 * g);
    EXPECT_EQ(layout.valueZeroPoint + 2 * g, layout.tileBytes);
  }
}

TEST(RecordLayout, BytesPerTokenAndCompressionOfTheDocExamples) {
  RecordLayout k4v2 = recordLayout(*parseFormat("kvarn_k4v2_g128", 128));
  EXPECT_DOUBLE_EQ(k4v2.bytesPerToken(), 108.0);
  EXPECT_NEAR(k4v2.compressionRatio(), 4.74, 0.005);
  RecordLayout k4v4 = recordLayout(*parseFormat("kvarn_k4v4_g128", 128));
  EXPECT_DOUBLE_EQ(k4v4.bytesPerToken(), 140.0);
  EXPECT_NEAR(k4v4.compressionRatio(), 3.66, 0.005);
  RecordLayout k4v4d256 = recordLayout(*parseFormat("kvarn_k4v4_g128", 256));
  EXPECT_NEAR(k4v4d256.compressionRatio(), 2.0, 1e-12);
  // A decode reads the fields, not the padding to the power-of-two slot of D >= 256.
  EXPECT_DOUBLE_EQ(k4v2.readBytesPerToken(), 108.0);
  EXPECT_DOUBLE_EQ(k4v4d256.bytesPerToken(), 512.0);
  EXPECT_DOUBLE_EQ(k4v4d256.readBytesPerToken(), 35072.0 / 128);
  RecordLayout k4v2d256 = recordLayout(*parseFormat("kvarn_k4v2_g128", 256));
  EXPECT_DOUBLE_EQ(k4v2d256.bytesPerToken(), 256.0);
  EXPECT_DOUBLE_EQ(k4v2d256.readBytesPerToken(), 210.0); // 26,880 bytes of fields
}

TEST(RecordLayout, MatchesGoldenManifestOffsets) {
  RecordLayout layout = recordLayout(*parseFormat("kvarn_k4v2_g128", 128));
  EXPECT_EQ(layout.keyScaleCol, 8192u);
  EXPECT_EQ(layout.keyZeroPoint, 8448u);
  EXPECT_EQ(layout.keyScaleRow, 8704u);
  EXPECT_EQ(layout.valuePacked, 8960u);
  EXPECT_EQ(layout.valueScaleCol, 13056u);
  EXPECT_EQ(layout.valueScaleRow, 13312u);
  EXPECT_EQ(layout.valueZeroPoint, 13568u);
}

TEST(ParseFormat, AcceptsNamesWithAndWithoutPrefix) {
  Expected<Format> a = parseFormat("kvarn_k4v2_g128", 128);
  Expected<Format> b = parseFormat("k4v2_g128", 128);
  ASSERT_TRUE(a);
  ASSERT_TRUE(b);
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(a->keyBits, 4);
  EXPECT_EQ(a->valueBits, 2);
  EXPECT_EQ(a->tileTokens, 128);
  EXPECT_EQ(a->sinkhornIterations, 8);
  EXPECT_EQ(a->presetName(), "kvarn_k4v2_g128");
  EXPECT_EQ(parseFormat("kvarn_k2v2_g64", 64, 16)->sinkhornIterations, 16);
}

std::string parseError(const std::string &preset, int headDim = 128) {
  Expected<Format> f = parseFormat(preset, headDim);
  EXPECT_FALSE(f) << preset;
  return f ? std::string() : f.error().message;
}

TEST(ParseFormat, RejectionsNameTheValueAndTheSupportedSet) {
  EXPECT_THAT(parseError("kvarn_k3v2_g128"), HasSubstr("key bits: 3 needs a bit-stream packer"));
  EXPECT_THAT(parseError("kvarn_k4v5_g128"), HasSubstr("value bits: 5 needs a bit-stream packer"));
  EXPECT_THAT(parseError("kvarn_k6v2_g128"), HasSubstr("key bits: 6 (supported: 2, 4, 8)"));
  EXPECT_THAT(parseError("kvarn_k4v2_g32"), HasSubstr("tile size G: 32 (supported: 64, 128)"));
  EXPECT_THAT(parseError("kvarn_k4v2_g128", 96),
              HasSubstr("head_dim: 96 (supported: 64, 128, 256, 512)"));
  EXPECT_THAT(parseError("kvarn_k4v2_g128", 1024), HasSubstr("head_dim: 1024"));
  EXPECT_THAT(parseError("kvarn_x4v2_g128"), HasSubstr("missing 'k'"));
  EXPECT_THAT(parseError("kvarn_k4x2_g128"), HasSubstr("missing 'v'"));
  EXPECT_THAT(parseError("kvarn_k4v2g128"), HasSubstr("missing '_g'"));
  EXPECT_THAT(parseError("kvarn_k4v2_g128x"), HasSubstr("trailing text 'x'"));
  EXPECT_THAT(parseError(""), HasSubstr("expected kvarn_k{key bits}v{value bits}_g{tile tokens}"));
  EXPECT_EQ(parseFormat("kvarn_k3v2_g128", 128).error().code, ErrorCode::Unsupported);
  EXPECT_EQ(parseFormat("kvarn_k6v2_g128", 128).error().code, ErrorCode::InvalidArgument);
}

TEST(ParseFormat, RejectsBadIterationCounts) {
  EXPECT_FALSE(parseFormat("kvarn_k4v2_g128", 128, -1));
  EXPECT_THAT(parseFormat("kvarn_k4v2_g128", 128, 65).error().message,
              HasSubstr("Sinkhorn iteration count: 65"));
  EXPECT_TRUE(parseFormat("kvarn_k4v2_g128", 128, 0));
}

TEST(Rotation, ButterflyAsSignedFmaIsBitIdenticalToAddAndSubtract) {
  // laneGroupFwht (compiler/device/kvarn/common.cuh) computes a cross-lane butterfly as
  // fma(+-1, x, partner) in place of x + partner and partner - x: the product by +-1 is exact,
  // so the fma rounds the same sum once. Checked here with the host's correctly rounded fma on
  // random magnitudes, subnormals, signed zeros, infinities and values that cancel.
  auto bits = [](float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
  };
  std::vector<float> values = {0.0f, -0.0f, 1.0f, -1.0f, 1e-45f, -1e-45f, 1.17549435e-38f,
                               3.4028235e38f, -3.4028235e38f,
                               std::numeric_limits<float>::infinity(),
                               -std::numeric_limits<float>::infinity()};
  std::mt19937 rng(kvarn::testing::testSeed(7));
  std::uniform_real_distribution<float> mantissa(-2.0f, 2.0f);
  std::uniform_int_distribution<int> exponent(-140, 120);
  for (int k = 0; k < 20000; ++k)
    values.push_back(std::ldexp(mantissa(rng), exponent(rng)));
  size_t checked = 0;
  for (size_t a = 0; a < values.size(); a += 97)
    for (size_t b = 0; b < values.size(); b += 89) {
      const float x = values[a], partner = values[b];
      for (const float y : {x, -partner, partner}) { // also exact cancellation partner - partner
        const float sum = y + partner, difference = partner - y;
        const float fmaSum = std::fma(1.0f, y, partner), fmaDifference = std::fma(-1.0f, y, partner);
        if (std::isnan(sum))
          EXPECT_TRUE(std::isnan(fmaSum));
        else
          ASSERT_EQ(bits(fmaSum), bits(sum)) << y << " + " << partner;
        if (std::isnan(difference))
          EXPECT_TRUE(std::isnan(fmaDifference));
        else
          ASSERT_EQ(bits(fmaDifference), bits(difference)) << partner << " - " << y;
        ++checked;
      }
    }
  EXPECT_GT(checked, 100000u);
}

} // namespace
