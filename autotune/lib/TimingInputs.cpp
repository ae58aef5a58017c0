// The decode timing inputs shared by the benchmark and the tuner.
#include "kvarn/Autotune/TimingInputs.h"

#include "kvarn/reference.h"

#include <algorithm>
#include <random>
#include <span>

namespace kvarn::autotune {

Expected<std::vector<uint8_t>> decodeTimingRecords(const Format &format, int count) {
  const RecordLayout layout = recordLayout(format);
  const int g = format.tileTokens, d = format.headDim;
  std::vector<uint8_t> records(size_t(count) * layout.tileBytesAligned);
  std::mt19937_64 rng(1);
  std::normal_distribution<float> normal;
  std::vector<uint16_t> rows(size_t(g) * d);
  for (int k = 0; k < count; ++k) {
    for (uint16_t &x : rows)
      x = floatToHalf(normal(rng));
    if (Status s = reference::writeRecord(
            format, rows, rows, size_t(d),
            std::span(records).subspan(size_t(k) * layout.tileBytesAligned, layout.tileBytesAligned));
        !s)
      return s.error();
  }
  return records;
}

std::vector<uint16_t> decodeTimingQueries(size_t count, DType dtype) {
  return std::vector<uint16_t>(count, floatToDType(0.5f, dtype));
}

int coldCopies(size_t bytes, size_t l2Bytes) {
  return int(std::min<size_t>(16, 2 * l2Bytes / std::max<size_t>(bytes, 1) + 1));
}

} // namespace kvarn::autotune
