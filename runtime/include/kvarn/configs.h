// Tuned configs: the schedules `kvarn-tune tune` selected per GPU, and the lookup that picks one
// for a kernel spec on this GPU with a documented fallback.
//
// A config file (configs/<silicon key>.json, or the configs of a bundle) records the GPU it was
// tuned on (`environment`: arch, SM count, L2 bytes, memory clock, driver, NVRTC, kvarn version)
// and one entry per kernel spec: the selected schedule and its median time. A decode entry may
// add `variants`: schedules that replace the entry's own for launches of at least
// `min_work_items` (request, kv head) pairs, and optionally of at least `min_context` tokens in
// the launch's longest request, where the tuner measured another schedule faster (more warps per
// SM pay once the grid fills the GPU; the fixed cost of more warps does not at small batches,
// nor over short contexts, where it is paid over fewer pages).
//
// chooseSchedule(): among the entries of the same op, format (preset, head_dim, layout) and arch,
//  1. "tuned": the same silicon (SM count, L2, memory clock), the same driver, NVRTC and kvarn
//     version (where recorded) and the same spec (GQA ratio, dtype);
//  2. "nearest": otherwise the entry closest in GQA ratio (log2 distance), then dtype, then
//     silicon (relative SM count, L2 and clock differences), then software differences; the
//     explanation names what differs;
//  3. "default": the op's default schedule when no entry matches or none is legal here.
// Every candidate is validated for the spec on this arch first; the explanation says which rule
// was used and why.
#pragma once

#include "kvarn/spec.h"
#include "kvarn/status.h"

#include <cstdint>
#include <string>
#include <vector>

namespace kvarn {

/// The GPU and software a config was tuned on (or the one asking).
struct TuningEnvironment {
  std::string arch;
  int smCount = 0;
  long long l2Bytes = 0;
  int memoryClockKhz = 0;
  int driverVersion = 0;
  std::string nvrtcVersion;
  std::string kvarnVersion;
};

struct DeviceInfo; // kvarn/driver.h

/// This process's environment on `device` (its silicon, the driver, this NVRTC and kvarn);
/// defined in libkvarn, which has the driver and NVRTC.
TuningEnvironment environmentOf(const DeviceInfo &device);

/// A schedule for decode launches of at least `minWorkItems` (request, kv head) pairs whose
/// longest request has at least `minContext` tokens (0: any length, also an unknown one).
struct ScheduleVariant {
  int minWorkItems = 0;
  Schedule schedule;
  double medianMs = 0; ///< at the tuning shapes it was chosen for (0: not recorded)
  int minContext = 0;
  /// The most waves of one-split CTAs the tuner measured this variant fastest at (0: not
  /// recorded): a launch that needs no more keeps it (variantForLaunch).
  int maxWaves = 0;
};

struct TunedEntry {
  KernelSpec spec;
  Schedule schedule;
  double medianMs = 0;
  /// Strictly ascending by (minWorkItems, minContext), minWorkItems > 0.
  std::vector<ScheduleVariant> variants;
};

struct ConfigFile {
  std::string origin; ///< path or "bundle <path>", for explanations
  TuningEnvironment environment;
  std::vector<TunedEntry> entries;
};

/// Parses a configs JSON document; the error names the field that is wrong.
Expected<ConfigFile> parseConfigFile(const std::string &json, const std::string &origin);

/// Every *.json file of a directory; files that do not parse are skipped and listed in
/// `warnings` (a missing directory yields nothing and no warning).
std::vector<ConfigFile> loadConfigDirectory(const std::string &directory,
                                            std::vector<std::string> *warnings = nullptr);

struct ScheduleChoice {
  Schedule schedule;
  /// The entry's variants legal here (thresholds scaled by this GPU's SM count when it differs
  /// from the tuning GPU's).
  std::vector<ScheduleVariant> variants;
  std::string rule;        ///< "tuned", "nearest" or "default"
  std::string explanation; ///< which entry of which file, and what differs

  /// The schedule, then each variant's schedule that differs from those before it: the kernels a
  /// runtime prepares for this choice.
  std::vector<Schedule> schedules() const;
};

/// Waves of one-split CTAs a launch of `workItems` pairs needs on `slots` resident CTAs (each at
/// least 1).
int64_t launchWaves(int64_t workItems, int64_t slots);

/// Whether a launch of `workItems` = batch * kv heads pairs whose longest request has
/// `maxSeqLen` tokens (0: not known) reaches a variant's thresholds.
bool variantApplies(const ScheduleVariant &variant, int64_t workItems, int64_t maxSeqLen);

/// Index into `variants` of the last variant whose thresholds the launch reaches, or -1 for the
/// entry's own schedule (thresholds alone; launches go through variantForLaunch).
int variantForWork(const std::vector<ScheduleVariant> &variants, int64_t workItems,
                   int64_t maxSeqLen = 0);

/// variantForWork's pick for a launch, stepped back (to the previous variant the launch
/// reaches) while the pick would need more waves of one-split CTAs than the base or an earlier
/// variant the launch reaches (`slots[0]` resident CTAs of the base schedule, `slots[k + 1]` of
/// variant k, on the whole GPU) and more than the variant's `maxWaves` (when recorded): a
/// variant with fewer, larger CTAs, tuned where its grid fits one wave, is not stretched over
/// launches it would run in more waves than it was measured at, where each CTA's fixed cost is
/// paid once per wave (measured: 28% slower at 32 x 4K tokens), while one the tuner measured
/// fastest at several waves keeps them (measured: `warps=8` at head_dim 256 in two waves 25%
/// faster than `warps=2` in one). -1 for the base.
int variantForLaunch(const std::vector<ScheduleVariant> &variants,
                     const std::vector<int64_t> &slots, int64_t workItems, int64_t maxSeqLen = 0);

/// "<n> work items", plus " and <c> tokens" for a variant keyed by context.
std::string describeThresholds(const ScheduleVariant &variant);

/// "; from <thresholds>: <schedule>" per variant (explanations, reports).
std::string describeVariants(const std::vector<ScheduleVariant> &variants);

ScheduleChoice chooseSchedule(const std::vector<ConfigFile> &configs, const KernelSpec &spec,
                              const TuningEnvironment &here);

} // namespace kvarn
