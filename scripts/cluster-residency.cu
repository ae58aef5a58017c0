// Measures whether a decode launch of one request could merge its splits inside thread-block
// clusters (distributed shared memory) instead of a merge kernel: how many clusters of 8 and 16
// one-CTA-per-SM blocks (256 threads, 120 KB of shared memory, like the B = 1 decode kernel's
// 8 warps) are resident at once, and what a launch with clusters costs against a plain one.
//
//   nvcc -O3 -arch=sm_90a -o /tmp/cluster-residency scripts/cluster-residency.cu
//   /tmp/cluster-residency
//
// Results on the H200 and their use: docs/benchmarks.md, nineteenth session.
#include <algorithm>
#include <cooperative_groups.h>
#include <cstdio>
#include <vector>

namespace cg = cooperative_groups;

// `iters` dependent FMAs, then 8 KB of "partials" per CTA in shared memory; with clusters each
// CTA sums a slice of every CTA's partials through distributed shared memory.
__global__ void __launch_bounds__(256, 1) work(float *out, int iters, int clustered) {
  extern __shared__ float partials[];
  float x = float(threadIdx.x);
  for (int i = 0; i < iters; ++i)
    x = x * 0.999f + 1.0f;
  for (int k = 0; k < 8; ++k)
    partials[k * 256 + threadIdx.x] = x + float(k);
  float result = x;
  if (clustered) {
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();
    const int ranks = int(cluster.num_blocks()), slice = 8 * 256 / ranks;
    result = 0.0f;
    for (int e = int(threadIdx.x); e < slice; e += 256)
      for (int r = 0; r < ranks; ++r)
        result += cluster.map_shared_rank(partials, r)[int(cluster.block_rank()) * slice + e];
    cluster.sync(); // no CTA leaves while another reads its shared memory
  }
  out[(blockIdx.z * gridDim.x + blockIdx.x) * 256 + threadIdx.x] = result;
}

int main() {
  constexpr int kSharedBytes = 120 * 1024;
  float *out = nullptr;
  if (cudaMalloc(&out, size_t(8) * 16 * 256 * sizeof(float)) != cudaSuccess) {
    std::printf("no GPU memory: %s\n", cudaGetErrorString(cudaGetLastError()));
    return 1;
  }
  cudaFuncSetAttribute(work, cudaFuncAttributeMaxDynamicSharedMemorySize, kSharedBytes);
  cudaFuncSetAttribute(work, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int clusterSize : {0, 8, 16}) {
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(8, 1, 16); // 8 kv heads x 16 splits, one CTA per SM
    config.blockDim = dim3(256);
    config.dynamicSmemBytes = kSharedBytes;
    cudaLaunchAttribute attribute = {};
    attribute.id = cudaLaunchAttributeClusterDimension;
    attribute.val.clusterDim.x = 1;
    attribute.val.clusterDim.y = 1;
    attribute.val.clusterDim.z = unsigned(clusterSize);
    config.attrs = &attribute;
    config.numAttrs = clusterSize ? 1 : 0;
    if (clusterSize) {
      int clusters = -1;
      cudaError_t e = cudaOccupancyMaxActiveClusters(&clusters, work, &config);
      std::printf("clusters of %d: at most %d resident (%s); the grid has %d\n", clusterSize,
                  clusters, cudaGetErrorString(e), 8 * 16 / clusterSize);
    }
    for (int iters : {0, 20000}) {
      std::vector<float> us;
      for (int rep = 0; rep < 60; ++rep) {
        cudaEventRecord(start);
        cudaError_t e = cudaLaunchKernelEx(&config, work, out, iters, clusterSize ? 1 : 0);
        cudaEventRecord(stop);
        cudaEventSynchronize(stop);
        if (e != cudaSuccess) {
          std::printf("launch failed: %s\n", cudaGetErrorString(e));
          return 1;
        }
        float ms = 0.0f;
        cudaEventElapsedTime(&ms, start, stop);
        if (rep >= 10) // warm-up
          us.push_back(ms * 1000.0f);
      }
      std::sort(us.begin(), us.end());
      std::printf("clusters of %2d, %5d FMAs per thread: median %.2f us (min %.2f)\n",
                  clusterSize, iters, us[us.size() / 2], us.front());
    }
  }
  cudaError_t e = cudaDeviceSynchronize();
  std::printf("%s\n", e == cudaSuccess ? "done" : cudaGetErrorString(e));
  return e == cudaSuccess ? 0 : 1;
}
