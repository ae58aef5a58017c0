// KernelSpec / Schedule text forms and their validation.
#include "kvarn/spec.h"

#include "kvarn/params.h"

#include <algorithm>
#include <charconv>
#include <vector>

namespace kvarn {
namespace {

std::vector<std::string_view> split(std::string_view text, char separator) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    size_t end = text.find(separator, start);
    parts.push_back(text.substr(start, end == std::string_view::npos ? end : end - start));
    if (end == std::string_view::npos)
      return parts;
    start = end + 1;
  }
}

bool parseInt(std::string_view text, int &value) {
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  return ec == std::errc() && ptr == text.data() + text.size() && !text.empty();
}

} // namespace

const char *opKindName(OpKind kind) {
  switch (kind) {
  case OpKind::Decode: return "decode";
  case OpKind::Flush: return "flush";
  case OpKind::Append: return "append";
  case OpKind::Dequantize: return "dequantize";
  case OpKind::Extend: return "extend";
  }
  return "?";
}

Expected<OpKind> parseOpKind(std::string_view text) {
  for (OpKind kind : {OpKind::Decode, OpKind::Flush, OpKind::Append, OpKind::Dequantize,
                      OpKind::Extend})
    if (text == opKindName(kind))
      return kind;
  return makeError(ErrorCode::InvalidArgument,
                   "unknown op '" + std::string(text) +
                       "' (supported: decode, flush, append, dequantize, extend)");
}

Status validateArch(std::string_view arch) {
  static constexpr const char *known[] = {"sm_80",  "sm_86",   "sm_87",  "sm_89",   "sm_90",
                                          "sm_90a", "sm_100",  "sm_100a", "sm_120", "sm_120a",
                                          "sm_121", "sm_121a"};
  for (const char *name : known)
    if (arch == name)
      return Status::success();
  std::string list;
  for (const char *name : known)
    list += std::string(list.empty() ? "" : ", ") + name;
  // Compute capability below 8.0: no cp.async, no f16x2 conversions, no m16n8k16 MMA.
  static constexpr const char *older[] = {"sm_50", "sm_52", "sm_53", "sm_60", "sm_61",
                                          "sm_62", "sm_70", "sm_72", "sm_75"};
  if (std::find(std::begin(older), std::end(older), arch) != std::end(older))
    return makeError(ErrorCode::Unsupported,
                     "arch '" + std::string(arch) + "' is older than sm_80: kvarn kernels need " +
                         "cp.async, f16x2 conversions and m16n8k16 MMAs (supported: " + list + ")");
  return makeError(ErrorCode::InvalidArgument,
                   "unsupported arch '" + std::string(arch) + "' (supported: " + list + ")");
}

const char *dtypeField(DType dtype) { return dtype == DType::F16 ? "f16" : "bf16"; }

Expected<DType> parseDtypeField(std::string_view field) {
  if (field == "f16")
    return DType::F16;
  if (field == "bf16")
    return DType::BF16;
  return makeError(ErrorCode::InvalidArgument,
                   "dtype " + quoted(field) + ": expected f16 or bf16");
}

std::string KernelSpec::str() const {
  std::string text = std::string(opKindName(op)) + ":" + format.presetName() + ":d" +
                     std::to_string(format.headDim) + ":q" + std::to_string(queryHeadsPerKvHead) +
                     ":" + dtypeField(dtype) + ":" + arch;
  if (format.sinkhornIterations != kDefaultSinkhornIterations)
    text += ":it" + std::to_string(format.sinkhornIterations);
  if (format.alignment == RecordAlignment::Compact)
    text += ":compact";
  return text;
}

Expected<KernelSpec> parseKernelSpec(std::string_view text) {
  const std::string quoted = kvarn::quoted(text);
  auto fieldError = [&](int index, const char *field, std::string_view value,
                        const std::string &allowed) {
    return makeError(ErrorCode::InvalidArgument,
                     "kernel spec " + quoted + ": field " + std::to_string(index) + " (" + field +
                         ") is '" + std::string(value) + "'; " + allowed);
  };
  std::vector<std::string_view> fields = split(text, ':');
  if (fields.size() < 6 || fields.size() > 8)
    return makeError(ErrorCode::InvalidArgument,
                     "kernel spec " + quoted + " has " + std::to_string(fields.size()) +
                         " fields; expected op:preset:d<head_dim>:q<Q>:<f16|bf16>:<arch>"
                         "[:it<iterations>][:compact], e.g. decode:kvarn_k4v2_g128:d128:q8:f16:"
                         "sm_90a");
  KernelSpec spec;
  Expected<OpKind> op = parseOpKind(fields[0]);
  if (!op)
    return fieldError(1, "op", fields[0], "expected decode, flush, append, dequantize or extend");
  spec.op = *op;
  int headDim = 0;
  if (fields[2].substr(0, 1) != "d" || !parseInt(fields[2].substr(1), headDim))
    return fieldError(3, "head_dim", fields[2], "expected d<head_dim>, e.g. d128");
  int iterations = kDefaultSinkhornIterations;
  bool compact = false;
  for (size_t i = 6; i < fields.size(); ++i) {
    if (fields[i] == "compact")
      compact = true;
    else if (fields[i].substr(0, 2) != "it" || !parseInt(fields[i].substr(2), iterations))
      return fieldError(int(i) + 1, "option", fields[i], "expected it<iterations> or compact");
  }
  Expected<Format> format = parseFormat(fields[1], headDim, iterations);
  if (!format)
    return makeError(format.error().code, "kernel spec " + quoted + ": " + format.error().message);
  spec.format = *format;
  spec.format.alignment = compact ? RecordAlignment::Compact : RecordAlignment::Reference;
  if (fields[3].substr(0, 1) != "q" || !parseInt(fields[3].substr(1), spec.queryHeadsPerKvHead) ||
      spec.queryHeadsPerKvHead < 1 || spec.queryHeadsPerKvHead > 16)
    return fieldError(4, "query heads per kv head", fields[3], "expected q1 .. q16");
  if ((spec.op != OpKind::Decode && spec.op != OpKind::Extend) && spec.queryHeadsPerKvHead != 1)
    return fieldError(4, "query heads per kv head", fields[3],
                      std::string(opKindName(spec.op)) + " kernels take q1");
  Expected<DType> dtype = parseDtypeField(fields[4]);
  if (!dtype)
    return fieldError(5, "dtype", fields[4], "expected f16 or bf16");
  spec.dtype = *dtype;
  if (Status s = validateArch(fields[5]); !s)
    return fieldError(6, "arch", fields[5], s.error().message);
  spec.arch = std::string(fields[5]);
  return spec;
}

const std::vector<MmaVariant> &mmaVariants() {
  static const std::vector<MmaVariant> variants = {
      {"m16n8k16", 2, 2},
      {"m16n8k16.single", 1, 1},
      {"m16n8k16.single-q", 1, 2},
      {"m16n8k16.single-p", 2, 1},
      {"m16n8k16.centered-q", 1, 2, true},
      {"m16n8k16.centered-q-single-p", 1, 1, true},
      {"none", 0, 0}};
  return variants;
}

const MmaVariant *findMma(std::string_view name) {
  for (const MmaVariant &v : mmaVariants())
    if (v.name == name)
      return &v;
  return nullptr;
}

std::string mmaNames() {
  std::string names;
  for (const MmaVariant &v : mmaVariants())
    names += (names.empty() ? "" : ", ") + std::string(v.name);
  return names;
}

std::string Schedule::str() const {
  return "warps=" + std::to_string(warps) + ",stages=" + std::to_string(stages) +
         ",splits=" + std::to_string(splits) + ",heads_per_cta=" + std::to_string(headsPerCta) +
         ",mma=" + mma + ",rows_per_cta=" + std::to_string(rowsPerCta) +
         ",min_ctas=" + std::to_string(minCtas);
}

Schedule defaultSchedule(OpKind op) {
  Schedule schedule;
  switch (op) {
  case OpKind::Flush: // one CTA per tile; its sweeps split every row or column over 512 threads
    schedule.warps = 16;
    break;
  case OpKind::Append:
    schedule.warps = 4;
    schedule.rowsPerCta = 4;
    break;
  case OpKind::Dequantize:
    schedule.warps = 8;
    break;
  case OpKind::Decode:
  case OpKind::Extend:
    break;
  }
  return schedule;
}

std::vector<Schedule> scheduleSearchSpace(OpKind op) {
  // Tuned values per knob and op; the knobs not listed keep their default.
  std::vector<int> warps = {1, 2, 4, 8}, stages = {1}, rows = {defaultSchedule(op).rowsPerCta};
  std::vector<std::string> mma = {defaultSchedule(op).mma};
  std::vector<int> minCtas = {0};
  switch (op) {
  case OpKind::Decode:
  case OpKind::Extend:
    stages = {1, 2}; // 3 stages measured 1.7-2.7x slower than 1 on the H200 (docs/benchmarks.md)
    // single, single-q and the centered variants round q' once: 0.92-1.36e-3 relative error at
    // 128K tokens on the H200 (centered 3.9e-4 to 1.29e-3; four run seeds), growing with the
    // scores' scale (centered 2.6e-3 at 8x), so they are explicit-only (docs/benchmarks.md).
    mma = {"m16n8k16", "m16n8k16.single-p"};
    // 6 warps x 2 CTAs or 12 x 1: 12 warps per SM at 168 registers (faster once the grid fills
    // the GPU, slower at small batches: the configs keep them as variants, docs/benchmarks.md).
    warps = {1, 2, 4, 6, 8, 12};
    // The tuner prunes the bounds that starve registers and those above 1 that do not bind
    // (1 stays: an explicit bound lets ptxas use its whole cap).
    minCtas = {0, 1, 2, 3, 4, 6};
    break;
  case OpKind::Flush:
    warps = {4, 8, 16};
    // Tiles a warp's sweeps take at once: on the H200, 2 makes the head_dim 64 and g64 flushes up
    // to 12% faster and the D = 128 k4v2 one 0.7% slower (docs/benchmarks.md); 4 was no faster
    // than 2 at D = 128.
    stages = {1, 2};
    // An explicit bound (1: the 255-register cap; 4 warps x 4, 8 x 2, 16 x 1: 128 registers)
    // makes ptxas allocate otherwise than the 96-100 registers it picks unbound, with shared
    // memory still setting the CTAs per SM: up to 10% faster on the H200 (head_dim 64,
    // docs/benchmarks.md). The tuner prunes the bounds that do not bind or starve registers.
    minCtas = {0, 1, 2, 4};
    break;
  case OpKind::Append:
    // A warp per token and rows_per_cta a multiple of warps (none idles); the schedules are up
    // to 3.9x apart (D = 64 on the H200, docs/tune-h200-append.log).
    warps = {2, 4, 8, 16};
    rows = {2, 4, 8, 16, 32};
    break;
  case OpKind::Dequantize:
    warps = {4, 8};
    break;
  }
  std::vector<Schedule> space;
  for (const std::string &m : mma)
    for (int w : warps)
      for (int s : stages)
        for (int r : rows)
          for (int c : minCtas) {
            if (op == OpKind::Append && r % w != 0)
              continue;
            Schedule schedule = defaultSchedule(op);
            schedule.warps = w;
            schedule.stages = s;
            schedule.rowsPerCta = r;
            schedule.mma = m;
            schedule.minCtas = c;
            space.push_back(schedule);
          }
  return space;
}

Expected<Schedule> parseSchedule(std::string_view text, OpKind op) {
  Schedule schedule = defaultSchedule(op);
  if (text.empty())
    return schedule;
  for (std::string_view item : split(text, ',')) {
    size_t eq = item.find('=');
    std::string_view key = item.substr(0, eq);
    std::string_view value = eq == std::string_view::npos ? std::string_view() : item.substr(eq + 1);
    auto bad = [&](const std::string &allowed) {
      return makeError(ErrorCode::InvalidArgument, "schedule '" + std::string(text) + "': " +
                                                       std::string(key) + " is '" +
                                                       std::string(value) + "'; " + allowed);
    };
    if (eq == std::string_view::npos)
      return makeError(ErrorCode::InvalidArgument,
                       "schedule '" + std::string(text) + "': item '" + std::string(item) +
                           "' is not key=value (keys: warps, stages, splits, heads_per_cta, mma, "
                           "rows_per_cta, min_ctas)");
    int *target = key == "warps"          ? &schedule.warps
                  : key == "stages"       ? &schedule.stages
                  : key == "splits"       ? &schedule.splits
                  : key == "heads_per_cta" ? &schedule.headsPerCta
                  : key == "rows_per_cta" ? &schedule.rowsPerCta
                  : key == "min_ctas"     ? &schedule.minCtas
                                          : nullptr;
    if (key == "mma") {
      if (!findMma(value))
        return bad("expected one of " + mmaNames());
      schedule.mma = std::string(value);
    } else if (!target) {
      return makeError(ErrorCode::InvalidArgument,
                       "schedule '" + std::string(text) + "': unknown key '" + std::string(key) +
                           "' (keys: warps, stages, splits, heads_per_cta, mma, rows_per_cta, "
                           "min_ctas)");
    } else if (!parseInt(value, *target)) {
      return bad("expected an integer");
    }
  }
  return schedule;
}

namespace {

/// Shared memory per CTA (the opt-in maximum) and per SM of an architecture, in KB.
struct SharedMemoryLimits {
  size_t perBlockKb, perSmKb;
};

SharedMemoryLimits sharedMemoryLimits(std::string_view arch) {
  if (arch == "sm_80" || arch == "sm_87")
    return {163, 164};
  if (arch == "sm_90" || arch == "sm_90a" || arch == "sm_100" || arch == "sm_100a")
    return {227, 228};
  return {99, 100}; // sm_86, sm_89, sm_120, sm_121
}

} // namespace

int registerBudget(int warpsPerSm, int registersPerSm) {
  const int warpsPerPartition =
      (std::max(warpsPerSm, 1) + kRegisterPartitions - 1) / kRegisterPartitions;
  const int perWarp = (registersPerSm / kRegisterPartitions) / warpsPerPartition;
  return std::min(255, perWarp / kWarpRegisterUnit * kWarpRegisterUnit / 32);
}

int scheduleRegisterBudget(const Schedule &schedule) {
  return registerBudget(std::max(schedule.minCtas, 1) * std::max(schedule.warps, 1));
}

bool earlyLookupWindow(const Schedule &schedule) { return scheduleRegisterBudget(schedule) >= 255; }

size_t maxSharedMemoryPerBlock(std::string_view arch) {
  return sharedMemoryLimits(arch).perBlockKb * 1024;
}

size_t sharedMemoryPerSm(std::string_view arch) { return sharedMemoryLimits(arch).perSmKb * 1024; }

size_t sharedMemoryBytes(const KernelSpec &spec, const Schedule &schedule) {
  switch (spec.op) {
  case OpKind::Decode:
  case OpKind::Extend: {
    // The layout DecodeContext uses (params.h); queries padded to 8 or 16 rows.
    const dev::DecodeSharedLayout layout{spec.format.keyBits, spec.format.valueBits,
                                         spec.format.tileTokens, spec.format.headDim,
                                         spec.queryHeadsPerKvHead <= 8 ? 8 : 16, schedule.warps,
                                         schedule.stages};
    return static_cast<size_t>(layout.bytes());
  }
  case OpKind::Flush: {
    // The layout FlushContext uses (params.h).
    const dev::FlushSharedLayout layout{spec.format.tileTokens, spec.format.headDim,
                                        schedule.warps, schedule.stages};
    return static_cast<size_t>(layout.bytes());
  }
  case OpKind::Append:
    return 0;
  case OpKind::Dequantize:
    return 0;
  }
  return 0;
}

Status validateSchedule(const KernelSpec &spec, const Schedule &schedule) {
  auto bad = [](const std::string &message) {
    return makeError(ErrorCode::InvalidArgument, "schedule: " + message);
  };
  if (schedule.warps < 1 || schedule.warps > 32)
    return bad("warps = " + std::to_string(schedule.warps) + " (supported: 1 to 32)");
  if (schedule.stages < 1 || schedule.stages > 4)
    return bad("stages = " + std::to_string(schedule.stages) + " (supported: 1 to 4)");
  if (schedule.splits < 0 || schedule.splits > 256)
    return bad("splits = " + std::to_string(schedule.splits) + " (supported: 0 = planned, 1 to 256)");
  if (schedule.headsPerCta != 0 && schedule.headsPerCta != spec.queryHeadsPerKvHead)
    return bad("heads_per_cta = " + std::to_string(schedule.headsPerCta) +
               " (supported: 0 or the whole GQA group, " +
               std::to_string(spec.queryHeadsPerKvHead) + ")");
  if (!findMma(schedule.mma))
    return bad("mma = " + schedule.mma + " (supported: " + mmaNames() + ")");
  if ((spec.op == OpKind::Decode || spec.op == OpKind::Extend) && schedule.mma == "none")
    return bad("mma = none is not implemented for decode (it needs tensor cores)");
  if (schedule.rowsPerCta < 1 || schedule.rowsPerCta > 64)
    return bad("rows_per_cta = " + std::to_string(schedule.rowsPerCta) + " (supported: 1 to 64)");
  if (schedule.minCtas < 0 || schedule.minCtas > 32)
    return bad("min_ctas = " + std::to_string(schedule.minCtas) +
               " (supported: 0 = no bound, 1 to 32)");
  const size_t smem = sharedMemoryBytes(spec, schedule);
  const size_t limit = maxSharedMemoryPerBlock(spec.arch);
  if (smem > limit)
    return bad("needs " + std::to_string(smem) + " bytes of shared memory per CTA; " + spec.arch +
               " allows " + std::to_string(limit));
  return Status::success();
}

} // namespace kvarn
