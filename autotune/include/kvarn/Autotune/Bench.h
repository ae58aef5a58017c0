// Benchmarks on the GPU: measured read bandwidth, decode (KVarN vs fp16 paged attention in the
// same run), flush and append. Medians of event-timed launches with a cold L2.
#pragma once

#include "kvarn/Autotune/PoolPages.h"
#include "kvarn/spec.h"
#include "kvarn/status.h"

#include <string>
#include <vector>

namespace kvarn::autotune {

struct BenchOptions {
  int device = 0;
  std::string preset = "kvarn_k4v2_g128";
  int headDim = 128;
  int numQueryHeads = 64;
  int numKvHeads = 8;
  /// Queries and outputs of the decode table (both kernels) and the append's incoming rows; the
  /// pools are fp16 either way.
  DType dtype = DType::F16;
  std::vector<int> batches = {1, 4, 16, 32, 64};
  std::vector<int> contexts = {4096, 16384, 32768, 131072};
  int iterations = 20;
  /// Schedule knobs of the op scheduleOp() names ("": the tuned configs' choice).
  std::string schedule;
  /// Schedule knobs of the fp16 baseline (the decode kernel on fp16 pool pages only). Fixed,
  /// not the KVarN schedule, so that changing the KVarN schedule does not move the baseline
  /// ("": the decode op's default schedule).
  std::string baselineSchedule;
  std::string configsDirectory = "configs"; ///< tuned configs for the schedule choice
  std::string reportPrefix;    ///< write <prefix>.json and <prefix>.html ("" = none)
  bool decode = true, flush = true, append = true, lookup = true;
  /// Queue each timed launch behind a 20 us spin kernel (LaunchGate) so the times exclude the
  /// host's launch latency; false times from an idle GPU (the host latency included).
  bool hideLaunchLatency = true;
  /// Pool pages of the KVarN cache, as in an engine (none: every block is a record). The fp16
  /// baseline reads fp16 pages either way.
  PoolPages poolPages;
  /// Decode: after each shape's timing, one more launch of each kernel built with the
  /// KVARN_TIMELINE stamps, and its phases (Timeline.h); the timed kernels are the plain ones.
  bool timeline = false;
  /// The op `schedule` applies to: the decode table when it runs, else append when it runs,
  /// else flush.
  OpKind scheduleOp() const {
    return decode ? OpKind::Decode : (append || !flush ? OpKind::Append : OpKind::Flush);
  }
};

/// One decode measurement: KVarN and fp16 paged decode over the same block table.
struct BenchRow {
  int batch = 0, context = 0, splits = 0;
  double kvarnMs = 0, kvarnGBs = 0, fp16Ms = 0, fp16GBs = 0;
  std::string schedule; ///< the KVarN schedule of this shape when a config variant ran ("" = report's)
};

struct BenchReport {
  std::string gpu, spec, schedule, baselineSchedule;
  double bandwidthGBs = 0; ///< measured read bandwidth (the roofline)
  PoolPages poolPages; ///< the pool pages of the KVarN cache (BenchOptions)
  std::vector<BenchRow> rows;
};

/// The report as JSON, and as a self-contained HTML page with an SVG chart of the achieved
/// bandwidth (fraction of the measured roofline) by context length, one line per batch, KVarN
/// solid and fp16 dashed.
std::string benchReportJson(const BenchReport &report);
std::string benchReportHtml(const BenchReport &report);

/// Runs the benchmarks and prints their tables; an error when no GPU is present.
Status runBench(const BenchOptions &options);

} // namespace kvarn::autotune
