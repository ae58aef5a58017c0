// Tuned-config files and the schedule lookup with fallback (configs.h).
#include "kvarn/configs.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <tuple>
#include <utility>

namespace kvarn {

namespace {
/// An entry's or variant's optional "median_ms" (0 when absent or not a number).
double medianMsOf(const nlohmann::json &item) {
  return item.contains("median_ms") && item["median_ms"].is_number() ? item["median_ms"].get<double>()
                                                                     : 0.0;
}
} // namespace

Expected<ConfigFile> parseConfigFile(const std::string &text, const std::string &origin) {
  auto bad = [&](const std::string &what) {
    return makeError(ErrorCode::InvalidData, "configs " + origin + ": " + what);
  };
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object())
    return bad("not a JSON object");
  if (!json.contains("environment") || !json["environment"].is_object())
    return bad("no 'environment' object");
  if (!json.contains("entries") || !json["entries"].is_array())
    return bad("no 'entries' array");
  ConfigFile file;
  file.origin = origin;
  const nlohmann::json &env = json["environment"];
  if (!env.contains("arch") || !env["arch"].is_string())
    return bad("environment.arch is missing");
  file.environment.arch = env["arch"].get<std::string>();
  file.environment.smCount = env.value("sm_count", 0);
  file.environment.l2Bytes = env.value("l2_bytes", 0LL);
  file.environment.memoryClockKhz = env.value("memory_clock_khz", 0);
  file.environment.driverVersion = env.value("driver", 0);
  file.environment.nvrtcVersion = env.value("nvrtc", std::string());
  file.environment.kvarnVersion = env.value("kvarn", std::string());
  for (size_t i = 0; i < json["entries"].size(); ++i) {
    const nlohmann::json &item = json["entries"][i];
    const std::string where = "entries[" + std::to_string(i) + "]";
    if (!item.is_object() || !item.contains("spec") || !item["spec"].is_string() ||
        !item.contains("schedule") || !item["schedule"].is_string())
      return bad(where + " needs 'spec' and 'schedule' strings");
    Expected<KernelSpec> spec = parseKernelSpec(item["spec"].get<std::string>());
    if (!spec)
      return bad(where + ": " + spec.error().message);
    Expected<Schedule> schedule = parseSchedule(item["schedule"].get<std::string>(), spec->op);
    if (!schedule)
      return bad(where + ": " + schedule.error().message);
    TunedEntry entry{*spec, *schedule, medianMsOf(item), {}};
    if (item.contains("variants")) {
      const nlohmann::json &list = item["variants"];
      if (!list.is_array())
        return bad(where + ".variants is not an array");
      if (!list.empty() && spec->op != OpKind::Decode)
        return bad(where + ".variants: only decode entries have variants");
      for (size_t v = 0; v < list.size(); ++v) {
        const nlohmann::json &variant = list[v];
        const std::string at = where + ".variants[" + std::to_string(v) + "]";
        if (!variant.is_object() || !variant.contains("min_work_items") ||
            !variant["min_work_items"].is_number_integer() || !variant.contains("schedule") ||
            !variant["schedule"].is_string())
          return bad(at + " needs an integer 'min_work_items' and a 'schedule' string");
        const int64_t minWork = variant["min_work_items"].get<int64_t>();
        if (minWork <= 0 || minWork > (int64_t(1) << 30))
          return bad(at + ".min_work_items = " + std::to_string(minWork) +
                     ": thresholds must be positive and at most 2^30");
        // An optional count (0 when absent), 0 to 2^31 - 1.
        auto optionalCount = [&](const char *field, const char *unit) -> Expected<int64_t> {
          if (!variant.contains(field))
            return int64_t(0);
          if (!variant[field].is_number_integer())
            return bad(at + "." + field + " is not an integer");
          const int64_t value = variant[field].get<int64_t>();
          if (value < 0 || value > INT32_MAX)
            return bad(at + "." + field + " = " + std::to_string(value) + ": must be 0 to 2^31 - 1" +
                       unit);
          return value;
        };
        const Expected<int64_t> minContextField = optionalCount("min_context", " tokens");
        const Expected<int64_t> maxWavesField = optionalCount("max_waves", "");
        if (!minContextField)
          return minContextField.error();
        if (!maxWavesField)
          return maxWavesField.error();
        const int64_t minContext = *minContextField, maxWaves = *maxWavesField;
        if (!entry.variants.empty() &&
            std::make_pair(minWork, minContext) <=
                std::make_pair(int64_t(entry.variants.back().minWorkItems),
                               int64_t(entry.variants.back().minContext)))
          return bad(at + ": (min_work_items, min_context) = (" + std::to_string(minWork) + ", " +
                     std::to_string(minContext) +
                     ") does not follow the previous variant's; variants must be strictly "
                     "ascending by work items, then context");
        Expected<Schedule> knobs = parseSchedule(variant["schedule"].get<std::string>(), spec->op);
        if (!knobs)
          return bad(at + ": " + knobs.error().message);
        entry.variants.push_back(
            {int(minWork), *knobs, medianMsOf(variant), int(minContext), int(maxWaves)});
      }
    }
    file.entries.push_back(std::move(entry));
  }
  return file;
}

std::vector<ConfigFile> loadConfigDirectory(const std::string &directory,
                                            std::vector<std::string> *warnings) {
  std::vector<ConfigFile> files;
  std::error_code ec;
  if (directory.empty() || !std::filesystem::is_directory(directory, ec))
    return files;
  std::vector<std::filesystem::path> paths;
  for (const auto &item : std::filesystem::directory_iterator(directory, ec))
    if (item.path().extension() == ".json")
      paths.push_back(item.path());
  std::sort(paths.begin(), paths.end()); // a stable order: choices do not depend on readdir
  for (const std::filesystem::path &path : paths) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    Expected<ConfigFile> file = parseConfigFile(text.str(), path.string());
    if (file)
      files.push_back(std::move(*file));
    else if (warnings)
      warnings->push_back(file.error().message + " (skipped)");
  }
  return files;
}

int64_t launchWaves(int64_t workItems, int64_t slots) {
  const int64_t s = std::max<int64_t>(1, slots);
  return (std::max<int64_t>(workItems, 1) + s - 1) / s;
}

bool variantApplies(const ScheduleVariant &variant, int64_t workItems, int64_t maxSeqLen) {
  return workItems >= variant.minWorkItems && maxSeqLen >= variant.minContext;
}

int variantForWork(const std::vector<ScheduleVariant> &variants, int64_t workItems,
                   int64_t maxSeqLen) {
  int chosen = -1;
  for (size_t k = 0; k < variants.size(); ++k)
    if (variantApplies(variants[k], workItems, maxSeqLen))
      chosen = int(k);
  return chosen;
}

int variantForLaunch(const std::vector<ScheduleVariant> &variants,
                     const std::vector<int64_t> &slots, int64_t workItems, int64_t maxSeqLen) {
  int k = variantForWork(variants, workItems, maxSeqLen);
  if (slots.size() != variants.size() + 1)
    return k; // no occupancy known: the thresholds alone
  auto waves = [&](int index) { // index -1: the base
    return launchWaves(workItems, slots[size_t(index + 1)]);
  };
  auto reached = [&](int index) {
    return variantApplies(variants[size_t(index)], workItems, maxSeqLen);
  };
  auto fewestBefore = [&](int index) {
    int64_t fewest = waves(-1);
    for (int j = 0; j < index; ++j)
      if (reached(j))
        fewest = std::min(fewest, waves(j));
    return fewest;
  };
  auto steppedBack = [&](int index) {
    const int64_t needed = waves(index);
    const int measured = variants[size_t(index)].maxWaves;
    return (measured == 0 || needed > measured) && needed > fewestBefore(index);
  };
  while (k >= 0 && steppedBack(k))
    do
      --k;
    while (k >= 0 && !reached(k));
  return k;
}

std::vector<Schedule> ScheduleChoice::schedules() const {
  std::vector<Schedule> list = {schedule};
  for (const ScheduleVariant &variant : variants)
    if (std::find(list.begin(), list.end(), variant.schedule) == list.end())
      list.push_back(variant.schedule);
  return list;
}

std::string describeThresholds(const ScheduleVariant &variant) {
  return std::to_string(variant.minWorkItems) + " work items" +
         (variant.minContext > 0 ? " and " + std::to_string(variant.minContext) + " tokens" : "");
}

std::string describeVariants(const std::vector<ScheduleVariant> &variants) {
  std::string text;
  for (const ScheduleVariant &v : variants)
    text += "; from " + describeThresholds(v) + ": " + v.schedule.str();
  return text;
}

namespace {

/// The part of a spec that must match exactly: op, format and arch.
bool sameKernelFamily(const KernelSpec &a, const KernelSpec &b) {
  return a.op == b.op && a.arch == b.arch && a.format == b.format;
}

/// Driver, NVRTC and kvarn version differences (those recorded on both sides).
int softwareDifferences(const TuningEnvironment &tuned, const TuningEnvironment &here) {
  return (tuned.driverVersion != 0 && here.driverVersion != 0 &&
          tuned.driverVersion != here.driverVersion) +
         (!tuned.nvrtcVersion.empty() && !here.nvrtcVersion.empty() &&
          tuned.nvrtcVersion != here.nvrtcVersion) +
         (!tuned.kvarnVersion.empty() && !here.kvarnVersion.empty() &&
          tuned.kvarnVersion != here.kvarnVersion);
}

bool sameSilicon(const TuningEnvironment &a, const TuningEnvironment &b) {
  return a.arch == b.arch && a.smCount == b.smCount && a.l2Bytes == b.l2Bytes &&
         a.memoryClockKhz == b.memoryClockKhz;
}

double relativeDifference(double a, double b) {
  return a == b ? 0.0 : std::fabs(a - b) / std::max(std::fabs(a), std::fabs(b));
}

double siliconDistance(const TuningEnvironment &a, const TuningEnvironment &b) {
  return relativeDifference(a.smCount, b.smCount) + relativeDifference(double(a.l2Bytes), double(b.l2Bytes)) +
         relativeDifference(a.memoryClockKhz, b.memoryClockKhz);
}

std::string describeSoftware(const TuningEnvironment &tuned, const TuningEnvironment &here) {
  std::string notes;
  if (tuned.driverVersion != here.driverVersion)
    notes += "; tuned under driver " + std::to_string(tuned.driverVersion) + " (here " +
             std::to_string(here.driverVersion) + ")";
  if (tuned.nvrtcVersion != here.nvrtcVersion)
    notes += "; tuned with NVRTC " + tuned.nvrtcVersion + " (here " + here.nvrtcVersion + ")";
  if (!tuned.kvarnVersion.empty() && tuned.kvarnVersion != here.kvarnVersion)
    notes += "; tuned with kvarn " + tuned.kvarnVersion + " (here " + here.kvarnVersion + ")";
  return notes;
}

} // namespace

ScheduleChoice chooseSchedule(const std::vector<ConfigFile> &configs, const KernelSpec &spec,
                              const TuningEnvironment &here) {
  const ConfigFile *bestFile = nullptr;
  const TunedEntry *best = nullptr;
  std::tuple<double, int, double, int> bestRank{0, 0, 0, 0};
  int illegal = 0;
  for (const ConfigFile &file : configs)
    for (const TunedEntry &entry : file.entries) {
      if (!sameKernelFamily(entry.spec, spec))
        continue;
      if (!validateSchedule(spec, entry.schedule)) {
        ++illegal;
        continue;
      }
      const double qDistance = std::fabs(std::log2(double(entry.spec.queryHeadsPerKvHead)) -
                                         std::log2(double(spec.queryHeadsPerKvHead)));
      std::tuple<double, int, double, int> rank{qDistance, entry.spec.dtype == spec.dtype ? 0 : 1,
                                                siliconDistance(file.environment, here),
                                                softwareDifferences(file.environment, here)};
      if (!best || rank < bestRank) {
        best = &entry;
        bestFile = &file;
        bestRank = rank;
      }
    }
  ScheduleChoice choice;
  if (!best) {
    choice.schedule = defaultSchedule(spec.op);
    choice.rule = "default";
    choice.explanation = "no tuned config for " + spec.str() +
                         (illegal ? " (" + std::to_string(illegal) +
                                        " entries are not legal for this spec here)"
                                  : std::string()) +
                         "; the op's default schedule";
    return choice;
  }
  choice.schedule = best->schedule;
  // Variants: those legal here, their thresholds scaled to this GPU's SM count (a grid that
  // fills the tuning GPU fills a GPU of twice the SMs at twice the work).
  int droppedVariants = 0;
  for (const ScheduleVariant &variant : best->variants) {
    if (!validateSchedule(spec, variant.schedule)) {
      ++droppedVariants;
      continue;
    }
    ScheduleVariant scaled = variant;
    if (bestFile->environment.smCount > 0 && here.smCount > 0 &&
        bestFile->environment.smCount != here.smCount)
      scaled.minWorkItems = int(std::max<int64_t>(
          1, (int64_t(variant.minWorkItems) * here.smCount + bestFile->environment.smCount - 1) /
                 bestFile->environment.smCount));
    if (!choice.variants.empty() &&
        std::make_pair(scaled.minWorkItems, scaled.minContext) <=
            std::make_pair(choice.variants.back().minWorkItems, choice.variants.back().minContext))
      continue; // a rounding collision: keep the first
    choice.variants.push_back(scaled);
  }
  const bool exact = best->spec == spec && sameSilicon(bestFile->environment, here) &&
                     softwareDifferences(bestFile->environment, here) == 0;
  choice.rule = exact ? "tuned" : "nearest";
  choice.explanation = choice.rule + ": " + best->spec.str() + " of " + bestFile->origin;
  if (!exact) {
    if (best->spec.queryHeadsPerKvHead != spec.queryHeadsPerKvHead)
      choice.explanation += "; tuned for q" + std::to_string(best->spec.queryHeadsPerKvHead) +
                            ", asked q" + std::to_string(spec.queryHeadsPerKvHead);
    if (best->spec.dtype != spec.dtype)
      choice.explanation += "; tuned for another dtype";
    if (!sameSilicon(bestFile->environment, here))
      choice.explanation += "; tuned on " + std::to_string(bestFile->environment.smCount) +
                            " SMs, " + std::to_string(bestFile->environment.l2Bytes >> 20) +
                            " MB L2, " + std::to_string(bestFile->environment.memoryClockKhz / 1000) +
                            " MHz memory (here " + std::to_string(here.smCount) + ", " +
                            std::to_string(here.l2Bytes >> 20) + ", " +
                            std::to_string(here.memoryClockKhz / 1000) + ")";
  }
  choice.explanation += describeSoftware(bestFile->environment, here);
  choice.explanation += describeVariants(choice.variants);
  if (droppedVariants)
    choice.explanation += "; " + std::to_string(droppedVariants) +
                          " variants are not legal for this spec here";
  return choice;
}

} // namespace kvarn
