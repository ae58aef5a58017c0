// log and exp of a float as one fixed sequence of IEEE fp32 operations (each rounded once to
// nearest, never contracted) that the GPU flush (flush.cuh) and the CPU reference (quantize.cpp)
// both run, so their Sinkhorn scales agree bit for bit; and the margin of the flush's one-FMA codes
// (codeMargin), which a CPU test checks against the exact chain. Over the clamped domains the
// Sinkhorn steps use (stds in [1e-3, 1e3], log scales in [-0.3, 10]) a scan of every float bounds
// the error against the exact value by 0.554 ulp (log) and 0.733 ulp (exp); the results are the
// correctly rounded floats for all but 6,276 of the 167,177,618 stds and 1,068,931 of the
// 2,142,869,915 log scales (RoundedMathTest keeps a sampled form of the scan).
// Shared verbatim by the device library (NVRTC, no standard headers) and the host (plain C++,
// built with -ffp-contract=off).
#pragma once

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define KVARN_MATH_FN __device__ __forceinline__
#define KVARN_MATH_TABLE static __device__ const
#else
#include <cmath>
#include <cstdint>
#include <cstring>
#define KVARN_MATH_FN inline
#define KVARN_MATH_TABLE inline constexpr
#endif

namespace kvarn {
namespace roundedmath {

/// A point c of logFloat's table: 1/c (with 6 significant bits, so that z/c - 1 is exact) and
/// log(c) = -log(1/c) as the sum of two floats; 16 bytes, one vector load.
struct alignas(16) LogPoint {
  float inverse, logHigh, logLow, unused;
};
/// Entry i covers the reduced arguments z whose bits lie in [0x3f320000 + i 2^18, + 2^18), z in
/// [0.6953, 1.3906) in 32 pieces; its 1/c is the inverse of the piece's midpoint rounded to
/// 6 significant bits (1 exactly for the piece that holds 1), so |z/c - 1| < 0.0233.
KVARN_MATH_TABLE LogPoint kLogPoints[32] = {
    {0x1.7p+0f, -0x1.739d8p-2f, 0x1.2886p-27f, 0.0f},
    {0x1.68p+0f, -0x1.5d1bdcp-2f, 0x1.4fec6cp-31f, 0.0f},
    {0x1.6p+0f, -0x1.4618bcp-2f, -0x1.0e2f62p-29f, 0.0f},
    {0x1.58p+0f, -0x1.2e8e2cp-2f, 0x1.47b8b4p-28f, 0.0f},
    {0x1.5p+0f, -0x1.1675cap-2f, -0x1.7574c2p-27f, 0.0f},
    {0x1.48p+0f, -0x1.fb9186p-3f, -0x1.abc7c6p-28f, 0.0f},
    {0x1.4p+0f, -0x1.c8ff7cp-3f, -0x1.e6a688p-29f, 0.0f},
    {0x1.38p+0f, -0x1.9525aap-3f, 0x1.85d4a6p-30f, 0.0f},
    {0x1.38p+0f, -0x1.9525aap-3f, 0x1.85d4a6p-30f, 0.0f},
    {0x1.3p+0f, -0x1.5ff308p-3f, 0x1.eb0d86p-28f, 0.0f},
    {0x1.28p+0f, -0x1.29553p-3f, 0x1.f802b8p-29f, 0.0f},
    {0x1.28p+0f, -0x1.29553p-3f, 0x1.f802b8p-29f, 0.0f},
    {0x1.2p+0f, -0x1.e27076p-4f, -0x1.c55e5cp-29f, 0.0f},
    {0x1.18p+0f, -0x1.6f0d28p-4f, -0x1.5cad6ap-29f, 0.0f},
    {0x1.18p+0f, -0x1.6f0d28p-4f, -0x1.5cad6ap-29f, 0.0f},
    {0x1.1p+0f, -0x1.f0a30cp-5f, -0x1.162a66p-37f, 0.0f},
    {0x1.1p+0f, -0x1.f0a30cp-5f, -0x1.162a66p-37f, 0.0f},
    {0x1.08p+0f, -0x1.f829bp-6f, -0x1.cf066p-31f, 0.0f},
    {0x1.08p+0f, -0x1.f829bp-6f, -0x1.cf066p-31f, 0.0f},
    {1.0f, 0.0f, 0.0f, 0.0f},
    {0x1.fp-1f, 0x1.0415d8p-5f, 0x1.3ce888p-30f, 0.0f},
    {0x1.ep-1f, 0x1.08598cp-4f, -0x1.4c38cp-29f, 0.0f},
    {0x1.d8p-1f, 0x1.4d3116p-4f, -0x1.6fc0aap-31f, 0.0f},
    {0x1.c8p-1f, 0x1.da7276p-4f, 0x1.c22352p-31f, 0.0f},
    {0x1.b8p-1f, 0x1.365fccp-3f, -0x1.fd4dfep-28f, 0.0f},
    {0x1.bp-1f, 0x1.5bf406p-3f, 0x1.6a87b6p-28f, 0.0f},
    {0x1.a8p-1f, 0x1.823c16p-3f, 0x1.5468fp-29f, 0.0f},
    {0x1.98p-1f, 0x1.d1038p-3f, -0x1.b3543p-28f, 0.0f},
    {0x1.9p-1f, 0x1.f991c6p-3f, 0x1.96767p-28f, 0.0f},
    {0x1.88p-1f, 0x1.1178e8p-2f, 0x1.13f23ep-29f, 0.0f},
    {0x1.8p-1f, 0x1.269622p-2f, -0x1.d9648ep-27f, 0.0f},
    {0x1.78p-1f, 0x1.3c2528p-2f, -0x1.1999dp-27f, 0.0f},
};

// The operations, each rounded once to nearest (never contracted or reassociated).
#if defined(__CUDA_ARCH__)
KVARN_MATH_FN float mul(float a, float b) { return __fmul_rn(a, b); }
KVARN_MATH_FN float add(float a, float b) { return __fadd_rn(a, b); }
KVARN_MATH_FN float fma(float a, float b, float c) { return __fmaf_rn(a, b, c); }
KVARN_MATH_FN unsigned floatBits(float a) { return __float_as_uint(a); }
KVARN_MATH_FN float floatOfBits(unsigned a) { return __uint_as_float(a); }
#else
KVARN_MATH_FN float mul(float a, float b) { return a * b; }
KVARN_MATH_FN float add(float a, float b) { return a + b; }
KVARN_MATH_FN float fma(float a, float b, float c) { return std::fmaf(a, b, c); }
KVARN_MATH_FN unsigned floatBits(float a) {
  unsigned bits;
  std::memcpy(&bits, &a, sizeof bits);
  return bits;
}
KVARN_MATH_FN float floatOfBits(unsigned a) {
  float value;
  std::memcpy(&value, &a, sizeof value);
  return value;
}
#endif

/// exp(x) for |x| <= 80 (the Sinkhorn's log scales lie in [-0.3, 10]). x = k ln2 + r with k an
/// integer and |r| <= ln2/2: exp(x) = 2^k (1 + r + r^2 P(r)), P the Taylor polynomial of
/// (exp(r) - 1 - r)/r^2 to degree 5 (truncation below 2e-9 relative). r is r1 + d: r1 = x -
/// k float(ln2) is exact, d = -k (ln2 - float(ln2)); 1 + r1 is summed with its rounding error
/// (Fast2Sum), so the one sizeable rounding is the last add's.
KVARN_MATH_FN float expFloat(float x) {
  // k = x/ln2 rounded to an integer by adding and subtracting 1.5 * 2^23 (the sum's ulp is 1);
  // the sum's low bits hold k as an integer.
  constexpr float kRoundShift = 0x1.8p23f;
  const float shifted = fma(x, 0x1.715476p+0f, kRoundShift); // 1/ln2
  const float k = add(shifted, -kRoundShift);
  const int n = int(floatBits(shifted) - floatBits(kRoundShift));
  const float r1 = fma(k, -0x1.62e430p-1f, x); // float(ln2): exact for |k| < 128
  const float d = mul(k, 0x1.05c610p-29f);      // float(ln2) - ln2
  const float r = add(r1, d);
  const float one = add(1.0f, r1);
  const float oneError = add(add(1.0f, -one), r1);
  float p = fma(r, 0x1.a01a02p-13f, 0x1.6c16c2p-10f); // 1/5040, 1/720
  p = fma(r, p, 0x1.111112p-7f);                       // 1/120
  p = fma(r, p, 0x1.555556p-5f);                       // 1/24
  p = fma(r, p, 0x1.555556p-3f);                       // 1/6
  p = fma(r, p, 0.5f);
  const float tail = fma(mul(r, r), p, add(oneError, d));
  return mul(add(one, tail), floatOfBits(unsigned(n + 127) << 23)); // times 2^k, exact
}

/// log(x) for x > 0 normal (the Sinkhorn's stds are clamped to [1e-3, 1e3]). x = 2^k z with z in
/// [0.6953, 1.3906), c the table point of z's piece: log(x) = k ln2 + log(c) + log1p(r),
/// r = z/c - 1 (exact, |r| < 0.0233), log1p(r) = r + r^2 Q(r), Q the Taylor polynomial of
/// (log1p(r) - r)/r^2 to degree 3 (truncation below 1e-11). The large parts k ln2_1 + log(c)
/// and + r are summed with their rounding errors (Fast2Sum), so the one sizeable rounding is the
/// last add's.
KVARN_MATH_FN float logFloat(float x) {
  const unsigned bits = floatBits(x);
  const unsigned offset = bits - 0x3f320000u;
  const LogPoint c = kLogPoints[(offset >> 18) & 31];
  const int k = int(offset) >> 23;
  const float z = floatOfBits(bits - (offset & 0xff800000u)); // x / 2^k
  const float r = fma(z, c.inverse, -1.0f);
  const float kf = float(k);
  // ln2 = ln2_1 + ln2_2, ln2_1 with 15 significant bits: k ln2_1 is exact for |k| < 512.
  const float a = mul(kf, 0x1.62e4p-1f);
  const float w = add(a, c.logHigh);
  const float wError = add(add(a, -w), c.logHigh);
  const float high = add(w, r);
  const float highError = add(add(w, -high), r);
  float q = fma(r, 0x1.99999ap-3f, -0.25f); // 1/5, -1/4
  q = fma(r, q, 0x1.555556p-2f);            // 1/3
  q = fma(r, q, -0.5f);
  const float small = add(fma(kf, 0x1.7f7d1cp-20f, c.logLow), add(wError, highError)); // ln2_2
  return add(high, fma(mul(r, r), q, small));
}

/// The flush RTN's codes (quantizePack in flush.cuh) come first from one FMA, q~ = m * (1/c *
/// (1/r * 1/scale)) + (-lo * 1/scale), which differs from the exact chain's quotient
/// ((m / c / r) - lo) / scale by at most (9 extent / scale + 48) units of 2^-24 (extent =
/// max(|lo|, |hi|): five roundings in the factor, two in the offset, one in the FMA, against the
/// chain's four; codes are at most 15). A q~ further than this margin (that bound with a factor
/// of 2.6 to spare) from a rounding midpoint rounds to the chain's integer. `inverse` is 1/scale;
/// a row whose range is tiny against its magnitude gets a margin <= 0.
KVARN_MATH_FN float codeMargin(float extent, float inverse) {
  return 0.5f - (24.0f * extent * inverse + 128.0f) * 5.9604645e-8f; // 2^-24
}

} // namespace roundedmath
} // namespace kvarn

#undef KVARN_MATH_FN
#undef KVARN_MATH_TABLE
