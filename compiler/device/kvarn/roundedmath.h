// log and exp of a float, rounded to float, as one fixed sequence of IEEE double operations that
// the GPU flush (flush.cuh) and the CPU reference (quantize.cpp) both run, so their Sinkhorn scales
// agree bit for bit; and the margin of the flush's one-FMA codes (codeMargin), which a CPU test
// checks against the exact chain. Each is a 64-entry table and a short polynomial: the error before
// the final rounding is below 1e-16 relative, so the result is the correctly rounded float except
// where the exact value lies within about 1e-16 of a rounding midpoint (about 2e-9 of arguments).
// Shared verbatim by the device library (NVRTC, no standard headers) and the host (plain C++).
#pragma once

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define KVARN_MATH_FN __device__ __forceinline__
#define KVARN_MATH_TABLE static __device__ const
// In the constant bank (not const: its values are not folded into immediates), the coefficients
// are operands of the double instructions themselves (as immediates, those without a short form
// take two uniform moves each).
#define KVARN_MATH_CONSTANTS static __constant__
#else
#include <cmath>
#include <cstdint>
#include <cstring>
#define KVARN_MATH_FN inline
#define KVARN_MATH_TABLE inline constexpr
#define KVARN_MATH_CONSTANTS inline constexpr
#endif

namespace kvarn {
namespace roundedmath {

/// 2^(j/64), rounded to double.
KVARN_MATH_TABLE double kExp2Sixtyfourths[64] = {
    0x1.0000000000000p+0, 0x1.02c9a3e778061p+0, 0x1.059b0d3158574p+0, 0x1.0874518759bc8p+0,
    0x1.0b5586cf9890fp+0, 0x1.0e3ec32d3d1a2p+0, 0x1.11301d0125b51p+0, 0x1.1429aaea92de0p+0,
    0x1.172b83c7d517bp+0, 0x1.1a35beb6fcb75p+0, 0x1.1d4873168b9aap+0, 0x1.2063b88628cd6p+0,
    0x1.2387a6e756238p+0, 0x1.26b4565e27cddp+0, 0x1.29e9df51fdee1p+0, 0x1.2d285a6e4030bp+0,
    0x1.306fe0a31b715p+0, 0x1.33c08b26416ffp+0, 0x1.371a7373aa9cbp+0, 0x1.3a7db34e59ff7p+0,
    0x1.3dea64c123422p+0, 0x1.4160a21f72e2ap+0, 0x1.44e086061892dp+0, 0x1.486a2b5c13cd0p+0,
    0x1.4bfdad5362a27p+0, 0x1.4f9b2769d2ca7p+0, 0x1.5342b569d4f82p+0, 0x1.56f4736b527dap+0,
    0x1.5ab07dd485429p+0, 0x1.5e76f15ad2148p+0, 0x1.6247eb03a5585p+0, 0x1.6623882552225p+0,
    0x1.6a09e667f3bcdp+0, 0x1.6dfb23c651a2fp+0, 0x1.71f75e8ec5f74p+0, 0x1.75feb564267c9p+0,
    0x1.7a11473eb0187p+0, 0x1.7e2f336cf4e62p+0, 0x1.82589994cce13p+0, 0x1.868d99b4492edp+0,
    0x1.8ace5422aa0dbp+0, 0x1.8f1ae99157736p+0, 0x1.93737b0cdc5e5p+0, 0x1.97d829fde4e50p+0,
    0x1.9c49182a3f090p+0, 0x1.a0c667b5de565p+0, 0x1.a5503b23e255dp+0, 0x1.a9e6b5579fdbfp+0,
    0x1.ae89f995ad3adp+0, 0x1.b33a2b84f15fbp+0, 0x1.b7f76f2fb5e47p+0, 0x1.bcc1e904bc1d2p+0,
    0x1.c199bdd85529cp+0, 0x1.c67f12e57d14bp+0, 0x1.cb720dcef9069p+0, 0x1.d072d4a07897cp+0,
    0x1.d5818dcfba487p+0, 0x1.da9e603db3285p+0, 0x1.dfc97337b9b5fp+0, 0x1.e502ee78b3ff6p+0,
    0x1.ea4afa2a490dap+0, 0x1.efa1bee615a27p+0, 0x1.f50765b6e4540p+0, 0x1.fa7c1819e90d8p+0,
};
/// 1 / (1 + j/64), rounded to double.
KVARN_MATH_TABLE double kInverseOnePlusJ[64] = {
    0x1.0000000000000p+0, 0x1.f81f81f81f820p-1, 0x1.f07c1f07c1f08p-1, 0x1.e9131abf0b767p-1,
    0x1.e1e1e1e1e1e1ep-1, 0x1.dae6076b981dbp-1, 0x1.d41d41d41d41dp-1, 0x1.cd85689039b0bp-1,
    0x1.c71c71c71c71cp-1, 0x1.c0e070381c0e0p-1, 0x1.bacf914c1bad0p-1, 0x1.b4e81b4e81b4fp-1,
    0x1.af286bca1af28p-1, 0x1.a98ef606a63bep-1, 0x1.a41a41a41a41ap-1, 0x1.9ec8e951033d9p-1,
    0x1.999999999999ap-1, 0x1.948b0fcd6e9e0p-1, 0x1.8f9c18f9c18fap-1, 0x1.8acb90f6bf3aap-1,
    0x1.8618618618618p-1, 0x1.8181818181818p-1, 0x1.7d05f417d05f4p-1, 0x1.78a4c8178a4c8p-1,
    0x1.745d1745d1746p-1, 0x1.702e05c0b8170p-1, 0x1.6c16c16c16c17p-1, 0x1.6816816816817p-1,
    0x1.642c8590b2164p-1, 0x1.6058160581606p-1, 0x1.5c9882b931057p-1, 0x1.58ed2308158edp-1,
    0x1.5555555555555p-1, 0x1.51d07eae2f815p-1, 0x1.4e5e0a72f0539p-1, 0x1.4afd6a052bf5bp-1,
    0x1.47ae147ae147bp-1, 0x1.446f86562d9fbp-1, 0x1.4141414141414p-1, 0x1.3e22cbce4a902p-1,
    0x1.3b13b13b13b14p-1, 0x1.3813813813814p-1, 0x1.3521cfb2b78c1p-1, 0x1.323e34a2b10bfp-1,
    0x1.2f684bda12f68p-1, 0x1.2c9fb4d812ca0p-1, 0x1.29e4129e4129ep-1, 0x1.27350b8812735p-1,
    0x1.2492492492492p-1, 0x1.21fb78121fb78p-1, 0x1.1f7047dc11f70p-1, 0x1.1cf06ada2811dp-1,
    0x1.1a7b9611a7b96p-1, 0x1.1811811811812p-1, 0x1.15b1e5f75270dp-1, 0x1.135c81135c811p-1,
    0x1.1111111111111p-1, 0x1.0ecf56be69c90p-1, 0x1.0c9714fbcda3bp-1, 0x1.0a6810a6810a7p-1,
    0x1.0842108421084p-1, 0x1.0624dd2f1a9fcp-1, 0x1.0410410410410p-1, 0x1.0204081020408p-1,
};
/// log(1 + j/64), rounded to double.
KVARN_MATH_TABLE double kLogOnePlusJ[64] = {
    0x0.0p+0,
    0x1.fc0a8b0fc03e4p-7,
    0x1.f829b0e783300p-6,
    0x1.77458f632dcfcp-5,
    0x1.f0a30c01162a6p-5,
    0x1.341d7961bd1d1p-4,
    0x1.6f0d28ae56b4cp-4,
    0x1.a926d3a4ad563p-4,
    0x1.e27076e2af2e6p-4,
    0x1.0d77e7cd08e59p-3,
    0x1.29552f81ff523p-3,
    0x1.44d2b6ccb7d1ep-3,
    0x1.5ff3070a793d4p-3,
    0x1.7ab890210d909p-3,
    0x1.9525a9cf456b4p-3,
    0x1.af3c94e80bff3p-3,
    0x1.c8ff7c79a9a22p-3,
    0x1.e27076e2af2e6p-3,
    0x1.fb9186d5e3e2bp-3,
    0x1.0a324e27390e3p-2,
    0x1.1675cababa60ep-2,
    0x1.22941fbcf7966p-2,
    0x1.2e8e2bae11d31p-2,
    0x1.3a64c556945eap-2,
    0x1.4618bc21c5ec2p-2,
    0x1.51aad872df82dp-2,
    0x1.5d1bdbf5809cap-2,
    0x1.686c81e9b14afp-2,
    0x1.739d7f6bbd007p-2,
    0x1.7eaf83b82afc3p-2,
    0x1.89a3386c1425bp-2,
    0x1.947941c2116fbp-2,
    0x1.9f323ecbf984cp-2,
    0x1.a9cec9a9a084ap-2,
    0x1.b44f77bcc8f63p-2,
    0x1.beb4d9da71b7cp-2,
    0x1.c8ff7c79a9a22p-2,
    0x1.d32fe7e00ebd5p-2,
    0x1.dd46a04c1c4a1p-2,
    0x1.e744261d68788p-2,
    0x1.f128f5faf06edp-2,
    0x1.faf588f78f31fp-2,
    0x1.02552a5a5d0ffp-1,
    0x1.0723e5c1cdf40p-1,
    0x1.0be72e4252a83p-1,
    0x1.109f39e2d4c97p-1,
    0x1.154c3d2f4d5eap-1,
    0x1.19ee6b467c96fp-1,
    0x1.1e85f5e7040d0p-1,
    0x1.23130d7bebf43p-1,
    0x1.2795e1289b11bp-1,
    0x1.2c0e9ed448e8cp-1,
    0x1.307d7334f10bep-1,
    0x1.34e289d9ce1d3p-1,
    0x1.393e0d3562a1ap-1,
    0x1.3d9026a7156fbp-1,
    0x1.41d8fe84672aep-1,
    0x1.4618bc21c5ec2p-1,
    0x1.4a4f85db03ebbp-1,
    0x1.4e7d811b75bb1p-1,
    0x1.52a2d265bc5abp-1,
    0x1.56bf9d5b3f399p-1,
    0x1.5ad404c359f2dp-1,
    0x1.5ee02a9241675p-1,
};

/// expRounded's constants: 64/ln2, ln2/64 in two parts (the first with 42 significant bits),
/// then the Taylor coefficients 1/720, 1/120, 1/24, 1/6.
KVARN_MATH_CONSTANTS double kExpConstants[7] = {
    0x1.71547652b82fep+6, 0x1.62e42fefa3800p-7, 0x1.ef35793c76730p-51, 0x1.6c16c16c16c17p-10,
    0x1.1111111111111p-7, 0x1.5555555555555p-5, 0x1.5555555555555p-3,
};
/// logRounded's constants: the Taylor coefficients 1/9, 1/7, -1/6, 1/5, 1/3, then ln2 in two
/// parts (the first with 44 significant bits).
KVARN_MATH_CONSTANTS double kLogConstants[7] = {
    0x1.c71c71c71c71cp-4, 0x1.2492492492492p-3,  -0x1.5555555555555p-3, 0x1.999999999999ap-3,
    0x1.5555555555555p-2, 0x1.ef35793c76730p-45, 0x1.62e42fefa3800p-1,
};

// The operations, each rounded once to nearest (never contracted or reassociated).
#if defined(__CUDA_ARCH__)
KVARN_MATH_FN double mul(double a, double b) { return __dmul_rn(a, b); }
KVARN_MATH_FN double add(double a, double b) { return __dadd_rn(a, b); }
KVARN_MATH_FN double fma(double a, double b, double c) { return __fma_rn(a, b, c); }
KVARN_MATH_FN float toFloat(double a) { return __double2float_rn(a); }
KVARN_MATH_FN unsigned floatBits(float a) { return __float_as_uint(a); }
KVARN_MATH_FN double doubleOfBits(long long a) { return __longlong_as_double(a); }
KVARN_MATH_FN unsigned lowBits(double a) { return unsigned(__double2loint(a)); }
#else
KVARN_MATH_FN double mul(double a, double b) { return a * b; }
KVARN_MATH_FN double add(double a, double b) { return a + b; }
KVARN_MATH_FN double fma(double a, double b, double c) { return std::fma(a, b, c); }
KVARN_MATH_FN float toFloat(double a) { return static_cast<float>(a); }
KVARN_MATH_FN unsigned floatBits(float a) {
  unsigned bits;
  std::memcpy(&bits, &a, sizeof bits);
  return bits;
}
KVARN_MATH_FN double doubleOfBits(long long a) {
  double value;
  std::memcpy(&value, &a, sizeof value);
  return value;
}
KVARN_MATH_FN unsigned lowBits(double a) {
  unsigned long long bits;
  std::memcpy(&bits, &a, sizeof bits);
  return unsigned(bits);
}
#endif

/// exp(x) rounded to float, for |x| <= 20 (the Sinkhorn's log scales lie in [-0.3, 10]).
/// x = (64 e + j) ln2/64 + r with |r| <= ln2/128, exp(x) = 2^e 2^(j/64) exp(r), exp(r) by its
/// Taylor polynomial of degree 6 (truncation below 1e-17).
KVARN_MATH_FN float expRounded(float x) {
  const double xd = double(x);
  const double *c = kExpConstants;
  // k = x * 64/ln2 rounded to an integer, half to even, by adding and subtracting 1.5 * 2^52
  // (|x * 64/ln2| < 2^51, where the sum's ulp is 1): the value rint gives, and the integer n in
  // the sum's low bits, without float-to-integer conversions on the GPU.
  constexpr double kRoundShift = 0x1.8p52;
  const double shifted = add(mul(xd, c[0]), kRoundShift);
  const double k = add(shifted, -kRoundShift);
  // ln2/64 in two parts; the first has 42 significant bits, so k times it is exact.
  double r = fma(-k, c[1], xd);
  r = fma(-k, c[2], r);
  double p = fma(r, c[3], c[4]); // 1/720, 1/120
  p = fma(r, p, c[5]);           // 1/24
  p = fma(r, p, c[6]);           // 1/6
  p = fma(r, p, 0.5);
  p = fma(r, p, 1.0);
  p = mul(r, p); // exp(r) - 1
  const int n = int(lowBits(shifted));
  const double t = kExp2Sixtyfourths[n & 63];
  const double scale = doubleOfBits((long long)((n >> 6) + 1023) << 52); // 2^e, e = floor(n/64)
  return toFloat(mul(fma(t, p, t), scale));
}

/// log(x) rounded to float, for x > 0 normal (the Sinkhorn's stds are clamped to [1e-3, 1e3]).
/// x = 2^e m, m in [1, 2), and c = 1 + j/64 the table point at or below m: log(x) = e ln2 + log(c)
/// + log1p(r), r = m/c - 1 in [0, 1/64), log1p(r) by its Taylor polynomial of degree 9
/// (truncation below 1e-19).
KVARN_MATH_FN float logRounded(float x) {
  const unsigned bits = floatBits(x);
  const int e = int(bits >> 23) - 127;
  const int j = int(bits >> 17) & 63;
  // m = 1.f as a double, built from the mantissa bits (exact, no conversion on the GPU).
  const double m = doubleOfBits(0x3ff0000000000000ll | ((long long)(bits & 0x007fffffu) << 29));
  const double r = fma(m, kInverseOnePlusJ[j], -1.0);
  const double *c = kLogConstants;
  double p = fma(r, c[0], -0.125); // 1/9, -1/8
  p = fma(r, p, c[1]);             // 1/7
  p = fma(r, p, c[2]);             // -1/6
  p = fma(r, p, c[3]);             // 1/5
  p = fma(r, p, -0.25);
  p = fma(r, p, c[4]); // 1/3
  p = fma(r, p, -0.5);
  p = fma(r, p, 1.0);
  p = mul(r, p); // log1p(r)
  const double ed = double(e);
  // ln2 in two parts; the first has 44 significant bits, so e times it is exact.
  double s = add(kLogOnePlusJ[j], p);
  s = fma(ed, c[5], s);
  return toFloat(fma(ed, c[6], s));
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
#undef KVARN_MATH_CONSTANTS
