// Artifact cache: keys, corruption matrix, degraded directories, ENOSPC, and concurrency across
// threads and processes (fork), including writers killed with SIGKILL.
#include "kvarn/cache.h"
#include "kvarn/jit.h"

#include "../common/Seeds.h"
#include "../common/TemporaryDirectory.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sys/stat.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

using namespace kvarn;
namespace fs = std::filesystem;

namespace {

/// A fresh temporary directory per test.
class CacheTest : public ::testing::Test {
protected:
  ArtifactCache::Options options(bool memory = true) {
    ArtifactCache::Options o;
    o.directory = directory;
    o.memory = memory;
    return o;
  }
  kvarn::testing::TemporaryDirectory temporary{"kvarn-cache-test"};
  const std::string directory = temporary.path;
};

/// Deterministic artifact content for a key (so any reader can check what it got).
Artifact artifactFor(const std::string &key, size_t cubinBytes = 4096) {
  Artifact a;
  a.metadata = "{\"key\":\"" + key + "\"}";
  a.ptx = "// ptx of " + key + "\n" + std::string(1000, 'p');
  a.cubin.resize(cubinBytes);
  for (size_t i = 0; i < cubinBytes; ++i)
    a.cubin[i] = char((i * 131 + key.size() + std::hash<std::string>{}(key)) & 0xff);
  return a;
}

std::string keyNamed(int index) {
  ArtifactKeyInputs inputs;
  inputs.source = "kernel " + std::to_string(index);
  inputs.arch = "sm_90a";
  return artifactKey(inputs);
}

size_t countFiles(const std::string &directory, const std::string &suffix) {
  size_t count = 0;
  for (const auto &entry : fs::directory_iterator(directory)) {
    const std::string name = entry.path().filename().string();
    if (name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      ++count;
  }
  return count;
}

TEST(ArtifactKey, EveryInputChangesTheKeyButFormattingDoesNot) {
  ArtifactKeyInputs base;
  base.source = "extern \"C\" __global__ void k() {\n  int x = 1;\n}\n";
  base.deviceLibraryFingerprint = "0123456789abcdef";
  base.nvrtcVersion = "13.0";
  base.options = {"--gpu-architecture=sm_90a", "--std=c++17"};
  base.arch = "sm_90a";
  const std::string key = artifactKey(base);
  EXPECT_EQ(key.size(), 32u);
  std::vector<std::pair<const char *, std::function<void(ArtifactKeyInputs &)>>> changes = {
      {"source token", [](ArtifactKeyInputs &i) { i.source.replace(i.source.find('1'), 1, "2"); }},
      {"source identifier", [](ArtifactKeyInputs &i) { i.source.replace(i.source.find('x'), 1, "y"); }},
      {"source appended", [](ArtifactKeyInputs &i) { i.source += "int z;"; }},
      {"device library", [](ArtifactKeyInputs &i) { i.deviceLibraryFingerprint[0] = '1'; }},
      {"nvrtc version", [](ArtifactKeyInputs &i) { i.nvrtcVersion = "13.1"; }},
      {"option value", [](ArtifactKeyInputs &i) { i.options[1] = "--std=c++20"; }},
      {"option added", [](ArtifactKeyInputs &i) { i.options.push_back("-lineinfo"); }},
      {"option removed", [](ArtifactKeyInputs &i) { i.options.pop_back(); }},
      {"option order", [](ArtifactKeyInputs &i) { std::swap(i.options[0], i.options[1]); }},
      {"options merged", [](ArtifactKeyInputs &i) { i.options = {i.options[0] + i.options[1]}; }},
      {"arch", [](ArtifactKeyInputs &i) { i.arch = "sm_80"; }},
      {"arch variant", [](ArtifactKeyInputs &i) { i.arch = "sm_90"; }},
      {"field boundary", [](ArtifactKeyInputs &i) { i.nvrtcVersion = ""; i.deviceLibraryFingerprint += "13.0"; }},
  };
  for (auto &[name, change] : changes) {
    ArtifactKeyInputs changed = base;
    change(changed);
    EXPECT_NE(artifactKey(changed), key) << name;
  }
  ArtifactKeyInputs reformatted = base;
  reformatted.source = "extern \"C\"   __global__ void k() {\n\n\tint x = 1;   \n}";
  EXPECT_EQ(artifactKey(reformatted), key) << "whitespace-only changes keep the key";
}

/// kvarn_prepare's JIT of a config's schedule and its decode variants (buildPreparedKernels):
/// every missing kernel built once and concurrently, and stored; a cached one not rebuilt; a
/// failed build reported at each position of its schedule and stored nowhere.
TEST_F(CacheTest, PreparedKernelsBuildInParallelOnceEachAndReportFailuresWhereListed) {
  ArtifactCache cache(options());
  const KernelSpec spec = *parseKernelSpec("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a");
  auto schedule = [](const char *text) { return *parseSchedule(text); };
  const Schedule cached = schedule("warps=1"), failing = schedule("warps=2");
  const std::vector<Schedule> schedules = {schedule("warps=4"),
                                           schedule("warps=8"),
                                           schedule("warps=12"),
                                           schedule("warps=8"),
                                           failing,
                                           cached,
                                           failing};
  cache.store(preparedKernelKey(spec, cached), artifactFor("cached"));
  std::mutex mutex;
  std::condition_variable changed;
  int inFlight = 0, peak = 0;
  std::map<std::string, int> calls;
  JitCompiler jit = [&](const KernelSpec &, const Schedule &s) -> Expected<Artifact> {
    std::unique_lock<std::mutex> lock(mutex);
    ++calls[s.str()];
    peak = std::max(peak, ++inFlight);
    changed.notify_all();
    // Three builds in flight together, or 20 s: a serial build never gets there.
    changed.wait_for(lock, std::chrono::seconds(20), [&] { return peak >= 3; });
    --inFlight;
    if (s == failing)
      return makeError(ErrorCode::Internal, "no kernel for " + s.str());
    return artifactFor("built " + s.str());
  };
  const std::vector<std::optional<Error>> errors =
      buildPreparedKernels(cache, jit, spec, schedules, 3);
  EXPECT_EQ(peak, 3);
  EXPECT_EQ(calls, (std::map<std::string, int>{{schedule("warps=4").str(), 1},
                                               {schedule("warps=8").str(), 1},
                                               {schedule("warps=12").str(), 1},
                                               {failing.str(), 1}}));
  ASSERT_EQ(errors.size(), schedules.size());
  for (size_t i = 0; i < schedules.size(); ++i) {
    SCOPED_TRACE(schedules[i].str());
    if (schedules[i] == failing) {
      ASSERT_TRUE(errors[i].has_value());
      EXPECT_THAT(errors[i]->message, ::testing::HasSubstr("no kernel for " + failing.str()));
      EXPECT_FALSE(cache.lookup(preparedKernelKey(spec, failing)));
    } else {
      EXPECT_FALSE(errors[i].has_value());
      const std::optional<Artifact> stored = cache.lookup(preparedKernelKey(spec, schedules[i]));
      ASSERT_TRUE(stored);
      EXPECT_EQ(*stored,
                artifactFor(schedules[i] == cached ? "cached" : "built " + schedules[i].str()));
    }
  }
}

TEST_F(CacheTest, StoresInMemoryAndOnDiskAndReloadsInANewInstance) {
  const std::string key = keyNamed(1);
  {
    ArtifactCache cache(options());
    ASSERT_TRUE(cache.diskEnabled());
    EXPECT_FALSE(cache.lookup(key));
    cache.store(key, artifactFor(key));
    EXPECT_EQ(*cache.lookup(key), artifactFor(key));
  }
  ArtifactCache again(options());
  EXPECT_EQ(*again.lookup(key), artifactFor(key));
  EXPECT_TRUE(again.warnings().empty());
}

TEST_F(CacheTest, NoFilesystemCallsAfterAKeysFirstLoad) {
  const std::string key = keyNamed(2);
  ArtifactCache(options()).store(key, artifactFor(key));
  ArtifactCache cache(options());
  ASSERT_TRUE(cache.lookup(key));
  const size_t calls = cache.filesystemCalls();
  for (int i = 0; i < 1000; ++i)
    ASSERT_TRUE(cache.lookup(key));
  EXPECT_EQ(cache.filesystemCalls(), calls);
}

/// Writes `bytes` as the on-disk entry of `key`.
void writeEntry(const std::string &directory, const std::string &key, const std::string &bytes) {
  std::ofstream out(directory + "/" + key + ".kvarn", std::ios::binary | std::ios::trunc);
  out << bytes;
}

TEST_F(CacheTest, CorruptEntriesAreMissesThatAreQuarantinedAndRebuilt) {
  const std::string key = keyNamed(3), other = keyNamed(4);
  const std::string good = encodeArtifact(key, artifactFor(key));
  auto flipped = [&](size_t at) {
    std::string b = good;
    b[at] ^= 0x5a;
    return b;
  };
  auto withSchema = [&](uint32_t schema) {
    std::string b = good;
    std::memcpy(b.data() + 8, &schema, 4);
    return b;
  };
  std::vector<std::pair<std::string, std::function<void()>>> cases = {
      {"empty file", [&] { writeEntry(directory, key, ""); }},
      {"truncated to 10 bytes", [&] { writeEntry(directory, key, good.substr(0, 10)); }},
      {"truncated by one byte", [&] { writeEntry(directory, key, good.substr(0, good.size() - 1)); }},
      {"flipped byte in the cubin", [&] { writeEntry(directory, key, flipped(good.size() - 20)); }},
      {"flipped byte in the checksum", [&] { writeEntry(directory, key, flipped(good.size() - 1)); }},
      {"bad magic", [&] { writeEntry(directory, key, flipped(0)); }},
      {"future schema", [&] { writeEntry(directory, key, withSchema(2)); }},
      {"wrong embedded key", [&] { writeEntry(directory, key, encodeArtifact(other, artifactFor(key))); }},
      {"missing blob", [&] {
         std::string b = encodeArtifact(key, artifactFor(key));
         writeEntry(directory, key, b.substr(0, b.size() - 8 - 100) + b.substr(b.size() - 8));
       }},
      {"garbage", [&] { writeEntry(directory, key, std::string(5000, '\x42')); }},
      {"appended garbage", [&] { writeEntry(directory, key, good + "tail"); }},
      {"directory in its place", [&] { fs::create_directory(directory + "/" + key + ".kvarn"); }},
  };
  for (auto &[name, corrupt] : cases) {
    SCOPED_TRACE(name);
    fs::remove_all(directory);
    fs::create_directory(directory);
    corrupt();
    ArtifactCache cache(options());
    EXPECT_FALSE(cache.lookup(key)) << "a corrupt entry must be a miss";
    ASSERT_EQ(cache.warnings().size(), 1u);
    EXPECT_THAT(cache.warnings()[0], ::testing::HasSubstr("corrupt cache entry"));
    int builds = 0;
    Expected<Artifact> rebuilt = cache.getOrBuild(key, [&]() -> Expected<Artifact> {
      ++builds;
      return artifactFor(key);
    });
    ASSERT_TRUE(rebuilt);
    EXPECT_EQ(builds, 1);
    EXPECT_EQ(*ArtifactCache(options()).lookup(key), artifactFor(key)) << "rebuilt on disk";
    EXPECT_GE(cache.clean(), 1u) << "the quarantined entry is removable";
  }
}

TEST_F(CacheTest, CheckEntriesReportsBadEntriesAndCleanRemovesThemButNoGoodOne) {
  // What `kvarn-tune cache verify` finds, `cache clean` can remove: a corrupt entry (here a
  // flipped cubin byte and a truncated file) goes, the valid ones and their contents stay.
  const std::string good1 = keyNamed(5), good2 = keyNamed(6), flipped = keyNamed(7),
                    truncated = keyNamed(8);
  {
    ArtifactCache cache(options());
    for (const std::string &key : {good1, good2, flipped, truncated})
      cache.store(key, artifactFor(key));
  }
  std::string bytes = encodeArtifact(flipped, artifactFor(flipped));
  bytes[bytes.size() - 20] ^= 0x5a;
  writeEntry(directory, flipped, bytes);
  const std::string whole = encodeArtifact(truncated, artifactFor(truncated));
  writeEntry(directory, truncated, whole.substr(0, whole.size() / 2));
  fs::create_directory(directory + "/not-an-entry");
  std::ofstream(directory + "/notes.txt") << "left alone";

  ArtifactCache cache(options());
  const std::vector<ArtifactCache::EntryCheck> checks = cache.checkEntries();
  ASSERT_EQ(checks.size(), 4u) << "entries only, sorted by key";
  std::map<std::string, ArtifactCache::EntryCheck> byKey;
  for (const ArtifactCache::EntryCheck &check : checks)
    byKey[check.key] = check;
  for (const std::string &key : {good1, good2}) {
    EXPECT_EQ(byKey[key].problem, "") << key;
    EXPECT_EQ(byKey[key].metadata, artifactFor(key).metadata);
    EXPECT_EQ(byKey[key].bytes, encodeArtifact(key, artifactFor(key)).size());
  }
  EXPECT_THAT(byKey[flipped].problem, ::testing::HasSubstr("checksum"));
  EXPECT_NE(byKey[truncated].problem, "");
  EXPECT_TRUE(cache.warnings().empty()) << "checking changes nothing";
  EXPECT_TRUE(fs::exists(directory + "/" + flipped + ".kvarn"));

  EXPECT_EQ(cache.clean(), 2u) << "the two corrupt entries";
  std::vector<std::string> left;
  for (const ArtifactCache::EntryCheck &check : cache.checkEntries()) {
    EXPECT_EQ(check.problem, "") << check.key;
    left.push_back(check.key);
  }
  std::vector<std::string> expected = {good1, good2};
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(left, expected);
  EXPECT_TRUE(fs::exists(directory + "/notes.txt")) << "files that are not entries stay";
  EXPECT_TRUE(fs::exists(directory + "/not-an-entry"));
  ArtifactCache fresh(options());
  EXPECT_EQ(*fresh.lookup(good1), artifactFor(good1));
  EXPECT_EQ(*fresh.lookup(good2), artifactFor(good2));
  EXPECT_FALSE(fresh.lookup(flipped)) << "a removed entry is a plain miss";
  EXPECT_TRUE(fresh.warnings().empty()) << "with nothing left to quarantine";
}

TEST_F(CacheTest, UncreatableDirectoryDegradesToMemoryWithOneWarning) {
  const std::string file = directory + "/plain-file";
  std::ofstream(file) << "x";
  ArtifactCache::Options o;
  o.directory = file + "/cache"; // a path under a regular file cannot be created
  ArtifactCache cache(o);
  EXPECT_FALSE(cache.diskEnabled());
  ASSERT_EQ(cache.warnings().size(), 1u);
  EXPECT_THAT(cache.warnings()[0], ::testing::HasSubstr("caching in memory only"));
  const std::string key = keyNamed(5);
  cache.store(key, artifactFor(key));
  EXPECT_EQ(*cache.lookup(key), artifactFor(key));
  EXPECT_EQ(cache.warnings().size(), 1u) << "one warning, not one per call";
}

/// A read-only cache directory (chmod 0555; as root the check runs in a child that drops to
/// nobody, since root writes anywhere): memory-only with one warning, the entries already there
/// untouched.
TEST_F(CacheTest, ReadOnlyDirectoryDegradesToMemoryWithOneWarningAndLeavesItAlone) {
  const std::string readOnly = directory + "/ro";
  const std::string existing = keyNamed(7), fresh = keyNamed(8);
  {
    ArtifactCache::Options o;
    o.directory = readOnly;
    ArtifactCache writer(o);
    writer.store(existing, artifactFor(existing));
  }
  const size_t entriesBefore = countFiles(readOnly, ".kvarn");
  ASSERT_EQ(entriesBefore, 1u);
  fs::permissions(directory, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                 fs::perms::others_read | fs::perms::others_exec);
  fs::permissions(readOnly, fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read |
                                fs::perms::group_exec | fs::perms::others_read |
                                fs::perms::others_exec);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0))
      _exit(10);
    ArtifactCache::Options o;
    o.directory = readOnly;
    ArtifactCache cache(o);
    if (cache.diskEnabled())
      _exit(11);
    if (cache.warnings().size() != 1 ||
        cache.warnings()[0].find("is not writable; caching in memory only") == std::string::npos)
      _exit(12);
    cache.store(fresh, artifactFor(fresh));
    std::optional<Artifact> found = cache.lookup(fresh);
    if (!found || !(*found == artifactFor(fresh)))
      _exit(13);
    if (cache.warnings().size() != 1)
      _exit(14);
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  fs::permissions(readOnly, fs::perms::owner_all);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "10: cannot drop privileges, 11: disk enabled, 12: wrong "
                                       "warnings, 13: memory entry lost, 14: repeated warnings";
  EXPECT_EQ(countFiles(readOnly, ".kvarn"), entriesBefore) << "nothing written to a read-only dir";
}

TEST_F(CacheTest, MissingDirectoryIsCreated) {
  ArtifactCache::Options o;
  o.directory = directory + "/a/b/c";
  ArtifactCache cache(o);
  EXPECT_TRUE(cache.diskEnabled());
  EXPECT_TRUE(fs::is_directory(o.directory));
}

TEST_F(CacheTest, DiskFullKeepsTheEntryInMemoryAndLeavesNoPartialFile) {
  ArtifactCache::Options o = options();
  int calls = 0;
  o.writeHook = [&](int fd, const void *data, size_t size) -> long {
    if (++calls == 1) // a short write, then the disk is full
      return long(::write(fd, data, size / 2));
    errno = ENOSPC;
    return -1;
  };
  ArtifactCache cache(o);
  const std::string key = keyNamed(6);
  cache.store(key, artifactFor(key));
  EXPECT_EQ(*cache.lookup(key), artifactFor(key));
  ASSERT_EQ(cache.warnings().size(), 1u);
  EXPECT_THAT(cache.warnings()[0], ::testing::HasSubstr("No space left on device"));
  for (const auto &entry : fs::directory_iterator(directory))
    ADD_FAILURE() << "left behind: " << entry.path();
}

TEST_F(CacheTest, SizeCapEvictsOldEntries) {
  ArtifactCache::Options o = options();
  o.maxBytes = 64 * 1024;
  ArtifactCache cache(o);
  for (int k = 0; k < 40; ++k)
    cache.store(keyNamed(100 + k), artifactFor(keyNamed(100 + k), 8000));
  size_t total = 0;
  for (const auto &entry : fs::directory_iterator(directory))
    total += fs::file_size(entry.path());
  EXPECT_LE(total, o.maxBytes);
  EXPECT_TRUE(ArtifactCache(options()).lookup(keyNamed(139))) << "the newest entry survives";
}

/// Runs `body(index)` in `count` forked processes; returns how many exited non-zero.
int forkAll(int count, const std::function<int(int)> &body) {
  std::vector<pid_t> children;
  for (int i = 0; i < count; ++i) {
    const pid_t pid = fork();
    if (pid == 0)
      _exit(body(i));
    children.push_back(pid);
  }
  int failures = 0;
  for (pid_t pid : children) {
    int status = 0;
    waitpid(pid, &status, 0);
    failures += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  return failures;
}

TEST_F(CacheTest, ThirtyTwoProcessesWritingTheSameKeysLeaveOneValidEntryEach) {
  const int keys = 8;
  const int failures = forkAll(32, [&](int process) {
    ArtifactCache cache(options(/*memory=*/false));
    for (int round = 0; round < 20; ++round)
      for (int k = 0; k < keys; ++k) {
        const std::string key = keyNamed((k + process + round) % keys);
        Expected<Artifact> got = cache.getOrBuild(key, [&]() -> Expected<Artifact> {
          return artifactFor(key, 20000);
        });
        if (!got || !(*got == artifactFor(key, 20000)))
          return 1;
        if (round % 5 == 0) // also race plain stores against the builders
          cache.store(key, artifactFor(key, 20000));
      }
    return 0;
  });
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(countFiles(directory, ".kvarn"), size_t(keys));
  ArtifactCache reader(options(false));
  for (int k = 0; k < keys; ++k)
    EXPECT_EQ(*reader.lookup(keyNamed(k)), artifactFor(keyNamed(k), 20000));
  EXPECT_TRUE(reader.warnings().empty());
  for (const auto &entry : fs::directory_iterator(directory))
    EXPECT_EQ(entry.path().filename().string().rfind(".tmp-", 0), std::string::npos)
        << "temporary file left: " << entry.path();
}

TEST_F(CacheTest, TwoThousandDistinctKeysFromThirtyTwoProcessesAreAllValid) {
  const int failures = forkAll(32, [&](int process) {
    ArtifactCache cache(options(false));
    for (int k = 0; k < 64; ++k) {
      const std::string key = keyNamed(1000 + process * 64 + k);
      cache.store(key, artifactFor(key, 512));
    }
    return 0;
  });
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(countFiles(directory, ".kvarn"), 2048u);
  ArtifactCache reader(options(false));
  for (int k = 0; k < 2048; ++k) {
    std::optional<Artifact> got = reader.lookup(keyNamed(1000 + k));
    ASSERT_TRUE(got) << k;
    ASSERT_EQ(*got, artifactFor(keyNamed(1000 + k), 512));
  }
}

TEST_F(CacheTest, ConcurrentWritersAndReadersNeverSeeATornEntry) {
  const int keys = 16;
  std::atomic<bool> stop{false};
  std::atomic<int> badReads{0}, goodReads{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < 8; ++w)
    threads.emplace_back([&, w] {
      ArtifactCache cache(options(false));
      for (int round = 0; !stop; ++round) {
        const std::string key = keyNamed(2000 + (w + round) % keys);
        cache.store(key, artifactFor(key, 30000));
      }
    });
  for (int r = 0; r < 8; ++r)
    threads.emplace_back([&, r] {
      ArtifactCache cache(options(false));
      for (int i = 0; i < 10000; ++i) {
        const std::string key = keyNamed(2000 + (r + i) % keys);
        std::optional<Artifact> got = cache.lookup(key);
        if (got && !(*got == artifactFor(key, 30000)))
          ++badReads;
        else if (got)
          ++goodReads;
        if (!cache.warnings().empty())
          ++badReads; // a reader must never see a corrupt entry either
      }
    });
  for (size_t t = 8; t < threads.size(); ++t)
    threads[t].join();
  stop = true;
  for (size_t t = 0; t < 8; ++t)
    threads[t].join();
  EXPECT_EQ(badReads.load(), 0);
  EXPECT_GT(goodReads.load(), 0);
}

TEST_F(CacheTest, WritersKilledAtRandomPointsLeaveOnlyValidEntriesOrMisses) {
  std::mt19937 rng(kvarn::testing::testSeed(7));
  const int keys = 6;
  for (int kill = 0; kill < 100; ++kill) {
    const pid_t pid = fork();
    if (pid == 0) {
      ArtifactCache cache(options(false));
      for (int round = 0;; ++round) {
        const std::string key = keyNamed(3000 + round % keys);
        cache.store(key, artifactFor(key, 200000));
      }
    }
    usleep(std::uniform_int_distribution<int>(0, 3000)(rng));
    ::kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    ArtifactCache reader(options(false));
    for (int k = 0; k < keys; ++k) {
      std::optional<Artifact> got = reader.lookup(keyNamed(3000 + k));
      if (got) {
        ASSERT_EQ(*got, artifactFor(keyNamed(3000 + k), 200000)) << "after kill " << kill;
      }
    }
    ASSERT_TRUE(reader.warnings().empty()) << reader.warnings()[0];
  }
  ArtifactCache cache(options());
  cache.clean(); // temporary files of killed writers
  for (const auto &entry : fs::directory_iterator(directory))
    EXPECT_EQ(entry.path().filename().string().rfind(".tmp-", 0), std::string::npos);
}

} // namespace
