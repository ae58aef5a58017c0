// Kernel bundles: one versioned file of prebuilt kernels (metadata, PTX, cubin, CUDA source) and
// tuned configs, so production starts without JIT. Layout: magic "KVARNBN1", u32 schema,
// u64 manifest size, manifest JSON, the blobs, xxh3-64 of everything before it. The manifest
// records kvarn version, arch and NVRTC version, and every blob's offset, size and xxh3-64.
#pragma once

#include "kvarn/cache.h"
#include "kvarn/nvrtc.h"
#include "kvarn/status.h"

#include <string>
#include <vector>

namespace kvarn {

struct BundleEntry {
  std::string key;      ///< preparedKernelKey(spec, schedule): what kvarn_prepare looks up
  std::string spec;     ///< KernelSpec text
  std::string schedule; ///< Schedule text
  Artifact artifact;
  std::string source;   ///< the CUDA C++ (recompilable with NVRTC for another arch)
};

struct Bundle {
  std::string kvarnVersion;
  std::string deviceLibrary; ///< KVARN_DEVICE_LIBRARY_HASH of the build that made the kernels
  std::string arch;
  std::string nvrtcVersion;
  std::vector<BundleEntry> entries;
  std::string configs; ///< tuned configs JSON ("" for none)
  /// The device library the sources include (kvarn/device.cuh, ...), so the sources can be
  /// recompiled for another arch without the compiler; empty in bundles without sources.
  std::vector<SourceHeader> headers;
};

/// Writes the bundle (temporary file + rename).
Status writeBundle(const std::string &path, const Bundle &bundle);
/// Reads and checks a bundle file: magic, schema, checksums, manifest fields.
Expected<Bundle> readBundle(const std::string &path);
/// Why a bundle cannot serve this runtime ("" when it can): arch, kvarn version or device library
/// mismatch (its kernels are keyed for the library they were generated from).
std::string bundleMismatch(const Bundle &bundle, const std::string &arch,
                           const std::string &kvarnVersion, const std::string &deviceLibrary);
/// Stores every entry in the cache under its key.
void importBundle(const Bundle &bundle, ArtifactCache &cache);


} // namespace kvarn
