// Building kernel bundles with the compiler: the kernels of a set of specs, each with the
// schedule the tuned configs choose for it, plus their CUDA sources, the device library and the
// configs themselves (kvarn-tune bundle export and the tests use this).
#pragma once

#include "kvarn/bundle.h"
#include "kvarn/configs.h"
#include "kvarn/spec.h"

#include <string>
#include <vector>

namespace kvarn::compiler {

/// One bundle entry per spec. `configsJson` ("" for none) is embedded and, parsed, picks each
/// spec's schedule through chooseSchedule for `environment` (the GPU the bundle is meant for);
/// the explanations of the choices go to `choices` if given.
Expected<Bundle> buildBundle(const std::vector<KernelSpec> &specs, const std::string &configsJson,
                             const TuningEnvironment &environment, ArtifactCache &cache,
                             std::vector<std::string> *choices = nullptr);

} // namespace kvarn::compiler
