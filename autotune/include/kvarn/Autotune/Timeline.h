// The timeline of an instrumented decode launch (kernels built with KVARN_TIMELINE, see
// dev::DecodeTimeline): where the launch's time goes on the GPU, phase by phase.
#pragma once

#include "kvarn/launch.h"
#include "kvarn/status.h"

#include <cstdint>
#include <string>
#include <vector>

namespace kvarn::autotune {

/// Phases of one instrumented decode launch, in microseconds from the first CTA's start
/// (DecodeTimeline::Start). Percentiles are over the stamped CTAs, or over their warps for
/// `pages*`.
struct DecodeTimelineSummary {
  int ctas = 0;      ///< decode CTAs that stamped their start
  int mergeCtas = 0; ///< merge CTAs that waited for the partials (0: one split, no merge)
  double startMax = 0;
  double rotatedMedian = 0, rotatedMax = 0;           ///< rotated queries ready
  double pagesP10 = 0, pagesMedian = 0, pagesMax = 0; ///< warps leaving the page loop
  /// Medians over CTAs of their last warp's page-loop end: the CTAs of linear index below
  /// `firstWave` (summarizeDecodeTimeline) and the others (0 when there are none).
  double pagesFirstWave = 0, pagesLater = 0;
  double epilogueMedian = 0; ///< a CTA's end minus its last warp's page-loop end (warp merge, stores)
  double endMax = 0;         ///< the last decode CTA's last store
  double mergeWaited = 0, mergeEnd = 0; ///< the last merge CTA's partials visible, done
};

/// Summarizes the rows read back from `kvarn_timeline` (DecodeTimeline::Fields per CTA) and
/// `kvarn_timeline_merge` (DecodeTimeline::MergeFields per CTA); unstamped fields are 0.
/// `firstWave`: CTAs dispatched first (the GPU's SM count: the first CTA on every SM). An
/// InvalidData error when no CTA stamped its start or a row's stamps are out of order.
Expected<DecodeTimelineSummary> summarizeDecodeTimeline(const std::vector<uint64_t> &decode,
                                                        const std::vector<uint64_t> &merge,
                                                        int firstWave);

/// Zeroes both timelines of `module` (a decode kernel built with KVARN_TIMELINE) before the
/// launch to be stamped; an error when the module has none.
Status clearDecodeTimeline(const KernelModule &module);

/// Reads both timelines of `module` back after its launch (synchronous copies, so after the
/// launch finished) and summarizes them (summarizeDecodeTimeline).
Expected<DecodeTimelineSummary> readDecodeTimeline(const KernelModule &module, int firstWave);

/// The summary as one line of text.
std::string describeDecodeTimeline(const DecodeTimelineSummary &summary);

} // namespace kvarn::autotune
