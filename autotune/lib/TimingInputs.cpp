// The timing inputs shared by the benchmark and the tuner.
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

Expected<FlushTimingInputs> FlushTimingInputs::create(const Format &format, size_t l2Bytes) {
  FlushTimingInputs inputs;
  inputs.format_ = format;
  const size_t elements = size_t(kBlocks) * format.tileTokens * kKvHeads * format.headDim;
  std::mt19937_64 rng(99);
  std::normal_distribution<float> normal;
  for (std::vector<uint16_t> *pool : {&inputs.keys_, &inputs.values_}) {
    pool->resize(elements);
    for (size_t i = 0; i < elements; ++i)
      (*pool)[i] = floatToHalf(normal(rng) * (1.0f + float(i) / float(elements)));
  }
  for (int b = 0; b < kBlocks; ++b)
    for (int h = 0; h < kKvHeads; ++h)
      inputs.entries_.insert(inputs.entries_.end(), {b, h, b});
  const size_t poolBytes = elements * 2;
  inputs.copies_ = coldCopies(2 * poolBytes, l2Bytes);
  Expected<DeviceBuffer> pools = DeviceBuffer::allocate(2 * poolBytes * inputs.copies_),
                         entries = DeviceBuffer::copyOf(inputs.entries_),
                         status = DeviceBuffer::allocate(16),
                         records = DeviceBuffer::allocate(size_t(kEntries) *
                                                          recordLayout(format).tileBytesAligned);
  for (Expected<DeviceBuffer> *b : {&pools, &entries, &status, &records})
    if (!*b)
      return b->error();
  for (int c = 0; c < inputs.copies_; ++c)
    for (const std::vector<uint16_t> *pool : {&inputs.keys_, &inputs.values_})
      if (Status s = pools->upload(pool->data(), poolBytes,
                                   (2 * size_t(c) + (pool == &inputs.values_)) * poolBytes);
          !s)
        return s.error();
  if (Status s = status->fill(0); !s)
    return s.error();
  inputs.pools_ = std::move(*pools);
  inputs.entriesDevice_ = std::move(*entries);
  inputs.status_ = std::move(*status);
  inputs.records_ = std::move(*records);
  return inputs;
}

dev::FlushParams FlushTimingInputs::params(int launchIndex) const {
  const size_t poolBytes = keys_.size() * 2;
  const CUdeviceptr key = pools_.get() + CUdeviceptr(launchIndex % copies_) * 2 * poolBytes;
  return {reinterpret_cast<const void *>(key),
          reinterpret_cast<const void *>(key + poolBytes),
          entriesDevice_.as<int>(),
          records_.as<unsigned char>(),
          status_.as<int>(),
          kEntries,
          kKvHeads,
          0};
}

double FlushTimingInputs::bytesMoved(const Format &format) {
  return double(kEntries) *
         (2.0 * format.tileTokens * format.headDim * 2 + recordLayout(format).tileBytes);
}

} // namespace kvarn::autotune
