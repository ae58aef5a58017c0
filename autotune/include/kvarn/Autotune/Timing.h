// Kernel timing shared by the benchmarks and the tuner: CUDA events around each launch, warm-ups,
// medians with their spread, several kernels interleaved so they see the same GPU state, CUDA
// graph replay, and the GPU's measured read bandwidth (the roofline).
#pragma once

#include "kvarn/driver.h"
#include "kvarn/launch.h"
#include "kvarn/status.h"

#include <functional>
#include <optional>
#include <vector>

namespace kvarn::autotune {

/// Median and spread (10th and 90th percentile) of a kernel's samples, in ms; graphMs is the
/// median of CUDA-graph replays (0 when not measured). A timing over several decode buckets also
/// keeps each bucket's median (bucketMs, in bucket order; empty for one bucket).
struct Timing {
  double medianMs = 0, p10Ms = 0, p90Ms = 0, graphMs = 0;
  int samples = 0;
  std::vector<double> bucketMs;
};

/// A kernel that keeps the GPU busy for `microseconds` (a spin on the global timer), launched
/// before the start event of a timed launch: the host enqueues the timed kernels while it runs,
/// so the events time the GPU's work without the host's launch latency, as in an engine whose
/// layers are queued back to back or replayed from a CUDA graph.
class LaunchGate {
public:
  static Expected<LaunchGate> create(const DeviceInfo &info, unsigned microseconds = 20);
  /// Launches the spin on the default stream.
  Status hold() const;
  unsigned microseconds() const { return microseconds_; }

private:
  LaunchGate(KernelModule module, unsigned microseconds)
      : module_(std::move(module)), microseconds_(microseconds) {}
  KernelModule module_;
  unsigned microseconds_ = 0;
};

/// A LaunchGate when `wanted`, else none; an error only when a wanted gate cannot be made.
Expected<std::optional<LaunchGate>> launchGateIf(const DeviceInfo &info, bool wanted);

/// `iterations` event-timed launches of each run (called with the iteration index, so a run can
/// rotate its inputs), interleaved, after three warm-up rounds: median and spread per run. With
/// a gate, each timed launch is queued behind the gate's spin (see LaunchGate); without one, the
/// GPU is idle at the start event and the time includes the host's launch latency. With
/// `restRatio` > 0 the GPU then idles for restRatio times each timed launch's duration, so long
/// runs of heavy launches do not hold it at its power cap (TuneOptions::restRatio).
Expected<std::vector<Timing>> timeInterleavedStats(
    const std::vector<std::function<Status(int)>> &runs, int iterations,
    const LaunchGate *gate = nullptr, double restRatio = 0);

/// The medians of timeInterleavedStats.
Expected<std::vector<double>> timeInterleaved(const std::vector<std::function<Status(int)>> &runs,
                                              int iterations, const LaunchGate *gate = nullptr);

/// Captures `launches` launches (`launch(stream, k)`, k = 0 .. launches - 1: one per L2-cold copy
/// of the inputs, so no launch finds its bytes in L2) into one CUDA graph and returns the median
/// time per launch (ms) of `iterations` replays after three warm-ups; after each replay the GPU
/// rests `restRatio` times the replay's time, as in timeInterleavedStats.
Expected<double> timeGraphReplay(const std::function<Status(CUstream, int)> &launch, int launches,
                                 int iterations, double restRatio = 0);

/// The GPU's read bandwidth (GB/s): a streaming read of 4 GiB, median of 10.
Expected<double> measureReadBandwidth(const DeviceInfo &info);

} // namespace kvarn::autotune
