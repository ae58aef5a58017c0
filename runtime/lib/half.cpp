// fp16/bf16 <-> fp32 conversions with IEEE round-to-nearest-even.
#include "kvarn/half.h"

#include <cstring>

namespace kvarn {

const char *dtypeName(DType dtype) { return dtype == DType::F16 ? "fp16" : "bf16"; }

static uint32_t floatBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

static float bitsFloat(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

uint16_t floatToHalf(float value) {
  uint32_t x = floatBits(value);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absBits = x & 0x7fffffffu;
  if (absBits >= 0x7f800000u) // Inf or NaN; keep NaN quiet and non-zero.
    return static_cast<uint16_t>(sign | 0x7c00u | (absBits > 0x7f800000u ? 0x200u : 0u));
  if (absBits >= 0x477ff000u) // rounds to >= 65520: overflow to Inf
    return static_cast<uint16_t>(sign | 0x7c00u);
  if (absBits < 0x38800000u) { // result is subnormal or zero (|x| < 2^-14)
    if (absBits < 0x33000000u) // below half the smallest subnormal: zero (ties at 2^-25 round to 0)
      return static_cast<uint16_t>(sign);
    uint32_t mantissa = (absBits & 0x7fffffu) | 0x800000u;
    int shift = 126 - static_cast<int>(absBits >> 23); // 14..24 extra bits to drop
    uint32_t halfMantissa = mantissa >> (shift);
    uint32_t remainder = mantissa & ((1u << shift) - 1u);
    uint32_t halfway = 1u << (shift - 1);
    if (remainder > halfway || (remainder == halfway && (halfMantissa & 1u)))
      ++halfMantissa;
    return static_cast<uint16_t>(sign | halfMantissa);
  }
  uint32_t rounded = absBits + 0xfffu + ((absBits >> 13) & 1u); // RNE on the 13 dropped bits
  rounded -= 0x38000000u;                                       // rebias exponent 127 -> 15
  return static_cast<uint16_t>(sign | (rounded >> 13));
}

float halfToFloat(uint16_t bits) {
  uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0x1fu)
    return bitsFloat(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    if (mantissa == 0)
      return bitsFloat(sign);
    float magnitude = static_cast<float>(mantissa) * (1.0f / 16777216.0f); // mantissa * 2^-24
    return sign ? -magnitude : magnitude;
  }
  return bitsFloat(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

uint16_t floatToBf16(float value) {
  uint32_t x = floatBits(value);
  if ((x & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

float bf16ToFloat(uint16_t bits) { return bitsFloat(static_cast<uint32_t>(bits) << 16); }

} // namespace kvarn
