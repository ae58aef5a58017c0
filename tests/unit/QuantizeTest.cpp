// Property tests of the reference quantizer: packing, error bounds, edge tiles, bad input.
#include "kvarn/reference.h"
#include "kvarn/roundedmath.h"

#include "../common/Seeds.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>

using namespace kvarn;
using namespace kvarn::reference;
using ::testing::HasSubstr;

namespace {

TEST(Packing, RoundTripsEveryWidth) {
  std::mt19937 rng(kvarn::testing::testSeed(11));
  for (int bits : {2, 4, 8}) {
    SCOPED_TRACE(bits);
    std::uniform_int_distribution<int> code(0, (1 << bits) - 1);
    std::vector<uint8_t> codes(1024), unpacked(1024);
    for (uint8_t &c : codes)
      c = static_cast<uint8_t>(code(rng));
    std::vector<uint8_t> packed(codes.size() * bits / 8);
    ASSERT_TRUE(packCodes(codes, bits, packed));
    ASSERT_TRUE(unpackCodes(packed, bits, unpacked));
    EXPECT_EQ(codes, unpacked);
  }
}

TEST(Packing, LittleEndianWithinTheByte) {
  std::vector<uint8_t> packed(1);
  ASSERT_TRUE(packCodes(std::vector<uint8_t>{0x3, 0xa}, 4, packed));
  EXPECT_EQ(packed[0], 0xa3); // even index in the low nibble
  ASSERT_TRUE(packCodes(std::vector<uint8_t>{1, 2, 3, 0}, 2, packed));
  EXPECT_EQ(packed[0], 0b00111001);
}

TEST(Packing, RejectsBadSizesAndOversizedCodes) {
  std::vector<uint8_t> packed(3);
  EXPECT_EQ(packCodes(std::vector<uint8_t>(8), 4, packed).error().code, ErrorCode::BufferSize);
  std::vector<uint8_t> one(1);
  EXPECT_THAT(packCodes(std::vector<uint8_t>{16, 0}, 4, one).error().message,
              HasSubstr("code 16 does not fit in 4 bits"));
  EXPECT_EQ(packCodes(std::vector<uint8_t>(6), 3, one).error().code, ErrorCode::Unsupported);
}

/// Builds an R×C matrix of fp16-representable values.
std::vector<float> randomMatrix(int rows, int cols, uint64_t seed, float outlierScale = 1.0f) {
  std::mt19937_64 rng(kvarn::testing::testSeed(seed));
  std::normal_distribution<float> normal;
  std::vector<float> rowScale(rows), m(static_cast<size_t>(rows) * cols);
  for (float &s : rowScale)
    s = std::exp(0.7f * normal(rng));
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)
      m[static_cast<size_t>(r) * cols + c] =
          roundToHalf(normal(rng) * rowScale[r] * (r % 17 == 3 ? outlierScale : 1.0f));
  return m;
}

/// Each element is within half a step of the folded scales, plus the fp16 rounding of the scales.
void expectWithinHalfStep(const std::vector<float> &m, const QuantizedMatrix &q) {
  const float eps = std::ldexp(1.0f, -10);
  for (int r = 0; r < q.rows; ++r)
    for (int c = 0; c < q.cols; ++c) {
      const float s = halfToFloat(q.rowScale[r]), z = halfToFloat(q.rowZeroPoint[r]);
      const float colScale = halfToFloat(q.colScale[c]);
      const float code = q.codes[static_cast<size_t>(r) * q.cols + c];
      const float bound = 0.5f * std::fabs(s * colScale) * (1 + 4 * eps) +
                          (code * std::fabs(s) + std::fabs(z)) * std::fabs(colScale) * 2 * eps +
                          1e-30f;
      ASSERT_LE(std::fabs(q.reconstruct(r, c) - m[static_cast<size_t>(r) * q.cols + c]), bound)
          << "row " << r << " col " << c;
    }
}

TEST(Quantize, ErrorWithinHalfAStepForEveryWidthAndShape) {
  uint64_t seed = 100;
  for (int bits : {2, 4, 8})
    for (auto [rows, cols] : {std::pair{128, 128}, {64, 128}, {128, 64}, {256, 128}, {128, 256}}) {
      SCOPED_TRACE(::testing::Message() << bits << " bits " << rows << "x" << cols);
      std::vector<float> m = randomMatrix(rows, cols, ++seed, 9.0f);
      Expected<QuantizedMatrix> q = quantizeMatrix(m, rows, cols, bits, 8);
      ASSERT_TRUE(q) << q.error().str();
      expectWithinHalfStep(m, *q);
    }
}

TEST(Quantize, NormalizationReducesErrorOnOutlierChannels) {
  // Rotated keys with outlier channels (kvarn-format.md §7: 0.087 with vs 0.138 without).
  for (uint64_t seed : {1, 2, 3}) {
    std::vector<float> m = *syntheticRotatedKeyMatrix(128, 128, kvarn::testing::testSeed(seed));
    auto error = [&](int iterations) {
      QuantizedMatrix q = *quantizeMatrix(m, 128, 128, 4, iterations);
      std::vector<float> r(m.size());
      for (int i = 0; i < 128; ++i)
        for (int j = 0; j < 128; ++j)
          r[i * 128 + j] = q.reconstruct(i, j);
      return relativeFrobeniusError(r, m);
    };
    const double without = error(0), with = error(8);
    EXPECT_LT(with, 0.8 * without) << "seed " << seed;
    EXPECT_LT(with, 0.1) << "seed " << seed;
  }
}

TEST(Normalization, StdSumsInThePairwiseTree) {
  // Four values near 3000 whose fp32 sums depend on the order: added pairwise, (x0 + x1) +
  // (x2 + x3), the one-pass std is exactly 4; added left to right it would be 4.3204942.
  const float values[4] = {3000.83056640625f, 3003.627197265625f, 2994.75732421875f,
                           2995.4150390625f};
  EXPECT_EQ(sampleStd(values, 4, 1), 4.0f);
  // Strided lines (columns) take the same tree.
  float column[8] = {};
  for (int i = 0; i < 4; ++i)
    column[2 * i] = values[i];
  EXPECT_EQ(sampleStd(column, 4, 2), 4.0f);
  // A constant line has a variance of exactly 0.
  const float constant[3] = {7.5f, 7.5f, 7.5f};
  EXPECT_EQ(sampleStd(constant, 3, 1), 0.0f);
  // A leaf pair fuses its second square into the add: fma(b, b, a*a), not a*a + b*b rounded
  // twice (0.450211197 for this pair).
  const float pair[2] = {5.16097355f, 5.79767227f};
  EXPECT_EQ(sampleStd(pair, 2, 1), 0.450215429f);
}

/// The format's normalization as the reference backend writes it (kvarn-format.md §4.1): every
/// element of X = M / c / r by two fp32 divisions, one-pass stds summed pairwise (sampleStd) or
/// left to right, log and exp in double.
Normalization directNormalization(const std::vector<float> &m, int rows, int cols, bool pairwise) {
  auto lineStd = [&](const float *v, int n, int stride) {
    if (pairwise)
      return sampleStd(v, n, stride);
    float sum = 0, squares = 0;
    for (int i = 0; i < n; ++i) {
      sum += v[i * stride];
      squares += v[i * stride] * v[i * stride];
    }
    const float count = float(n), mean = sum / count;
    return std::sqrt(std::max(squares / count - mean * mean, 0.0f) * (count / (count - 1)));
  };
  auto clamp = [](float v, float lo, float hi) { return std::min(std::max(v, lo), hi); };
  std::vector<float> x(m), logc(cols, 0), logr(rows, 0), c(cols, 1), r(rows, 1);
  std::vector<float> colStd(cols), rowStd(rows);
  auto stds = [&] {
    for (int i = 0; i < rows; ++i)
      rowStd[i] = lineStd(&x[size_t(i) * cols], cols, 1);
    for (int j = 0; j < cols; ++j)
      colStd[j] = lineStd(&x[j], rows, cols);
  };
  auto scale = [&] {
    for (int i = 0; i < rows; ++i)
      for (int j = 0; j < cols; ++j)
        x[size_t(i) * cols + j] = m[size_t(i) * cols + j] / c[j] / r[i];
  };
  auto imbalance = [&] {
    auto [cl, ch] = std::minmax_element(colStd.begin(), colStd.end());
    auto [rl, rh] = std::minmax_element(rowStd.begin(), rowStd.end());
    return *ch / std::max(*cl, 1e-8f) + *rh / std::max(*rl, 1e-8f);
  };
  auto logOf = [](float v) { return float(std::log(double(v))); };
  auto expOf = [](float v) { return float(std::exp(double(v))); };
  stds();
  Normalization best{c, r, imbalance(), 0};
  for (int it = 1; it <= 8; ++it) {
    for (int j = 0; j < cols; ++j) {
      logc[j] = clamp(logc[j] + logOf(clamp(colStd[j], 1e-3f, 1e3f)), -0.3f, 10.0f);
      c[j] = expOf(logc[j]);
    }
    scale();
    for (int i = 0; i < rows; ++i) {
      const float std = lineStd(&x[size_t(i) * cols], cols, 1);
      logr[i] = clamp(logr[i] + logOf(clamp(std, 1e-3f, 1e3f)), -0.3f, 10.0f);
      r[i] = expOf(logr[i]);
    }
    scale();
    stds();
    if (const float value = imbalance(); value <= best.imbalance)
      best = Normalization{c, r, value, it};
  }
  return best;
}

TEST(Normalization, FactoredStdsAgreeWithTheDirectFormAsASummationOrderDoes) {
  // normalizeVariance takes the stds of X = M / c / r in factored form (rowstd(M * (1/c)) / r,
  // ...), the reference backend from X's elements (two divisions each). The K codes of the two
  // must differ no more than rounding noise: on the order of the direct form's own codes with
  // another summation order (docs/design.md, "Flush": 2.9e-7 and 4.1e-7 of codes over 1,500
  // tiles). A formula error (a scale on the wrong axis, a missing division) moves ~1e-2 of them.
  const int tiles = 400, d = 128, g = 128;
  size_t factored = 0, reordered = 0, total = 0;
  for (int t = 0; t < tiles; ++t) {
    const std::vector<float> m =
        *syntheticRotatedKeyMatrix(g, d, kvarn::testing::testSeed(700 + t));
    const QuantizedMatrix direct =
        *quantizeNormalized(m, d, g, 4, directNormalization(m, d, g, true));
    const QuantizedMatrix sequential =
        *quantizeNormalized(m, d, g, 4, directNormalization(m, d, g, false));
    const QuantizedMatrix ours = *quantizeMatrix(m, d, g, 4, 8);
    for (size_t i = 0; i < direct.codes.size(); ++i) {
      factored += ours.codes[i] != direct.codes[i];
      reordered += sequential.codes[i] != direct.codes[i];
    }
    total += direct.codes.size();
  }
  std::printf("[ factored ] K codes unlike the direct form's: factored %zu, direct summed left to "
              "right %zu, of %zu\n",
              factored, reordered, total);
  EXPECT_LE(double(factored) / double(total), 1e-5);
}

TEST(Quantize, OneFmaCodesAgreeWithTheChainWhereTheirMarginDecidesThem) {
  // A model of the GPU flush's codes (quantizePack in flush.cuh): q~ = m * (1/c * (1/r * 1/s)) +
  // (-lo * 1/s) in one FMA, kept where it lies further than roundedmath::codeMargin from a
  // rounding midpoint, against the reference's chain of correctly rounded operations
  // (n = m / c / r, q = (n - lo) / s, rint).
  // Rows of random fp16 elements with Sinkhorn-like scales, rows whose mean is 1000 times their
  // spread (a narrower margin), and constant rows (scale 1e-10 against elements of at least
  // 8e-5: a margin below zero, so every code is left to the chain).
  std::mt19937_64 rng(kvarn::testing::testSeed(29));
  std::uniform_real_distribution<float> logScale(-0.3f, 4.0f), unit(-1.0f, 1.0f);
  constexpr int C = 128;
  int64_t decided = 0, total = 0, nearMidpoint = 0;
  for (int row = 0; row < 40000; ++row) {
    const int bits = row % 2 == 0 ? 4 : 2;
    const float qmax = float((1 << bits) - 1);
    const bool narrow = row % 10 == 9, constant = row % 50 == 7;
    const float magnitude = std::exp2(float(int(rng() % 24) - 12));
    const float offset = narrow ? magnitude * 1000.0f : 0.0f;
    float m[C], c[C];
    for (int j = 0; j < C; ++j) {
      m[j] = roundToHalf(offset + magnitude * unit(rng) * (j % 17 == 0 ? 8.0f : 1.0f));
      c[j] = std::exp(logScale(rng));
      if (constant) // a quarter over scales up to e^8: |n| >= 8e-5, so the margin is below zero
        m[j] = 0.25f, c[j] = c[0];
    }
    const float r = std::exp(logScale(rng));
    float n[C], lo = std::numeric_limits<float>::infinity(), hi = -lo;
    for (int j = 0; j < C; ++j) {
      n[j] = (m[j] / c[j]) / r;
      lo = std::min(lo, n[j]);
      hi = std::max(hi, n[j]);
    }
    const float s = std::max((hi - lo) / qmax, 1e-10f), inverse = 1.0f / s;
    const float rowFactor = (1.0f / r) * inverse, shift = -lo * inverse;
    const float margin = roundedmath::codeMargin(std::max(std::fabs(lo), std::fabs(hi)), inverse);
    for (int j = 0; j < C; ++j, ++total) {
      const float exact = std::nearbyint((n[j] - lo) / s);
      const float quotient = std::fmaf(m[j], (1.0f / c[j]) * rowFactor, shift);
      const float rounded = std::nearbyint(quotient);
      const float distance = std::fabs(quotient - rounded);
      if (std::fabs(distance - 0.5f) < 1e-4f)
        ++nearMidpoint;
      if (distance < margin) {
        ASSERT_FALSE(constant) << "row " << row << ": a constant row's margin is " << margin;
        ++decided;
        ASSERT_EQ(rounded, exact) << "row " << row << " element " << j << ": q~ " << quotient
                                  << ", margin " << margin;
      }
    }
  }
  // The FMA decides nearly every code but the constant rows', and the rows reach codes within
  // 1e-4 of a midpoint, where the margin matters.
  EXPECT_GT(double(decided), 0.85 * double(total));
  EXPECT_GT(nearMidpoint, 100);
}

TEST(Quantize, AZeroMinimumGivesAPositiveZeroPoint) {
  // Rows whose minimum is zero, met as -0 first or as +0 first: the zero point is +0 either way
  // (the GPU flush's exact divisions turn -0 into +0), and the codes are those of the minimum 0.
  const float values[2][4] = {{-0.0f, 1.0f, 0.0f, 3.0f}, {0.0f, 2.0f, -0.0f, 1.5f}};
  std::vector<float> matrix;
  for (const auto &row : values)
    matrix.insert(matrix.end(), std::begin(row), std::end(row));
  Normalization norm;
  norm.colScale.assign(4, 1.0f);
  norm.rowScale.assign(2, 1.0f);
  Expected<QuantizedMatrix> q = quantizeNormalized(matrix, 2, 4, 4, norm);
  ASSERT_TRUE(q) << q.error().str();
  EXPECT_EQ(q->rowZeroPoint[0], 0x0000);
  EXPECT_EQ(q->rowZeroPoint[1], 0x0000);
  EXPECT_EQ(q->codes[0], 0);
  EXPECT_EQ(q->codes[2], 0);
  EXPECT_EQ(q->codes[3], 15);
  EXPECT_EQ(q->codes[4], 0);
  EXPECT_EQ(q->codes[6], 0);
  EXPECT_EQ(q->codes[5], 15);
}

TEST(Quantize, RejectsScalesOfTheWrongSize) {
  const std::vector<float> m = randomMatrix(64, 32, 5, 3.0f);
  Normalization scales = normalizeVariance(m, 64, 32, 8);
  ASSERT_TRUE(quantizeNormalized(m, 64, 32, 4, scales));
  scales.colScale.pop_back();
  Expected<QuantizedMatrix> q = quantizeNormalized(m, 64, 32, 4, scales);
  ASSERT_FALSE(q);
  EXPECT_THAT(q.error().message, HasSubstr("31 column and 64 row scales for a 64x32 matrix"));
}

TEST(Normalization, IdentityIsACandidateAndScalesStayClamped) {
  std::vector<float> m = randomMatrix(128, 64, 9, 30.0f);
  Normalization n = normalizeVariance(m, 128, 64, 8);
  for (float s : n.colScale) {
    EXPECT_GE(s, std::exp(-0.3f) * 0.9999f);
    EXPECT_LE(s, std::exp(10.0f) * 1.0001f);
  }
  Normalization none = normalizeVariance(m, 128, 64, 0);
  EXPECT_EQ(none.chosenIteration, 0);
  EXPECT_LE(n.imbalance, none.imbalance);
}

TEST(Quantize, EdgeTilesGiveFiniteScales) {
  const int rows = 128, cols = 128;
  std::vector<std::vector<float>> tiles;
  tiles.emplace_back(rows * cols, 0.0f);                 // all zero
  tiles.emplace_back(rows * cols, 3.25f);                // constant
  tiles.emplace_back(rows * cols, -65504.0f);            // huge constant
  tiles.push_back(randomMatrix(rows, cols, 3));          // one outlier
  tiles.back()[77] = 60000.0f;
  tiles.push_back(randomMatrix(rows, cols, 4));          // huge magnitudes
  for (float &v : tiles.back())
    v = roundToHalf(std::min(std::max(v * 8000.0f, -65504.0f), 65504.0f));
  for (size_t i = 0; i < tiles.size(); ++i)
    for (int bits : {2, 4}) {
      SCOPED_TRACE(::testing::Message() << "tile " << i << " bits " << bits);
      Expected<QuantizedMatrix> q = quantizeMatrix(tiles[i], rows, cols, bits, 8);
      ASSERT_TRUE(q) << q.error().str();
      for (const auto *v : {&q->rowScale, &q->rowZeroPoint, &q->colScale})
        for (uint16_t h : *v)
          ASSERT_TRUE(std::isfinite(halfToFloat(h)));
      for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c)
          ASSERT_TRUE(std::isfinite(q->reconstruct(r, c)));
    }
  // A constant tile reconstructs exactly up to the fp16 rounding of the folded zero point.
  QuantizedMatrix constant = *quantizeMatrix(tiles[1], rows, cols, 4, 8);
  EXPECT_NEAR(constant.reconstruct(5, 9), 3.25f, 3.25f * 3e-3f);
}

TEST(Quantize, RejectsNonFiniteInput) {
  std::vector<float> m = randomMatrix(64, 64, 1);
  m[65] = std::numeric_limits<float>::quiet_NaN();
  Expected<QuantizedMatrix> q = quantizeMatrix(m, 64, 64, 4, 8);
  ASSERT_FALSE(q);
  EXPECT_EQ(q.error().code, ErrorCode::InvalidData);
  EXPECT_THAT(q.error().message, HasSubstr("non-finite value in tile at row 1, column 1"));
  m[65] = std::numeric_limits<float>::infinity();
  EXPECT_FALSE(quantizeMatrix(m, 64, 64, 4, 8));
}

class RecordTest : public ::testing::Test {
protected:
  Format format = *parseFormat("kvarn_k4v2_g64", 64);
  RecordLayout layout = recordLayout(format);
  std::vector<uint16_t> rows = [] {
    std::vector<float> m = randomMatrix(64, 64, 21);
    std::vector<uint16_t> h(m.size());
    for (size_t i = 0; i < m.size(); ++i)
      h[i] = floatToHalf(m[i]);
    return h;
  }();
  alignas(16) uint8_t storage[8192 + 16];
};

TEST_F(RecordTest, WritesEveryByteAndReadsBack) {
  std::span<uint8_t> record(storage, layout.tileBytesAligned);
  std::fill(record.begin(), record.end(), 0xff);
  ASSERT_TRUE(writeRecord(format, rows, rows, 64, record));
  std::vector<float> key(64 * 64), value(64 * 64);
  ASSERT_TRUE(dequantizeRecord(format, record, key, value));
  std::vector<float> expected(rows.size());
  for (size_t i = 0; i < rows.size(); ++i)
    expected[i] = halfToFloat(rows[i]);
  EXPECT_LT(relativeFrobeniusError(key, expected), 0.12);   // 4-bit keys
  EXPECT_LT(relativeFrobeniusError(value, expected), 0.55); // 2-bit values
  for (size_t i = layout.tileBytes; i < layout.tileBytesAligned; ++i)
    EXPECT_EQ(record[i], 0) << "padding byte " << i;
}

TEST_F(RecordTest, RejectsShortLongAndMisalignedBuffers) {
  std::span<uint8_t> shortRecord(storage, layout.tileBytesAligned - 8);
  EXPECT_THAT(writeRecord(format, rows, rows, 64, shortRecord).error().message,
              HasSubstr("needs exactly 3840"));
  std::span<uint8_t> longRecord(storage, layout.tileBytesAligned + 8);
  EXPECT_EQ(writeRecord(format, rows, rows, 64, longRecord).error().code, ErrorCode::BufferSize);
  std::span<uint8_t> misaligned(storage + 4, layout.tileBytesAligned);
  EXPECT_THAT(writeRecord(format, rows, rows, 64, misaligned).error().message,
              HasSubstr("misaligned"));
  std::span<uint8_t> record(storage, layout.tileBytesAligned);
  std::vector<uint16_t> fewRows(rows.begin(), rows.begin() + 100);
  EXPECT_EQ(writeRecord(format, fewRows, rows, 64, record).error().code, ErrorCode::BufferSize);
  EXPECT_EQ(readRecord(format, shortRecord).error().code, ErrorCode::BufferSize);
}

TEST_F(RecordTest, RejectsNaNRowsAndLeavesTheRecordUntouched) {
  std::span<uint8_t> record(storage, layout.tileBytesAligned);
  std::fill(record.begin(), record.end(), 0xab);
  std::vector<uint16_t> bad = rows;
  bad[130] = 0x7e00; // NaN
  Status s = writeRecord(format, rows, bad, 64, record);
  ASSERT_FALSE(s);
  EXPECT_THAT(s.error().message, HasSubstr("value tile: non-finite value"));
  for (uint8_t byte : record)
    ASSERT_EQ(byte, 0xab);
}

TEST_F(RecordTest, ReadRejectsNonFiniteScales) {
  std::span<uint8_t> record(storage, layout.tileBytesAligned);
  ASSERT_TRUE(writeRecord(format, rows, rows, 64, record));
  record[layout.keyScaleCol + 1] = 0x7c; // +Inf high byte
  record[layout.keyScaleCol] = 0x00;
  EXPECT_THAT(readRecord(format, record).error().message, HasSubstr("non-finite scale"));
}

TEST(Rotation, IsAnInvolutionUpToFp16AndRejectsNaN) {
  for (int d : {64, 128, 256}) {
    std::vector<float> m = randomMatrix(4, d, d);
    std::vector<uint16_t> in(m.size()), once(m.size()), twice(m.size());
    for (size_t i = 0; i < m.size(); ++i)
      in[i] = floatToHalf(m[i]);
    ASSERT_TRUE(rotateRows(in, DType::F16, 4, d, d, once));
    ASSERT_TRUE(rotateRows(once, DType::F16, 4, d, d, twice));
    std::vector<float> back(m.size());
    for (size_t i = 0; i < m.size(); ++i)
      back[i] = halfToFloat(twice[i]);
    EXPECT_LT(relativeFrobeniusError(back, m), 2e-3) << d;
  }
  std::vector<uint16_t> in(64, floatToHalf(1.0f)), out(64);
  in[3] = 0x7c00;
  EXPECT_THAT(rotateRows(in, DType::F16, 1, 64, 64, out).error().message,
              HasSubstr("non-finite input at row 0, channel 3"));
  EXPECT_EQ(rotateRows(in, DType::F16, 2, 64, 64, out).error().code, ErrorCode::BufferSize);
}

} // namespace
