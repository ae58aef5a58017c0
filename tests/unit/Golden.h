// Loads the reference backend's golden vectors (tests/data/golden/<set>/manifest.json + .bin).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvarn::testing {

/// The test data folder: $KVARN_TEST_DATA_DIR when set (binaries run from a copy), else the
/// source tree's tests/data.
inline std::string testDataDir() {
  const char *overridden = std::getenv("KVARN_TEST_DATA_DIR");
  return overridden && *overridden ? overridden : KVARN_TEST_DATA_DIR;
}

class GoldenSet {
public:
  explicit GoldenSet(const std::string &name) : dir_(testDataDir() + "/golden/" + name) {
    std::ifstream in(dir_ + "/manifest.json");
    if (!in)
      throw std::runtime_error("cannot open " + dir_ + "/manifest.json");
    manifest_ = nlohmann::json::parse(in);
  }
  const nlohmann::json &info() const { return manifest_["info"]; }
  std::vector<int64_t> shape(const std::string &array) const {
    return manifest_["arrays"][array]["shape"].get<std::vector<int64_t>>();
  }
  template <typename T> std::vector<T> load(const std::string &array) const {
    const std::string file = dir_ + "/" + manifest_["arrays"][array]["file"].get<std::string>();
    std::ifstream in(file, std::ios::binary | std::ios::ate);
    if (!in)
      throw std::runtime_error("cannot open " + file);
    const auto bytes = static_cast<size_t>(in.tellg());
    if (bytes % sizeof(T) != 0)
      throw std::runtime_error(file + ": size is not a multiple of the element size");
    std::vector<T> data(bytes / sizeof(T));
    in.seekg(0);
    in.read(reinterpret_cast<char *>(data.data()), static_cast<std::streamsize>(bytes));
    return data;
  }

private:
  std::string dir_;
  nlohmann::json manifest_;
};

} // namespace kvarn::testing
