// NVRTC driver with one checking helper for every NVRTC call.
#include "kvarn/nvrtc.h"

#include <nvrtc.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>

namespace kvarn {
namespace {

/// Checks one NVRTC call; the error names the call, the result and where it was made.
Status checkNvrtc(nvrtcResult result, const char *call, const char *file, int line) {
  if (result == NVRTC_SUCCESS)
    return Status::success();
  return makeError(ErrorCode::Internal, std::string(call) + " failed with " +
                                            nvrtcGetErrorString(result) + " at " + file + ":" +
                                            std::to_string(line));
}
#define KVARN_NVRTC(call) checkNvrtc((call), #call, __FILE__, __LINE__)

/// Writes the source of a failed compile where the user can find it; returns the path.
std::string dumpSource(const std::string &source, const std::string &programName) {
  const char *tmp = std::getenv("TMPDIR");
  const std::string path = std::string(tmp && *tmp ? tmp : "/tmp") + "/kvarn-failed-" +
                           programName + "-" +
                           std::to_string(std::hash<std::string>{}(source) & 0xffffffffu) + ".cu";
  std::ofstream out(path, std::ios::binary);
  out << source;
  return out ? path : std::string("(could not write ") + path + ")";
}

/// Releases the program on every path.
struct ProgramGuard {
  nvrtcProgram program = nullptr;
  ~ProgramGuard() {
    if (program)
      nvrtcDestroyProgram(&program);
  }
};

} // namespace

std::string nvrtcVersion() {
  int major = 0, minor = 0;
  if (::nvrtcVersion(&major, &minor) != NVRTC_SUCCESS)
    return "unknown";
  return std::to_string(major) + "." + std::to_string(minor);
}

std::vector<std::string> defaultNvrtcOptions(const std::string &arch) {
  return {"--gpu-architecture=" + arch, "--std=c++17", "--device-as-default-execution-space",
          "--extra-device-vectorization", "-DKVARN_DEVICE=1"};
}

Expected<NvrtcOutput> compileCuda(const std::string &source, const std::string &programName,
                                  const std::string &arch, const std::vector<SourceHeader> &headers,
                                  const std::vector<std::string> &extraOptions) {
  NvrtcOutput output;
  output.options = defaultNvrtcOptions(arch);
  output.options.insert(output.options.end(), extraOptions.begin(), extraOptions.end());
  std::vector<const char *> headerSources, headerNames, options;
  for (const SourceHeader &header : headers) {
    headerSources.push_back(header.content.c_str());
    headerNames.push_back(header.name.c_str());
  }
  for (const std::string &option : output.options)
    options.push_back(option.c_str());

  // Step 1. Create and compile.
  ProgramGuard guard;
  if (Status s = KVARN_NVRTC(nvrtcCreateProgram(&guard.program, source.c_str(),
                                                (programName + ".cu").c_str(),
                                                static_cast<int>(headers.size()),
                                                headerSources.data(), headerNames.data()));
      !s)
    return s.error();
  const nvrtcResult compiled =
      nvrtcCompileProgram(guard.program, static_cast<int>(options.size()), options.data());
  size_t logSize = 0;
  if (nvrtcGetProgramLogSize(guard.program, &logSize) == NVRTC_SUCCESS && logSize > 1) {
    output.log.resize(logSize);
    nvrtcGetProgramLog(guard.program, output.log.data());
    output.log.resize(logSize - 1);
  }
  if (compiled != NVRTC_SUCCESS) {
    std::string joined;
    for (const std::string &option : output.options)
      joined += " " + option;
    return makeError(ErrorCode::Internal,
                     "NVRTC could not compile " + programName + " for " + arch + " (" +
                         nvrtcGetErrorString(compiled) + ")\noptions:" + joined +
                         "\nsource: " + dumpSource(source, programName) + "\nlog:\n" + output.log);
  }
  // Step 2. PTX, and the cubin when the target is a real architecture.
  size_t ptxSize = 0;
  if (Status s = KVARN_NVRTC(nvrtcGetPTXSize(guard.program, &ptxSize)); !s)
    return s.error();
  output.ptx.resize(ptxSize);
  if (Status s = KVARN_NVRTC(nvrtcGetPTX(guard.program, output.ptx.data())); !s)
    return s.error();
  if (!output.ptx.empty() && output.ptx.back() == '\0')
    output.ptx.pop_back();
  if (arch.rfind("sm_", 0) == 0) {
    size_t cubinSize = 0;
    if (Status s = KVARN_NVRTC(nvrtcGetCUBINSize(guard.program, &cubinSize)); !s)
      return s.error();
    output.cubin.resize(cubinSize);
    if (Status s = KVARN_NVRTC(nvrtcGetCUBIN(guard.program, output.cubin.data())); !s)
      return s.error();
  }
  return output;
}

} // namespace kvarn
