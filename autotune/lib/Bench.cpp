// GPU benchmarks: bytes counted first, the roofline measured in the same run, medians.
#include "kvarn/files.h"
#include "kvarn/Autotune/Bench.h"
#include "kvarn/Autotune/Timeline.h"
#include "kvarn/Autotune/Timing.h"
#include "kvarn/Autotune/TimingInputs.h"
#include "kvarn/Autotune/Tuner.h"

#include "kvarn/Compiler/Pipeline.h"
#include "kvarn/cache.h"
#include "kvarn/configs.h"
#include "kvarn/jit.h"
#include "kvarn/kvarn.h"
#include "kvarn/launch.h"
#include "kvarn/nvrtc.h"
#include "kvarn/parallel.h"
#include "kvarn/reference.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>

namespace kvarn::autotune {
namespace {

const Driver &driver() { return **Driver::get(); }

/// The schedule of `spec`: the given knobs, else the tuned configs' choice for this GPU (printed
/// with its reason), with its decode variants.
Expected<ScheduleChoice> chooseBenchSchedule(const KernelSpec &spec, const std::string &knobs,
                                             const BenchOptions &o, const DeviceInfo &info) {
  if (!knobs.empty()) {
    Expected<Schedule> parsed = parseSchedule(knobs, spec.op);
    if (!parsed)
      return parsed.error();
    ScheduleChoice explicitChoice;
    explicitChoice.schedule = *parsed;
    explicitChoice.rule = "explicit";
    return explicitChoice;
  }
  ScheduleChoice choice =
      chooseSchedule(loadConfigDirectory(o.configsDirectory), spec, environmentOf(info));
  std::printf("%s: schedule %s (%s)\n", spec.str().c_str(), choice.schedule.str().c_str(),
              choice.explanation.c_str());
  return choice;
}

ArtifactCache &benchCache() {
  static ArtifactCache cache{ArtifactCache::Options{}};
  return cache;
}

/// Compiles (through the default artifact cache) and loads `spec` with `schedule` knobs, or
/// with the configs' choice when `knobs` is empty; `variants` receives the choice's decode
/// variants, each with its module.
Expected<KernelModule> buildKernel(
    const std::string &specText, const std::string &knobs, const BenchOptions &o,
    const DeviceInfo &info, Schedule *chosen = nullptr,
    std::vector<std::pair<ScheduleVariant, KernelModule>> *variants = nullptr) {
  Expected<KernelSpec> spec = parseKernelSpec(specText);
  if (!spec)
    return spec.error();
  Expected<ScheduleChoice> choice = chooseBenchSchedule(*spec, knobs, o, info);
  if (!choice)
    return choice.error();
  if (chosen)
    *chosen = choice->schedule;
  if (variants)
    for (const ScheduleVariant &variant : choice->variants) {
      Expected<KernelModule> module = compileAndLoad(*spec, variant.schedule, benchCache());
      if (!module)
        return module.error();
      variants->emplace_back(variant, std::move(*module));
    }
  return compileAndLoad(*spec, choice->schedule, benchCache());
}

#define KVARN_TRY(expression)                                                                    \
  do {                                                                                           \
    ::kvarn::Status status_ = (expression);                                                      \
    if (!status_)                                                                                \
      return status_;                                                                            \
  } while (0)

Status benchDecode(const BenchOptions &o, const DeviceInfo &info, double bandwidth,
                   const LaunchGate *gate) {
  Expected<Format> format = parseFormat(o.preset, o.headDim);
  if (!format)
    return format.error();
  const RecordLayout layout = recordLayout(*format);
  const int g = format->tileTokens, d = o.headDim, hk = o.numKvHeads;
  const int q = o.numQueryHeads / hk;
  const std::string spec = "decode:" + format->presetName() + ":d" + std::to_string(d) + ":q" +
                           std::to_string(q) + ":" + dtypeField(o.dtype) + ":" + info.arch();
  Schedule schedule, baselineSchedule;
  std::vector<std::pair<ScheduleVariant, KernelModule>> variants; // configs' larger-launch schedules
  Expected<KernelModule> module = buildKernel(spec, o.schedule, o, info, &schedule, &variants);
  if (!module)
    return module.error();
  Expected<KernelModule> baseline = buildKernel(
      spec, o.baselineSchedule.empty() ? defaultSchedule(OpKind::Decode).str() : o.baselineSchedule,
      o, info, &baselineSchedule);
  if (!baseline)
    return baseline.error();
  // bench --timeline: the measured kernels built with the KVARN_TIMELINE stamps, by schedule.
  std::map<std::string, KernelModule> instrumented;
  auto instrumentedOf = [&](const KernelModule &plain) -> Expected<const KernelModule *> {
    const std::string key = plain.schedule().str();
    if (auto found = instrumented.find(key); found != instrumented.end())
      return &found->second;
    Expected<KernelSpec> parsed = parseKernelSpec(spec);
    if (!parsed)
      return parsed.error();
    Expected<KernelModule> built = compileAndLoad(*parsed, plain.schedule(), benchCache(),
                                                  compiler::Instrumentation{true});
    if (!built)
      return built.error();
    return &instrumented.emplace(key, std::move(*built)).first->second;
  };
  BenchReport report;
  report.gpu = info.name + " (" + info.arch() + ", " + std::to_string(info.smCount) + " SMs)";
  report.spec = spec;
  report.schedule = schedule.str();
  report.baselineSchedule = baselineSchedule.str();
  report.bandwidthGBs = bandwidth;
  report.poolPages = o.poolPages;
  std::printf("decode kernel %s: %d registers, %d B local memory, %zu B shared memory\n",
              spec.c_str(), module->registers(0), module->localBytes(0), module->sharedBytes());
  for (const auto &[variant, variantModule] : variants)
    std::printf("  from %s: %s, %d registers, %d B local memory\n",
                describeThresholds(variant).c_str(), variant.schedule.str().c_str(), variantModule.registers(0),
                variantModule.localBytes(0));
  std::printf("fp16 baseline: the same kernel on fp16 pool pages, schedule %s (%d registers)\n",
              report.baselineSchedule.c_str(), baseline->registers(0));
  // A few distinct records, replicated, and copies rotated per launch (TimingInputs.h, which the
  // tuner times on too).
  Expected<std::vector<uint8_t>> pattern = decodeTimingRecords(*format);
  if (!pattern)
    return pattern.error();
  auto copiesOf = [&](size_t bytes) { return coldCopies(bytes, size_t(info.l2Bytes)); };
  // The records and fp16 pools are allocated once, for the largest shape, and every shape uses
  // their beginning: allocating and freeing gigabytes per shape left some shapes on a memory
  // mapping that ran both kernels 5-15% slower than the same shape measured alone.
  size_t maxRecordBytes = 0, maxPoolBytes = 0;
  for (int batch : o.batches)
    for (int context : o.contexts) {
      const size_t tokens = size_t(batch) * hk * context;
      const size_t pages = size_t(batch) * ((context + g - 1) / g);
      const size_t recordCopies = copiesOf(tokens * layout.bytesPerToken());
      const size_t poolCopies = copiesOf(tokens * size_t(d) * 4);
      maxRecordBytes =
          std::max(maxRecordBytes, pages * recordCopies * hk * layout.tileBytesAligned);
      maxPoolBytes = std::max(maxPoolBytes, pages * poolCopies * g * hk * d * 2);
    }
  Expected<DeviceBuffer> records = DeviceBuffer::allocate(maxRecordBytes);
  if (!records)
    return records.error();
  KVARN_TRY(records->fillWithPattern(*pattern));
  // fp16 baseline: the same block walk over fp16 pages of the pool ([slots, G, Hk, D]).
  Expected<DeviceBuffer> poolKey = DeviceBuffer::allocate(maxPoolBytes);
  Expected<DeviceBuffer> poolValue = DeviceBuffer::allocate(maxPoolBytes);
  if (!poolKey || !poolValue)
    return makeError(ErrorCode::Internal, "cannot allocate the fp16 baseline cache");
  KVARN_TRY(KVARN_CU(driver().cuMemsetD32(poolKey->get(), kDecodeTimingPoolWord, poolKey->size() / 4)));
  KVARN_TRY(
      KVARN_CU(driver().cuMemsetD32(poolValue->get(), kDecodeTimingPoolWord, poolValue->size() / 4)));
  if (o.poolPages.any())
    std::printf("KVarN cache: %s of every request an fp16 pool page, the other blocks records\n",
                o.poolPages.describe().c_str());
  std::printf("\n%6s %8s | %10s %9s %6s | %10s %9s %6s | %8s\n", "batch", "context", "kvarn ms",
              "GB/s", "of BW", "fp16 ms", "GB/s", "of BW", "speedup");
  for (int batch : o.batches)
    for (int context : o.contexts) {
      const int pages = (context + g - 1) / g;
      const size_t kvarnBytes = size_t(double(batch) * hk *
                                       o.poolPages.decodeReadBytes(context, g,
                                                                   layout.readBytesPerToken(), d));
      const size_t fp16Bytes = size_t(batch) * hk * context * size_t(d) * 4;
      const int copies = copiesOf(kvarnBytes);
      const int blocks = batch * pages * copies;
      const int fp16Copies = copiesOf(fp16Bytes);
      const int fp16Blocks = batch * pages * fp16Copies;
      std::vector<int32_t> tables(size_t(std::max(copies, fp16Copies)) * batch * pages);
      for (size_t k = 0; k < tables.size(); ++k)
        tables[k] = int32_t(k);
      std::vector<int32_t> quantized(std::max(blocks, fp16Blocks), -1), identity(fp16Blocks);
      // Block k of request b in copy c is block (c * batch + b) * pages + k; a pool page takes
      // the slot of the same block in the baseline's pool (inside it whatever the copy).
      for (int c = 0; c < copies; ++c)
        for (int b = 0; b < batch; ++b)
          for (int k : o.poolPages.blocks(pages))
            quantized[(size_t(c) * batch + b) * pages + k] =
                int32_t((size_t(c % fp16Copies) * batch + b) * pages + k);
      for (int k = 0; k < fp16Blocks; ++k)
        identity[k] = k;
      std::vector<int32_t> lens(batch, context);
      std::vector<uint16_t> queries = decodeTimingQueries(size_t(batch) * o.numQueryHeads * d, o.dtype);
      Expected<DeviceBuffer> dTables = DeviceBuffer::allocate(tables.size() * 4),
                             dQuantized = DeviceBuffer::allocate(quantized.size() * 4),
                             dIdentity = DeviceBuffer::allocate(identity.size() * 4),
                             dLens = DeviceBuffer::allocate(lens.size() * 4),
                             dQuery = DeviceBuffer::allocate(queries.size() * 2),
                             dOut = DeviceBuffer::allocate(queries.size() * 2);
      KVARN_TRY(dTables->upload(tables.data(), tables.size() * 4));
      KVARN_TRY(dQuantized->upload(quantized.data(), quantized.size() * 4));
      KVARN_TRY(dIdentity->upload(identity.data(), identity.size() * 4));
      KVARN_TRY(dLens->upload(lens.data(), lens.size() * 4));
      KVARN_TRY(dQuery->upload(queries.data(), queries.size() * 2));
      std::vector<ScheduleVariant> thresholds;
      std::vector<int64_t> slots = {int64_t(info.smCount) * module->residentCtasPerSm()};
      for (const auto &[variant, variantModule] : variants) {
        thresholds.push_back(variant);
        slots.push_back(int64_t(info.smCount) * variantModule.residentCtasPerSm());
      }
      const int variant = variantForLaunch(thresholds, slots, int64_t(batch) * hk, context);
      const KernelModule &kernel = variant < 0 ? *module : variants[size_t(variant)].second;
      const DecodePlan plan = planDecode(kernel, batch, hk, context, g, info.smCount);
      // The fp16 baseline reads fp16 pages only: no sink split (a page costs the same anywhere).
      const DecodePlan baselinePlan =
          planDecode(*baseline, batch, hk, context, g, info.smCount, /*sinkSplit=*/false);
      const int maxSplits = std::max(plan.numSplits, baselinePlan.numSplits);
      Expected<DeviceBuffer> workspace =
          DeviceBuffer::allocate(decodeWorkspaceBytes(batch, hk, q, d, maxSplits));
      if (!workspace)
        return makeError(ErrorCode::Internal, "cannot allocate the split partials");
      dev::DecodeParams params{};
      params.query = dQuery->as<void>();
      params.out = dOut->as<void>();
      params.cache = records->as<unsigned char>();
      params.poolKey = poolKey->as<void>();
      params.poolValue = poolValue->as<void>();
      params.seqLens = dLens->as<int>();
      params.batch = batch;
      params.numKvHeads = hk;
      params.maxBlocksPerRequest = pages;
      params.softmaxScale = 1.0f / std::sqrt(float(d));
      auto kvarnParams = [&](int iteration) {
        dev::DecodeParams p = params;
        p.blockToSlot = dQuantized->as<int>();
        p.blockTable = dTables->as<int>() + size_t(iteration % copies) * batch * pages;
        bindDecodeWorkspace(p, workspace->as<void>(), q, d, plan.numSplits);
        return p;
      };
      auto fp16Params = [&](int iteration) {
        dev::DecodeParams p = params;
        p.blockToSlot = dIdentity->as<int>();
        p.blockTable = dTables->as<int>() + size_t(iteration % fp16Copies) * batch * pages;
        bindDecodeWorkspace(p, workspace->as<void>(), q, d, baselinePlan.numSplits);
        return p;
      };
      auto runKvarn = [&](int iteration) {
        return launchDecode(kernel, kvarnParams(iteration), q, plan, nullptr);
      };
      auto runFp16 = [&](int iteration) {
        return launchDecode(*baseline, fp16Params(iteration), q, baselinePlan, nullptr);
      };
      Expected<std::vector<double>> ms = timeInterleaved({runKvarn, runFp16}, o.iterations, gate);
      if (!ms)
        return ms.error();
      const double kvarnGBs = kvarnBytes / ((*ms)[0] * 1e-3) / 1e9;
      const double fp16GBs = fp16Bytes / ((*ms)[1] * 1e-3) / 1e9;
      const std::string variantText =
          variant < 0 ? std::string() : variants[size_t(variant)].first.schedule.str();
      std::printf("%6d %8d | %10.4f %9.0f %5.0f%% | %10.4f %9.0f %5.0f%% | %7.2fx  (splits %d%s)\n",
                  batch, context, (*ms)[0], kvarnGBs, 100 * kvarnGBs / bandwidth, (*ms)[1],
                  fp16GBs, 100 * fp16GBs / bandwidth, (*ms)[1] / (*ms)[0], plan.numSplits,
                  variantText.empty() ? "" : (", " + variantText).c_str());
      std::fflush(stdout);
      report.rows.push_back({batch, context, plan.numSplits, (*ms)[0], kvarnGBs, (*ms)[1], fp16GBs,
                             variantText});
      if (o.timeline)
        for (int k = 0; k < 2; ++k) {
          Expected<const KernelModule *> stamped = instrumentedOf(k == 0 ? kernel : *baseline);
          if (!stamped)
            return stamped.error();
          KVARN_TRY(clearDecodeTimeline(**stamped));
          KVARN_TRY(launchDecode(**stamped, k == 0 ? kvarnParams(0) : fp16Params(0), q,
                                 k == 0 ? plan : baselinePlan, nullptr));
          Expected<DecodeTimelineSummary> phases = readDecodeTimeline(**stamped, info.smCount);
          if (!phases)
            return phases.error();
          const int64_t grid =
              int64_t(batch) * hk * (k == 0 ? plan.numSplits : baselinePlan.numSplits);
          std::printf("  timeline %s: %s%s\n", k == 0 ? "kvarn" : "fp16 ",
                      describeDecodeTimeline(*phases).c_str(),
                      grid > dev::DecodeTimeline::CTAS
                          ? (" (the first " + std::to_string(int(dev::DecodeTimeline::CTAS)) +
                             " of " + std::to_string(grid) + " CTAs stamped)")
                                .c_str()
                          : "");
          std::fflush(stdout);
        }
    }
  if (!o.reportPrefix.empty()) {
    for (const auto &[suffix, text] : {std::pair<std::string, std::string>{".json", benchReportJson(report)},
                                       {".html", benchReportHtml(report)}}) {
      if (Status written = writeFileAtomically(o.reportPrefix + suffix, text); !written)
        return written.error();
    }
    std::printf("report: %s.json, %s.html\n", o.reportPrefix.c_str(), o.reportPrefix.c_str());
  }
  return Status::success();
}

/// Flush of 64 blocks x 8 kv heads at D = 128 and 256 (FlushTimingInputs), twice: with the pool
/// tiles in L2 (every launch flushes the tiles the launch before it read) and from HBM (the
/// launches rotate through L2-cold copies of the pools). Bytes moved: the K and V pool tiles read
/// (fp16) and the records written; the kernel is not bound by them (the Sinkhorn sweeps are), so
/// the fraction of the bandwidth says how far from memory-bound it is.
Status benchFlush(const BenchOptions &o, const DeviceInfo &info, double bandwidth,
                  const LaunchGate *gate) {
  std::printf("\n%-18s %5s %8s %5s | %10s %10s %9s %8s %6s\n", "flush", "D", "records", "pool",
              "ms", "us/record", "MB moved", "GB/s", "of BW");
  for (int d : {128, 256}) {
    Expected<Format> format = parseFormat(o.preset, d);
    if (!format)
      return format.error();
    const std::string schedule = o.scheduleOp() == OpKind::Flush ? o.schedule : std::string();
    Expected<KernelModule> module = buildKernel(
        "flush:" + format->presetName() + ":d" + std::to_string(d) + ":q1:f16:" + info.arch(),
        schedule, o, info);
    if (!module)
      return module.error();
    Expected<FlushTimingInputs> inputs = FlushTimingInputs::create(*format, size_t(info.l2Bytes));
    if (!inputs)
      return inputs.error();
    // Timed apart: launches on the cold copies between two warm ones would evict the warm pool.
    for (const bool cold : {false, true}) {
      Expected<std::vector<double>> ms = timeInterleaved(
          {[&](int k) { return launchFlush(*module, inputs->params(cold ? k : 0), nullptr); }},
          o.iterations, gate);
      if (!ms)
        return ms.error();
      const double bytes = inputs->bytesMoved();
      const double gbs = bytes / ((*ms)[0] * 1e-3) / 1e9;
      const std::string copies =
          cold ? ", " + std::to_string(inputs->copies()) + " L2-cold pool copies in turn" : "";
      std::printf("%-18s %5d %8d %5s | %10.4f %10.3f %9.1f %8.0f %5.1f%%   (%d registers, %zu B "
                  "shared%s)\n",
                  format->presetName().c_str(), d, FlushTimingInputs::kEntries, cold ? "HBM" : "L2",
                  (*ms)[0], 1000 * (*ms)[0] / FlushTimingInputs::kEntries, bytes / 1e6, gbs,
                  100.0 * gbs / bandwidth, module->registers(0), module->sharedBytes(),
                  copies.c_str());
    }
  }
  return Status::success();
}

Status benchAppendSchedule(const BenchOptions &o, const DeviceInfo &info, double bandwidth,
                           double copyGbs, const AppendTimingInputs &inputs,
                           const std::string &schedule, const LaunchGate *gate) {
  const int d = inputs.headDim();
  Expected<KernelModule> module =
      buildKernel("append:" + o.preset + ":d" + std::to_string(d) + ":q1:" + dtypeField(o.dtype) +
                      ":" + info.arch(),
                  schedule, o, info);
  if (!module)
    return module.error();
  Expected<std::vector<double>> ms =
      timeInterleaved({[&](int k) { return launchAppend(*module, inputs.params(k), nullptr); }},
                      o.iterations, gate);
  if (!ms)
    return ms.error();
  const double bytes = inputs.bytesMoved();
  const double gbs = bytes / ((*ms)[0] * 1e-3) / 1e9;
  std::printf("append %d tokens x %d kv heads x D=%d, %s rows, schedule '%s' (%s): %.1f MB "
              "moved, %.4f ms, %.0f GB/s, %.0f%% of the measured read bandwidth, %.0f%% of the "
              "copy's rate\n",
              AppendTimingInputs::kTokens, AppendTimingInputs::kKvHeads, d, dtypeName(o.dtype),
              schedule.c_str(), module->schedule().str().c_str(), bytes / 1e6, (*ms)[0], gbs,
              100 * gbs / bandwidth, 100 * gbs / copyGbs);
  return Status::success();
}

/// What a plain copy of append's bytes achieves in the same run (the practical ceiling of a
/// kernel that reads and writes as much): cuMemcpyDtoDAsync of one launch's K and V rows, from
/// the same L2-cold copies in turn. Returns its GB/s (bytes read plus written, as append counts
/// them).
Expected<double> benchAppendCopy(const BenchOptions &o, const AppendTimingInputs &inputs,
                                 double bandwidth, const LaunchGate *gate) {
  Expected<DeviceBuffer> to = DeviceBuffer::allocate(inputs.rowBytes());
  if (!to)
    return to.error();
  Expected<std::vector<double>> ms =
      timeInterleaved({[&](int k) {
                        return KVARN_CU(driver().cuMemcpyDtoDAsync(to->get(), inputs.rows(k),
                                                                   inputs.rowBytes(), nullptr));
                      }},
                      o.iterations, gate);
  if (!ms)
    return ms.error();
  const double bytes = 2.0 * double(inputs.rowBytes());
  const double gbs = bytes / ((*ms)[0] * 1e-3) / 1e9;
  std::printf("copy of the same bytes (cuMemcpyDtoDAsync, %.1f MB read and written, "
              "%d L2-cold copies): %.1f MB moved, %.4f ms, %.0f GB/s, %.0f%% of the measured read "
              "bandwidth\n",
              inputs.rowBytes() / 1e6, inputs.copies(), bytes / 1e6, (*ms)[0], gbs,
              100 * gbs / bandwidth);
  return gbs;
}

Status benchAppend(const BenchOptions &o, const DeviceInfo &info, double bandwidth,
                   const LaunchGate *gate) {
  Expected<AppendTimingInputs> inputs =
      AppendTimingInputs::create(o.headDim, o.dtype, size_t(info.l2Bytes));
  if (!inputs)
    return inputs.error();
  Expected<double> copyGbs = benchAppendCopy(o, *inputs, bandwidth, gate);
  if (!copyGbs)
    return copyGbs.error();
  if (!o.schedule.empty() && o.scheduleOp() == OpKind::Append) // one schedule from --schedule
    return benchAppendSchedule(o, info, bandwidth, *copyGbs, *inputs, o.schedule, gate);
  for (const char *schedule : {"", "warps=2,rows_per_cta=2", "warps=8,rows_per_cta=8",
                               "warps=4,rows_per_cta=8"})
    KVARN_TRY(benchAppendSchedule(o, info, bandwidth, *copyGbs, *inputs, schedule, gate));
  return Status::success();
}

/// A cold start: kvarn_prepare of `spec` on an empty cache directory with the JIT and the tuned
/// configs in `configsDirectory` (its schedule and decode variants compiled), with the JIT's
/// builds on at most `threads` threads (KVARN_HOST_THREADS). Returns the call's ms and, through
/// `kernels`, how many kernels it left in the cache.
Expected<double> timeColdPrepare(const BenchOptions &o, const char *spec, int threads,
                                 size_t *kernels) {
  const std::string dir = std::filesystem::temp_directory_path() / "kvarn-bench-cold-prepare";
  std::filesystem::remove_all(dir);
  const char *previous = std::getenv("KVARN_HOST_THREADS");
  const std::string saved = previous ? previous : "";
  setenv("KVARN_HOST_THREADS", std::to_string(threads).c_str(), 1);
  kvarn_runtime_options options{o.device, dir.c_str(), 1, 0, o.configsDirectory.c_str()};
  kvarn_runtime runtime = nullptr;
  kvarn_status status = kvarn_runtime_create(&options, &runtime);
  double ms = 0.0;
  if (status == KVARN_OK && (status = kvarn_jit_install(runtime)) == KVARN_OK) {
    kvarn_kernel kernel = nullptr;
    const auto start = std::chrono::steady_clock::now();
    status = kvarn_prepare(runtime, spec, nullptr, &kernel);
    ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  }
  const std::string message = status == KVARN_OK ? "" : kvarn_last_error();
  if (runtime)
    kvarn_runtime_destroy(runtime);
  if (previous)
    setenv("KVARN_HOST_THREADS", saved.c_str(), 1);
  else
    unsetenv("KVARN_HOST_THREADS");
  *kernels = ArtifactCache(ArtifactCache::Options{dir}).checkEntries().size();
  std::filesystem::remove_all(dir);
  if (status != KVARN_OK)
    return makeError(ErrorCode::Internal,
                     "cold kvarn_prepare of " + std::string(spec) + ": " + message);
  return ms;
}

} // namespace

/// Hot-path kernel lookup: kvarn_prepare of a spec prepared before (what an engine calls per
/// step), median over 20 batches of 100,000 calls, and the artifact cache's memory hit. Then a
/// cold start of the same spec (empty cache, JIT), its builds one at a time and in parallel.
Status benchLookup(const BenchOptions &o) {
  const std::string dir = std::filesystem::temp_directory_path() / "kvarn-bench-lookup";
  kvarn_runtime_options options{o.device, dir.c_str(), 1, 0, nullptr};
  kvarn_runtime runtime = nullptr;
  if (kvarn_runtime_create(&options, &runtime) != KVARN_OK)
    return makeError(ErrorCode::Unsupported, kvarn_last_error());
  std::unique_ptr<kvarn_runtime_t, void (*)(kvarn_runtime)> owner(runtime, kvarn_runtime_destroy);
  if (kvarn_jit_install(runtime) != KVARN_OK)
    return makeError(ErrorCode::Internal, kvarn_last_error());
  const char *spec = "decode:kvarn_k4v2_g128:d128:q8:f16";
  kvarn_kernel kernel = nullptr;
  if (kvarn_prepare(runtime, spec, nullptr, &kernel) != KVARN_OK)
    return makeError(ErrorCode::Internal, kvarn_last_error());
  constexpr int calls = 100000;
  std::vector<double> ns;
  for (int batch = 0; batch < 20; ++batch) {
    const auto start = std::chrono::steady_clock::now();
    for (int k = 0; k < calls; ++k)
      if (kvarn_prepare(runtime, spec, nullptr, &kernel) != KVARN_OK)
        return makeError(ErrorCode::Internal, kvarn_last_error());
    ns.push_back(std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start)
                     .count() / calls);
  }
  std::sort(ns.begin(), ns.end());
  std::printf("\nkernel lookup (kvarn_prepare of a prepared spec): median %.1f ns per call "
              "(min %.1f, max %.1f; 20 x %d calls)\n",
              ns[ns.size() / 2], ns.front(), ns.back(), calls);
  std::filesystem::remove_all(dir);
  const int threads = hostThreads();
  size_t serialKernels = 0, parallelKernels = 0;
  Expected<double> serial = timeColdPrepare(o, spec, 1, &serialKernels);
  if (!serial)
    return serial.error();
  Expected<double> parallel = timeColdPrepare(o, spec, threads, &parallelKernels);
  if (!parallel)
    return parallel.error();
  std::printf("cold kvarn_prepare of %s (empty cache, JIT, the configs in %s: %zu kernels built): "
              "%.0f ms one build at a time, %.0f ms with up to %d at once\n",
              spec, o.configsDirectory.c_str(), parallelKernels, *serial, *parallel, threads);
  if (serialKernels != parallelKernels)
    return makeError(ErrorCode::Internal, "cold kvarn_prepare built " +
                                              std::to_string(serialKernels) +
                                              " kernels one at a "
                                              "time but " +
                                              std::to_string(parallelKernels) + " in parallel");
  return Status::success();
}

Status runBench(const BenchOptions &options) {
  if (options.lookup) // the cold start's compiles must be full ones (NVRTC reads this once)
    setenv("CUDA_CACHE_DISABLE", "1", 1);
  Expected<DeviceInfo> info = openDevice(options.device);
  if (!info)
    return info.error();
  std::printf("GPU %d: %s (%s, %d SMs, %d MB L2), driver %d, NVRTC %s\n", info->ordinal,
              info->name.c_str(), info->arch().c_str(), info->smCount, info->l2Bytes >> 20,
              info->driverVersion, nvrtcVersion().c_str());
  Expected<double> bandwidth = measureReadBandwidth(*info);
  if (!bandwidth)
    return bandwidth.error();
  std::printf("measured read bandwidth: %.0f GB/s (streaming read of 4 GiB, median of 10)\n",
              *bandwidth);
  Expected<std::optional<LaunchGate>> madeGate = launchGateIf(*info, options.hideLaunchLatency);
  if (!madeGate)
    return madeGate.error();
  const std::optional<LaunchGate> &gate = *madeGate;
  if (gate) {
    std::printf("kernel times exclude the host's launch latency: each timed launch is queued "
                "behind a %u us spin kernel (--no-gate: time from an idle GPU)\n",
                gate->microseconds());
  } else {
    std::printf("kernel times include the host's launch latency (timed from an idle GPU)\n");
  }
  const LaunchGate *g = gate ? &*gate : nullptr;
  if (options.decode)
    KVARN_TRY(benchDecode(options, *info, *bandwidth, g));
  if (options.flush)
    KVARN_TRY(benchFlush(options, *info, *bandwidth, g));
  if (options.append)
    KVARN_TRY(benchAppend(options, *info, *bandwidth, g));
  if (options.lookup)
    KVARN_TRY(benchLookup(options));
  return Status::success();
}

} // namespace kvarn::autotune
