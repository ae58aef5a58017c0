#!/usr/bin/env bash
# Fails if a kvarn binary needs a shared library outside the allowed set: never libMLIR/libLLVM
# (linked statically), never libcuda (the runtime dlopens it). Direct dependencies (ELF NEEDED)
# may only be libc, libm, libstdc++, libgcc_s, the loader and libnvrtc; in the full ldd closure
# libnvrtc may add glibc's libpthread/librt/libdl compatibility stubs.
set -euo pipefail
direct='^(libc\.so|libm\.so|libstdc\+\+\.so|libgcc_s\.so|ld-linux-x86-64\.so|libnvrtc\.so)'
closure='^(linux-vdso\.so|/lib64/ld-linux-x86-64\.so|ld-linux|libc\.so|libm\.so|libstdc\+\+\.so|libgcc_s\.so|libnvrtc\.so|libpthread\.so|librt\.so|libdl\.so)'
status=0
for binary in "$@"; do
  [ -x "$binary" ] || { echo "missing binary: $binary"; status=1; continue; }
  while read -r lib; do
    if ! [[ "$lib" =~ $direct ]]; then
      echo "$binary: needs $lib directly (allowed: libc, libm, libstdc++, libgcc_s, libnvrtc)"
      status=1
    fi
  done < <(readelf -d "$binary" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')
  while read -r lib _; do
    [ -z "$lib" ] && continue
    if ! [[ "$lib" =~ $closure ]]; then
      echo "$binary: ldd shows $lib (not allowed)"
      status=1
    fi
  done < <(ldd "$binary" | sed -e 's/^[[:space:]]*//')
done
[ $status -eq 0 ] && echo "static-link check passed for $# binaries"
exit $status
