// The CPU reference against the reference backend's golden vectors (tests/data/golden).
#include "Golden.h"
#include "kvarn/reference.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

using namespace kvarn;
using namespace kvarn::reference;
using kvarn::testing::GoldenDecodeCase;
using kvarn::testing::GoldenSet;

namespace {

class GoldenTest : public ::testing::TestWithParam<const char *> {
protected:
  GoldenSet golden{GetParam()};
  Format format = *parseFormat("kvarn_k" + std::to_string(golden.info()["key_bits"].get<int>()) +
                                   "v" + std::to_string(golden.info()["value_bits"].get<int>()) +
                                   "_g" + std::to_string(golden.info()["group"].get<int>()),
                               golden.info()["head_dim"].get<int>());
  RecordLayout layout = recordLayout(format);
};

TEST_P(GoldenTest, ManifestAgreesWithOurLayout) {
  EXPECT_EQ(golden.info()["tile_bytes"].get<size_t>(), layout.tileBytes);
  EXPECT_EQ(golden.info()["tile_bytes_aligned"].get<size_t>(), layout.tileBytesAligned);
  const auto &offsets = golden.info()["offsets"];
  EXPECT_EQ(offsets["k_s_col"].get<size_t>(), layout.keyScaleCol);
  EXPECT_EQ(offsets["k_zp"].get<size_t>(), layout.keyZeroPoint);
  EXPECT_EQ(offsets["k_s_row"].get<size_t>(), layout.keyScaleRow);
  EXPECT_EQ(offsets["v_packed"].get<size_t>(), layout.valuePacked);
  EXPECT_EQ(offsets["v_s_col"].get<size_t>(), layout.valueScaleCol);
  EXPECT_EQ(offsets["v_s_row"].get<size_t>(), layout.valueScaleRow);
  EXPECT_EQ(offsets["v_zp"].get<size_t>(), layout.valueZeroPoint);
}

TEST_P(GoldenTest, HadamardIsBitExact) {
  EXPECT_EQ(hadamard16(format.headDim), golden.load<uint16_t>("H16"));
}

TEST_P(GoldenTest, RotationMatchesWithinOneUlp) {
  const int d = format.headDim;
  for (const char *tensor : {"store_k", "store_v"}) {
    std::vector<uint16_t> raw = golden.load<uint16_t>(tensor);
    std::vector<uint16_t> expected = golden.load<uint16_t>(std::string(tensor) + "_rot");
    std::vector<uint16_t> rotated(raw.size());
    const int rows = static_cast<int>(raw.size() / d);
    ASSERT_TRUE(rotateRows(raw, DType::F16, rows, d, d, rotated));
    size_t exact = 0;
    for (size_t i = 0; i < raw.size(); ++i) {
      const float a = halfToFloat(rotated[i]), b = halfToFloat(expected[i]);
      // One fp16 ulp of the result, plus fp32 summation-order noise relative to the row's size.
      float rowNorm = 0;
      for (size_t c = i / d * d; c < i / d * d + d; ++c)
        rowNorm += std::fabs(halfToFloat(raw[c]));
      const float tolerance = std::ldexp(1.0f, std::ilogb(std::max(std::fabs(b), 6.2e-5f)) - 10) +
                              rowNorm * std::ldexp(1.0f, -20);
      ASSERT_LE(std::fabs(a - b), tolerance)
          << tensor << " element " << i << ": " << a << " vs " << b;
      exact += rotated[i] == expected[i];
    }
    EXPECT_GT(double(exact) / raw.size(), 0.95) << tensor;
  }
}

/// Relative difference of two fp16 scale values.
double relativeDifference(uint16_t a, uint16_t b) {
  const double x = halfToFloat(a), y = halfToFloat(b);
  return std::fabs(x - y) / std::max(std::fabs(y), 1e-6);
}

TEST_P(GoldenTest, StoreRecordsMatchTheReferenceBackend) {
  const int d = format.headDim, g = format.tileTokens;
  const std::vector<int64_t> shape = golden.shape("store_records"); // [blocks, heads, bytes]
  const int blocks = static_cast<int>(shape[0]), heads = static_cast<int>(shape[1]);
  std::vector<uint16_t> keyRot = golden.load<uint16_t>("store_k_rot");
  std::vector<uint16_t> valueRot = golden.load<uint16_t>("store_v_rot");
  std::vector<uint8_t> expected = golden.load<uint8_t>("store_records");
  ASSERT_EQ(expected.size(), size_t(blocks) * heads * layout.tileBytesAligned);

  std::vector<uint8_t> ours(expected.size(), 0xff);
  size_t keyBytes = 0, keyEqual = 0, valueBytes = 0, valueEqual = 0;
  double worstScale = 0;
  for (int b = 0; b < blocks; ++b)
    for (int h = 0; h < heads; ++h) {
      SCOPED_TRACE(::testing::Message() << "block " << b << " head " << h);
      const size_t rowBase = (size_t(b) * g * heads + h) * d;
      const size_t offset = (size_t(b) * heads + h) * layout.tileBytesAligned;
      std::span<uint8_t> record(ours.data() + offset, layout.tileBytesAligned);
      std::span<const uint8_t> golden(expected.data() + offset, layout.tileBytesAligned);
      ASSERT_TRUE(writeRecord(format, std::span(keyRot).subspan(rowBase),
                              std::span(valueRot).subspan(rowBase), size_t(heads) * d, record));
      for (size_t i = 0; i < layout.keyPackedBytes; ++i)
        keyEqual += record[layout.keyPacked + i] == golden[layout.keyPacked + i];
      keyBytes += layout.keyPackedBytes;
      for (size_t i = 0; i < layout.valuePackedBytes; ++i)
        valueEqual += record[layout.valuePacked + i] == golden[layout.valuePacked + i];
      valueBytes += layout.valuePackedBytes;
      DecodedRecord a = *readRecord(format, record), e = *readRecord(format, golden);
      for (auto [x, y] : {std::pair{&a.key.rowScale, &e.key.rowScale},
                          {&a.key.rowZeroPoint, &e.key.rowZeroPoint},
                          {&a.key.colScale, &e.key.colScale},
                          {&a.value.rowScale, &e.value.rowScale},
                          {&a.value.rowZeroPoint, &e.value.rowZeroPoint},
                          {&a.value.colScale, &e.value.colScale}})
        for (size_t i = 0; i < x->size(); ++i)
          worstScale = std::max(worstScale, relativeDifference((*x)[i], (*y)[i]));
      // Reconstructions agree within the fp16 rounding of the golden reconstruction's factors
      // ((code*s + zp)*s_other, each factor rounded to fp16) wherever the codes agree.
      for (auto [x, y] : {std::pair{&a.key, &e.key}, {&a.value, &e.value}})
        for (int r = 0; r < y->rows; ++r)
          for (int c = 0; c < y->cols; ++c) {
            const size_t i = size_t(r) * y->cols + c;
            if (x->codes[i] != y->codes[i])
              continue; // counted by the packed-byte criteria above
            const float magnitude = (y->codes[i] * std::fabs(halfToFloat(y->rowScale[r])) +
                                     std::fabs(halfToFloat(y->rowZeroPoint[r]))) *
                                    std::fabs(halfToFloat(y->colScale[c]));
            const float tolerance = 4 * std::ldexp(1.0f, -11) * magnitude;
            const float ours = x->reconstruct(r, c), theirs = y->reconstruct(r, c);
            if (std::fabs(ours - theirs) > tolerance)
              ADD_FAILURE() << (x == &a.key ? "K" : "V") << " reconstruction [" << r << "][" << c
                            << "]: " << ours << " vs " << theirs << " (tolerance " << tolerance
                            << ")";
          }
      for (size_t i = layout.tileBytes; i < layout.tileBytesAligned; ++i)
        ASSERT_EQ(record[i], golden[i]);
    }
  EXPECT_EQ(keyEqual, keyBytes) << "K packed bytes must be 100% equal";
  EXPECT_GE(double(valueEqual) / valueBytes, 0.999) << valueEqual << " of " << valueBytes;
  EXPECT_LE(worstScale, 0.02);
  RecordProperty("v_bytes_equal", std::to_string(valueEqual) + "/" + std::to_string(valueBytes));
  std::printf("[ golden   ] K bytes equal %zu/%zu, V bytes equal %zu/%zu, worst scale diff %.4f\n",
              keyEqual, keyBytes, valueEqual, valueBytes, worstScale);
}

TEST_P(GoldenTest, DecodeMatchesTheReferenceBackend) {
  const int d = format.headDim;
  GoldenDecodeCase dc(golden);
  DecodeProblem problem;
  problem.format = format;
  problem.batch = dc.batch;
  problem.numQueryHeads = dc.numQueryHeads;
  problem.numKvHeads = dc.numKvHeads;
  problem.maxBlocksPerRequest = dc.maxBlocks;
  problem.query = dc.query;
  problem.blockTable = dc.blockTable;
  problem.seqLens = dc.seqLens;
  PagedCacheView cache{dc.records, dc.poolKey, dc.poolValue, dc.blockToSlot};

  for (const char *expectedName : {"dec_out_single", "dec_out_splitk"})
    for (int splits : {1, 4}) {
      std::vector<uint16_t> out(dc.query.size(), 0x7e00);
      ASSERT_TRUE(decodeQuantized(problem, cache, splits, out));
      std::vector<uint16_t> expected = golden.load<uint16_t>(expectedName);
      std::vector<float> a(out.size()), e(out.size());
      for (size_t i = 0; i < out.size(); ++i) {
        a[i] = halfToFloat(out[i]);
        e[i] = halfToFloat(expected[i]);
      }
      const double error = relativeFrobeniusError(a, e);
      EXPECT_LE(error, 2e-3) << expectedName << " splits " << splits;
      std::printf("[ golden   ] decode vs %s, %d split(s): relative error %.2e (D=%d)\n",
                  expectedName, splits, error, d);
    }
}

INSTANTIATE_TEST_SUITE_P(ReferenceBackend, GoldenTest,
                         ::testing::Values("k4v2_g128_d128", "k4v4_g128_d128"));

} // namespace
