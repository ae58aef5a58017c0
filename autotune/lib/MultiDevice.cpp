// Multi-GPU tuning: worker processes and the merge (MultiDevice.h).
#include "kvarn/Autotune/MultiDevice.h"

#include "kvarn/driver.h"
#include "kvarn/parallel.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <sys/wait.h>

namespace kvarn::autotune {
namespace {

/// The median of `schedule` in a result, if it was measured.
std::optional<double> measured(const TuneResult &result, const Schedule &schedule) {
  for (const Candidate &c : result.candidates)
    if (c.schedule == schedule && c.rejected.empty() && c.ms > 0)
      return c.ms;
  return std::nullopt;
}

std::string ms(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.4f ms", value);
  return text;
}

} // namespace

std::vector<MergedChoice> mergeDeviceResults(std::vector<DeviceResults> devices) {
  std::sort(devices.begin(), devices.end(),
            [](const DeviceResults &a, const DeviceResults &b) { return a.device < b.device; });
  // Step 1. Group by silicon key, then by spec (in the lowest ordinal's order).
  std::map<std::string, std::vector<const DeviceResults *>> bySilicon;
  for (const DeviceResults &d : devices)
    bySilicon[d.environment].push_back(&d);
  std::vector<MergedChoice> merged;
  for (const auto &[environment, group] : bySilicon) {
    std::vector<KernelSpec> specs;
    for (const DeviceResults *d : group)
      for (const TuneResult &r : d->results)
        if (std::find(specs.begin(), specs.end(), r.spec) == specs.end())
          specs.push_back(r.spec);
    for (const KernelSpec &spec : specs) {
      // Step 2. Each device's own result for the spec.
      std::vector<std::pair<int, const TuneResult *>> own;
      for (const DeviceResults *d : group)
        for (const TuneResult &r : d->results)
          if (r.spec == spec && r.found)
            own.push_back({d->device, &r});
      if (own.empty())
        continue;
      MergedChoice choice;
      choice.environment = environment;
      choice.result = *own.front().second;
      std::string choices;
      bool same = true;
      for (const auto &[device, r] : own) {
        choices += (choices.empty() ? "" : ", ") + std::string("GPU ") + std::to_string(device) +
                   ": " + r->best.str() + " " + ms(r->bestMs);
        same = same && r->best == own.front().second->best;
      }
      if (same) {
        choice.explanation = std::to_string(own.size()) + " GPU(s) agree";
        double worst = 0;
        for (const auto &[device, r] : own)
          worst = std::max(worst, r->bestMs);
        choice.result.bestMs = worst;
        merged.push_back(choice);
        continue;
      }
      // Step 3. Disagreement: the chosen schedule with the smallest worst-case slowdown.
      choice.disagreed = true;
      std::optional<Schedule> best;
      double bestSlowdown = 0, bestWorstMs = 0;
      for (const auto &[unused, candidateOwner] : own) {
        const Schedule &candidate = candidateOwner->best;
        double slowdown = 0, worstMs = 0;
        bool everywhere = true;
        for (const auto &[device, r] : own) {
          std::optional<double> t = measured(*r, candidate);
          if (!t) {
            everywhere = false;
            break;
          }
          slowdown = std::max(slowdown, *t / r->bestMs - 1.0);
          worstMs = std::max(worstMs, *t);
        }
        if (!everywhere)
          continue;
        const bool better = !best || slowdown < bestSlowdown ||
                            (slowdown == bestSlowdown &&
                             (candidate.warps < best->warps ||
                              (candidate.warps == best->warps && candidate.str() < best->str())));
        if (better) {
          best = candidate;
          bestSlowdown = slowdown;
          bestWorstMs = worstMs;
        }
      }
      if (best) {
        choice.result.best = *best;
        choice.result.bestMs = bestWorstMs;
        char slowdown[32];
        std::snprintf(slowdown, sizeof(slowdown), "%.2f%%", 100 * bestSlowdown);
        choice.explanation = "GPUs disagree (" + choices + "); merged to " + best->str() +
                             ": worst-case slowdown " + slowdown;
      } else {
        choice.explanation = "GPUs disagree (" + choices + "); no choice was measured on every "
                             "GPU, so GPU " + std::to_string(own.front().first) + "'s is used";
      }
      merged.push_back(choice);
    }
  }
  return merged;
}

std::vector<std::string> workerArguments(const TuneOptions &o, int device,
                                         const std::string &reportPath,
                                         const std::string &configsDirectory) {
  std::vector<std::string> args = {"tune", "--device", std::to_string(device), "--head-dim",
                                   std::to_string(o.headDim), "--batch", std::to_string(o.batch),
                                   "--context", std::to_string(o.context), "--iterations",
                                   std::to_string(o.iterations), "--configs", configsDirectory,
                                   "--early-stop",
                                   std::to_string(o.earlyStop), "--budget",
                                   std::to_string(o.budgetSeconds)};
  if (!reportPath.empty())
    args.insert(args.end(), {"--report", reportPath});
  args.push_back("--preset");
  for (const std::string &preset : o.presets)
    args.push_back(preset);
  args.push_back("--q");
  for (int q : o.queryHeadsPerKvHead)
    args.push_back(std::to_string(q));
  args.insert(args.end(), {"--dtype", dtypeField(o.dtype)});
  if (o.compileThreads > 0) {
    args.push_back("--compile-threads");
    args.push_back(std::to_string(o.compileThreads));
  }
  if (o.exhaustive)
    args.push_back("--exhaustive");
  if (o.graphTiming)
    args.push_back("--graph");
  if (!o.gate)
    args.push_back("--no-gate");
  args.push_back("--rest");
  args.push_back(std::to_string(o.restRatio));
  if (!o.flush)
    args.push_back("--no-flush");
  if (!o.decode)
    args.push_back("--no-decode");
  if (!o.append)
    args.push_back("--no-append");
  if (o.poolPages.sink)
    args.push_back("--sink");
  if (o.poolPages.tail)
    args.push_back("--tail");
  if (!o.alsoBuckets.empty()) {
    args.push_back("--also-at");
    for (const auto &[batch, context] : o.alsoBuckets)
      args.push_back(std::to_string(batch) + "x" + std::to_string(context));
  }
  return args;
}

Status runTuneOnDevices(const TuneOptions &o, const std::vector<int> &devices,
                        const std::string &executable) {
  if (devices.empty())
    return makeError(ErrorCode::InvalidArgument, "--devices names no GPU");
  if (Status s = validateTuneOptions(o); !s)
    return s;
  const std::string work = o.configsDirectory + "/.devices";
  std::filesystem::create_directories(work);
  // Step 1. One worker per GPU, compile threads shared between them.
  TuneOptions worker = o;
  if (worker.compileThreads == 0)
    worker.compileThreads = std::max(1, hostThreads() / int(devices.size()));
  std::vector<std::pair<int, pid_t>> children;
  for (int device : devices) {
    const std::string report = work + "/gpu" + std::to_string(device) + ".tune.json";
    std::filesystem::remove(report);
    std::vector<std::string> args = workerArguments(worker, device, report,
                                                    work + "/gpu" + std::to_string(device));
    args.insert(args.begin(), executable);
    Expected<pid_t> pid = spawnProcess(std::move(args));
    if (!pid)
      return makeError(pid.error().code, pid.error().message + " (the worker for GPU " +
                                             std::to_string(device) + ")");
    std::printf("GPU %d: worker %d started\n", device, int(*pid));
    children.push_back({device, *pid});
  }
  std::vector<DeviceResults> results;
  std::string failures;
  for (const auto &[device, pid] : children) {
    int status = 0;
    waitpid(pid, &status, 0);
    const std::string report = work + "/gpu" + std::to_string(device) + ".tune.json";
    std::ifstream in(report);
    std::stringstream text;
    text << in.rdbuf();
    Expected<std::vector<TuneResult>> parsed = resultsFromJson(text.str());
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !parsed) {
      failures += " GPU " + std::to_string(device) +
                  (WIFSIGNALED(status) ? " (killed by signal " + std::to_string(WTERMSIG(status)) + ")"
                                       : " (exit " + std::to_string(WEXITSTATUS(status)) + ")");
      if (!parsed)
        continue;
    }
    nlohmann::json json = nlohmann::json::parse(text.str(), nullptr, false);
    results.push_back({device, json.value("environment", std::string()), std::move(*parsed)});
  }
  if (results.empty())
    return makeError(ErrorCode::Internal, "every worker failed:" + failures);
  // Step 2. Merge and write the configs per silicon key.
  std::vector<MergedChoice> merged = mergeDeviceResults(results);
  std::map<std::string, std::vector<TuneResult>> bySilicon;
  int disagreements = 0;
  for (const MergedChoice &m : merged) {
    std::printf("%s [%s]: %s\n  %s\n", m.result.spec.str().c_str(), m.environment.c_str(),
                m.result.best.str().c_str(), m.explanation.c_str());
    disagreements += m.disagreed;
    bySilicon[m.environment].push_back(m.result);
  }
  for (const auto &[environment, list] : bySilicon) {
    // The environment block comes from a worker's own configs of that silicon.
    nlohmann::json configs;
    std::vector<int> mergedFrom;
    for (const DeviceResults &d : results)
      if (d.environment == environment) {
        mergedFrom.push_back(d.device);
        if (configs.is_null()) {
          std::ifstream in(work + "/gpu" + std::to_string(d.device) + "/" + environment + ".json");
          configs = nlohmann::json::parse(in, nullptr, false);
        }
      }
    if (!configs.is_object())
      return makeError(ErrorCode::Internal, "no worker configs for " + environment);
    // The decode variants from the merged results' per-bucket medians (the lowest ordinal's),
    // as a single-GPU run derives them.
    std::vector<TuneResult> withVariants = list;
    int smCount = 0;
    if (configs.contains("environment") && configs["environment"].is_object())
      smCount = configs["environment"].value("sm_count", 0);
    addDecodeVariants(withVariants, o, smCount,
                      [](const std::string &line) { std::printf("%s\n", line.c_str()); });
    configs["entries"] = nlohmann::json::parse(configEntriesJson(withVariants));
    configs["merged_from_gpus"] = mergedFrom;
    const std::string path = o.configsDirectory + "/" + environment + ".json";
    if (Status s = writeConfigs(path, configs.dump()); !s)
      return s;
    std::printf("merged configs written to %s (entries of specs this run did not tune kept)\n",
                path.c_str());
  }
  std::printf("%zu specs merged from %zu GPU(s), %d disagreement(s)%s\n", merged.size(),
              results.size(), disagreements,
              failures.empty() ? "" : ("; failed workers:" + failures).c_str());
  return failures.empty() ? Status::success()
                          : Status(makeError(ErrorCode::Internal, "workers failed:" + failures));
}

} // namespace kvarn::autotune
