// libkvarn_jit: installs kvarn's MLIR compiler as the runtime's JIT.
#include "kvarn/Compiler/Pipeline.h"
#include "kvarn/jit.h"

extern "C" kvarn_status kvarn_jit_install(kvarn_runtime runtime) {
  if (!runtime)
    return KVARN_ERROR_INVALID_ARGUMENT;
  kvarn::setJitCompiler(runtime, [](const kvarn::KernelSpec &spec,
                                    const kvarn::Schedule &schedule) -> kvarn::Expected<kvarn::Artifact> {
    kvarn::Expected<kvarn::compiler::CompiledKernel> kernel =
        kvarn::compiler::compileKernel(spec, schedule);
    if (!kernel)
      return kernel.error();
    return kvarn::compiler::toArtifact(*kernel, spec, schedule);
  });
  return KVARN_OK;
}
