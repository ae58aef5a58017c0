// The device library (compiler/device/kvarn/*.cuh), embedded in the binary at build time.
#pragma once

#include "kvarn/nvrtc.h"

#include <string>
#include <vector>

namespace kvarn::compiler {

namespace detail {
struct EmbeddedFile {
  const char *name;
  const char *content;
};
extern const EmbeddedFile kEmbeddedFiles[];
extern const int kEmbeddedFileCount;
} // namespace detail

/// Every header of the device library, named as generated sources include them.
const std::vector<SourceHeader> &deviceLibraryHeaders();

/// The build's hash of the names and contents of every header, 16 hex digits
/// (KVARN_DEVICE_LIBRARY_HASH, the one the runtime's prepared-kernel keys use; part of artifact
/// keys).
const std::string &deviceLibraryFingerprint();

} // namespace kvarn::compiler
