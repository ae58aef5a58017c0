#!/usr/bin/env bash
# The main job: build, then run kvarn-tune's default job for this machine.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/build.sh"
exec "$root/build/bin/kvarn-tune" "$@"
