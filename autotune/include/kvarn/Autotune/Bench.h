// Benchmarks on the GPU: measured read bandwidth, decode (KVarN vs fp16 paged attention in the
// same run), flush and append. Medians of event-timed launches with a cold L2.
#pragma once

#include "kvarn/status.h"

#include <string>
#include <vector>

namespace kvarn::autotune {

struct BenchOptions {
  int device = 0;
  std::string preset = "kvarn_k4v2_g128";
  int headDim = 128;
  int numQueryHeads = 64;
  int numKvHeads = 8;
  std::vector<int> batches = {1, 4, 16, 32, 64};
  std::vector<int> contexts = {4096, 16384, 32768, 131072};
  int iterations = 20;
  std::string schedule;        ///< decode schedule (default: the schedule defaults)
  bool decode = true, flush = true, append = true, lookup = true;
};

/// Runs the benchmarks and prints their tables; an error when no GPU is present.
Status runBench(const BenchOptions &options);

} // namespace kvarn::autotune
