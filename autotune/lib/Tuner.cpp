// Autotuner: search, prune, check, time, select, write configs.
#include "kvarn/Autotune/Tuner.h"

#include "kvarn/Autotune/Timing.h"

#include "kvarn/Compiler/Pipeline.h"
#include "kvarn/launch.h"
#include "kvarn/reference.h"
#include "kvarn/synthetic.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>

namespace kvarn::autotune {

Expected<KernelModule> compileAndLoad(const KernelSpec &spec, const Schedule &schedule,
                                      ArtifactCache &cache) {
  Expected<compiler::CompiledKernel> compiled = compiler::compileKernel(spec, schedule, cache);
  if (!compiled)
    return makeError(compiled.error().code, "compile failed: " + compiled.error().message);
  return KernelModule::load(compiled->cubin, compiled->kernelNames, schedule, compiled->sharedBytes);
}

std::string staticPruneReason(const KernelSpec &spec, const Schedule &schedule) {
  if (Status legal = validateSchedule(spec, schedule); !legal)
    return legal.error().message;
  if (schedule.minCtas == 0)
    return "";
  constexpr int registerFile = 65536, maxRegisters = 255;
  const int threads = schedule.warps * 32;
  // Registers are allocated per warp in units of 8 per thread.
  const int budget = std::min(maxRegisters, registerFile / (schedule.minCtas * threads) / 8 * 8);
  if (registerFile / (schedule.minCtas * threads) >= maxRegisters + 1)
    return "min_ctas = " + std::to_string(schedule.minCtas) + " does not bind (" +
           std::to_string(schedule.minCtas) + " CTAs of " + std::to_string(threads) +
           " threads fit with 255 registers each)";
  if (budget < 128)
    return "min_ctas = " + std::to_string(schedule.minCtas) + " leaves " + std::to_string(budget) +
           " registers per thread (fewer than 128)";
  const size_t smem = sharedMemoryBytes(spec, schedule) + 1024; // + the per-CTA reserve
  if (smem * size_t(schedule.minCtas) > sharedMemoryPerSm(spec.arch))
    return "min_ctas = " + std::to_string(schedule.minCtas) + " CTAs need " +
           std::to_string(smem * size_t(schedule.minCtas)) + " bytes of shared memory; an SM of " +
           spec.arch + " has " + std::to_string(sharedMemoryPerSm(spec.arch));
  return "";
}

TuneResult selectSchedule(const KernelSpec &spec, const std::vector<Schedule> &space,
                          const Measure &measure) {
  TuneResult result;
  result.spec = spec;
  for (const Schedule &schedule : space) {
    Candidate candidate{schedule, "", 0};
    if (std::string reason = staticPruneReason(spec, schedule); !reason.empty()) {
      candidate.rejected = "pruned: " + reason;
    } else if (Expected<double> ms = measure(schedule); !ms) {
      candidate.rejected = ms.error().message;
    } else {
      candidate.ms = *ms;
      const bool better = !result.found || *ms < result.bestMs ||
                          (*ms == result.bestMs && schedule.warps < result.best.warps);
      if (better) {
        result.found = true;
        result.best = schedule;
        result.bestMs = *ms;
      }
    }
    result.candidates.push_back(candidate);
  }
  return result;
}

std::string environmentKey(int computeMajor, int computeMinor, int smCount, int l2Bytes,
                           int memoryClockKhz) {
  return "sm" + std::to_string(computeMajor) + std::to_string(computeMinor) + "-" +
         std::to_string(smCount) + "sm-" + std::to_string(l2Bytes >> 20) + "mb-l2-" +
         std::to_string(memoryClockKhz / 1000) + "mhz";
}

namespace {

const Driver &driver() { return **Driver::get(); }

/// Median time (ms) of one run.
Expected<double> medianMs(const std::function<Status()> &run, int iterations) {
  Expected<std::vector<double>> ms = timeInterleaved({[&](int) { return run(); }}, iterations);
  if (!ms)
    return ms.error();
  return (*ms)[0];
}

template <typename T> Expected<DeviceBuffer> uploaded(const std::vector<T> &host) {
  Expected<DeviceBuffer> buffer = DeviceBuffer::allocate(host.size() * sizeof(T));
  if (buffer && !host.empty())
    if (Status s = buffer->upload(host.data(), host.size() * sizeof(T)); !s)
      return s.error();
  return buffer;
}

Expected<KernelModule> loadChecked(const KernelSpec &spec, const Schedule &schedule,
                                   ArtifactCache &cache) {
  Expected<KernelModule> module = compileAndLoad(spec, schedule, cache);
  if (!module)
    return module.error();
  // Spills are reported, not pruned: at Q = 1 every decode schedule spills a few bytes, and the
  // timing decides whether they matter.
  if (module->localBytes(0) > 0)
    std::printf("  (%s: %d registers, spills %d bytes)\n", schedule.str().c_str(),
                module->registers(0), module->localBytes(0));
  return module;
}

/// One decode correctness case: a synthetic paged cache, queries and the float64 reference.
struct DecodeCheck {
  std::string name;
  synthetic::PagedCache cache;
  std::vector<uint16_t> query, expected;
};

Expected<DecodeCheck> makeDecodeCheck(const KernelSpec &spec, std::string name,
                                      const std::vector<int32_t> &lengths, uint64_t seed) {
  const int hk = 2, hq = hk * spec.queryHeadsPerKvHead;
  DecodeCheck check{std::move(name), synthetic::PagedCache(spec.format, hk, lengths, seed), {}, {}};
  if (!check.cache.status)
    return check.cache.status.error();
  check.query = synthetic::randomQueries(lengths.size() * hq * spec.format.headDim, spec.dtype,
                                         seed + 1);
  reference::DecodeProblem problem;
  problem.format = spec.format;
  problem.batch = int(lengths.size());
  problem.numQueryHeads = hq;
  problem.numKvHeads = hk;
  problem.maxBlocksPerRequest = check.cache.maxBlocks;
  problem.dtype = spec.dtype;
  problem.query = check.query;
  problem.blockTable = check.cache.blockTable;
  problem.seqLens = check.cache.seqLens;
  check.expected.resize(check.query.size());
  if (Status s = reference::decodeQuantized(problem, check.cache.view(), 1, check.expected); !s)
    return s.error();
  return check;
}

/// Runs `module` on a check case with the host planner's splits (NaN-poisoned output) and
/// compares with the float64 reference: relative Frobenius error <= 1e-3.
Status runDecodeCheck(const KernelModule &module, const KernelSpec &spec, const Schedule &schedule,
                      const DecodeCheck &check, const DeviceInfo &info) {
  const synthetic::PagedCache &cache = check.cache;
  const int batch = int(cache.seqLens.size()), d = spec.format.headDim;
  const int maxLen = *std::max_element(cache.seqLens.begin(), cache.seqLens.end());
  const DecodePlan plan = schedule.splits > 0
                              ? DecodePlan{schedule.splits}
                              : planDecode(batch, cache.numKvHeads, maxLen, spec.format.tileTokens,
                                           info.smCount, schedule.warps);
  const size_t rows = check.query.size() / d;
  Expected<DeviceBuffer> dq = uploaded(check.query), dRecords = uploaded(cache.records),
                         dKey = uploaded(cache.poolKey), dValue = uploaded(cache.poolValue),
                         dSlots = uploaded(cache.blockToSlot), dTable = uploaded(cache.blockTable),
                         dLens = uploaded(cache.seqLens),
                         dOut = DeviceBuffer::allocate(check.query.size() * 2),
                         dWork = DeviceBuffer::allocate(rows * plan.numSplits * (d + 1) * 4);
  if (!dq || !dRecords || !dKey || !dValue || !dSlots || !dTable || !dLens || !dOut || !dWork)
    return makeError(ErrorCode::Internal, "cannot allocate the check buffers");
  if (Status s = dOut->fill(0xff); !s)
    return s;
  dev::DecodeParams params{dq->as<void>(), dOut->as<void>(), dRecords->as<unsigned char>(),
                           dKey->as<void>(), dValue->as<void>(), dSlots->as<int>(),
                           dTable->as<int>(), dLens->as<int>(), dWork->as<float>(),
                           dWork->as<float>() + rows * plan.numSplits * d, batch,
                           cache.numKvHeads, cache.maxBlocks, plan.numSplits,
                           1.0f / std::sqrt(float(d))};
  if (Status s = launchDecode(module, params, spec.queryHeadsPerKvHead, plan, nullptr); !s)
    return s;
  if (Status s = KVARN_CU(driver().cuCtxSynchronize()); !s)
    return makeError(s.error().code, "crashed in the check: " + s.error().message);
  std::vector<uint16_t> actual(check.query.size());
  if (Status s = dOut->download(actual.data(), actual.size() * 2); !s)
    return s;
  const double error = reference::relativeFrobeniusError(synthetic::toFloats(actual, spec.dtype),
                                                         synthetic::toFloats(check.expected, spec.dtype));
  if (!(error <= 1e-3))
    return makeError(ErrorCode::InvalidData, "wrong results (" + check.name +
                                                 "): relative error " + std::to_string(error));
  return Status::success();
}

/// Decode candidate: correctness against the float64 reference on a short mixed batch (pool and
/// record pages, partial pages) and on one 128K-token request (where rounding errors of the
/// MMA operands show), then the median time at the bucket (all pages records, a fresh block
/// range per launch). The check cases are built once per spec.
Measure decodeMeasure(const KernelSpec &spec, const TuneOptions &o, const DeviceInfo &info,
                      ArtifactCache &cache) {
  auto checks = std::make_shared<std::vector<DecodeCheck>>();
  return [&, spec, checks](const Schedule &schedule) -> Expected<double> {
    Expected<KernelModule> module = loadChecked(spec, schedule, cache);
    if (!module)
      return module.error();
    const Format &f = spec.format;
    const RecordLayout layout = recordLayout(f);
    const int g = f.tileTokens, d = f.headDim, q = spec.queryHeadsPerKvHead;
    // Step 1. Check.
    if (checks->empty()) {
      for (auto [name, lengths] : {std::pair<std::string, std::vector<int32_t>>{
                                       "short mixed batch", {g + 1, 3 * g + 5, 1}},
                                   {"128K tokens", {128 * 1024}}}) {
        Expected<DecodeCheck> check = makeDecodeCheck(spec, name, lengths, 1234 + checks->size());
        if (!check)
          return check.error();
        checks->push_back(std::move(*check));
      }
    }
    for (const DecodeCheck &check : *checks)
      if (Status s = runDecodeCheck(*module, spec, schedule, check, info); !s)
        return s.error();
    // Timing data: record tiles of the long check (its blocks 1 .. n-2 are records).
    std::vector<uint8_t> records(layout.tileBytesAligned * 4);
    std::copy_n(checks->back().cache.records.begin() + 2 * layout.tileBytesAligned, records.size(),
                records.begin());
    std::vector<uint16_t> emptyPool(size_t(g) * o.numKvHeads * d, 0);
    Expected<DeviceBuffer> dPool = uploaded(emptyPool);
    if (!dPool)
      return dPool.error();
    // Step 2. Time at the bucket: B x context, every page a record, L2-cold block ranges.
    const int pages = (o.context + g - 1) / g, batch = o.batch;
    const size_t bytes = size_t(batch) * o.numKvHeads * pages * layout.tileBytesAligned;
    const int copies = int(std::min<size_t>(8, 2 * size_t(info.l2Bytes) / bytes + 1));
    Expected<DeviceBuffer> bigRecords = DeviceBuffer::allocate(bytes * copies);
    if (!bigRecords)
      return bigRecords.error();
    std::vector<int32_t> bigTable(size_t(copies) * batch * pages), bigSlots(size_t(copies) * batch * pages, -1);
    for (size_t k = 0; k < bigTable.size(); ++k)
      bigTable[k] = int32_t(k);
    std::vector<int32_t> bigLens(batch, o.context);
    std::vector<uint16_t> bigQuery(size_t(batch) * o.numKvHeads * q * d, floatToHalf(0.25f));
    const DecodePlan plan = schedule.splits > 0 ? DecodePlan{schedule.splits}
                                                : planDecode(batch, o.numKvHeads, o.context, g,
                                                             info.smCount, schedule.warps);
    Expected<DeviceBuffer> bq = uploaded(bigQuery), bTable = uploaded(bigTable), bSlots = uploaded(bigSlots),
                           bLens = uploaded(bigLens), bOut = DeviceBuffer::allocate(bigQuery.size() * 2),
                           bWork = DeviceBuffer::allocate(bigQuery.size() / d * plan.numSplits * (d + 1) * 4);
    if (!bq || !bTable || !bSlots || !bLens || !bOut || !bWork)
      return makeError(ErrorCode::Internal, "cannot allocate the timing buffers");
    if (Status s = bigRecords->fillWithPattern(records); !s)
      return s.error();
    int iteration = 0;
    return medianMs(
        [&]() {
          dev::DecodeParams p{bq->as<void>(), bOut->as<void>(), bigRecords->as<unsigned char>(),
                              dPool->as<void>(), dPool->as<void>(), bSlots->as<int>(),
                              bTable->as<int>() + size_t(iteration++ % copies) * batch * pages,
                              bLens->as<int>(), bWork->as<float>(),
                              bWork->as<float>() + bigQuery.size() / d * plan.numSplits * d, batch,
                              o.numKvHeads, pages, plan.numSplits, 1.0f / std::sqrt(float(d))};
          return launchDecode(*module, p, q, plan, nullptr);
        },
        o.iterations);
  };
}

/// Flush candidate: records of random tiles must match the CPU reference's K codes exactly, then
/// the median time of 512 records (64 blocks x 8 kv heads).
Measure flushMeasure(const KernelSpec &spec, const TuneOptions &o, ArtifactCache &cache) {
  return [&, spec](const Schedule &schedule) -> Expected<double> {
    Expected<KernelModule> module = loadChecked(spec, schedule, cache);
    if (!module)
      return module.error();
    const Format &f = spec.format;
    const RecordLayout layout = recordLayout(f);
    const int g = f.tileTokens, d = f.headDim, hk = 8, blocks = 64, entries = blocks * hk;
    std::mt19937_64 rng(99);
    std::normal_distribution<float> normal;
    std::vector<uint16_t> pool(size_t(blocks) * g * hk * d);
    for (uint16_t &x : pool)
      x = floatToHalf(normal(rng) * (1.0f + float(&x - pool.data()) / float(pool.size())));
    std::vector<int32_t> list;
    for (int b = 0; b < blocks; ++b)
      for (int h = 0; h < hk; ++h)
        list.insert(list.end(), {b, h, b});
    Expected<DeviceBuffer> dPool = uploaded(pool), dList = uploaded(list),
                           dStatus = DeviceBuffer::allocate(16),
                           dCache = DeviceBuffer::allocate(size_t(entries) * layout.tileBytesAligned);
    if (!dPool || !dList || !dStatus || !dCache)
      return makeError(ErrorCode::Internal, "cannot allocate the flush buffers");
    if (Status s = dStatus->fill(0); !s)
      return s.error();
    dev::FlushParams params{dPool->as<void>(), dPool->as<void>(), dList->as<int>(),
                            dCache->as<unsigned char>(), dStatus->as<int>(), entries, hk};
    if (Status s = launchFlush(*module, params, nullptr); !s)
      return s.error();
    if (Status s = KVARN_CU(driver().cuCtxSynchronize()); !s)
      return makeError(s.error().code, "crashed in the check: " + s.error().message);
    std::vector<uint8_t> records(size_t(entries) * layout.tileBytesAligned);
    if (Status s = dCache->download(records.data(), records.size()); !s)
      return s.error();
    for (int e = 0; e < 4; ++e) { // a sample of the records
      std::vector<uint8_t> expected(layout.tileBytesAligned);
      const size_t rowBase = (size_t(list[3 * e + 2]) * g * hk + list[3 * e + 1]) * d;
      if (Status s = reference::writeRecord(f, std::span(pool).subspan(rowBase),
                                            std::span(pool).subspan(rowBase), size_t(hk) * d, expected);
          !s)
        return s.error();
      if (!std::equal(expected.begin(), expected.begin() + layout.keyPackedBytes,
                      records.begin() + size_t(e) * layout.tileBytesAligned))
        return makeError(ErrorCode::InvalidData, "wrong results: K codes differ from the reference");
    }
    return medianMs([&]() { return launchFlush(*module, params, nullptr); }, o.iterations);
  };
}

void printResult(const TuneResult &result) {
  std::printf("%s\n", result.spec.str().c_str());
  for (const Candidate &c : result.candidates)
    std::printf("  %-70s %s\n", c.schedule.str().c_str(),
                c.rejected.empty() ? (std::to_string(c.ms) + " ms").c_str() : c.rejected.c_str());
  if (result.found)
    std::printf("  -> %s (%.4f ms)\n", result.best.str().c_str(), result.bestMs);
  else
    std::printf("  -> no valid candidate\n");
}

} // namespace

Status runTune(const TuneOptions &o) {
  Expected<DeviceInfo> info = openDevice(o.device);
  if (!info)
    return info.error();
  ArtifactCache cache(ArtifactCache::Options{});
  nlohmann::json configs;
  configs["environment"] = {{"name", info->name},
                            {"arch", info->arch()},
                            {"sm_count", info->smCount},
                            {"l2_bytes", info->l2Bytes},
                            {"memory_clock_khz", info->memoryClockKhz},
                            {"driver", info->driverVersion},
                            {"nvrtc", nvrtcVersion()},
                            {"kvarn", KVARN_VERSION}};
  configs["bucket"] = {{"batch", o.batch}, {"context", o.context}, {"kv_heads", o.numKvHeads}};
  nlohmann::json entries = nlohmann::json::array();
  auto record = [&](const TuneResult &result) {
    printResult(result);
    if (!result.found)
      return;
    entries.push_back({{"spec", result.spec.str()},
                       {"schedule", result.best.str()},
                       {"median_ms", result.bestMs},
                       {"candidates", result.candidates.size()}});
  };
  for (const std::string &preset : o.presets) {
    Expected<Format> format = parseFormat(preset, o.headDim);
    if (!format)
      return format.error();
    for (int q : o.queryHeadsPerKvHead) {
      KernelSpec spec;
      spec.op = OpKind::Decode;
      spec.format = *format;
      spec.queryHeadsPerKvHead = q;
      spec.arch = info->arch();
      record(selectSchedule(spec, scheduleSearchSpace(OpKind::Decode), decodeMeasure(spec, o, *info, cache)));
    }
    KernelSpec flush;
    flush.op = OpKind::Flush;
    flush.format = *format;
    flush.arch = info->arch();
    record(selectSchedule(flush, scheduleSearchSpace(OpKind::Flush), flushMeasure(flush, o, cache)));
  }
  configs["entries"] = entries;
  std::filesystem::create_directories(o.configsDirectory);
  const std::string path = o.configsDirectory + "/" +
                           environmentKey(info->computeMajor, info->computeMinor, info->smCount,
                                          info->l2Bytes, info->memoryClockKhz) +
                           ".json";
  std::ofstream out(path);
  out << configs.dump(2) << "\n";
  if (!out)
    return makeError(ErrorCode::Io, "cannot write " + path);
  std::printf("tuned configs written to %s\n", path.c_str());
  return Status::success();
}

} // namespace kvarn::autotune
