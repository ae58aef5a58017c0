// The CUDA driver API, loaded with dlopen("libcuda.so.1") so kvarn binaries start on machines
// without a driver. Every call goes through KVARN_CU, which records call, file, line and error.
#pragma once

#include "kvarn/status.h"

#include <cuda.h>

#include <string>

namespace kvarn {

// clang-format off
#define KVARN_DRIVER_FUNCTIONS(X)                                                                \
  X(cuInit) X(cuDriverGetVersion) X(cuDeviceGet) X(cuDeviceGetCount) X(cuDeviceGetName)          \
  X(cuDeviceGetAttribute) X(cuDevicePrimaryCtxRetain) X(cuDevicePrimaryCtxRelease)               \
  X(cuCtxSetCurrent) X(cuCtxSynchronize) X(cuModuleLoadData) X(cuModuleUnload)                   \
  X(cuModuleGetFunction) X(cuFuncSetAttribute) X(cuFuncGetAttribute) X(cuLaunchKernel)           \
  X(cuLaunchKernelEx) X(cuModuleGetGlobal)                                                       \
  X(cuMemAlloc) X(cuMemFree) X(cuMemcpyHtoD) X(cuMemcpyDtoH) X(cuMemcpyDtoD) X(cuMemsetD8)       \
  X(cuMemsetD32) X(cuMemcpyHtoDAsync) X(cuMemcpyDtoDAsync) X(cuEventCreate) X(cuEventRecord)      \
  X(cuEventSynchronize) X(cuEventElapsedTime) X(cuEventDestroy) X(cuStreamCreate)                \
  X(cuStreamSynchronize) X(cuStreamDestroy) X(cuStreamBeginCapture) X(cuStreamEndCapture)        \
  X(cuGraphInstantiate) X(cuGraphLaunch) X(cuGraphExecDestroy) X(cuGraphDestroy)                 \
  X(cuGetErrorName) X(cuGetErrorString) X(cuDevicePrimaryCtxReset) X(cuCtxGetDevice)             \
  X(cuCtxGetCurrent) X(cuCtxPushCurrent) X(cuCtxPopCurrent)
// clang-format on

/// Function table of the loaded driver.
struct Driver {
#define KVARN_DRIVER_MEMBER(name) decltype(&::name) name = nullptr;
  KVARN_DRIVER_FUNCTIONS(KVARN_DRIVER_MEMBER)
#undef KVARN_DRIVER_MEMBER

  /// Loads libcuda.so.1 and cuInit(0) once; a clear error when no driver or GPU is present.
  static Expected<const Driver *> get();
};

/// Checks a driver call; the error names the call, file, line, error name and string.
Status checkDriver(CUresult result, const char *call, const char *file, int line);
#define KVARN_CU(call) ::kvarn::checkDriver((call), #call, __FILE__, __LINE__)

/// One GPU with a current (primary) context.
struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int computeMajor = 0, computeMinor = 0, smCount = 0, l2Bytes = 0, memoryClockKhz = 0;
  int memoryBusBits = 0, maxSharedPerBlockOptin = 0, driverVersion = 0;
  /// "sm_90a" on Hopper (arch-specific features), "sm_XY" otherwise.
  std::string arch() const;
};

/// Retains the primary context of `ordinal`, makes it current and describes the device.
Expected<DeviceInfo> openDevice(int ordinal);

} // namespace kvarn
