// Event-timed medians of interleaved kernel launches, graph replay, measured bandwidth.
#include "kvarn/Autotune/Timing.h"

#include "kvarn/launch.h"
#include "kvarn/nvrtc.h"

#include <algorithm>
#include <chrono>
#include <thread>

namespace kvarn::autotune {
namespace {
const Driver &driver() { return **Driver::get(); }

/// After `ms` of GPU work, idles for `restRatio` times it (nothing at 0), so heavy launches timed
/// back to back do not hold the GPU at its power cap.
void rest(float ms, double restRatio) {
  if (restRatio > 0)
    std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(restRatio * ms));
}

/// Compiles a one-kernel CUDA source for the device and loads its function `name`.
Expected<KernelModule> loadUtilityKernel(const DeviceInfo &info, const char *source,
                                         const char *programName, const char *name, int warps) {
  Expected<NvrtcOutput> compiled = compileCuda(source, programName, info.arch(), {});
  if (!compiled)
    return compiled.error();
  Schedule schedule;
  schedule.warps = warps;
  return KernelModule::load(compiled->cubin, {name}, schedule, 0);
}

double percentile(const std::vector<double> &sorted, double fraction) {
  const size_t index = size_t(fraction * double(sorted.size() - 1) + 0.5);
  return sorted[std::min(index, sorted.size() - 1)];
}
} // namespace

Expected<LaunchGate> LaunchGate::create(const DeviceInfo &info, unsigned microseconds) {
  const char *source = R"(
extern "C" __global__ void spin(unsigned long long nanoseconds) {
  unsigned long long start, now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  } while (now - start < nanoseconds);
})";
  Expected<KernelModule> module = loadUtilityKernel(info, source, "launch_gate", "spin", 1);
  if (!module)
    return module.error();
  return LaunchGate(std::move(*module), microseconds);
}

Expected<std::optional<LaunchGate>> launchGateIf(const DeviceInfo &info, bool wanted) {
  if (!wanted)
    return std::optional<LaunchGate>();
  Expected<LaunchGate> created = LaunchGate::create(info);
  if (!created)
    return created.error();
  return std::optional<LaunchGate>(std::move(*created));
}

Status LaunchGate::hold() const {
  unsigned long long nanoseconds = 1000ull * microseconds_;
  void *arguments[] = {&nanoseconds};
  return KVARN_CU(driver().cuLaunchKernel(module_.function(0), 1, 1, 1, 32, 1, 1, 0, nullptr,
                                          arguments, nullptr));
}

Expected<std::vector<Timing>> timeInterleavedStats(
    const std::vector<std::function<Status(int)>> &runs, int iterations, const LaunchGate *gate,
    double restRatio) {
  const Driver &d = driver();
  CUevent start, stop;
  if (Status s = KVARN_CU(d.cuEventCreate(&start, CU_EVENT_DEFAULT)); !s)
    return s.error();
  if (Status s = KVARN_CU(d.cuEventCreate(&stop, CU_EVENT_DEFAULT)); !s)
    return s.error();
  auto release = [&] {
    d.cuEventDestroy(start);
    d.cuEventDestroy(stop);
  };
  std::vector<std::vector<double>> samples(runs.size());
  for (int warm = 0; warm < 3; ++warm)
    for (const auto &run : runs)
      if (Status s = run(warm); !s) {
        release();
        return s.error();
      }
  for (int it = 0; it < iterations; ++it)
    for (size_t k = 0; k < runs.size(); ++k) {
      Status s = gate ? gate->hold() : Status::success();
      if (!s) {
        release();
        return s.error();
      }
      d.cuEventRecord(start, nullptr);
      s = runs[k](it);
      d.cuEventRecord(stop, nullptr);
      if (s)
        s = KVARN_CU(d.cuEventSynchronize(stop));
      if (!s) {
        release();
        return s.error();
      }
      float ms = 0;
      d.cuEventElapsedTime(&ms, start, stop);
      samples[k].push_back(ms);
      rest(ms, restRatio);
    }
  release();
  std::vector<Timing> timings;
  for (std::vector<double> &s : samples) {
    std::sort(s.begin(), s.end());
    Timing t;
    t.medianMs = s[s.size() / 2];
    t.p10Ms = percentile(s, 0.1);
    t.p90Ms = percentile(s, 0.9);
    t.samples = int(s.size());
    timings.push_back(t);
  }
  return timings;
}

Expected<std::vector<double>> timeInterleaved(const std::vector<std::function<Status(int)>> &runs,
                                              int iterations, const LaunchGate *gate) {
  Expected<std::vector<Timing>> stats = timeInterleavedStats(runs, iterations, gate);
  if (!stats)
    return stats.error();
  std::vector<double> medians;
  for (const Timing &t : *stats)
    medians.push_back(t.medianMs);
  return medians;
}

Expected<double> timeGraphReplay(const std::function<Status(CUstream, int)> &launch,
                                 int launches, int iterations, double restRatio) {
  const Driver &d = driver();
  launches = std::max(1, launches);
  CUstream stream = nullptr;
  if (Status s = KVARN_CU(d.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING)); !s)
    return s.error();
  CUgraph graph = nullptr;
  CUgraphExec exec = nullptr;
  Status s = KVARN_CU(d.cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_GLOBAL));
  if (s) {
    Status launched = Status::success();
    for (int k = 0; k < launches && launched; ++k)
      launched = launch(stream, k);
    s = KVARN_CU(d.cuStreamEndCapture(stream, &graph));
    if (!launched)
      s = launched;
  }
  if (s)
    s = KVARN_CU(d.cuGraphInstantiate(&exec, graph, 0));
  std::vector<double> samples;
  CUevent start = nullptr, stop = nullptr;
  if (s)
    s = KVARN_CU(d.cuEventCreate(&start, CU_EVENT_DEFAULT));
  if (s)
    s = KVARN_CU(d.cuEventCreate(&stop, CU_EVENT_DEFAULT));
  for (int it = -3; s && it < iterations; ++it) {
    d.cuEventRecord(start, stream);
    s = KVARN_CU(d.cuGraphLaunch(exec, stream));
    d.cuEventRecord(stop, stream);
    if (s)
      s = KVARN_CU(d.cuEventSynchronize(stop));
    float ms = 0;
    d.cuEventElapsedTime(&ms, start, stop);
    if (it >= 0)
      samples.push_back(ms / launches);
    rest(ms, restRatio);
  }
  if (start)
    d.cuEventDestroy(start);
  if (stop)
    d.cuEventDestroy(stop);
  if (exec)
    d.cuGraphExecDestroy(exec);
  if (graph)
    d.cuGraphDestroy(graph);
  d.cuStreamDestroy(stream);
  if (!s)
    return s.error();
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

/// Measures the read bandwidth (GB/s) with a streaming-read kernel over 4 GiB.
Expected<double> measureReadBandwidth(const DeviceInfo &info) {
  const char *source = R"(
extern "C" __global__ void readAll(const uint4 *data, unsigned long long count, unsigned *sink) {
  // Four independent 16-byte loads in flight per thread (each warp reads 512 contiguous bytes
  // per load), so the SMs keep enough bytes in flight to reach the DRAM's bandwidth.
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
  unsigned acc = 0;
  for (; i + 3 * stride < count; i += 4 * stride) {
    const uint4 a = __ldg(data + i), b = __ldg(data + i + stride);
    const uint4 c = __ldg(data + i + 2 * stride), d = __ldg(data + i + 3 * stride);
    acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^
           d.z ^ d.w;
  }
  for (; i < count; i += stride) {
    const uint4 v = __ldg(data + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) sink[0] = acc;
})";
  Expected<KernelModule> module = loadUtilityKernel(info, source, "read_bandwidth", "readAll", 16);
  if (!module)
    return module.error();
  const size_t bytes = size_t(4) << 30;
  Expected<DeviceBuffer> data = DeviceBuffer::allocate(bytes), sink = DeviceBuffer::allocate(16);
  if (!data || !sink)
    return makeError(ErrorCode::Internal, "cannot allocate the bandwidth buffer");
  if (Status s = data->fill(1); !s)
    return s.error();
  CUdeviceptr pointer = data->get(), sinkPointer = sink->get();
  unsigned long long count = bytes / 16;
  void *arguments[] = {&pointer, &count, &sinkPointer};
  auto run = [&](int) {
    return KVARN_CU(driver().cuLaunchKernel(module->function(0), info.smCount * 4, 1, 1, 512, 1,
                                            1, 0, nullptr, arguments, nullptr));
  };
  Expected<std::vector<double>> ms = timeInterleaved({run}, 10);
  if (!ms)
    return ms.error();
  return double(bytes) / ((*ms)[0] * 1e-3) / 1e9;
}

} // namespace kvarn::autotune
