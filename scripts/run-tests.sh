#!/usr/bin/env bash
# Builds everything and runs every test (gtest, lit, static-link check); GPU tests skip without a GPU.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/build.sh"
cd "$root/build"
ctest --output-on-failure -j "${KVARN_JOBS:-$(nproc)}"
