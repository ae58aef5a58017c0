// Autotuner: search, prune, check, time, select, write configs.
#include "kvarn/Autotune/Tuner.h"

#include "kvarn/Autotune/Checks.h"
#include "kvarn/Autotune/Timing.h"
#include "kvarn/Autotune/TimingInputs.h"

#include "kvarn/Autotune/MultiDevice.h"
#include "kvarn/Compiler/Pipeline.h"
#include "kvarn/files.h"
#include "kvarn/launch.h"
#include "kvarn/parallel.h"
#include "kvarn/reference.h"
#include "kvarn/synthetic.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <chrono>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <map>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

namespace kvarn::autotune {

Expected<KernelModule> compileAndLoad(const KernelSpec &spec, const Schedule &schedule,
                                      ArtifactCache &cache,
                                      const compiler::Instrumentation &instrumentation) {
  Expected<compiler::CompiledKernel> compiled =
      compiler::compileKernel(spec, schedule, cache, nullptr, instrumentation);
  if (!compiled)
    return makeError(compiled.error().code, "compile failed: " + compiled.error().message);
  return KernelModule::load(compiled->cubin, compiled->kernelNames, schedule, compiled->sharedBytes);
}

std::string staticPruneReason(const KernelSpec &spec, const Schedule &schedule) {
  if (Status legal = validateSchedule(spec, schedule); !legal)
    return legal.error().message;
  if (schedule.minCtas == 0)
    return "";
  const int threads = schedule.warps * 32;
  const int budget = scheduleRegisterBudget(schedule);
  // Any explicit bound changes how ptxas allocates: without one it may stop well below its cap
  // (the B = 1 decode kernel at 192 registers, 255 with min_ctas = 1, docs/benchmarks.md), so
  // min_ctas = 1 stays a candidate; a larger bound that leaves 255 registers sets the same cap.
  if (budget >= 255 && schedule.minCtas > 1)
    return "min_ctas = " + std::to_string(schedule.minCtas) + " does not bind (" +
           std::to_string(schedule.minCtas) + " CTAs of " + std::to_string(threads) +
           " threads fit with 255 registers each: the cap of min_ctas = 1)";
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

namespace {

bool betterThan(const Schedule &schedule, double ms, bool found, const Schedule &best,
                double bestMs) {
  return !found || ms < bestMs || (ms == bestMs && schedule.warps < best.warps);
}

std::string percent(double fraction) {
  char text[16];
  std::snprintf(text, sizeof(text), "%.0f%%", 100.0 * fraction);
  return text;
}

std::string formatRatio(double ratio) {
  char text[32];
  std::snprintf(text, sizeof(text), "%g", ratio);
  return text;
}

} // namespace

int staticCtasPerSm(const KernelSpec &spec, const Schedule &schedule) {
  // CTAs per SM bounded by shared memory, by registers (255 per thread, or min_ctas CTAs where
  // that bound binds: it is a lower bound, so min_ctas = 1 does not mean one CTA) and by 64 warps
  // per SM.
  constexpr double registerFile = 65536, maxWarps = 64;
  const double threads = 32.0 * schedule.warps;
  const double bySharedMemory =
      std::floor(double(sharedMemoryPerSm(spec.arch)) / double(sharedMemoryBytes(spec, schedule) + 1024));
  const double byRegisters =
      std::max(double(schedule.minCtas), std::floor(registerFile / (255.0 * threads)));
  return int(std::max(1.0, std::min({bySharedMemory, byRegisters, std::floor(maxWarps / schedule.warps)})));
}

double predictedCost(const KernelSpec &spec, const Schedule &schedule) {
  if (spec.op != OpKind::Decode && spec.op != OpKind::Extend)
    return 1.0;
  const double ctas = staticCtasPerSm(spec, schedule);
  const double activeWarps = ctas * schedule.warps;
  // Tensor-core work per page relative to one fp16 term per operand.
  const MmaVariant *mma = findMma(schedule.mma);
  const double terms = mma ? 0.5 * (mma->queryTerms + mma->weightTerms) : 2.0;
  return terms / std::min(activeWarps, 16.0);
}

TuneResult selectSchedule(const KernelSpec &spec, const std::vector<Schedule> &space,
                          const MeasureGroup &measure, const SelectOptions &o) {
  TuneResult result;
  result.spec = spec;
  result.rooflineMs = o.rooflineMs;
  // Step 1. Static pruning.
  std::vector<size_t> pending;
  for (const Schedule &schedule : space) {
    Candidate candidate{schedule, "", {}, 0};
    if (std::string reason = staticPruneReason(spec, schedule); !reason.empty())
      candidate.rejected = "pruned: " + reason;
    else
      pending.push_back(result.candidates.size());
    result.candidates.push_back(candidate);
  }
  // Measure the most promising first (early stop then has the likely winners in hand).
  std::stable_sort(pending.begin(), pending.end(), [&](size_t a, size_t b) {
    return predictedCost(spec, result.candidates[a].schedule) <
           predictedCost(spec, result.candidates[b].schedule);
  });
  // Step 2. Groups, until the end, the budget or (without `exhaustive`) an early stop.
  const size_t group = size_t(std::max(1, o.group));
  bool early = false;
  for (size_t start = 0; start < pending.size(); start += group) {
    std::string skip;
    if (o.outOfBudget && o.outOfBudget())
      skip = "time budget spent";
    else if (early && !o.exhaustive)
      skip = "early stop: the best is at " + percent(o.rooflineMs / result.bestMs) +
             " of the roofline (target " + percent(o.earlyStop) + ")";
    if (!skip.empty()) {
      result.stopped = skip;
      for (size_t k = start; k < pending.size(); ++k)
        result.candidates[pending[k]].rejected = "not measured: " + skip;
      break;
    }
    std::vector<Schedule> schedules;
    for (size_t k = start; k < std::min(pending.size(), start + group); ++k)
      schedules.push_back(result.candidates[pending[k]].schedule);
    std::vector<Expected<Timing>> timings = measure(schedules);
    for (size_t k = 0; k < schedules.size(); ++k) {
      Candidate &c = result.candidates[pending[start + k]];
      if (k >= timings.size()) {
        c.rejected = "not measured: the measurement returned no result";
      } else if (!timings[k]) {
        c.rejected = timings[k].error().message;
      } else {
        c.timing = *timings[k];
        c.ms = c.timing.medianMs;
        if (betterThan(c.schedule, c.ms, result.found, result.best, result.bestMs)) {
          result.found = true;
          result.best = c.schedule;
          result.bestMs = c.ms;
        }
      }
    }
    if (o.progress)
      o.progress(std::min(pending.size(), start + group), pending.size());
    if (!early && o.earlyStop > 0 && o.rooflineMs > 0 && result.found &&
        o.rooflineMs / result.bestMs >= o.earlyStop) {
      early = true;
      result.earlyFound = true;
      result.earlyBest = result.best;
      result.earlyMs = result.bestMs;
    }
  }
  if (!early) {
    result.earlyFound = result.found;
    result.earlyBest = result.best;
    result.earlyMs = result.bestMs;
  }
  return result;
}

TuneResult selectSchedule(const KernelSpec &spec, const std::vector<Schedule> &space,
                          const Measure &measure) {
  SelectOptions options;
  options.group = 1;
  return selectSchedule(
      spec, space,
      [&](const std::vector<Schedule> &group) {
        std::vector<Expected<Timing>> out;
        for (const Schedule &schedule : group) {
          Expected<double> ms = measure(schedule);
          if (!ms) {
            out.push_back(ms.error());
            continue;
          }
          Timing t;
          t.medianMs = t.p10Ms = t.p90Ms = *ms;
          t.samples = 1;
          out.push_back(t);
        }
        return out;
      },
      options);
}

Expected<Regret> replayRegret(const std::string &reportJson, double earlyStop,
                              std::vector<std::string> *lines) {
  Expected<std::vector<TuneResult>> recorded = resultsFromJson(reportJson);
  if (!recorded)
    return recorded.error();
  std::vector<TuneResult> replayed;
  for (const TuneResult &r : *recorded) {
    std::vector<Schedule> space;
    for (const Candidate &c : r.candidates)
      space.push_back(c.schedule);
    SelectOptions options;
    options.rooflineMs = r.rooflineMs;
    options.earlyStop = earlyStop;
    options.exhaustive = true;
    TuneResult again = selectSchedule(
        r.spec, space,
        [&](const std::vector<Schedule> &group) {
          std::vector<Expected<Timing>> out;
          for (const Schedule &s : group) {
            auto c = std::find_if(r.candidates.begin(), r.candidates.end(),
                                  [&](const Candidate &k) { return k.schedule == s; });
            if (c->rejected.empty())
              out.push_back(c->timing);
            else
              out.push_back(makeError(ErrorCode::Internal, c->rejected));
          }
          return out;
        },
        options);
    if (lines && again.found) {
      char text[256];
      std::snprintf(text, sizeof(text), "%s: early %.4f ms, best %.4f ms, regret %.2f%%",
                    r.spec.str().c_str(), again.earlyMs, again.bestMs,
                    100 * (again.earlyMs - again.bestMs) / again.bestMs);
      lines->push_back(text);
    }
    replayed.push_back(std::move(again));
  }
  return regretOf(replayed);
}

DecodeSchedules decodeSchedulesByWork(const TuneResult &result,
                                      const std::vector<int64_t> &bucketWork, double minGain,
                                      const std::function<int64_t(const Schedule &)> &slots,
                                      const std::vector<int64_t> &bucketContext) {
  DecodeSchedules out;
  out.base = result.best;
  out.baseMs = result.bestMs;
  if (!result.found || bucketWork.size() < 2)
    return out;
  const size_t buckets = bucketWork.size();
  auto contextOf = [&](size_t b) {
    return bucketContext.size() == buckets ? bucketContext[b] : int64_t(0);
  };
  auto timedEverywhere = [&](const Candidate &c) {
    return c.rejected.empty() && c.timing.bucketMs.size() == buckets;
  };
  auto logMs = [](const Candidate &c, size_t b) {
    return std::log(std::max(c.timing.bucketMs[b], 1e-9));
  };
  auto groupMs = [&](const Candidate &c, const std::vector<size_t> &group) {
    double logSum = 0;
    for (size_t b : group)
      logSum += logMs(c, b);
    return std::exp(logSum / double(group.size()));
  };
  auto candidateOf = [&](const Schedule &schedule) -> const Candidate * {
    for (const Candidate &c : result.candidates)
      if (c.schedule == schedule && timedEverywhere(c))
        return &c;
    return nullptr;
  };
  if (!candidateOf(result.best))
    return out;
  // Levels by ascending work, then context: (w, 0) over the buckets of work w at its shortest
  // context, then for each longer context c of w's buckets (w, c) over those of at least c
  // tokens. A variant chosen at (w, 0) holds from w pairs at any length; one at (w, c) from w
  // pairs and c tokens.
  struct Level {
    int64_t work, minContext;
    std::vector<size_t> group;
    std::vector<size_t> sameWork; ///< every bucket of this work
  };
  std::vector<Level> levels;
  {
    std::vector<std::pair<int64_t, int64_t>> keys;
    for (size_t b = 0; b < buckets; ++b)
      keys.push_back({bucketWork[b], contextOf(b)});
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    for (const auto &[work, context] : keys) {
      const bool firstOfWork = levels.empty() || levels.back().work != work;
      Level level{work, firstOfWork ? 0 : context, {}};
      for (size_t b = 0; b < buckets; ++b)
        if (bucketWork[b] == work) {
          level.sameWork.push_back(b);
          if (firstOfWork ? contextOf(b) == context : contextOf(b) >= context)
            level.group.push_back(b);
        }
      levels.push_back(std::move(level));
    }
  }
  // The base, the variants so far and their candidates, as the runtime sees them.
  std::vector<const Candidate *> inForce = {candidateOf(result.best)};
  auto slotsOf = [&](const std::vector<const Candidate *> &chain) {
    std::vector<int64_t> list;
    if (slots)
      for (const Candidate *c : chain)
        list.push_back(slots(c->schedule));
    return list;
  };
  auto wavesOf = [&](const Schedule &schedule, int64_t work) { // 0 without occupancy
    if (!slots)
      return 0;
    return int(std::min<int64_t>(launchWaves(work, slots(schedule)), INT32_MAX));
  };
  auto runsAt = [&](const std::vector<ScheduleVariant> &variants,
                    const std::vector<const Candidate *> &chain, const std::vector<size_t> &group,
                    int index) {
    return std::all_of(group.begin(), group.end(), [&](size_t b) {
      return variantForLaunch(variants, slotsOf(chain), bucketWork[b], contextOf(b)) == index;
    });
  };
  auto runningMs = [&](const std::vector<size_t> &group) { // what the runtime runs, bucket by bucket
    double logSum = 0;
    for (size_t b : group) {
      const int k = variantForLaunch(out.variants, slotsOf(inForce), bucketWork[b], contextOf(b));
      logSum += logMs(*inForce[size_t(k + 1)], b);
    }
    return std::exp(logSum / double(group.size()));
  };
  for (size_t l = 0; l < levels.size(); ++l) {
    const Level &level = levels[l];
    const double currentMs = runningMs(level.group);
    // A size's first level decides on its shortest context, but its choice runs at every
    // context of that size until a longer context's level overrides it: a candidate slower than
    // the running schedules over all of the size's buckets is not taken.
    const bool guardLonger = l > 0 && level.minContext == 0 && level.sameWork.size() > level.group.size();
    const double currentAllMs = guardLonger ? runningMs(level.sameWork) : 0;
    const Candidate *fastest = nullptr;
    double fastestMs = 0;
    for (const Candidate &c : result.candidates) {
      if (!timedEverywhere(c))
        continue;
      if (l > 0 && slots) { // would the runtime run c as a new variant at this level's buckets?
        std::vector<const Candidate *> chain = inForce;
        chain.push_back(&c);
        std::vector<ScheduleVariant> withC = out.variants;
        withC.push_back({int(level.work), c.schedule, 0, int(level.minContext),
                         wavesOf(c.schedule, level.work)});
        if (!runsAt(withC, chain, level.group, int(withC.size()) - 1))
          continue;
      }
      if (guardLonger && groupMs(c, level.sameWork) > currentAllMs)
        continue;
      if (!fastest || groupMs(c, level.group) < fastestMs) {
        fastest = &c;
        fastestMs = groupMs(c, level.group);
      }
    }
    // The base has no incumbent at the smallest launches (the geometric-mean winner is chosen
    // over all buckets, where larger launches weigh as much), so the fastest there simply wins;
    // a variant, keyed by context or not, must beat what the runtime would otherwise run by
    // minGain. (Variants keyed by context needed twice that while the tuner's times differed
    // from the bench's by more than the bar; docs/benchmarks.md.)
    const double bar = l == 0 ? 1.0 : 1.0 - minGain;
    if (!fastest || fastestMs >= bar * currentMs)
      continue;
    if (l == 0) { // the smallest launches: a new base
      out.base = fastest->schedule;
      out.baseMs = fastest->timing.medianMs;
      inForce[0] = fastest;
    } else if (level.work <= (int64_t(1) << 30) && level.minContext <= INT32_MAX) {
      // A variant of the same schedule that the launch reaches but the runtime steps back from
      // here for its waves: measured fastest here, it keeps this many waves (which also covers
      // the launch sizes between its level and this one) instead of a new variant. Only at a
      // size's first level: more waves run the variant at every context of the size, so a
      // level keyed by context gets a variant of its own instead.
      bool extended = false;
      for (int j = int(out.variants.size()) - 1; j >= 0 && !extended && level.minContext == 0;
           --j) {
        ScheduleVariant &v = out.variants[size_t(j)];
        const int needed = wavesOf(v.schedule, level.work);
        if (!(v.schedule == fastest->schedule) || needed <= v.maxWaves)
          continue;
        const int kept = v.maxWaves;
        v.maxWaves = needed;
        extended = runsAt(out.variants, inForce, level.group, j);
        if (!extended)
          v.maxWaves = kept;
      }
      if (!extended) {
        out.variants.push_back({int(level.work), fastest->schedule, fastestMs,
                                int(level.minContext), wavesOf(fastest->schedule, level.work)});
        inForce.push_back(fastest);
      }
    } else {
      break;
    }
  }
  return out;
}

void addDecodeVariants(std::vector<TuneResult> &results, const TuneOptions &o, int smCount,
                       const std::function<void(const std::string &)> &log) {
  std::vector<int64_t> work, contexts;
  for (const auto &[batch, context] : decodeBuckets(o)) {
    work.push_back(int64_t(batch) * o.numKvHeads);
    contexts.push_back(context);
  }
  for (TuneResult &r : results) {
    if (r.spec.op != OpKind::Decode)
      continue;
    const KernelSpec spec = r.spec;
    std::function<int64_t(const Schedule &)> slots;
    if (smCount > 0)
      slots = [&](const Schedule &s) { return int64_t(smCount) * staticCtasPerSm(spec, s); };
    const DecodeSchedules byWork = decodeSchedulesByWork(r, work, 0.02, slots, contexts);
    r.hasConfigBase = !(byWork.base == r.best);
    r.configBase = byWork.base;
    r.configBaseMs = byWork.baseMs;
    r.variants = byWork.variants;
    if (!log)
      continue;
    if (r.hasConfigBase)
      log(r.spec.str() + ": the smallest launches " + byWork.base.str());
    for (const ScheduleVariant &v : r.variants)
      log(r.spec.str() + ": from " + describeThresholds(v) + " " + v.schedule.str() + " (" +
          std::to_string(v.medianMs) + " ms at those buckets)");
  }
}

std::string configEntriesJson(const std::vector<TuneResult> &results) {
  nlohmann::json entries = nlohmann::json::array();
  for (const TuneResult &r : results)
    if (r.found) {
      const Schedule &schedule = r.hasConfigBase ? r.configBase : r.best;
      const double ms = r.hasConfigBase ? r.configBaseMs : r.bestMs;
      nlohmann::json entry = {{"spec", r.spec.str()},
                              {"schedule", schedule.str()},
                              {"median_ms", ms},
                              {"fraction_of_roofline", r.rooflineMs > 0 ? r.rooflineMs / ms : 0.0},
                              {"candidates", r.candidates.size()}};
      if (!r.variants.empty()) {
        nlohmann::json variants = nlohmann::json::array();
        for (const ScheduleVariant &v : r.variants) {
          nlohmann::json variant = {{"min_work_items", v.minWorkItems},
                                    {"schedule", v.schedule.str()},
                                    {"median_ms", v.medianMs}};
          if (v.minContext > 0)
            variant["min_context"] = v.minContext;
          if (v.maxWaves > 0)
            variant["max_waves"] = v.maxWaves;
          variants.push_back(variant);
        }
        entry["variants"] = variants;
      }
      entries.push_back(entry);
    }
  return entries.dump();
}

namespace {
/// The existing configs file parsed (null when there is none), or an error naming `path` when
/// it is not a configs file.
Expected<nlohmann::json> existingConfigs(const std::string &existingFile, const std::string &path) {
  if (existingFile.empty())
    return nlohmann::json();
  nlohmann::json existing = nlohmann::json::parse(existingFile, nullptr, false);
  if (existing.is_discarded() || !existing.is_object() || !existing.contains("entries") ||
      !existing["entries"].is_array())
    return makeError(ErrorCode::InvalidArgument,
                     path + " exists but is not a configs file (no \"entries\" array); it was "
                            "left as it is: move it away or fix it, then run again with --resume");
  return existing;
}

/// mergeConfigEntries on parsed configs (`existing`: existingConfigs; `run`: a JSON array).
nlohmann::json mergedEntries(const nlohmann::json &existing, const nlohmann::json &run) {
  if (existing.is_null())
    return run;
  auto specOf = [](const nlohmann::json &entry) {
    return entry.is_object() && entry.contains("spec") && entry["spec"].is_string()
               ? entry["spec"].get<std::string>()
               : std::string();
  };
  nlohmann::json merged = nlohmann::json::array();
  for (const nlohmann::json &entry : existing["entries"]) {
    const std::string spec = specOf(entry);
    auto tunedNow = [&](const nlohmann::json &r) { return specOf(r) == spec; };
    if (std::none_of(run.begin(), run.end(), tunedNow))
      merged.push_back(entry);
  }
  for (const nlohmann::json &entry : run)
    merged.push_back(entry);
  return merged;
}
} // namespace

Expected<std::string> mergeConfigEntries(const std::string &existingFile, const std::string &path,
                                         const std::string &runEntries) {
  Expected<nlohmann::json> existing = existingConfigs(existingFile, path);
  if (!existing)
    return existing.error();
  return mergedEntries(*existing, nlohmann::json::parse(runEntries)).dump();
}

Status resumableWith(const std::vector<TuneResult> &results, const TuneOptions &options) {
  auto named = [](const std::string &key) {
    return key.empty() ? std::string("every page a record") : "pool pages " + key;
  };
  for (const TuneResult &r : results)
    if (r.spec.op == OpKind::Decode && r.poolPages != options.poolPages.key())
      return makeError(ErrorCode::InvalidArgument,
                       r.spec.str() + " was timed with " + named(r.poolPages) +
                           ", this run times " + named(options.poolPages.key()) +
                           " (--sink, --tail): run without --resume, or with the same flags");
  return Status::success();
}

std::vector<KernelSpec> specsToTune(const std::vector<KernelSpec> &plan,
                                    const std::vector<TuneResult> &done) {
  std::vector<KernelSpec> todo;
  for (const KernelSpec &spec : plan)
    if (std::none_of(done.begin(), done.end(), [&](const TuneResult &r) { return r.spec == spec; }))
      todo.push_back(spec);
  return todo;
}

Regret regretOf(const std::vector<TuneResult> &results) {
  std::vector<double> regrets;
  for (const TuneResult &r : results)
    if (r.found && r.earlyFound && r.bestMs > 0)
      regrets.push_back((r.earlyMs - r.bestMs) / r.bestMs);
  Regret regret;
  regret.samples = int(regrets.size());
  if (regrets.empty())
    return regret;
  std::sort(regrets.begin(), regrets.end());
  regret.median = regrets[regrets.size() / 2];
  regret.p90 = regrets[std::min(regrets.size() - 1,
                                size_t(std::ceil(0.9 * double(regrets.size()))) - 1)];
  return regret;
}

std::string resultsToJson(const std::vector<TuneResult> &results, const std::string &environment) {
  nlohmann::json list = nlohmann::json::array();
  for (const TuneResult &r : results) {
    nlohmann::json candidates = nlohmann::json::array();
    for (const Candidate &c : r.candidates) {
      nlohmann::json item = {{"schedule", c.schedule.str()}};
      if (!c.rejected.empty())
        item["rejected"] = c.rejected;
      else
      {
        item["timing"] = {{"median_ms", c.timing.medianMs}, {"p10_ms", c.timing.p10Ms},
                          {"p90_ms", c.timing.p90Ms},       {"graph_ms", c.timing.graphMs},
                          {"samples", c.timing.samples}};
        if (!c.timing.bucketMs.empty())
          item["timing"]["bucket_ms"] = c.timing.bucketMs;
      }
      candidates.push_back(item);
    }
    nlohmann::json item = {{"spec", r.spec.str()},      {"found", r.found},
                           {"roofline_ms", r.rooflineMs}, {"stopped", r.stopped},
                           {"candidates", candidates}};
    if (r.spec.op == OpKind::Decode)
      item["pool_pages"] = r.poolPages;
    if (r.found) {
      item["best"] = r.best.str();
      item["best_ms"] = r.bestMs;
      item["fraction_of_roofline"] = r.rooflineMs > 0 ? r.rooflineMs / r.bestMs : 0.0;
    }
    if (r.earlyFound)
      item["early"] = {{"best", r.earlyBest.str()}, {"ms", r.earlyMs}};
    list.push_back(item);
  }
  return nlohmann::json{{"environment", environment}, {"results", list}}.dump(2) + "\n";
}

Expected<std::vector<TuneResult>> resultsFromJson(const std::string &text) {
  auto bad = [](const std::string &what) {
    return makeError(ErrorCode::InvalidData, "tuning report: " + what);
  };
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object() || !json.contains("results") ||
      !json["results"].is_array())
    return bad("not a report (no 'results' array)");
  std::vector<TuneResult> results;
  try {
    for (const nlohmann::json &item : json["results"]) {
      TuneResult r;
      Expected<KernelSpec> spec = parseKernelSpec(item.at("spec").get<std::string>());
      if (!spec)
        return bad(spec.error().message);
      r.spec = *spec;
      r.found = item.at("found").get<bool>();
      r.rooflineMs = item.value("roofline_ms", 0.0);
      r.stopped = item.value("stopped", std::string());
      r.poolPages = item.value("pool_pages", std::string());
      auto schedule = [&](const std::string &text) -> Expected<Schedule> {
        return parseSchedule(text, r.spec.op);
      };
      if (r.found) {
        Expected<Schedule> best = schedule(item.at("best").get<std::string>());
        if (!best)
          return bad(best.error().message);
        r.best = *best;
        r.bestMs = item.at("best_ms").get<double>();
      }
      if (item.contains("early")) {
        Expected<Schedule> early = schedule(item["early"].at("best").get<std::string>());
        if (!early)
          return bad(early.error().message);
        r.earlyFound = true;
        r.earlyBest = *early;
        r.earlyMs = item["early"].at("ms").get<double>();
      }
      for (const nlohmann::json &c : item.at("candidates")) {
        Expected<Schedule> s = schedule(c.at("schedule").get<std::string>());
        if (!s)
          return bad(s.error().message);
        Candidate candidate{*s, c.value("rejected", std::string()), {}, 0};
        if (c.contains("timing")) {
          const nlohmann::json &t = c["timing"];
          candidate.timing = {t.value("median_ms", 0.0), t.value("p10_ms", 0.0),
                              t.value("p90_ms", 0.0), t.value("graph_ms", 0.0),
                              t.value("samples", 0),
                              t.value("bucket_ms", std::vector<double>())};
          candidate.ms = candidate.timing.medianMs;
        }
        r.candidates.push_back(candidate);
      }
      results.push_back(std::move(r));
    }
  } catch (const nlohmann::json::exception &e) {
    return bad(std::string("malformed entry: ") + e.what());
  }
  return results;
}

std::string environmentKey(int computeMajor, int computeMinor, int smCount, int l2Bytes,
                           int memoryClockKhz) {
  return "sm" + std::to_string(computeMajor) + std::to_string(computeMinor) + "-" +
         std::to_string(smCount) + "sm-" + std::to_string(l2Bytes >> 20) + "mb-l2-" +
         std::to_string(memoryClockKhz / 1000) + "mhz";
}

namespace {

const Driver &driver() { return **Driver::get(); }

/// One line of progress: rewritten in place on a terminal, plain lines when piped.
class Progress {
public:
  Progress() : terminal_(isatty(fileno(stdout)) != 0) {}
  void status(const std::string &text) {
    if (terminal_) {
      std::printf("\r\033[K%s", text.c_str());
      std::fflush(stdout);
    }
  }
  void line(const std::string &text) {
    std::printf(terminal_ ? "\r\033[K%s\n" : "%s\n", text.c_str());
    std::fflush(stdout);
  }

private:
  bool terminal_;
};

/// One decode correctness case: a synthetic paged cache (shared by the cases that differ only in
/// their softmax scale), queries and the float64 reference.
struct DecodeCheck {
  std::string name;
  std::shared_ptr<const synthetic::PagedCache> cache;
  std::vector<uint16_t> query, expected;
  std::vector<float> unconverted; ///< the reference's outputs before their dtype conversion
  float softmaxScale;
};

/// A check case on `cache` (two kv heads); the softmax scale is `scoreScale` / sqrt(D) (above 1:
/// peakier scores).
Expected<DecodeCheck> makeDecodeCheck(const KernelSpec &spec, std::string name,
                                      std::shared_ptr<const synthetic::PagedCache> cache,
                                      uint64_t querySeed, float scoreScale) {
  const int hq = cache->numKvHeads * spec.queryHeadsPerKvHead;
  const int batch = int(cache->seqLens.size());
  DecodeCheck check{std::move(name), std::move(cache), {}, {}, {},
                    scoreScale / std::sqrt(float(spec.format.headDim))};
  check.query = synthetic::randomQueries(size_t(batch) * hq * spec.format.headDim, spec.dtype,
                                         querySeed);
  reference::DecodeProblem problem;
  problem.format = spec.format;
  problem.batch = batch;
  problem.numQueryHeads = hq;
  problem.numKvHeads = check.cache->numKvHeads;
  problem.maxBlocksPerRequest = check.cache->maxBlocks;
  problem.dtype = spec.dtype;
  problem.softmaxScale = check.softmaxScale;
  problem.query = check.query;
  problem.blockTable = check.cache->blockTable;
  problem.seqLens = check.cache->seqLens;
  check.expected.resize(check.query.size());
  check.unconverted.resize(check.query.size());
  if (Status s = reference::decodeQuantized(problem, check.cache->view(), 1, check.expected,
                                            check.unconverted);
      !s)
    return s.error();
  return check;
}

/// The tuner's decode check cases for `spec`: a short mixed batch, a 128K-token request, and the
/// same request with scores eight times larger (peaked scores catch a q' rounded once, whose
/// error grows with the scores' scale: docs/benchmarks.md, eighteenth session).
Expected<std::vector<DecodeCheck>> makeDecodeChecks(const KernelSpec &spec) {
  struct CheckCase {
    std::string name;
    size_t cache; ///< index into `caches`
    float scoreScale;
  };
  const int g = spec.format.tileTokens, hk = 2;
  const std::vector<std::vector<int32_t>> lengths = {{g + 1, 3 * g + 5, 1}, {128 * 1024}};
  std::vector<std::shared_ptr<const synthetic::PagedCache>> caches;
  for (size_t k = 0; k < lengths.size(); ++k) {
    auto cache = std::make_shared<const synthetic::PagedCache>(spec.format, hk, lengths[k],
                                                               1234 + k);
    if (!cache->status)
      return cache->status.error();
    caches.push_back(std::move(cache));
  }
  std::vector<DecodeCheck> checks;
  for (const CheckCase &c : {CheckCase{"short mixed batch", 0, 1.0f},
                             CheckCase{"128K tokens", 1, 1.0f},
                             CheckCase{"128K tokens, scores x8", 1, 8.0f}}) {
    Expected<DecodeCheck> check =
        makeDecodeCheck(spec, c.name, caches[c.cache], 1235 + c.cache, c.scoreScale);
    if (!check)
      return check.error();
    checks.push_back(std::move(*check));
  }
  return checks;
}

/// The check's bound on reference::decodeOutputError, for both output dtypes (bf16: the error
/// beyond the output's own rounding).
constexpr double kDecodeCheckBound = 1e-3;

/// Runs `module` on a check case with the host planner's splits (NaN-poisoned output) and
/// compares with the float64 reference: decodeOutputError <= kDecodeCheckBound.
Status runDecodeCheck(const KernelModule &module, const KernelSpec &spec, const DecodeCheck &check,
                      const DeviceInfo &info, bool poison = false) {
  const synthetic::PagedCache &cache = *check.cache;
  const int batch = int(cache.seqLens.size()), d = spec.format.headDim;
  const int maxLen = *std::max_element(cache.seqLens.begin(), cache.seqLens.end());
  const DecodePlan plan =
      planDecode(module, batch, cache.numKvHeads, maxLen, spec.format.tileTokens, info.smCount);
  Expected<DeviceBuffer> dq = DeviceBuffer::copyOf(check.query),
                         dRecords = DeviceBuffer::copyOf(cache.records),
                         dKey = DeviceBuffer::copyOf(cache.poolKey),
                         dValue = DeviceBuffer::copyOf(cache.poolValue),
                         dSlots = DeviceBuffer::copyOf(cache.blockToSlot),
                         dTable = DeviceBuffer::copyOf(cache.blockTable),
                         dLens = DeviceBuffer::copyOf(cache.seqLens),
                         dOut = DeviceBuffer::allocate(check.query.size() * 2),
                         dWork = DeviceBuffer::allocate(decodeWorkspaceBytes(
                             batch, cache.numKvHeads, spec.queryHeadsPerKvHead, d, plan.numSplits));
  if (!dq || !dRecords || !dKey || !dValue || !dSlots || !dTable || !dLens || !dOut || !dWork)
    return makeError(ErrorCode::Internal, "cannot allocate the check buffers");
  if (Status s = dOut->fill(0xff); !s)
    return s;
  dev::DecodeParams params{dq->as<void>(), dOut->as<void>(), dRecords->as<unsigned char>(),
                           dKey->as<void>(), dValue->as<void>(), dSlots->as<int>(),
                           dTable->as<int>(), dLens->as<int>(), nullptr, nullptr, batch,
                           cache.numKvHeads, cache.maxBlocks, plan.numSplits,
                           check.softmaxScale};
  bindDecodeWorkspace(params, dWork->as<void>(), spec.queryHeadsPerKvHead, d, plan.numSplits);
  if (poison)
    params.cache = reinterpret_cast<const unsigned char *>(uintptr_t(16)); // an illegal address
  if (Status s = launchDecode(module, params, spec.queryHeadsPerKvHead, plan, nullptr); !s)
    return s;
  if (Status s = KVARN_CU(driver().cuCtxSynchronize()); !s)
    return makeError(s.error().code, "crashed in the check: " + s.error().message);
  std::vector<uint16_t> actual(check.query.size());
  if (Status s = dOut->download(actual.data(), actual.size() * 2); !s)
    return s;
  const double error = reference::decodeOutputError(
      spec.dtype, synthetic::toFloats(actual, spec.dtype),
      synthetic::toFloats(check.expected, spec.dtype), check.unconverted);
  if (!(error <= kDecodeCheckBound))
    return makeError(ErrorCode::InvalidData, "wrong results (" + check.name +
                                                 "): relative error " + std::to_string(error));
  return Status::success();
}

/// What tuning one op needs: a correctness check of a loaded candidate, shared timing inputs
/// for a group of candidates, a launch, and the bytes of the roofline.
class Workload {
public:
  virtual ~Workload() = default;
  virtual Status check(const KernelModule &module, const Schedule &schedule) = 0;
  virtual Status prepareTiming(const std::vector<Schedule> &group) = 0;
  /// One launch; `launchIndex` counts the group's launches in the order they run, so the
  /// inputs can rotate through their L2-cold copies (coldCopies) launch by launch.
  virtual Status launch(const KernelModule &module, const Schedule &schedule, int launchIndex,
                        CUstream stream) = 0;
  virtual double rooflineBytes() const = 0;
  /// The launches that read each L2-cold copy of the inputs once (after prepareTiming).
  virtual int timingCopies() const { return 1; }
  /// Shapes a candidate is timed at (decode buckets); prepareTiming, launch and rooflineBytes
  /// refer to the one chosen with useBucket.
  virtual int buckets() const { return 1; }
  virtual void useBucket(int) {}
  /// Drops every device buffer (before a context reset).
  virtual void release() = 0;
};

/// Decode: checked on makeDecodeChecks' cases (built once per spec),
/// timed at each bucket (B x context) on the bench's inputs (TimingInputs.h: the same records and
/// queries, a copy of the block ranges per launch, L2-cold; every page a record, or with
/// TuneOptions::poolPages each request's first and last pages fp16 pool pages).
class DecodeWorkload : public Workload {
public:
  DecodeWorkload(const KernelSpec &spec, const TuneOptions &o, const DeviceInfo &info)
      : spec_(spec), o_(o), info_(info), layout_(recordLayout(spec.format)),
        buckets_(decodeBuckets(o)) {}

  int buckets() const override { return int(buckets_.size()); }
  void useBucket(int bucket) override { bucket_ = bucket; }

  Status check(const KernelModule &module, const Schedule &schedule) override {
    if (checks_.empty()) {
      Expected<std::vector<DecodeCheck>> checks = makeDecodeChecks(spec_);
      if (!checks)
        return checks.error();
      checks_ = std::move(*checks);
    }
    const bool poison = !o_.injectCrash.empty() && schedule.str() == o_.injectCrash;
    for (const DecodeCheck &check : checks_)
      if (Status s = runDecodeCheck(module, spec_, check, info_, poison); !s)
        return s;
    return Status::success();
  }

  Status prepareTiming(const std::vector<Schedule> &group) override {
    const int g = spec_.format.tileTokens, d = spec_.format.headDim;
    pages_ = (context() + g - 1) / g;
    // Workspace for the largest plan any schedule of the group can get (the plan depends on the
    // loaded kernel's occupancy, not known yet).
    int maxSplits = 1;
    for (const Schedule &s : group)
      maxSplits = std::max(maxSplits, s.splits > 0 ? s.splits : kMaxPlannedSplits);
    if (table_ && maxSplits <= workspaceSplits_ && preparedBucket_ == bucket_)
      return Status::success();
    releaseBucket();
    if (Status s = ensureCache(); !s)
      return s;
    preparedBucket_ = bucket_;
    copies_ = coldCopies(bucketBytes(batch(), pages_), size_t(info_.l2Bytes));
    std::vector<int32_t> table(size_t(copies_) * batch() * pages_), slots(table.size(), -1);
    for (size_t k = 0; k < table.size(); ++k)
      table[k] = int32_t(k);
    // Pool pages: each (copy, request, end) its own slot, so every launch reads them cold too.
    int poolSlots = 0;
    for (int c = 0; c < copies_; ++c)
      for (int b = 0; b < batch(); ++b)
        for (int k : o_.poolPages.blocks(pages_))
          slots[(size_t(c) * batch() + b) * pages_ + k] = poolSlots++;
    rows_ = size_t(batch()) * o_.numKvHeads * spec_.queryHeadsPerKvHead;
    const std::vector<uint16_t> query = decodeTimingQueries(rows_ * d, spec_.dtype);
    Expected<DeviceBuffer> q = DeviceBuffer::copyOf(query), t = DeviceBuffer::copyOf(table),
                           sl = DeviceBuffer::copyOf(slots),
                           lens = DeviceBuffer::copyOf(std::vector<int32_t>(batch(), context())),
                           out = DeviceBuffer::allocate(rows_ * d * 2),
                           work = DeviceBuffer::allocate(decodeWorkspaceBytes(
                               batch(), o_.numKvHeads, spec_.queryHeadsPerKvHead, d, maxSplits));
    if (!q || !t || !sl || !lens || !out || !work)
      return makeError(ErrorCode::Internal, "cannot allocate the decode timing buffers");
    query_ = std::move(*q);
    table_ = std::move(*t);
    slots_ = std::move(*sl);
    lens_ = std::move(*lens);
    out_ = std::move(*out);
    work_ = std::move(*work);
    workspaceSplits_ = maxSplits;
    return Status::success();
  }

  Status launch(const KernelModule &module, const Schedule &schedule, int launchIndex,
                CUstream stream) override {
    const int d = spec_.format.headDim;
    const DecodePlan p = planDecode(module, batch(), o_.numKvHeads, context(),
                                    spec_.format.tileTokens, info_.smCount);
    dev::DecodeParams params{query_->as<void>(), out_->as<void>(), records_->as<unsigned char>(),
                             pool_->as<void>(), pool_->as<void>(), slots_->as<int>(),
                             table_->as<int>() + size_t(launchIndex % copies_) * batch() * pages_,
                             lens_->as<int>(), nullptr, nullptr, batch(), o_.numKvHeads,
                             pages_, p.numSplits, 1.0f / std::sqrt(float(d))};
    bindDecodeWorkspace(params, work_->as<void>(), spec_.queryHeadsPerKvHead, d, p.numSplits);
    return launchDecode(module, params, spec_.queryHeadsPerKvHead, p, stream);
  }

  int timingCopies() const override { return copies_; }
  double rooflineBytes() const override { // records' fields, and pool pages' fp16 K and V rows
    return double(batch()) * o_.numKvHeads *
           o_.poolPages.decodeReadBytes(context(), spec_.format.tileTokens,
                                        layout_.readBytesPerToken(), spec_.format.headDim);
  }

  void release() override {
    records_.reset();
    pool_.reset();
    releaseBucket();
  }

private:
  int batch() const { return buckets_[bucket_].first; }
  int context() const { return buckets_[bucket_].second; }
  size_t bucketBytes(int batch, int pages) const {
    return size_t(batch) * o_.numKvHeads * pages * layout_.tileBytesAligned;
  }

  /// The records and the fp16 pool, allocated once for the largest bucket (its copies included)
  /// and used from their beginning by every bucket, as the bench does: a cache of gigabytes
  /// allocated anew per bucket can land on a mapping that runs some schedules 5-15% slower
  /// (docs/benchmarks.md), which would rank them by where their buffers landed.
  Status ensureCache() {
    if (records_)
      return Status::success();
    const int g = spec_.format.tileTokens, d = spec_.format.headDim;
    size_t recordBytes = 0, poolSlots = 1; // one unread slot when every page is a record
    for (const auto &[batch, context] : buckets_) {
      const int pages = (context + g - 1) / g;
      const size_t bytes = bucketBytes(batch, pages);
      const size_t copies = size_t(coldCopies(bytes, size_t(info_.l2Bytes)));
      recordBytes = std::max(recordBytes, bytes * copies);
      poolSlots = std::max(poolSlots, copies * batch * o_.poolPages.blocks(pages).size());
    }
    const Expected<std::vector<uint8_t>> tiles = decodeTimingRecords(spec_.format);
    if (!tiles)
      return tiles.error();
    Expected<DeviceBuffer> records = DeviceBuffer::allocate(recordBytes);
    Expected<DeviceBuffer> pool =
        DeviceBuffer::allocate(poolSlots * g * o_.numKvHeads * d * sizeof(uint16_t));
    if (!records || !pool)
      return makeError(ErrorCode::Internal, "cannot allocate the decode timing cache (" +
                                                std::to_string(recordBytes >> 20) + " MiB of records)");
    if (Status s = records->fillWithPattern(*tiles); !s)
      return s;
    if (Status s = KVARN_CU(driver().cuMemsetD32(pool->get(), kDecodeTimingPoolWord, pool->size() / 4));
        !s)
      return s;
    records_ = std::move(*records);
    pool_ = std::move(*pool);
    return Status::success();
  }
  /// Drops the current bucket's buffers (tables, queries, output, workspace).
  void releaseBucket() {
    query_.reset();
    table_.reset();
    slots_.reset();
    lens_.reset();
    out_.reset();
    work_.reset();
    workspaceSplits_ = 0;
    preparedBucket_ = -1;
  }

  KernelSpec spec_;
  const TuneOptions &o_;
  DeviceInfo info_;
  RecordLayout layout_;
  std::vector<DecodeCheck> checks_;
  std::optional<DeviceBuffer> records_, pool_, query_, table_, slots_, lens_, out_, work_;
  std::vector<std::pair<int, int>> buckets_;
  int bucket_ = 0, preparedBucket_ = -1;
  int pages_ = 0, copies_ = 1, workspaceSplits_ = 0;
  size_t rows_ = 0;
};

/// Flush: timed on the bench's launch (FlushTimingInputs: 512 records of random K and V tiles,
/// L2-cold pools); a sample of the records must equal the CPU reference's byte for byte.
class FlushWorkload : public Workload {
public:
  FlushWorkload(const KernelSpec &spec, const DeviceInfo &info)
      : spec_(spec), info_(info), layout_(recordLayout(spec.format)) {}

  Status check(const KernelModule &module, const Schedule &) override {
    if (Status s = ensureInputs(); !s)
      return s;
    if (Status s = launchFlush(module, inputs_->params(0), nullptr); !s)
      return s;
    if (Status s = KVARN_CU(driver().cuCtxSynchronize()); !s)
      return makeError(s.error().code, "crashed in the check: " + s.error().message);
    const int g = spec_.format.tileTokens, d = spec_.format.headDim;
    const int heads = FlushTimingInputs::kKvHeads;
    std::vector<uint8_t> records(size_t(FlushTimingInputs::kEntries) * layout_.tileBytesAligned);
    if (Status s = inputs_->records().download(records.data(), records.size()); !s)
      return s;
    const std::vector<int32_t> &entries = inputs_->entries();
    // A sample of the records: the first two, one in the middle, the last.
    for (const int e : {0, 1, FlushTimingInputs::kEntries / 2, FlushTimingInputs::kEntries - 1}) {
      std::vector<uint8_t> expected(layout_.tileBytesAligned);
      const size_t rowBase = (size_t(entries[3 * e + 2]) * g * heads + entries[3 * e + 1]) * d;
      if (Status s = reference::writeRecord(
              spec_.format, std::span(inputs_->keys()).subspan(rowBase),
              std::span(inputs_->values()).subspan(rowBase), size_t(heads) * d, expected);
          !s)
        return s;
      const auto actual = records.begin() + size_t(e) * layout_.tileBytesAligned;
      if (!std::equal(expected.begin(), expected.begin() + layout_.keyPackedBytes, actual))
        return makeError(ErrorCode::InvalidData, "wrong results: K codes differ from the reference");
      if (!std::equal(expected.begin(), expected.end(), actual))
        return makeError(ErrorCode::InvalidData,
                         "wrong results: a record's V codes or scales differ from the reference");
    }
    return Status::success();
  }

  Status prepareTiming(const std::vector<Schedule> &) override { return ensureInputs(); }

  Status launch(const KernelModule &module, const Schedule &, int launchIndex,
                CUstream stream) override {
    return launchFlush(module, inputs_->params(launchIndex), stream);
  }

  double rooflineBytes() const override { // read the fp16 K and V tiles, write the records
    return FlushTimingInputs::bytesMoved(spec_.format);
  }
  int timingCopies() const override { return inputs_ ? inputs_->copies() : 1; }
  void release() override { inputs_.reset(); }

private:
  Status ensureInputs() {
    if (inputs_)
      return Status::success();
    Expected<FlushTimingInputs> inputs =
        FlushTimingInputs::create(spec_.format, size_t(info_.l2Bytes));
    if (!inputs)
      return inputs.error();
    inputs_ = std::move(*inputs);
    return Status::success();
  }
  KernelSpec spec_;
  DeviceInfo info_;
  RecordLayout layout_;
  std::optional<FlushTimingInputs> inputs_;
};

/// Append: checked by checkAppendKernel (300 random tokens, every seventh slot negative, rows of
/// the spec's dtype, 8 kv heads, packed and one element off alignment), timed on the bench's
/// launch (AppendTimingInputs: 8,192 tokens x 8 kv heads, L2-cold rows).
class AppendWorkload : public Workload {
public:
  AppendWorkload(const KernelSpec &spec, const DeviceInfo &info) : spec_(spec), info_(info) {}

  Status check(const KernelModule &module, const Schedule &) override {
    for (int padding : {0, 1}) {
      AppendCheck check;
      check.dtype = spec_.dtype;
      check.headDim = spec_.format.headDim;
      check.kvHeads = AppendTimingInputs::kKvHeads;
      check.stride = int64_t(check.kvHeads) * check.headDim + padding;
      check.seed = 7 + uint64_t(padding);
      if (Status s = checkAppendKernel(module, check); !s)
        return s;
    }
    return Status::success();
  }

  Status prepareTiming(const std::vector<Schedule> &) override {
    if (inputs_)
      return Status::success();
    Expected<AppendTimingInputs> inputs =
        AppendTimingInputs::create(spec_.format.headDim, spec_.dtype, size_t(info_.l2Bytes));
    if (!inputs)
      return inputs.error();
    inputs_ = std::move(*inputs);
    return Status::success();
  }

  Status launch(const KernelModule &module, const Schedule &, int launchIndex,
                CUstream stream) override {
    return launchAppend(module, inputs_->params(launchIndex), stream);
  }

  double rooflineBytes() const override { // K and V rows read and written, and the slot map
    return AppendTimingInputs::bytesMoved(spec_.format.headDim);
  }
  int timingCopies() const override { return inputs_ ? inputs_->copies() : 1; }
  void release() override { inputs_.reset(); }

private:
  KernelSpec spec_;
  DeviceInfo info_;
  std::optional<AppendTimingInputs> inputs_;
};

/// True when the current context has taken a sticky error (an illegal address, a trap).
bool contextBroken() { return driver().cuCtxSynchronize() != CUDA_SUCCESS; }

/// Crash bookkeeping of an isolated worker (TuneOptions::crashLog): candidates that broke the
/// GPU context in an earlier attempt ("spec\tschedule\tmessage" lines) and the candidate in
/// flight (<crash log>.inflight), which the supervisor blames when a worker dies.
class CrashLog {
public:
  explicit CrashLog(std::string path) : path_(std::move(path)) {
    std::ifstream in(path_);
    std::string line;
    while (std::getline(in, line)) {
      const size_t a = line.find('\t'), b = line.find('\t', a + 1);
      if (a != std::string::npos && b != std::string::npos)
        crashed_[line.substr(0, a) + "|" + line.substr(a + 1, b - a - 1)] = line.substr(b + 1);
    }
  }
  bool enabled() const { return !path_.empty(); }
  /// The message of an earlier crash of this candidate, or "".
  std::string earlier(const KernelSpec &spec, const Schedule &schedule) const {
    auto found = crashed_.find(spec.str() + "|" + schedule.str());
    return found == crashed_.end() ? "" : found->second;
  }
  void inFlight(const KernelSpec &spec, const Schedule &schedule) const {
    if (enabled())
      std::ofstream(path_ + ".inflight", std::ios::trunc) << spec.str() << "\t" << schedule.str();
  }
  void record(const KernelSpec &spec, const Schedule &schedule, const std::string &message) const {
    std::ofstream(path_, std::ios::app) << spec.str() << "\t" << schedule.str() << "\t" << message
                                        << "\n";
  }

private:
  std::string path_;
  std::map<std::string, std::string> crashed_;
};

/// The exit status of a worker that lost its GPU context (the supervisor restarts it).
constexpr int kContextLostExit = 75;

/// Compiles the candidates that survive static pruning on `threads` threads, through the
/// artifact cache (the later loads are cache hits).
void compileInParallel(const KernelSpec &spec, const std::vector<Schedule> &space,
                       ArtifactCache &cache, int threads) {
  std::vector<Schedule> legal;
  for (const Schedule &s : space)
    if (staticPruneReason(spec, s).empty())
      legal.push_back(s);
  parallelFor(
      legal.size(),
      [&](size_t k) {
        (void)compiler::compileKernel(spec, legal[k], cache); // failures show again at load
      },
      threads);
}

/// A sticky error (illegal address, trap) leaves the process's GPU context unusable: a worker
/// records the candidate(s) and exits for its supervisor to restart it; without isolation the
/// run ends with the reason.
[[noreturn]] void contextLost(const CrashLog &crashes, const KernelSpec &spec,
                              const std::vector<Schedule> &blamed, const std::string &message) {
  if (crashes.enabled()) {
    for (const Schedule &s : blamed)
      crashes.record(spec, s, message);
    std::fprintf(stderr, "kvarn-tune: the GPU context is lost (%s); the supervisor restarts this "
                         "worker without the candidate\n", message.c_str());
    std::exit(kContextLostExit);
  }
  std::fprintf(stderr, "kvarn-tune: the GPU context is lost (%s) by %s; run without "
                       "--no-isolation to continue past crashing candidates\n",
               message.c_str(), blamed.empty() ? "?" : blamed.front().str().c_str());
  std::exit(1);
}

/// Loads and checks a group, then times the checked candidates interleaved (same inputs, same
/// GPU state). A candidate that breaks the context ends this (worker) process: the supervisor
/// records it as crashed and resumes without it.
std::vector<Expected<Timing>> measureGroup(Workload &workload, const KernelSpec &spec,
                                           const std::vector<Schedule> &group,
                                           const TuneOptions &o, ArtifactCache &cache,
                                           Progress &progress, const CrashLog &crashes,
                                           const LaunchGate *gate) {
  std::vector<Expected<Timing>> results;
  std::vector<std::optional<KernelModule>> modules(group.size());
  for (size_t i = 0; i < group.size(); ++i) {
    results.push_back(makeError(ErrorCode::Internal, "not measured"));
    if (std::string earlier = crashes.earlier(spec, group[i]); !earlier.empty()) {
      results[i] = makeError(ErrorCode::Internal, "crashed the GPU context (" + earlier +
                                                      "); the worker was restarted without it");
      continue;
    }
    crashes.inFlight(spec, group[i]);
    Expected<KernelModule> module = compileAndLoad(spec, group[i], cache);
    if (!module) {
      results[i] = module.error();
      continue;
    }
    if (module->localBytes(0) > 0)
      progress.line("  (" + group[i].str() + ": " + std::to_string(module->registers(0)) +
                    " registers, spills " + std::to_string(module->localBytes(0)) + " bytes)");
    Status checked = workload.check(*module, group[i]);
    if (checked) {
      modules[i] = std::move(*module);
      continue;
    }
    results[i] = checked.error();
    if (contextBroken())
      contextLost(crashes, spec, {group[i]}, checked.error().message);
  }
  // The survivors of the checks.
  std::vector<size_t> alive;
  for (size_t i = 0; i < group.size(); ++i)
    if (modules[i])
      alive.push_back(i);
  if (alive.empty())
    return results;
  std::vector<Schedule> aliveSchedules;
  for (size_t i : alive)
    aliveSchedules.push_back(group[i]);
  // Step 2. Interleaved timing of the survivors at each bucket; several buckets combine into
  // their geometric mean.
  std::vector<std::vector<Timing>> perBucket(alive.size());
  for (int bucket = 0; bucket < workload.buckets(); ++bucket) {
    workload.useBucket(bucket);
    if (Status s = workload.prepareTiming(aliveSchedules); !s) {
      for (size_t i : alive)
        results[i] = s.error();
      return results;
    }
    // Launch index iteration * N + k for candidate k of N: consecutive launches take
    // consecutive copies of the inputs, so no candidate reads what the one before it left in L2.
    std::vector<std::function<Status(int)>> runs;
    for (size_t k = 0; k < alive.size(); ++k)
      runs.push_back([&, k, i = alive[k]](int iteration) {
        return workload.launch(*modules[i], group[i], iteration * int(alive.size()) + int(k),
                               nullptr);
      });
    Expected<std::vector<Timing>> timings =
        timeInterleavedStats(runs, o.iterations, gate, o.restRatio);
    if (!timings) {
      if (contextBroken()) // which of the interleaved kernels did it is unknown: blame the group
        contextLost(crashes, spec, aliveSchedules, "during timing: " + timings.error().message);
      for (size_t i : alive)
        results[i] =
            makeError(ErrorCode::Internal, "failed during timing: " + timings.error().message);
      return results;
    }
    for (size_t k = 0; k < alive.size(); ++k) {
      Timing t = (*timings)[k];
      if (o.graphTiming) {
        const size_t i = alive[k];
        Expected<double> graph = timeGraphReplay(
            [&](CUstream stream, int launch) {
              return workload.launch(*modules[i], group[i], launch, stream);
            },
            workload.timingCopies(), o.iterations, o.restRatio);
        if (graph)
          t.graphMs = *graph;
      }
      perBucket[k].push_back(t);
    }
  }
  workload.useBucket(0);
  for (size_t k = 0; k < alive.size(); ++k)
    results[alive[k]] = combineBucketTimings(perBucket[k]);
  return results;
}

std::string formatResult(const TuneResult &result) {
  std::string text = result.spec.str() + "\n";
  char line[512];
  for (const Candidate &c : result.candidates) {
    if (c.rejected.empty()) {
      std::snprintf(line, sizeof(line), "  %-78s %.4f ms (p10 %.4f, p90 %.4f%s)\n",
                    c.schedule.str().c_str(), c.timing.medianMs, c.timing.p10Ms, c.timing.p90Ms,
                    c.timing.graphMs > 0
                        ? (", graph " + std::to_string(c.timing.graphMs).substr(0, 6)).c_str()
                        : "");
    } else {
      std::snprintf(line, sizeof(line), "  %-78s %s\n", c.schedule.str().c_str(),
                    c.rejected.c_str());
    }
    text += line;
  }
  if (result.found) {
    std::snprintf(line, sizeof(line), "  -> %s (%.4f ms, %s of the roofline)\n",
                  result.best.str().c_str(), result.bestMs,
                  result.rooflineMs > 0 ? percent(result.rooflineMs / result.bestMs).c_str() : "?");
    text += line;
  } else {
    text += "  -> no valid candidate\n";
  }
  if (!result.stopped.empty())
    text += "  (stopped: " + result.stopped + ")\n";
  return text;
}

} // namespace

Status checkDecodeKernel(const KernelSpec &spec, const KernelModule &module,
                         const DeviceInfo &info) {
  Expected<std::vector<DecodeCheck>> checks = makeDecodeChecks(spec);
  if (!checks)
    return checks.error();
  for (const DecodeCheck &check : *checks)
    if (Status s = runDecodeCheck(module, spec, check, info); !s)
      return s;
  return Status::success();
}

Status writeConfigs(const std::string &path, const std::string &configs) {
  nlohmann::json file = nlohmann::json::parse(configs);
  // Read, merge and publish under an exclusive lock on the configs directory (flock on the
  // directory itself, so no lock file lands beside the configs): two runs finishing at once
  // each keep the other's entries instead of the later one dropping them.
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  const FileLock lock(parent.empty() ? "." : parent.string(), FileLock::Kind::Directory);
  std::string existing;
  std::error_code missing;
  if (std::filesystem::exists(path, missing)) {
    std::ifstream in(path);
    if (!in || !std::filesystem::is_regular_file(path, missing))
      return makeError(ErrorCode::Io, "cannot read " + path + "; it was left as it is: move it "
                                      "away or fix it, then run again with --resume");
    std::stringstream text;
    text << in.rdbuf();
    existing = text.str();
  }
  Expected<nlohmann::json> before = existingConfigs(existing, path);
  if (!before)
    return before.error();
  file["entries"] = mergedEntries(*before, file["entries"]);
  // Members the run does not write stay as they were (a run without decode specs keeps the
  // decode buckets the file's decode entries were tuned at).
  if (before->is_object())
    for (const auto &[key, value] : before->items())
      if (!file.contains(key))
        file[key] = value;
  return writeFileAtomically(path, file.dump(2) + "\n");
}

Status validateTuneOptions(const TuneOptions &o) {
  if (o.iterations < 10)
    return makeError(ErrorCode::InvalidArgument, "--iterations must be at least 10");
  if (o.budgetSeconds < 0)
    return makeError(ErrorCode::InvalidArgument, "--budget must not be negative");
  if (o.earlyStop < 0 || o.earlyStop > 1)
    return makeError(ErrorCode::InvalidArgument, "--early-stop is a fraction of the roofline in [0, 1]");
  if (!o.decode && !o.flush && !o.append)
    return makeError(ErrorCode::InvalidArgument,
                     "--no-decode, --no-flush and --no-append together leave nothing to tune");
  for (const auto &[batch, context] : decodeBuckets(o))
    if (batch < 1 || batch > 4096 || context < 1 || context > (1 << 22))
      return makeError(ErrorCode::InvalidArgument,
                       "decode bucket " + std::to_string(batch) + "x" + std::to_string(context) +
                           " is out of range (batch 1 to 4096, context 1 to 4194304 tokens)");
  return Status::success();
}

Expected<std::vector<std::pair<int, int>>> parseBuckets(const std::string &text) {
  auto bad = [&] {
    return makeError(ErrorCode::InvalidArgument,
                     "decode bucket '" + text +
                         "' is not <batch>x<context>, e.g. 32x32768, or a grid of lists, e.g. "
                         "1,4,16x4096,131072");
  };
  auto numbers = [](const std::string &list, std::vector<int> &values) {
    size_t start = 0;
    while (true) {
      const size_t comma = list.find(',', start);
      const std::string digits = list.substr(start, comma == std::string::npos ? std::string::npos
                                                                               : comma - start);
      if (digits.empty() || digits.size() > 9 ||
          digits.find_first_not_of("0123456789") != std::string::npos)
        return false;
      values.push_back(std::stoi(digits));
      if (comma == std::string::npos)
        return true;
      start = comma + 1;
    }
  };
  const size_t x = text.find('x');
  std::vector<int> batches, contexts;
  if (x == std::string::npos || !numbers(text.substr(0, x), batches) ||
      !numbers(text.substr(x + 1), contexts))
    return bad();
  std::vector<std::pair<int, int>> buckets;
  for (int batch : batches)
    for (int context : contexts)
      buckets.push_back({batch, context});
  return buckets;
}

std::vector<std::pair<int, int>> decodeBuckets(const TuneOptions &o) {
  std::vector<std::pair<int, int>> buckets = {{o.batch, o.context}};
  for (const std::pair<int, int> &bucket : o.alsoBuckets) // each once: equal buckets would weigh twice
    if (std::find(buckets.begin(), buckets.end(), bucket) == buckets.end())
      buckets.push_back(bucket);
  return buckets;
}

namespace {
/// The geometric mean of positive values; a single value is returned as it is.
double geometricMean(const std::vector<double> &values) {
  if (values.size() == 1)
    return values.front();
  double logSum = 0;
  for (double v : values)
    logSum += std::log(v);
  return values.empty() ? 0.0 : std::exp(logSum / double(values.size()));
}
} // namespace

Timing combineBucketTimings(const std::vector<Timing> &perBucket) {
  std::vector<double> medians, p10s, p90s, graphs;
  Timing combined;
  for (const Timing &t : perBucket) {
    medians.push_back(t.medianMs);
    p10s.push_back(t.p10Ms);
    p90s.push_back(t.p90Ms);
    if (t.graphMs > 0)
      graphs.push_back(t.graphMs);
    combined.samples += t.samples;
  }
  combined.medianMs = geometricMean(medians);
  combined.p10Ms = geometricMean(p10s);
  combined.p90Ms = geometricMean(p90s);
  combined.graphMs = graphs.size() == perBucket.size() ? geometricMean(graphs) : 0.0;
  if (perBucket.size() > 1)
    combined.bucketMs = medians;
  return combined;
}

namespace {
/// Set by spawnProcess in a worker's environment: the pid of the process that started it.
constexpr const char kParentPidVariable[] = "KVARN_TUNE_PARENT_PID";
} // namespace

Expected<pid_t> spawnProcess(std::vector<std::string> args) {
  std::vector<char *> argv;
  for (std::string &a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  // The inherited environment, with this process's pid for followParent.
  const std::string prefix = std::string(kParentPidVariable) + "=";
  std::vector<std::string> variables;
  for (char **e = environ; *e; ++e)
    if (std::strncmp(*e, prefix.c_str(), prefix.size()) != 0)
      variables.emplace_back(*e);
  variables.push_back(prefix + std::to_string(getpid()));
  std::vector<char *> envp;
  for (std::string &v : variables)
    envp.push_back(v.data());
  envp.push_back(nullptr);
  pid_t pid = 0;
  if (args.empty() ||
      posix_spawn(&pid, args[0].c_str(), nullptr, nullptr, argv.data(), envp.data()) != 0)
    return makeError(ErrorCode::Internal,
                     "cannot start " + (args.empty() ? std::string("a process") : args[0]));
  return pid;
}

void followParent() {
  const char *parent = std::getenv(kParentPidVariable);
  if (!parent)
    return;
  // The kernel kills this process when the thread that started it ends (spawnProcess runs on
  // the tuning run's main thread); a parent that ended before this call is caught by its pid.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != pid_t(std::atoll(parent))) {
    std::fprintf(stderr, "kvarn-tune: the process that started this worker has ended; stopping\n");
    std::_Exit(1);
  }
}

Status runTune(const TuneOptions &o) {
  if (Status s = validateTuneOptions(o); !s)
    return s;
  Expected<DeviceInfo> info = openDevice(o.device);
  if (!info)
    return info.error();
  const auto started = std::chrono::steady_clock::now();
  auto outOfBudget = [&] {
    return o.budgetSeconds > 0 &&
           std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count() >
               o.budgetSeconds;
  };
  const std::string key = environmentKey(info->computeMajor, info->computeMinor, info->smCount,
                                         info->l2Bytes, info->memoryClockKhz);
  std::filesystem::create_directories(o.configsDirectory);
  const std::string reportPath =
      o.reportPath.empty() ? o.configsDirectory + "/" + key + ".tune.json" : o.reportPath;
  Progress progress;
  // Step 1. Resume: the specs already in the report are not tuned again.
  std::vector<TuneResult> results;
  if (o.resume) {
    std::ifstream in(reportPath);
    if (!in) {
      progress.line("nothing to resume (" + reportPath + " does not exist); tuning everything");
    } else {
      std::stringstream text;
      text << in.rdbuf();
      Expected<std::vector<TuneResult>> previous = resultsFromJson(text.str());
      if (!previous)
        return makeError(previous.error().code, previous.error().message + " (" + reportPath +
                                                    "; remove it or run without --resume)");
      if (Status s = resumableWith(*previous, o); !s)
        return makeError(s.error().code, "tuning report " + reportPath + ": " + s.error().message);
      results = std::move(*previous);
    }
  }
  // Step 2. The plan: decode per GQA ratio, flush and append, per preset.
  std::vector<KernelSpec> plan;
  for (const std::string &preset : o.presets) {
    Expected<Format> format = parseFormat(preset, o.headDim);
    if (!format)
      return format.error();
    for (int q : o.queryHeadsPerKvHead) {
      KernelSpec spec;
      spec.format = *format;
      spec.queryHeadsPerKvHead = q;
      spec.dtype = o.dtype;
      spec.arch = info->arch();
      if (q < 1 || q > 16)
        return makeError(ErrorCode::InvalidArgument,
                         "--q " + std::to_string(q) + ": query heads per kv head must be 1 to 16");
      if (o.decode)
        plan.push_back(spec);
    }
    KernelSpec flush;
    flush.op = OpKind::Flush;
    flush.format = *format;
    flush.arch = info->arch();
    if (o.flush)
      plan.push_back(flush);
    KernelSpec append;
    append.op = OpKind::Append;
    append.format = *format;
    append.dtype = o.dtype;
    append.arch = info->arch();
    if (o.append)
      plan.push_back(append);
  }
  Expected<double> bandwidth = measureReadBandwidth(*info);
  if (!bandwidth)
    return bandwidth.error();
  Expected<std::optional<LaunchGate>> madeGate = launchGateIf(*info, o.gate);
  if (!madeGate)
    return madeGate.error();
  const std::optional<LaunchGate> &gate = *madeGate;
  progress.line("GPU " + std::to_string(o.device) + ": " + info->name + " (" + key +
                "), measured read bandwidth " + std::to_string(int(*bandwidth)) + " GB/s; " +
                (gate ? "each timed launch queued behind a " + std::to_string(gate->microseconds()) +
                            " us spin kernel"
                      : std::string("each timed launch from an idle GPU")) +
                (o.restRatio > 0 ? ", then the GPU rests " + formatRatio(o.restRatio) +
                                       "x its time (below its power cap)"
                                 : std::string(", launches back to back")) +
                "; " + std::to_string(plan.size()) + " specs" +
                (o.poolPages.any() ? "; decode timed with " + o.poolPages.describe() +
                                         " of every request in the fp16 pool"
                                   : std::string()));
  ArtifactCache cache(ArtifactCache::Options{});
  const CrashLog crashes(o.crashLog);
  const int threads =
      o.compileThreads > 0 ? o.compileThreads : hostThreads();
  // Configs from every tuned spec (resumed ones included), written after each spec as well as at
  // the end, so a run that is interrupted (a timeout, Ctrl-C, a lost machine) leaves the entries
  // of the specs it finished in the configs and not only in the report.
  const std::string path = o.configsDirectory + "/" + key + ".json";
  auto publishConfigs = [&](const std::function<void(const std::string &)> &log) -> Status {
    nlohmann::json configs;
    configs["environment"] = {{"name", info->name},
                              {"arch", info->arch()},
                              {"sm_count", info->smCount},
                              {"l2_bytes", info->l2Bytes},
                              {"memory_clock_khz", info->memoryClockKhz},
                              {"driver", info->driverVersion},
                              {"nvrtc", nvrtcVersion()},
                              {"kvarn", KVARN_VERSION}};
    if (o.decode) { // the decode buckets; a run without decode keeps the file's (writeConfigs)
      configs["bucket"] = {{"batch", o.batch}, {"context", o.context}, {"kv_heads", o.numKvHeads}};
      // Decode medians are geometric means over all buckets (none past the first: empty).
      nlohmann::json also = nlohmann::json::array();
      for (const auto &[batch, context] : o.alsoBuckets)
        also.push_back({{"batch", batch}, {"context", context}});
      configs["also_buckets"] = also;
    }
    // Decode variants from every result's per-bucket medians (resumed ones included).
    addDecodeVariants(results, o, info->smCount, log);
    configs["entries"] = nlohmann::json::parse(configEntriesJson(results));
    return writeConfigs(path, configs.dump());
  };
  // Step 3. Tune each spec; the report and the configs are rewritten after each, so a run can be
  // resumed and an interrupted one keeps what it finished.
  std::vector<std::string> untuned;
  const std::vector<KernelSpec> todo = specsToTune(plan, results);
  if (todo.size() < plan.size())
    progress.line(std::to_string(plan.size() - todo.size()) + " of " + std::to_string(plan.size()) +
                  " specs resumed from " + reportPath);
  for (size_t k = 0; k < todo.size(); ++k) {
    const KernelSpec &spec = todo[k];
    const std::string prefix = "[" + std::to_string(k + 1) + "/" + std::to_string(todo.size()) + "] ";
    if (outOfBudget()) {
      untuned.push_back(spec.str());
      continue;
    }
    progress.status(prefix + spec.str() + ": compiling candidates on " + std::to_string(threads) +
                    " threads");
    const std::vector<Schedule> space = scheduleSearchSpace(spec.op);
    compileInParallel(spec, space, cache, threads);
    std::unique_ptr<Workload> workload;
    if (spec.op == OpKind::Decode)
      workload = std::make_unique<DecodeWorkload>(spec, o, *info);
    else if (spec.op == OpKind::Append)
      workload = std::make_unique<AppendWorkload>(spec, *info);
    else
      workload = std::make_unique<FlushWorkload>(spec, *info);
    SelectOptions select;
    { // the geometric mean over the buckets, like the candidates' scores
      std::vector<double> rooflines;
      for (int bucket = 0; bucket < workload->buckets(); ++bucket) {
        workload->useBucket(bucket);
        rooflines.push_back(workload->rooflineBytes() / (*bandwidth * 1e9) * 1e3);
      }
      workload->useBucket(0);
      select.rooflineMs = geometricMean(rooflines);
    }
    select.earlyStop = o.earlyStop;
    select.exhaustive = o.exhaustive;
    select.outOfBudget = outOfBudget;
    double bestSoFar = 0;
    select.progress = [&](size_t done, size_t total) {
      const size_t width = 20, filled = total ? done * width / total : width;
      progress.status(prefix + "[" + std::string(filled, '#') + std::string(width - filled, '.') +
                      "] " + spec.str() + ": " + std::to_string(done) + "/" +
                      std::to_string(total) + " candidates measured" +
                      (bestSoFar > 0 ? ", best " + std::to_string(bestSoFar).substr(0, 6) + " ms" : ""));
    };
    TuneResult result = selectSchedule(
        spec, space,
        [&](const std::vector<Schedule> &group) {
          std::vector<Expected<Timing>> timings =
              measureGroup(*workload, spec, group, o, cache, progress, crashes,
                           gate ? &*gate : nullptr);
          for (const Expected<Timing> &t : timings)
            if (t && (bestSoFar == 0 || t->medianMs < bestSoFar))
              bestSoFar = t->medianMs;
          return timings;
        },
        select);
    if (spec.op == OpKind::Decode)
      result.poolPages = o.poolPages.key();
    progress.line(prefix + formatResult(result));
    results.push_back(std::move(result));
    // The configs first: a spec in the report (what --resume skips) is in the configs too.
    if (Status s = publishConfigs(nullptr); !s)
      return s;
    if (Status s = writeFileAtomically(reportPath, resultsToJson(results, key)); !s)
      return s;
  }
  // Step 4. The configs once more, with the variants listed.
  if (Status s = publishConfigs([&](const std::string &line) { progress.line(line); }); !s)
    return s;
  progress.line("tuned configs written to " + path + " (entries of specs this run did not tune "
                "kept); report: " + reportPath);
  if (o.exhaustive) {
    const Regret regret = regretOf(results);
    char text[160];
    std::snprintf(text, sizeof(text),
                  "regret of early stop at %s of the roofline vs exhaustive search over %d specs: "
                  "median %.2f%%, P90 %.2f%%",
                  percent(o.earlyStop).c_str(), regret.samples, 100 * regret.median, 100 * regret.p90);
    progress.line(text);
  }
  if (!untuned.empty()) {
    std::string list;
    for (const std::string &s : untuned)
      list += " " + s;
    progress.line("time budget spent; not tuned:" + list + " (run again with --resume)");
  }
  return Status::success();
}

Status runTuneIsolated(const TuneOptions &o, const std::string &executable) {
  // Validate here too, so argument errors do not surface as failed workers.
  if (Status s = validateTuneOptions(o); !s)
    return s;
  if (Expected<const Driver *> driver = Driver::get(); !driver)
    return driver.error(); // no GPU: say so here rather than through a failed worker
  std::filesystem::create_directories(o.configsDirectory);
  const std::string crashLog =
      o.configsDirectory + "/.tune-crashes-gpu" + std::to_string(o.device) + ".tsv";
  std::filesystem::remove(crashLog);
  std::filesystem::remove(crashLog + ".inflight");
  const auto started = std::chrono::steady_clock::now();
  bool resume = o.resume;
  for (int attempt = 1; attempt <= 32; ++attempt) {
    TuneOptions worker = o;
    worker.resume = resume;
    if (o.budgetSeconds > 0) {
      const double spent =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      worker.budgetSeconds = std::max(0.001, o.budgetSeconds - spent);
    }
    std::vector<std::string> args =
        workerArguments(worker, o.device, o.reportPath, o.configsDirectory);
    args.insert(args.begin(), executable);
    args.insert(args.end(), {"--worker", "--crash-log", crashLog});
    if (worker.resume)
      args.push_back("--resume");
    if (!o.injectCrash.empty())
      args.insert(args.end(), {"--inject-crash", o.injectCrash});
    Expected<pid_t> pid = spawnProcess(std::move(args));
    if (!pid)
      return pid.error();
    int status = 0;
    waitpid(*pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
      std::filesystem::remove(crashLog + ".inflight"); // the crashes stay listed in the report
      return Status::success();
    }
    std::string inFlight;
    {
      std::ifstream in(crashLog + ".inflight");
      std::getline(in, inFlight);
    }
    if (WIFSIGNALED(status) && !inFlight.empty()) {
      // Killed (not by its own crash handling): blame the candidate in flight.
      std::ofstream(crashLog, std::ios::app)
          << inFlight << "\tthe worker was killed by signal " << WTERMSIG(status) << "\n";
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != kContextLostExit) {
      return makeError(ErrorCode::Internal,
                       "the tuning worker failed (" +
                           (WIFSIGNALED(status) ? "signal " + std::to_string(WTERMSIG(status))
                                                : "exit " + std::to_string(WEXITSTATUS(status))) +
                           ")");
    }
    std::printf("kvarn-tune: restarting the tuning worker (attempt %d) without the candidate that "
                "crashed: %s\n", attempt + 1, inFlight.c_str());
    std::fflush(stdout);
    resume = true; // the specs finished before the crash are in the report
  }
  return makeError(ErrorCode::Internal, "the tuning worker crashed 32 times; giving up");
}

} // namespace kvarn::autotune
