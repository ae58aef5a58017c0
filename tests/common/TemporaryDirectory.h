// A fresh directory for one test, removed with its contents when the test ends.
#pragma once

#include <filesystem>
#include <stdexcept>
#include <string>
#include <unistd.h>

namespace kvarn::testing {

struct TemporaryDirectory {
  /// /tmp/<prefix>-XXXXXX (mkdtemp).
  explicit TemporaryDirectory(const std::string &prefix) {
    std::string pattern = "/tmp/" + prefix + "-XXXXXX";
    if (!mkdtemp(pattern.data()))
      throw std::runtime_error("mkdtemp " + pattern + " failed");
    path = pattern;
  }
  ~TemporaryDirectory() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  TemporaryDirectory(const TemporaryDirectory &) = delete;
  TemporaryDirectory &operator=(const TemporaryDirectory &) = delete;
  std::string path;
};

} // namespace kvarn::testing
