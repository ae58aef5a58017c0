// Tuned-config files and the schedule lookup: exact, nearest and default rules, with reasons.
#include "kvarn/configs.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

using namespace kvarn;
using ::testing::HasSubstr;

namespace {

const char *kH200 = R"({
  "environment": {"arch": "sm_90a", "sm_count": 132, "l2_bytes": 62914560,
                  "memory_clock_khz": 3201000, "driver": 13000, "nvrtc": "13.0", "kvarn": "0.1.0"},
  "entries": [
    {"spec": "decode:kvarn_k4v2_g128:d128:q1:f16:sm_90a", "schedule": "warps=8", "median_ms": 0.2},
    {"spec": "decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a", "schedule": "warps=4,min_ctas=3"},
    {"spec": "flush:kvarn_k4v2_g128:d128:q1:f16:sm_90a", "schedule": "warps=16"}
  ]})";

TuningEnvironment h200() {
  return {"sm_90a", 132, 62914560, 3201000, 13000, "13.0", "0.1.0"};
}

ConfigFile parsed(const char *json) {
  Expected<ConfigFile> file = parseConfigFile(json, "test.json");
  EXPECT_TRUE(file) << file.error().str();
  return file ? *file : ConfigFile{};
}

TEST(Configs, ParsesEntriesAndNamesWhatIsWrong) {
  ConfigFile file = parsed(kH200);
  ASSERT_EQ(file.entries.size(), 3u);
  EXPECT_EQ(file.environment.smCount, 132);
  EXPECT_EQ(file.entries[1].schedule.minCtas, 3);
  EXPECT_DOUBLE_EQ(file.entries[0].medianMs, 0.2);
  EXPECT_THAT(parseConfigFile("[1]", "a.json").error().message, HasSubstr("not a JSON object"));
  EXPECT_THAT(parseConfigFile(R"({"entries": []})", "a.json").error().message,
              HasSubstr("no 'environment' object"));
  EXPECT_THAT(parseConfigFile(R"({"environment": {"arch": "sm_90a"}, "entries": [{"spec": 1}]})",
                              "a.json").error().message,
              HasSubstr("entries[0] needs 'spec' and 'schedule' strings"));
  EXPECT_THAT(parseConfigFile(R"({"environment": {"arch": "sm_90a"}, "entries": [
                                 {"spec": "decode:kvarn_k4v2_g128:d96:q1:f16:sm_90a",
                                  "schedule": ""}]})", "a.json").error().message,
              HasSubstr("head_dim"));
  EXPECT_THAT(parseConfigFile(R"({"environment": {"arch": "sm_90a"}, "entries": [
                                 {"spec": "decode:kvarn_k4v2_g128:d128:q1:f16:sm_90a",
                                  "schedule": "warps=x"}]})", "a.json").error().message,
              HasSubstr("warps"));
}

TEST(Configs, ExactEntryOnTheSameSiliconIsTuned) {
  std::vector<ConfigFile> configs = {parsed(kH200)};
  ScheduleChoice choice =
      chooseSchedule(configs, *parseKernelSpec("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a"), h200());
  EXPECT_EQ(choice.rule, "tuned");
  EXPECT_EQ(choice.schedule.warps, 4);
  EXPECT_EQ(choice.schedule.minCtas, 3);
  EXPECT_THAT(choice.explanation, HasSubstr("test.json"));
  EXPECT_THAT(choice.explanation, ::testing::Not(HasSubstr("driver")));
}

TEST(Configs, AnotherDriverOrNvrtcOnTheSameSiliconIsNearestAndSaysSo) {
  std::vector<ConfigFile> configs = {parsed(kH200)};
  TuningEnvironment newerDriver = h200();
  newerDriver.driverVersion = 13010;
  ScheduleChoice choice = chooseSchedule(
      configs, *parseKernelSpec("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a"), newerDriver);
  EXPECT_EQ(choice.rule, "nearest");
  EXPECT_EQ(choice.schedule.minCtas, 3) << "the same entry, only the rule changes";
  EXPECT_THAT(choice.explanation, HasSubstr("tuned under driver 13000 (here 13010)"));
}

TEST(Configs, NearestEntrySaysWhatDiffers) {
  std::vector<ConfigFile> configs = {parsed(kH200)};
  // GQA ratio 6 is tuned nowhere: q8 is nearer than q1 (log2 distance).
  ScheduleChoice q6 =
      chooseSchedule(configs, *parseKernelSpec("decode:kvarn_k4v2_g128:d128:q6:f16:sm_90a"), h200());
  EXPECT_EQ(q6.rule, "nearest");
  EXPECT_EQ(q6.schedule.minCtas, 3);
  EXPECT_THAT(q6.explanation, HasSubstr("tuned for q8, asked q6"));
  // bf16 uses the f16 entry.
  ScheduleChoice bf16 = chooseSchedule(
      configs, *parseKernelSpec("decode:kvarn_k4v2_g128:d128:q1:bf16:sm_90a"), h200());
  EXPECT_EQ(bf16.rule, "nearest");
  EXPECT_EQ(bf16.schedule.warps, 8);
  EXPECT_THAT(bf16.explanation, HasSubstr("another dtype"));
  // An H100 (same arch, other silicon): nearest, with the differences and the software named.
  TuningEnvironment h100{"sm_90a", 132, 52428800, 2619000, 12080, "12.8", "0.1.0"};
  ScheduleChoice other = chooseSchedule(
      configs, *parseKernelSpec("flush:kvarn_k4v2_g128:d128:q1:f16:sm_90a"), h100);
  EXPECT_EQ(other.rule, "nearest");
  EXPECT_EQ(other.schedule.warps, 16);
  EXPECT_THAT(other.explanation, HasSubstr("60 MB L2"));
  EXPECT_THAT(other.explanation, HasSubstr("tuned under driver 13000 (here 12080)"));
  EXPECT_THAT(other.explanation, HasSubstr("tuned with NVRTC 13.0 (here 12.8)"));
}

TEST(Configs, NothingSuitableFallsBackToTheDefault) {
  std::vector<ConfigFile> configs = {parsed(kH200)};
  // Another format, another arch: no entry applies.
  for (const char *spec : {"decode:kvarn_k4v4_g128:d128:q8:f16:sm_90a",
                           "decode:kvarn_k4v2_g128:d128:q8:f16:sm_89"}) {
    ScheduleChoice choice = chooseSchedule(configs, *parseKernelSpec(spec), h200());
    EXPECT_EQ(choice.rule, "default") << spec;
    EXPECT_EQ(choice.schedule, defaultSchedule(OpKind::Decode));
    EXPECT_THAT(choice.explanation, HasSubstr("no tuned config")) << spec;
  }
  // An entry that is not legal for the asked spec (too much shared memory at D = 256 on sm_80).
  ConfigFile a100 = parsed(R"({"environment": {"arch": "sm_80"}, "entries": [
      {"spec": "decode:kvarn_k4v2_g128:d256:q16:f16:sm_80", "schedule": "warps=8,stages=2"}]})");
  ScheduleChoice illegal = chooseSchedule(
      {a100}, *parseKernelSpec("decode:kvarn_k4v2_g128:d256:q16:f16:sm_80"), {"sm_80"});
  EXPECT_EQ(illegal.rule, "default");
  EXPECT_THAT(illegal.explanation, HasSubstr("1 entries are not legal"));
  EXPECT_EQ(chooseSchedule({}, *parseKernelSpec("append:kvarn_k4v2_g128:d128:q1:f16:sm_90a"), h200())
                .rule,
            "default");
}

const char *kWithVariants = R"({
  "environment": {"arch": "sm_90a", "sm_count": 132, "l2_bytes": 62914560,
                  "memory_clock_khz": 3201000, "driver": 13000, "nvrtc": "13.0", "kvarn": "0.1.0"},
  "entries": [
    {"spec": "decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a", "schedule": "warps=4", "median_ms": 0.1,
     "variants": [{"min_work_items": 128, "schedule": "warps=12", "median_ms": 0.09},
                  {"min_work_items": 512, "schedule": "warps=6,min_ctas=2"}]}
  ]})";

TEST(Configs, DecodeVariantsParseAndPickByWorkItems) {
  ConfigFile file = parsed(kWithVariants);
  ASSERT_EQ(file.entries.size(), 1u);
  const TunedEntry &entry = file.entries[0];
  ASSERT_EQ(entry.variants.size(), 2u);
  EXPECT_EQ(entry.variants[0].minWorkItems, 128);
  EXPECT_EQ(entry.variants[0].schedule.warps, 12);
  EXPECT_DOUBLE_EQ(entry.variants[0].medianMs, 0.09);
  EXPECT_EQ(entry.variants[1].schedule.minCtas, 2);
  // Below the first threshold the entry's own schedule; at and above each threshold its variant.
  EXPECT_EQ(variantForWork(entry.variants, 0), -1);
  EXPECT_EQ(variantForWork(entry.variants, 127), -1);
  EXPECT_EQ(variantForWork(entry.variants, 128), 0);
  EXPECT_EQ(variantForWork(entry.variants, 511), 0);
  EXPECT_EQ(variantForWork(entry.variants, 512), 1);
  EXPECT_EQ(variantForWork(entry.variants, int64_t(1) << 40), 1);
  EXPECT_EQ(entry.schedule.warps, 4);
  EXPECT_EQ(entry.variants[size_t(variantForWork(entry.variants, 256))].schedule.warps, 12);
  EXPECT_EQ(entry.variants[size_t(variantForWork(entry.variants, 4096))].schedule.warps, 6);

  ScheduleChoice choice = chooseSchedule(
      {file}, *parseKernelSpec("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a"), h200());
  EXPECT_EQ(choice.rule, "tuned");
  ASSERT_EQ(choice.variants.size(), 2u);
  EXPECT_EQ(choice.variants[0].minWorkItems, 128) << "same SM count: thresholds unchanged";
  EXPECT_THAT(choice.explanation, HasSubstr("from 128 work items: warps=12"));
  EXPECT_THAT(choice.explanation, HasSubstr("from 512 work items: warps=6"));
  // The kernels a runtime prepares: the schedule, then each variant's, a repeated one once.
  std::vector<Schedule> schedules = choice.schedules();
  ASSERT_EQ(schedules.size(), 3u);
  EXPECT_EQ(schedules[0], choice.schedule);
  EXPECT_EQ(schedules[1].warps, 12);
  EXPECT_EQ(schedules[2].warps, 6);
  choice.variants.push_back({1024, choice.schedule});
  choice.variants.push_back({2048, choice.variants[0].schedule});
  EXPECT_EQ(choice.schedules(), schedules);
}

TEST(Configs, ALaunchStepsBackFromAVariantThatWouldNeedMoreWaves) {
  // Base: 264 resident CTAs (4 warps x 2 per SM on 132 SMs); from 128 work items a 12-warp
  // variant with 132; from 512 a 6-warp variant with 264.
  std::vector<ScheduleVariant> variants = {{128, *parseSchedule("warps=12", OpKind::Decode), 0},
                                           {512, *parseSchedule("warps=6,min_ctas=2", OpKind::Decode), 0}};
  const std::vector<int64_t> slots = {264, 132, 264};
  EXPECT_EQ(variantForLaunch(variants, slots, 8), -1);
  EXPECT_EQ(variantForLaunch(variants, slots, 128), 0) << "one wave either way";
  EXPECT_EQ(variantForLaunch(variants, slots, 132), 0);
  EXPECT_EQ(variantForLaunch(variants, slots, 133), -1) << "two waves where the base needs one";
  EXPECT_EQ(variantForLaunch(variants, slots, 256), -1);
  EXPECT_EQ(variantForLaunch(variants, slots, 300), -1) << "3 waves against 2";
  EXPECT_EQ(variantForLaunch(variants, slots, 512), 1) << "2 waves against the 12-warp's 4";
  EXPECT_EQ(variantForLaunch(variants, slots, 4096), 1);
  // Waves: at least one, ceil(work / slots), slots of 0 counted as 1.
  EXPECT_EQ(launchWaves(0, 264), 1);
  EXPECT_EQ(launchWaves(264, 264), 1);
  EXPECT_EQ(launchWaves(265, 264), 2);
  EXPECT_EQ(launchWaves(10, 0), 10);
  // Without occupancy (a mismatched list) the thresholds alone decide.
  EXPECT_EQ(variantForLaunch(variants, {}, 256), 0);
  EXPECT_EQ(variantForLaunch({}, {264}, 256), -1);
  // A variant measured fastest at 2 waves keeps launches that need 2, not those that need 3.
  variants[0].maxWaves = 2;
  EXPECT_EQ(variantForLaunch(variants, slots, 133), 0);
  EXPECT_EQ(variantForLaunch(variants, slots, 264), 0);
  EXPECT_EQ(variantForLaunch(variants, slots, 265), -1) << "3 waves against 2";
  EXPECT_EQ(variantForLaunch(variants, slots, 512), 1);
  // The field parses, and a bad one is refused with its name.
  ConfigFile file = parsed(R"({"environment": {"arch": "sm_90a"}, "entries": [
      {"spec": "decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a", "schedule": "warps=4",
       "variants": [{"min_work_items": 128, "schedule": "warps=12", "max_waves": 2}]}]})");
  EXPECT_EQ(file.entries[0].variants[0].maxWaves, 2);
  Expected<ConfigFile> bad = parseConfigFile(R"({"environment": {"arch": "sm_90a"}, "entries": [
      {"spec": "decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a", "schedule": "warps=4",
       "variants": [{"min_work_items": 128, "schedule": "warps=12", "max_waves": -2}]}]})",
                                             "w.json");
  ASSERT_FALSE(bad);
  EXPECT_THAT(bad.error().message, HasSubstr("variants[0].max_waves = -2"));
}

TEST(Configs, VariantsKeyedByContextApplyOnlyToLongEnoughLaunches) {
  // Base warps=4; from 8 pairs at 64K tokens or more warps=8 (one CTA per SM); from 128 pairs
  // warps=8, and from 128 pairs at 64K tokens warps=12.
  ConfigFile file = parsed(R"({"environment": {"arch": "sm_90a", "sm_count": 132},
      "entries": [{"spec": "decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a", "schedule": "warps=4",
                   "variants": [{"min_work_items": 8, "min_context": 65536,
                                 "schedule": "warps=8,min_ctas=1"},
                                {"min_work_items": 128, "schedule": "warps=8"},
                                {"min_work_items": 128, "min_context": 65536,
                                 "schedule": "warps=12"}]}]})");
  const std::vector<ScheduleVariant> &variants = file.entries[0].variants;
  ASSERT_EQ(variants.size(), 3u);
  EXPECT_EQ(variants[0].minContext, 65536);
  EXPECT_EQ(variants[1].minContext, 0);
  EXPECT_EQ(variantForWork(variants, 8), -1) << "an unknown length reaches no context variant";
  EXPECT_EQ(variantForWork(variants, 8, 4096), -1);
  EXPECT_EQ(variantForWork(variants, 8, 65535), -1);
  EXPECT_EQ(variantForWork(variants, 8, 65536), 0);
  EXPECT_EQ(variantForWork(variants, 127, 131072), 0);
  EXPECT_EQ(variantForWork(variants, 128, 4096), 1);
  EXPECT_EQ(variantForWork(variants, 128, 0), 1);
  EXPECT_EQ(variantForWork(variants, 128, 131072), 2);
  // The wave rule steps back over variants the launch does not reach: 132 resident CTAs of
  // warps=12 at 200 pairs need 2 waves where warps=8's 264 need one; the context variant of 8
  // pairs (132 CTAs) needs 2 as well, so the launch runs warps=8 (variant 1), not variant 0.
  const std::vector<int64_t> slots = {264, 132, 264, 132};
  EXPECT_EQ(variantForLaunch(variants, slots, 200, 131072), 1);
  EXPECT_EQ(variantForLaunch(variants, slots, 200, 4096), 1);
  EXPECT_EQ(variantForLaunch(variants, slots, 128, 131072), 2) << "one wave either way";
  EXPECT_EQ(variantForLaunch(variants, slots, 100, 131072), 0);
  EXPECT_EQ(variantForLaunch(variants, slots, 133, 0), 1);
  ScheduleChoice choice = chooseSchedule(
      {file}, *parseKernelSpec("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a"), h200());
  EXPECT_THAT(choice.explanation, HasSubstr("from 8 work items and 65536 tokens: warps=8"));
  EXPECT_THAT(choice.explanation, HasSubstr("from 128 work items: warps=8"));
  // Scaled to half the SMs the thresholds of work halve and those of context stay.
  TuningEnvironment half = h200();
  half.smCount = 66;
  choice = chooseSchedule({file}, *parseKernelSpec("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a"),
                          half);
  ASSERT_EQ(choice.variants.size(), 3u);
  EXPECT_EQ(choice.variants[0].minWorkItems, 4);
  EXPECT_EQ(choice.variants[0].minContext, 65536);
  EXPECT_EQ(choice.variants[2].minWorkItems, 64);
  EXPECT_EQ(choice.variants[2].minContext, 65536);
}

TEST(Configs, VariantThresholdsScaleWithTheSmCount) {
  TuningEnvironment half = h200();
  half.smCount = 66;
  ScheduleChoice choice = chooseSchedule(
      {parsed(kWithVariants)}, *parseKernelSpec("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a"), half);
  EXPECT_EQ(choice.rule, "nearest");
  ASSERT_EQ(choice.variants.size(), 2u);
  EXPECT_EQ(choice.variants[0].minWorkItems, 64);
  EXPECT_EQ(choice.variants[1].minWorkItems, 256);
}

TEST(Configs, MalformedVariantsAreRefusedWithTheField) {
  auto error = [](const char *variants, const char *spec = "decode:kvarn_k4v2_g128:d128:q8") {
    const std::string json =
        std::string(R"({"environment": {"arch": "sm_90a"}, "entries": [{"spec": ")") + spec +
        R"(:f16:sm_90a", "schedule": "warps=4", "variants": )" +
        variants + "}]}";
    Expected<ConfigFile> file = parseConfigFile(json, "v.json");
    return file ? std::string("parsed") : file.error().message;
  };
  EXPECT_THAT(error("{}"), HasSubstr("entries[0].variants is not an array"));
  EXPECT_THAT(error(R"([{"schedule": "warps=8"}])"),
              HasSubstr("entries[0].variants[0] needs an integer 'min_work_items'"));
  EXPECT_THAT(error(R"([{"min_work_items": 0, "schedule": "warps=8"}])"),
              HasSubstr("must be positive"));
  EXPECT_THAT(error(R"([{"min_work_items": 64, "schedule": "warps=8"},
                        {"min_work_items": 64, "schedule": "warps=6"}])"),
              HasSubstr("variants[1]: (min_work_items, min_context) = (64, 0) does not follow"));
  EXPECT_THAT(error(R"([{"min_work_items": 64, "min_context": 65536, "schedule": "warps=8"},
                        {"min_work_items": 64, "min_context": 4096, "schedule": "warps=6"}])"),
              HasSubstr("strictly ascending by work items, then context"));
  EXPECT_THAT(error(R"([{"min_work_items": 64, "min_context": -1, "schedule": "warps=8"}])"),
              HasSubstr("variants[0].min_context = -1"));
  EXPECT_THAT(error(R"([{"min_work_items": 64, "min_context": "long", "schedule": "warps=8"}])"),
              HasSubstr("variants[0].min_context is not an integer"));
  EXPECT_THAT(error(R"([{"min_work_items": 64, "schedule": "warps=seven"}])"),
              HasSubstr("variants[0]"));
  const char *flush = "flush:kvarn_k4v2_g128:d128:q1";
  EXPECT_THAT(error(R"([{"min_work_items": 64, "schedule": "warps=8"}])", flush),
              HasSubstr("only decode entries have variants"));
  EXPECT_EQ(error("[]", flush), "parsed");
}

TEST(Configs, VariantsIllegalHereAreDroppedAndCounted) {
  // 32 warps per CTA exceed the 1,024 threads of a CTA: validateSchedule refuses the variant.
  ConfigFile file = parsed(R"({"environment": {"arch": "sm_90a", "sm_count": 132},
      "entries": [{"spec": "decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a", "schedule": "warps=4",
                   "variants": [{"min_work_items": 64, "schedule": "warps=64"},
                                {"min_work_items": 256, "schedule": "warps=6"}]}]})");
  TuningEnvironment here = h200();
  ScheduleChoice choice =
      chooseSchedule({file}, *parseKernelSpec("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a"), here);
  ASSERT_EQ(choice.variants.size(), 1u);
  EXPECT_EQ(choice.variants[0].schedule.warps, 6);
  EXPECT_THAT(choice.explanation, HasSubstr("1 variants are not legal"));
}

TEST(Configs, DirectoryLoadingSkipsBadFilesWithAWarning) {
  const std::string dir = testing::TempDir() + "/kvarn-configs-test";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/h200.json") << kH200;
  std::ofstream(dir + "/broken.json") << "{ not json";
  std::ofstream(dir + "/notes.txt") << "ignored";
  std::vector<std::string> warnings;
  std::vector<ConfigFile> files = loadConfigDirectory(dir, &warnings);
  ASSERT_EQ(files.size(), 1u);
  EXPECT_THAT(files[0].origin, HasSubstr("h200.json"));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_THAT(warnings[0], HasSubstr("broken.json"));
  EXPECT_TRUE(loadConfigDirectory(dir + "/missing", &warnings).empty());
  EXPECT_EQ(warnings.size(), 1u) << "a missing directory is not a warning";
  std::filesystem::remove_all(dir);
}

} // namespace
