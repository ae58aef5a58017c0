#!/usr/bin/env bash
# Configures and builds kvarn in ./build (Release, Ninja, ccache). Used by both README commands.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/install-deps.sh"
export PATH="${CUDA_HOME:-/usr/local/cuda}/bin:$PATH"
jobs="${KVARN_JOBS:-$(nproc)}"
cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCUDAToolkit_ROOT="${CUDA_HOME:-/usr/local/cuda}" >/dev/null
cmake --build "$root/build" -j "$jobs"
