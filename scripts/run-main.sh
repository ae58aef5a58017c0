#!/usr/bin/env bash
# The main job: build, then run kvarn-tune's default job for this machine.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/build.sh"
# The shipped tuned configs, unless the caller names others: the default job compiles the kernels
# they choose (and kvarn_prepare reads them).
export KVARN_CONFIGS_DIR="${KVARN_CONFIGS_DIR:-$root/configs}"
exec "$root/build/bin/kvarn-tune" "$@"
