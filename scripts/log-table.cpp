// Prints roundedmath.h's kLogPoints: for piece i of the reduced argument z (bits in
// [0x3f320000 + i 2^18, + 2^18)), 1/c = the inverse of the piece's midpoint rounded to 6
// significant bits (1 for the piece that holds 1), and log(c) = -log(1/c) as a float plus the
// float of the rest, in long double.
//   g++ -O2 -Icompiler/device scripts/log-table.cpp -o /tmp/log-table && /tmp/log-table
#include "kvarn/roundedmath.h"

#include <cmath>
#include <cstdint>
#include <cstdio>

using kvarn::roundedmath::floatOfBits;

int main() {
  const uint32_t offset = 0x3f320000u;
  for (uint32_t i = 0; i < 32; ++i) {
    const long double lo = floatOfBits(offset + (i << 18));
    const long double hi = floatOfBits(offset + ((i + 1) << 18));
    const long double inverse = 2.0L / (lo + hi);
    const long double grid = inverse >= 1 ? 32.0L : 64.0L; // 6 significant bits
    float rounded = float(std::round(inverse * grid) / grid);
    if (lo <= 1.0L && 1.0L < hi)
      rounded = 1.0f;
    const long double log = -std::log(static_cast<long double>(rounded));
    const float high = float(log), low = float(log - high);
    if (rounded == 1.0f)
      std::printf("    {1.0f, 0.0f, 0.0f, 0.0f},\n");
    else
      std::printf("    {%af, %af, %af, 0.0f},\n", rounded, high, low);
  }
}
