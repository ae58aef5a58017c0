// Bundles with sources and the device library: written and read back whole, and recompiled for
// another arch with NVRTC alone (what kvarn_load_bundle does for a bundle of another GPU).
#include "kvarn/Compiler/Bundle.h"
#include "kvarn/jit.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

using namespace kvarn;
using ::testing::HasSubstr;

namespace {

/// The ELF e_flags of a cubin hold the SM version in bits 8-15 (sm_80 -> 80).
int cubinSm(const std::vector<char> &cubin) {
  uint32_t flags = 0;
  if (cubin.size() < 0x34)
    return -1;
  std::memcpy(&flags, cubin.data() + 0x30, 4);
  return int((flags >> 8) & 0xff);
}

TEST(Retarget, BundleSourcesRecompileForAnotherArch) {
  const std::string dir = testing::TempDir() + "/kvarn-retarget-test";
  std::filesystem::remove_all(dir);
  ArtifactCache cache(ArtifactCache::Options{dir + "/cache"});
  TuningEnvironment h200;
  h200.arch = "sm_90a";
  const std::vector<KernelSpec> specs = {
      *parseKernelSpec("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a"),
      *parseKernelSpec("decode:kvarn_k4v2_g128:d256:q16:f16:sm_90a"),
      *parseKernelSpec("flush:kvarn_k4v2_g128:d256:q1:f16:sm_90a")};
  Expected<Bundle> built = compiler::buildBundle(specs, "", h200, cache);
  ASSERT_TRUE(built) << built.error().str();
  EXPECT_FALSE(built->headers.empty());
  // Step 1. Written and read back with its headers.
  ASSERT_TRUE(writeBundle(dir + "/b.kvarnbundle", *built));
  Expected<Bundle> read = readBundle(dir + "/b.kvarnbundle");
  ASSERT_TRUE(read) << read.error().str();
  ASSERT_EQ(read->headers.size(), built->headers.size());
  for (size_t i = 0; i < read->headers.size(); ++i) {
    EXPECT_EQ(read->headers[i].name, built->headers[i].name);
    EXPECT_EQ(read->headers[i].content, built->headers[i].content);
  }
  EXPECT_EQ(cubinSm(read->entries[0].artifact.cubin), 90);
  // Step 2. Recompiled for sm_86: the D = 256, Q = 16 decode (its default schedule needs more
  // than sm_86's 99 KB of shared memory) is skipped with the reason; the other decode and the
  // D = 256 flush (94 KB) get sm_86 cubins under their sm_86 keys.
  std::vector<std::string> skipped;
  Expected<Bundle> moved = retargetBundle(*read, "sm_86", &skipped);
  ASSERT_TRUE(moved) << moved.error().str();
  EXPECT_EQ(moved->arch, "sm_86");
  ASSERT_EQ(moved->entries.size(), 2u);
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_THAT(skipped[0], HasSubstr("decode:kvarn_k4v2_g128:d256:q16"));
  EXPECT_THAT(skipped[0], HasSubstr("shared memory"));
  EXPECT_THAT(moved->entries[1].spec, HasSubstr("flush:kvarn_k4v2_g128:d256"));
  EXPECT_EQ(cubinSm(moved->entries[1].artifact.cubin), 86);
  const BundleEntry &entry = moved->entries[0];
  KernelSpec sm86 = specs[0];
  sm86.arch = "sm_86";
  EXPECT_EQ(entry.spec, sm86.str());
  EXPECT_EQ(entry.key, preparedKernelKey(sm86, *parseSchedule(entry.schedule)));
  EXPECT_NE(entry.key, read->entries[0].key);
  EXPECT_EQ(cubinSm(entry.artifact.cubin), 86);
  EXPECT_THAT(entry.artifact.metadata, HasSubstr("sm_86"));
  EXPECT_THAT(entry.artifact.ptx, HasSubstr(".target sm_86"));
  // Step 3. Without device-library headers there is nothing to recompile: a clear refusal.
  Bundle bare = *read;
  bare.headers.clear();
  Expected<Bundle> refused = retargetBundle(bare, "sm_80", &skipped);
  ASSERT_FALSE(refused);
  EXPECT_THAT(refused.error().message, HasSubstr("carries no device-library sources"));
  std::filesystem::remove_all(dir);
}

} // namespace
