// Access to the embedded device library.
#include "kvarn/Compiler/DeviceLibrary.h"

#include <xxhash.h>

#include <cstdio>
#include <cstring>

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
  static const std::string fingerprint = [] {
    XXH3_state_t *state = XXH3_createState();
    XXH3_64bits_reset(state);
    for (const SourceHeader &header : deviceLibraryHeaders()) {
      XXH3_64bits_update(state, header.name.data(), header.name.size() + 1);
      XXH3_64bits_update(state, header.content.data(), header.content.size() + 1);
    }
    const unsigned long long hash = XXH3_64bits_digest(state);
    XXH3_freeState(state);
    char text[17];
    std::snprintf(text, sizeof(text), "%016llx", hash);
    return std::string(text);
  }();
  return fingerprint;
}

} // namespace kvarn::compiler
