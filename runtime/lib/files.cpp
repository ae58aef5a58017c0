// Atomic file writes (see files.h).
#include "kvarn/files.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

namespace kvarn {
namespace {

/// The process's umask from /proc/self/status (umask(2) cannot read it without setting it, which
/// would race other threads creating files); 022 where it is not available.
mode_t currentUmask() {
  std::FILE *status = std::fopen("/proc/self/status", "r");
  unsigned mask = 022;
  if (status) {
    char line[256];
    while (std::fgets(line, sizeof(line), status))
      if (std::sscanf(line, "Umask: %o", &mask) == 1)
        break;
    std::fclose(status);
  }
  return mode_t(mask);
}

mode_t modeFor(const std::string &path) {
  struct stat existing;
  if (stat(path.c_str(), &existing) == 0 && S_ISREG(existing.st_mode))
    return existing.st_mode & 07777;
  return 0666 & ~currentUmask();
}

} // namespace

Status writeFileAtomically(const std::string &path, std::string_view bytes,
                           const WriteFunction &write) {
  const size_t slash = path.rfind('/');
  const std::string directory = slash == std::string::npos ? "." : path.substr(0, slash + 1);
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  std::string temporary = (slash == std::string::npos ? "" : directory) + ".tmp-" + name + "-XXXXXX";
  auto failed = [&](const std::string &what, int error) {
    return makeError(ErrorCode::Io, "cannot " + what + " " + path + ": " + std::strerror(error) +
                                        " (nothing was replaced)");
  };
  const int fd = mkstemp(temporary.data());
  if (fd < 0)
    return failed("create a temporary file in " + directory + " for", errno);
  size_t done = 0;
  int error = 0;
  while (done < bytes.size()) {
    const long n = write ? write(fd, bytes.data() + done, bytes.size() - done)
                         : long(::write(fd, bytes.data() + done, bytes.size() - done));
    if (n < 0 && errno == EINTR && !write)
      continue;
    if (n <= 0) {
      error = n < 0 ? errno : EIO;
      break;
    }
    done += size_t(n);
  }
  // A mkstemp file is 0600: give it the mode of the file it replaces, else the mode a plain
  // create would (0666 less the umask).
  if (!error && fchmod(fd, modeFor(path)) != 0)
    error = errno;
  if (!error && fsync(fd) != 0)
    error = errno;
  if (close(fd) != 0 && !error)
    error = errno;
  if (error) {
    ::unlink(temporary.c_str());
    return failed("write", error);
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    error = errno;
    ::unlink(temporary.c_str());
    return failed("publish", error);
  }
  return Status::success();
}

FileLock::FileLock(const std::string &path, Kind kind) {
  fd_ = kind == Kind::Directory ? open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                                : open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ >= 0)
    while (flock(fd_, LOCK_EX) != 0 && errno == EINTR) {
    }
}

FileLock::~FileLock() {
  if (fd_ >= 0) {
    flock(fd_, LOCK_UN);
    close(fd_);
  }
}

} // namespace kvarn
