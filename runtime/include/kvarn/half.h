// Bit-exact fp16 and bf16 conversions (round to nearest even), host side.
#pragma once

#include <cstdint>

namespace kvarn {

/// Storage dtype of model activations (q, out, incoming K/V rows).
enum class DType { F16, BF16 };

const char *dtypeName(DType dtype);

uint16_t floatToHalf(float value);
float halfToFloat(uint16_t bits);
uint16_t floatToBf16(float value);
float bf16ToFloat(uint16_t bits);

/// Rounds a float through fp16 (or bf16) and back.
inline float roundToHalf(float value) { return halfToFloat(floatToHalf(value)); }
inline float roundToBf16(float value) { return bf16ToFloat(floatToBf16(value)); }

inline uint16_t floatToDType(float value, DType dtype) {
  return dtype == DType::F16 ? floatToHalf(value) : floatToBf16(value);
}
inline float dtypeToFloat(uint16_t bits, DType dtype) {
  return dtype == DType::F16 ? halfToFloat(bits) : bf16ToFloat(bits);
}

} // namespace kvarn
