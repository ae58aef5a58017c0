// The inputs the decode benchmark and the tuner time kernels on, made by one piece of code so
// that both measure the same work: the same records, the same queries, and the same rule for
// keeping every timed launch's reads cold in L2.
#pragma once

#include "kvarn/format.h"
#include "kvarn/half.h"
#include "kvarn/status.h"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvarn::autotune {

/// `count` distinct records (K and V the same random-normal rotated rows, quantized by the CPU
/// reference), back to back, to replicate over a timing cache with DeviceBuffer::fillWithPattern.
Expected<std::vector<uint8_t>> decodeTimingRecords(const Format &format, int count = 16);

/// Every fp16 pool row of the timing inputs holds 1.0: two halves per 32-bit word, for
/// cuMemsetD32.
constexpr uint32_t kDecodeTimingPoolWord = 0x3c003c00u;

/// The timing queries: `count` elements of 0.5 in `dtype`.
std::vector<uint16_t> decodeTimingQueries(size_t count, DType dtype);

/// Disjoint copies of a launch's inputs (`bytes` each) to rotate through, one copy per launch in
/// launch order: enough that the launches between two uses of one copy read at least twice the
/// L2 (`l2Bytes`), so every launch reads cold, as an engine's decode of a long context does;
/// at most 16, and 1 when one copy is that large already.
int coldCopies(size_t bytes, size_t l2Bytes);

} // namespace kvarn::autotune
