// The runtime's compiler plug-in interface: a function that turns (spec, schedule) into an
// artifact. libkvarn_jit (MLIR linked statically) installs one; libkvarn alone never compiles.
#pragma once

#include "kvarn/bundle.h"
#include "kvarn/cache.h"
#include "kvarn/kvarn.h"
#include "kvarn/spec.h"

#include <functional>
#include <optional>
#include <vector>

namespace kvarn {

using JitCompiler = std::function<Expected<Artifact>(const KernelSpec &, const Schedule &)>;

/// Installs the compiler a runtime uses on a cache miss (when JIT is enabled).
void setJitCompiler(kvarn_runtime runtime, JitCompiler compiler);

/// The cache key of a prepared kernel: spec, schedule and the kvarn version (which pins the
/// device library and the generator).
std::string preparedKernelKey(const KernelSpec &spec, const Schedule &schedule);

/// Builds with `jit` the prepared kernels of `schedules` that `cache` lacks, in parallel (one
/// compile per thread, up to `threads`; 0: hostThreads()), each schedule once however often it
/// is listed, and
/// stores each one built (ArtifactCache::getOrBuild: once across threads and processes). Returns,
/// per position of `schedules`, the error of its failed build, or nothing where the kernel was
/// cached or built. kvarn_prepare builds a config's schedule and its decode variants so.
std::vector<std::optional<Error>> buildPreparedKernels(ArtifactCache &cache, const JitCompiler &jit,
                                                       const KernelSpec &spec,
                                                       const std::vector<Schedule> &schedules,
                                                       int threads = 0);

/// The bundle recompiled for `arch` from its CUDA sources and device-library headers (NVRTC,
/// no compiler needed): entries get the spec with the new arch, its prepared-kernel key, fresh
/// PTX/cubin and metadata. An entry whose schedule is not legal on `arch` (e.g. too much shared
/// memory) is left out and named in `skipped`. The entries compile in parallel (up to
/// hostThreads()) and keep their order. An error when the bundle carries no sources or headers,
/// or a source fails to compile (the first such entry's).
Expected<Bundle> retargetBundle(const Bundle &bundle, const std::string &arch,
                                std::vector<std::string> *skipped);

} // namespace kvarn

extern "C" {
/// Installs kvarn's MLIR compiler into `runtime` (defined in libkvarn_jit).
kvarn_status kvarn_jit_install(kvarn_runtime runtime);
}
