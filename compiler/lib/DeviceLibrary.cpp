// Access to the embedded device library.
#include "kvarn/Compiler/DeviceLibrary.h"

#include "kvarn/device_library_hash.h"

namespace kvarn::compiler {

const std::vector<SourceHeader> &deviceLibraryHeaders() {
  static const std::vector<SourceHeader> headers = [] {
    std::vector<SourceHeader> list;
    for (int k = 0; k < detail::kEmbeddedFileCount; ++k)
      list.push_back({detail::kEmbeddedFiles[k].name, detail::kEmbeddedFiles[k].content});
    return list;
  }();
  return headers;
}

const std::string &deviceLibraryFingerprint() {
  static const std::string fingerprint = KVARN_DEVICE_LIBRARY_HASH;
  return fingerprint;
}

} // namespace kvarn::compiler
