// log and exp of a float as one fixed sequence of IEEE fp32 operations (each rounded once to
// nearest, never contracted) that the GPU flush (flush.cuh) and the CPU reference (quantize.cpp)
// both run, so their Sinkhorn scales agree bit for bit; and the margin of the flush's one-FMA codes
// (codeMargin), which a CPU test checks against the exact chain. Over the clamped domains the
// Sinkhorn steps use (stds in [1e-3, 1e3], log scales in [-0.3, 10]) a scan of every float bounds
// the error against the exact value by 0.568 ulp (log) and 0.711 ulp (exp); the results are the
// correctly rounded floats for all but 6,729 of the 167,177,618 stds and 1,134,897 of the
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
/// log(c) = -log(1/c) as the sum of two floats, the first a multiple of 2^-20 (so that adding
/// k ln2_1 to it is exact); 16 bytes, one vector load.
struct alignas(16) LogPoint {
  float inverse, logHigh, logLow, unused;
};
/// Entry i covers the reduced arguments z whose bits lie in [0x3f320000 + i 2^18, + 2^18), z in
/// [0.6953, 1.3906) in 32 pieces; its 1/c is the inverse of the piece's midpoint rounded to
/// 6 significant bits (1 exactly for the piece that holds 1), so |z/c - 1| < 0.0233.
KVARN_MATH_TABLE LogPoint kLogPoints[32] = {
    {0x1.7p+0f, -0x1.739d8p-2f, 0x1.2886p-27f, 0.0f},
    {0x1.68p+0f, -0x1.5d1bcp-2f, -0x1.bf580ap-22f, 0.0f},
    {0x1.6p+0f, -0x1.4618cp-2f, 0x1.ef1d0ap-25f, 0.0f},
    {0x1.58p+0f, -0x1.2e8e4p-2f, 0x1.451ee2p-22f, 0.0f},
    {0x1.5p+0f, -0x1.1675cp-2f, -0x1.57574cp-23f, 0.0f},
    {0x1.48p+0f, -0x1.fb918p-3f, -0x1.b578f8p-25f, 0.0f},
    {0x1.4p+0f, -0x1.c8ff8p-3f, 0x1.c32b2ep-26f, 0.0f},
    {0x1.38p+0f, -0x1.95258p-3f, -0x1.4e7a2cp-22f, 0.0f},
    {0x1.38p+0f, -0x1.95258p-3f, -0x1.4e7a2cp-22f, 0.0f},
    {0x1.3p+0f, -0x1.5ff3p-3f, -0x1.c29e5p-25f, 0.0f},
    {0x1.28p+0f, -0x1.2955p-3f, -0x1.7c0ffap-22f, 0.0f},
    {0x1.28p+0f, -0x1.2955p-3f, -0x1.7c0ffap-22f, 0.0f},
    {0x1.2p+0f, -0x1.e27p-4f, -0x1.db8abcp-22f, 0.0f},
    {0x1.18p+0f, -0x1.6f0dp-4f, -0x1.4572b6p-23f, 0.0f},
    {0x1.18p+0f, -0x1.6f0dp-4f, -0x1.4572b6p-23f, 0.0f},
    {0x1.1p+0f, -0x1.f0a4p-5f, 0x1.e7fdd4p-22f, 0.0f},
    {0x1.1p+0f, -0x1.f0a4p-5f, 0x1.e7fdd4p-22f, 0.0f},
    {0x1.08p+0f, -0x1.f828p-6f, -0x1.b0e784p-22f, 0.0f},
    {0x1.08p+0f, -0x1.f828p-6f, -0x1.b0e784p-22f, 0.0f},
    {1.0f, 0.0f, 0.0f, 0.0f},
    {0x1.fp-1f, 0x1.0416p-5f, -0x1.3b0c5ep-24f, 0.0f},
    {0x1.ep-1f, 0x1.085ap-4f, -0x1.d29872p-22f, 0.0f},
    {0x1.d8p-1f, 0x1.4d31p-4f, 0x1.5d207ep-24f, 0.0f},
    {0x1.c8p-1f, 0x1.da72p-4f, 0x1.d8e112p-22f, 0.0f},
    {0x1.b8p-1f, 0x1.366p-3f, -0x1.a7f538p-22f, 0.0f},
    {0x1.bp-1f, 0x1.5bf4p-3f, 0x1.ad50f6p-25f, 0.0f},
    {0x1.a8p-1f, 0x1.823cp-3f, 0x1.6551a4p-23f, 0.0f},
    {0x1.98p-1f, 0x1.d1038p-3f, -0x1.b3543p-28f, 0.0f},
    {0x1.9p-1f, 0x1.f992p-3f, -0x1.c9a626p-22f, 0.0f},
    {0x1.88p-1f, 0x1.1179p-2f, -0x1.7dd81cp-22f, 0.0f},
    {0x1.8p-1f, 0x1.26964p-2f, -0x1.eecb24p-22f, 0.0f},
    {0x1.78p-1f, 0x1.3c254p-2f, -0x1.88cccep-22f, 0.0f},
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
/// (exp(r) - 1 - r)/r^2 to degree 5 (truncation below 2e-9 relative), in Estrin's form. r is
/// r1 + d: r1 = x - k float(ln2) is exact, d = -k (ln2 - float(ln2)) is below 3e-8 and enters
/// as d + r1 d; 1 + r1 is summed with its rounding error (Fast2Sum), so the one sizeable rounding
/// is the last add's.
KVARN_MATH_FN float expFloat(float x) {
  // k = x/ln2 rounded to an integer by adding and subtracting 1.5 * 2^23 (the sum's ulp is 1);
  // the sum's low bits hold k as an integer.
  constexpr float kRoundShift = 0x1.8p23f;
  const float shifted = fma(x, 0x1.715476p+0f, kRoundShift); // 1/ln2
  const float k = add(shifted, -kRoundShift);
  const int n = int(floatBits(shifted) - floatBits(kRoundShift));
  const float r1 = fma(k, -0x1.62e430p-1f, x); // float(ln2): exact
  const float d = mul(k, 0x1.05c610p-29f);      // float(ln2) - ln2
  const float one = add(1.0f, r1);
  const float oneError = add(add(1.0f, -one), r1);
  const float r2 = mul(r1, r1);
  const float a = fma(r1, 0x1.555556p-3f, 0.5f);           // 1/6, 1/2
  const float b = fma(r1, 0x1.111112p-7f, 0x1.555556p-5f); // 1/120, 1/24
  const float c = fma(r1, 0x1.a01a02p-13f, 0x1.6c16c2p-10f); // 1/5040, 1/720
  const float r4 = mul(r2, r2);
  const float t = fma(r4, b, fma(r2, a, fma(r1, d, d)));
  const float tail = fma(mul(r4, r2), c, t);
  return mul(add(one, add(tail, oneError)), floatOfBits(unsigned(n + 127) << 23)); // times 2^k
}

/// The index of logFloat's table point for x > 0 normal: the piece of x's reduced argument.
KVARN_MATH_FN int logPointIndex(float x) { return int((floatBits(x) - 0x3f320000u) >> 18) & 31; }

/// log(x) for x > 0 normal (the Sinkhorn's stds are clamped to [1e-3, 1e3]), given its table point
/// `c` = kLogPoints[logPointIndex(x)] (a caller may have loaded it early). x = 2^k z with z in
/// [0.6953, 1.3906), c the table point of z's piece: log(x) = k ln2 + log(c) + log1p(r),
/// r = z/c - 1 (exact, |r| < 0.0233), log1p(r) = r + r^2 Q(r), Q the Taylor polynomial of
/// (log1p(r) - r)/r^2 to degree 3 (truncation below 1e-11), in Estrin's form. k ln2_1 + log(c)_1
/// is exact and adding r is summed with its rounding error (Fast2Sum), so the one sizeable
/// rounding is the last add's.
KVARN_MATH_FN float logFloat(float x, const LogPoint &c) {
  const unsigned bits = floatBits(x);
  const unsigned offset = bits - 0x3f320000u;
  const int k = int(offset) >> 23;
  const float z = floatOfBits(bits - (offset & 0xff800000u)); // x / 2^k
  const float r = fma(z, c.inverse, -1.0f);
  const float kf = float(k);
  // ln2 = ln2_1 + ln2_2, ln2_1 a multiple of 2^-17 with 17 significant bits.
  const float w = fma(kf, 0x1.62e4p-1f, c.logHigh); // exact
  const float high = add(w, r);
  const float highError = add(add(w, -high), r);
  const float a = fma(r, 0x1.555556p-2f, -0.5f);   // 1/3, -1/2
  const float b = fma(r, 0x1.99999ap-3f, -0.25f);  // 1/5, -1/4
  const float r2 = mul(r, r);
  const float t = fma(mul(r2, r2), b, fma(r2, a, fma(kf, 0x1.7f7d1cp-20f, c.logLow))); // ln2_2
  return add(high, add(t, highError));
}
/// log(x) for x > 0 normal, loading its table point.
KVARN_MATH_FN float logFloat(float x) { return logFloat(x, kLogPoints[logPointIndex(x)]); }

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
