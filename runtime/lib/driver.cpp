// dlopen-based CUDA driver loader.
#include "kvarn/driver.h"

#include <dlfcn.h>

#include <mutex>

namespace kvarn {

Status checkDriver(CUresult result, const char *call, const char *file, int line) {
  if (result == CUDA_SUCCESS)
    return Status::success();
  const char *name = "CUDA_ERROR_UNKNOWN", *text = "unknown error";
  if (Expected<const Driver *> driver = Driver::get(); driver) {
    (*driver)->cuGetErrorName(result, &name);
    (*driver)->cuGetErrorString(result, &text);
  }
  return makeError(ErrorCode::Internal, std::string(call) + " failed: " + name + " (" + text +
                                            ") at " + file + ":" + std::to_string(line));
}

Expected<const Driver *> Driver::get() {
  static Driver driver;
  static Error failure;
  static bool failed = false;
  static std::once_flag once;
  std::call_once(once, [] {
    void *library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!library) {
      failed = true;
      failure = makeError(ErrorCode::NotFound,
                          std::string("no CUDA driver: dlopen(libcuda.so.1) failed (") +
                              dlerror() + "); GPU commands need an NVIDIA driver");
      return;
    }
#define KVARN_DRIVER_LOAD(name)                                                                  \
  driver.name = reinterpret_cast<decltype(driver.name)>(dlsym(library, KVARN_SYMBOL(name)));     \
  if (!driver.name && !failed) {                                                                 \
    failed = true;                                                                               \
    failure = makeError(ErrorCode::NotFound,                                                     \
                        std::string("the CUDA driver lacks ") + KVARN_SYMBOL(name) +             \
                            "; update the NVIDIA driver");                                       \
  }
#define KVARN_SYMBOL_EXPANDED(name) #name
#define KVARN_SYMBOL(name) KVARN_SYMBOL_EXPANDED(name)
    KVARN_DRIVER_FUNCTIONS(KVARN_DRIVER_LOAD)
#undef KVARN_DRIVER_LOAD
    if (failed)
      return;
    const CUresult init = driver.cuInit(0);
    if (init != CUDA_SUCCESS) {
      const char *name = "?";
      driver.cuGetErrorName(init, &name);
      failed = true;
      failure = makeError(ErrorCode::NotFound,
                          std::string("cuInit failed (") + name + "): no usable NVIDIA GPU");
    }
  });
  if (failed)
    return failure;
  return &driver;
}

std::string DeviceInfo::arch() const {
  std::string text = "sm_" + std::to_string(computeMajor) + std::to_string(computeMinor);
  if (computeMajor == 9 || computeMajor == 10)
    text += "a";
  return text;
}

Expected<DeviceInfo> openDevice(int ordinal) {
  Expected<const Driver *> loaded = Driver::get();
  if (!loaded)
    return loaded.error();
  const Driver &d = **loaded;
  int count = 0;
  if (Status s = KVARN_CU(d.cuDeviceGetCount(&count)); !s)
    return s.error();
  if (ordinal < 0 || ordinal >= count)
    return makeError(ErrorCode::NotFound, "GPU " + std::to_string(ordinal) + " does not exist (" +
                                              std::to_string(count) + " visible)");
  CUdevice device;
  CUcontext context;
  if (Status s = KVARN_CU(d.cuDeviceGet(&device, ordinal)); !s)
    return s.error();
  if (Status s = KVARN_CU(d.cuDevicePrimaryCtxRetain(&context, device)); !s)
    return s.error();
  if (Status s = KVARN_CU(d.cuCtxSetCurrent(context)); !s)
    return s.error();
  DeviceInfo info;
  info.ordinal = ordinal;
  char name[256] = {};
  d.cuDeviceGetName(name, sizeof(name), device);
  info.name = name;
  auto attribute = [&](CUdevice_attribute what) {
    int value = 0;
    d.cuDeviceGetAttribute(&value, what, device);
    return value;
  };
  info.computeMajor = attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR);
  info.computeMinor = attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
  info.smCount = attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
  info.l2Bytes = attribute(CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE);
  info.memoryClockKhz = attribute(CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE);
  info.memoryBusBits = attribute(CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH);
  info.maxSharedPerBlockOptin = attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN);
  d.cuDriverGetVersion(&info.driverVersion);
  return info;
}

} // namespace kvarn
