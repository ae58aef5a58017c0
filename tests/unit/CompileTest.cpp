// NVRTC compiles of the generated kernels (no GPU needed): every op x preset x head_dim x dtype
// for sm_90a and sm_80, plus a sample of schedules and GQA ratios; no warnings allowed.
#include "kvarn/Compiler/Pipeline.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <unistd.h>
#include <thread>

using namespace kvarn;

namespace {

struct Job {
  std::string spec, schedule;
  std::string failure; // empty when the kernel compiled cleanly
};

/// Compiles the jobs on all cores (the compile pipeline is thread-safe).
void compileAll(std::vector<Job> &jobs) {
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t k = next++; k < jobs.size(); k = next++) {
      Job &job = jobs[k];
      Expected<KernelSpec> spec = parseKernelSpec(job.spec);
      if (!spec) {
        job.failure = spec.error().message;
        continue;
      }
      Expected<Schedule> schedule = parseSchedule(job.schedule, spec->op);
      if (!schedule) {
        job.failure = schedule.error().message;
        continue;
      }
      Expected<compiler::CompiledKernel> kernel = compiler::compileKernel(*spec, *schedule);
      if (!kernel)
        job.failure = kernel.error().message;
      else if (!kernel->nvrtcLog.empty())
        job.failure = "NVRTC warnings:\n" + kernel->nvrtcLog;
      else if (kernel->cubin.empty() || kernel->ptx.find(".entry") == std::string::npos)
        job.failure = "no cubin or no kernel entry in the PTX";
    }
  };
  std::vector<std::thread> threads;
  const unsigned count = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned t = 0; t < count; ++t)
    threads.emplace_back(worker);
  for (std::thread &t : threads)
    t.join();
}

TEST(NvrtcCompile, EveryVariantCompilesWithoutWarnings) {
  std::vector<Job> jobs;
  const char *presets[] = {"kvarn_k4v2_g128", "kvarn_k4v4_g128", "kvarn_k2v2_g128",
                           "kvarn_k4v2_g64",  "kvarn_k4v4_g64",  "kvarn_k2v2_g64"};
  for (const char *arch : {"sm_90a", "sm_80"}) {
    const std::string target = std::string(":") + arch;
    for (const char *preset : presets)
      for (int d : {64, 128, 256}) {
        const std::string shape = std::string(preset) + ":d" + std::to_string(d);
        for (const char *dtype : {"f16", "bf16"})
          jobs.push_back({"decode:" + shape + ":q8:" + dtype + target, ""});
        jobs.push_back({"flush:" + shape + ":q1:f16" + target, ""}); // D = 256: 150 KB
        jobs.push_back({"dequantize:" + shape + ":q1:f16" + target, ""});
      }
    for (int d : {64, 128, 256})
      for (const char *dtype : {"f16", "bf16"})
        jobs.push_back({"append:kvarn_k4v2_g128:d" + std::to_string(d) + ":q1:" + dtype + target, ""});
  }
  // A sample of schedules and GQA ratios.
  for (const char *schedule :
       {"warps=1", "warps=8", "stages=2", "splits=1", "warps=2,splits=4",
        "stages=3,mma=m16n8k16.single", "warps=4,min_ctas=3,mma=m16n8k16.single-q",
        "warps=2,stages=2,min_ctas=6,mma=m16n8k16.single-p", "mma=m16n8k16.centered-q",
        "warps=12,mma=m16n8k16.centered-q-single-p"})
    jobs.push_back({"decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a", schedule});
  // The centered correction's middle value for 2-bit K codes, and on sm_80.
  jobs.push_back({"decode:kvarn_k2v2_g128:d128:q4:bf16:sm_90a", "mma=m16n8k16.centered-q"});
  jobs.push_back({"decode:kvarn_k2v2_g64:d64:q5:f16:sm_80", "mma=m16n8k16.centered-q-single-p"});
  for (int q : {1, 5, 16})
    jobs.push_back({"decode:kvarn_k4v2_g128:d128:q" + std::to_string(q) + ":f16:sm_90a", ""});
  jobs.push_back({"flush:kvarn_k4v2_g128:d128:q1:f16:sm_90a", "warps=16"});
  jobs.push_back({"append:kvarn_k4v2_g128:d128:q1:f16:sm_90a", "warps=8,rows_per_cta=1"});
  compileAll(jobs);
  for (const Job &job : jobs)
    EXPECT_EQ(job.failure, "") << job.spec << " schedule '" << job.schedule << "'";
}

TEST(NvrtcCompile, NewerAndConsumerArchitecturesCompileWithoutWarnings) {
  // sm_89 (Ada), sm_100a (Blackwell datacenter), sm_120 and sm_121 (Blackwell consumer / GB10):
  // the tuned decode and the flush, default schedules.
  std::vector<Job> jobs;
  for (const char *arch : {"sm_89", "sm_100a", "sm_120", "sm_121"}) {
    jobs.push_back({std::string("decode:kvarn_k4v2_g128:d128:q8:f16:") + arch,
                    "warps=4,mma=m16n8k16.single-p,min_ctas=3"});
    jobs.push_back({std::string("flush:kvarn_k4v2_g128:d128:q1:f16:") + arch, ""});
  }
  compileAll(jobs);
  for (const Job &job : jobs)
    EXPECT_EQ(job.failure, "") << job.spec << " [" << job.schedule << "]";
}

/// The PTX of entry `name` (from its `.entry` line to the next entry or the end).
std::string entryPtx(const std::string &ptx, const std::string &name) {
  const size_t begin = ptx.find(".entry " + name + "(");
  if (begin == std::string::npos)
    return "";
  const size_t end = ptx.find(".entry ", begin + 1);
  return ptx.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
}

/// How many times `needle` occurs in `text` (an instruction's count in an entry's PTX).
long occurrences(const std::string &text, const std::string &needle) {
  long count = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1))
    ++count;
  return count;
}

TEST(NvrtcCompile, TheSplitMergeIsAProgrammaticDependentOnlyFromSm90) {
  // sm_90a: the decode kernel releases its merge kernel early and the merge waits for the
  // decode's grid before it reads the partials; sm_80 has neither instruction (the runtime then
  // launches the merge plainly); one fixed split has no merge kernel and releases nothing.
  struct Case {
    const char *spec, *schedule;
    bool release, wait;
  };
  for (const Case &c : {Case{"decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a", "", true, true},
                        Case{"decode:kvarn_k4v2_g128:d128:q8:f16:sm_80", "", false, false},
                        Case{"decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a", "splits=1", false, false}}) {
    Expected<KernelSpec> spec = parseKernelSpec(c.spec);
    ASSERT_TRUE(spec) << spec.error().message;
    Expected<Schedule> schedule = parseSchedule(c.schedule, spec->op);
    ASSERT_TRUE(schedule) << schedule.error().message;
    Expected<compiler::CompiledKernel> kernel = compiler::compileKernel(*spec, *schedule);
    ASSERT_TRUE(kernel) << kernel.error().message;
    const std::string decode = entryPtx(kernel->ptx, kernel->kernelNames.at(0));
    ASSERT_NE(decode, "") << c.spec;
    EXPECT_EQ(decode.find("griddepcontrol.launch_dependents") != std::string::npos, c.release)
        << c.spec << " '" << c.schedule << "'";
    EXPECT_EQ(kernel->kernelNames.size(), std::string(c.schedule) == "splits=1" ? 1u : 2u);
    if (kernel->kernelNames.size() > 1) {
      const std::string merge = entryPtx(kernel->ptx, kernel->kernelNames.at(1));
      ASSERT_NE(merge, "") << c.spec;
      EXPECT_EQ(merge.find("griddepcontrol.wait") != std::string::npos, c.wait) << c.spec;
      // The marker the runtime looks for before it launches the merge early.
      EXPECT_EQ(kernel->ptx.find(".global .align 4 .u32 kvarn_merge_awaits_decode") !=
                    std::string::npos,
                c.wait)
          << c.spec;
    }
  }
}

TEST(NvrtcCompile, TheCenteredQueryCorrectionIsOneMmaPerKChunk) {
  // D = 128, q 8: a record page's q' low terms take one MMA per code tile (8 k-chunks x 8
  // m-tiles); the centered correction one per k-chunk. Every variant here rounds P' once, so
  // the decode entries differ only there, in every copy of the record page's code.
  auto mmaCount = [](const char *mma) -> long {
    Expected<KernelSpec> spec = parseKernelSpec("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a");
    Expected<Schedule> schedule = parseSchedule(std::string("mma=") + mma, OpKind::Decode);
    if (!spec || !schedule)
      return -1;
    Expected<compiler::CompiledKernel> kernel = compiler::compileKernel(*spec, *schedule);
    if (!kernel)
      return -1;
    return occurrences(entryPtx(kernel->ptx, kernel->kernelNames.at(0)), "mma.sync");
  };
  const long twoTerms = mmaCount("m16n8k16.single-p");
  const long centered = mmaCount("m16n8k16.centered-q-single-p");
  const long once = mmaCount("m16n8k16.single");
  ASSERT_GT(once, 0);
  EXPECT_GT(centered, once);
  EXPECT_EQ(twoTerms - centered, 7 * (centered - once))
      << "two q' terms " << twoTerms << ", centered " << centered << ", once " << once;
}

TEST(NvrtcCompile, AppendRotatesRowsOnEightLanesWithThreeShuffleLevels) {
  // Append's layout (append.cuh): a row over eight lanes of D / 8 values, two row groups (four
  // heads) per pass, so a pass shuffles 2 groups x 3 levels x D / 8 values = 3 D / 4 times
  // (sixteen lanes per row took 4 levels x D / 16 values x 4 heads = D; the pass loop is not
  // unrolled, so the PTX holds one pass).
  for (int d : {64, 128, 256}) {
    Expected<KernelSpec> spec =
        parseKernelSpec("append:kvarn_k4v2_g128:d" + std::to_string(d) + ":q1:f16:sm_90a");
    ASSERT_TRUE(spec) << spec.error().message;
    Expected<compiler::CompiledKernel> kernel =
        compiler::compileKernel(*spec, defaultSchedule(OpKind::Append));
    ASSERT_TRUE(kernel) << kernel.error().message;
    EXPECT_EQ(occurrences(entryPtx(kernel->ptx, kernel->kernelNames.at(0)), "shfl.sync"),
              3 * d / 4)
        << "D = " << d;
  }
}

TEST(NvrtcCompile, TheTimelineBuildStampsItsPhasesUnderItsOwnKey) {
  // bench --timeline: the same spec and schedule with the KVARN_TIMELINE stamps. The define
  // follows the generated header; both entries read %globaltimer into the module's timeline
  // variables; the plain kernel has neither; and the two sources, so their artifact keys, differ
  // (each is a miss once, then a hit).
  Expected<KernelSpec> spec = parseKernelSpec("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a");
  ASSERT_TRUE(spec) << spec.error().message;
  const Schedule schedule = defaultSchedule(OpKind::Decode);
  const std::filesystem::path directory =
      std::filesystem::temp_directory_path() /
      ("kvarn-timeline-key-" + std::to_string(::getpid()));
  std::filesystem::remove_all(directory);
  ArtifactCache::Options options;
  options.directory = directory.string();
  ArtifactCache cache(options);
  const compiler::Instrumentation timeline{true};
  bool hit = true;
  Expected<compiler::CompiledKernel> plain = compiler::compileKernel(*spec, schedule, cache, &hit);
  ASSERT_TRUE(plain) << plain.error().message;
  EXPECT_FALSE(hit);
  Expected<compiler::CompiledKernel> stamped =
      compiler::compileKernel(*spec, schedule, cache, &hit, timeline);
  ASSERT_TRUE(stamped) << stamped.error().message;
  EXPECT_FALSE(hit) << "the timeline build must not share the plain kernel's key";
  EXPECT_EQ(stamped->nvrtcLog, "");
  const std::string header = compiler::generatedHeader(*spec, schedule);
  EXPECT_EQ(stamped->cudaSource.rfind(header + "#define KVARN_TIMELINE 1\n", 0), 0u);
  EXPECT_EQ(plain->cudaSource.find("KVARN_TIMELINE 1"), std::string::npos);
  for (size_t k = 0; k < 2; ++k) {
    EXPECT_NE(entryPtx(stamped->ptx, stamped->kernelNames.at(k)).find("%globaltimer"),
              std::string::npos)
        << stamped->kernelNames.at(k);
    EXPECT_EQ(entryPtx(plain->ptx, plain->kernelNames.at(k)).find("%globaltimer"),
              std::string::npos);
  }
  for (const char *name : {"kvarn_timeline", "kvarn_timeline_merge"}) {
    EXPECT_NE(stamped->ptx.find(std::string(" ") + name + "["), std::string::npos) << name;
    EXPECT_EQ(plain->ptx.find(name), std::string::npos) << name;
  }
  for (bool instrumented : {false, true}) {
    ASSERT_TRUE(compiler::compileKernel(*spec, schedule, cache, &hit,
                                        compiler::Instrumentation{instrumented}));
    EXPECT_TRUE(hit) << (instrumented ? "timeline" : "plain") << " build, second time";
  }
  std::filesystem::remove_all(directory);
}

TEST(NvrtcCompile, ImpossibleSchedulesAreRejectedBeforeNvrtc) {
  std::vector<Job> jobs = {{"decode:kvarn_k4v2_g128:d256:q16:f16:sm_89", ""},
                           {"decode:kvarn_k4v2_g128:d256:q16:f16:sm_89", "warps=8"}};
  compileAll(jobs);
  EXPECT_THAT(jobs[0].failure, ::testing::HasSubstr("bytes of shared memory per CTA; sm_89 allows"));
  EXPECT_THAT(jobs[1].failure, ::testing::HasSubstr("sm_89 allows"));
}

TEST(NvrtcCompile, FailuresCarryTheLogOptionsArchAndDumpedSource) {
  Expected<NvrtcOutput> output =
      compileCuda("this is not CUDA", "broken_kernel", "sm_90a", {});
  ASSERT_FALSE(output);
  EXPECT_THAT(output.error().message, ::testing::HasSubstr("NVRTC could not compile broken_kernel for sm_90a"));
  EXPECT_THAT(output.error().message, ::testing::HasSubstr("options: --gpu-architecture=sm_90a"));
  EXPECT_THAT(output.error().message, ::testing::HasSubstr("source: "));
  EXPECT_THAT(output.error().message, ::testing::HasSubstr("log:"));
}

} // namespace
