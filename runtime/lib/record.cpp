// Reference tile-record writer/reader and dequantization (kvarn-format.md §4.3-§5).
#include "kvarn/reference.h"

#include <cmath>
#include <cstring>
#include <string>

namespace kvarn::reference {
namespace {

Status checkRecordSpan(const RecordLayout &layout, size_t size, const void *data) {
  if (size != layout.tileBytesAligned)
    return makeError(ErrorCode::BufferSize, "record buffer is " + std::to_string(size) +
                                                " bytes; the format needs exactly " +
                                                std::to_string(layout.tileBytesAligned));
  if (reinterpret_cast<uintptr_t>(data) % 8 != 0)
    return makeError(ErrorCode::BufferSize,
                     "record buffer is misaligned: records must start on an 8-byte boundary");
  return Status::success();
}

void storeHalves(std::span<uint8_t> record, size_t offset, const std::vector<uint16_t> &values) {
  std::memcpy(record.data() + offset, values.data(), values.size() * sizeof(uint16_t));
}

std::vector<uint16_t> loadHalves(std::span<const uint8_t> record, size_t offset, size_t count) {
  std::vector<uint16_t> values(count);
  std::memcpy(values.data(), record.data() + offset, count * sizeof(uint16_t));
  return values;
}

} // namespace

Status writeRecord(const Format &format, std::span<const uint16_t> keyRows,
                   std::span<const uint16_t> valueRows, size_t rowStride,
                   std::span<uint8_t> record) {
  if (Status s = validateFormat(format); !s)
    return s;
  const RecordLayout layout = recordLayout(format);
  if (Status s = checkRecordSpan(layout, record.size(), record.data()); !s)
    return s;
  const int d = format.headDim, g = format.tileTokens;
  const size_t needed = (static_cast<size_t>(g) - 1) * rowStride + static_cast<size_t>(d);
  if (rowStride < static_cast<size_t>(d) || keyRows.size() < needed || valueRows.size() < needed)
    return makeError(ErrorCode::BufferSize, "writeRecord: a tile of " + std::to_string(g) +
                                                " rows with stride " + std::to_string(rowStride) +
                                                " needs " + std::to_string(needed) +
                                                " elements per tensor");
  // Step 1. Views: K as M[D][G] (rows = channels), V as M[G][D] (rows = tokens).
  std::vector<float> keyMatrix(static_cast<size_t>(d) * g), valueMatrix(keyMatrix.size());
  for (int t = 0; t < g; ++t)
    for (int c = 0; c < d; ++c) {
      keyMatrix[static_cast<size_t>(c) * g + t] = halfToFloat(keyRows[t * rowStride + c]);
      valueMatrix[static_cast<size_t>(t) * d + c] = halfToFloat(valueRows[t * rowStride + c]);
    }
  // Step 2. Normalize, round and fold each tensor.
  Expected<QuantizedMatrix> key =
      quantizeMatrix(keyMatrix, d, g, format.keyBits, format.sinkhornIterations);
  if (!key)
    return makeError(key.error().code, "key tile: " + key.error().message);
  Expected<QuantizedMatrix> value =
      quantizeMatrix(valueMatrix, g, d, format.valueBits, format.sinkhornIterations);
  if (!value)
    return makeError(value.error().code, "value tile: " + value.error().message);
  // Step 3. Pack codes and write every field; zero the padding.
  std::memset(record.data(), 0, record.size());
  if (Status s = packCodes(key->codes, format.keyBits,
                           record.subspan(layout.keyPacked, layout.keyPackedBytes));
      !s)
    return s;
  storeHalves(record, layout.keyScaleCol, key->rowScale);
  storeHalves(record, layout.keyZeroPoint, key->rowZeroPoint);
  storeHalves(record, layout.keyScaleRow, key->colScale);
  if (Status s = packCodes(value->codes, format.valueBits,
                           record.subspan(layout.valuePacked, layout.valuePackedBytes));
      !s)
    return s;
  storeHalves(record, layout.valueScaleCol, value->colScale);
  storeHalves(record, layout.valueScaleRow, value->rowScale);
  storeHalves(record, layout.valueZeroPoint, value->rowZeroPoint);
  return Status::success();
}

Expected<DecodedRecord> readRecord(const Format &format, std::span<const uint8_t> record) {
  if (Status s = validateFormat(format); !s)
    return s.error();
  const RecordLayout layout = recordLayout(format);
  if (Status s = checkRecordSpan(layout, record.size(), record.data()); !s)
    return s.error();
  const int d = format.headDim, g = format.tileTokens;
  DecodedRecord decoded;
  QuantizedMatrix &key = decoded.key;
  key.rows = d;
  key.cols = g;
  key.bits = format.keyBits;
  key.codes.resize(static_cast<size_t>(d) * g);
  if (Status s = unpackCodes(record.subspan(layout.keyPacked, layout.keyPackedBytes),
                             format.keyBits, key.codes);
      !s)
    return s.error();
  key.rowScale = loadHalves(record, layout.keyScaleCol, d);
  key.rowZeroPoint = loadHalves(record, layout.keyZeroPoint, d);
  key.colScale = loadHalves(record, layout.keyScaleRow, g);
  QuantizedMatrix &value = decoded.value;
  value.rows = g;
  value.cols = d;
  value.bits = format.valueBits;
  value.codes.resize(static_cast<size_t>(d) * g);
  if (Status s = unpackCodes(record.subspan(layout.valuePacked, layout.valuePackedBytes),
                             format.valueBits, value.codes);
      !s)
    return s.error();
  value.colScale = loadHalves(record, layout.valueScaleCol, d);
  value.rowScale = loadHalves(record, layout.valueScaleRow, g);
  value.rowZeroPoint = loadHalves(record, layout.valueZeroPoint, g);
  for (const std::vector<uint16_t> *field :
       {&key.rowScale, &key.rowZeroPoint, &key.colScale, &value.rowScale, &value.rowZeroPoint,
        &value.colScale})
    for (uint16_t bits : *field)
      if (!std::isfinite(halfToFloat(bits)))
        return makeError(ErrorCode::InvalidData, "record holds a non-finite scale (corrupt?)");
  return decoded;
}

Status dequantizeRecord(const Format &format, std::span<const uint8_t> record,
                        std::span<float> keyRows, std::span<float> valueRows) {
  Expected<DecodedRecord> decoded = readRecord(format, record);
  if (!decoded)
    return decoded.error();
  const int d = format.headDim, g = format.tileTokens;
  const size_t elements = static_cast<size_t>(d) * g;
  if (keyRows.size() != elements || valueRows.size() != elements)
    return makeError(ErrorCode::BufferSize, "dequantizeRecord: outputs must hold G*D = " +
                                                std::to_string(elements) + " floats each");
  for (int t = 0; t < g; ++t)
    for (int c = 0; c < d; ++c) {
      keyRows[static_cast<size_t>(t) * d + c] = decoded->key.reconstruct(c, t);
      valueRows[static_cast<size_t>(t) * d + c] = decoded->value.reconstruct(t, c);
    }
  return Status::success();
}

} // namespace kvarn::reference
