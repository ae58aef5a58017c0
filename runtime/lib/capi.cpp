// The C API (kvarn.h) over the runtime: status codes, thread-local errors, prepared kernels.
#include "kvarn/bundle.h"
#include "kvarn/configs.h"
#include "kvarn/device_library_hash.h"
#include "kvarn/jit.h"
#include "kvarn/kvarn.h"
#include "kvarn/launch.h"
#include "kvarn/nvrtc.h"
#include "kvarn/parallel.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>

struct kvarn_kernel_t {
  kvarn::KernelSpec spec;
  kvarn::Schedule schedule;
  std::string scheduleText, how; ///< kvarn_kernel_describe
  kvarn::KernelModule module;
  int smCount = 0;
  /// Decode variants of a config-chosen schedule (configs.h): a launch that reaches
  /// variants[k]'s thresholds (work items, context) runs variantModules[k].
  std::vector<kvarn::ScheduleVariant> variants;
  std::vector<kvarn::KernelModule> variantModules;
  std::vector<std::string> variantTexts; ///< kvarn_decode_schedule
  std::vector<int64_t> slots;            ///< resident CTAs on the GPU: the base's, then each variant's

  /// Index of the variant a decode launch of `workItems` (request, kv head) pairs whose longest
  /// request has `maxSeqLen` tokens (0: not known) runs (-1: the kernel's own schedule).
  int variantFor(int64_t workItems, int64_t maxSeqLen) const {
    return variants.empty() ? -1 : kvarn::variantForLaunch(variants, slots, workItems, maxSeqLen);
  }
  const kvarn::KernelModule &moduleFor(int64_t workItems, int64_t maxSeqLen) const {
    const int k = variantFor(workItems, maxSeqLen);
    return k < 0 ? module : variantModules[size_t(k)];
  }
};

struct kvarn_runtime_t {
  kvarn_runtime_options options{};
  kvarn::DeviceInfo device;
  std::unique_ptr<kvarn::ArtifactCache> cache;
  kvarn::JitCompiler jit;
  std::vector<kvarn::ConfigFile> configs; ///< configs_dir, then loaded bundles
  kvarn::TuningEnvironment environment;   ///< this GPU, for the config lookup
  CUcontext context = nullptr;            ///< the device's primary context (openDevice)
  std::mutex mutex;
  std::map<std::string, std::unique_ptr<kvarn_kernel_t>> kernels; ///< by prepared-kernel key
  std::map<std::string, kvarn_kernel_t *> byText; ///< by the caller's "spec|schedule" text
};

namespace {

thread_local std::string lastError;

/// The runtime's context current on the calling thread for a scope, the thread's own restored
/// after: kvarn_prepare loads modules and kvarn_runtime_destroy unloads them in the runtime's
/// context from any thread, one that never used CUDA included.
class ContextScope {
public:
  explicit ContextScope(CUcontext context) {
    if (kvarn::Expected<const kvarn::Driver *> d = kvarn::Driver::get(); d && context)
      pushed_ = (*d)->cuCtxPushCurrent(context) == CUDA_SUCCESS;
  }
  ~ContextScope() {
    CUcontext popped = nullptr;
    if (pushed_)
      (*kvarn::Driver::get())->cuCtxPopCurrent(&popped);
  }
  ContextScope(const ContextScope &) = delete;
  ContextScope &operator=(const ContextScope &) = delete;

private:
  bool pushed_ = false;
};

kvarn_status toStatus(kvarn::ErrorCode code) {
  switch (code) {
  case kvarn::ErrorCode::InvalidArgument: return KVARN_ERROR_INVALID_ARGUMENT;
  case kvarn::ErrorCode::InvalidData: return KVARN_ERROR_INVALID_DATA;
  case kvarn::ErrorCode::BufferSize: return KVARN_ERROR_BUFFER_SIZE;
  case kvarn::ErrorCode::Unsupported: return KVARN_ERROR_UNSUPPORTED;
  case kvarn::ErrorCode::NotFound: return KVARN_ERROR_NOT_FOUND;
  case kvarn::ErrorCode::Io: return KVARN_ERROR_IO;
  case kvarn::ErrorCode::Internal: return KVARN_ERROR_INTERNAL;
  }
  return KVARN_ERROR_INTERNAL;
}

kvarn_status fail(kvarn_status status, const std::string &message) {
  lastError = message;
  return status;
}
kvarn_status fail(const kvarn::Error &error) { return fail(toStatus(error.code), error.message); }
kvarn_status ok() {
  lastError.clear();
  return KVARN_OK;
}

#define KVARN_REQUIRE(condition, message)                                                        \
  if (!(condition))                                                                              \
  return fail(KVARN_ERROR_INVALID_ARGUMENT, message)

/// A launch argument's address and the alignment its kernel needs of it (dev::BufferAlignment).
struct AlignedBuffer {
  const char *name;
  const void *pointer;
  int alignment;
};
/// Refuses the first of `buffers` that is not aligned as its kernel needs: the kernel's accesses
/// to it would fault on the device, which loses the whole CUDA context. NULL passes (required
/// pointers are checked for NULL first).
kvarn_status requireAligned(const char *function, std::initializer_list<AlignedBuffer> buffers) {
  for (const AlignedBuffer &buffer : buffers) {
    const auto address = reinterpret_cast<uintptr_t>(buffer.pointer);
    if (address % uintptr_t(buffer.alignment) == 0)
      continue;
    char hex[2 + 2 * sizeof(uintptr_t) + 1];
    std::snprintf(hex, sizeof hex, "%#llx", static_cast<unsigned long long>(address));
    return fail(KVARN_ERROR_BUFFER_SIZE, std::string(function) + ": " + buffer.name + " (" + hex +
                                             ") is not " + std::to_string(buffer.alignment) +
                                             "-byte aligned");
  }
  return KVARN_OK;
}

/// Kernel names from an artifact's metadata ({"kernels":"a,b", ...}).
std::vector<std::string> kernelNames(const std::string &metadata) {
  std::vector<std::string> names;
  nlohmann::json json = nlohmann::json::parse(metadata, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object() || !json.contains("kernels") || !json["kernels"].is_string())
    return names;
  std::string list = json["kernels"].get<std::string>();
  for (size_t start = 0; start <= list.size();) {
    const size_t end = std::min(list.find(',', start), list.size());
    if (end > start)
      names.push_back(list.substr(start, end - start));
    start = end + 1;
  }
  return names;
}

/// The kernel of `spec` with `schedule` from the runtime's cache, or built by `jit` on a miss
/// (the runtime's JIT where enabled and installed, else empty); a cubin that fails to load is
/// rebuilt once (with a JIT), then reported. Needs no lock: the cache is thread-safe, and a
/// miss is built once across threads and processes (getOrBuild).
kvarn::Expected<kvarn::KernelModule> loadKernel(kvarn_runtime runtime,
                                                const kvarn::JitCompiler &jit,
                                                const kvarn::KernelSpec &spec,
                                                const kvarn::Schedule &schedule) {
  const std::string key = kvarn::preparedKernelKey(spec, schedule);
  std::optional<kvarn::Artifact> artifact = runtime->cache->lookup(key);
  if (!artifact) {
    if (!jit)
      return kvarn::makeError(
          kvarn::ErrorCode::NotFound,
          "no kernel for " + spec.str() + " (schedule " + schedule.str() + ") in the cache" +
              (runtime->options.enable_jit ? " and no JIT compiler installed (link libkvarn_jit "
                                             "and call kvarn_jit_install)"
                                           : "; JIT is disabled"));
    kvarn::Expected<kvarn::Artifact> built =
        runtime->cache->getOrBuild(key, [&]() { return jit(spec, schedule); });
    if (!built)
      return built.error();
    artifact = std::move(*built);
  }
  std::vector<std::string> names = kernelNames(artifact->metadata);
  if (names.empty())
    return kvarn::makeError(kvarn::ErrorCode::InvalidData,
                            "cache entry for " + spec.str() + " names no kernels");
  kvarn::Expected<kvarn::KernelModule> module = kvarn::KernelModule::load(
      artifact->cubin, names, schedule, kvarn::sharedMemoryBytes(spec, schedule));
  if (!module && jit) {
    kvarn::Expected<kvarn::Artifact> rebuilt = jit(spec, schedule);
    if (!rebuilt)
      return rebuilt.error();
    runtime->cache->store(key, *rebuilt);
    module = kvarn::KernelModule::load(rebuilt->cubin, kernelNames(rebuilt->metadata), schedule,
                                       kvarn::sharedMemoryBytes(spec, schedule));
  }
  return module;
}

} // namespace

namespace kvarn {

void setJitCompiler(kvarn_runtime runtime, JitCompiler compiler) {
  std::lock_guard<std::mutex> lock(runtime->mutex);
  runtime->jit = std::move(compiler);
}

std::string preparedKernelKey(const KernelSpec &spec, const Schedule &schedule) {
  ArtifactKeyInputs inputs;
  inputs.source = "prepared:" + spec.str() + "|" + schedule.str();
  inputs.deviceLibraryFingerprint = KVARN_VERSION "/" KVARN_DEVICE_LIBRARY_HASH;
  inputs.arch = spec.arch;
  return artifactKey(inputs);
}

TuningEnvironment environmentOf(const DeviceInfo &d) {
  TuningEnvironment here;
  here.arch = d.arch();
  here.smCount = d.smCount;
  here.l2Bytes = d.l2Bytes;
  here.memoryClockKhz = d.memoryClockKhz;
  here.driverVersion = d.driverVersion;
  here.nvrtcVersion = nvrtcVersion();
  here.kvarnVersion = KVARN_VERSION;
  return here;
}

std::vector<std::optional<Error>> buildPreparedKernels(ArtifactCache &cache, const JitCompiler &jit,
                                                       const KernelSpec &spec,
                                                       const std::vector<Schedule> &schedules,
                                                       int threads) {
  std::vector<std::string> keys;
  std::map<std::string, size_t> firstOf; // key -> its first position in `schedules`
  std::vector<size_t> builds;            // the first position of each distinct key
  for (size_t i = 0; i < schedules.size(); ++i) {
    keys.push_back(preparedKernelKey(spec, schedules[i]));
    if (firstOf.emplace(keys[i], i).second)
      builds.push_back(i);
  }
  std::vector<std::optional<Error>> errors(schedules.size());
  parallelFor(
      builds.size(),
      [&](size_t job) {
        const size_t i = builds[job];
        Expected<Artifact> artifact =
            cache.getOrBuild(keys[i], [&]() { return jit(spec, schedules[i]); });
        if (!artifact)
          errors[i] = artifact.error();
      },
      threads);
  for (size_t i = 0; i < schedules.size(); ++i)
    errors[i] = errors[firstOf.at(keys[i])];
  return errors;
}

Expected<Bundle> retargetBundle(const Bundle &bundle, const std::string &arch,
                                std::vector<std::string> *skipped) {
  if (bundle.headers.empty())
    return makeError(ErrorCode::Unsupported, "it is for " + bundle.arch + " and carries no "
                                             "device-library sources to recompile for " + arch);
  Bundle out = bundle;
  out.arch = arch;
  out.nvrtcVersion = nvrtcVersion();
  out.entries.clear();
  // Step 1. Each entry's spec for `arch`, checked; those whose schedule cannot run there skipped.
  struct Job {
    const BundleEntry *entry;
    KernelSpec spec;
    Schedule schedule;
    std::string programName;
  };
  std::vector<Job> jobs;
  for (const BundleEntry &entry : bundle.entries) {
    Expected<KernelSpec> spec = parseKernelSpec(entry.spec);
    if (!spec)
      return makeError(ErrorCode::InvalidData, "entry '" + entry.spec + "': " + spec.error().message);
    Expected<Schedule> schedule = parseSchedule(entry.schedule, spec->op);
    if (!schedule)
      return makeError(ErrorCode::InvalidData, "entry '" + entry.spec + "': " + schedule.error().message);
    spec->arch = arch;
    if (Status legal = validateSchedule(*spec, *schedule); !legal) {
      if (skipped)
        skipped->push_back(spec->str() + " (" + legal.error().message + ")");
      continue;
    }
    std::vector<std::string> names = kernelNames(entry.artifact.metadata);
    if (entry.source.empty() || names.empty())
      return makeError(ErrorCode::InvalidData, "entry '" + entry.spec + "' has no source or kernels");
    jobs.push_back(Job{&entry, *spec, *schedule, names.front() + ".cu"});
  }
  // Step 2. The sources compiled in parallel, each NVRTC call a program of its own.
  std::vector<std::optional<Expected<NvrtcOutput>>> compiled(jobs.size());
  parallelFor(jobs.size(), [&](size_t i) {
    compiled[i] = compileCuda(jobs[i].entry->source, jobs[i].programName, arch, bundle.headers, {});
  });
  // Step 3. The entries in the bundle's order; the first failure is the error.
  for (size_t i = 0; i < jobs.size(); ++i) {
    Expected<NvrtcOutput> &output = *compiled[i];
    if (!output)
      return makeError(output.error().code,
                       "recompiling " + jobs[i].spec.str() + ": " + output.error().message);
    const BundleEntry &entry = *jobs[i].entry;
    nlohmann::json metadata = nlohmann::json::parse(entry.artifact.metadata, nullptr, false);
    metadata["spec"] = jobs[i].spec.str();
    BundleEntry moved;
    moved.key = preparedKernelKey(jobs[i].spec, jobs[i].schedule);
    moved.spec = jobs[i].spec.str();
    moved.schedule = entry.schedule;
    moved.source = entry.source;
    moved.artifact.metadata = metadata.dump();
    moved.artifact.ptx = std::move(output->ptx);
    moved.artifact.cubin = std::move(output->cubin);
    out.entries.push_back(std::move(moved));
  }
  return out;
}

} // namespace kvarn

extern "C" {

const char *kvarn_last_error(void) { return lastError.c_str(); }
const char *kvarn_version(void) { return KVARN_VERSION; }

const char *kvarn_status_name(kvarn_status status) {
  switch (status) {
  case KVARN_OK: return "KVARN_OK";
  case KVARN_ERROR_INVALID_ARGUMENT: return "KVARN_ERROR_INVALID_ARGUMENT";
  case KVARN_ERROR_INVALID_DATA: return "KVARN_ERROR_INVALID_DATA";
  case KVARN_ERROR_BUFFER_SIZE: return "KVARN_ERROR_BUFFER_SIZE";
  case KVARN_ERROR_UNSUPPORTED: return "KVARN_ERROR_UNSUPPORTED";
  case KVARN_ERROR_NOT_FOUND: return "KVARN_ERROR_NOT_FOUND";
  case KVARN_ERROR_IO: return "KVARN_ERROR_IO";
  case KVARN_ERROR_INTERNAL: return "KVARN_ERROR_INTERNAL";
  case KVARN_ERROR_NO_DEVICE: return "KVARN_ERROR_NO_DEVICE";
  }
  return "KVARN_ERROR_UNKNOWN";
}

kvarn_status kvarn_runtime_create(const kvarn_runtime_options *options, kvarn_runtime *runtime) {
  KVARN_REQUIRE(runtime, "kvarn_runtime_create: runtime is NULL");
  *runtime = nullptr;
  kvarn_runtime_options defaults{0, nullptr, 1, 1, nullptr};
  const kvarn_runtime_options &o = options ? *options : defaults;
  kvarn::Expected<kvarn::DeviceInfo> device = kvarn::openDevice(o.device);
  if (!device)
    return fail(KVARN_ERROR_NO_DEVICE, device.error().message);
  if (kvarn::Status supported = kvarn::validateArch(device->arch()); !supported)
    return fail(KVARN_ERROR_UNSUPPORTED, "GPU " + std::to_string(o.device) + " (" + device->name +
                                             "): " + supported.error().message);
  auto created = std::make_unique<kvarn_runtime_t>();
  created->options = o;
  created->device = *device;
  if (kvarn::Status s = KVARN_CU((*kvarn::Driver::get())->cuCtxGetCurrent(&created->context)); !s)
    return fail(s.error());
  kvarn::ArtifactCache::Options cacheOptions;
  if (o.cache_dir)
    cacheOptions.directory = o.cache_dir;
  created->cache = std::make_unique<kvarn::ArtifactCache>(cacheOptions);
  created->environment = kvarn::environmentOf(created->device);
  const char *configsDir = o.configs_dir ? o.configs_dir : std::getenv("KVARN_CONFIGS_DIR");
  std::vector<std::string> warnings;
  if (configsDir)
    created->configs = kvarn::loadConfigDirectory(configsDir, &warnings);
  if (o.log_level > 0)
    for (const std::string &warning : warnings)
      std::fprintf(stderr, "kvarn: warning: %s\n", warning.c_str());
  *runtime = created.release();
  return ok();
}

void kvarn_runtime_destroy(kvarn_runtime runtime) {
  if (!runtime)
    return;
  ContextScope scope(runtime->context); // the modules unload in the runtime's context
  delete runtime;
}

kvarn_status kvarn_runtime_device(kvarn_runtime runtime, const char **arch, int *sm_count) {
  KVARN_REQUIRE(runtime && arch && sm_count, "kvarn_runtime_device: NULL argument");
  static thread_local std::string archText;
  archText = runtime->device.arch();
  *arch = archText.c_str();
  *sm_count = runtime->device.smCount;
  return ok();
}

kvarn_status kvarn_load_bundle(kvarn_runtime runtime, const char *path) {
  KVARN_REQUIRE(runtime && path, "kvarn_load_bundle: NULL argument");
  kvarn::Expected<kvarn::Bundle> bundle = kvarn::readBundle(path);
  if (!bundle)
    return fail(bundle.error());
  const std::string arch = runtime->device.arch();
  std::string skipped;
  if (bundle->kvarnVersion == KVARN_VERSION && bundle->deviceLibrary == KVARN_DEVICE_LIBRARY_HASH &&
      bundle->arch != arch) {
    // Another GPU: recompile the sources for this one (refused if the bundle has none).
    std::vector<std::string> notes;
    kvarn::Expected<kvarn::Bundle> retargeted = kvarn::retargetBundle(*bundle, arch, &notes);
    if (!retargeted)
      return fail(KVARN_ERROR_UNSUPPORTED, std::string("bundle ") + path + " not used: " +
                                               retargeted.error().message);
    for (const std::string &note : notes)
      skipped += (skipped.empty() ? "" : "; ") + note;
    *bundle = std::move(*retargeted);
  }
  if (std::string why =
          kvarn::bundleMismatch(*bundle, arch, KVARN_VERSION, KVARN_DEVICE_LIBRARY_HASH);
      !why.empty())
    return fail(KVARN_ERROR_UNSUPPORTED, std::string("bundle ") + path + " not used: " + why);
  std::optional<kvarn::ConfigFile> configs;
  if (!bundle->configs.empty()) {
    kvarn::Expected<kvarn::ConfigFile> parsed =
        kvarn::parseConfigFile(bundle->configs, std::string("bundle ") + path);
    if (!parsed)
      return fail(parsed.error());
    configs = std::move(*parsed);
  }
  kvarn::importBundle(*bundle, *runtime->cache);
  std::lock_guard<std::mutex> lock(runtime->mutex);
  if (configs)
    runtime->configs.push_back(std::move(*configs));
  if (!skipped.empty()) {
    ok();
    lastError = "bundle " + std::string(path) + " recompiled for " + arch + "; skipped: " + skipped;
    return KVARN_OK;
  }
  return ok();
}

kvarn_status kvarn_prepare(kvarn_runtime runtime, const char *spec, const char *schedule,
                           kvarn_kernel *kernel) {
  KVARN_REQUIRE(runtime && spec && kernel, "kvarn_prepare: NULL argument");
  *kernel = nullptr;
  // Step 0. A kernel prepared before with the same text: one map lookup, no parsing.
  const std::string text = std::string(spec) + "|" + (schedule ? schedule : "");
  {
    std::lock_guard<std::mutex> lock(runtime->mutex);
    if (auto found = runtime->byText.find(text); found != runtime->byText.end()) {
      *kernel = found->second;
      return ok();
    }
  }
  // Step 1. Parse the spec (the arch is the device's) and the schedule.
  kvarn::Expected<kvarn::KernelSpec> parsed =
      kvarn::parseKernelSpec(std::string(spec) + ":" + runtime->device.arch());
  if (!parsed)
    return fail(parsed.error());
  std::string how = "explicit";
  std::vector<kvarn::ScheduleVariant> chosenVariants; ///< explicit schedules have none
  kvarn::Expected<kvarn::Schedule> knobs = kvarn::defaultSchedule(parsed->op);
  if (schedule && *schedule) {
    knobs = kvarn::parseSchedule(schedule, parsed->op);
  } else {
    std::lock_guard<std::mutex> lock(runtime->mutex);
    kvarn::ScheduleChoice choice =
        kvarn::chooseSchedule(runtime->configs, *parsed, runtime->environment);
    knobs = choice.schedule;
    how = choice.explanation;
    if (parsed->op == kvarn::OpKind::Decode)
      chosenVariants = choice.variants;
  }
  if (!knobs)
    return fail(knobs.error());
  if (kvarn::Status s = kvarn::validateSchedule(*parsed, *knobs); !s)
    return fail(s.error());
  // A config's variants make another prepared kernel than the same schedule given explicitly.
  const std::string key =
      kvarn::preparedKernelKey(*parsed, *knobs) + kvarn::describeVariants(chosenVariants);
  kvarn::JitCompiler jit; // the installed one, or none where JIT is off
  {
    std::lock_guard<std::mutex> lock(runtime->mutex);
    if (auto found = runtime->kernels.find(key); found != runtime->kernels.end()) {
      *kernel = found->second.get();
      runtime->byText[text] = *kernel;
      return ok();
    }
    if (runtime->options.enable_jit)
      jit = runtime->jit;
  }
  // Step 2. The kernel from the cache, or JIT on a miss; then the config's decode variants.
  // Modules load in the runtime's context whichever thread calls (and a kernel another thread
  // prepared first unloads in it).
  // Without the runtime's lock, so other threads' prepares (a per-step lookup above all) never
  // wait on a compile; the cache's getOrBuild builds each kernel once across threads and
  // processes. Where there are variants, the JIT builds every missing one first, in parallel
  // (each a compile of its own), so a cold start waits about one compile instead of one per
  // schedule.
  ContextScope scope(runtime->context);
  std::vector<std::optional<kvarn::Error>> jitErrors(chosenVariants.size() + 1);
  if (!chosenVariants.empty() && jit) {
    std::vector<kvarn::Schedule> schedules = {*knobs};
    for (const kvarn::ScheduleVariant &variant : chosenVariants)
      schedules.push_back(variant.schedule);
    jitErrors = kvarn::buildPreparedKernels(*runtime->cache, jit, *parsed, schedules);
  }
  if (jitErrors[0])
    return fail(*jitErrors[0]);
  kvarn::Expected<kvarn::KernelModule> module = loadKernel(runtime, jit, *parsed, *knobs);
  if (!module)
    return fail(module.error());
  std::vector<kvarn::ScheduleVariant> variants;
  std::vector<kvarn::KernelModule> variantModules;
  for (size_t k = 0; k < chosenVariants.size(); ++k) {
    const kvarn::ScheduleVariant &variant = chosenVariants[k];
    kvarn::Expected<kvarn::KernelModule> loaded =
        jitErrors[k + 1] ? kvarn::Expected<kvarn::KernelModule>(*jitErrors[k + 1])
                         : loadKernel(runtime, jit, *parsed, variant.schedule);
    if (!loaded) { // the kernel still works with its own schedule at every size
      how += "; variant " + variant.schedule.str() + " not used: " + loaded.error().message;
      if (runtime->options.log_level > 0)
        std::fprintf(stderr, "kvarn: warning: %s: variant %s not used: %s\n", parsed->str().c_str(),
                     variant.schedule.str().c_str(), loaded.error().message.c_str());
      continue;
    }
    variants.push_back(variant);
    variantModules.push_back(std::move(*loaded));
  }
  auto prepared = std::make_unique<kvarn_kernel_t>();
  prepared->spec = *parsed;
  prepared->schedule = *knobs;
  prepared->scheduleText = knobs->str();
  prepared->how = how;
  prepared->module = std::move(*module);
  prepared->smCount = runtime->device.smCount;
  prepared->variants = std::move(variants);
  prepared->variantModules = std::move(variantModules);
  prepared->slots.push_back(int64_t(prepared->smCount) * prepared->module.residentCtasPerSm());
  for (size_t k = 0; k < prepared->variants.size(); ++k) {
    prepared->variantTexts.push_back(prepared->variants[k].schedule.str());
    prepared->slots.push_back(int64_t(prepared->smCount) *
                              prepared->variantModules[k].residentCtasPerSm());
  }
  // Another thread may have prepared the same kernel meanwhile: the first one stays.
  std::lock_guard<std::mutex> lock(runtime->mutex);
  *kernel = runtime->kernels.emplace(key, std::move(prepared)).first->second.get();
  runtime->byText[text] = *kernel;
  return ok();
}

kvarn_status kvarn_kernel_describe(kvarn_kernel kernel, const char **schedule, const char **how) {
  KVARN_REQUIRE(kernel && schedule && how, "kvarn_kernel_describe: NULL argument");
  *schedule = kernel->scheduleText.c_str();
  *how = kernel->how.c_str();
  return ok();
}

kvarn_status kvarn_decode_schedule(kvarn_kernel kernel, int batch, int num_kv_heads,
                                   int max_seq_len, const char **schedule) {
  KVARN_REQUIRE(kernel && schedule, "kvarn_decode_schedule: NULL argument");
  KVARN_REQUIRE(kernel->spec.op == kvarn::OpKind::Decode, "kvarn_decode_schedule: not a decode kernel");
  KVARN_REQUIRE(batch >= 0 && num_kv_heads > 0 && max_seq_len >= 0,
                "kvarn_decode_schedule: negative batch or length, or no kv heads");
  const int k = kernel->variantFor(int64_t(batch) * num_kv_heads, max_seq_len);
  *schedule = k < 0 ? kernel->scheduleText.c_str() : kernel->variantTexts[size_t(k)].c_str();
  return ok();
}

kvarn_status kvarn_plan_decode(kvarn_kernel kernel, int batch, int num_kv_heads, int max_seq_len,
                               int *num_splits) {
  KVARN_REQUIRE(kernel && num_splits, "kvarn_plan_decode: NULL argument");
  KVARN_REQUIRE(kernel->spec.op == kvarn::OpKind::Decode, "kvarn_plan_decode: not a decode kernel");
  KVARN_REQUIRE(batch >= 0 && num_kv_heads > 0 && max_seq_len >= 0,
                "kvarn_plan_decode: negative batch or length, or no kv heads");
  *num_splits = kvarn::planDecode(kernel->moduleFor(int64_t(batch) * num_kv_heads, max_seq_len), batch,
                                  num_kv_heads, max_seq_len, kernel->spec.format.tileTokens,
                                  kernel->smCount)
                    .numSplits;
  return ok();
}

kvarn_status kvarn_decode_workspace_size(kvarn_kernel kernel, int batch, int num_kv_heads,
                                         int num_splits, size_t *bytes) {
  KVARN_REQUIRE(kernel && bytes, "kvarn_decode_workspace_size: NULL argument");
  *bytes = kvarn::decodeWorkspaceBytes(batch, num_kv_heads, kernel->spec.queryHeadsPerKvHead,
                                       kernel->spec.format.headDim, num_splits);
  return ok();
}

kvarn_status kvarn_launch_decode(kvarn_kernel kernel, const kvarn_decode_args *args,
                                 int num_splits, kvarn_stream stream) {
  KVARN_REQUIRE(kernel && args, "kvarn_launch_decode: NULL argument");
  KVARN_REQUIRE(kernel->spec.op == kvarn::OpKind::Decode, "kvarn_launch_decode: not a decode kernel");
  KVARN_REQUIRE(args->query && args->out && args->block_table && args->seq_lens && args->block_to_slot,
                "kvarn_launch_decode: a required pointer is NULL");
  KVARN_REQUIRE(num_splits >= 1 && num_splits <= 65535, "kvarn_launch_decode: num_splits out of range");
  KVARN_REQUIRE(args->batch >= 0 && args->batch <= 65535 && args->num_kv_heads > 0,
                "kvarn_launch_decode: batch must be 0 to 65535 and num_kv_heads positive");
  KVARN_REQUIRE(args->max_seq_len >= 0, "kvarn_launch_decode: negative max_seq_len");
  const kvarn::KernelModule &module =
      kernel->moduleFor(int64_t(args->batch) * args->num_kv_heads, args->max_seq_len);
  KVARN_REQUIRE(module.schedule().splits == 0 || module.schedule().splits == num_splits,
                "kvarn_launch_decode: this kernel's schedule fixes splits = " +
                    std::to_string(module.schedule().splits));
  KVARN_REQUIRE(num_splits == 1 || args->workspace, "kvarn_launch_decode: splits need a workspace");
  using Align = kvarn::dev::BufferAlignment;
  if (kvarn_status aligned = requireAligned(
          "kvarn_launch_decode",
          {{"query", args->query, Align::element},
           {"out", args->out, Align::element},
           {"cache", args->cache, Align::decodeCache},
           {"pool_key", args->pool_key, Align::decodePool},
           {"pool_value", args->pool_value, Align::decodePool},
           {"block_to_slot", args->block_to_slot, Align::word},
           {"block_table", args->block_table, Align::word},
           {"seq_lens", args->seq_lens, Align::word},
           {"workspace", args->workspace, Align::decodeWorkspace(kernel->spec.format.headDim)}});
      aligned != KVARN_OK)
    return aligned;
  if (args->batch == 0)
    return ok();
  const int d = kernel->spec.format.headDim;
  kvarn::dev::DecodeParams params{};
  params.query = args->query;
  params.out = args->out;
  params.cache = static_cast<const unsigned char *>(args->cache);
  params.poolKey = args->pool_key;
  params.poolValue = args->pool_value;
  params.blockToSlot = args->block_to_slot;
  params.blockTable = args->block_table;
  params.seqLens = args->seq_lens;
  params.batch = args->batch;
  params.numKvHeads = args->num_kv_heads;
  kvarn::bindDecodeWorkspace(params, args->workspace, kernel->spec.queryHeadsPerKvHead, d,
                             num_splits);
  params.maxBlocksPerRequest = args->max_blocks_per_request;
  params.softmaxScale = args->softmax_scale > 0 ? args->softmax_scale : 1.0f / std::sqrt(float(d));
  if (kvarn::Status s = kvarn::launchDecode(module, params, kernel->spec.queryHeadsPerKvHead,
                                            kvarn::decodePlanOf(module, args->batch, num_splits),
                                            CUstream(stream));
      !s)
    return fail(s.error());
  return ok();
}

kvarn_status kvarn_launch_flush(kvarn_kernel kernel, const kvarn_flush_args *args,
                                kvarn_stream stream) {
  KVARN_REQUIRE(kernel && args, "kvarn_launch_flush: NULL argument");
  KVARN_REQUIRE(kernel->spec.op == kvarn::OpKind::Flush, "kvarn_launch_flush: not a flush kernel");
  KVARN_REQUIRE(args->pool_key && args->pool_value && args->entries && args->cache && args->status,
                "kvarn_launch_flush: a required pointer is NULL");
  // Two CTAs per entry (K and V tiles): the grid's x dimension bounds the entries.
  KVARN_REQUIRE(args->num_entries >= 0 && args->num_entries <= (1 << 30) && args->num_kv_heads > 0,
                "kvarn_launch_flush: num_entries must be 0 to 2^30 and num_kv_heads positive");
  using Align = kvarn::dev::BufferAlignment;
  if (kvarn_status aligned =
          requireAligned("kvarn_launch_flush", {{"pool_key", args->pool_key, Align::element},
                                                {"pool_value", args->pool_value, Align::element},
                                                {"entries", args->entries, Align::word},
                                                {"cache", args->cache, Align::flushCache},
                                                {"status", args->status, Align::word}});
      aligned != KVARN_OK)
    return aligned;
  kvarn::dev::FlushParams params{args->pool_key, args->pool_value, args->entries,
                                 static_cast<unsigned char *>(args->cache), args->status,
                                 args->num_entries, args->num_kv_heads};
  if (kvarn::Status s = kvarn::launchFlush(kernel->module, params, CUstream(stream)); !s)
    return fail(s.error());
  return ok();
}

kvarn_status kvarn_launch_append(kvarn_kernel kernel, const kvarn_append_args *args,
                                 kvarn_stream stream) {
  KVARN_REQUIRE(kernel && args, "kvarn_launch_append: NULL argument");
  KVARN_REQUIRE(kernel->spec.op == kvarn::OpKind::Append, "kvarn_launch_append: not an append kernel");
  KVARN_REQUIRE(args->key && args->value && args->slot_mapping && args->pool_key && args->pool_value,
                "kvarn_launch_append: a required pointer is NULL");
  KVARN_REQUIRE(args->num_tokens >= 0 && args->num_kv_heads > 0,
                "kvarn_launch_append: num_tokens must be >= 0 and num_kv_heads positive");
  using Align = kvarn::dev::BufferAlignment;
  if (kvarn_status aligned = requireAligned(
          "kvarn_launch_append",
          {{"key", args->key, Align::element},
           {"value", args->value, Align::element},
           {"slot_mapping", args->slot_mapping, Align::wideWord},
           {"pool_key", args->pool_key, Align::appendPool(kernel->spec.format.headDim)},
           {"pool_value", args->pool_value, Align::appendPool(kernel->spec.format.headDim)}});
      aligned != KVARN_OK)
    return aligned;
  kvarn::dev::AppendParams params{args->key, args->value,
                                  reinterpret_cast<const long long *>(args->slot_mapping),
                                  args->pool_key, args->pool_value, args->num_tokens,
                                  args->num_kv_heads, args->key_stride, args->value_stride};
  if (kvarn::Status s = kvarn::launchAppend(kernel->module, params, CUstream(stream)); !s)
    return fail(s.error());
  return ok();
}

kvarn_status kvarn_launch_dequantize(kvarn_kernel kernel, const kvarn_dequantize_args *args,
                                     kvarn_stream stream) {
  KVARN_REQUIRE(kernel && args, "kvarn_launch_dequantize: NULL argument");
  KVARN_REQUIRE(kernel->spec.op == kvarn::OpKind::Dequantize,
                "kvarn_launch_dequantize: not a dequantize kernel");
  KVARN_REQUIRE(args->cache && args->entries && args->key && args->value,
                "kvarn_launch_dequantize: a required pointer is NULL");
  KVARN_REQUIRE(args->num_entries >= 0 && args->num_entries <= (1 << 23) && args->num_kv_heads > 0,
                "kvarn_launch_dequantize: num_entries must be 0 to 2^23 and num_kv_heads positive");
  using Align = kvarn::dev::BufferAlignment;
  if (kvarn_status aligned =
          requireAligned("kvarn_launch_dequantize", {{"cache", args->cache, Align::element},
                                                     {"entries", args->entries, Align::word},
                                                     {"key", args->key, Align::element},
                                                     {"value", args->value, Align::element}});
      aligned != KVARN_OK)
    return aligned;
  kvarn::dev::DequantizeParams params{static_cast<const unsigned char *>(args->cache),
                                      args->entries, args->key, args->value, args->num_entries,
                                      args->num_kv_heads};
  if (kvarn::Status s = kvarn::launchDequantize(kernel->module, params, kernel->smCount,
                                                CUstream(stream));
      !s)
    return fail(s.error());
  return ok();
}

} // extern "C"
