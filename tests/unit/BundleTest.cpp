// Kernel bundles: round trip, corruption, mismatches stated as reasons, import into the cache.
#include "kvarn/bundle.h"

#include "../common/TemporaryDirectory.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

using namespace kvarn;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

namespace {

class BundleTest : public ::testing::Test {
protected:
  void SetUp() override {
    path = directory + "/kernels.kvb";
    for (int k = 0; k < 3; ++k) {
      BundleEntry entry;
      entry.key = "key" + std::to_string(k);
      entry.spec = "decode:kvarn_k4v2_g128:d128:q" + std::to_string(1 << k) + ":f16:sm_90a";
      entry.schedule = "warps=4";
      entry.artifact.metadata = "{\"kernels\":\"k" + std::to_string(k) + "\"}";
      entry.artifact.ptx = std::string(1000 + k, 'p');
      entry.artifact.cubin.assign(5000 + k, char(k + 1));
      entry.source = "// source " + std::to_string(k);
      bundle.entries.push_back(entry);
    }
    bundle.kvarnVersion = "0.1.0";
    bundle.deviceLibrary = "0123456789abcdef";
    bundle.arch = "sm_90a";
    bundle.nvrtcVersion = "13.0";
    bundle.configs = "{\"entries\":[]}";
  }
  std::string bytes() {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  void rewrite(const std::string &content) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << content;
  }
  kvarn::testing::TemporaryDirectory temporary{"kvarn-bundle-test"};
  const std::string directory = temporary.path;
  std::string path;
  Bundle bundle;
};

TEST_F(BundleTest, RoundTripsEveryField) {
  ASSERT_TRUE(writeBundle(path, bundle));
  Expected<Bundle> read = readBundle(path);
  ASSERT_TRUE(read) << read.error().str();
  EXPECT_EQ(read->kvarnVersion, "0.1.0");
  EXPECT_EQ(read->deviceLibrary, "0123456789abcdef");
  EXPECT_EQ(read->arch, "sm_90a");
  EXPECT_EQ(read->nvrtcVersion, "13.0");
  EXPECT_EQ(read->configs, bundle.configs);
  ASSERT_EQ(read->entries.size(), 3u);
  for (size_t k = 0; k < 3; ++k) {
    EXPECT_EQ(read->entries[k].key, bundle.entries[k].key);
    EXPECT_EQ(read->entries[k].spec, bundle.entries[k].spec);
    EXPECT_EQ(read->entries[k].artifact, bundle.entries[k].artifact);
    EXPECT_EQ(read->entries[k].source, bundle.entries[k].source);
  }
  for (const auto &entry : fs::directory_iterator(directory))
    EXPECT_EQ(entry.path(), path) << "no temporary file is left";
}

TEST_F(BundleTest, CorruptFilesAreRejectedWithTheReason) {
  ASSERT_TRUE(writeBundle(path, bundle));
  const std::string good = bytes();
  auto reason = [&](const std::string &content) {
    rewrite(content);
    Expected<Bundle> read = readBundle(path);
    EXPECT_FALSE(read);
    return read ? std::string() : read.error().message;
  };
  std::string flipped = good;
  flipped[good.size() / 2] ^= 1;
  std::string magic = good;
  magic[0] = 'X';
  std::string schema = good;
  const uint32_t future = 9;
  std::memcpy(schema.data() + 8, &future, 4);
  EXPECT_THAT(reason(flipped), HasSubstr("checksum mismatch"));
  EXPECT_THAT(reason(good.substr(0, good.size() - 100)), HasSubstr("checksum mismatch"));
  EXPECT_THAT(reason(good.substr(0, 10)), HasSubstr("truncated"));
  EXPECT_THAT(reason(magic), HasSubstr("bad magic"));
  EXPECT_THAT(reason(schema), HasSubstr("schema 9"));
  EXPECT_THAT(reason(""), HasSubstr("truncated"));
  fs::remove(path);
  EXPECT_EQ(readBundle(path).error().code, ErrorCode::NotFound);
}

TEST_F(BundleTest, MismatchesAreStatedNeverIgnored) {
  const std::string library = "0123456789abcdef";
  EXPECT_EQ(bundleMismatch(bundle, "sm_90a", "0.1.0", library), "");
  EXPECT_EQ(bundleMismatch(bundle, "sm_80", "0.1.0", library),
            "bundle is for sm_90a, this GPU is sm_80");
  EXPECT_EQ(bundleMismatch(bundle, "sm_90a", "0.2.0", library),
            "bundle is from kvarn 0.1.0, this runtime is kvarn 0.2.0");
  // Same version, other device code: its kernels would not match this runtime's launches.
  EXPECT_EQ(bundleMismatch(bundle, "sm_90a", "0.1.0", "fedcba9876543210"),
            "bundle's kernels come from device library 0123456789abcdef, this runtime's is "
            "fedcba9876543210 (export the bundle again with this build)");
  Bundle unrecorded = bundle;
  unrecorded.deviceLibrary.clear(); // written before bundles recorded it
  EXPECT_THAT(bundleMismatch(unrecorded, "sm_90a", "0.1.0", library),
              ::testing::HasSubstr("device library (not recorded)"));
}

TEST_F(BundleTest, ImportPutsEveryEntryInTheCache) {
  ArtifactCache::Options options;
  options.directory = directory + "/cache";
  ArtifactCache cache(options);
  importBundle(bundle, cache);
  ArtifactCache fresh(options);
  for (const BundleEntry &entry : bundle.entries) {
    std::optional<Artifact> got = fresh.lookup(entry.key);
    ASSERT_TRUE(got) << entry.key;
    EXPECT_EQ(*got, entry.artifact);
  }
}

} // namespace
