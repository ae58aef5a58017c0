// The autotuner: candidates from the schedule search space, static pruning, parallel compiles, a
// correctness check against the CPU reference before any timing, interleaved event timing with
// spread (and optional CUDA-graph replay), early stop against the roofline, a time budget,
// resumable runs, crash recovery, tuned configs and reports.
#pragma once

#include "kvarn/Autotune/PoolPages.h"
#include "kvarn/Autotune/Timing.h"
#include "kvarn/Compiler/Pipeline.h"
#include "kvarn/cache.h"
#include "kvarn/configs.h"
#include "kvarn/launch.h"
#include "kvarn/spec.h"
#include "kvarn/status.h"

#include <functional>
#include <sys/types.h>
#include <string>
#include <utility>
#include <vector>

namespace kvarn::autotune {

/// Compiles (through the artifact cache) and loads a kernel for this process's GPU.
Expected<KernelModule> compileAndLoad(const KernelSpec &spec, const Schedule &schedule,
                                      ArtifactCache &cache,
                                      const compiler::Instrumentation &instrumentation = {});

/// The check every decode candidate passes before the tuner times it: the loaded kernel against
/// the float64 reference on a short mixed batch, a 128K-token request and that request with
/// scores eight times larger, each within 1e-3 (reference::decodeOutputError). An InvalidData
/// error names the case and the error.
Status checkDecodeKernel(const KernelSpec &spec, const KernelModule &module,
                         const DeviceInfo &info);

/// One schedule tried for a spec; `rejected` says why it was not measured or not eligible
/// (pruned, failed to compile, wrong results, crashed, early stop, budget).
struct Candidate {
  Schedule schedule;
  std::string rejected;
  Timing timing;
  double ms = 0; ///< timing.medianMs when measured
};

struct TuneResult {
  KernelSpec spec;
  bool found = false;
  Schedule best;
  double bestMs = 0;
  double rooflineMs = 0; ///< bytes / measured bandwidth (0 when unknown)
  /// Decode: the pool pages of the timing cache (PoolPages::key(); "": every page a record).
  std::string poolPages;
  std::string stopped;   ///< why measuring stopped before the end of the space ("" if it did not)
  /// The choice early stop made (or, with `exhaustive`, would have made): for regret.
  bool earlyFound = false;
  Schedule earlyBest;
  double earlyMs = 0;
  std::vector<Candidate> candidates;
  /// Decode over several buckets (decodeSchedulesByWork): the configs' schedule for the smallest
  /// launches when it is not `best`, and the schedules for larger launches.
  bool hasConfigBase = false;
  Schedule configBase;
  double configBaseMs = 0; ///< its geometric mean over all buckets
  std::vector<ScheduleVariant> variants;
};

/// What the configs record for a decode spec tuned over several buckets.
struct DecodeSchedules {
  Schedule base;      ///< launches below the first variant's threshold
  double baseMs = 0;  ///< base's geometric mean over all buckets
  std::vector<ScheduleVariant> variants;
};

/// Decode schedules by launch size from the candidates' per-bucket medians (Timing::bucketMs).
/// `bucketWork` is each bucket's (request, kv head) pairs, batch * kv heads; `bucketContext` its
/// context in tokens (empty: one context everywhere). Levels are visited by ascending work, then
/// context, starting from `best` (the geometric-mean winner over all buckets): (w, 0) groups
/// the buckets of work w at its shortest context; each longer context c among w's buckets adds
/// a level (w, c) over those of at least c tokens. A choice holds between the contexts it was
/// measured at, so tune at the contexts an engine serves. The first level's fastest candidate (geometric mean over its
/// group) becomes the base. At each further level the schedule the runtime would run there with
/// the choices so far is replaced by the level's fastest candidate if that is at least `minGain`
/// faster (at a size's first level only among candidates no slower than the running schedules
/// over all of the size's buckets, since its choice runs at the longer contexts until one of
/// their levels overrides it): a variant from w pairs upwards, and from c tokens for a level
/// keyed by context (`minContext`). A variant records the waves of one-split CTAs it needs where
/// it was chosen (`maxWaves`); where, at a size's first level, the runtime steps back from a
/// variant for its waves and its schedule is the fastest anyway, its `maxWaves` grows to that
/// level's instead of a new variant (a level keyed by context gets a variant of its own: more
/// waves would run it at the size's shorter contexts too). Candidates
/// without a median at every bucket are not considered; with fewer than two buckets the base is
/// `best` and there are no variants. With `slots` (resident CTAs of a schedule on the whole GPU)
/// the choice follows the runtime's variantForLaunch: the schedule to beat at a level is the one
/// the runtime would run at each of its buckets, and a candidate the runtime would step back
/// from there is not eligible.
DecodeSchedules decodeSchedulesByWork(
    const TuneResult &result, const std::vector<int64_t> &bucketWork, double minGain = 0.02,
    const std::function<int64_t(const Schedule &)> &slots = nullptr,
    const std::vector<int64_t> &bucketContext = {});

/// The static model's resident CTAs per SM of a decode schedule (shared memory, 255 registers
/// per thread unless min_ctas sets a budget, 64 warps), at least 1.
int staticCtasPerSm(const KernelSpec &spec, const Schedule &schedule);

/// Why a candidate is not worth measuring ("" if it is): illegal (validateSchedule), or a
/// `min_ctas` bound that does not bind, leaves fewer than 128 registers, or cannot fit that many
/// CTAs' shared memory on one SM.
std::string staticPruneReason(const KernelSpec &spec, const Schedule &schedule);

/// Regret of the early-stopped choices against exhaustive search: (early - best) / best per
/// result that has both; median and 90th percentile.
struct Regret {
  int samples = 0;
  double median = 0, p90 = 0;
};
Regret regretOf(const std::vector<TuneResult> &results);

/// The static model's relative cost of a candidate (lower is more promising): tensor-core work
/// per page (fp16 terms per operand) over the active warps per SM that shared memory, registers
/// (255 per thread unless min_ctas) and the warp limit allow, capped at 16. Candidates are
/// measured in this order.
double predictedCost(const KernelSpec &spec, const Schedule &schedule);

/// Replays a tuning report (recorded medians) through selectSchedule with `earlyStop`, in this
/// build's measurement order: what early stop would have picked, against the report's best.
Expected<Regret> replayRegret(const std::string &reportJson, double earlyStop,
                              std::vector<std::string> *lines = nullptr);

/// Measures one schedule: an error rejects the candidate with that message.
using Measure = std::function<Expected<double>(const Schedule &)>;
/// Measures a group of schedules together (interleaved): one result per schedule.
using MeasureGroup = std::function<std::vector<Expected<Timing>>(const std::vector<Schedule> &)>;

struct SelectOptions {
  double rooflineMs = 0;  ///< the spec's time at the measured bandwidth (0: no early stop)
  double earlyStop = 0;   ///< stop once roofline / best >= this fraction (0: never)
  bool exhaustive = false;///< measure everything; record what early stop would have picked
  int group = 8;          ///< candidates measured together
  std::function<bool()> outOfBudget;                      ///< checked before each group
  std::function<void(size_t done, size_t total)> progress; ///< after each group
};

/// Prunes with staticPruneReason, measures the rest group by group, picks the fastest median
/// (ties: fewer warps). Pure logic, testable with fake measures.
TuneResult selectSchedule(const KernelSpec &spec, const std::vector<Schedule> &space,
                          const MeasureGroup &measure, const SelectOptions &options);
/// The same with a one-at-a-time measure and no early stop.
TuneResult selectSchedule(const KernelSpec &spec, const std::vector<Schedule> &space,
                          const Measure &measure);



struct TuneOptions {
  int device = 0;
  std::vector<std::string> presets = {"kvarn_k4v2_g128", "kvarn_k4v4_g128"};
  int headDim = 128;
  std::vector<int> queryHeadsPerKvHead = {1, 2, 4, 8};
  /// Queries and outputs of the decode specs and the incoming rows of the append specs. Flush
  /// specs stay f16: the pool it reads is fp16 whatever the model's dtype (append converts bf16
  /// rows).
  DType dtype = DType::F16;
  int numKvHeads = 8;
  int batch = 16; ///< decode bucket the configs are tuned at
  int context = 16384;
  /// More decode buckets (batch, context) to time every candidate at: a candidate's score is
  /// then the geometric mean of its medians over all buckets (the roofline likewise), so no
  /// single shape decides. Empty: the one bucket above.
  std::vector<std::pair<int, int>> alsoBuckets;
  int iterations = 10;
  /// Decode timing caches with each request's first and/or last block as fp16 pool pages, as an
  /// engine holds them (none: every block a record). The correctness checks always have both.
  PoolPages poolPages;
  std::string configsDirectory = "configs";
  double budgetSeconds = 0; ///< 0: no budget
  double earlyStop = 0.9;   ///< fraction of the roofline; 0: off
  bool exhaustive = false;  ///< measure everything, report the regret of early stop
  bool graphTiming = false; ///< also time CUDA-graph replay of the selected schedules
  /// Queue each timed launch behind a spin kernel (LaunchGate), as the bench does, so the times
  /// exclude the host's launch latency; false: time each launch from an idle GPU.
  bool gate = true;
  /// After each timed launch the GPU idles for this many times the launch's duration. Candidates
  /// timed back to back otherwise hold the GPU at its power cap: on the H200, a decode grid run
  /// without rests drew up to 684 W, ran the SMs down to 1470 MHz under the software power cap, and
  /// timed its largest buckets 8-25% slower than the bench, whose fp16 baseline launches keep the
  /// GPU below the cap, and in another order (docs/benchmarks.md). 0: back to back.
  double restRatio = 1.0;
  bool resume = false;      ///< reuse the specs already in the report file
  std::string reportPath;   ///< JSON report; "" = <configs>/<gpu key>.tune.json
  int compileThreads = 0;   ///< 0: the machine's hardware threads
  bool flush = true;        ///< tune flush too
  bool decode = true;       ///< tune decode (per GQA ratio) too
  bool append = true;       ///< tune append too (rows of `dtype`)
  /// Test hook: the decode candidate with this schedule text gets an invalid cache pointer in its
  /// check (an illegal address that breaks the context), to exercise crash isolation.
  std::string injectCrash;
  /// Worker side of isolation: candidates that crashed earlier are read from here and skipped,
  /// a new crash is written here before the worker exits ("" = not a worker).
  std::string crashLog;
};

/// The argument errors of a tuning run (iterations, budget, early stop, buckets), before any
/// GPU work.
Status validateTuneOptions(const TuneOptions &options);

/// Decode buckets written `<batch>x<context>` ("32x32768"), or with comma lists on either
/// side: every batch at every context, batch-major ("1,4x4096,131072": 1x4096, 1x131072,
/// 4x4096, 4x131072); a clear error otherwise.
Expected<std::vector<std::pair<int, int>>> parseBuckets(const std::string &text);

/// The decode buckets a run times at: (batch, context) first, then alsoBuckets, each once.
std::vector<std::pair<int, int>> decodeBuckets(const TuneOptions &options);

/// Sets each decode result's configs base and variants (decodeSchedulesByWork over the run's
/// buckets, decodeBuckets(o), with the static model's occupancy on `smCount` SMs; 0: none) and
/// reports them through `log` (may be empty). Used by a tuning run and by the merge of a
/// multi-GPU run, whose configs then carry the same variants.
void addDecodeVariants(std::vector<TuneResult> &results, const TuneOptions &o, int smCount,
                       const std::function<void(const std::string &)> &log = nullptr);

/// One candidate's timings at several buckets as one: the geometric mean of the medians, of the
/// p10s and p90s, and of the graph times when every bucket has one; the samples add up.
Timing combineBucketTimings(const std::vector<Timing> &perBucket);

/// Starts `args[0]` with `args` (the environment inherited, plus this process's pid for
/// followParent) and returns its pid. Call it from the thread that waits for the process.
Expected<pid_t> spawnProcess(std::vector<std::string> args);

/// In a process started by spawnProcess: ends this process (SIGKILL) when the process that
/// started it ends, so a tuning worker does not keep the GPU or rewrite the configs after its
/// parent was killed; exits at once if that parent has already ended. Does nothing elsewhere.
void followParent();

/// Tunes decode, flush and append of the presets on a GPU and writes `<configs>/<gpu key>.json` and
/// the JSON report (both updated after every spec, the configs first, so an interrupted run keeps
/// what it finished and can be resumed). A candidate that
/// breaks the GPU context ends the process (sticky errors cannot be recovered in-process): as a
/// worker (options.crashLog set) after recording it, otherwise with the reason.
Status runTune(const TuneOptions &options);

/// Crash isolation: runs the tuning in a worker process (`executable tune --worker ...`); when a
/// candidate breaks the worker's GPU context the worker records it and exits, and this
/// supervisor restarts it with --resume, skipping that candidate. No GPU work happens here.
Status runTuneIsolated(const TuneOptions &options, const std::string &executable);

/// The tuning-key environment of a GPU ("sm90-132sm-60mb-l2-3201mhz"), for config file names.
std::string environmentKey(int computeMajor, int computeMinor, int smCount, int l2Bytes,
                           int memoryClockKhz);

/// The `entries` array of a configs file for the results that found a schedule (JSON text).
std::string configEntriesJson(const std::vector<TuneResult> &results);

/// The `entries` of a configs file after a run: `existingFile` (the file's text before the run;
/// empty when there was none) keeps the entries of the specs the run did not tune (a run with
/// --no-decode, --no-flush or another head size leaves the other entries alone), each spec of
/// `runEntries` (JSON text, configEntriesJson) replaces its earlier entry. An existing file
/// that is not a configs file is an error, so a run never overwrites what it cannot read.
Expected<std::string> mergeConfigEntries(const std::string &existingFile, const std::string &path,
                                         const std::string &runEntries);

/// Writes a configs file (`configs`: JSON object text whose `entries` are this run's) to `path`
/// atomically, with the entries it already had for specs the run did not tune
/// (mergeConfigEntries) and its other members that `configs` does not set (the decode buckets,
/// after a run without decode specs); an existing file it cannot read is left alone and reported.
Status writeConfigs(const std::string &path, const std::string &configs);

/// The specs of `plan` that `done` does not cover yet (what a resumed run still tunes).
std::vector<KernelSpec> specsToTune(const std::vector<KernelSpec> &plan,
                                    const std::vector<TuneResult> &done);

/// JSON of results (the report and resume format) and back.
std::string resultsToJson(const std::vector<TuneResult> &results, const std::string &environment);
Expected<std::vector<TuneResult>> resultsFromJson(const std::string &json);

/// Whether the results of a report (--resume) were timed on the cache layout this run times:
/// a decode result timed with other pool pages is an error that says which.
Status resumableWith(const std::vector<TuneResult> &results, const TuneOptions &options);

} // namespace kvarn::autotune
