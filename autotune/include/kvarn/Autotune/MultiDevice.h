// Tuning on several GPUs of one host: one worker process per GPU (sharing the artifact cache),
// then a merge that gives every GPU of the same silicon the same schedule per spec, so the ranks
// of a tensor-parallel engine load identical kernels.
#pragma once

#include "kvarn/Autotune/Tuner.h"

#include <string>
#include <vector>

namespace kvarn::autotune {

/// One worker's results: its GPU ordinal, silicon key and tuning results.
struct DeviceResults {
  int device = 0;
  std::string environment;
  std::vector<TuneResult> results;
};

/// The merged choice for one spec on one silicon key.
struct MergedChoice {
  std::string environment;
  TuneResult result;         ///< result.best is the merged schedule; bestMs its worst median
  bool disagreed = false;
  std::string explanation;   ///< the devices' own choices and how the merge resolved them
};

/// Merges per-device results. Devices of the same silicon key are merged spec by spec: if they
/// chose the same schedule it is kept; otherwise, among the schedules any of them chose that
/// every device measured, the one with the smallest worst-case slowdown against each device's
/// own best (ties: fewer warps, then the schedule text) wins; if no chosen schedule was measured
/// everywhere, the choice of the lowest ordinal wins. The result does not depend on the order
/// of `devices`.
std::vector<MergedChoice> mergeDeviceResults(std::vector<DeviceResults> devices);

/// `kvarn-tune tune --devices`: one `kvarn-tune tune --device N` worker process per GPU
/// (`executable` is this program), then the merge; writes the merged configs per silicon key to
/// the configs directory and prints every disagreement.
Status runTuneOnDevices(const TuneOptions &options, const std::vector<int> &devices,
                        const std::string &executable);

/// The command-line arguments that make a worker tune like `options` on `device`, writing its
/// report to `reportPath` and its configs under `configsDirectory`.
std::vector<std::string> workerArguments(const TuneOptions &options, int device,
                                         const std::string &reportPath,
                                         const std::string &configsDirectory);

} // namespace kvarn::autotune
