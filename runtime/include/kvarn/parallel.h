// A parallel loop for the host's bulk work (the CPU reference's records and decode, candidate
// compiles): indices handed out one at a time from an atomic counter, so the result of each index
// does not depend on the thread that ran it.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <thread>
#include <vector>

namespace kvarn {

/// Threads for the host's bulk work: every hardware thread, or KVARN_HOST_THREADS (>= 1) if set.
inline int hostThreads() {
  if (const char *text = std::getenv("KVARN_HOST_THREADS"))
    if (const int n = std::atoi(text); n >= 1)
      return n;
  return int(std::max(1u, std::thread::hardware_concurrency()));
}

/// Calls body(i) for every i in [0, count) on up to `threads` threads (0: hostThreads()).
template <typename Body> void parallelFor(size_t count, Body &&body, int threads = 0) {
  const size_t workers =
      std::min(count, size_t(std::max(1, threads > 0 ? threads : hostThreads())));
  if (workers <= 1) {
    for (size_t i = 0; i < count; ++i)
      body(i);
    return;
  }
  std::atomic<size_t> next{0};
  std::vector<std::thread> pool;
  pool.reserve(workers);
  for (size_t t = 0; t < workers; ++t)
    pool.emplace_back([&] {
      for (size_t i = next++; i < count; i = next++)
        body(i);
    });
  for (std::thread &thread : pool)
    thread.join();
}

} // namespace kvarn
