// KernelSpec and Schedule: what a kernel is (op, format, shape, dtype, arch) and how it is built.
// Both have a stable text form used on the command line and in cache and tuning keys.
#pragma once

#include "kvarn/format.h"
#include "kvarn/half.h"
#include "kvarn/status.h"

#include <string>
#include <string_view>
#include <vector>

namespace kvarn {

/// The operations kvarn generates kernels for.
enum class OpKind { Decode, Flush, Append, Dequantize, Extend };

const char *opKindName(OpKind kind);
Expected<OpKind> parseOpKind(std::string_view text);

/// One kernel to build: op × format × GQA ratio × dtype × target arch.
/// Text form: `decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a[:it16][:compact]`.
struct KernelSpec {
  OpKind op = OpKind::Decode;
  Format format;
  int queryHeadsPerKvHead = 1; ///< Q = Hq / Hk (decode/extend; 1 for the others)
  DType dtype = DType::F16;
  std::string arch = "sm_90a";

  /// Canonical text form; parseKernelSpec(str()) round-trips.
  std::string str() const;
  bool operator==(const KernelSpec &other) const = default;
};

/// Parses the text form; errors name the field, the value and what is allowed.
Expected<KernelSpec> parseKernelSpec(std::string_view text);

/// A dtype as a spec key names it: "f16" or "bf16".
const char *dtypeField(DType dtype);
/// The dtype a spec key's field names ("f16" or "bf16"); an error for anything else.
Expected<DType> parseDtypeField(std::string_view field);

/// Architectures NVRTC is asked to build for.
Status validateArch(std::string_view arch);

/// Tunable knobs of one kernel (mirrors #kvarn.schedule; see the dialect for their meaning).
/// Text form: `warps=4,stages=2,splits=0,heads_per_cta=0,mma=m16n8k16,rows_per_cta=4`; any
/// subset, the rest default.
struct Schedule {
  int warps = 4;
  int stages = 1;
  int splits = 0; ///< 0 = planned on the host
  int headsPerCta = 0;
  std::string mma = "m16n8k16";
  int rowsPerCta = 4;
  int minCtas = 0; ///< CTAs per SM the register allocation must allow (0 = no bound)

  std::string str() const;
  bool operator==(const Schedule &other) const = default;
};

/// The register file's scheduler partitions (sm_80 and later) and the allocation unit of one
/// warp, in registers.
inline constexpr int kRegisterPartitions = 4, kWarpRegisterUnit = 256;

/// Registers per thread that `warpsPerSm` resident warps leave on an SM of sm_80 or later with
/// `registersPerSm` registers: the file is split into four scheduler partitions that hold their
/// own warps (assigned in turn), so the most loaded partition decides; allocations are 256
/// registers per warp (8 per thread), and a thread addresses at most 255. 8 warps leave 255,
/// 10 or 12 leave 168, 16 leave 128. The same model sizes KernelModule's resident CTAs
/// and the tuner's static pruning.
int registerBudget(int warpsPerSm, int registersPerSm = 65536);

/// Registers per thread the schedule's launch bounds leave a decode or extend kernel: those of
/// min_ctas CTAs per SM (one CTA without a bound). ptxas caps the kernel's allocation there.
int scheduleRegisterBudget(const Schedule &schedule);

/// Whether a decode kernel of this schedule loads its first lookup window's block ids before
/// the query rotation (the device library's EARLY_WINDOW): where the schedule leaves 255
/// registers per thread. At 168 registers holding them cost the page loop more than the overlap
/// saved (docs/benchmarks.md), so those kernels open the window at their first page copy. The
/// device library ties its other latency-for-registers trades to the same flag (the query rows
/// loaded in `begin`, one lookup per page, the split's partial stored from the warps' rows, the
/// splits' pages interleaved, the sink split of one-request launches: decodeSinkSplit).
bool earlyLookupWindow(const Schedule &schedule);

/// A value of the schedule's `mma` knob: the tensor-core instruction and how many fp16 terms
/// carry each fp32 MMA operand (2: high + low, about 22 bits; 1: rounded once) for the query
/// side (q' of the scores) and the weight side (P' of the output update); 0 = no tensor cores.
/// `centeredQuery` (with one q' term): the low terms q' - fp16(q') are summed over the
/// channels, times the codes' middle value (2^bits - 1) / 2, into each query's bias (one MMA
/// per k-chunk instead of one per code tile), so a score errs by sum_d low_d (code_d - middle)
/// instead of sum_d low_d code_d.
struct MmaVariant {
  std::string_view name;
  int queryTerms;
  int weightTerms;
  bool centeredQuery = false;
};

/// Every supported `mma` value, the default first.
const std::vector<MmaVariant> &mmaVariants();

/// The variant called `name`, or nullptr.
const MmaVariant *findMma(std::string_view name);

/// "m16n8k16, m16n8k16.single, ...": the supported values, for messages.
std::string mmaNames();

/// The default schedule of an op (the starting point of tuning and of parseSchedule).
Schedule defaultSchedule(OpKind op);

/// Parses knobs over the op's default schedule.
Expected<Schedule> parseSchedule(std::string_view text, OpKind op = OpKind::Decode);

/// The tuner's candidate schedules of an op: the cross product of each knob's tuned values over
/// the op's default schedule (validateSchedule then prunes what a spec and target cannot run).
std::vector<Schedule> scheduleSearchSpace(OpKind op);

/// Shared memory a kernel of this spec and schedule uses (bytes); the device library's layout.
size_t sharedMemoryBytes(const KernelSpec &spec, const Schedule &schedule);

/// Largest dynamic shared memory one CTA may use on an architecture (bytes).
size_t maxSharedMemoryPerBlock(std::string_view arch);

/// Shared memory of one SM on an architecture (bytes), the bound on co-resident CTAs.
size_t sharedMemoryPerSm(std::string_view arch);

/// Checks a schedule against the spec and the target's limits.
Status validateSchedule(const KernelSpec &spec, const Schedule &schedule);

} // namespace kvarn
