#!/usr/bin/env bash
# Installs kvarn's build dependencies from Debian/Ubuntu packages. Idempotent: installs only what
# is missing. The CUDA toolkit (NVRTC) must already be in /usr/local/cuda (or $CUDA_HOME).
set -euo pipefail
packages=(cmake ninja-build ccache g++ python3
          libmlir-22-dev mlir-22-tools llvm-22-dev llvm-22-tools libzstd-dev zlib1g-dev
          nlohmann-json3-dev libgtest-dev libgmock-dev libxxhash-dev libcli11-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
cuda_home="${CUDA_HOME:-/usr/local/cuda}"
if [ ! -f "$cuda_home/include/nvrtc.h" ]; then
  echo "install-deps: the CUDA toolkit (NVRTC) was not found in $cuda_home;" \
       "install it from NVIDIA's repository or set CUDA_HOME" >&2
  exit 1
fi
