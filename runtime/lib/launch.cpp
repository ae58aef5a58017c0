// Module loading and kernel launches through the driver API.
#include "kvarn/launch.h"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <utility>

namespace kvarn {
namespace {
const Driver &driver() { return **Driver::get(); }
} // namespace

DeviceBuffer::~DeviceBuffer() {
  if (pointer_)
    driver().cuMemFree(pointer_);
}
DeviceBuffer::DeviceBuffer(DeviceBuffer &&other) noexcept
    : pointer_(std::exchange(other.pointer_, 0)), bytes_(std::exchange(other.bytes_, 0)) {}
DeviceBuffer &DeviceBuffer::operator=(DeviceBuffer &&other) noexcept {
  if (this != &other) {
    if (pointer_)
      driver().cuMemFree(pointer_);
    pointer_ = std::exchange(other.pointer_, 0);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

Expected<DeviceBuffer> DeviceBuffer::allocate(size_t bytes) {
  Expected<const Driver *> d = Driver::get();
  if (!d)
    return d.error();
  DeviceBuffer buffer;
  buffer.bytes_ = bytes;
  if (Status s = KVARN_CU((*d)->cuMemAlloc(&buffer.pointer_, std::max<size_t>(bytes, 16))); !s)
    return s.error();
  return buffer;
}

Status DeviceBuffer::upload(const void *data, size_t bytes, size_t offset) {
  if (offset + bytes > bytes_)
    return makeError(ErrorCode::BufferSize, "upload past the end of a device buffer");
  return KVARN_CU(driver().cuMemcpyHtoD(pointer_ + offset, data, bytes));
}
Status DeviceBuffer::download(void *data, size_t bytes, size_t offset) const {
  if (offset + bytes > bytes_)
    return makeError(ErrorCode::BufferSize, "download past the end of a device buffer");
  return KVARN_CU(driver().cuMemcpyDtoH(data, pointer_ + offset, bytes));
}
Status DeviceBuffer::fill(unsigned char value) {
  return KVARN_CU(driver().cuMemsetD8(pointer_, value, std::max<size_t>(bytes_, 16)));
}

Status DeviceBuffer::fillWithPattern(const std::vector<uint8_t> &pattern) {
  const size_t first = std::min(pattern.size(), bytes_);
  if (Status s = upload(pattern.data(), first); !s)
    return s;
  for (size_t filled = first; filled < bytes_ && first > 0;) {
    const size_t chunk = std::min(filled, bytes_ - filled);
    if (Status s = KVARN_CU(driver().cuMemcpyDtoD(pointer_ + filled, pointer_, chunk)); !s)
      return s;
    filled += chunk;
  }
  return Status::success();
}

void KernelModule::Unloader::operator()(std::remove_pointer_t<CUmodule> *module) const {
  driver().cuModuleUnload(module);
}

namespace {

/// CTAs of `warps` warps and `sharedBytes` of dynamic shared memory that fit on one
/// multiprocessor of the current device at once: registers (registerBudget's model: per warp in
/// units of 256 from each partition's quarter of the file), shared memory (plus the 1 KB the
/// driver reserves per CTA), threads and the CTA limit.
Expected<int> residentCtas(const Driver &d, CUfunction function, int warps, size_t sharedBytes) {
  CUdevice device;
  if (Status s = KVARN_CU(d.cuCtxGetDevice(&device)); !s)
    return s.error();
  int registers = 0, registersPerSm = 0, sharedPerSm = 0, threadsPerSm = 0, ctasPerSm = 0;
  for (auto [value, attribute] :
       {std::pair{&registersPerSm, CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR},
        {&sharedPerSm, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR},
        {&threadsPerSm, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR},
        {&ctasPerSm, CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR}})
    if (Status s = KVARN_CU(d.cuDeviceGetAttribute(value, attribute, device)); !s)
      return s.error();
  if (Status s = KVARN_CU(d.cuFuncGetAttribute(&registers, CU_FUNC_ATTRIBUTE_NUM_REGS, function)); !s)
    return s.error();
  warps = std::max(1, warps);
  const int registersPerWarp =
      std::max(1, (registers * 32 + kWarpRegisterUnit - 1) / kWarpRegisterUnit) * kWarpRegisterUnit;
  const int warpsByRegisters =
      kRegisterPartitions * ((registersPerSm / kRegisterPartitions) / registersPerWarp);
  int fit = std::min({warpsByRegisters / warps, threadsPerSm / (32 * warps), ctasPerSm});
  if (sharedBytes > 0)
    fit = std::min(fit, int(size_t(sharedPerSm) / (sharedBytes + 1024)));
  return std::max(1, fit);
}

} // namespace

Expected<KernelModule> KernelModule::load(const std::vector<char> &image,
                                          const std::vector<std::string> &names,
                                          const Schedule &schedule, size_t sharedBytes) {
  Expected<const Driver *> loaded = Driver::get();
  if (!loaded)
    return loaded.error();
  const Driver &d = **loaded;
  KernelModule module;
  module.schedule_ = schedule;
  module.sharedBytes_ = sharedBytes;
  CUmodule handle = nullptr;
  if (Status s = KVARN_CU(d.cuModuleLoadData(&handle, image.data())); !s)
    return s.error();
  module.module_.reset(handle);
  for (const std::string &name : names) {
    CUfunction function;
    if (Status s =
            KVARN_CU(d.cuModuleGetFunction(&function, module.module_.get(), name.c_str()));
        !s)
      return makeError(s.error().code, "kernel " + name + ": " + s.error().message);
    if (Status s = KVARN_CU(d.cuFuncSetAttribute(
            function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, int(sharedBytes)));
        !s)
      return makeError(s.error().code, "kernel " + name + " cannot use " +
                                           std::to_string(sharedBytes) +
                                           " bytes of shared memory: " + s.error().message);
    module.functions_.push_back(function);
  }
  if (!module.functions_.empty()) {
    Expected<int> resident = residentCtas(d, module.functions_.front(), schedule.warps, sharedBytes);
    if (!resident)
      return resident.error();
    module.residentCtasPerSm_ = *resident;
    CUdevice device;
    if (Status s = KVARN_CU(d.cuCtxGetDevice(&device)); !s)
      return s.error();
    if (Status s = KVARN_CU(d.cuDeviceGetAttribute(
            &module.multiprocessors_, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, device));
        !s)
      return s.error();
  }
  if (module.functions_.size() > 1) {
    // A merge that waits for the decode grid (griddepcontrol, sm_90 and later) comes with this
    // marker; a module without it (built for sm_80, or by a device library whose merge does not
    // wait) has its merge launched plainly.
    CUdeviceptr marker = 0;
    size_t markerBytes = 0;
    module.programmaticMerge_ = d.cuModuleGetGlobal(&marker, &markerBytes, module.module_.get(),
                                                    "kvarn_merge_awaits_decode") == CUDA_SUCCESS;
  }
  return module;
}

Expected<std::pair<CUdeviceptr, size_t>> KernelModule::global(const char *name) const {
  CUdeviceptr pointer = 0;
  size_t bytes = 0;
  if (driver().cuModuleGetGlobal(&pointer, &bytes, module_.get(), name) != CUDA_SUCCESS)
    return makeError(ErrorCode::NotFound,
                     std::string("the kernel module has no device variable ") + name);
  return std::make_pair(pointer, bytes);
}

int KernelModule::registers(size_t index) const {
  int value = 0;
  driver().cuFuncGetAttribute(&value, CU_FUNC_ATTRIBUTE_NUM_REGS, functions_.at(index));
  return value;
}
int KernelModule::localBytes(size_t index) const {
  int value = 0;
  driver().cuFuncGetAttribute(&value, CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES, functions_.at(index));
  return value;
}

UnsignedDivisor unsignedDivisor(uint32_t divisor) {
  UnsignedDivisor d;
  if (divisor <= 1)
    return d; // t = 0, q = n
  const int l = std::bit_width(divisor - 1); // ceil(log2(divisor))
  d.multiplier = uint32_t((uint64_t(1) << 32) * ((uint64_t(1) << l) - divisor) / divisor + 1);
  d.shift1 = 1;
  d.shift2 = l - 1;
  return d;
}

uint32_t divide(uint32_t n, const UnsignedDivisor &d) {
  const uint32_t t = uint32_t((uint64_t(d.multiplier) * n) >> 32);
  return (t + ((n - t) >> d.shift1)) >> d.shift2;
}

Expected<UnsignedDivisor> splitDivisor(int numSplits) {
  if (numSplits < 1)
    return makeError(ErrorCode::InvalidArgument, "decode launch of " + std::to_string(numSplits) +
                                                     " splits: the split count must be at least 1");
  return unsignedDivisor(uint32_t(numSplits));
}

int decodeSinkSplit(bool interleaved, int fixedSplits, int batch, int numSplits, int warps) {
  return interleaved && fixedSplits == 0 && batch == 1 && numSplits > 1 && warps >= 2 ? 1 : 0;
}

double splitWalkTime(int pages, int warps) {
  const int perCtaWarps = std::max(1, warps);
  const auto pagesOfWarp = [&](int w) {
    return (std::max(0, pages - w) + perCtaWarps - 1) / perCtaWarps;
  };
  if (perCtaWarps % kSchedulersPerSm != 0)
    return pagesOfWarp(0);
  // Scheduler 0 holds warps 0, 4, 8, ..., the most pages (a warp never walks more pages than the
  // one before it). While m of them walk, each page of each takes m / min(m, saturating) lone
  // page times; the unit is a warp's page time with every warp walking.
  const int perScheduler = perCtaWarps / kSchedulersPerSm;
  const auto share = [](int m) { return double(m) / std::min(m, kSaturatingWarps); };
  double time = 0.0;
  int done = 0;
  for (int m = perScheduler; m >= 1; --m) {
    const int fewest = pagesOfWarp(kSchedulersPerSm * (m - 1));
    time += (fewest - done) * share(m);
    done = fewest;
  }
  return time / share(perScheduler);
}

DecodePlan planDecode(int batch, int numKvHeads, int maxSeqLen, int tileTokens, int smCount,
                      int warps, int ctasPerSm, int maxSplits, bool interleaved) {
  constexpr double ctaOverhead = 1.0, mergeOverhead = 1.0; // in page times of one warp
  const int pages = std::max(1, (maxSeqLen + tileTokens - 1) / tileTokens);
  const int64_t ctas = std::max(1, batch * numKvHeads);
  const int64_t slots = int64_t(std::max(1, smCount)) * std::max(1, ctasPerSm);
  const int perCtaWarps = std::max(1, warps);
  DecodePlan plan;
  double best = 0.0;
  for (int splits = 1; splits <= std::min(std::max(1, maxSplits), pages); ++splits) {
    const int64_t waves = (ctas * splits + slots - 1) / slots;
    // A sink split walks the first and the last page (two warps, never longer than the others'
    // walks in these launches); the other splits share the pages between.
    const int sink = decodeSinkSplit(interleaved, 0, batch, splits, warps);
    const int walked = std::max(0, pages - 2 * sink);
    const int pagesPerSplit = (walked + splits - sink - 1) / (splits - sink);
    const double cost = double(waves) * (splitWalkTime(pagesPerSplit, perCtaWarps) + ctaOverhead) +
                        (splits > 1 ? mergeOverhead : 0.0);
    if (splits == 1 || cost < best - 1e-9) {
      best = cost;
      plan.numSplits = splits;
    }
  }
  plan.sinkSplit = decodeSinkSplit(interleaved, 0, batch, plan.numSplits, warps) != 0;
  return plan;
}

DecodePlan decodePlanOf(const KernelModule &module, int batch, int numSplits) {
  const Schedule &schedule = module.schedule();
  return DecodePlan{numSplits, decodeSinkSplit(earlyLookupWindow(schedule), schedule.splits,
                                               batch, numSplits, schedule.warps) != 0};
}

DecodePlan planDecode(const KernelModule &module, int batch, int numKvHeads, int maxSeqLen,
                      int tileTokens, int smCount, bool sinkSplit) {
  const Schedule &schedule = module.schedule();
  if (schedule.splits > 0)
    return DecodePlan{schedule.splits};
  return planDecode(batch, numKvHeads, maxSeqLen, tileTokens, smCount, schedule.warps,
                    module.residentCtasPerSm(), kMaxPlannedSplits,
                    sinkSplit && earlyLookupWindow(schedule));
}

size_t decodeWorkspaceBytes(int batch, int numKvHeads, int queryHeadsPerKv, int headDim,
                            int splits) {
  const size_t rows = size_t(batch) * numKvHeads * queryHeadsPerKv * splits;
  return rows * (size_t(headDim) + 1) * sizeof(float);
}

void bindDecodeWorkspace(dev::DecodeParams &params, void *workspace, int queryHeadsPerKv,
                         int headDim, int splits) {
  const size_t rows = size_t(params.batch) * params.numKvHeads * queryHeadsPerKv * splits;
  params.partialOut = static_cast<float *>(workspace);
  params.partialLse = params.partialOut ? params.partialOut + rows * headDim : nullptr;
}

Status launchDecode(const KernelModule &module, dev::DecodeParams params, int numQueryHeadsPerKv,
                    const DecodePlan &plan, CUstream stream) {
  const Driver &d = driver();
  params.numSplits = plan.numSplits;
  if (plan.sinkSplit && plan.numSplits > 1 && module.schedule().warps < 2)
    return makeError(ErrorCode::InvalidArgument,
                     "decode plan with a sink split for a kernel of one warp per CTA (" +
                         module.schedule().str() +
                         "): the sink split needs a second warp for the last page");
  // The interleaved kernels' warps step over the splits that share the pages (all but a sink
  // split; kernels without a planned interleaved walk read neither walkSplits nor the divisor).
  params.walkSplits = plan.walkSplits();
  Expected<UnsignedDivisor> divisor = splitDivisor(params.walkSplits);
  if (!divisor)
    return divisor.error();
  params.splitMultiplier = divisor->multiplier;
  params.splitShift1 = divisor->shift1;
  params.splitShift2 = divisor->shift2;
  void *arguments[] = {&params};
  if (Status s = KVARN_CU(d.cuLaunchKernel(module.function(0), params.numKvHeads, params.batch,
                                           plan.numSplits, module.threads(), 1, 1,
                                           unsigned(module.sharedBytes()), stream, arguments,
                                           nullptr));
      !s)
    return s;
  if (plan.numSplits <= 1 || module.functionCount() < 2)
    return Status::success();
  // The merge launches as the decode's programmatic dependent where the kernels support it: its
  // CTAs start while the decode's last pages run and wait for the partials on the device.
  CUlaunchAttribute attribute{};
  attribute.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
  attribute.value.programmaticStreamSerializationAllowed = 1;
  CUlaunchConfig config{};
  config.gridDimX = unsigned(params.numKvHeads);
  config.gridDimY = unsigned(params.batch);
  config.gridDimZ = unsigned(numQueryHeadsPerKv);
  config.blockDimX = unsigned(module.threads());
  config.blockDimY = config.blockDimZ = 1;
  config.sharedMemBytes = unsigned(module.sharedBytes());
  config.hStream = stream;
  config.attrs = module.programmaticMerge() ? &attribute : nullptr;
  config.numAttrs = module.programmaticMerge() ? 1 : 0;
  return KVARN_CU(d.cuLaunchKernelEx(&config, module.function(1), arguments, nullptr));
}

Status launchFlush(const KernelModule &module, const dev::FlushParams &params, CUstream stream) {
  if (params.numEntries == 0)
    return Status::success();
  dev::FlushParams copy = params;
  // The CTAs resident at once; each prefetches the tile of the CTA one wave later (flush.cuh).
  copy.prefetchStride = module.residentCtasPerSm() * module.multiprocessors();
  void *arguments[] = {&copy};
  // CTA e quantizes entry e's K tile, CTA E + e its V tile (flush.cuh).
  return KVARN_CU(driver().cuLaunchKernel(module.function(0), 2 * unsigned(params.numEntries), 1, 1,
                                          module.threads(), 1, 1, unsigned(module.sharedBytes()),
                                          stream, arguments, nullptr));
}

Status launchAppend(const KernelModule &module, const dev::AppendParams &params,
                    CUstream stream) {
  const int rowsPerCta = module.schedule().rowsPerCta;
  if (params.numTokens == 0)
    return Status::success();
  dev::AppendParams copy = params;
  void *arguments[] = {&copy};
  const unsigned grid = unsigned((params.numTokens + rowsPerCta - 1) / rowsPerCta);
  return KVARN_CU(driver().cuLaunchKernel(module.function(0), grid, 1, 1, module.threads(), 1, 1,
                                          unsigned(module.sharedBytes()), stream, arguments,
                                          nullptr));
}

Status launchDequantize(const KernelModule &module, const dev::DequantizeParams &params,
                        int smCount, CUstream stream) {
  if (params.numEntries == 0)
    return Status::success();
  dev::DequantizeParams copy = params;
  void *arguments[] = {&copy};
  const int warps = module.threads() / 32;
  const long long rows = 128LL * params.numEntries; // an upper bound of G * entries
  const unsigned grid = unsigned(std::min<long long>(8LL * smCount, (rows + warps - 1) / warps));
  return KVARN_CU(driver().cuLaunchKernel(module.function(0), grid, 1, 1, module.threads(), 1, 1,
                                          unsigned(module.sharedBytes()), stream, arguments,
                                          nullptr));
}

} // namespace kvarn
