// Event-timed medians of interleaved kernel launches.
#include "kvarn/Autotune/Timing.h"

#include "kvarn/driver.h"

#include <algorithm>

namespace kvarn::autotune {
namespace {
const Driver &driver() { return **Driver::get(); }
} // namespace

Expected<std::vector<double>> timeInterleaved(const std::vector<std::function<Status(int)>> &runs,
                                              int iterations) {
  const Driver &d = driver();
  CUevent start, stop;
  if (Status s = KVARN_CU(d.cuEventCreate(&start, CU_EVENT_DEFAULT)); !s)
    return s.error();
  if (Status s = KVARN_CU(d.cuEventCreate(&stop, CU_EVENT_DEFAULT)); !s)
    return s.error();
  std::vector<std::vector<double>> samples(runs.size());
  for (int warm = 0; warm < 3; ++warm)
    for (const auto &run : runs)
      if (Status s = run(warm); !s)
        return s.error();
  for (int it = 0; it < iterations; ++it)
    for (size_t k = 0; k < runs.size(); ++k) {
      d.cuEventRecord(start, nullptr);
      if (Status s = runs[k](it); !s)
        return s.error();
      d.cuEventRecord(stop, nullptr);
      if (Status s = KVARN_CU(d.cuEventSynchronize(stop)); !s)
        return s.error();
      float ms = 0;
      d.cuEventElapsedTime(&ms, start, stop);
      samples[k].push_back(ms);
    }
  d.cuEventDestroy(start);
  d.cuEventDestroy(stop);
  std::vector<double> medians;
  for (std::vector<double> &s : samples) {
    std::sort(s.begin(), s.end());
    medians.push_back(s[s.size() / 2]);
  }
  return medians;
}

} // namespace kvarn::autotune
