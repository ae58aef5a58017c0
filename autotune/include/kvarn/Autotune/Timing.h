// Kernel timing shared by the benchmarks and the tuner: CUDA events around each launch, warm-ups,
// medians, several kernels interleaved so they see the same GPU state.
#pragma once

#include "kvarn/status.h"

#include <functional>
#include <vector>

namespace kvarn::autotune {

/// Median time (ms) of `iterations` launches of each run (called with the iteration index, so a
/// run can rotate its inputs), interleaved, after three warm-up rounds.
Expected<std::vector<double>> timeInterleaved(const std::vector<std::function<Status(int)>> &runs,
                                              int iterations);

} // namespace kvarn::autotune
