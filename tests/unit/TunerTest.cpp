// Tuner logic without a GPU: search space, pruning, selection with a fake measure.
#include "kvarn/Autotune/Tuner.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>

using namespace kvarn;
using namespace kvarn::autotune;

namespace {

TEST(SearchSpace, EnumeratesEveryKnobCombinationOverTheDefaults) {
  std::vector<Schedule> decode = scheduleSearchSpace(OpKind::Decode);
  // mma {m16n8k16, .single-p} x warps {1,2,4,8} x stages {1,2,3} x min_ctas {0,3,4,6}
  EXPECT_EQ(decode.size(), 96u);
  std::map<std::string, int> perMma;
  for (const Schedule &s : decode) {
    EXPECT_EQ(s.splits, 0) << "decode splits stay planned";
    ASSERT_NE(findMma(s.mma), nullptr) << s.mma;
    EXPECT_GT(findMma(s.mma)->queryTerms, 0) << "decode always uses tensor cores";
    ++perMma[s.mma];
  }
  EXPECT_EQ(perMma.size(), 2u);
  for (const auto &[mma, count] : perMma)
    EXPECT_EQ(count, 48) << mma;
  EXPECT_EQ(scheduleSearchSpace(OpKind::Append).size(), 12u); // warps {2,4,8} x rows {1,2,4,8}
  EXPECT_EQ(scheduleSearchSpace(OpKind::Flush).size(), 3u);
}

TEST(SelectSchedule, PicksTheFastestValidCandidateAndRecordsWhyOthersLost) {
  KernelSpec spec = *parseKernelSpec("decode:kvarn_k4v2_g128:d256:q16:f16:sm_89");
  std::vector<Schedule> space = scheduleSearchSpace(OpKind::Decode);
  int measured = 0;
  TuneResult result = selectSchedule(spec, space, [&](const Schedule &s) -> Expected<double> {
    ++measured;
    if (s.warps == 2 && s.stages == 1 && s.mma == "m16n8k16")
      return makeError(ErrorCode::InvalidData, "wrong results: relative error 0.5");
    return 1.0 + 0.1 * s.warps + 0.01 * s.stages; // fake timer
  });
  ASSERT_TRUE(result.found);
  EXPECT_EQ(result.best.warps, 1);
  EXPECT_EQ(result.best.stages, 1);
  EXPECT_DOUBLE_EQ(result.bestMs, 1.11);
  ASSERT_EQ(result.candidates.size(), space.size());
  int pruned = 0, wrong = 0;
  for (const Candidate &c : result.candidates) {
    pruned += c.rejected.rfind("pruned:", 0) == 0;
    wrong += c.rejected.find("wrong results") != std::string::npos;
  }
  EXPECT_GT(pruned, 0) << "sm_89 cannot hold the larger schedules of a D=256, Q=16 decode";
  EXPECT_EQ(wrong, 1);
  EXPECT_EQ(measured + pruned, int(space.size())) << "pruned candidates are never measured";
}

TEST(SelectSchedule, TiesGoToFewerWarpsAndAllFailuresFindNothing) {
  KernelSpec spec = *parseKernelSpec("flush:kvarn_k4v2_g128:d128:q1:f16:sm_90a");
  TuneResult tie = selectSchedule(spec, scheduleSearchSpace(OpKind::Flush),
                                  [](const Schedule &) -> Expected<double> { return 2.0; });
  ASSERT_TRUE(tie.found);
  EXPECT_EQ(tie.best.warps, 4);
  TuneResult none = selectSchedule(spec, scheduleSearchSpace(OpKind::Flush),
                                   [](const Schedule &) -> Expected<double> {
                                     return makeError(ErrorCode::Internal, "crashed in the check");
                                   });
  EXPECT_FALSE(none.found);
  for (const Candidate &c : none.candidates)
    EXPECT_EQ(c.rejected, "crashed in the check");
}

TEST(EnvironmentKey, NamesTheSiliconNotTheProduct) {
  EXPECT_EQ(environmentKey(9, 0, 132, 60 << 20, 3201000), "sm90-132sm-60mb-l2-3201mhz");
}

} // namespace
