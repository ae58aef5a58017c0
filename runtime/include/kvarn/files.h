// Files the tools and the runtime write (bundles, tuned configs, reports, cache entries, emitted
// stages): written whole or not at all.
#pragma once

#include "kvarn/status.h"

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace kvarn {

/// write(2) or a test's replacement (to inject ENOSPC and short writes).
using WriteFunction = std::function<long(int fd, const void *data, size_t size)>;

/// Writes `bytes` to `path` atomically: a temporary file beside it (`.tmp-<name>-XXXXXX` in the
/// same directory), written in full, fsynced and closed, then renamed over `path`. On any failure
/// the temporary file is removed, whatever was at `path` is left as it was, and the error (Io)
/// names the path and the system's reason ("No space left on device", "Permission denied", ...).
Status writeFileAtomically(const std::string &path, std::string_view bytes,
                           const WriteFunction &write = {});

/// An exclusive flock(2) held until destruction: on a lock file (created if missing) or on a
/// directory itself. It serializes writers across threads and processes (two opens conflict even
/// within one process). Where the path cannot be opened nothing is locked and callers go on
/// unserialized, as without a disk.
class FileLock {
public:
  enum class Kind { File, Directory };
  FileLock() = default;
  FileLock(const std::string &path, Kind kind);
  FileLock(FileLock &&other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  FileLock(const FileLock &) = delete;
  FileLock &operator=(const FileLock &) = delete;
  ~FileLock();

private:
  int fd_ = -1;
};

} // namespace kvarn
