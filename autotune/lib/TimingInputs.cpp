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

Expected<AppendTimingInputs> AppendTimingInputs::create(int headDim, DType dtype, size_t l2Bytes) {
  AppendTimingInputs inputs;
  inputs.headDim_ = headDim;
  inputs.copies_ = coldCopies(inputs.rowBytes(), l2Bytes);
  const size_t tensorBytes = inputs.rowBytes() / 2; // K (or V) of one launch
  std::vector<int64_t> slots(kTokens);
  for (int t = 0; t < kTokens; ++t)
    slots[t] = t;
  Expected<DeviceBuffer> rows = DeviceBuffer::allocate(inputs.rowBytes() * inputs.copies_),
                         mapping = DeviceBuffer::copyOf(slots),
                         poolKey = DeviceBuffer::allocate(tensorBytes),
                         poolValue = DeviceBuffer::allocate(tensorBytes);
  for (Expected<DeviceBuffer> *b : {&rows, &mapping, &poolKey, &poolValue})
    if (!*b)
      return b->error();
  const uint16_t one = floatToDType(1.0f, dtype);
  if (Status s = rows->fillWithPattern({uint8_t(one & 0xff), uint8_t(one >> 8)}); !s)
    return s.error();
  inputs.rows_ = std::move(*rows);
  inputs.mapping_ = std::move(*mapping);
  inputs.poolKey_ = std::move(*poolKey);
  inputs.poolValue_ = std::move(*poolValue);
  return inputs;
}

CUdeviceptr AppendTimingInputs::rows(int launchIndex) const {
  return rows_.get() + CUdeviceptr(launchIndex % copies_) * rowBytes();
}

dev::AppendParams AppendTimingInputs::params(int launchIndex) const {
  const uint16_t *key = reinterpret_cast<const uint16_t *>(rows(launchIndex));
  const long long stride = (long long)kKvHeads * headDim_;
  return {key,
          key + stride * kTokens, // the V rows follow the K rows
          mapping_.as<long long>(),
          poolKey_.as<void>(),
          poolValue_.as<void>(),
          kTokens,
          kKvHeads,
          stride,
          stride};
}

} // namespace kvarn::autotune
