// NVRTC driver: CUDA C++ source -> PTX and cubin for an exact architecture. Thread-safe: every
// call uses its own NVRTC program. Used by the compiler and by the runtime (bundle sources).
#pragma once

#include "kvarn/status.h"

#include <string>
#include <utility>
#include <vector>

namespace kvarn {

/// One named header the source may #include (NVRTC reads no files).
struct SourceHeader {
  std::string name;
  std::string content;
};

struct NvrtcOutput {
  std::string ptx;
  std::vector<char> cubin; ///< empty for a virtual (compute_XX) target
  std::string log;         ///< NVRTC's log; empty when there was nothing to say
  std::vector<std::string> options;
};

/// Compiles `source` for `arch` (e.g. "sm_90a"). On failure the error carries the NVRTC log, the
/// options, the arch and the path of the dumped source.
Expected<NvrtcOutput> compileCuda(const std::string &source, const std::string &programName,
                                  const std::string &arch, const std::vector<SourceHeader> &headers,
                                  const std::vector<std::string> &extraOptions = {});

/// NVRTC's version as "major.minor".
std::string nvrtcVersion();

/// Options every kvarn kernel is compiled with (part of the artifact key).
std::vector<std::string> defaultNvrtcOptions(const std::string &arch);

} // namespace kvarn
