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

/// The paged decode case of a golden set (3 requests, Hk = 4, Hq = 16).
struct GoldenDecodeCase {
  explicit GoldenDecodeCase(const GoldenSet &golden)
      : query(golden.load<uint16_t>("dec_q")), blockTable(golden.load<int32_t>("dec_block_table")),
        seqLens(golden.load<int32_t>("dec_seq_lens")),
        blockToSlot(golden.load<int32_t>("dec_block_to_slot")),
        records(golden.load<uint8_t>("dec_kv_cache")), poolKey(golden.load<uint16_t>("dec_pool_k")),
        poolValue(golden.load<uint16_t>("dec_pool_v")),
        batch(int(golden.shape("dec_q")[0])), numQueryHeads(int(golden.shape("dec_q")[1])),
        numKvHeads(int(golden.shape("dec_kv_cache")[1])),
        maxBlocks(int(golden.shape("dec_block_table")[1])) {}
  std::vector<uint16_t> query;
  std::vector<int32_t> blockTable, seqLens, blockToSlot;
  std::vector<uint8_t> records;
  std::vector<uint16_t> poolKey, poolValue;
  int batch, numQueryHeads, numKvHeads, maxBlocks;
};

} // namespace kvarn::testing
