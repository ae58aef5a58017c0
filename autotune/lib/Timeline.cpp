#include "kvarn/Autotune/Timeline.h"

#include "kvarn/params.h"

#include <algorithm>
#include <cstdio>

namespace kvarn::autotune {

namespace {

/// Nearest-rank quantile of `values` (sorted here), 0 for none.
double quantile(std::vector<double> values, double q) {
  if (values.empty())
    return 0.0;
  std::sort(values.begin(), values.end());
  return values[size_t(q * double(values.size() - 1) + 0.5)];
}

} // namespace

Expected<DecodeTimelineSummary> summarizeDecodeTimeline(const std::vector<uint64_t> &decode,
                                                        const std::vector<uint64_t> &merge,
                                                        int firstWave) {
  using T = dev::DecodeTimeline;
  const size_t rows = decode.size() / T::Fields, mergeRows = merge.size() / T::MergeFields;
  uint64_t origin = UINT64_MAX;
  for (size_t r = 0; r < rows; ++r)
    if (const uint64_t start = decode[r * T::Fields + T::Start])
      origin = std::min(origin, start);
  if (origin == UINT64_MAX)
    return makeError(ErrorCode::InvalidData,
                     "decode timeline: no CTA stamped its start (a kernel built without "
                     "KVARN_TIMELINE, or no launch since the timeline was zeroed)");
  auto micros = [&](uint64_t stamp) { return double(int64_t(stamp - origin)) / 1000.0; };
  DecodeTimelineSummary s;
  std::vector<double> starts, rotated, pages, first, later, epilogues, ends;
  for (size_t r = 0; r < rows; ++r) {
    const uint64_t *row = decode.data() + r * T::Fields;
    if (!row[T::Start])
      continue;
    ++s.ctas;
    uint64_t lastWarp = 0;
    for (int w = 0; w < T::WARP_STAMPS; ++w)
      if (const uint64_t stamp = row[T::WarpEnds + w]) {
        pages.push_back(micros(stamp));
        lastWarp = std::max(lastWarp, stamp);
      }
    const bool ordered = row[T::Rotated] >= row[T::Start] &&
                         (!lastWarp || lastWarp >= row[T::Rotated]) &&
                         (!row[T::End] || row[T::End] >= std::max(lastWarp, row[T::Rotated]));
    if (!row[T::Rotated] || !ordered)
      return makeError(ErrorCode::InvalidData,
                       "decode timeline: CTA " + std::to_string(r) +
                           " has its stamps out of order or its queries never rotated");
    starts.push_back(micros(row[T::Start]));
    rotated.push_back(micros(row[T::Rotated]));
    if (row[T::End])
      ends.push_back(micros(row[T::End]));
    if (lastWarp) {
      (int64_t(r) < firstWave ? first : later).push_back(micros(lastWarp));
      if (row[T::End])
        epilogues.push_back(micros(row[T::End]) - micros(lastWarp));
    }
  }
  s.startMax = quantile(starts, 1.0);
  s.rotatedMedian = quantile(rotated, 0.5);
  s.rotatedMax = quantile(rotated, 1.0);
  s.pagesP10 = quantile(pages, 0.1);
  s.pagesMedian = quantile(pages, 0.5);
  s.pagesMax = quantile(pages, 1.0);
  s.pagesFirstWave = quantile(first, 0.5);
  s.pagesLater = quantile(later, 0.5);
  s.epilogueMedian = quantile(epilogues, 0.5);
  s.endMax = quantile(ends, 1.0);
  std::vector<double> waited, done;
  for (size_t r = 0; r < mergeRows; ++r) {
    const uint64_t *row = merge.data() + r * T::MergeFields;
    if (!row[T::MergeWaited])
      continue; // a merge CTA of a one-split launch, or a warp that left at once
    ++s.mergeCtas;
    waited.push_back(micros(row[T::MergeWaited]));
    if (row[T::MergeEnd])
      done.push_back(micros(row[T::MergeEnd]));
  }
  s.mergeWaited = quantile(waited, 1.0);
  s.mergeEnd = quantile(done, 1.0);
  return s;
}

namespace {

/// The driver and the module's two timeline variables (decode rows, then merge rows).
struct TimelineMemory {
  const Driver *driver = nullptr;
  std::pair<CUdeviceptr, size_t> variables[2];
};

Expected<TimelineMemory> timelineMemory(const KernelModule &module) {
  Expected<const Driver *> driver = Driver::get();
  if (!driver)
    return driver.error();
  TimelineMemory memory;
  memory.driver = *driver;
  const char *names[2] = {"kvarn_timeline", "kvarn_timeline_merge"};
  for (int k = 0; k < 2; ++k) {
    Expected<std::pair<CUdeviceptr, size_t>> variable = module.global(names[k]);
    if (!variable)
      return variable.error();
    memory.variables[k] = *variable;
  }
  return memory;
}

} // namespace

Status clearDecodeTimeline(const KernelModule &module) {
  Expected<TimelineMemory> memory = timelineMemory(module);
  if (!memory)
    return memory.error();
  for (const auto &[pointer, bytes] : memory->variables)
    if (Status s = KVARN_CU(memory->driver->cuMemsetD8(pointer, 0, bytes)); !s)
      return s;
  return Status::success();
}

Expected<DecodeTimelineSummary> readDecodeTimeline(const KernelModule &module, int firstWave) {
  Expected<TimelineMemory> memory = timelineMemory(module);
  if (!memory)
    return memory.error();
  std::vector<uint64_t> rows[2];
  for (int k = 0; k < 2; ++k) {
    const auto &[pointer, bytes] = memory->variables[k];
    rows[k].resize(bytes / sizeof(uint64_t));
    if (Status s = KVARN_CU(memory->driver->cuMemcpyDtoH(rows[k].data(), pointer, bytes)); !s)
      return s.error();
  }
  return summarizeDecodeTimeline(rows[0], rows[1], firstWave);
}

std::string describeDecodeTimeline(const DecodeTimelineSummary &s) {
  char text[512];
  int n = std::snprintf(
      text, sizeof text,
      "%d CTAs, us from the first CTA's start: queries rotated %.2f (last %.2f); warps leave "
      "the pages %.2f / %.2f / %.2f (p10 / median / last; CTAs dispatched first %.2f, later "
      "%.2f, medians); CTA epilogue %.2f (median); last store %.2f",
      s.ctas, s.rotatedMedian, s.rotatedMax, s.pagesP10, s.pagesMedian, s.pagesMax,
      s.pagesFirstWave, s.pagesLater, s.epilogueMedian, s.endMax);
  if (s.mergeCtas > 0 && n > 0 && size_t(n) < sizeof text)
    std::snprintf(text + n, sizeof text - size_t(n),
                  "; merge (%d CTAs): partials visible %.2f, done %.2f", s.mergeCtas,
                  s.mergeWaited, s.mergeEnd);
  return text;
}

} // namespace kvarn::autotune
