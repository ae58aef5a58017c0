#!/usr/bin/env bash
# cmake/HashFiles.cmake, which keys every kernel by the device library's content: the hash follows
# any change of a header's content or name, and an unchanged library leaves the header file
# untouched (no rebuild). Usage: check-device-library-hash.sh <cmake> <HashFiles.cmake>
set -euo pipefail
cmake_bin="$1" script="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lib/kvarn"
printf 'int a;\n' > "$work/lib/kvarn/a.cuh"
printf 'int b;\n' > "$work/lib/kvarn/b.h"
hash_of() { # prints the hash the script writes for the given files
  local inputs; inputs="$(IFS='|'; echo "$*")"
  "$cmake_bin" -DOUTPUT="$work/out.h" -DINPUTS="$inputs" -DBASE="$work/lib" -P "$script"
  sed -n 's/^#define KVARN_DEVICE_LIBRARY_HASH "\([0-9a-f]\{16\}\)"$/\1/p' "$work/out.h"
}
fail() { echo "check-device-library-hash: $*"; exit 1; }
first="$(hash_of "$work/lib/kvarn/a.cuh" "$work/lib/kvarn/b.h")"
[ -n "$first" ] || fail "no 16-digit KVARN_DEVICE_LIBRARY_HASH written"
touch -d '2000-01-01' "$work/out.h"
again="$(hash_of "$work/lib/kvarn/a.cuh" "$work/lib/kvarn/b.h")"
[ "$again" = "$first" ] || fail "the same library hashed differently ($first, $again)"
[ "$(stat -c %Y "$work/out.h")" = "$(date -d '2000-01-01' +%s)" ] ||
  fail "an unchanged library rewrote the header"
printf 'int a; // edited\n' > "$work/lib/kvarn/a.cuh"
edited="$(hash_of "$work/lib/kvarn/a.cuh" "$work/lib/kvarn/b.h")"
[ "$edited" != "$first" ] || fail "a content change kept the hash"
mv "$work/lib/kvarn/b.h" "$work/lib/kvarn/c.h"
renamed="$(hash_of "$work/lib/kvarn/a.cuh" "$work/lib/kvarn/c.h")"
[ "$renamed" != "$edited" ] || fail "a renamed header kept the hash"
echo "device-library hash: follows content and names, leaves an unchanged header alone"
