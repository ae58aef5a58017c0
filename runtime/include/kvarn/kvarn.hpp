// kvarn.hpp: a thin header-only C++ wrapper over kvarn.h. RAII for the runtime, exceptions
// (kvarn::Error: the status and kvarn_last_error()) for failed calls; kernels stay owned by the
// runtime, as in the C API. Nothing here adds work to the hot path: launches forward directly.
#pragma once

#include "kvarn.h"

#include <stdexcept>
#include <string>
#include <utility>

namespace kvarn::api {

/// A failed kvarn call: the status and the thread's last error message.
class Error : public std::runtime_error {
public:
  Error(kvarn_status status, const std::string &what)
      : std::runtime_error(std::string(kvarn_status_name(status)) + ": " + what), status_(status) {}
  kvarn_status status() const { return status_; }

private:
  kvarn_status status_;
};

inline void check(kvarn_status status) {
  if (status != KVARN_OK)
    throw Error(status, kvarn_last_error());
}

/// A prepared kernel (owned by its runtime; copyable handle).
class Kernel {
public:
  explicit Kernel(kvarn_kernel handle) : handle_(handle) {}
  kvarn_kernel handle() const { return handle_; }
  /// The schedule and how it was chosen ("explicit", "tuned: ...", "nearest: ...", ...).
  std::pair<std::string, std::string> describe() const {
    const char *schedule = nullptr, *how = nullptr;
    check(kvarn_kernel_describe(handle_, &schedule, &how));
    return {schedule, how};
  }
  /// The schedule a decode launch of batch x numKvHeads whose longest request has maxSeqLen
  /// tokens (0: not known) runs (a config variant or the kernel's).
  std::string decodeSchedule(int batch, int numKvHeads, int maxSeqLen = 0) const {
    const char *schedule = nullptr;
    check(kvarn_decode_schedule(handle_, batch, numKvHeads, maxSeqLen, &schedule));
    return schedule;
  }
  int planDecode(int batch, int numKvHeads, int maxSeqLen) const {
    int splits = 0;
    check(kvarn_plan_decode(handle_, batch, numKvHeads, maxSeqLen, &splits));
    return splits;
  }
  size_t decodeWorkspaceBytes(int batch, int numKvHeads, int splits) const {
    size_t bytes = 0;
    check(kvarn_decode_workspace_size(handle_, batch, numKvHeads, splits, &bytes));
    return bytes;
  }
  void decode(const kvarn_decode_args &args, int splits, kvarn_stream stream = nullptr) const {
    check(kvarn_launch_decode(handle_, &args, splits, stream));
  }
  void flush(const kvarn_flush_args &args, kvarn_stream stream = nullptr) const {
    check(kvarn_launch_flush(handle_, &args, stream));
  }
  void append(const kvarn_append_args &args, kvarn_stream stream = nullptr) const {
    check(kvarn_launch_append(handle_, &args, stream));
  }
  void dequantize(const kvarn_dequantize_args &args, kvarn_stream stream = nullptr) const {
    check(kvarn_launch_dequantize(handle_, &args, stream));
  }

private:
  kvarn_kernel handle_;
};

/// A runtime on one GPU (destroyed with the object).
class Runtime {
public:
  struct Options {
    int device = 0;
    std::string cacheDir;   ///< "": $KVARN_CACHE_DIR, $XDG_CACHE_HOME/kvarn or ~/.cache/kvarn
    bool jit = true;        ///< false: production mode
    int logLevel = 1;
    std::string configsDir; ///< "": $KVARN_CONFIGS_DIR or none
  };
  Runtime() : Runtime(Options{}) {}
  explicit Runtime(const Options &o) {
    kvarn_runtime_options options{o.device, o.cacheDir.empty() ? nullptr : o.cacheDir.c_str(),
                                  o.jit ? 1 : 0, o.logLevel,
                                  o.configsDir.empty() ? nullptr : o.configsDir.c_str()};
    check(kvarn_runtime_create(&options, &runtime_));
  }
  Runtime(const Runtime &) = delete;
  Runtime &operator=(const Runtime &) = delete;
  Runtime(Runtime &&other) noexcept : runtime_(std::exchange(other.runtime_, nullptr)) {}
  Runtime &operator=(Runtime &&other) noexcept {
    std::swap(runtime_, other.runtime_);
    return *this;
  }
  ~Runtime() {
    if (runtime_)
      kvarn_runtime_destroy(runtime_);
  }
  kvarn_runtime handle() const { return runtime_; }
  /// "sm_90a" and the SM count.
  std::pair<std::string, int> device() const {
    const char *arch = nullptr;
    int sms = 0;
    check(kvarn_runtime_device(runtime_, &arch, &sms));
    return {arch, sms};
  }
  void loadBundle(const std::string &path) { check(kvarn_load_bundle(runtime_, path.c_str())); }
  /// `schedule` "" = the tuned configs' choice.
  Kernel prepare(const std::string &spec, const std::string &schedule = "") {
    kvarn_kernel kernel = nullptr;
    check(kvarn_prepare(runtime_, spec.c_str(), schedule.empty() ? nullptr : schedule.c_str(),
                        &kernel));
    return Kernel(kernel);
  }

private:
  kvarn_runtime runtime_ = nullptr;
};

inline std::string version() { return kvarn_version(); }

} // namespace kvarn::api
