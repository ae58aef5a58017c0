// Artifact cache: compiled kernels in memory and on disk, safe across threads and processes.
//
// One file per entry (<key>.kvarn): magic, schema, embedded key, metadata, PTX, cubin and an xxh3
// checksum. Entries are written to a temporary file and published by rename(2); a per-key
// flock(2) serializes builders across processes (double-checked: the entry is looked up again
// under the lock). A corrupt entry is a miss: it is moved aside (quarantined) and rebuilt. A
// directory that cannot be created or written degrades the cache to memory only, with one
// warning. A size cap evicts the least recently written entries.
#pragma once

#include "kvarn/files.h"
#include "kvarn/status.h"

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace kvarn {

/// Everything that determines a compiled artifact.
struct ArtifactKeyInputs {
  std::string source;                 ///< emitted CUDA C++ (whitespace runs are normalized)
  std::string deviceLibraryFingerprint;
  std::string nvrtcVersion;
  std::vector<std::string> options;   ///< NVRTC options, in order
  std::string arch;
};

/// 32 hex digits (xxh3-128 over the length-prefixed inputs).
std::string artifactKey(const ArtifactKeyInputs &inputs);

/// A compiled kernel: metadata (JSON: names, threads, shared memory, spec, schedule), PTX, cubin.
struct Artifact {
  std::string metadata;
  std::string ptx;
  std::vector<char> cubin;
  bool operator==(const Artifact &other) const = default;
};

/// Serialized entry and its parser (exposed for tests and bundles).
std::string encodeArtifact(const std::string &key, const Artifact &artifact);
/// Parses an entry; the error says why it is not a valid entry for `key`.
Expected<Artifact> decodeArtifact(const std::string &key, const std::string &bytes);

class ArtifactCache {
public:
  struct Options {
    std::string directory;               ///< empty: defaultDirectory()
    size_t maxBytes = size_t(2) << 30;   ///< disk size cap
    bool memory = true;                  ///< keep loaded entries in memory
    /// Test hook replacing write(2) for entry files (to inject ENOSPC and short writes).
    WriteFunction writeHook;
  };

  /// $KVARN_CACHE_DIR, else $XDG_CACHE_HOME/kvarn, else ~/.cache/kvarn.
  static std::string defaultDirectory();

  explicit ArtifactCache(Options options);

  /// Memory, then disk. A corrupt disk entry is quarantined and reported as a miss.
  std::optional<Artifact> lookup(const std::string &key);
  /// Stores in memory and (when enabled) publishes on disk. A disk failure leaves the memory
  /// entry, removes any partial file and is reported through warnings(); it is not an error.
  void store(const std::string &key, const Artifact &artifact);
  /// Looks up `key`; on a miss, builds it once across threads and processes and stores it.
  Expected<Artifact> getOrBuild(const std::string &key,
                                const std::function<Expected<Artifact>()> &build);
  /// One disk entry as `kvarn-tune cache ls|verify` shows it: its metadata and size, or why it is
  /// not a valid entry for its key (`problem`; such an entry is a miss that the next lookup
  /// quarantines and the next build replaces).
  struct EntryCheck {
    std::string key;
    std::string metadata;
    size_t bytes = 0;
    std::string problem; ///< empty: valid
  };
  /// Reads and checks every entry on disk (sorted by key; nothing is changed).
  std::vector<EntryCheck> checkEntries();
  /// Deletes quarantined entries, stale temporary files and entries that fail their checks (each
  /// checked again under its key's lock, as a builder takes it); returns how many files it
  /// removed.
  size_t clean();

  bool diskEnabled() const { return diskEnabled_; }
  const std::string &directory() const { return directory_; }
  std::vector<std::string> warnings() const;
  /// Filesystem calls made so far (open/read/stat/rename/...): a hot path must make none.
  size_t filesystemCalls() const { return filesystemCalls_.load(); }

private:
  /// The per-key lock file (`<key>.lock`) that serializes builders across processes; nothing
  /// is locked without a disk.
  FileLock lockKeyFile(const std::string &key);
  std::string entryPath(const std::string &key) const;
  std::vector<std::string> entryKeys() const;
  /// The entry of `key` read and checked; `missing` when there is no file, `size` its bytes.
  Expected<Artifact> readEntry(const std::string &key, bool *missing, size_t *size = nullptr);
  /// Moves the entry of `key` aside (`<entry>.corrupt-<pid>-<n>`, which clean() deletes);
  /// returns that path, or "" if it could only be removed.
  std::string quarantine(const std::string &key);
  std::optional<Artifact> loadFromDisk(const std::string &key);
  bool writeToDisk(const std::string &key, const Artifact &artifact);
  void evictIfNeeded();
  void warn(const std::string &message);
  std::mutex &keyMutex(const std::string &key);

  Options options_;
  std::string directory_;
  bool diskEnabled_ = false;
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<const Artifact>> memory_;
  std::map<std::string, std::unique_ptr<std::mutex>> keyMutexes_;
  std::vector<std::string> warnings_;
  std::atomic<size_t> filesystemCalls_{0};
};

} // namespace kvarn
