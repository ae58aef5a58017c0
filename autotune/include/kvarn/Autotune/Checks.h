// Correctness checks of compiled kernels on the GPU, shared by the tuner (which rejects a
// candidate that fails one) and the GPU tests.
#pragma once

#include "kvarn/launch.h"
#include "kvarn/status.h"

#include <cstdint>

namespace kvarn::autotune {

/// One append check: `tokens` tokens of `kvHeads` kv heads x `headDim` random K and V rows of
/// `dtype`, `stride` elements from one token to the next (>= kvHeads * headDim; more than that
/// leaves the rows unaligned for vector loads when odd), random from `seed`. Every seventh
/// token's slot is negative (skipped); the others go to scattered slots of a 4-block pool.
struct AppendCheck {
  DType dtype = DType::F16;
  int headDim = 128, kvHeads = 8, tokens = 300;
  int64_t stride = 0; ///< 0: kvHeads * headDim
  uint64_t seed = 1;
};

/// Runs `module` (an append kernel for `check.dtype` rows of `check.headDim` channels) on the
/// check's rows into pools filled with 0xFF, and compares: every written pool row against the
/// CPU reference's rotation (within fp16 rounding, 2e-3 relative plus 2e-3), every other pool
/// row still 0xFF. The error names the first difference.
Status checkAppendKernel(const KernelModule &module, const AppendCheck &check);

} // namespace kvarn::autotune
