// Kernel bundles built by the compiler (Bundle.h).
#include "kvarn/Compiler/Bundle.h"

#include "kvarn/Compiler/DeviceLibrary.h"
#include "kvarn/Compiler/Pipeline.h"
#include "kvarn/device_library_hash.h"
#include "kvarn/jit.h"
#include "kvarn/nvrtc.h"
#include "kvarn/parallel.h"

#include <algorithm>
#include <optional>

namespace kvarn::compiler {

Expected<Bundle> buildBundle(const std::vector<KernelSpec> &specs, const std::string &configsJson,
                             const TuningEnvironment &environment, ArtifactCache &cache,
                             std::vector<std::string> *choices) {
  std::vector<ConfigFile> configs;
  if (!configsJson.empty()) {
    Expected<ConfigFile> parsed = parseConfigFile(configsJson, "bundle configs");
    if (!parsed)
      return parsed.error();
    configs.push_back(std::move(*parsed));
  }
  Bundle bundle;
  bundle.kvarnVersion = KVARN_VERSION;
  bundle.deviceLibrary = KVARN_DEVICE_LIBRARY_HASH;
  bundle.arch = environment.arch;
  bundle.nvrtcVersion = nvrtcVersion();
  bundle.configs = configsJson;
  bundle.headers = deviceLibraryHeaders();
  // The chosen schedule and its decode variants of every spec (a runtime prepares all of them
  // from the bundle), each key once, compiled on every host thread, stored in this order.
  struct Job {
    const KernelSpec *spec;
    Schedule schedule;
    std::string key;
  };
  std::vector<Job> jobs;
  for (const KernelSpec &spec : specs) {
    if (spec.arch != environment.arch)
      return makeError(ErrorCode::InvalidArgument, "bundle for " + environment.arch +
                                                       " cannot hold " + spec.str());
    const ScheduleChoice choice = chooseSchedule(configs, spec, environment);
    if (choices)
      choices->push_back(spec.str() + ": " + choice.schedule.str() + " (" + choice.explanation + ")");
    for (const Schedule &schedule : choice.schedules()) {
      std::string key = preparedKernelKey(spec, schedule);
      if (std::none_of(jobs.begin(), jobs.end(), [&](const Job &j) { return j.key == key; }))
        jobs.push_back({&spec, schedule, std::move(key)});
    }
  }
  std::vector<std::optional<Expected<CompiledKernel>>> kernels(jobs.size());
  parallelFor(jobs.size(), [&](size_t i) {
    kernels[i].emplace(compileKernel(*jobs[i].spec, jobs[i].schedule, cache));
  });
  for (size_t i = 0; i < jobs.size(); ++i) {
    Expected<CompiledKernel> &kernel = *kernels[i];
    if (!kernel)
      return kernel.error(); // the first failure in job order
    bundle.entries.push_back({jobs[i].key, jobs[i].spec->str(), jobs[i].schedule.str(),
                              toArtifact(*kernel, *jobs[i].spec, jobs[i].schedule),
                              kernel->cudaSource});
  }
  return bundle;
}

} // namespace kvarn::compiler
