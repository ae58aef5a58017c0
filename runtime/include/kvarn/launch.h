// Loading generated kernels and launching them with the driver API (CUDA-graph safe: a launch
// does no host allocation, synchronization or filesystem work).
#pragma once

#include "kvarn/driver.h"
#include "kvarn/params.h"
#include "kvarn/spec.h"

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace kvarn {

/// Device memory owned by the host object.
class DeviceBuffer {
public:
  DeviceBuffer() = default;
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer &&other) noexcept;
  DeviceBuffer &operator=(DeviceBuffer &&other) noexcept;
  DeviceBuffer(const DeviceBuffer &) = delete;
  DeviceBuffer &operator=(const DeviceBuffer &) = delete;

  static Expected<DeviceBuffer> allocate(size_t bytes);
  /// A buffer holding a copy of `host`.
  template <typename T> static Expected<DeviceBuffer> copyOf(const std::vector<T> &host) {
    Expected<DeviceBuffer> buffer = allocate(host.size() * sizeof(T));
    if (buffer && !host.empty())
      if (Status s = buffer->upload(host.data(), host.size() * sizeof(T)); !s)
        return s.error();
    return buffer;
  }
  CUdeviceptr get() const { return pointer_; }
  template <typename T> T *as() const { return reinterpret_cast<T *>(pointer_); }
  size_t size() const { return bytes_; }
  Status upload(const void *data, size_t bytes, size_t offset = 0);
  Status download(void *data, size_t bytes, size_t offset = 0) const;
  Status fill(unsigned char value);
  /// Fills the buffer with repeated copies of `pattern` (doubling device-to-device copies).
  Status fillWithPattern(const std::vector<uint8_t> &pattern);

private:
  CUdeviceptr pointer_ = 0;
  size_t bytes_ = 0;
};

/// A loaded module with the kernel functions of one compiled spec.
class KernelModule {
public:
  KernelModule() = default;
  KernelModule(KernelModule &&other) noexcept = default;
  KernelModule &operator=(KernelModule &&other) noexcept = default;
  KernelModule(const KernelModule &) = delete;

  /// Loads a cubin (or PTX), finds `names` and raises their dynamic shared-memory limit.
  static Expected<KernelModule> load(const std::vector<char> &image,
                                     const std::vector<std::string> &names,
                                     const Schedule &schedule, size_t sharedBytes);
  CUfunction function(size_t index) const { return functions_.at(index); }
  size_t functionCount() const { return functions_.size(); }
  int threads() const { return schedule_.warps * 32; }
  const Schedule &schedule() const { return schedule_; }
  size_t sharedBytes() const { return sharedBytes_; }
  /// Address and size of the module's device variable `name` (an error naming it if absent).
  Expected<std::pair<CUdeviceptr, size_t>> global(const char *name) const;
  /// Registers per thread and local (spill) bytes of function `index`.
  int registers(size_t index) const;
  int localBytes(size_t index) const;
  /// CTAs of function 0 resident per multiprocessor (registers, shared memory, threads).
  int residentCtasPerSm() const { return residentCtasPerSm_; }
  /// Multiprocessors of the device the module was loaded on.
  int multiprocessors() const { return multiprocessors_; }
  /// Function 1 (a decode's split merge) waits for function 0's grid on the device, so it may
  /// launch as function 0's programmatic dependent: the module carries the device library's
  /// `kvarn_merge_awaits_decode` marker (kernels generated for sm_90 or later by this library).
  bool programmaticMerge() const { return programmaticMerge_; }

private:
  /// Unloads the module (cuModuleUnload) with its owner; every other member moves by the
  /// defaulted moves, so a move leaves none behind.
  struct Unloader {
    void operator()(std::remove_pointer_t<CUmodule> *module) const;
  };
  std::unique_ptr<std::remove_pointer_t<CUmodule>, Unloader> module_;
  std::vector<CUfunction> functions_;
  Schedule schedule_;
  size_t sharedBytes_ = 0;
  int residentCtasPerSm_ = 1;
  int multiprocessors_ = 1;
  bool programmaticMerge_ = false;
};

/// Unsigned 32-bit division by an invariant divisor d >= 1 as a multiply-high and two shifts:
/// q = (t + ((n - t) >> shift1)) >> shift2 with t = (multiplier * n) >> 32, exact for every
/// 32-bit n (Granlund and Montgomery, "Division by Invariant Integers using Multiplication", PLDI
/// 1994, figure 4.1). The interleaved decode kernels divide a warp's page distance by the split
/// count this way (DecodeParams::splitMultiplier, set by launchDecode; decode.cuh, pagesBetween).
struct UnsignedDivisor {
  uint32_t multiplier = 1;
  int shift1 = 0, shift2 = 0;
};
UnsignedDivisor unsignedDivisor(uint32_t divisor);
/// n / divisor through `d` (the device's formula, for tests).
uint32_t divide(uint32_t n, const UnsignedDivisor &d);
/// The split count's divisor of a decode launch; a launch with no split is refused with
/// InvalidArgument. (The numerators, page distances over the warps, stay below
/// maxBlocksPerRequest, and the divisor is exact for every 32-bit numerator.)
Expected<UnsignedDivisor> splitDivisor(int numSplits);

/// Whether a decode launch gives the first and the last page of its request to its last split
/// (the sink split: warp 0 and warp 1): launches of one request over several planned splits
/// (`fixedSplits` = 0) of the interleaved kernels (earlyLookupWindow) of at least two warps
/// (`warps`; a one-warp CTA has no warp for the last page). An engine keeps those
/// pages in the fp16 pool (page 0 is the format's sink, the last page fills until its flush),
/// and a pool page costs a warp several record pages; walked with the records it lengthened the
/// warp that held it, while the sink split's CTA runs it in a slot the planner leaves free. The
/// other splits interleave pages 1 .. pages - 2 (dev::DecodeParams::walkSplits).
int decodeSinkSplit(bool interleaved, int fixedSplits, int batch, int numSplits, int warps);

/// Host-side split plan of a decode launch (fixed grid for CUDA-graph capture).
struct DecodePlan {
  int numSplits = 1;
  /// The last split walks the first and last pages (decodeSinkSplit: planDecode and decodePlanOf
  /// set it; kernels with a split count compiled in or contiguous page ranges ignore it).
  bool sinkSplit = false;
  /// The splits whose warps share the pages (dev::DecodeParams::walkSplits): all but a sink
  /// split.
  int walkSplits() const { return numSplits - (sinkSplit && numSplits > 1 ? 1 : 0); }
};
/// The plan of a launch of `numSplits` splits the caller chose (the C API's): the sink split
/// where decodeSinkSplit gives one.
DecodePlan decodePlanOf(const KernelModule &module, int batch, int numSplits);

/// Warp schedulers per multiprocessor (sm_70 on): warp w of a CTA issues from scheduler w % 4.
constexpr int kSchedulersPerSm = 4;
/// Warps per scheduler that the decode page loop needs to keep it issuing at its full rate: one
/// warp alone walks a page no faster than two together, and a third adds nothing (the split
/// counts measured on the H200 at 12 warps per CTA, docs/benchmarks.md).
constexpr int kSaturatingWarps = 2;
/// The time of a split's page walk over one CTA's `warps` warps, warp w walking every
/// `warps`-th page from w, in page times of one warp with every warp walking. Up to two warps
/// per scheduler it is the slowest warp's page count; beyond, the scheduler holding the most
/// pages sets it, its warps' pages issued at the saturated rate while two or more still walk:
/// with 12 warps, 64 pages (6 + 5 + 5 per scheduler) take 5.67, 69 (6 + 6 + 6) take 6.
double splitWalkTime(int pages, int warps);

/// Chooses the split count of a decode launch from a makespan model in units of one warp's
/// page time: batch * kv heads * splits CTAs run in waves of smCount * ctasPerSm resident CTAs;
/// a CTA takes its split's walk (splitWalkTime) plus a fixed cost (query rotation, the
/// first page's latency, the warp merge and partial store) of about one page; several splits add
/// the merge kernel. The smallest split count of the least cost wins. For `interleaved` kernels
/// (earlyLookupWindow) a launch of one request over several splits gives its first and last
/// pages to its last split (decodeSinkSplit), so the others share the pages between: a split
/// count that leaves a free slot for that CTA costs nothing more than the one before it.
constexpr int kMaxPlannedSplits = 64; ///< planDecode's default bound (workspaces size for it)
DecodePlan planDecode(int batch, int numKvHeads, int maxSeqLen, int tileTokens, int smCount,
                      int warps, int ctasPerSm, int maxSplits = kMaxPlannedSplits,
                      bool interleaved = false);

/// The plan of a loaded decode kernel: its schedule's fixed split count, else planDecode with its
/// warps, resident CTAs per multiprocessor and page walk (`sinkSplit` false: every split walks
/// every page, as for a cache of fp16 pages only, whose first and last pages cost no more than
/// the others).
DecodePlan planDecode(const KernelModule &module, int batch, int numKvHeads, int maxSeqLen,
                      int tileTokens, int smCount, bool sinkSplit = true);

/// The decode workspace of a launch with `splits` splits: fp32 partial outputs [B, Hq, splits, D],
/// then their LSEs [B, Hq, splits]. One split needs none. The one definition of the layout: the C
/// API, the benchmark, the tuner and the tests size and bind workspaces through these two.
size_t decodeWorkspaceBytes(int batch, int numKvHeads, int queryHeadsPerKv, int headDim,
                            int splits);
/// Points `params`' partial outputs and LSEs into `workspace` (the layout above, for params.batch
/// and params.numKvHeads); a null workspace gives null pointers.
void bindDecodeWorkspace(dev::DecodeParams &params, void *workspace, int queryHeadsPerKv,
                         int headDim, int splits);

/// Launches decode (and its merge kernel when the plan has several splits).
Status launchDecode(const KernelModule &module, dev::DecodeParams params, int numQueryHeadsPerKv,
                    const DecodePlan &plan, CUstream stream);
Status launchFlush(const KernelModule &module, const dev::FlushParams &params, CUstream stream);
Status launchAppend(const KernelModule &module, const dev::AppendParams &params,
                    CUstream stream);
Status launchDequantize(const KernelModule &module, const dev::DequantizeParams &params,
                        int smCount, CUstream stream);

} // namespace kvarn
