// Reference decode: splits, GQA, seq_len 0, -1 entries past the end, mixed pages, bad input.
#include "kvarn/reference.h"
#include "kvarn/synthetic.h"

#include "../common/PagedCache.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>

using namespace kvarn;
using namespace kvarn::reference;
using ::testing::HasSubstr;

namespace {

/// A small paged cache: every block holds fp16 rows (unrotated copies kept for the fp16 path),
/// even blocks are quantized into records, odd ones stay in the pool.
struct PagedFixture {
  Format format;
  int numKvHeads, numBlocks;
  RecordLayout layout;
  std::vector<uint16_t> rawKey, rawValue;  // [numBlocks][G][Hk][D], unrotated
  std::vector<uint16_t> poolKey, poolValue; // [numBlocks][G][Hk][D], rotated (slot = block)
  std::vector<uint8_t> records;
  std::vector<int32_t> blockToSlot;

  PagedFixture(const std::string &preset, int headDim, int hk, int blocks, bool quantizeEven,
               uint64_t seed)
      : format(*parseFormat(preset, headDim)), numKvHeads(hk), numBlocks(blocks),
        layout(recordLayout(format)) {
    const size_t rowsTotal = size_t(blocks) * format.tileTokens * hk;
    const size_t elements = rowsTotal * headDim;
    std::mt19937_64 rng(kvarn::testing::testSeed(seed));
    std::normal_distribution<float> normal;
    rawKey.resize(elements);
    rawValue.resize(elements);
    for (size_t i = 0; i < elements; ++i) {
      rawKey[i] = floatToHalf(normal(rng) * (i % headDim == 7 ? 6.0f : 1.0f));
      rawValue[i] = floatToHalf(normal(rng));
    }
    poolKey.resize(elements);
    poolValue.resize(elements);
    EXPECT_TRUE(rotateRows(rawKey, DType::F16, int(rowsTotal), headDim, headDim, poolKey));
    EXPECT_TRUE(rotateRows(rawValue, DType::F16, int(rowsTotal), headDim, headDim, poolValue));
    records.assign(size_t(blocks) * hk * layout.tileBytesAligned, 0);
    blockToSlot.resize(blocks);
    for (int b = 0; b < blocks; ++b) {
      const bool quantized = quantizeEven && b % 2 == 0;
      blockToSlot[b] = quantized ? -1 : b;
      if (!quantized)
        continue;
      for (int h = 0; h < hk; ++h) {
        const size_t rowBase = (size_t(b) * format.tileTokens * hk + h) * headDim;
        std::span<uint8_t> record(records.data() + (size_t(b) * hk + h) * layout.tileBytesAligned,
                                  layout.tileBytesAligned);
        EXPECT_TRUE(writeRecord(format, std::span(poolKey).subspan(rowBase),
                                std::span(poolValue).subspan(rowBase), size_t(hk) * headDim,
                                record));
      }
    }
  }
  PagedCacheView view() const { return {records, poolKey, poolValue, blockToSlot}; }
};

struct Request {
  std::vector<uint16_t> q;
  std::vector<int32_t> table, seqLens;
  DecodeProblem problem;
};

Request makeRequest(const PagedFixture &f, int hq, std::vector<int32_t> seqLens, DType dtype,
                    uint64_t seed) {
  Request r;
  const int batch = int(seqLens.size()), maxBlocks = f.numBlocks;
  r.seqLens = std::move(seqLens);
  r.table.assign(size_t(batch) * maxBlocks, -1);
  std::mt19937_64 rng(kvarn::testing::testSeed(seed));
  for (int b = 0; b < batch; ++b) {
    const int used = (r.seqLens[b] + f.format.tileTokens - 1) / f.format.tileTokens;
    for (int k = 0; k < used; ++k) // a different permutation of blocks per request
      r.table[size_t(b) * maxBlocks + k] = (k * 3 + b) % f.numBlocks;
  }
  std::normal_distribution<float> normal;
  r.q.resize(size_t(batch) * hq * f.format.headDim);
  for (uint16_t &x : r.q)
    x = floatToDType(normal(rng), dtype);
  r.problem.format = f.format;
  r.problem.batch = batch;
  r.problem.numQueryHeads = hq;
  r.problem.numKvHeads = f.numKvHeads;
  r.problem.maxBlocksPerRequest = maxBlocks;
  r.problem.dtype = dtype;
  r.problem.query = r.q;
  r.problem.blockTable = r.table;
  r.problem.seqLens = r.seqLens;
  return r;
}

/// Builds a synthetic cache and decodes it with KVARN_HOST_THREADS = `threads`.
std::pair<std::vector<uint8_t>, std::vector<uint16_t>> cacheAndDecode(const char *threads) {
  setenv("KVARN_HOST_THREADS", threads, 1);
  const Format format = *parseFormat("kvarn_k4v2_g64", 64);
  const std::vector<int32_t> lengths = {5 * 64 + 37, 3 * 64, 0, 2 * 64 + 1, 70 * 64};
  kvarn::testing::PagedCache cache(format, 3, lengths, 11); // expects its records written
  DecodeProblem problem;
  problem.format = format;
  problem.batch = int(lengths.size());
  problem.numQueryHeads = 12;
  problem.numKvHeads = 3;
  problem.maxBlocksPerRequest = cache.maxBlocks;
  problem.dtype = DType::BF16;
  std::vector<uint16_t> q =
      kvarn::testing::randomQueries(size_t(problem.batch) * 12 * 64, DType::BF16, 12);
  problem.query = q;
  problem.blockTable = cache.blockTable;
  problem.seqLens = cache.seqLens;
  std::vector<uint16_t> out(q.size(), 0xffff);
  EXPECT_TRUE(decodeQuantized(problem, cache.view(), 3, out));
  unsetenv("KVARN_HOST_THREADS");
  return {cache.records, out};
}

TEST(DecodeReference, HostThreadsDoNotChangeABit) {
  // Records and the float64 decode are written from every host thread; the thread count must
  // not change a byte of either.
  const auto [records1, out1] = cacheAndDecode("1");
  const auto [records5, out5] = cacheAndDecode("5");
  ASSERT_EQ(records1.size(), records5.size());
  EXPECT_TRUE(records1 == records5);
  EXPECT_TRUE(out1 == out5);
  EXPECT_NE(std::count(out1.begin(), out1.end(), uint16_t(0xffff)), long(out1.size()));
}

TEST(DecodeReference, SplitsDoNotChangeTheResult) {
  PagedFixture f("kvarn_k4v2_g64", 64, 2, 7, true, 1);
  Request r = makeRequest(f, 10, {5 * 64 + 37, 1, 64, 65}, DType::F16, 2); // Q = 5
  std::vector<uint16_t> one(r.q.size()), many(r.q.size());
  ASSERT_TRUE(decodeQuantized(r.problem, f.view(), 1, one));
  ASSERT_TRUE(decodeQuantized(r.problem, f.view(), 5, many));
  EXPECT_LT(relativeFrobeniusError(synthetic::toFloats(many, DType::F16), synthetic::toFloats(one, DType::F16)), 1e-3);
}

TEST(DecodeReference, PoolOnlyCacheAgreesWithTheFp16Reference) {
  for (DType dtype : {DType::F16, DType::BF16}) {
    PagedFixture f("kvarn_k4v4_g64", 128, 2, 5, /*quantizeEven=*/false, 3);
    Request r = makeRequest(f, 4, {300, 63, 128}, dtype, 4);
    std::vector<uint16_t> rotated(r.q.size()), plain(r.q.size());
    ASSERT_TRUE(decodeQuantized(r.problem, f.view(), 2, rotated));
    ASSERT_TRUE(decodeFp16(r.problem, f.rawKey, f.rawValue, f.numBlocks, plain));
    const double tolerance = dtype == DType::F16 ? 4e-3 : 2e-2;
    EXPECT_LT(relativeFrobeniusError(synthetic::toFloats(rotated, dtype), synthetic::toFloats(plain, dtype)), tolerance)
        << dtypeName(dtype);
  }
}

TEST(DecodeReference, Bf16OutputsAreTheFp16OutputsConvertedOnce) {
  // bf16 queries: q_rot and out_rot are fp16, the output is bf16(fp16(x)) of the unconverted x;
  // a request of length 0 gives zeros in both.
  PagedFixture f("kvarn_k4v2_g64", 64, 2, 7, true, 21);
  for (DType dtype : {DType::F16, DType::BF16}) {
    Request r = makeRequest(f, 6, {5 * 64 + 37, 0, 65}, dtype, 22);
    std::vector<uint16_t> out(r.q.size(), 0xffff);
    std::vector<float> unconverted(r.q.size(), std::nanf(""));
    ASSERT_TRUE(decodeQuantized(r.problem, f.view(), 2, out, unconverted));
    size_t nonZero = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      ASSERT_EQ(out[i], floatToDType(halfToFloat(floatToHalf(unconverted[i])), dtype))
          << dtypeName(dtype) << " output " << i;
      nonZero += unconverted[i] != 0.0f;
    }
    const size_t perRequest = size_t(6) * 64;
    EXPECT_EQ(std::count(unconverted.begin() + perRequest, unconverted.begin() + 2 * perRequest,
                         0.0f),
              long(perRequest));
    EXPECT_GT(nonZero, perRequest);
    std::vector<float> shorter(1);
    EXPECT_THAT(decodeQuantized(r.problem, f.view(), 2, out, shorter).error().message,
                HasSubstr("unconverted output"));
  }
}

TEST(DecodeReference, Bf16ErrorCountsWhatTheKernelAddsToTheRounding) {
  // x: exact outputs; expected: bf16(fp16(x)), the reference's bf16 outputs.
  std::mt19937_64 rng(kvarn::testing::testSeed(31));
  std::normal_distribution<float> normal;
  std::vector<float> x(4096), expected(x.size());
  auto bf16 = [](float v) {
    return dtypeToFloat(floatToDType(halfToFloat(floatToHalf(v)), DType::BF16), DType::BF16);
  };
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = normal(rng);
    expected[i] = bf16(x[i]);
  }
  // The reference's own outputs: zero; fp16 outputs are measured as before.
  EXPECT_EQ(decodeOutputError(DType::BF16, expected, expected, x), 0.0);
  EXPECT_EQ(decodeOutputError(DType::F16, expected, x, {}), relativeFrobeniusError(expected, x));
  // A kernel off by a relative 1e-4 before the rounding: against the reference's bf16 outputs
  // its flips weigh several times that; beyond the rounding, about 1e-4.
  std::vector<float> slightly(x.size()), clearly(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    slightly[i] = bf16(x[i] * (1.0f + 1e-4f * normal(rng)));
    clearly[i] = bf16(x[i] * (1.0f + 3e-3f * normal(rng)));
  }
  const double flips = relativeFrobeniusError(slightly, expected);
  const double beyond = decodeOutputError(DType::BF16, slightly, expected, x);
  EXPECT_GT(flips, 4e-4);
  EXPECT_LT(beyond, 3e-4);
  // A kernel off by 3e-3 is over 1e-3 by either measure; a NaN output never passes a bound.
  EXPECT_GT(decodeOutputError(DType::BF16, clearly, expected, x), 2e-3);
  slightly[5] = std::nanf("");
  EXPECT_FALSE(decodeOutputError(DType::BF16, slightly, expected, x) <= 1.0);
  EXPECT_EQ(decodeOutputError(DType::BF16, expected, expected, std::span(x).first(5)),
            std::numeric_limits<double>::infinity());
}

TEST(DecodeReference, ZeroLengthGivesZerosAndMinusOneEntriesAreNeverRead) {
  PagedFixture f("kvarn_k2v2_g128", 64, 1, 3, true, 5);
  Request r = makeRequest(f, 2, {0, 130}, DType::F16, 6);
  // Entries past each request's end are -1 (makeRequest) and must be ignored.
  ASSERT_EQ(r.table[2], -1);
  std::vector<uint16_t> out(r.q.size(), 0x7e00);
  ASSERT_TRUE(decodeQuantized(r.problem, f.view(), 1, out));
  for (int i = 0; i < 2 * 64; ++i)
    EXPECT_EQ(out[i], 0) << i;
  for (size_t i = 2 * 64; i < out.size(); ++i)
    EXPECT_TRUE(std::isfinite(halfToFloat(out[i])));
}

TEST(DecodeReference, RejectsBadInputWithSpecificMessages) {
  PagedFixture f("kvarn_k4v2_g64", 64, 2, 3, true, 7);
  Request r = makeRequest(f, 4, {100}, DType::F16, 8);
  std::vector<uint16_t> out(r.q.size());
  r.table[1] = 9; // block id outside the cache
  EXPECT_THAT(decodeQuantized(r.problem, f.view(), 1, out).error().message,
              HasSubstr("request 0, block 1: block id 9 outside [0, 3)"));
  r.table[1] = 1;
  r.seqLens[0] = 3 * 64 + 1;
  EXPECT_THAT(decodeQuantized(r.problem, f.view(), 1, out).error().message,
              HasSubstr("seq_len 193 of request 0 is outside [0, max_blocks*G]"));
  r.seqLens[0] = 100;
  r.problem.numQueryHeads = 3;
  EXPECT_THAT(decodeQuantized(r.problem, f.view(), 1, out).error().message,
              HasSubstr("must be a multiple of kv heads"));
  r.problem.numQueryHeads = 4;
  std::vector<uint16_t> shortOut(5);
  EXPECT_EQ(decodeQuantized(r.problem, f.view(), 1, shortOut).error().code, ErrorCode::BufferSize);
  PagedCacheView truncated = f.view();
  truncated.records = truncated.records.subspan(1);
  EXPECT_EQ(decodeQuantized(r.problem, truncated, 1, out).error().code, ErrorCode::BufferSize);
}

} // namespace
