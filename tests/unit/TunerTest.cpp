// Tuner logic without a GPU: search space, pruning, selection with a fake measure.
#include "kvarn/Autotune/Tuner.h"
#include "kvarn/Autotune/Bench.h"
#include "kvarn/Autotune/MultiDevice.h"
#include "kvarn/Autotune/Timeline.h"
#include "kvarn/Autotune/TimingInputs.h"
#include "kvarn/configs.h"
#include "kvarn/reference.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

using namespace kvarn;
using namespace kvarn::autotune;
using ::testing::HasSubstr;

namespace {

TEST(SearchSpace, EnumeratesEveryKnobCombinationOverTheDefaults) {
  std::vector<Schedule> decode = scheduleSearchSpace(OpKind::Decode);
  // mma {m16n8k16, .single-p} x warps {1,2,4,6,8,12} x stages {1,2} x min_ctas {0,1,2,3,4,6}
  EXPECT_EQ(decode.size(), 144u);
  std::map<std::string, int> perMma;
  for (const Schedule &s : decode) {
    EXPECT_EQ(s.splits, 0) << "decode splits stay planned";
    ASSERT_NE(findMma(s.mma), nullptr) << s.mma;
    EXPECT_GT(findMma(s.mma)->queryTerms, 0) << "decode always uses tensor cores";
    ++perMma[s.mma];
  }
  EXPECT_EQ(perMma.size(), 2u);
  for (const auto &[mma, count] : perMma)
    EXPECT_EQ(count, 72) << mma;
  // warps {2,4,8,16} x rows_per_cta {2,4,8,16,32}, rows a multiple of warps (a warp per token,
  // so none idles): 5 + 4 + 3 + 2.
  const std::vector<Schedule> appendSpace = scheduleSearchSpace(OpKind::Append);
  EXPECT_EQ(appendSpace.size(), 14u);
  for (const Schedule &s : appendSpace)
    EXPECT_EQ(s.rowsPerCta % s.warps, 0) << s.str();
  // warps {4,8,16} x stages {1,2} x min_ctas {0,1,2,4}; at D = 128 on sm_90a the bounds that
  // leave 255 registers (4 warps x 2) or fewer than 128 (8 x 4, 16 x 2 and 4) are pruned, 8 per
  // stage count are measured.
  const std::vector<Schedule> flushSpace = scheduleSearchSpace(OpKind::Flush);
  EXPECT_EQ(flushSpace.size(), 24u);
  const KernelSpec flush = *parseKernelSpec("flush:kvarn_k4v2_g128:d128:q1:f16:sm_90a");
  std::vector<std::string> kept;
  for (const Schedule &s : flushSpace)
    if (staticPruneReason(flush, s).empty() && s.stages == 1)
      kept.push_back(std::to_string(s.warps) + "x" + std::to_string(s.minCtas));
  EXPECT_THAT(kept,
              ::testing::ElementsAre("4x0", "4x1", "4x4", "8x0", "8x1", "8x2", "16x0", "16x1"));
  int twoStages = 0;
  for (const Schedule &s : flushSpace)
    twoStages += staticPruneReason(flush, s).empty() && s.stages == 2;
  EXPECT_EQ(twoStages, 8);
}

TEST(SearchSpace, EveryShippedScheduleIsACandidateTheTunerWouldMeasure) {
  // The shipped configs come from tuning runs; a hand edit, or a search space or pruning rule
  // changed after a run, must not leave a schedule the tuner would never measure.
  std::vector<std::string> warnings;
  const std::vector<ConfigFile> configs = loadConfigDirectory(KVARN_SHIPPED_CONFIGS_DIR, &warnings);
  EXPECT_THAT(warnings, ::testing::IsEmpty());
  ASSERT_FALSE(configs.empty()) << "no configs in " << KVARN_SHIPPED_CONFIGS_DIR;
  int checked = 0;
  auto check = [&](const KernelSpec &spec, const Schedule &schedule) {
    const std::vector<Schedule> space = scheduleSearchSpace(spec.op);
    EXPECT_NE(std::find(space.begin(), space.end(), schedule), space.end())
        << spec.str() << ": " << schedule.str() << " is outside the search space";
    EXPECT_EQ(staticPruneReason(spec, schedule), "") << spec.str() << ": " << schedule.str();
    ++checked;
  };
  for (const ConfigFile &file : configs)
    for (const TunedEntry &entry : file.entries) {
      check(entry.spec, entry.schedule);
      for (const ScheduleVariant &variant : entry.variants)
        check(entry.spec, variant.schedule);
    }
  EXPECT_GT(checked, 69) << "every entry and variant of the H200 configs";
}

TEST(SelectSchedule, PicksTheFastestValidCandidateAndRecordsWhyOthersLost) {
  KernelSpec spec = *parseKernelSpec("decode:kvarn_k4v2_g128:d256:q16:f16:sm_89");
  std::vector<Schedule> space = scheduleSearchSpace(OpKind::Decode);
  int measured = 0;
  TuneResult result = selectSchedule(spec, space, [&](const Schedule &s) -> Expected<double> {
    ++measured;
    if (s.warps == 2 && s.stages == 1 && s.mma == "m16n8k16" && s.minCtas == 0)
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
  int crashed = 0;
  for (const Candidate &c : none.candidates) {
    if (c.rejected == "crashed in the check")
      ++crashed;
    else
      EXPECT_THAT(c.rejected, ::testing::StartsWith("pruned: min_ctas")) << c.schedule.str();
  }
  EXPECT_EQ(crashed, 16) << "every candidate that survives pruning was measured and failed";
}

/// A fake group measure: time = 1 + 0.1 * warps + 0.01 * stages (+ 0.001 for single-p).
std::vector<Expected<Timing>> fakeGroup(const std::vector<Schedule> &group, int *calls = nullptr) {
  if (calls)
    ++*calls;
  std::vector<Expected<Timing>> out;
  for (const Schedule &s : group) {
    Timing t;
    t.medianMs = 1.0 + 0.1 * s.warps + 0.01 * s.stages + (s.mma == "m16n8k16" ? 0.0 : 0.001);
    t.p10Ms = t.medianMs * 0.99;
    t.p90Ms = t.medianMs * 1.02;
    t.samples = 10;
    out.push_back(t);
  }
  return out;
}

TEST(StaticPrune, RegisterBudgetFollowsTheMostLoadedSchedulerPartition) {
  EXPECT_EQ(registerBudget(1), 255);
  EXPECT_EQ(registerBudget(8), 255);  // two warps per partition
  EXPECT_EQ(registerBudget(10), 168); // 5 warps x 2 CTAs: one partition holds three
  EXPECT_EQ(registerBudget(12), 168);
  EXPECT_EQ(registerBudget(16), 128);
  EXPECT_EQ(registerBudget(24), 80);
  EXPECT_EQ(registerBudget(64), 32);
}

TEST(StaticPrune, TheFirstLookupWindowOpensEarlyOnlyWithTheFullRegisterBudget) {
  Schedule s = defaultSchedule(OpKind::Decode); // 4 warps: 255 registers
  EXPECT_TRUE(earlyLookupWindow(s));
  s.minCtas = 1;
  EXPECT_TRUE(earlyLookupWindow(s));
  s.minCtas = 2; // 8 warps per SM still leave 255
  EXPECT_TRUE(earlyLookupWindow(s));
  s.warps = 6; // 12 warps per SM: 168
  EXPECT_FALSE(earlyLookupWindow(s));
  s.minCtas = 0;
  s.warps = 12; // one CTA of 12 warps: 168
  EXPECT_FALSE(earlyLookupWindow(s));
  s.warps = 8;
  EXPECT_TRUE(earlyLookupWindow(s));
}

TEST(StaticPrune, MinCtasMustBindFitAndLeaveRegisters) {
  KernelSpec spec = *parseKernelSpec("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a");
  Schedule s = defaultSchedule(OpKind::Decode);
  EXPECT_EQ(staticPruneReason(spec, s), "");
  s.minCtas = 3; // 4 warps: 170 registers, 3 x 64 KB shared memory fits in 228 KB
  EXPECT_EQ(staticPruneReason(spec, s), "");
  s.warps = 2;
  EXPECT_THAT(staticPruneReason(spec, s), HasSubstr("does not bind"));
  s.warps = 6; // 12 warps per SM in CTA slots of 6 warps: 168 registers
  s.minCtas = 2;
  EXPECT_EQ(staticPruneReason(spec, s), "");
  s.warps = 4; // 8 warps per SM: 255 registers, the cap of min_ctas = 1
  EXPECT_THAT(staticPruneReason(spec, s), HasSubstr("does not bind"));
  s.minCtas = 1; // never binds, yet lets ptxas allocate up to its cap: a candidate
  EXPECT_EQ(staticPruneReason(spec, s), "");
  EXPECT_EQ(scheduleRegisterBudget(s), 255);
  s.warps = 12; // one CTA of 12 warps: the launch bounds alone leave 168
  EXPECT_EQ(staticPruneReason(spec, s), "");
  EXPECT_EQ(scheduleRegisterBudget(s), 168);
  s.minCtas = 0;
  EXPECT_EQ(scheduleRegisterBudget(s), 168);
  s.warps = 6;
  s.minCtas = 2;
  EXPECT_EQ(scheduleRegisterBudget(s), 168);
  s.minCtas = 3;
  s.warps = 8;
  EXPECT_THAT(staticPruneReason(spec, s), HasSubstr("fewer than 128"));
  s.warps = 4;
  s.stages = 2;
  EXPECT_THAT(staticPruneReason(spec, s), HasSubstr("bytes of shared memory; an SM of sm_90a"));
  s.minCtas = 0;
  s.warps = 8;
  s.stages = 3;
  EXPECT_THAT(staticPruneReason(spec, s), HasSubstr("schedule: needs"));
}

TEST(SelectSchedule, GroupsStopEarlyAtTheRooflineAndRecordWhy) {
  KernelSpec spec = *parseKernelSpec("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a");
  std::vector<Schedule> space = scheduleSearchSpace(OpKind::Decode);
  SelectOptions options;
  options.group = 4;
  options.rooflineMs = 1.0;
  options.earlyStop = 0.8; // the first group (most promising by the static model) reaches it
  int calls = 0;
  size_t progressDone = 0;
  options.progress = [&](size_t done, size_t total) { progressDone = done; };
  TuneResult early = selectSchedule(
      spec, space, [&](const std::vector<Schedule> &g) { return fakeGroup(g, &calls); }, options);
  ASSERT_TRUE(early.found);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(progressDone, 4u);
  EXPECT_THAT(early.stopped, HasSubstr("early stop: the best is at "));
  EXPECT_THAT(early.stopped, HasSubstr("% of the roofline (target 80%)"));
  int notMeasured = 0;
  for (const Candidate &c : early.candidates)
    notMeasured += c.rejected.rfind("not measured: early stop", 0) == 0;
  EXPECT_GT(notMeasured, 0);
  // Exhaustive: everything measured, the early choice kept for the regret.
  options.exhaustive = true;
  calls = 0;
  TuneResult all = selectSchedule(
      spec, space, [&](const std::vector<Schedule> &g) { return fakeGroup(g, &calls); }, options);
  EXPECT_GT(calls, 1);
  EXPECT_EQ(all.stopped, "");
  EXPECT_TRUE(all.earlyFound);
  EXPECT_EQ(all.earlyBest, early.best);
  EXPECT_LE(all.bestMs, all.earlyMs);
  for (const Candidate &c : all.candidates)
    EXPECT_EQ(c.rejected.find("not measured"), std::string::npos) << c.rejected;
}

TEST(SelectSchedule, ABudgetStopsBetweenGroups) {
  KernelSpec spec = *parseKernelSpec("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a");
  SelectOptions options;
  options.group = 2;
  int groups = 0;
  options.outOfBudget = [&] { return groups >= 2; };
  TuneResult result = selectSchedule(
      spec, scheduleSearchSpace(OpKind::Decode),
      [&](const std::vector<Schedule> &g) {
        ++groups;
        return fakeGroup(g);
      },
      options);
  EXPECT_EQ(groups, 2);
  EXPECT_TRUE(result.found);
  EXPECT_EQ(result.stopped, "time budget spent");
  int measured = 0;
  for (const Candidate &c : result.candidates)
    measured += c.rejected.empty();
  EXPECT_EQ(measured, 4);
}

TEST(Regret, MedianAndP90OverResults) {
  std::vector<TuneResult> results(10);
  for (int i = 0; i < 10; ++i) {
    results[i].found = results[i].earlyFound = true;
    results[i].bestMs = 1.0;
    results[i].earlyMs = 1.0 + 0.01 * i; // regrets 0%, 1%, ..., 9%
  }
  Regret regret = regretOf(results);
  EXPECT_EQ(regret.samples, 10);
  EXPECT_NEAR(regret.median, 0.05, 1e-12);
  EXPECT_NEAR(regret.p90, 0.08, 1e-12);
  EXPECT_EQ(regretOf({}).samples, 0);
}

TEST(TuneReport, RoundTripsAndResumesWhatIsMissing) {
  KernelSpec q8 = *parseKernelSpec("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a");
  KernelSpec flush = *parseKernelSpec("flush:kvarn_k4v2_g128:d128:q1:f16:sm_90a");
  SelectOptions options;
  options.rooflineMs = 0.5;
  TuneResult result = selectSchedule(q8, scheduleSearchSpace(OpKind::Decode),
                                     [](const std::vector<Schedule> &g) { return fakeGroup(g); },
                                     options);
  const std::string json = resultsToJson({result}, "sm90-132sm-60mb-l2-3201mhz");
  Expected<std::vector<TuneResult>> back = resultsFromJson(json);
  ASSERT_TRUE(back) << back.error().str();
  ASSERT_EQ(back->size(), 1u);
  const TuneResult &r = (*back)[0];
  EXPECT_EQ(r.spec, q8);
  EXPECT_EQ(r.best, result.best);
  EXPECT_DOUBLE_EQ(r.bestMs, result.bestMs);
  EXPECT_DOUBLE_EQ(r.rooflineMs, 0.5);
  ASSERT_EQ(r.candidates.size(), result.candidates.size());
  for (size_t i = 0; i < r.candidates.size(); ++i) {
    EXPECT_EQ(r.candidates[i].schedule, result.candidates[i].schedule);
    EXPECT_EQ(r.candidates[i].rejected, result.candidates[i].rejected);
    EXPECT_DOUBLE_EQ(r.candidates[i].timing.p90Ms, result.candidates[i].timing.p90Ms);
  }
  // Resume: only the spec not in the report is tuned again.
  std::vector<KernelSpec> todo = specsToTune({q8, flush}, *back);
  ASSERT_EQ(todo.size(), 1u);
  EXPECT_EQ(todo[0], flush);
  // ... and only on the cache layout the report's decode results were timed on.
  TuneOptions tuneOptions;
  EXPECT_TRUE(resumableWith(*back, tuneOptions)) << "both: every page a record";
  tuneOptions.poolPages.sink = tuneOptions.poolPages.tail = true;
  Status mixed = resumableWith(*back, tuneOptions);
  ASSERT_FALSE(mixed);
  EXPECT_THAT(mixed.error().message,
              HasSubstr("was timed with every page a record, this run times pool pages sink,tail"));
  TuneResult engine = result;
  engine.poolPages = tuneOptions.poolPages.key();
  Expected<std::vector<TuneResult>> engineBack = resultsFromJson(resultsToJson({engine}, "k"));
  ASSERT_TRUE(engineBack) << engineBack.error().str();
  EXPECT_EQ((*engineBack)[0].poolPages, "sink,tail") << "recorded in the report";
  EXPECT_TRUE(resumableWith(*engineBack, tuneOptions));
  EXPECT_FALSE(resumableWith(*engineBack, TuneOptions{}));
  EXPECT_THAT(resultsFromJson("{}").error().message, HasSubstr("no 'results' array"));
  EXPECT_THAT(resultsFromJson(R"({"results": [{"spec": "decode:x"}]})").error().message,
              HasSubstr("tuning report"));
  // Configs entries carry the selected schedule and its fraction of the roofline.
  nlohmann::json entries = nlohmann::json::parse(configEntriesJson({result}));
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0]["schedule"], result.best.str());
  EXPECT_NEAR(entries[0]["fraction_of_roofline"].get<double>(), 0.5 / result.bestMs, 1e-12);
}

TEST(BenchOptions, ScheduleNamesTheDecodeTableElseAppendElseFlush) {
  autotune::BenchOptions o;
  EXPECT_EQ(o.scheduleOp(), OpKind::Decode); // everything runs
  o.decode = false;
  EXPECT_EQ(o.scheduleOp(), OpKind::Append); // --only flush append
  o.append = false;
  EXPECT_EQ(o.scheduleOp(), OpKind::Flush); // --only flush
  o.flush = false;
  EXPECT_EQ(o.scheduleOp(), OpKind::Append); // --only lookup: checked as append knobs
}

TEST(PoolPages, NameTheBlocksAndCountTheirTokens) {
  PoolPages none, sink{true, false}, tail{false, true}, both{true, true};
  EXPECT_FALSE(none.any());
  EXPECT_EQ(none.tokens(4096, 128), 0);
  EXPECT_TRUE(none.blocks(32).empty());
  EXPECT_EQ(sink.blocks(32), std::vector<int>{0});
  EXPECT_EQ(tail.blocks(32), std::vector<int>{31});
  EXPECT_EQ(both.blocks(32), (std::vector<int>{0, 31}));
  EXPECT_EQ(tail.blocks(1), std::vector<int>{0}) << "a one-block request's block is its tail";
  EXPECT_EQ(both.blocks(1), std::vector<int>{0}) << "and counts once";
  EXPECT_TRUE(both.blocks(0).empty());
  EXPECT_EQ(sink.tokens(4096, 128), 128);
  EXPECT_EQ(tail.tokens(4096 + 5, 128), 5) << "a partial tail";
  EXPECT_EQ(both.tokens(4096, 128), 256);
  EXPECT_EQ(both.tokens(100, 128), 100) << "one block counts once";
  EXPECT_EQ(both.tokens(0, 128), 0);
  EXPECT_EQ(both.key(), "sink,tail");
  EXPECT_EQ(tail.key(), "tail");
  EXPECT_EQ(none.key(), "");
  EXPECT_EQ(both.describe(), "block 0 (the sink) and the last block (the tail)");
  // Bytes a decode reads per (request, kv head): 108 B per record token (k4v2_g128, D = 128),
  // 512 B per pool token (fp16 K and V).
  EXPECT_DOUBLE_EQ(none.decodeReadBytes(4096, 128, 108.0, 128), 4096 * 108.0);
  EXPECT_DOUBLE_EQ(both.decodeReadBytes(4096, 128, 108.0, 128), 3840 * 108.0 + 256 * 512.0);
  EXPECT_DOUBLE_EQ(tail.decodeReadBytes(4096 + 5, 128, 108.0, 128), 4096 * 108.0 + 5 * 512.0);
}

TEST(BenchReport, JsonAndASelfContainedSvgChart) {
  BenchReport report;
  report.gpu = "Test GPU <1>";
  report.spec = "decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a";
  report.schedule = "warps=4";
  report.baselineSchedule = "warps=8,min_ctas=0";
  report.bandwidthGBs = 4000;
  for (int batch : {1, 32})
    for (int context : {4096, 32768, 131072})
      report.rows.push_back({batch, context, 4, 0.1, 1000.0 * batch / 32 + 500, 0.2, 3000});
  nlohmann::json json = nlohmann::json::parse(benchReportJson(report));
  ASSERT_EQ(json["rows"].size(), 6u);
  EXPECT_DOUBLE_EQ(json["rows"][0]["speedup"].get<double>(), 2.0);
  EXPECT_DOUBLE_EQ(json["rows"][0]["fp16_fraction_of_bandwidth"].get<double>(), 0.75);
  EXPECT_EQ(json["schedule"], "warps=4");
  EXPECT_EQ(json["baseline_schedule"], "warps=8,min_ctas=0") << "the baseline's own schedule";
  const std::string html = benchReportHtml(report);
  EXPECT_THAT(html, HasSubstr("fp16 (schedule <code>warps=8,min_ctas=0</code>)"));
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_FALSE(json["sink_in_pool"].get<bool>());
  EXPECT_THAT(html, ::testing::Not(HasSubstr("the sink")));
  report.poolPages.sink = true; // the cache the table ran on is named in both reports
  EXPECT_TRUE(nlohmann::json::parse(benchReportJson(report))["sink_in_pool"].get<bool>());
  EXPECT_FALSE(nlohmann::json::parse(benchReportJson(report))["tail_in_pool"].get<bool>());
  EXPECT_THAT(benchReportHtml(report),
              HasSubstr("KVarN pool pages (fp16): block 0 (the sink) of every request"));
  report.poolPages.tail = true;
  EXPECT_THAT(benchReportHtml(report), HasSubstr("block 0 (the sink) and the last block (the "
                                                 "tail) of every request"));
  report.poolPages.sink = false;
  EXPECT_THAT(benchReportHtml(report), HasSubstr("(fp16): the last block (the tail) of every"));
  EXPECT_THAT(html, HasSubstr("<svg"));
  EXPECT_THAT(html, HasSubstr("Test GPU &lt;1&gt;"));
  EXPECT_THAT(html, HasSubstr("roofline 4000 GB/s"));
  EXPECT_THAT(html, ::testing::Not(HasSubstr("<script"))) << "self-contained, no scripts";
  auto count = [&](const std::string &what) {
    size_t n = 0;
    for (size_t at = html.find(what); at != std::string::npos; at = html.find(what, at + 1))
      ++n;
    return n;
  };
  EXPECT_EQ(count("class=\"kvarn\""), 2u) << "one KVarN line per batch";
  EXPECT_EQ(count("class=\"fp16\""), 2u) << "one fp16 line per batch";
  EXPECT_EQ(count("<tr><td>"), 6u);
}

TEST(MultiDevice, IdenticalChoicesAgreeAndDisagreementsResolveByWorstCase) {
  KernelSpec spec = *parseKernelSpec("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a");
  const std::vector<Schedule> space = scheduleSearchSpace(OpKind::Decode);
  auto device = [&](int ordinal, double jitterWarps2, double jitterWarps4) {
    TuneResult r = selectSchedule(spec, space, [&](const std::vector<Schedule> &g) {
      std::vector<Expected<Timing>> out = fakeGroup(g);
      for (size_t i = 0; i < g.size(); ++i) {
        if (g[i].warps == 2)
          out[i]->medianMs += jitterWarps2;
        if (g[i].warps == 4)
          out[i]->medianMs += jitterWarps4;
        out[i]->medianMs -= 0.1 * g[i].warps; // make the warps tie apart from the jitter
      }
      return out;
    }, SelectOptions{});
    return DeviceResults{ordinal, "sm90-132sm-60mb-l2-3201mhz", {r}};
  };
  // Two GPUs with the same numbers agree.
  std::vector<MergedChoice> same = mergeDeviceResults({device(0, 0.0, 0.05), device(1, 0.0, 0.05)});
  ASSERT_EQ(same.size(), 1u);
  EXPECT_FALSE(same[0].disagreed);
  EXPECT_THAT(same[0].explanation, HasSubstr("2 GPU(s) agree"));
  // GPU 0 prefers warps=2 by a hair, GPU 1 prefers warps=4 by a lot: warps=4 loses little on
  // GPU 0 and wins on GPU 1 -> the merge picks the smaller worst-case slowdown, in any order.
  DeviceResults a = device(0, -0.02, 0.0), b = device(1, 0.3, -0.01);
  std::vector<MergedChoice> merged = mergeDeviceResults({a, b});
  std::vector<MergedChoice> reversed = mergeDeviceResults({b, a});
  ASSERT_EQ(merged.size(), 1u);
  EXPECT_TRUE(merged[0].disagreed);
  EXPECT_NE(a.results[0].best, b.results[0].best);
  EXPECT_EQ(merged[0].result.best, b.results[0].best);
  EXPECT_EQ(reversed[0].result.best, merged[0].result.best) << "order-independent";
  EXPECT_THAT(merged[0].explanation, HasSubstr("GPUs disagree (GPU 0: "));
  EXPECT_THAT(merged[0].explanation, HasSubstr("worst-case slowdown"));
  // Different silicon is never merged.
  DeviceResults other = device(2, 0.3, -0.01);
  other.environment = "sm90-114sm-50mb-l2-2619mhz";
  EXPECT_EQ(mergeDeviceResults({a, other}).size(), 2u);
}

TEST(MultiDevice, WorkersGetTheRunsOptions) {
  TuneOptions o;
  o.presets = {"kvarn_k4v2_g128"};
  o.queryHeadsPerKvHead = {4, 8};
  o.exhaustive = true;
  o.budgetSeconds = 60;
  std::vector<std::string> args = workerArguments(o, 3, "/tmp/r.json", "/tmp/c");
  auto after = [&](const std::string &flag) {
    auto it = std::find(args.begin(), args.end(), flag);
    return it == args.end() || it + 1 == args.end() ? std::string("<missing>") : *(it + 1);
  };
  EXPECT_EQ(args[0], "tune");
  EXPECT_EQ(after("--device"), "3");
  EXPECT_EQ(after("--report"), "/tmp/r.json");
  EXPECT_EQ(after("--configs"), "/tmp/c");
  EXPECT_EQ(after("--preset"), "kvarn_k4v2_g128");
  EXPECT_EQ(after("--q"), "4");
  EXPECT_EQ(after("--dtype"), "f16");
  EXPECT_NE(std::find(args.begin(), args.end(), "--exhaustive"), args.end());
  EXPECT_EQ(std::stod(after("--budget")), 60.0);
  EXPECT_EQ(std::find(args.begin(), args.end(), "--no-decode"), args.end());
  EXPECT_EQ(std::find(args.begin(), args.end(), "--sink"), args.end());
  EXPECT_EQ(std::find(args.begin(), args.end(), "--no-gate"), args.end()) << "gated by default";
  o.gate = false; // ungated timing reaches every worker
  args = workerArguments(o, 3, "/tmp/r.json", "/tmp/c");
  EXPECT_NE(std::find(args.begin(), args.end(), "--no-gate"), args.end());
  o.gate = true;
  EXPECT_EQ(std::stod(after("--rest")), 1.0) << "rests after each timed launch by default";
  o.restRatio = 0; // back-to-back timing reaches every worker
  args = workerArguments(o, 3, "/tmp/r.json", "/tmp/c");
  EXPECT_EQ(std::stod(after("--rest")), 0.0);
  o.restRatio = 1;
  o.dtype = DType::BF16; // bf16 decode specs reach every worker
  args = workerArguments(o, 3, "/tmp/r.json", "/tmp/c");
  EXPECT_EQ(after("--dtype"), "bf16");
  o.dtype = DType::F16;
  o.poolPages.sink = o.poolPages.tail = true; // the engine layout reaches every worker
  args = workerArguments(o, 3, "/tmp/r.json", "/tmp/c");
  EXPECT_NE(std::find(args.begin(), args.end(), "--sink"), args.end());
  EXPECT_NE(std::find(args.begin(), args.end(), "--tail"), args.end());
  o.decode = false; // a flush-only run stays flush-only in every worker
  args = workerArguments(o, 3, "/tmp/r.json", "/tmp/c");
  EXPECT_NE(std::find(args.begin(), args.end(), "--no-decode"), args.end());
  EXPECT_TRUE(validateTuneOptions(o));
  o.flush = false; // append alone is still something to tune
  EXPECT_TRUE(validateTuneOptions(o));
  o.append = false;
  args = workerArguments(o, 3, "/tmp/r.json", "/tmp/c");
  EXPECT_NE(std::find(args.begin(), args.end(), "--no-append"), args.end());
  Status nothing = validateTuneOptions(o);
  ASSERT_FALSE(nothing);
  EXPECT_NE(nothing.error().message.find("nothing to tune"), std::string::npos);
}

TEST(MultiBucket, BucketsParseValidateAndReachTheWorkers) {
  Expected<std::vector<std::pair<int, int>>> bucket = parseBuckets("32x32768");
  ASSERT_TRUE(bucket) << bucket.error().str();
  EXPECT_EQ(*bucket, (std::vector<std::pair<int, int>>{{32, 32768}}));
  for (const char *bad : {"32", "x32768", "32x", "32*32768", "-1x4096", "32x32768x2", "1e3x5"}) {
    Expected<std::vector<std::pair<int, int>>> parsed = parseBuckets(bad);
    ASSERT_FALSE(parsed) << bad;
    EXPECT_NE(parsed.error().message.find("<batch>x<context>"), std::string::npos) << bad;
  }
  // Grids: every batch at every context, batch-major.
  Expected<std::vector<std::pair<int, int>>> grid = parseBuckets("1,4x4096,131072");
  ASSERT_TRUE(grid) << grid.error().str();
  EXPECT_EQ(*grid, (std::vector<std::pair<int, int>>{{1, 4096}, {1, 131072}, {4, 4096}, {4, 131072}}));
  for (const char *bad : {"1,x4096", "1,4x", ",1x4096", "1;4x4096", "1,4x4096,,8"}) {
    Expected<std::vector<std::pair<int, int>>> parsed = parseBuckets(bad);
    ASSERT_FALSE(parsed) << bad;
    EXPECT_NE(parsed.error().message.find("grid of lists"), std::string::npos) << bad;
  }
  TuneOptions o;
  o.alsoBuckets = {{1, 131072}, {32, 32768}, {o.batch, o.context}, {1, 131072}};
  const std::vector<std::pair<int, int>> all = decodeBuckets(o);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0], std::make_pair(o.batch, o.context)); // the configs' bucket comes first
  EXPECT_EQ(all[2], std::make_pair(32, 32768)) << "repeated buckets are timed once";
  EXPECT_TRUE(validateTuneOptions(o));
  o.alsoBuckets.push_back({0, 4096});
  Status zero = validateTuneOptions(o);
  ASSERT_FALSE(zero);
  EXPECT_NE(zero.error().message.find("0x4096 is out of range"), std::string::npos);
  o.alsoBuckets.pop_back();
  std::vector<std::string> args = workerArguments(o, 0, "", "/tmp/c");
  auto at = std::find(args.begin(), args.end(), "--also-at");
  ASSERT_NE(at, args.end());
  ASSERT_GE(args.end() - at, 3);
  EXPECT_EQ(*(at + 1), "1x131072");
  EXPECT_EQ(*(at + 2), "32x32768");
  const std::vector<std::string> plain = workerArguments(TuneOptions{}, 0, "", "/tmp/c");
  EXPECT_EQ(std::find(plain.begin(), plain.end(), "--also-at"), plain.end());
}

TEST(MultiBucket, ScoresAreGeometricMeansSoNoShapeDominates) {
  Timing small{0.05, 0.04, 0.06, 0.0, 10}, large{2.0, 1.9, 2.2, 1.8, 10};
  Timing combined = combineBucketTimings({small, large});
  EXPECT_NEAR(combined.medianMs, std::sqrt(0.05 * 2.0), 1e-12);
  EXPECT_NEAR(combined.p10Ms, std::sqrt(0.04 * 1.9), 1e-12);
  EXPECT_NEAR(combined.p90Ms, std::sqrt(0.06 * 2.2), 1e-12);
  EXPECT_EQ(combined.graphMs, 0.0); // one bucket has no graph time
  EXPECT_EQ(combined.samples, 20);
  // A schedule 10% faster at the small shape and 5% slower at the large one wins on the mean,
  // which a sum of times (dominated by the large shape) would rank the other way.
  Timing a = combineBucketTimings({small, large});
  Timing b = combineBucketTimings({Timing{0.045, 0.04, 0.05, 0.0, 10}, Timing{2.1, 2.0, 2.2, 0.0, 10}});
  EXPECT_LT(b.medianMs, a.medianMs);
  EXPECT_GT(0.045 + 2.1, 0.05 + 2.0);
  EXPECT_EQ(combineBucketTimings({large}).medianMs, large.medianMs);
}

/// A decode result over buckets of 8, 128, 256 and 512 work items, with per-bucket medians.
TuneResult bucketedResult(const std::vector<std::pair<std::string, std::vector<double>>> &timed) {
  TuneResult result;
  result.spec = *parseKernelSpec("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a");
  for (const auto &[knobs, ms] : timed) {
    Candidate c;
    c.schedule = *parseSchedule(knobs, OpKind::Decode);
    std::vector<Timing> perBucket;
    for (double m : ms)
      perBucket.push_back(Timing{m, m, m, 0.0, 10});
    c.timing = combineBucketTimings(perBucket);
    c.ms = c.timing.medianMs;
    result.candidates.push_back(c);
  }
  // The geometric-mean winner, as selectSchedule picks it.
  const Candidate *best = &result.candidates[0];
  for (const Candidate &c : result.candidates)
    if (c.ms < best->ms)
      best = &c;
  result.found = true;
  result.best = best->schedule;
  result.bestMs = best->ms;
  return result;
}

TEST(DecodeVariants, LargerLaunchesGetTheirFastestScheduleWhenItGainsEnough) {
  const std::vector<int64_t> work = {256, 8, 128, 512}; // bucket order of a run: 32x, 1x, 16x, 64x
  TuneResult result = bucketedResult({
      {"warps=4", {0.300, 0.055, 0.096, 0.310}},
      {"warps=12", {0.293, 0.065, 0.086, 0.313}},
      {"warps=6,min_ctas=2", {0.292, 0.061, 0.096, 0.297}},
  });
  ASSERT_EQ(result.best.warps, 4) << "the geometric mean over all buckets";
  const DecodeSchedules byWork = decodeSchedulesByWork(result, work);
  EXPECT_EQ(byWork.base, result.best) << "warps=4 is also the fastest at the smallest launches";
  EXPECT_DOUBLE_EQ(byWork.baseMs, result.bestMs);
  const std::vector<ScheduleVariant> &variants = byWork.variants;
  // 128: warps=12 is 10% faster; 256: warps=6 is under 2% faster than warps=12 (kept); 512:
  // warps=6 is 5% faster than warps=12.
  ASSERT_EQ(variants.size(), 2u);
  EXPECT_EQ(variants[0].minWorkItems, 128);
  EXPECT_EQ(variants[0].schedule.warps, 12);
  EXPECT_DOUBLE_EQ(variants[0].medianMs, 0.086);
  EXPECT_EQ(variants[1].minWorkItems, 512);
  EXPECT_EQ(variants[1].schedule.warps, 6);
  // With a 20% bar no variant qualifies; one bucket or no per-bucket medians give none.
  EXPECT_TRUE(decodeSchedulesByWork(result, work, 0.2).variants.empty());
  EXPECT_TRUE(decodeSchedulesByWork(result, {256}).variants.empty());
  TuneResult single = result;
  for (Candidate &c : single.candidates)
    c.timing.bucketMs.clear();
  EXPECT_TRUE(decodeSchedulesByWork(single, work).variants.empty());
}

TEST(DecodeVariants, EqualWorkBucketsDecideTogetherAndTheSmallestCanReplaceTheBase) {
  // Two buckets of 256 work items (32 x 32K and 32 x 128K, say): warps=6 wins one by 10% and
  // loses the other by 1%, so on their geometric mean it is about 4.5% faster. The smallest
  // group (8) is faster with warps=8 than with the overall best, warps=4: warps=8 becomes the
  // base (no bar: the smallest launches have no incumbent), and the variant is measured
  // against it.
  TuneResult result = bucketedResult({
      {"warps=4", {0.050, 0.300, 1.00}},
      {"warps=6,min_ctas=2", {0.070, 0.270, 1.01}},
      {"warps=8", {0.0495, 0.400, 1.30}},
  });
  ASSERT_EQ(result.best.warps, 4);
  const DecodeSchedules byWork = decodeSchedulesByWork(result, {8, 256, 256});
  EXPECT_EQ(byWork.base.warps, 8);
  EXPECT_NEAR(byWork.baseMs, std::cbrt(0.0495 * 0.400 * 1.30), 1e-12);
  const std::vector<ScheduleVariant> &variants = byWork.variants;
  ASSERT_EQ(variants.size(), 1u);
  EXPECT_EQ(variants[0].minWorkItems, 256);
  EXPECT_EQ(variants[0].schedule.warps, 6);
  EXPECT_NEAR(variants[0].medianMs, std::sqrt(0.270 * 1.01), 1e-12);
}

TEST(DecodeVariants, WithOccupancyTheChoiceFollowsTheRuntimesWaveRule) {
  // warps=12 holds 132 CTAs on the GPU, warps=4 and warps=6 (min_ctas=2) 264. At 128 work items
  // warps=12 is fastest in one wave: a variant measured at 1 wave. At 256 the runtime would step
  // back from it (2 waves against the base's 1), but it is measured fastest there too: it keeps
  // 2 waves (no new variant). At 512 (4 waves against 2) warps=6 is fastest.
  const std::vector<int64_t> work = {256, 8, 128, 512};
  TuneResult result = bucketedResult({
      {"warps=4", {0.300, 0.055, 0.096, 0.310}},
      {"warps=12", {0.280, 0.065, 0.086, 0.313}},
      {"warps=6,min_ctas=2", {0.292, 0.061, 0.096, 0.297}},
  });
  auto slots = [](const Schedule &s) -> int64_t { return s.warps == 12 ? 132 : 264; };
  const DecodeSchedules byWork = decodeSchedulesByWork(result, work, 0.02, slots);
  EXPECT_EQ(byWork.base.warps, 4);
  ASSERT_EQ(byWork.variants.size(), 2u);
  EXPECT_EQ(byWork.variants[0].minWorkItems, 128);
  EXPECT_EQ(byWork.variants[0].schedule.warps, 12);
  EXPECT_EQ(byWork.variants[0].maxWaves, 2);
  EXPECT_EQ(byWork.variants[1].minWorkItems, 512);
  EXPECT_EQ(byWork.variants[1].schedule.warps, 6);
  EXPECT_EQ(byWork.variants[1].maxWaves, 2);
  // What the runtime runs: warps=12 from 128 to 264 pairs (up to 2 waves), the base from 265
  // (3 waves against 2), warps=6 from 512.
  const std::vector<int64_t> resident = {264, 132, 264};
  EXPECT_EQ(variantForLaunch(byWork.variants, resident, 200), 0);
  EXPECT_EQ(variantForLaunch(byWork.variants, resident, 264), 0);
  EXPECT_EQ(variantForLaunch(byWork.variants, resident, 265), -1);
  EXPECT_EQ(variantForLaunch(byWork.variants, resident, 512), 1);
  // Where warps=12 is not the fastest at 256, the runtime's step back stands and warps=6 is
  // chosen there, measured against the base.
  result.candidates[1].timing.bucketMs[0] = 0.295;
  const DecodeSchedules stepped = decodeSchedulesByWork(result, work, 0.02, slots);
  ASSERT_EQ(stepped.variants.size(), 2u);
  EXPECT_EQ(stepped.variants[0].maxWaves, 1);
  EXPECT_EQ(stepped.variants[1].minWorkItems, 256);
  EXPECT_EQ(stepped.variants[1].schedule.warps, 6);
  // Without occupancy no waves are recorded: warps=12 keeps 256 (fastest there) and warps=6
  // takes over at 512.
  result.candidates[1].timing.bucketMs[0] = 0.280;
  const DecodeSchedules blind = decodeSchedulesByWork(result, work);
  ASSERT_EQ(blind.variants.size(), 2u);
  EXPECT_EQ(blind.variants[0].maxWaves, 0);
  EXPECT_EQ(blind.variants[1].minWorkItems, 512);
}

TEST(TimingInputs, TheBenchAndTheTunerTimeOnDistinctRecordsColdInL2) {
  // Records: `count` distinct, valid records of the format, back to back.
  Expected<Format> format = parseFormat("kvarn_k4v2_g128", 128);
  ASSERT_TRUE(format);
  const RecordLayout layout = recordLayout(*format);
  Expected<std::vector<uint8_t>> records = decodeTimingRecords(*format, 3);
  ASSERT_TRUE(records) << records.error().str();
  ASSERT_EQ(records->size(), 3 * size_t(layout.tileBytesAligned));
  std::vector<std::vector<float>> keys;
  for (int k = 0; k < 3; ++k) {
    const std::span<const uint8_t> record(records->data() + k * layout.tileBytesAligned,
                                          layout.tileBytesAligned);
    std::vector<float> key(size_t(format->tileTokens) * format->headDim), value(key.size());
    ASSERT_TRUE(reference::dequantizeRecord(*format, record, key, value)) << "record " << k;
    EXPECT_TRUE(std::all_of(key.begin(), key.end(), [](float x) { return std::isfinite(x); }));
    keys.push_back(std::move(key));
  }
  EXPECT_NE(keys[0], keys[1]);
  EXPECT_NE(keys[1], keys[2]);
  // The same records every time (the bench and the tuner time the same work).
  EXPECT_EQ(*decodeTimingRecords(*format, 3), *records);
  // Queries of 0.5 in the spec's dtype.
  EXPECT_EQ(decodeTimingQueries(4, DType::F16), std::vector<uint16_t>(4, 0x3800));
  EXPECT_EQ(decodeTimingQueries(2, DType::BF16), std::vector<uint16_t>(2, 0x3f00));
  // Pool rows of 1.0 in fp16, two per word.
  EXPECT_EQ(halfToFloat(uint16_t(kDecodeTimingPoolWord & 0xffff)), 1.0f);
  EXPECT_EQ(kDecodeTimingPoolWord >> 16, kDecodeTimingPoolWord & 0xffff);
  // Copies: more than twice the L2 in one round over them, so more than the L2 between two uses
  // of one copy; at most 16, at least 1.
  const size_t l2 = size_t(60) << 20;
  for (size_t bytes = size_t(1) << 20; bytes <= (size_t(1) << 28); bytes += size_t(3) << 19) {
    const size_t copies = size_t(coldCopies(bytes, l2));
    ASSERT_GE(copies, 1u);
    ASSERT_LE(copies, 16u);
    if (copies == 16)
      continue;
    ASSERT_GT(copies * bytes, 2 * l2) << bytes;
    if (copies > 1) {
      ASSERT_GT((copies - 1) * bytes, l2) << bytes;
    }
  }
  EXPECT_EQ(coldCopies(size_t(1) << 20, l2), 16);
  EXPECT_EQ(coldCopies(size_t(40) << 20, l2), 4);
  EXPECT_GE((coldCopies(size_t(40) << 20, l2) - 1) * (size_t(40) << 20), 2 * l2);
  EXPECT_EQ(coldCopies(size_t(2) << 30, l2), 1);
  EXPECT_EQ(coldCopies(0, l2), 16);
}

TEST(DecodeVariants, AVariantFastestOnlyAtLongerContextsKeepsItsWaves) {
  // warps=8 (132 CTAs) is fastest at 128 pairs in one wave. At 256 pairs (two waves) it is 21%
  // slower than the base at 4K and 3% faster at 128K: raising its max_waves would run it at
  // 256 x 4K too, so it keeps one wave and 256 pairs from 131072 tokens get a variant of their
  // own (measured by the bench on the H200: a tuner that raised the waves there ran 32 x 4K
  // 21% slower).
  const std::vector<int64_t> work = {8, 128, 256, 256};
  const std::vector<int64_t> contexts = {4096, 4096, 4096, 131072};
  TuneResult result = bucketedResult({
      {"warps=4", {0.014, 0.034, 0.048, 1.138}},
      {"warps=8,min_ctas=1", {0.016, 0.032, 0.058, 1.105}},
  });
  auto slots = [](const Schedule &s) -> int64_t { return s.warps == 8 ? 132 : 264; };
  const DecodeSchedules byWork = decodeSchedulesByWork(result, work, 0.02, slots, contexts);
  EXPECT_EQ(byWork.base.warps, 4);
  ASSERT_EQ(byWork.variants.size(), 2u);
  EXPECT_EQ(byWork.variants[0].minWorkItems, 128);
  EXPECT_EQ(byWork.variants[0].maxWaves, 1);
  EXPECT_EQ(byWork.variants[1].minWorkItems, 256);
  EXPECT_EQ(byWork.variants[1].minContext, 131072);
  EXPECT_EQ(byWork.variants[1].schedule.warps, 8);
  EXPECT_EQ(byWork.variants[1].maxWaves, 2);
  const std::vector<int64_t> resident = {264, 132, 132};
  EXPECT_EQ(variantForLaunch(byWork.variants, resident, 256, 4096), -1) << "the base at 4K";
  EXPECT_EQ(variantForLaunch(byWork.variants, resident, 256, 131072), 1);
  EXPECT_EQ(variantForLaunch(byWork.variants, resident, 128, 4096), 0);
}

TEST(DecodeVariants, LongerContextsOfOneLaunchSizeGetTheirOwnVariants) {
  // Buckets: 1 x 4K and 1 x 128K (8 pairs), 16 x 4K and 16 x 128K (128 pairs). At 8 pairs
  // warps=4 is fastest at 4K and warps=8 (one CTA per SM) 4.9% faster at 128K: the base and a
  // variant from 8 pairs and 131072 tokens. At 128 pairs warps=8 is fastest at 4K and warps=12
  // 5.1% faster at 128K: a variant from 128 pairs (any length), then one from 128 pairs and
  // 131072 tokens. A variant keyed by context must gain minGain (2%), as any other.
  const std::vector<int64_t> work = {8, 8, 128, 128};
  const std::vector<int64_t> contexts = {4096, 131072, 4096, 131072};
  TuneResult result = bucketedResult({
      {"warps=4,min_ctas=1", {0.0120, 0.0410, 0.0500, 0.4000}},
      {"warps=8,min_ctas=1", {0.0128, 0.0390, 0.0430, 0.3900}},
      {"warps=12", {0.0150, 0.0450, 0.0490, 0.3700}},
      {"warps=6,min_ctas=2", {0.0140, 0.0430, 0.0440, 0.3990}},
  });
  const DecodeSchedules bands = decodeSchedulesByWork(result, work, 0.02, nullptr, contexts);
  EXPECT_EQ(bands.base.warps, 4);
  ASSERT_EQ(bands.variants.size(), 3u);
  EXPECT_EQ(bands.variants[0].minWorkItems, 8);
  EXPECT_EQ(bands.variants[0].minContext, 131072);
  EXPECT_EQ(bands.variants[0].schedule.warps, 8);
  EXPECT_DOUBLE_EQ(bands.variants[0].medianMs, 0.0390);
  EXPECT_EQ(bands.variants[1].minWorkItems, 128);
  EXPECT_EQ(bands.variants[1].minContext, 0);
  EXPECT_EQ(bands.variants[1].schedule.warps, 8);
  EXPECT_EQ(bands.variants[2].minWorkItems, 128);
  EXPECT_EQ(bands.variants[2].minContext, 131072);
  EXPECT_EQ(bands.variants[2].schedule.warps, 12);
  // What the runtime then runs at each bucket is each bucket's fastest (within the bar).
  const std::vector<int> expectedWarps = {4, 8, 8, 12};
  for (size_t b = 0; b < work.size(); ++b) {
    const int k = variantForWork(bands.variants, work[b], contexts[b]);
    EXPECT_EQ(k < 0 ? bands.base.warps : bands.variants[size_t(k)].schedule.warps,
              expectedWarps[b])
        << "bucket " << b;
  }
  // The variants survive the configs file.
  TuneResult tuned = result;
  tuned.variants = bands.variants;
  nlohmann::json entries = nlohmann::json::parse(configEntriesJson({tuned}));
  EXPECT_EQ(entries[0]["variants"][0]["min_context"], 131072);
  EXPECT_FALSE(entries[0]["variants"][1].contains("min_context"));
  EXPECT_FALSE(entries[0]["variants"][1].contains("max_waves")) << "none measured without occupancy";
  tuned.variants[1].maxWaves = 2;
  EXPECT_EQ(nlohmann::json::parse(configEntriesJson({tuned}))[0]["variants"][1]["max_waves"], 2);
  nlohmann::json file = {{"environment", {{"arch", "sm_90a"}}}, {"entries", entries}};
  Expected<ConfigFile> parsed = parseConfigFile(file.dump(), "tuned.json");
  ASSERT_TRUE(parsed) << parsed.error().str();
  ASSERT_EQ(parsed->entries[0].variants.size(), 3u);
  EXPECT_EQ(parsed->entries[0].variants[2].minContext, 131072);
  // Without contexts the buckets of one size decide together: no variant keyed by context.
  const DecodeSchedules together = decodeSchedulesByWork(result, work);
  for (const ScheduleVariant &v : together.variants)
    EXPECT_EQ(v.minContext, 0);
  // warps=12 only 1.5% faster at 16 x 128K: under the bar of a variant keyed by context.
  result.candidates[2].timing.bucketMs[3] = 0.3842;
  const DecodeSchedules smaller = decodeSchedulesByWork(result, work, 0.02, nullptr, contexts);
  ASSERT_EQ(smaller.variants.size(), 2u);
  EXPECT_EQ(smaller.variants[1].schedule.warps, 8);
}

TEST(DecodeVariants, ASizesShortContextChoiceMustNotLoseOverItsLongerContexts) {
  // 4 x 4K and 4 x 64K (32 pairs): warps=2 is 5% faster than the base at 4K and 8% slower at
  // 64K. Chosen at 4K alone it would run at 64K as well, unless a variant keyed by context took
  // over there; over both it is slower, so no variant is added.
  const std::vector<int64_t> work = {8, 32, 32};
  const std::vector<int64_t> contexts = {4096, 4096, 65536};
  TuneResult result = bucketedResult({
      {"warps=4", {0.0120, 0.0200, 0.0700}},
      {"warps=2", {0.0130, 0.0190, 0.0756}},
  });
  EXPECT_TRUE(decodeSchedulesByWork(result, work, 0.02, nullptr, contexts).variants.empty());
  // 3% slower at 64K instead: over both contexts it gains, so it is the variant from 32 pairs,
  // and the base's schedule, 2.9% faster at 64K, the variant from 32 pairs and 65536 tokens.
  result.candidates[1].timing.bucketMs[2] = 0.0721;
  const DecodeSchedules gains = decodeSchedulesByWork(result, work, 0.02, nullptr, contexts);
  ASSERT_EQ(gains.variants.size(), 2u);
  EXPECT_EQ(gains.variants[0].schedule.warps, 2);
  EXPECT_EQ(gains.variants[0].minContext, 0);
  EXPECT_EQ(gains.variants[1].schedule.warps, 4);
  EXPECT_EQ(gains.variants[1].minContext, 65536);
  // 1.5% slower at 64K: within the bar, so warps=2 runs at 64K too.
  result.candidates[1].timing.bucketMs[2] = 0.0711;
  const DecodeSchedules within = decodeSchedulesByWork(result, work, 0.02, nullptr, contexts);
  ASSERT_EQ(within.variants.size(), 1u);
  EXPECT_EQ(within.variants[0].schedule.warps, 2);
}

TEST(DecodeVariants, ARunAndAMultiGpuMergeDeriveTheSameVariants) {
  // The buckets of the run's options: 1 x 4K (8 pairs) first, then 16 x 4K (128 pairs).
  TuneOptions o;
  o.batch = 1;
  o.context = 4096;
  o.numKvHeads = 8;
  o.alsoBuckets = {{16, 4096}};
  std::vector<TuneResult> results = {bucketedResult({
      {"warps=4", {0.0120, 0.0500}},
      {"warps=8", {0.0128, 0.0430}},
  })};
  results.push_back(results.front());
  std::vector<std::string> lines;
  addDecodeVariants(results, o, 132, [&](const std::string &line) { lines.push_back(line); });
  for (const TuneResult &r : results) {
    ASSERT_EQ(r.variants.size(), 1u);
    EXPECT_EQ(r.variants[0].minWorkItems, 128);
    EXPECT_EQ(r.variants[0].schedule.warps, 8);
    EXPECT_EQ(r.variants[0].maxWaves, 1) << "128 pairs in one wave of the static model's CTAs";
    EXPECT_EQ(r.configBase.warps, 4);
  }
  // Per result: its base (warps=4, not the geometric-mean winner warps=8) and its variant.
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_NE(lines[0].find("the smallest launches warps=4"), std::string::npos) << lines[0];
  EXPECT_NE(lines[1].find("from 128 work items warps=8"), std::string::npos) << lines[1];
  // Without an SM count no occupancy is modelled and no waves are recorded.
  addDecodeVariants(results, o, 0);
  EXPECT_EQ(results[0].variants.at(0).maxWaves, 0);
}

TEST(DecodeVariants, BucketMediansSurviveTheReportAndVariantsReachTheConfigs) {
  TuneResult result = bucketedResult({
      {"warps=4", {0.300, 0.055}},
      {"warps=12", {0.250, 0.070}},
  });
  Expected<std::vector<TuneResult>> back = resultsFromJson(resultsToJson({result}, "key"));
  ASSERT_TRUE(back) << back.error().str();
  ASSERT_EQ((*back)[0].candidates[1].timing.bucketMs, (std::vector<double>{0.250, 0.070}));
  TuneResult resumed = (*back)[0];
  resumed.variants = decodeSchedulesByWork(resumed, {256, 8}).variants;
  ASSERT_EQ(resumed.variants.size(), 1u);
  nlohmann::json entries = nlohmann::json::parse(configEntriesJson({resumed}));
  ASSERT_TRUE(entries[0].contains("variants"));
  EXPECT_EQ(entries[0]["variants"][0]["min_work_items"], 256);
  EXPECT_EQ(entries[0]["variants"][0]["schedule"], resumed.variants[0].schedule.str());
  // The configs file a run writes parses back with the variant.
  nlohmann::json file = {{"environment", {{"arch", "sm_90a"}}}, {"entries", entries}};
  Expected<ConfigFile> parsed = parseConfigFile(file.dump(), "tuned.json");
  ASSERT_TRUE(parsed) << parsed.error().str();
  ASSERT_EQ(parsed->entries[0].variants.size(), 1u);
  EXPECT_EQ(parsed->entries[0].variants[0].schedule.warps, 12);
  // A base other than the geometric-mean winner is what the configs entry records.
  resumed.hasConfigBase = true;
  resumed.configBase = *parseSchedule("warps=2", OpKind::Decode);
  resumed.configBaseMs = 0.2;
  nlohmann::json rebased = nlohmann::json::parse(configEntriesJson({resumed}));
  EXPECT_EQ(rebased[0]["schedule"], resumed.configBase.str());
  EXPECT_DOUBLE_EQ(rebased[0]["median_ms"].get<double>(), 0.2);
}

TEST(StaticModel, OrdersByTensorCoreWorkOverOccupancy) {
  KernelSpec spec = *parseKernelSpec("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a");
  Schedule twoCtas = defaultSchedule(OpKind::Decode), threeCtas = twoCtas, twoStages = twoCtas,
           singleP = twoCtas;
  threeCtas.minCtas = 3;     // 12 warps per SM instead of 8
  twoStages.stages = 2;      // 124 KB of shared memory: 1 CTA, 4 warps
  singleP.mma = "m16n8k16.single-p";
  EXPECT_LT(predictedCost(spec, threeCtas), predictedCost(spec, twoCtas));
  EXPECT_LT(predictedCost(spec, twoCtas), predictedCost(spec, twoStages));
  EXPECT_LT(predictedCost(spec, singleP), predictedCost(spec, twoCtas));
  Schedule bound = twoCtas; // a bound that does not bind: still two CTAs of 4 warps
  bound.minCtas = 1;
  EXPECT_EQ(staticCtasPerSm(spec, bound), 2);
  EXPECT_DOUBLE_EQ(predictedCost(spec, bound), predictedCost(spec, twoCtas));
  EXPECT_EQ(staticCtasPerSm(spec, threeCtas), 3);
}

TEST(Replay, RecordedMediansGiveTheSameChoicesAsTheRun) {
  KernelSpec spec = *parseKernelSpec("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a");
  SelectOptions options;
  options.rooflineMs = 1.0;
  options.exhaustive = true;
  options.earlyStop = 0.85;
  TuneResult live = selectSchedule(spec, scheduleSearchSpace(OpKind::Decode),
                                   [](const std::vector<Schedule> &g) { return fakeGroup(g); },
                                   options);
  const std::string report = resultsToJson({live}, "key");
  std::vector<std::string> lines;
  Expected<Regret> replayed = replayRegret(report, 0.85, &lines);
  ASSERT_TRUE(replayed) << replayed.error().str();
  EXPECT_EQ(replayed->samples, 1);
  EXPECT_NEAR(replayed->median, (live.earlyMs - live.bestMs) / live.bestMs, 1e-12);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], HasSubstr("regret"));
  Expected<Regret> never = replayRegret(report, 0.0);
  ASSERT_TRUE(never);
  EXPECT_EQ(never->median, 0.0) << "without early stop the choice is the exhaustive best";
  EXPECT_FALSE(replayRegret("{}", 0.5));
}

TEST(EnvironmentKey, NamesTheSiliconNotTheProduct) {
  EXPECT_EQ(environmentKey(9, 0, 132, 60 << 20, 3201000), "sm90-132sm-60mb-l2-3201mhz");
}


TEST(TuneConfigs, ARunKeepsTheEntriesOfSpecsItDidNotTuneAndReplacesThoseItDid) {
  const std::string existing = R"({"environment": {"name": "x"}, "entries": [
      {"spec": "decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a", "schedule": "warps=4"},
      {"spec": "flush:kvarn_k4v2_g128:d128:q1:f16:sm_90a", "schedule": "warps=8"}]})";
  const std::string run = R"([
      {"spec": "flush:kvarn_k4v2_g128:d128:q1:f16:sm_90a", "schedule": "warps=4"},
      {"spec": "flush:kvarn_k4v2_g128:d256:q1:f16:sm_90a", "schedule": "warps=8"}])";
  Expected<std::string> merged = mergeConfigEntries(existing, "c/x.json", run);
  ASSERT_TRUE(merged) << merged.error().message;
  const nlohmann::json entries = nlohmann::json::parse(*merged);
  ASSERT_EQ(entries.size(), 3u);
  EXPECT_EQ(entries[0]["spec"], "decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a"); // a flush-only run
  EXPECT_EQ(entries[0]["schedule"], "warps=4");                                // kept it as it was
  EXPECT_EQ(entries[1]["spec"], "flush:kvarn_k4v2_g128:d128:q1:f16:sm_90a");
  EXPECT_EQ(entries[1]["schedule"], "warps=4"); // the run's choice replaced the old one
  EXPECT_EQ(entries[2]["spec"], "flush:kvarn_k4v2_g128:d256:q1:f16:sm_90a");

  Expected<std::string> fresh = mergeConfigEntries("", "c/x.json", run); // no file before
  ASSERT_TRUE(fresh);
  EXPECT_EQ(nlohmann::json::parse(*fresh), nlohmann::json::parse(run));

  for (const std::string bad : {"{not json", R"({"entries": 3})", "[]"}) {
    Expected<std::string> refused = mergeConfigEntries(bad, "c/x.json", run);
    ASSERT_FALSE(refused) << bad;
    EXPECT_NE(refused.error().message.find("c/x.json exists but is not a configs file"),
              std::string::npos)
        << refused.error().message;
  }
}

TEST(TuneConfigs, WritingKeepsOtherSpecsAndNeverOverwritesAFileItCannotRead) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("kvarn-configs-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "gpu.json").string();
  auto read = [&] {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  };
  auto write = [&](const std::string &text) { std::ofstream(path, std::ios::trunc) << text; };
  write(R"({"environment": {"name": "G"}, "bucket": {"batch": 32}, "entries": [
      {"spec": "decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a", "schedule": "warps=4"}]})");
  ASSERT_TRUE(writeConfigs(path, R"({"environment": {"name": "H"}, "entries": [
      {"spec": "flush:kvarn_k4v2_g128:d128:q1:f16:sm_90a", "schedule": "warps=4"}]})"));
  const nlohmann::json written = nlohmann::json::parse(read());
  EXPECT_EQ(written["environment"]["name"], "H"); // the run's members replace the file's
  EXPECT_EQ(written["bucket"]["batch"], 32);      // and the others stay (a run without decode)
  ASSERT_EQ(written["entries"].size(), 2u);
  EXPECT_EQ(written["entries"][0]["spec"], "decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a");
  EXPECT_EQ(written["entries"][1]["spec"], "flush:kvarn_k4v2_g128:d128:q1:f16:sm_90a");

  write("{truncated");
  Status refused = writeConfigs(path, R"({"entries": []})");
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("not a configs file"), std::string::npos);
  EXPECT_EQ(read(), "{truncated"); // left as it was

  // Something at the path that is not a readable file (here a directory) is refused, not
  // replaced.
  std::filesystem::remove(path);
  std::filesystem::create_directories(dir / "gpu.json" / "inside");
  Status unreadable = writeConfigs(path, R"({"entries": []})");
  ASSERT_FALSE(unreadable);
  EXPECT_NE(unreadable.error().message.find("cannot read " + path), std::string::npos)
      << unreadable.error().message;
  EXPECT_TRUE(std::filesystem::is_directory(dir / "gpu.json" / "inside"));
  std::filesystem::remove_all(dir);
}

TEST(TuneConfigs, RunsWritingOneFileAtOnceKeepEachOthersEntries) {
  // Eight writers, each adding its own spec 20 times to the same configs file: every merge reads
  // the file the others published, so all eight entries are there at the end.
  const std::filesystem::path dir = std::filesystem::temp_directory_path() /
                                    ("kvarn-configs-race-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "gpu.json").string();
  std::vector<std::thread> writers;
  std::atomic<int> failures{0};
  for (int w = 0; w < 8; ++w)
    writers.emplace_back([&, w] {
      const std::string entry = R"({"entries": [{"spec": "decode:kvarn_k4v2_g128:d128:q)" +
                                std::to_string(w + 1) + R"(:f16:sm_90a", "schedule": "warps=4"}]})";
      for (int i = 0; i < 20; ++i)
        if (!writeConfigs(path, entry))
          ++failures;
    });
  for (std::thread &t : writers)
    t.join();
  EXPECT_EQ(failures.load(), 0);
  std::ifstream in(path);
  const nlohmann::json written = nlohmann::json::parse(in);
  std::set<std::string> specs;
  for (const nlohmann::json &e : written["entries"])
    specs.insert(e["spec"].get<std::string>());
  EXPECT_EQ(specs.size(), 8u);
  EXPECT_EQ(written["entries"].size(), 8u);
  std::vector<std::string> left;
  for (const auto &item : std::filesystem::directory_iterator(dir))
    left.push_back(item.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{"gpu.json"}) << "no temporary or lock file left";
  std::filesystem::remove_all(dir);
}

} // namespace

TEST(SpawnProcess, TellsTheChildItsParentsPidReplacingAnInheritedOne) {
  const std::string path = ::testing::TempDir() + "/kvarn-spawn-parent-pid";
  std::filesystem::remove(path);
  ::setenv("KVARN_TUNE_PARENT_PID", "12345", 1); // as if this process were a worker itself
  Expected<pid_t> child = autotune::spawnProcess(
      {"/bin/sh", "-c", "printf '%s' \"$KVARN_TUNE_PARENT_PID\" > " + path});
  ::unsetenv("KVARN_TUNE_PARENT_PID");
  ASSERT_TRUE(child) << child.error().str();
  int status = 0;
  ASSERT_EQ(waitpid(*child, &status, 0), *child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  std::ifstream in(path);
  std::string seen;
  std::getline(in, seen);
  EXPECT_EQ(seen, std::to_string(getpid()));
  std::filesystem::remove(path);
}

namespace {

/// One decode CTA's timeline row: start, rotated, warp page-loop ends, end (ns, 0 = none).
void stampCta(std::vector<uint64_t> &rows, int cta, uint64_t start, uint64_t rotated,
              std::vector<uint64_t> warps, uint64_t end) {
  using T = dev::DecodeTimeline;
  uint64_t *row = rows.data() + size_t(cta) * T::Fields;
  row[T::Start] = start;
  row[T::Rotated] = rotated;
  row[T::End] = end;
  row[T::Sm] = uint64_t(cta);
  for (size_t w = 0; w < warps.size(); ++w)
    row[T::WarpEnds + w] = warps[w];
}

} // namespace

TEST(DecodeTimeline, PhasesCountFromTheFirstCtasStart) {
  using T = dev::DecodeTimeline;
  constexpr uint64_t t0 = 5'000'000'000ull; // a %globaltimer reading, ns
  std::vector<uint64_t> decode(size_t(4) * T::Fields, 0), merge(size_t(2) * T::MergeFields, 0);
  stampCta(decode, 0, t0, t0 + 1000, {t0 + 30000, t0 + 31000}, t0 + 32500);
  stampCta(decode, 1, t0 + 100, t0 + 1100, {t0 + 33000, t0 + 34000}, t0 + 35000);
  stampCta(decode, 2, t0 + 50, t0 + 900, {t0 + 29000}, t0 + 30000);
  // CTA 3 never ran (a row past the grid); merge CTA 1's warp 0 left at once (one split).
  merge[T::MergeStart] = t0 + 20000;
  merge[T::MergeWaited] = t0 + 36000;
  merge[T::MergeEnd] = t0 + 37500;
  merge[T::MergeFields + T::MergeStart] = t0 + 21000;
  Expected<DecodeTimelineSummary> s = summarizeDecodeTimeline(decode, merge, /*firstWave=*/2);
  ASSERT_TRUE(s) << s.error().str();
  EXPECT_EQ(s->ctas, 3);
  EXPECT_EQ(s->mergeCtas, 1);
  EXPECT_DOUBLE_EQ(s->startMax, 0.1);
  EXPECT_DOUBLE_EQ(s->rotatedMedian, 1.0);
  EXPECT_DOUBLE_EQ(s->rotatedMax, 1.1);
  EXPECT_DOUBLE_EQ(s->pagesP10, 29.0); // warps: 29, 30, 31, 33, 34
  EXPECT_DOUBLE_EQ(s->pagesMedian, 31.0);
  EXPECT_DOUBLE_EQ(s->pagesMax, 34.0);
  EXPECT_DOUBLE_EQ(s->pagesFirstWave, 34.0); // CTAs 0 and 1 end their pages at 31 and 34
  EXPECT_DOUBLE_EQ(s->pagesLater, 29.0);
  EXPECT_DOUBLE_EQ(s->epilogueMedian, 1.0); // 1.5, 1.0, 1.0
  EXPECT_DOUBLE_EQ(s->endMax, 35.0);
  EXPECT_DOUBLE_EQ(s->mergeWaited, 36.0);
  EXPECT_DOUBLE_EQ(s->mergeEnd, 37.5);
  const std::string text = describeDecodeTimeline(*s);
  EXPECT_THAT(text, HasSubstr("3 CTAs"));
  EXPECT_THAT(text, HasSubstr("last store 35.00"));
  EXPECT_THAT(text, HasSubstr("merge (1 CTAs): partials visible 36.00, done 37.50"));
}

TEST(DecodeTimeline, RowsWithoutAStartOrOutOfOrderAreRefused) {
  using T = dev::DecodeTimeline;
  std::vector<uint64_t> decode(size_t(2) * T::Fields, 0), merge;
  Expected<DecodeTimelineSummary> none = summarizeDecodeTimeline(decode, merge, 1);
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().code, ErrorCode::InvalidData);
  EXPECT_THAT(none.error().message, HasSubstr("no CTA stamped its start"));
  stampCta(decode, 0, 1000, 2000, {5000}, 6000);
  stampCta(decode, 1, 1000, 2000, {5000}, 4000); // its last store before its pages ended
  Expected<DecodeTimelineSummary> disordered = summarizeDecodeTimeline(decode, merge, 1);
  ASSERT_FALSE(disordered);
  EXPECT_THAT(disordered.error().message, HasSubstr("CTA 1 has its stamps out of order"));
  stampCta(decode, 1, 1000, 0, {}, 0); // started, never rotated its queries
  EXPECT_FALSE(summarizeDecodeTimeline(decode, merge, 1));
}
