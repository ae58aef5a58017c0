// kvarn-tune: the per-GPU command-line tool (tune, bench, compile, bundles, inspect).
#include "kvarn/files.h"
#include "kvarn/Autotune/Bench.h"
#include "kvarn/Autotune/MultiDevice.h"
#include "kvarn/Autotune/Tuner.h"
#include "kvarn/Compiler/Bundle.h"
#include "kvarn/Compiler/Pipeline.h"
#include "kvarn/bundle.h"
#include "kvarn/cache.h"
#include "kvarn/configs.h"
#include "kvarn/device_library_hash.h"
#include "kvarn/jit.h"
#include "kvarn/driver.h"
#include "kvarn/format.h"
#include "kvarn/parallel.h"
#include "kvarn/reference.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <sstream>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using namespace kvarn;

/// Quantizes a synthetic tile's keys (rotated) with and without normalization; prints the error.
int runQuantizeDemo(const std::string &preset, int headDim, int iterations, uint64_t seed) {
  Expected<Format> format = parseFormat(preset, headDim, iterations);
  if (!format) {
    std::fprintf(stderr, "kvarn-tune: %s\n", format.error().str().c_str());
    return 2;
  }
  const int g = format->tileTokens, d = format->headDim;
  Expected<std::vector<float>> keys = reference::syntheticRotatedKeyMatrix(g, d, seed);
  if (!keys) {
    std::fprintf(stderr, "kvarn-tune: %s\n", keys.error().str().c_str());
    return 1;
  }
  const std::vector<float> &matrix = *keys;
  RecordLayout layout = recordLayout(*format);
  std::printf("%s, head_dim %d: record %zu B (%zu aligned), %.1f B/token/kv-head, %.2fx smaller "
              "than fp16\n",
              format->presetName().c_str(), d, layout.tileBytes, layout.tileBytesAligned,
              layout.bytesPerToken(), layout.compressionRatio());
  for (int iters : {0, iterations}) {
    Expected<reference::QuantizedMatrix> q = reference::quantizeMatrix(matrix, d, g, format->keyBits, iters);
    if (!q) {
      std::fprintf(stderr, "kvarn-tune: %s\n", q.error().str().c_str());
      return 1;
    }
    std::vector<float> reconstructed(matrix.size());
    for (int r = 0; r < d; ++r)
      for (int c = 0; c < g; ++c)
        reconstructed[static_cast<size_t>(r) * g + c] = q->reconstruct(r, c);
    std::printf("  %d-bit keys, %d Sinkhorn iterations: relative Frobenius error %.4f\n",
                format->keyBits, iters, reference::relativeFrobeniusError(reconstructed, matrix));
  }
  return 0;
}

/// `kvarn-tune compile`: prints or writes one stage of one kernel.
int runCompile(const std::string &specText, const std::string &scheduleText,
               const std::string &emit, const std::string &outputPath) {
  Expected<KernelSpec> spec = parseKernelSpec(specText);
  if (!spec) {
    std::fprintf(stderr, "kvarn-tune: %s\n", spec.error().message.c_str());
    return 2;
  }
  Expected<Schedule> schedule = parseSchedule(scheduleText, spec->op);
  if (!schedule) {
    std::fprintf(stderr, "kvarn-tune: %s\n", schedule.error().message.c_str());
    return 2;
  }
  Expected<compiler::Stage> stage = compiler::parseStage(emit);
  if (!stage) {
    std::fprintf(stderr, "kvarn-tune: %s\n", stage.error().message.c_str());
    return 2;
  }
  std::string bytes;
  if (*stage == compiler::Stage::Cubin) {
    Expected<compiler::CompiledKernel> kernel = compiler::compileKernel(*spec, *schedule);
    if (!kernel) {
      std::fprintf(stderr, "kvarn-tune: %s\n", kernel.error().message.c_str());
      return 1;
    }
    bytes.assign(kernel->cubin.begin(), kernel->cubin.end());
  } else {
    Expected<std::string> text = compiler::emitStage(*spec, *schedule, *stage);
    if (!text) {
      std::fprintf(stderr, "kvarn-tune: %s\n", text.error().message.c_str());
      return 1;
    }
    bytes = std::move(*text);
  }
  if (outputPath.empty() || outputPath == "-") {
    if (*stage == compiler::Stage::Cubin) {
      std::fprintf(stderr, "kvarn-tune: a cubin is binary; write it with -o FILE\n");
      return 2;
    }
    std::cout << bytes;
    return 0;
  }
  if (Status written = writeFileAtomically(outputPath, bytes); !written) {
    std::fprintf(stderr, "kvarn-tune: %s\n", written.error().message.c_str());
    return 1;
  }
  return 0;
}

/// `kvarn-tune compile-time`: median wall time of the whole pipeline (IR, passes, C++ emission,
/// NVRTC to cubin) per variant, after one warm-up compile, and where it goes: the median of each
/// stage timed on its own (compiler::timeCompileStages; ptxas = cubin - PTX). First, NVRTC's
/// floor for the first spec's architecture: a one-statement kernel, alone and after the device
/// library's header. NVRTC (12.9 and later) keeps its own cache of compiled programs in the CUDA
/// driver's compute cache when a driver is present, so a repeated compile of the same source is
/// a cache hit; unless `nvrtcCache` is set, the cache is switched off (CUDA_CACHE_DISABLE=1, read
/// when NVRTC first compiles) and every timed compile is a full one.
int runCompileTime(const std::vector<std::string> &specs, int repeats, bool nvrtcCache) {
  if (!nvrtcCache)
    setenv("CUDA_CACHE_DISABLE", "1", 1);
  std::printf("NVRTC's compile cache: %s\n",
              nvrtcCache ? "allowed (repeats of a source may be cache hits)"
                         : "off (CUDA_CACHE_DISABLE=1): every compile is a full compile");
  std::vector<KernelSpec> parsed;
  for (const std::string &text : specs) {
    Expected<KernelSpec> spec = parseKernelSpec(text);
    if (!spec) {
      std::fprintf(stderr, "kvarn-tune: %s\n", spec.error().message.c_str());
      return 2;
    }
    parsed.push_back(*spec);
  }
  auto median = [](std::vector<double> times) {
    std::sort(times.begin(), times.end());
    return times.empty() ? 0.0 : times[times.size() / 2];
  };
  // repeats + 1 runs of `run` (which returns an Expected), the first a warm-up; the others'
  // results.
  auto timed = [&](const auto &run) {
    using Result = std::decay_t<decltype(*run())>;
    std::vector<Result> results;
    for (int k = 0; k <= repeats; ++k) {
      Expected<Result> result = run();
      if (!result)
        return Expected<std::vector<Result>>(result.error());
      if (k > 0) // the first compile warms caches and the NVRTC library
        results.push_back(*result);
    }
    return Expected<std::vector<Result>>(std::move(results));
  };
  auto fail = [](const Error &error) {
    std::fprintf(stderr, "kvarn-tune: %s\n", error.message.c_str());
    return 1;
  };
  if (!parsed.empty()) {
    const std::string &arch = parsed.front().arch;
    for (bool library : {false, true}) {
      Expected<std::vector<double>> floor =
          timed([&] { return compiler::timeNvrtcFloor(arch, library); });
      if (!floor)
        return fail(floor.error());
      std::printf("NVRTC floor for %s, a one-statement kernel%s: %.1f ms (median)\n", arch.c_str(),
                  library ? " after the device library's header" : "", median(*floor));
    }
  }
  std::printf("%-48s %10s %10s %10s | %10s %10s %10s\n", "spec", "median ms", "min ms", "max ms",
              "to C++", "NVRTC PTX", "ptxas");
  for (size_t index = 0; index < parsed.size(); ++index) {
    const KernelSpec &spec = parsed[index];
    const Schedule schedule = defaultSchedule(spec.op);
    Expected<std::vector<double>> whole = timed([&]() -> Expected<double> {
      const auto start = std::chrono::steady_clock::now();
      Expected<compiler::CompiledKernel> kernel = compiler::compileKernel(spec, schedule);
      if (!kernel)
        return kernel.error();
      return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
          .count();
    });
    if (!whole)
      return fail(whole.error());
    Expected<std::vector<compiler::CompileStageTimes>> stages =
        timed([&] { return compiler::timeCompileStages(spec, schedule); });
    if (!stages)
      return fail(stages.error());
    std::vector<double> emit, ptx, ptxas;
    for (const compiler::CompileStageTimes &t : *stages) {
      emit.push_back(t.emitMs);
      ptx.push_back(t.ptxMs);
      ptxas.push_back(t.cubinMs - t.ptxMs);
    }
    std::sort(whole->begin(), whole->end());
    std::printf("%-48s %10.1f %10.1f %10.1f | %10.1f %10.1f %10.1f\n", specs[index].c_str(),
                median(*whole), whole->front(), whole->back(), median(emit), median(ptx),
                median(ptxas));
  }
  return 0;
}

/// `kvarn-tune cache ls|verify|clean`.
int runCacheCommand(const std::string &action) {
  ArtifactCache cache(ArtifactCache::Options{});
  if (!cache.diskEnabled()) {
    std::fprintf(stderr, "kvarn-tune: no usable cache directory (%s)\n", cache.directory().c_str());
    return 1;
  }
  if (action == "clean") {
    std::printf("removed %zu corrupt, quarantined or temporary files from %s\n", cache.clean(),
                cache.directory().c_str());
    return 0;
  }
  int bad = 0;
  const std::vector<ArtifactCache::EntryCheck> checks = cache.checkEntries();
  for (const ArtifactCache::EntryCheck &check : checks) {
    if (!check.problem.empty()) {
      ++bad;
      std::printf("BAD  %s.kvarn: %s\n", check.key.c_str(), check.problem.c_str());
    } else if (action == "ls") {
      std::printf("%s  %8zu B  %s\n", check.key.c_str(), check.bytes, check.metadata.c_str());
    }
  }
  std::printf("%zu entries in %s, %d bad\n", checks.size(), cache.directory().c_str(), bad);
  if (bad > 0)
    std::printf("a bad entry is a miss: the next use rebuilds it, and `kvarn-tune cache clean` "
                "deletes it now\n");
  return bad == 0 ? 0 : 1;
}

/// `kvarn-tune bundle export|import|inspect`.
int runBundleCommand(const std::string &action, const std::string &path, const std::string &arch,
                     const std::string &configsPath);

/// The environment assumed for `arch` where no GPU tells it: the first of `configs` tuned for
/// that arch, so their entries match exactly and the kernels are those that GPU would run, else
/// the arch, this NVRTC and kvarn.
TuningEnvironment assumedEnvironment(const std::string &arch,
                                     const std::vector<ConfigFile> &configs = {}) {
  for (const ConfigFile &file : configs)
    if (file.environment.arch == arch)
      return file.environment;
  TuningEnvironment environment;
  environment.arch = arch;
  environment.nvrtcVersion = nvrtcVersion();
  environment.kvarnVersion = KVARN_VERSION;
  return environment;
}

/// The default kernel set: of the default presets at D = 128, decode (Q = 1, 2, 4, 8) and append
/// for fp16 and for bf16 models (queries, outputs and incoming rows), flush and dequantize (the
/// pool and the records are fp16 for either).
std::vector<KernelSpec> defaultKernelSet(const std::string &arch) {
  std::vector<KernelSpec> specs;
  auto add = [&](const std::string &op, const char *preset, int q, const char *dtype) {
    specs.push_back(*parseKernelSpec(op + ":" + preset + ":d128:q" + std::to_string(q) + ":" +
                                     dtype + ":" + arch));
  };
  for (const char *preset : {"kvarn_k4v2_g128", "kvarn_k4v4_g128"}) {
    for (const char *dtype : {"f16", "bf16"}) {
      for (int q : {1, 2, 4, 8})
        add("decode", preset, q, dtype);
      add("append", preset, 1, dtype);
    }
    for (const char *op : {"flush", "dequantize"})
      add(op, preset, 1, "f16");
  }
  return specs;
}

/// Compiles the default kernel set with NVRTC and reports each (no GPU needed): every spec with
/// the schedule the tuned configs in `configsDirectory` choose for `here` (kvarn_prepare's
/// choice, and the decode variants a runtime prepares with it), or the op's default schedule
/// where they hold none. `device`: the GPU here, or none (then assumedEnvironment for sm_90a).
int runCompileDefaultSet(const Expected<DeviceInfo> &device, const std::string &configsDirectory) {
  std::vector<std::string> warnings;
  const std::vector<ConfigFile> configs =
      configsDirectory.empty() ? std::vector<ConfigFile>{}
                               : loadConfigDirectory(configsDirectory, &warnings);
  const TuningEnvironment here =
      device ? environmentOf(*device) : assumedEnvironment("sm_90a", configs);
  ArtifactCache cache(ArtifactCache::Options{});
  std::printf("Compiling the default kernel set for %s with NVRTC %s on %d host threads (cache: "
              "%s; times are per compile, with the others running), schedules from %s:\n",
              here.arch.c_str(), nvrtcVersion().c_str(), hostThreads(),
              cache.diskEnabled() ? cache.directory().c_str() : "memory only",
              configs.empty() ? "the ops' defaults (no tuned configs)"
                              : ("the tuned configs in " + configsDirectory).c_str());
  for (const std::string &warning : warnings)
    std::printf("  warning: %s\n", warning.c_str());
  // Every spec's schedules (the choice and its decode variants), compiled on every host thread,
  // reported in this order.
  struct Job {
    KernelSpec spec;
    Schedule schedule;
    std::string rule;
    std::optional<Expected<compiler::CompiledKernel>> kernel;
    double ms = 0;
    bool hit = false;
  };
  std::vector<Job> jobs;
  for (const KernelSpec &spec : defaultKernelSet(here.arch)) {
    const ScheduleChoice choice = chooseSchedule(configs, spec, here);
    for (const Schedule &schedule : choice.schedules())
      jobs.push_back({spec, schedule, choice.rule, std::nullopt});
  }
  parallelFor(jobs.size(), [&](size_t i) {
    Job &job = jobs[i];
    const auto start = std::chrono::steady_clock::now();
    job.kernel.emplace(compiler::compileKernel(job.spec, job.schedule, cache, &job.hit));
    job.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                 .count();
  });
  int failures = 0;
  for (const Job &job : jobs) {
    const Expected<compiler::CompiledKernel> &kernel = *job.kernel;
    if (!kernel) {
      ++failures;
      std::printf("  FAIL %-44s %s: %s\n", job.spec.str().c_str(), job.schedule.str().c_str(),
                  kernel.error().message.c_str());
      continue;
    }
    std::printf("  ok   %-44s %7.1f ms%s  cubin %7zu B  smem %6zu B%s\n       %s %s\n",
                job.spec.str().c_str(), job.ms, job.hit ? " (cached)" : "         ",
                kernel->cubin.size(), kernel->sharedBytes,
                kernel->nvrtcLog.empty() ? "" : "  (NVRTC printed warnings)", job.rule.c_str(),
                job.schedule.str().c_str());
  }
  return failures == 0 ? 0 : 1;
}

int runBundleCommand(const std::string &action, const std::string &path, const std::string &arch,
                     const std::string &configsPath) {
  if (action == "export") {
    // The default kernel set for `arch`, each with the schedule the configs choose for it (the
    // environment is the configs' own GPU when given, so their entries match exactly).
    std::string configs;
    std::vector<ConfigFile> parsedConfigs;
    if (!configsPath.empty()) {
      std::ifstream in(configsPath);
      if (!in) {
        std::fprintf(stderr, "kvarn-tune: cannot read configs %s\n", configsPath.c_str());
        return 1;
      }
      configs.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      Expected<ConfigFile> parsed = parseConfigFile(configs, configsPath);
      if (!parsed) {
        std::fprintf(stderr, "kvarn-tune: %s\n", parsed.error().message.c_str());
        return 1;
      }
      parsedConfigs.push_back(std::move(*parsed));
    }
    const TuningEnvironment environment = assumedEnvironment(arch, parsedConfigs);
    ArtifactCache cache(ArtifactCache::Options{});
    std::vector<std::string> choices;
    Expected<Bundle> bundle =
        compiler::buildBundle(defaultKernelSet(arch), configs, environment, cache, &choices);
    if (!bundle) {
      std::fprintf(stderr, "kvarn-tune: %s\n", bundle.error().message.c_str());
      return 1;
    }
    for (const std::string &choice : choices)
      std::printf("  %s\n", choice.c_str());
    if (Status s = writeBundle(path, *bundle); !s) {
      std::fprintf(stderr, "kvarn-tune: %s\n", s.error().message.c_str());
      return 1;
    }
    std::printf("wrote %s: %zu kernels for %s, with sources and the device library\n",
                path.c_str(), bundle->entries.size(), arch.c_str());
    return 0;
  }
  Expected<Bundle> bundle = readBundle(path);
  if (!bundle) {
    std::fprintf(stderr, "kvarn-tune: %s\n", bundle.error().message.c_str());
    return 1;
  }
  if (action == "import") {
    // Its kernels are keyed for the kvarn version and device library that made them: from
    // another build they would sit in the cache unused, so say so instead (the arch is not
    // checked here: a cache may be filled for another GPU).
    if (std::string why =
            bundleMismatch(*bundle, bundle->arch, KVARN_VERSION, KVARN_DEVICE_LIBRARY_HASH);
        !why.empty()) {
      std::fprintf(stderr, "kvarn-tune: %s not imported: %s\n", path.c_str(), why.c_str());
      return 1;
    }
    ArtifactCache cache(ArtifactCache::Options{});
    importBundle(*bundle, cache);
    std::printf("imported %zu kernels into %s\n", bundle->entries.size(), cache.directory().c_str());
    return 0;
  }
  std::printf("%s: kvarn %s (device library %s), %s, NVRTC %s, %zu kernels, %s\n", path.c_str(),
              bundle->kvarnVersion.c_str(),
              bundle->deviceLibrary.empty() ? "not recorded" : bundle->deviceLibrary.c_str(),
              bundle->arch.c_str(), bundle->nvrtcVersion.c_str(),
              bundle->entries.size(), bundle->configs.empty() ? "no configs" : "with configs");
  for (const BundleEntry &entry : bundle->entries)
    std::printf("  %-46s %8zu B cubin  %s\n", entry.spec.c_str(), entry.artifact.cubin.size(),
                entry.schedule.c_str());
  return 0;
}

/// "all" (every GPU of this host) or a comma-separated list of ordinals.
Expected<std::vector<int>> parseDevices(const std::string &text) {
  std::vector<int> devices;
  if (text == "all") {
    Expected<const Driver *> driver = Driver::get();
    if (!driver)
      return driver.error();
    int count = 0;
    if (Status s = KVARN_CU((*driver)->cuDeviceGetCount(&count)); !s)
      return s.error();
    for (int d = 0; d < count; ++d)
      devices.push_back(d);
    return devices;
  }
  std::stringstream list(text);
  std::string item;
  while (std::getline(list, item, ',')) {
    char *end = nullptr;
    const long value = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || value < 0 || value > 1024 ||
        std::find(devices.begin(), devices.end(), int(value)) != devices.end())
      return makeError(ErrorCode::InvalidArgument,
                       "--devices '" + text + "': expected 'all' or distinct GPU ordinals like 0,1");
    devices.push_back(int(value));
  }
  if (devices.empty())
    return makeError(ErrorCode::InvalidArgument, "--devices '" + text + "' names no GPU");
  return devices;
}

/// This program's path (for worker processes).
/// A `--dtype f16|bf16` option of `command` into `field` (the spec key's names, checked by
/// parseDtypeField).
void addDtypeOption(CLI::App *command, std::string &field, const std::string &description) {
  command->add_option("--dtype", field, description)
      ->check(
          [](const std::string &text) {
            Expected<DType> dtype = parseDtypeField(text);
            return dtype ? std::string() : dtype.error().message;
          },
          "f16|bf16")
      ->capture_default_str();
}

std::string selfExecutable(const char *argv0) {
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(argv0) : self.string();
}

/// `kvarn-tune info`.
int runInfo(int device, const std::string &configsDirectory) {
  std::printf("kvarn %s, NVRTC %s\n", KVARN_VERSION, nvrtcVersion().c_str());
  Expected<DeviceInfo> info = openDevice(device);
  TuningEnvironment here;
  if (info) {
    here = environmentOf(*info);
    std::printf("GPU %d: %s, %s, %d SMs, %d MB L2, memory clock %d MHz, %d-bit bus, "
                "%d KB shared memory per block (opt-in), driver %d\n  silicon key: %s\n",
                device, info->name.c_str(), info->arch().c_str(), info->smCount,
                info->l2Bytes >> 20, info->memoryClockKhz / 1000, info->memoryBusBits,
                info->maxSharedPerBlockOptin >> 10, info->driverVersion,
                autotune::environmentKey(info->computeMajor, info->computeMinor, info->smCount,
                                         info->l2Bytes, info->memoryClockKhz)
                    .c_str());
  } else {
    here = assumedEnvironment("sm_90a");
    std::printf("GPU %d: none (%s); the lookup below assumes an sm_90a GPU\n", device,
                info.error().message.c_str());
  }
  ArtifactCache cache(ArtifactCache::Options{});
  size_t entries = 0, bytes = 0;
  std::error_code ec;
  if (cache.diskEnabled())
    for (const auto &item : std::filesystem::directory_iterator(cache.directory(), ec))
      if (item.is_regular_file() && item.path().extension() == ".kvarn") {
        ++entries;
        bytes += item.file_size();
      }
  std::printf("artifact cache: %s, %zu entries, %.1f MB%s\n",
              cache.diskEnabled() ? cache.directory().c_str() : "memory only", entries,
              double(bytes) / 1e6, cache.warnings().empty() ? "" : " (with warnings)");
  for (const std::string &warning : cache.warnings())
    std::printf("  warning: %s\n", warning.c_str());
  std::vector<std::string> warnings;
  std::vector<ConfigFile> configs = loadConfigDirectory(configsDirectory, &warnings);
  std::printf("tuned configs in %s: %zu file(s)\n", configsDirectory.c_str(), configs.size());
  for (const ConfigFile &file : configs)
    std::printf("  %s: %s, %d SMs, %zu entries\n", file.origin.c_str(),
                file.environment.arch.c_str(), file.environment.smCount, file.entries.size());
  for (const std::string &warning : warnings)
    std::printf("  warning: %s\n", warning.c_str());
  std::printf("schedules the runtime would use here (kvarn_prepare with no schedule):\n");
  for (const KernelSpec &spec : defaultKernelSet(here.arch)) {
    const ScheduleChoice choice = chooseSchedule(configs, spec, here);
    std::printf("  %-44s %-8s %s\n", spec.str().c_str(), choice.rule.c_str(),
                choice.schedule.str().c_str());
    for (const ScheduleVariant &variant : choice.variants)
      std::printf("  %-44s %-8s %s (launches from %s)\n", "", "",
                  variant.schedule.str().c_str(), describeThresholds(variant).c_str());
  }
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  CLI::App app{"kvarn-tune: compile, tune and benchmark KVarN attention kernels for this GPU"};
  app.set_version_flag("--version", std::string("kvarn ") + KVARN_VERSION);
  app.require_subcommand(0, 1);

  std::string preset = "kvarn_k4v2_g128";
  int headDim = 128, iterations = kDefaultSinkhornIterations;
  uint64_t seed = 1;
  CLI::App *quantize = app.add_subcommand(
      "quantize", "Quantize a synthetic key tile with the CPU reference and print its error");
  quantize->add_option("--preset", preset, "KVarN preset, e.g. kvarn_k4v2_g128")->capture_default_str();
  quantize->add_option("--head-dim", headDim, "head_dim (64, 128, 256, 512)")->capture_default_str();
  quantize->add_option("--iterations", iterations, "Sinkhorn iterations")->capture_default_str();
  quantize->add_option("--seed", seed, "random seed of the synthetic tile")->capture_default_str();

  std::string specText, scheduleText, emit = "cuda", outputPath;
  CLI::App *compile = app.add_subcommand(
      "compile", "Print one stage of the compiler for a kernel spec (mlir, tile, emitc, cuda, "
                 "ptx, cubin)");
  compile->add_option("--spec", specText,
                      "kernel spec op:preset:d<D>:q<Q>:<f16|bf16>:<arch>, e.g. "
                      "decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a")
      ->required();
  compile->add_option("--schedule", scheduleText,
                      "schedule knobs, e.g. warps=4,stages=2,splits=0 (default: the defaults)");
  compile->add_option("--emit", emit, "stage to print: mlir, tile, emitc, cuda, ptx, cubin")
      ->capture_default_str();
  compile->add_option("-o", outputPath, "output file (default: standard output)");

  autotune::BenchOptions bench;
  std::vector<std::string> benchOnly;
  CLI::App *benchCommand = app.add_subcommand(
      "bench", "Benchmark KVarN decode against fp16 paged attention (same run), flush and append "
               "on a GPU; prints time, effective GB/s and the fraction of the measured bandwidth");
  benchCommand->add_option("--device", bench.device, "GPU ordinal")->capture_default_str();
  benchCommand->add_option("--preset", bench.preset, "KVarN preset")->capture_default_str();
  benchCommand->add_option("--head-dim", bench.headDim, "head_dim")->capture_default_str();
  benchCommand->add_option("--query-heads", bench.numQueryHeads, "Hq")->capture_default_str();
  benchCommand->add_option("--kv-heads", bench.numKvHeads, "Hk")->capture_default_str();
  std::string benchDtype = "f16";
  addDtypeOption(benchCommand, benchDtype,
                 "decode: queries and outputs of both kernels; append: the incoming K/V rows "
                 "(the pools are fp16 either way)");
  benchCommand->add_option("--batch", bench.batches, "batch sizes")->capture_default_str();
  benchCommand->add_option("--context", bench.contexts, "context lengths")->capture_default_str();
  benchCommand->add_option("--iterations", bench.iterations, "timed launches per kernel")
      ->capture_default_str();
  benchCommand->add_flag_callback(
      "--no-gate", [&bench] { bench.hideLaunchLatency = false; },
      "time each launch from an idle GPU (include the host's launch latency) instead of queuing "
      "it behind a 20 us spin kernel");
  benchCommand->add_flag("--sink", bench.poolPages.sink,
                         "decode: block 0 of every request an fp16 pool page in the KVarN cache "
                         "(the format's sink); its bytes count at fp16 size");
  benchCommand->add_flag("--tail", bench.poolPages.tail,
                         "decode: the last block of every request an fp16 pool page in the KVarN "
                         "cache (a tail not yet flushed); its bytes count at fp16 size");
  benchCommand->add_flag("--timeline", bench.timeline,
                         "decode: after each shape's timing, launch both kernels once more built "
                         "with timeline stamps and print where the launch's time goes (query "
                         "rotation, page loop, epilogue, split merge; docs/design.md)");
  benchCommand->add_option("--schedule", bench.schedule,
                           "schedule knobs of the decode table; when it does not run, of "
                           "append (--only append), else of flush (--only flush)");
  benchCommand->add_option("--baseline-schedule", bench.baselineSchedule,
                           "schedule knobs of the fp16 baseline (default: the decode op's default "
                           "schedule, whatever --schedule or the configs choose for KVarN)");
  benchCommand->add_option("--only", benchOnly, "subset: decode, flush, append, lookup");
  benchCommand->add_option("--configs", bench.configsDirectory,
                           "tuned configs that choose the schedules when --schedule is not given")
      ->capture_default_str();
  benchCommand->add_option("--report", bench.reportPrefix,
                           "write the decode table to <prefix>.json and a chart to <prefix>.html");

  std::vector<std::string> timedSpecs = {"decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a",
                                         "decode:kvarn_k4v4_g64:d64:q4:bf16:sm_90a",
                                         "decode:kvarn_k4v2_g128:d256:q8:f16:sm_90a",
                                         "flush:kvarn_k4v2_g128:d128:q1:f16:sm_90a",
                                         "append:kvarn_k4v2_g128:d128:q1:f16:sm_90a",
                                         "dequantize:kvarn_k4v2_g128:d128:q1:f16:sm_90a"};
  int repeats = 5;
  bool nvrtcCache = false;
  CLI::App *compileTime = app.add_subcommand(
      "compile-time", "Benchmark the compile pipeline (IR to cubin) per kernel variant, warm");
  compileTime->add_option("--spec", timedSpecs, "kernel specs to time")->capture_default_str();
  compileTime->add_option("--repeats", repeats, "timed compiles per spec")->capture_default_str();
  compileTime->add_flag("--nvrtc-cache", nvrtcCache,
                        "let NVRTC's own compile cache serve repeats (off by default: the times "
                        "are full compiles)");

  autotune::TuneOptions tune;
  std::string devicesText;
  CLI::App *tuneCommand = app.add_subcommand(
      "tune", "Tune decode (per GQA ratio), flush and append of the presets on a GPU. Every "
              "candidate of "
              "the schedule search space is pruned by a static model (shared memory, registers, "
              "occupancy), compiled in parallel, checked against the CPU reference (a short "
              "mixed batch, a 128K-token request, and that request with 8x larger scores for "
              "decode), then timed interleaved with "
              "the others of its group (median and spread of event-timed launches, cold L2). "
              "Stops a spec early once the best reaches --early-stop of the roofline (the "
              "measured read bandwidth). Writes configs/<gpu>.json and a JSON report, rewritten "
              "after every spec so --resume continues an interrupted run. With no options: the "
              "default presets at head_dim 128, GQA ratios 1, 2, 4, 8, on GPU 0.");
  tuneCommand->add_option("--device", tune.device, "GPU ordinal")->capture_default_str();
  tuneCommand->add_option("--preset", tune.presets, "presets")->capture_default_str();
  tuneCommand->add_option("--head-dim", tune.headDim, "head_dim")->capture_default_str();
  tuneCommand->add_option("--q", tune.queryHeadsPerKvHead, "query heads per kv head")
      ->capture_default_str();
  std::string tuneDtype = "f16";
  addDtypeOption(tuneCommand, tuneDtype,
                 "queries and outputs of the decode specs, incoming rows of the append specs "
                 "(flush specs stay f16: the pool is fp16 whatever the model's dtype)");
  tuneCommand->add_option("--batch", tune.batch, "decode batch of the tuning bucket")
      ->capture_default_str();
  tuneCommand->add_option("--context", tune.context, "decode context of the tuning bucket")
      ->capture_default_str();
  std::vector<std::string> alsoBuckets;
  tuneCommand->add_option("--also-at", alsoBuckets,
                          "more decode buckets <batch>x<context> (e.g. 1x131072 32x32768), or grids "
                          "of comma lists (1,4,16x4096,131072: every batch at every context): "
                          "each candidate is timed at every bucket (each once) and scored by the "
                          "geometric mean; with several contexts per batch the configs get "
                          "variants keyed by context");
  tuneCommand->add_option("--configs", tune.configsDirectory, "where to write the configs")
      ->capture_default_str();
  tuneCommand->add_option("--iterations", tune.iterations, "timed launches per candidate (>= 10)")
      ->capture_default_str();
  tuneCommand->add_option("--budget", tune.budgetSeconds,
                          "seconds for the whole run (0: none); specs left are listed, --resume "
                          "continues")
      ->capture_default_str();
  tuneCommand->add_option("--early-stop", tune.earlyStop,
                          "stop a spec once its best reaches this fraction of the roofline (0: off)")
      ->capture_default_str();
  tuneCommand->add_flag("--exhaustive", tune.exhaustive,
                        "measure every candidate and report the regret early stop would have had");
  tuneCommand->add_flag("--graph", tune.graphTiming,
                        "also time CUDA-graph replay of each candidate (one graph of a launch "
                        "per L2-cold copy of the inputs, rested like the event timing; "
                        "reported, not used for the choice)");
  tuneCommand->add_flag_callback(
      "--no-gate", [&tune] { tune.gate = false; },
      "time each launch from an idle GPU (include the host's launch latency) instead of queuing "
      "it behind a 20 us spin kernel, as bench does by default");
  tuneCommand->add_option("--rest", tune.restRatio,
                          "idle time after each timed launch, in multiples of the launch's time, "
                          "so candidates timed back to back do not hold the GPU at its power cap "
                          "(0: back to back)")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  tuneCommand->add_flag("--resume", tune.resume,
                        "skip the specs already in the report (an interrupted run)");
  tuneCommand->add_option("--report", tune.reportPath,
                          "JSON report (default: <configs>/<gpu>.tune.json)");
  tuneCommand->add_option("--compile-threads", tune.compileThreads,
                          "parallel candidate compiles (0: every hardware thread)")
      ->capture_default_str();
  tuneCommand->add_flag("--sink", tune.poolPages.sink,
                        "time decode with block 0 of every request an fp16 pool page (the "
                        "format's sink), as in an engine");
  tuneCommand->add_flag("--tail", tune.poolPages.tail,
                        "time decode with the last block of every request an fp16 pool page (a "
                        "tail not yet flushed), as in an engine");
  tuneCommand->add_flag("!--no-flush", tune.flush, "do not tune flush");
  tuneCommand->add_flag("!--no-decode", tune.decode, "do not tune decode");
  tuneCommand->add_flag("!--no-append", tune.append, "do not tune append");
  bool noIsolation = false, worker = false;
  std::string replayPath;
  tuneCommand->add_option("--replay", replayPath,
                          "no GPU: replay a tuning report's recorded medians with --early-stop and "
                          "print the regret against the report's exhaustive best");
  tuneCommand->add_flag("--no-isolation", noIsolation,
                        "tune in this process (a candidate that crashes the GPU context then "
                        "ends the run; by default a worker process is restarted without it)");
  tuneCommand->add_flag("--worker", worker, "internal: run as the isolated worker")->group("");
  tuneCommand->add_option("--crash-log", tune.crashLog, "internal: the worker's crash log")
      ->group("");
  tuneCommand->add_option("--inject-crash", tune.injectCrash,
                          "test hook: the decode candidate with this full schedule text crashes "
                          "the GPU context in its check (exercises recovery)");
  tuneCommand->add_option("--devices", devicesText,
                          "tune on several GPUs, one worker process each: 'all' or '0,1,...'; "
                          "the results are merged so GPUs of the same silicon get the same "
                          "schedules");

  std::string bundleAction = "inspect", bundlePath, bundleArch = "sm_90a", bundleConfigs;
  CLI::App *bundleCommand = app.add_subcommand(
      "bundle", "Export the default kernel set for an arch into one bundle file, import a bundle "
                "into the cache, or inspect one");
  bundleCommand->add_option("action", bundleAction, "export, import or inspect")
      ->check(CLI::IsMember({"export", "import", "inspect"}))
      ->required();
  bundleCommand->add_option("file", bundlePath, "bundle file")->required();
  bundleCommand->add_option("--arch", bundleArch, "export: target arch")->capture_default_str();
  bundleCommand->add_option("--configs", bundleConfigs, "export: tuned configs JSON to include");

  CLI::App *infoCommand = app.add_subcommand(
      "info", "Show the GPU, driver, NVRTC, the artifact cache, the tuned configs and what the "
              "config lookup picks for the default kernel set");
  std::string infoConfigs = "configs";
  infoCommand->add_option("--configs", infoConfigs, "tuned configs directory")->capture_default_str();
  infoCommand->add_option("--device", tune.device, "GPU ordinal")->capture_default_str();

  std::string cacheAction = "ls";
  CLI::App *cacheCommand = app.add_subcommand(
      "cache", "Inspect the artifact cache ($KVARN_CACHE_DIR, $XDG_CACHE_HOME/kvarn or "
               "~/.cache/kvarn): ls, verify (checksums and keys), clean (corrupt entries, quarantined and "
               "temporary files)");
  cacheCommand->add_option("action", cacheAction, "ls, verify or clean")
      ->check(CLI::IsMember({"ls", "verify", "clean"}))
      ->capture_default_str();

  CLI11_PARSE(app, argc, argv);
  if (app.got_subcommand(bundleCommand))
    return runBundleCommand(bundleAction, bundlePath, bundleArch, bundleConfigs);
  if (app.got_subcommand(tuneCommand)) {
    autotune::followParent(); // a worker ends with the run that started it
    tune.dtype = *parseDtypeField(tuneDtype); // checked by CLI11
    for (const std::string &text : alsoBuckets) {
      Expected<std::vector<std::pair<int, int>>> buckets = autotune::parseBuckets(text);
      if (!buckets) {
        std::fprintf(stderr, "kvarn-tune tune: %s\n", buckets.error().message.c_str());
        return 2;
      }
      tune.alsoBuckets.insert(tune.alsoBuckets.end(), buckets->begin(), buckets->end());
    }
    if (!replayPath.empty()) {
      std::ifstream in(replayPath);
      std::stringstream text;
      text << in.rdbuf();
      std::vector<std::string> lines;
      Expected<autotune::Regret> regret = autotune::replayRegret(text.str(), tune.earlyStop, &lines);
      if (!in || !regret) {
        std::fprintf(stderr, "kvarn-tune tune --replay: %s\n",
                     in ? regret.error().message.c_str() : ("cannot read " + replayPath).c_str());
        return 1;
      }
      for (const std::string &line : lines)
        std::printf("%s\n", line.c_str());
      std::printf("regret of early stop at %.0f%% of the roofline over %d specs: median %.2f%%, "
                  "P90 %.2f%%\n",
                  100 * tune.earlyStop, regret->samples, 100 * regret->median, 100 * regret->p90);
      return 0;
    }
    if (!devicesText.empty()) {
      Expected<std::vector<int>> devices = parseDevices(devicesText);
      if (!devices) {
        std::fprintf(stderr, "kvarn-tune tune: %s\n", devices.error().message.c_str());
        return 1;
      }
      Status status = autotune::runTuneOnDevices(tune, *devices, selfExecutable(argv[0]));
      if (!status) {
        std::fprintf(stderr, "kvarn-tune tune: %s\n", status.error().message.c_str());
        return 1;
      }
      return 0;
    }
    Status status = worker || noIsolation
                        ? autotune::runTune(tune)
                        : autotune::runTuneIsolated(tune, selfExecutable(argv[0]));
    if (!status) {
      std::fprintf(stderr, "kvarn-tune tune: %s\n", status.error().message.c_str());
      return 1;
    }
    return 0;
  }
  if (app.got_subcommand(cacheCommand))
    return runCacheCommand(cacheAction);
  if (app.got_subcommand(infoCommand))
    return runInfo(tune.device, infoConfigs);
  if (app.got_subcommand(compileTime))
    return runCompileTime(timedSpecs, repeats, nvrtcCache);
  if (app.got_subcommand(benchCommand)) {
    bench.dtype = *parseDtypeField(benchDtype); // checked by CLI11
    if (!benchOnly.empty()) {
      auto has = [&](const char *what) {
        return std::find(benchOnly.begin(), benchOnly.end(), what) != benchOnly.end();
      };
      bench.decode = has("decode");
      bench.flush = has("flush");
      bench.append = has("append");
      bench.lookup = has("lookup");
    }
    if (bench.timeline && !bench.decode) {
      std::fprintf(stderr, "kvarn-tune bench: --timeline stamps the decode kernels; it needs the "
                           "decode table (--only decode, or no --only)\n");
      return 1;
    }
    // Knob typos are reported before any GPU work (or the lack of a GPU).
    for (const auto &[option, text, op] :
         {std::tuple{"--schedule", bench.schedule, bench.scheduleOp()},
          std::tuple{"--baseline-schedule", bench.baselineSchedule, OpKind::Decode}})
      if (!text.empty())
        if (Expected<Schedule> parsed = parseSchedule(text, op); !parsed) {
          std::fprintf(stderr, "kvarn-tune bench: %s: %s\n", option,
                       parsed.error().message.c_str());
          return 1;
        }
    Status status = autotune::runBench(bench);
    if (!status) {
      std::fprintf(stderr, "kvarn-tune bench: %s\n", status.error().message.c_str());
      return 1;
    }
    return 0;
  }
  if (app.got_subcommand(quantize))
    return runQuantizeDemo(preset, headDim, iterations, seed);
  if (app.got_subcommand(compile))
    return runCompile(specText, scheduleText, emit, outputPath);
  // The default job: the reference on the default presets, the default kernel set compiled and
  // checked for this GPU (sm_90a without one), then, on a GPU, the benchmark against fp16.
  int rc = 0;
  for (const char *name : {"kvarn_k4v2_g128", "kvarn_k4v4_g128"})
    rc |= runQuantizeDemo(name, 128, kDefaultSinkhornIterations, seed);
  Expected<DeviceInfo> device = openDevice(0);
  const char *configsDirectory = std::getenv("KVARN_CONFIGS_DIR");
  rc |= runCompileDefaultSet(device, configsDirectory ? configsDirectory : "");
  if (!device) {
    std::printf(
        "\nNo GPU here (%s).\nOn a GPU, this command also tunes decode (Q = 1, 2, 4, 8), "
        "flush and append of kvarn_k4v2_g128 and kvarn_k4v4_g128 at head_dim 128 (kvarn-tune "
        "tune: %zu decode schedules per spec before pruning, checked against the CPU "
        "reference, timed; configs/<gpu>.json) and benchmarks decode (D=128, Hq=64, "
        "Hk=8) with the tuned schedules against fp16 paged decode, flush, append and the "
        "kernel lookup (kvarn-tune bench).\n",
        device.error().message.c_str(), scheduleSearchSpace(OpKind::Decode).size());
    return rc;
  }
  if (Status status = autotune::runTuneIsolated(autotune::TuneOptions{}, selfExecutable(argv[0]));
      !status) {
    std::fprintf(stderr, "kvarn-tune: %s\n", status.error().message.c_str());
    return 1;
  }
  autotune::BenchOptions defaults;
  defaults.batches = {1, 8, 32};
  defaults.contexts = {4096, 32768};
  if (Status status = autotune::runBench(defaults); !status) {
    std::fprintf(stderr, "kvarn-tune: %s\n", status.error().message.c_str());
    return 1;
  }
  return rc;
}
