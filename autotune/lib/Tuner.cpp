// Autotuner: search, prune, check, time, select, write configs.
#include "kvarn/Autotune/Tuner.h"

#include "kvarn/Autotune/Timing.h"

#include "kvarn/Compiler/Pipeline.h"
#include "kvarn/launch.h"
#include "kvarn/reference.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
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

/// Decode candidate: correctness on a small random cache against the float64 reference, then the
/// median time at the bucket (all pages records, a fresh block range per launch).
Measure decodeMeasure(const KernelSpec &spec, const TuneOptions &o, const DeviceInfo &info,
                      ArtifactCache &cache) {
  return [&, spec](const Schedule &schedule) -> Expected<double> {
    Expected<KernelModule> module = loadChecked(spec, schedule, cache);
    if (!module)
      return module.error();
    const Format &f = spec.format;
    const RecordLayout layout = recordLayout(f);
    const int g = f.tileTokens, d = f.headDim, q = spec.queryHeadsPerKvHead, hk = 2;
    // Step 1. Check: two requests, lengths G+1 and 3G+5, every page a record.
    std::mt19937_64 rng(1234);
    std::normal_distribution<float> normal;
    const std::vector<int32_t> lens = {g + 1, 3 * g + 5};
    const int maxBlocks = 4, blocks = 6;
    std::vector<int32_t> table = {0, 1, -1, -1, 2, 3, 4, 5}, slots(blocks, -1);
    std::vector<uint8_t> records(size_t(blocks) * hk * layout.tileBytesAligned);
    std::vector<uint16_t> rows(size_t(g) * hk * d);
    for (int b = 0; b < blocks; ++b) {
      for (uint16_t &x : rows)
        x = floatToHalf(normal(rng));
      for (int h = 0; h < hk; ++h)
        if (Status s = reference::writeRecord(f, std::span(rows).subspan(size_t(h) * d),
                                              std::span(rows).subspan(size_t(h) * d), size_t(hk) * d,
                                              std::span(records).subspan((size_t(b) * hk + h) * layout.tileBytesAligned,
                                                                         layout.tileBytesAligned));
            !s)
          return s.error();
    }
    std::vector<uint16_t> query(size_t(2) * hk * q * d), expected(query.size()), actual(query.size());
    for (uint16_t &x : query)
      x = floatToHalf(normal(rng));
    std::vector<uint16_t> emptyPool(size_t(g) * hk * d, 0);
    reference::DecodeProblem problem;
    problem.format = f;
    problem.batch = 2;
    problem.numQueryHeads = hk * q;
    problem.numKvHeads = hk;
    problem.maxBlocksPerRequest = maxBlocks;
    problem.query = query;
    problem.blockTable = table;
    problem.seqLens = lens;
    if (Status s = reference::decodeQuantized(problem, {records, emptyPool, emptyPool, slots}, 1, expected); !s)
      return s.error();
    const int splits = schedule.splits > 0 ? schedule.splits : 3;
    Expected<DeviceBuffer> dq = uploaded(query), dRecords = uploaded(records), dPool = uploaded(emptyPool),
                           dSlots = uploaded(slots), dTable = uploaded(table), dLens = uploaded(lens),
                           dOut = DeviceBuffer::allocate(query.size() * 2),
                           dWork = DeviceBuffer::allocate(query.size() * splits * 4 + 4096);
    if (!dq || !dRecords || !dPool || !dSlots || !dTable || !dLens || !dOut || !dWork)
      return makeError(ErrorCode::Internal, "cannot allocate the check buffers");
    dev::DecodeParams check{dq->as<void>(), dOut->as<void>(), dRecords->as<unsigned char>(),
                            dPool->as<void>(), dPool->as<void>(), dSlots->as<int>(), dTable->as<int>(),
                            dLens->as<int>(), dWork->as<float>(), dWork->as<float>() + query.size() / d * splits * d,
                            2, hk, maxBlocks, splits, 1.0f / std::sqrt(float(d))};
    if (Status s = launchDecode(*module, check, q, DecodePlan{splits}, nullptr); !s)
      return s.error();
    if (Status s = KVARN_CU(driver().cuCtxSynchronize()); !s)
      return makeError(s.error().code, "crashed in the check: " + s.error().message);
    if (Status s = dOut->download(actual.data(), actual.size() * 2); !s)
      return s.error();
    std::vector<float> a(actual.size()), e(actual.size());
    for (size_t i = 0; i < a.size(); ++i) {
      a[i] = halfToFloat(actual[i]);
      e[i] = halfToFloat(expected[i]);
    }
    const double error = reference::relativeFrobeniusError(a, e);
    if (!(error <= 1e-3))
      return makeError(ErrorCode::InvalidData, "wrong results: relative error " + std::to_string(error));
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
                            {"nvrtc", nvrtcVersion()}};
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
