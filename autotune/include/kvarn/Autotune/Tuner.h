// The autotuner: candidates from the schedule search space, static pruning, a correctness check
// against the CPU reference before any timing, median timing, selection, tuned configs.
#pragma once

#include "kvarn/cache.h"
#include "kvarn/launch.h"
#include "kvarn/spec.h"
#include "kvarn/status.h"

#include <functional>
#include <string>
#include <vector>

namespace kvarn::autotune {

/// Compiles (through the artifact cache) and loads a kernel for this process's GPU.
Expected<KernelModule> compileAndLoad(const KernelSpec &spec, const Schedule &schedule,
                                      ArtifactCache &cache);

/// One schedule tried for a spec; `rejected` says why it was not selected (pruned, failed to
/// compile, spilled, wrong results); `ms` is its median time when measured.
struct Candidate {
  Schedule schedule;
  std::string rejected;
  double ms = 0;
};

struct TuneResult {
  KernelSpec spec;
  bool found = false;
  Schedule best;
  double bestMs = 0;
  std::vector<Candidate> candidates;
};

/// Measures one schedule: an error rejects the candidate with that message.
using Measure = std::function<Expected<double>(const Schedule &)>;

/// Why a candidate is not worth measuring ("" if it is): illegal (validateSchedule), or a
/// `min_ctas` bound that does not bind, leaves fewer than 128 registers, or cannot fit that many
/// CTAs' shared memory on one SM.
std::string staticPruneReason(const KernelSpec &spec, const Schedule &schedule);

/// Prunes the search space with staticPruneReason, measures the rest, picks the fastest (ties:
/// fewer warps). Pure logic, testable with a fake measure.
TuneResult selectSchedule(const KernelSpec &spec, const std::vector<Schedule> &space,
                          const Measure &measure);

struct TuneOptions {
  int device = 0;
  std::vector<std::string> presets = {"kvarn_k4v2_g128", "kvarn_k4v4_g128"};
  int headDim = 128;
  std::vector<int> queryHeadsPerKvHead = {1, 4, 8};
  int numKvHeads = 8;
  int batch = 16;           ///< decode bucket the configs are tuned at
  int context = 16384;
  int iterations = 10;
  std::string configsDirectory = "configs";
};

/// Tunes decode and flush of the presets on a GPU and writes `<configs>/<gpu key>.json`.
Status runTune(const TuneOptions &options);

/// The tuning-key environment of a GPU ("sm90a-132sm-60mb-l2-3201mhz"), for config file names.
std::string environmentKey(int computeMajor, int computeMinor, int smCount, int l2Bytes,
                           int memoryClockKhz);

} // namespace kvarn::autotune
