// Artifact cache implementation (see cache.h for the guarantees).
#include "kvarn/cache.h"

#include "kvarn/files.h"

#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace kvarn {
namespace {

constexpr char kMagic[8] = {'K', 'V', 'A', 'R', 'N', 'A', 'R', '1'};
constexpr uint32_t kSchema = 1;
constexpr const char *kSuffix = ".kvarn";

void appendU32(std::string &out, uint32_t v) { out.append(reinterpret_cast<const char *>(&v), 4); }
void appendU64(std::string &out, uint64_t v) { out.append(reinterpret_cast<const char *>(&v), 8); }

/// Bounds-checked reader over an entry's bytes.
struct Reader {
  const std::string &bytes;
  size_t offset = 0;
  bool take(void *out, size_t size) {
    if (size > bytes.size() - offset)
      return false;
    std::memcpy(out, bytes.data() + offset, size);
    offset += size;
    return true;
  }
  bool takeString(std::string &out, uint64_t size) {
    if (size > bytes.size() - offset)
      return false;
    out.assign(bytes.data() + offset, size);
    offset += size;
    return true;
  }
};

/// Collapses whitespace runs to one space: formatting-only source changes keep the key.
std::string normalizeWhitespace(const std::string &source) {
  std::string out;
  out.reserve(source.size());
  bool space = false;
  for (char ch : source) {
    if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r') {
      space = true;
      continue;
    }
    if (space && !out.empty())
      out.push_back(' ');
    space = false;
    out.push_back(ch);
  }
  return out;
}

bool makeDirectories(const std::string &path) {
  std::string partial;
  for (size_t i = 0; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      if (!partial.empty() && mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST)
        return false;
    }
    if (i < path.size())
      partial.push_back(path[i]);
  }
  struct stat info;
  return stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

} // namespace

std::string artifactKey(const ArtifactKeyInputs &inputs) {
  XXH3_state_t *state = XXH3_createState();
  XXH3_128bits_reset(state);
  auto field = [&](const std::string &text) {
    const uint64_t size = text.size();
    XXH3_128bits_update(state, &size, sizeof(size));
    XXH3_128bits_update(state, text.data(), text.size());
  };
  field(normalizeWhitespace(inputs.source));
  field(inputs.deviceLibraryFingerprint);
  field(inputs.nvrtcVersion);
  field(std::to_string(inputs.options.size()));
  for (const std::string &option : inputs.options)
    field(option);
  field(inputs.arch);
  const XXH128_hash_t hash = XXH3_128bits_digest(state);
  XXH3_freeState(state);
  char text[33];
  std::snprintf(text, sizeof(text), "%016llx%016llx", (unsigned long long)hash.high64,
                (unsigned long long)hash.low64);
  return text;
}

std::string encodeArtifact(const std::string &key, const Artifact &artifact) {
  std::string out(kMagic, sizeof(kMagic));
  appendU32(out, kSchema);
  appendU32(out, uint32_t(key.size()));
  out += key;
  appendU32(out, uint32_t(artifact.metadata.size()));
  out += artifact.metadata;
  appendU64(out, artifact.ptx.size());
  out += artifact.ptx;
  appendU64(out, artifact.cubin.size());
  out.append(artifact.cubin.data(), artifact.cubin.size());
  appendU64(out, XXH3_64bits(out.data(), out.size()));
  return out;
}

Expected<Artifact> decodeArtifact(const std::string &key, const std::string &bytes) {
  auto bad = [](const std::string &why) { return makeError(ErrorCode::InvalidData, why); };
  if (bytes.size() < sizeof(kMagic) + 4 + 8)
    return bad("entry is truncated (" + std::to_string(bytes.size()) + " bytes)");
  if (std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0)
    return bad("bad magic");
  uint64_t stored = 0;
  std::memcpy(&stored, bytes.data() + bytes.size() - 8, 8);
  Reader reader{bytes, sizeof(kMagic)};
  uint32_t schema = 0;
  reader.take(&schema, 4);
  if (schema != kSchema)
    return bad("schema " + std::to_string(schema) + " (this build reads schema " +
               std::to_string(kSchema) + ")");
  if (XXH3_64bits(bytes.data(), bytes.size() - 8) != stored)
    return bad("checksum mismatch");
  uint32_t keySize = 0, metadataSize = 0;
  uint64_t ptxSize = 0, cubinSize = 0;
  std::string embeddedKey, cubin;
  Artifact artifact;
  if (!reader.take(&keySize, 4) || !reader.takeString(embeddedKey, keySize) ||
      !reader.take(&metadataSize, 4) || !reader.takeString(artifact.metadata, metadataSize) ||
      !reader.take(&ptxSize, 8) || !reader.takeString(artifact.ptx, ptxSize) ||
      !reader.take(&cubinSize, 8) || !reader.takeString(cubin, cubinSize) ||
      reader.offset != bytes.size() - 8)
    return bad("a field runs past the end of the entry");
  if (embeddedKey != key)
    return bad("entry holds key " + embeddedKey + ", not " + key);
  artifact.cubin.assign(cubin.begin(), cubin.end());
  return artifact;
}

std::string ArtifactCache::defaultDirectory() {
  if (const char *dir = std::getenv("KVARN_CACHE_DIR"); dir && *dir)
    return dir;
  if (const char *xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg)
    return std::string(xdg) + "/kvarn";
  if (const char *home = std::getenv("HOME"); home && *home)
    return std::string(home) + "/.cache/kvarn";
  return "/tmp/kvarn-cache";
}

ArtifactCache::ArtifactCache(Options options) : options_(std::move(options)) {
  directory_ = options_.directory.empty() ? defaultDirectory() : options_.directory;
  ++filesystemCalls_;
  if (!makeDirectories(directory_)) {
    warn("cache directory " + directory_ + " cannot be created (" + std::strerror(errno) +
         "); caching in memory only");
    return;
  }
  ++filesystemCalls_;
  if (access(directory_.c_str(), W_OK) != 0) {
    warn("cache directory " + directory_ + " is not writable; caching in memory only");
    return;
  }
  diskEnabled_ = true;
}

void ArtifactCache::warn(const std::string &message) {
  std::lock_guard<std::mutex> lock(mutex_);
  warnings_.push_back(message);
  std::fprintf(stderr, "kvarn: warning: %s\n", message.c_str());
}

std::vector<std::string> ArtifactCache::warnings() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return warnings_;
}

std::string ArtifactCache::entryPath(const std::string &key) const {
  return directory_ + "/" + key + kSuffix;
}

std::mutex &ArtifactCache::keyMutex(const std::string &key) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::unique_ptr<std::mutex> &m = keyMutexes_[key];
  if (!m)
    m = std::make_unique<std::mutex>();
  return *m;
}

Expected<Artifact> ArtifactCache::readEntry(const std::string &key, bool *missing,
                                            size_t *size) {
  *missing = false;
  ++filesystemCalls_;
  const int fd = open(entryPath(key).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *missing = true;
    return makeError(ErrorCode::NotFound, "no entry");
  }
  std::string bytes;
  struct stat info;
  bool readable = fstat(fd, &info) == 0 && S_ISREG(info.st_mode);
  if (readable) {
    bytes.resize(size_t(info.st_size));
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = read(fd, bytes.data() + done, bytes.size() - done);
      if (n <= 0) {
        readable = false;
        break;
      }
      done += size_t(n);
    }
  }
  close(fd);
  if (size)
    *size = bytes.size();
  if (!readable)
    return makeError(ErrorCode::InvalidData, "not a readable file");
  return decodeArtifact(key, bytes);
}

std::string ArtifactCache::quarantine(const std::string &key) {
  // Moved aside (a directory in its place is renamed too); removed if it cannot be renamed.
  const std::string path = entryPath(key);
  const std::string aside = path + ".corrupt-" + std::to_string(getpid()) + "-" +
                            std::to_string(std::rand());
  ++filesystemCalls_;
  if (std::rename(path.c_str(), aside.c_str()) != 0) {
    ::unlink(path.c_str());
    return "";
  }
  return aside;
}

std::optional<Artifact> ArtifactCache::loadFromDisk(const std::string &key) {
  if (!diskEnabled_)
    return std::nullopt;
  bool missing = false;
  Expected<Artifact> artifact = readEntry(key, &missing);
  if (artifact)
    return std::move(*artifact);
  if (missing)
    return std::nullopt;
  const std::string aside = quarantine(key);
  warn("corrupt cache entry " + entryPath(key) + " (" + artifact.error().message + "); " +
       (aside.empty() ? "removed" : "moved aside to " + aside) + " and treated as a miss");
  return std::nullopt;
}

bool ArtifactCache::writeToDisk(const std::string &key, const Artifact &artifact) {
  if (!diskEnabled_)
    return false;
  filesystemCalls_ += 2; // the temporary file and the rename
  if (Status written = writeFileAtomically(entryPath(key), encodeArtifact(key, artifact),
                                           options_.writeHook);
      !written) {
    warn(written.error().message + "; kept in memory only");
    return false;
  }
  evictIfNeeded();
  return true;
}

void ArtifactCache::evictIfNeeded() {
  ++filesystemCalls_;
  struct Entry {
    std::string path;
    size_t size;
    long long mtimeNs;
  };
  std::vector<Entry> entries;
  size_t total = 0;
  for (const std::string &key : entryKeys()) {
    struct stat info;
    const std::string path = entryPath(key);
    if (stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode)) {
      entries.push_back({path, size_t(info.st_size),
                         (long long)info.st_mtim.tv_sec * 1000000000LL + info.st_mtim.tv_nsec});
      total += size_t(info.st_size);
    }
  }
  if (total <= options_.maxBytes)
    return;
  std::sort(entries.begin(), entries.end(),
            [](const Entry &a, const Entry &b) { return a.mtimeNs < b.mtimeNs; });
  for (const Entry &entry : entries) {
    if (total <= options_.maxBytes)
      break;
    if (::unlink(entry.path.c_str()) == 0)
      total -= entry.size;
  }
}

std::optional<Artifact> ArtifactCache::lookup(const std::string &key) {
  if (options_.memory) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = memory_.find(key);
    if (found != memory_.end())
      return *found->second;
  }
  std::optional<Artifact> loaded = loadFromDisk(key);
  if (loaded && options_.memory) {
    std::lock_guard<std::mutex> lock(mutex_);
    memory_[key] = std::make_shared<const Artifact>(*loaded);
  }
  return loaded;
}

void ArtifactCache::store(const std::string &key, const Artifact &artifact) {
  if (options_.memory) {
    std::lock_guard<std::mutex> lock(mutex_);
    memory_[key] = std::make_shared<const Artifact>(artifact);
  }
  writeToDisk(key, artifact);
}

FileLock ArtifactCache::lockKeyFile(const std::string &key) {
  if (!diskEnabled_)
    return FileLock();
  ++filesystemCalls_;
  return FileLock(directory_ + "/" + key + ".lock", FileLock::Kind::File);
}

std::vector<std::string> ArtifactCache::entryKeys() const {
  std::vector<std::string> keys;
  DIR *dir = diskEnabled_ ? opendir(directory_.c_str()) : nullptr;
  if (!dir)
    return keys;
  const size_t suffix = std::strlen(kSuffix);
  while (dirent *item = readdir(dir)) {
    const std::string name = item->d_name;
    if (name.size() > suffix && name.compare(name.size() - suffix, std::string::npos, kSuffix) == 0)
      keys.push_back(name.substr(0, name.size() - suffix));
  }
  closedir(dir);
  std::sort(keys.begin(), keys.end());
  return keys;
}

std::vector<ArtifactCache::EntryCheck> ArtifactCache::checkEntries() {
  std::vector<EntryCheck> checks;
  for (const std::string &key : entryKeys()) {
    bool missing = false;
    EntryCheck check;
    check.key = key;
    Expected<Artifact> artifact = readEntry(key, &missing, &check.bytes);
    if (missing) // removed since the directory was read
      continue;
    if (artifact) {
      check.metadata = artifact->metadata;
    } else {
      check.problem = artifact.error().message;
    }
    checks.push_back(std::move(check));
  }
  return checks;
}

Expected<Artifact> ArtifactCache::getOrBuild(const std::string &key,
                                             const std::function<Expected<Artifact>()> &build) {
  if (std::optional<Artifact> hit = lookup(key))
    return std::move(*hit);
  std::lock_guard<std::mutex> threadLock(keyMutex(key));
  const FileLock fileLock = lockKeyFile(key);
  // Double-checked: another thread or process may have published it meanwhile.
  if (std::optional<Artifact> hit = lookup(key))
    return std::move(*hit);
  Expected<Artifact> built = build();
  if (!built)
    return built.error();
  store(key, *built);
  return built;
}

size_t ArtifactCache::clean() {
  if (!diskEnabled_)
    return 0;
  // Entries that fail their checks, each checked again under its key's lock (a builder holding
  // it may be publishing a good entry in its place), then moved aside with the others below.
  for (const EntryCheck &check : checkEntries()) {
    if (check.problem.empty())
      continue;
    const FileLock lock = lockKeyFile(check.key);
    bool missing = false;
    if (!readEntry(check.key, &missing) && !missing)
      quarantine(check.key);
  }
  DIR *dir = opendir(directory_.c_str());
  if (!dir)
    return 0;
  std::vector<std::string> doomed;
  while (dirent *item = readdir(dir)) {
    const std::string name = item->d_name;
    if (name.find(".corrupt-") != std::string::npos || name.rfind(".tmp-", 0) == 0)
      doomed.push_back(directory_ + "/" + name);
  }
  closedir(dir);
  size_t removed = 0;
  for (const std::string &path : doomed) {
    struct stat info;
    if (stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode))
      removed += ::rmdir(path.c_str()) == 0;
    else
      removed += ::unlink(path.c_str()) == 0;
  }
  return removed;
}

} // namespace kvarn
