// The decode split planner (host only): waves of resident CTAs, pages per warp, merge cost; the
// decode workspace layout.
#include "kvarn/launch.h"

#include "../common/Seeds.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace {

using kvarn::bindDecodeWorkspace;
using kvarn::decodeWorkspaceBytes;
using kvarn::planDecode;
namespace dev = kvarn::dev;

constexpr int kSms = 132, kTile = 128, kWarps = 4, kResident = 3; // 396 resident CTAs

int splits(int batch, int context, int resident = kResident, int warps = kWarps) {
  return planDecode(batch, 8, context, kTile, kSms, warps, resident).numSplits;
}

TEST(DecodePlan, OneLongRequestFillsOneWaveInsteadOfSpillingIntoASecond) {
  // 8 kv heads, 1,024 pages: at most 49 splits (392 CTAs) fit one wave, each warp then walks
  // ceil(ceil(1024 / 49) / 4) = 6 pages; 64 splits would need a second, mostly empty wave.
  const int s = splits(1, 131072);
  EXPECT_LE(8 * s, kSms * kResident);
  EXPECT_LE(((1024 + s - 1) / s + kWarps - 1) / kWarps, 6) << s << " splits";
}

TEST(DecodePlan, LargeBatchesDoNotSplitMoreThanTheWavesNeed) {
  // 512 CTAs already exceed one wave: splitting further only helps until the waves are full.
  const int s = splits(64, 16384);
  const int ctas = 64 * 8 * s;
  const int waves = (ctas + kSms * kResident - 1) / (kSms * kResident);
  EXPECT_GE(double(ctas) / (waves * kSms * kResident), 0.85) << s << " splits";
}

TEST(DecodePlan, MoreResidentCtasAllowMoreSplits) {
  EXPECT_LE(splits(1, 131072, 1), splits(1, 131072, 3));
  EXPECT_LE(splits(1, 131072, 3), splits(1, 131072, 6));
}

TEST(DecodePlan, ShortAndEmptyRequestsAreNotSplit) {
  EXPECT_EQ(splits(64, 0), 1);
  EXPECT_EQ(splits(64, 128), 1);
  EXPECT_EQ(splits(1, 128), 1);           // one page cannot be split
  EXPECT_LE(splits(1, 640), 5);           // never more splits than pages
  EXPECT_EQ(splits(0, 4096), splits(1, 4096)); // an empty batch plans like one request
}

TEST(DecodePlan, RespectsTheSplitBound) {
  EXPECT_LE(planDecode(1, 1, 1 << 20, kTile, kSms, kWarps, kResident, 16).numSplits, 16);
  EXPECT_GE(planDecode(1, 1, 1 << 20, kTile, kSms, kWarps, kResident, 16).numSplits, 8);
}

TEST(DecodePlan, OneRequestOfTheInterleavedKernelsGetsASinkSplitInAFreeSlot) {
  using kvarn::decodeSinkSplit;
  // The rule: interleaved kernels, planned split counts, one request, several splits.
  EXPECT_EQ(decodeSinkSplit(true, 0, 1, 33, 4), 1);
  EXPECT_EQ(decodeSinkSplit(true, 0, 1, 1, 4), 0) << "one split walks every page";
  EXPECT_EQ(decodeSinkSplit(true, 0, 2, 16, 4), 0) << "two requests: no free slot to rely on";
  EXPECT_EQ(decodeSinkSplit(true, 16, 1, 16, 4), 0) << "a split count compiled in";
  EXPECT_EQ(decodeSinkSplit(false, 0, 1, 8, 4), 0) << "contiguous page ranges";
  EXPECT_EQ(decodeSinkSplit(true, 0, 1, 8, 2), 1) << "two warps: one per end page";
  EXPECT_EQ(decodeSinkSplit(true, 0, 1, 8, 1), 0) << "one warp has no second warp for the last page";
  EXPECT_FALSE(planDecode(1, 8, 131072, kTile, kSms, 1, 8, 64, true).sinkSplit)
      << "a one-warp kernel plans no sink split";
  // The shipped B = 1 kernel: 4 warps, 2 CTAs per SM (264 slots), 8 kv heads, 1,024 pages.
  // 32 splits walking every page give each warp 8 pages; 33 splits fill every slot, the last
  // taking pages 0 and 1023, and the 32 others walk pages 1 .. 1022 in at most 8 per warp.
  const auto interleaved = [](int batch, int context) {
    return planDecode(batch, 8, context, kTile, kSms, kWarps, 2, kvarn::kMaxPlannedSplits, true)
        .numSplits;
  };
  EXPECT_EQ(planDecode(1, 8, 131072, kTile, kSms, kWarps, 2).numSplits, 32);
  EXPECT_EQ(interleaved(1, 131072), 33);
  EXPECT_TRUE(planDecode(1, 8, 131072, kTile, kSms, kWarps, 2, 64, true).sinkSplit);
  EXPECT_FALSE(planDecode(1, 8, 131072, kTile, kSms, kWarps, 2).sinkSplit);
  EXPECT_FALSE(planDecode(1, 8, 128, kTile, kSms, kWarps, 2, 64, true).sinkSplit) << "one split";
  EXPECT_EQ(interleaved(1, 4096), 9) << "30 pages over 8 walking splits, one page per warp";
  EXPECT_EQ(interleaved(1, 128), 1) << "one page: no split at all";
  EXPECT_EQ(interleaved(1, 256), 1) << "two pages: two warps of one CTA, no merge";
  // More than one request: the rule does not apply and the plan is the walk's usual one.
  EXPECT_EQ(interleaved(2, 131072), planDecode(2, 8, 131072, kTile, kSms, kWarps, 2).numSplits);
  EXPECT_LE(planDecode(1, 1, 1 << 20, kTile, kSms, kWarps, 2, 16, true).numSplits, 16)
      << "the sink split counts against the bound";
}

TEST(DecodePlan, UpToTwoWarpsPerSchedulerTheSlowestWarpSetsTheWalk) {
  using kvarn::splitWalkTime;
  for (int warps : {1, 2, 3, 4, 5, 6, 8})
    for (int pages = 0; pages <= 100; ++pages)
      EXPECT_DOUBLE_EQ(splitWalkTime(pages, warps), double((pages + warps - 1) / warps))
          << pages << " pages over " << warps << " warps";
}

TEST(DecodePlan, TwelveWarpsCountThePagesOfTheBusiestScheduler) {
  using kvarn::splitWalkTime;
  // 64 pages: warps 0-3 walk 6, warps 4-11 walk 5, so each scheduler holds 6 + 5 + 5; 69 pages
  // put 6 + 6 + 6 on scheduler 0. The slowest warp walks 6 pages in both.
  EXPECT_NEAR(splitWalkTime(64, 12), 17.0 / 3.0, 1e-12);
  EXPECT_DOUBLE_EQ(splitWalkTime(69, 12), 6.0);
  EXPECT_DOUBLE_EQ(splitWalkTime(72, 12), 6.0);
  EXPECT_DOUBLE_EQ(splitWalkTime(0, 12), 0.0);
  // One page per warp or fewer: fewer than two warps per scheduler walk, each at the lone rate.
  EXPECT_NEAR(splitWalkTime(4, 12), 2.0 / 3.0, 1e-12);
  EXPECT_NEAR(splitWalkTime(8, 12), 2.0 / 3.0, 1e-12);
  EXPECT_DOUBLE_EQ(splitWalkTime(12, 12), 1.0);
  for (int pages = 1; pages <= 400; ++pages) {
    EXPECT_LE(splitWalkTime(pages, 12), double((pages + 11) / 12)) << pages;
    EXPECT_LE(splitWalkTime(pages - 1, 12), splitWalkTime(pages, 12)) << pages;
  }
  // The plans this changes, measured on the H200 (docs/benchmarks.md): one request of 1,024 pages
  // over 8 kv heads, 16 splits (64 pages each) instead of 15 (69 pages; 4% slower), and four
  // requests of 64 pages, 4 splits instead of 3 (6% slower).
  EXPECT_EQ(splits(1, 131072, 1, 12), 16);
  EXPECT_EQ(splits(4, 8192, 1, 12), 4);
  EXPECT_EQ(splits(8, 4096, 1, 12), 1) << "a second split only ties";
}

/// How many times each page of a `pages`-page request is walked by a decode launch of the plan
/// over `warps`-warp CTAs, through the kernels' own walk (dev::DecodeWalk in params.h); -1 at the
/// end stands for a walked page outside 0 .. pages - 1.
std::vector<int> walkCounts(bool interleaved, const kvarn::DecodePlan &plan, int warps, int pages) {
  std::vector<int> counts(size_t(pages) + 1, 0);
  const int walkSplits = plan.walkSplits();
  const int stride = dev::DecodeWalk::stride(interleaved, walkSplits, warps);
  for (int split = 0; split < plan.numSplits; ++split)
    for (int warp = 0; warp < warps; ++warp) {
      dev::DecodeWalk walk;
      if (interleaved) {
        walk.startInterleaved(split, warp, plan.numSplits, walkSplits, warps);
        walk.endInterleaved(split, warp, plan.numSplits, walkSplits, pages);
      } else {
        walk.contiguous(split, plan.numSplits, pages);
      }
      for (int page = walk.begin + warp; page < walk.end; page += stride) {
        if (page < 0 || page >= pages) {
          counts.back() = -1;
          break;
        }
        ++counts[size_t(page)];
      }
    }
  return counts;
}

/// Every page once and nothing else (the first page left out, if any, in `missing`).
bool walksEveryPageOnce(const std::vector<int> &counts, int *missing) {
  for (size_t page = 0; page + 1 < counts.size(); ++page)
    if (counts[page] != 1) {
      *missing = int(page);
      return false;
    }
  *missing = -1;
  return counts.back() == 0;
}

TEST(DecodeWalk, EveryPlanOfOneRequestWalksEveryPageExactlyOnce) {
  // The plans planDecode and decodePlanOf give (decodeSinkSplit decides the sink split), over
  // both walks, every warp count the schedules allow, split counts up to past the planner's
  // bound and lengths from empty to past a lookup window of every warp.
  int checked = 0;
  for (bool interleaved : {true, false})
    for (int warps = 1; warps <= 16; ++warps)
      for (int numSplits = 1; numSplits <= kvarn::kMaxPlannedSplits + 1; ++numSplits) {
        const kvarn::DecodePlan plan{
            numSplits, kvarn::decodeSinkSplit(interleaved, 0, 1, numSplits, warps) != 0};
        for (int pages : {0, 1, 2, 3, 4, 5, 7, 8, 9, 31, 32, 33, 63, 64, 65, 127, 128, 129, 257,
                          1023, 1024, 1025, 4096 + 37}) {
          int missing = -1;
          ASSERT_TRUE(walksEveryPageOnce(walkCounts(interleaved, plan, warps, pages), &missing))
              << (interleaved ? "interleaved" : "contiguous") << ", " << warps << " warps, "
              << numSplits << " splits" << (plan.sinkSplit ? " (sink split)" : "") << ", "
              << pages << " pages: page " << missing << " not walked once";
          ++checked;
        }
      }
  EXPECT_EQ(checked, 2 * 16 * (kvarn::kMaxPlannedSplits + 1) * 23);
}

TEST(DecodeWalk, ASinkSplitOfOneWarpWouldLoseTheLastPage) {
  // Why decodeSinkSplit asks for two warps: a one-warp sink split walks page 0 only, and the
  // other splits stop before the last page (launchDecode refuses such a plan).
  for (int numSplits : {2, 7, 33})
    for (int pages : {2, 3, 1024}) {
      const std::vector<int> counts =
          walkCounts(true, kvarn::DecodePlan{numSplits, true}, 1, pages);
      EXPECT_EQ(counts[size_t(pages) - 1], 0) << numSplits << " splits, " << pages << " pages";
      EXPECT_EQ(counts[0], 1);
    }
  // With two warps the same plans walk every page.
  int missing = -1;
  EXPECT_TRUE(walksEveryPageOnce(walkCounts(true, kvarn::DecodePlan{33, true}, 2, 1024), &missing))
      << "page " << missing;
}

TEST(DecodeWalk, InterleavedWalkStartsWhereItsFirstWindowOpensBeforeTheLengthIsKnown) {
  // The interleaved kernels load their first lookup window from the start the walk has before
  // the sequence length arrives; the walk after it keeps that start (only the sink split's warp
  // 1 moves to the last page and reopens its window there).
  for (int warps : {2, 4, 12})
    for (int numSplits : {1, 5, 33})
      for (bool sink : {false, true})
        for (int pages : {1, 2, 40, 1024})
          for (int split = 0; split < numSplits; ++split)
            for (int warp = 0; warp < warps; ++warp) {
              const kvarn::DecodePlan plan{numSplits, sink};
              dev::DecodeWalk walk;
              walk.startInterleaved(split, warp, numSplits, plan.walkSplits(), warps);
              const dev::DecodeWalk start = walk;
              EXPECT_EQ(start.windowFirst, start.begin + warp);
              walk.endInterleaved(split, warp, numSplits, plan.walkSplits(), pages);
              const bool lastPageWarp = plan.walkSplits() < numSplits &&
                                        split == numSplits - 1 && warp == 1 && pages >= 2;
              if (lastPageWarp) {
                EXPECT_EQ(walk.begin + warp, pages - 1);
                EXPECT_EQ(walk.windowFirst, pages) << "past the page: the first lookup reopens it";
              } else {
                EXPECT_EQ(walk.begin, start.begin);
                EXPECT_EQ(walk.windowFirst, start.windowFirst);
              }
            }
}

TEST(SplitDivisor, MatchesDivisionForEveryDivisorUpToTwoThousandAndAnyNumerator) {
  // The interleaved decode kernels' lookup window: a page distance over the walking splits
  // through a multiply-high.
  std::mt19937 random(kvarn::testing::testSeed(20261130));
  for (uint32_t d = 1; d <= 2048; ++d) {
    const kvarn::UnsignedDivisor divisor = kvarn::unsignedDivisor(d);
    std::vector<uint32_t> numerators = {0u, 1u, d - 1, d, d + 1, 2 * d - 1, 0x7fffffffu,
                                        0x80000000u, 0xfffffffeu, 0xffffffffu};
    for (uint32_t k = 1; k < 64; ++k) // around every small multiple, and random ones
      for (uint32_t delta : {0u, 1u, d - 1})
        numerators.push_back(k * d + delta);
    for (int r = 0; r < 200; ++r)
      numerators.push_back(uint32_t(random()));
    for (uint32_t n : numerators)
      ASSERT_EQ(kvarn::divide(n, divisor), n / d) << n << " / " << d;
  }
  for (uint32_t d : {0x7fffffffu, 0x80000000u, 0x80000001u, 0xfffffffeu, 0xffffffffu})
    for (uint32_t n : {0u, d - 1, d, 0xffffffffu})
      EXPECT_EQ(kvarn::divide(n, kvarn::unsignedDivisor(d)), n / d) << n << " / " << d;
}

TEST(SplitDivisor, RefusesLaunchesWithoutASplit) {
  const auto fits = kvarn::splitDivisor(32);
  ASSERT_TRUE(bool(fits));
  EXPECT_EQ(kvarn::divide(31 * 1024u, *fits), 31u * 1024u / 32u);
  const auto most = kvarn::splitDivisor(65535); // the C API's largest split count
  ASSERT_TRUE(bool(most));
  EXPECT_EQ(kvarn::divide(0x7fffffffu, *most), 0x7fffffffu / 65535u);
  for (int splits : {0, -1}) {
    const auto none = kvarn::splitDivisor(splits);
    ASSERT_FALSE(bool(none)) << splits;
    EXPECT_EQ(none.error().code, kvarn::ErrorCode::InvalidArgument);
    EXPECT_NE(none.error().message.find(std::to_string(splits) + " splits"), std::string::npos)
        << none.error().message;
  }
}

TEST(DecodeWorkspace, PartialsThenLsesSizedByTheSplitPlan) {
  // B = 3, Hk = 2, 4 query heads per kv head, D = 128, 5 splits: 120 partial rows.
  EXPECT_EQ(decodeWorkspaceBytes(3, 2, 4, 128, 5), size_t(120) * 129 * 4);
  EXPECT_EQ(decodeWorkspaceBytes(0, 2, 4, 128, 5), 0u);
  dev::DecodeParams params{};
  params.batch = 3;
  params.numKvHeads = 2;
  std::vector<float> workspace(decodeWorkspaceBytes(3, 2, 4, 128, 5) / 4);
  bindDecodeWorkspace(params, workspace.data(), 4, 128, 5);
  EXPECT_EQ(params.partialOut, workspace.data());
  EXPECT_EQ(params.partialLse, workspace.data() + 120 * 128);
  EXPECT_EQ(params.partialLse + 120, workspace.data() + workspace.size()); // nothing left over
  bindDecodeWorkspace(params, nullptr, 4, 128, 5);
  EXPECT_EQ(params.partialOut, nullptr);
  EXPECT_EQ(params.partialLse, nullptr);
}

} // namespace
