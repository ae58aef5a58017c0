// Kernel bundles built by the compiler (Bundle.h).
#include "kvarn/Compiler/Bundle.h"

#include "kvarn/Compiler/DeviceLibrary.h"
#include "kvarn/Compiler/Pipeline.h"
#include "kvarn/device_library_hash.h"
#include "kvarn/jit.h"
#include "kvarn/nvrtc.h"

#include <algorithm>

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
  for (const KernelSpec &spec : specs) {
    if (spec.arch != environment.arch)
      return makeError(ErrorCode::InvalidArgument, "bundle for " + environment.arch +
                                                       " cannot hold " + spec.str());
    const ScheduleChoice choice = chooseSchedule(configs, spec, environment);
    if (choices)
      choices->push_back(spec.str() + ": " + choice.schedule.str() + " (" + choice.explanation + ")");
    // The chosen schedule and its decode variants: a runtime prepares all of them from the bundle.
    for (const Schedule &schedule : choice.schedules()) {
      const std::string key = preparedKernelKey(spec, schedule);
      if (std::any_of(bundle.entries.begin(), bundle.entries.end(),
                      [&](const BundleEntry &e) { return e.key == key; }))
        continue;
      Expected<CompiledKernel> kernel = compileKernel(spec, schedule, cache);
      if (!kernel)
        return kernel.error();
      bundle.entries.push_back({key, spec.str(), schedule.str(), toArtifact(*kernel, spec, schedule),
                                kernel->cudaSource});
    }
  }
  return bundle;
}

} // namespace kvarn::compiler
