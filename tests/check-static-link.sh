#!/usr/bin/env bash
# Fails if a kvarn binary depends on a shared library outside the allowed set: no libMLIR/libLLVM,
# no libcuda (the runtime dlopens it), nothing a user would have to install besides libnvrtc.
set -euo pipefail
allowed='^(linux-vdso\.so|/lib64/ld-linux-x86-64\.so|ld-linux|libc\.so|libm\.so|libstdc\+\+\.so|libgcc_s\.so|libnvrtc\.so)'
status=0
for binary in "$@"; do
  [ -x "$binary" ] || { echo "missing binary: $binary"; status=1; continue; }
  while read -r lib _; do
    [ -z "$lib" ] && continue
    if ! [[ "$lib" =~ $allowed ]]; then
      echo "$binary: links $lib (not allowed: only libc, libm, libstdc++, libgcc_s, libnvrtc)"
      status=1
    fi
  done < <(ldd "$binary" | sed -e 's/^[[:space:]]*//')
done
[ $status -eq 0 ] && echo "static-link check passed for $# binaries"
exit $status
