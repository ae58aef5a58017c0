// Kernel timing shared by the benchmarks and the tuner: CUDA events around each launch, warm-ups,
// medians with their spread, several kernels interleaved so they see the same GPU state, CUDA
// graph replay, and the GPU's measured read bandwidth (the roofline).
#pragma once

#include "kvarn/driver.h"
#include "kvarn/status.h"

#include <functional>
#include <vector>

namespace kvarn::autotune {

/// Median and spread (10th and 90th percentile) of a kernel's samples, in ms; graphMs is the
/// median of CUDA-graph replays (0 when not measured).
struct Timing {
  double medianMs = 0, p10Ms = 0, p90Ms = 0, graphMs = 0;
  int samples = 0;
};

/// `iterations` event-timed launches of each run (called with the iteration index, so a run can
/// rotate its inputs), interleaved, after three warm-up rounds: median and spread per run.
Expected<std::vector<Timing>> timeInterleavedStats(
    const std::vector<std::function<Status(int)>> &runs, int iterations);

/// The medians of timeInterleavedStats.
Expected<std::vector<double>> timeInterleaved(const std::vector<std::function<Status(int)>> &runs,
                                              int iterations);

/// Captures one launch (issued on `stream`) into a CUDA graph and returns the median time (ms)
/// of `iterations` replays after three warm-ups.
Expected<double> timeGraphReplay(const std::function<Status(CUstream)> &launch, int iterations);

/// The GPU's read bandwidth (GB/s): a streaming read of 4 GiB, median of 10.
Expected<double> measureReadBandwidth(const DeviceInfo &info);

} // namespace kvarn::autotune
