// Kernel bundle writer and reader.
#include "kvarn/bundle.h"

#include "kvarn/files.h"

#include <nlohmann/json.hpp>
#include <xxhash.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>

namespace kvarn {
namespace {

constexpr char kMagic[8] = {'K', 'V', 'A', 'R', 'N', 'B', 'N', '1'};
constexpr uint32_t kSchema = 1;

std::string hex64(uint64_t value) {
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", (unsigned long long)value);
  return text;
}

} // namespace

Status writeBundle(const std::string &path, const Bundle &bundle) {
  // Step 1. Blobs and the manifest that locates them.
  std::string blobs;
  nlohmann::json entries = nlohmann::json::array();
  auto blob = [&](const std::string &bytes) {
    nlohmann::json where = {{"offset", blobs.size()},
                            {"size", bytes.size()},
                            {"xxh3", hex64(XXH3_64bits(bytes.data(), bytes.size()))}};
    blobs += bytes;
    return where;
  };
  for (const BundleEntry &entry : bundle.entries)
    entries.push_back({{"key", entry.key},
                       {"spec", entry.spec},
                       {"schedule", entry.schedule},
                       {"metadata", entry.artifact.metadata},
                       {"ptx", blob(entry.artifact.ptx)},
                       {"cubin", blob(std::string(entry.artifact.cubin.begin(), entry.artifact.cubin.end()))},
                       {"source", blob(entry.source)}});
  nlohmann::json headers = nlohmann::json::array();
  for (const SourceHeader &header : bundle.headers)
    headers.push_back({{"name", header.name}, {"content", blob(header.content)}});
  nlohmann::json manifest = {{"schema", kSchema},
                             {"kvarn_version", bundle.kvarnVersion},
                             {"device_library", bundle.deviceLibrary},
                             {"arch", bundle.arch},
                             {"nvrtc", bundle.nvrtcVersion},
                             {"configs", bundle.configs},
                             {"headers", headers},
                             {"entries", entries}};
  const std::string manifestText = manifest.dump();
  std::string bytes(kMagic, sizeof(kMagic));
  const uint32_t schema = kSchema;
  const uint64_t manifestSize = manifestText.size();
  bytes.append(reinterpret_cast<const char *>(&schema), 4);
  bytes.append(reinterpret_cast<const char *>(&manifestSize), 8);
  bytes += manifestText;
  bytes += blobs;
  const uint64_t checksum = XXH3_64bits(bytes.data(), bytes.size());
  bytes.append(reinterpret_cast<const char *>(&checksum), 8);
  // Step 2. Publish atomically.
  if (Status written = writeFileAtomically(path, bytes); !written)
    return makeError(ErrorCode::Io, "bundle: " + written.error().message);
  return Status::success();
}

Expected<Bundle> readBundle(const std::string &path) {
  auto bad = [&](const std::string &why) {
    return makeError(ErrorCode::InvalidData, "bundle " + path + ": " + why);
  };
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return makeError(ErrorCode::NotFound, "bundle " + path + " cannot be opened");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < sizeof(kMagic) + 4 + 8 + 8)
    return bad("truncated (" + std::to_string(bytes.size()) + " bytes)");
  if (std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0)
    return bad("not a kvarn bundle (bad magic)");
  uint32_t schema = 0;
  uint64_t manifestSize = 0, checksum = 0;
  std::memcpy(&schema, bytes.data() + 8, 4);
  std::memcpy(&manifestSize, bytes.data() + 12, 8);
  std::memcpy(&checksum, bytes.data() + bytes.size() - 8, 8);
  if (schema != kSchema)
    return bad("schema " + std::to_string(schema) + " (this build reads schema " +
               std::to_string(kSchema) + ")");
  if (XXH3_64bits(bytes.data(), bytes.size() - 8) != checksum)
    return bad("checksum mismatch (corrupt or truncated)");
  const size_t blobsStart = 20 + manifestSize;
  if (manifestSize > bytes.size() - 28)
    return bad("manifest runs past the end");
  nlohmann::json manifest = nlohmann::json::parse(bytes.substr(20, manifestSize), nullptr, false);
  if (!manifest.is_object() || !manifest.contains("entries") || !manifest["entries"].is_array())
    return bad("malformed manifest");
  const std::string blobs = bytes.substr(blobsStart, bytes.size() - 8 - blobsStart);
  auto blob = [&](const nlohmann::json &where, std::string &out) -> bool {
    if (!where.is_object() || !where.contains("offset") || !where.contains("size"))
      return false;
    const uint64_t offset = where["offset"].get<uint64_t>(), size = where["size"].get<uint64_t>();
    if (offset > blobs.size() || size > blobs.size() - offset)
      return false;
    out = blobs.substr(offset, size);
    return where.value("xxh3", "") == hex64(XXH3_64bits(out.data(), out.size()));
  };
  Bundle bundle;
  bundle.kvarnVersion = manifest.value("kvarn_version", "");
  bundle.deviceLibrary = manifest.value("device_library", ""); // absent before it was recorded
  bundle.arch = manifest.value("arch", "");
  bundle.nvrtcVersion = manifest.value("nvrtc", "");
  bundle.configs = manifest.value("configs", "");
  if (manifest.contains("headers")) { // optional: bundles without sources have none
    if (!manifest["headers"].is_array())
      return bad("malformed manifest (headers)");
    for (const nlohmann::json &item : manifest["headers"]) {
      SourceHeader header;
      header.name = item.is_object() ? item.value("name", "") : "";
      if (header.name.empty() || !item.contains("content") || !blob(item["content"], header.content))
        return bad("device-library header '" + header.name + "' is missing or corrupt");
      bundle.headers.push_back(std::move(header));
    }
  }
  for (const nlohmann::json &item : manifest["entries"]) {
    BundleEntry entry;
    entry.key = item.value("key", "");
    entry.spec = item.value("spec", "");
    entry.schedule = item.value("schedule", "");
    entry.artifact.metadata = item.value("metadata", "");
    std::string cubin;
    if (entry.key.empty() || !item.contains("ptx") || !blob(item["ptx"], entry.artifact.ptx) ||
        !item.contains("cubin") || !blob(item["cubin"], cubin) || !item.contains("source") ||
        !blob(item["source"], entry.source))
      return bad("entry '" + entry.spec + "' has a missing or corrupt blob");
    entry.artifact.cubin.assign(cubin.begin(), cubin.end());
    bundle.entries.push_back(std::move(entry));
  }
  return bundle;
}

std::string bundleMismatch(const Bundle &bundle, const std::string &arch,
                           const std::string &kvarnVersion, const std::string &deviceLibrary) {
  if (bundle.arch != arch)
    return "bundle is for " + bundle.arch + ", this GPU is " + arch;
  if (bundle.kvarnVersion != kvarnVersion)
    return "bundle is from kvarn " + bundle.kvarnVersion + ", this runtime is kvarn " + kvarnVersion;
  if (bundle.deviceLibrary != deviceLibrary)
    return "bundle's kernels come from device library " +
           (bundle.deviceLibrary.empty() ? std::string("(not recorded)") : bundle.deviceLibrary) +
           ", this runtime's is " + deviceLibrary + " (export the bundle again with this build)";
  return "";
}

void importBundle(const Bundle &bundle, ArtifactCache &cache) {
  for (const BundleEntry &entry : bundle.entries)
    cache.store(entry.key, entry.artifact);
}

} // namespace kvarn
