// kvarn device library: shared building blocks (integer types, fp16 helpers, MMA, unpacking,
// warp reductions, FWHT, async copies). Every function is bounded; kernels come from the IR.
#pragma once

// NVRTC ships no headers: the fp16/bf16 support below is the library's own (PTX conversions).
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;

namespace kvarn {
namespace dev {

/// Storage types of fp16 and bf16 values (2 bytes, raw bits).
struct Half {
  unsigned short bits;
};
struct BFloat16 {
  unsigned short bits;
};

#define KVARN_INFINITY (__int_as_float(0x7f800000))

__device__ __forceinline__ float halfToFloat(Half h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.bits));
  return f;
}
__device__ __forceinline__ Half floatToHalf(float f) {
  Half h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
  return h;
}
__device__ __forceinline__ float bf16ToFloat(BFloat16 b) { return __uint_as_float(uint32_t(b.bits) << 16); }
__device__ __forceinline__ BFloat16 floatToBf16(float f) {
  uint32_t x = __float_as_uint(f);
  BFloat16 b;
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    b.bits = (unsigned short)((x >> 16) | 0x40u);
    return b;
  }
  x += 0x7fffu + ((x >> 16) & 1u); // round to nearest even
  b.bits = (unsigned short)(x >> 16);
  return b;
}
/// fp16 pairs held in one 32-bit register (low half = first element).
__device__ __forceinline__ uint32_t packHalf2(float low, float high) {
  uint32_t r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(high), "f"(low));
  return r;
}
__device__ __forceinline__ float2 unpackHalf2(uint32_t pair) {
  unsigned short low, high;
  asm("mov.b32 {%0, %1}, %2;" : "=h"(low), "=h"(high) : "r"(pair));
  return make_float2(halfToFloat(Half{low}), halfToFloat(Half{high}));
}

/// a * b - c per fp16 half, rounded once (the negation is HFMA2's operand modifier).
__device__ __forceinline__ uint32_t hfma2Sub(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t r;
  asm("{.reg .b32 n;\n neg.f16x2 n, %3;\n fma.rn.f16x2 %0, %1, %2, n;\n}"
      : "=r"(r)
      : "r"(a), "r"(b), "r"(c));
  return r;
}

/// a * b per fp16 half, rounded once (no contraction into a later add).
__device__ __forceinline__ uint32_t hmul2(uint32_t a, uint32_t b) {
  uint32_t r;
  asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  return r;
}

template <typename A, typename B> struct SameType { static constexpr bool value = false; };
template <typename A> struct SameType<A, A> { static constexpr bool value = true; };

/// Two activation-dtype values packed in 32 bits (low half first) as fp32.
template <typename T> __device__ __forceinline__ float2 unpackPair(uint32_t bits) {
  if constexpr (SameType<T, Half>::value)
    return unpackHalf2(bits);
  else
    return make_float2(__uint_as_float(bits << 16), __uint_as_float(bits & 0xffff0000u));
}

/// Loads `Words` 32-bit words (2 * Words activation values) with the widest aligned vectors.
template <int Words> __device__ __forceinline__ void loadWords(uint32_t (&w)[Words], const void *source) {
  if constexpr (Words % 4 == 0) {
#pragma unroll
    for (int k = 0; k < Words / 4; ++k) {
      const uint4 v = reinterpret_cast<const uint4 *>(source)[k];
      w[4 * k] = v.x, w[4 * k + 1] = v.y, w[4 * k + 2] = v.z, w[4 * k + 3] = v.w;
    }
  } else if constexpr (Words == 2) {
    const uint2 v = *reinterpret_cast<const uint2 *>(source);
    w[0] = v.x, w[1] = v.y;
  } else {
#pragma unroll
    for (int k = 0; k < Words; ++k)
      w[k] = reinterpret_cast<const uint32_t *>(source)[k];
  }
}

/// Stores `Words` 32-bit words with the widest vectors their count allows (the target is aligned
/// to 4 * min(Words, 4) bytes).
template <int Words> __device__ __forceinline__ void storeWords(void *target, const uint32_t (&w)[Words]) {
  if constexpr (Words % 4 == 0) {
#pragma unroll
    for (int k = 0; k < Words / 4; ++k)
      reinterpret_cast<uint4 *>(target)[k] = make_uint4(w[4 * k], w[4 * k + 1], w[4 * k + 2], w[4 * k + 3]);
  } else if constexpr (Words == 2) {
    *reinterpret_cast<uint2 *>(target) = make_uint2(w[0], w[1]);
  } else {
#pragma unroll
    for (int k = 0; k < Words; ++k)
      reinterpret_cast<uint32_t *>(target)[k] = w[k];
  }
}

/// Raw storage of `Bytes` packed bytes, loaded with one vector instruction.
template <int Bytes> struct Packed;
template <> struct Packed<2> { typedef unsigned short Type; };
template <> struct Packed<4> { typedef unsigned int Type; };
template <> struct Packed<8> { typedef uint2 Type; };
template <> struct Packed<16> { typedef uint4 Type; };

/// The 32-bit part `index` of a packed word (zero-extended for 2-byte words).
__device__ __forceinline__ uint32_t part32(unsigned short w, int) { return w; }
__device__ __forceinline__ uint32_t part32(unsigned int w, int) { return w; }
__device__ __forceinline__ uint32_t part32(uint2 w, int index) { return index == 0 ? w.x : w.y; }
__device__ __forceinline__ uint32_t part32(uint4 w, int index) {
  return index == 0 ? w.x : index == 1 ? w.y : index == 2 ? w.z : w.w;
}

/// Byte `byteIndex` of `low` and of `high`, each duplicated into one 16-bit half:
/// result = [low.b, low.b, high.b, high.b] (one PRMT).
__device__ __forceinline__ uint32_t duplicateBytes(uint32_t low, uint32_t high, int byteIndex) {
  const uint32_t selector = byteIndex | (byteIndex << 4) | ((4 + byteIndex) << 8) |
                            ((4 + byteIndex) << 12);
  return __byte_perm(low, high, selector);
}

/// 2^x on the SFU (ex2.approx.ftz: about 2 ulp; results below 2^-126 flush to zero, 2^-inf = 0).
__device__ __forceinline__ float fastExp2(float x) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(r) : "f"(x));
  return r;
}

/// How `codePair` turns packed codes into fp16 MMA operands: code * 2^(bit - 24) in one AND.
/// With a zero exponent field a 16-bit half is a subnormal worth its mantissa times 2^-24, so the
/// masked code is exact with no offset to subtract (the earlier form, a LOP3 to 1024 + code * 2^bit
/// and an HFMA2 to the code, took two instructions per pair). The tensor cores multiply fp16
/// subnormals exactly, but the fp32 sums of an MMA over codes low in the mantissa keep fewer bits
/// (measured with V codes at bits 0..7: an output error that grows with the context, 1.1e-3 at
/// 128K tokens against 1.4e-4).
enum class CodeForm {
  /// In place. Used for K, whose score errors do not add up over pages (128K: 2.1e-4, as with
  /// the two-instruction form).
  Subnormal,
  /// Each code first moved to mantissa bits 6..9 (one shift per word, shared by half the codes):
  /// one unit is 2^-18 or 2^-16, close to the normal range. Used for V.
  SubnormalHigh,
};

/// Where code `k` of a byte (bits k*Bits ..) is read in `Form`, from a 16-bit half that holds
/// the byte twice ([byte, byte], see `duplicateBytes`): the right shift applied to the word
/// first, and the bit the code then starts at. SubnormalHigh reads 2-bit codes 0 and 3 in place
/// (bit 8 of the upper copy, bit 6 of the lower one) and codes 1 and 2 after a shift by 4 (bits
/// 6, 8); 4-bit codes after a shift by 2 or 6 (bit 6). Bits shifted in from the other half land
/// above bit 9, outside every mask.
template <CodeForm Form, int Bits> __host__ __device__ constexpr int codeSourceShift(int k) {
  return Form == CodeForm::Subnormal ? 0 : Bits == 2 ? (k == 1 || k == 2 ? 4 : 0) : 2 + 4 * k;
}
template <CodeForm Form, int Bits> __host__ __device__ constexpr int codeBit(int k) {
  return Form == CodeForm::Subnormal ? k * Bits : Bits == 2 ? (k == 0 || k == 2 ? 8 : 6) : 6;
}

/// Every code of a byte is read from its own bits (bit + shift is code k's position in the lower
/// or the upper copy), inside the fp16 mantissa (bits 0..9), and the shift brings the other
/// half's bits no lower than bit 10.
template <CodeForm Form, int Bits> __host__ __device__ constexpr bool codeReadsAreExact() {
  for (int k = 0; k < 8 / Bits; ++k) {
    const int bit = codeBit<Form, Bits>(k), shift = codeSourceShift<Form, Bits>(k);
    if (bit + Bits > 10 || 16 - shift < 10)
      return false;
    if (bit + shift != k * Bits && bit + shift != 8 + k * Bits)
      return false;
  }
  return true;
}
static_assert(codeReadsAreExact<CodeForm::Subnormal, 2>() &&
                  codeReadsAreExact<CodeForm::Subnormal, 4>() &&
                  codeReadsAreExact<CodeForm::SubnormalHigh, 2>() &&
                  codeReadsAreExact<CodeForm::SubnormalHigh, 4>(),
              "a code form reads a code from the wrong bits or outside the mantissa");

/// The value of one unit at bit `bit` of an fp16 subnormal: 2^(bit - 24).
__host__ __device__ constexpr float bitUnit(int bit) { return float(1 << bit) / 16777216.0f; }

/// The value one unit of code `k` has in `codePair`'s output.
template <CodeForm Form, int Bits> __host__ __device__ constexpr float codeUnit(int k) {
  return bitUnit(codeBit<Form, Bits>(k));
}

/// Code `K` of the byte held twice in each 16-bit half of `duplicated`, for both halves, as an
/// exact fp16 pair in `Form` (one code unit is `codeUnit`). The codes are not centered: the MMAs
/// accumulate in fp32 over at most D or G terms of one sign pattern, so the zero-point and bias
/// terms start the accumulators (in code units) instead of being corrected afterwards.
template <CodeForm Form, int Bits, int K>
__device__ __forceinline__ uint32_t codePair(uint32_t duplicated) {
  constexpr uint32_t mask = ((1u << Bits) - 1u) << codeBit<Form, Bits>(K);
  return (duplicated >> codeSourceShift<Form, Bits>(K)) & (mask | (mask << 16));
}

/// The four A registers of an m16n8k16 code tile from two duplicated code words (rows r and
/// r + 8): code `K` of each byte in rows r and code `K + 1` in rows r + 8.
template <CodeForm Form, int Bits, int K>
__device__ __forceinline__ void codeFragment(uint32_t first, uint32_t second, uint32_t &a0,
                                             uint32_t &a1, uint32_t &a2, uint32_t &a3) {
  a0 = codePair<Form, Bits, K>(first);
  a1 = codePair<Form, Bits, K + 1>(first);
  a2 = codePair<Form, Bits, K>(second);
  a3 = codePair<Form, Bits, K + 1>(second);
}

/// D += A(16x16, fp16, row) * B(16x8, fp16, col), fp32 accumulate (tensor cores).
__device__ __forceinline__ void mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
               "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/// Four 8x8 matrices of 16-bit elements from shared memory, transposed (LDMATRIX.TRANS): lane L
/// gives the address of row L % 8 of matrix L / 8 (16 bytes, 16-byte aligned); lane 4i + t
/// receives, from matrix j, elements (2t, i) and (2t + 1, i) in the low and high half of rj.
__device__ __forceinline__ void loadMatricesTransposed(const void *row, uint32_t &r0, uint32_t &r1,
                                                       uint32_t &r2, uint32_t &r3) {
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(address));
}

/// Transposes an 8x8 matrix of 16-bit values held one pair per lane (MOVMATRIX).
__device__ __forceinline__ uint32_t transpose8x8(uint32_t value) {
  uint32_t result;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(result) : "r"(value));
  return result;
}

__device__ __forceinline__ float warpMaxXor(float value, int firstMask, int lastMask) {
  for (int mask = firstMask; mask <= lastMask; mask <<= 1)
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, mask));
  return value;
}
__device__ __forceinline__ float warpSumXor(float value, int firstMask, int lastMask) {
  for (int mask = firstMask; mask <= lastMask; mask <<= 1)
    value += __shfl_xor_sync(0xffffffffu, value, mask);
  return value;
}
__device__ __forceinline__ float warpMin(float value) {
  for (int mask = 1; mask < 32; mask <<= 1)
    value = fminf(value, __shfl_xor_sync(0xffffffffu, value, mask));
  return value;
}

/// A 4-byte shared-memory load that the compiler does not merge with its neighbours (so that
/// the value lands in the register that consumes it rather than being copied out of a pair).
__device__ __forceinline__ uint32_t loadShared32(const void *shared) {
  uint32_t value;
  asm volatile("ld.shared.b32 %0, [%1];\n"
               : "=r"(value)
               : "r"(static_cast<uint32_t>(__cvta_generic_to_shared(shared))));
  return value;
}

/// 16-byte asynchronous global -> shared copy (bypasses L1), and its fences.
__device__ __forceinline__ void copyAsync16(void *shared, const void *global) {
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(address), "l"(global));
}
/// copyAsync16 if `enabled` (a predicated copy: no branch around it).
__device__ __forceinline__ void copyAsync16If(void *shared, const void *global, bool enabled) {
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(shared));
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %2, 0;\n"
               " @p cp.async.cg.shared.global [%0], [%1], 16;\n}\n" ::"r"(address),
               "l"(global), "r"(int(enabled)));
}
/// A warp copies `BYTES` (a multiple of 16) contiguous bytes, 16 per lane and round; the rounds
/// are unrolled and only a partial last round is predicated, so no loop or branch remains.
template <int BYTES>
__device__ __forceinline__ void copyAsyncWarp(void *shared, const void *global, int lane) {
  static_assert(BYTES % 16 == 0, "16-byte chunks");
  constexpr int CHUNKS = BYTES / 16;
#pragma unroll
  for (int round = 0; round < (CHUNKS + 31) / 32; ++round) {
    const int chunk = lane + 32 * round;
    unsigned char *to = static_cast<unsigned char *>(shared) + 16 * chunk;
    const unsigned char *from = static_cast<const unsigned char *>(global) + 16 * chunk;
    if (CHUNKS % 32 == 0 || round < CHUNKS / 32)
      copyAsync16(to, from);
    else
      copyAsync16If(to, from, chunk < CHUNKS);
  }
}
__device__ __forceinline__ void copyAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
/// Waits until at most `Pending` of this thread's most recent copy groups are still in flight.
template <int Pending> __device__ __forceinline__ void copyAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
}

/// Activation dtype conversions.
template <typename T> __device__ __forceinline__ float toFloat(T value);
template <> __device__ __forceinline__ float toFloat<Half>(Half value) { return halfToFloat(value); }
template <> __device__ __forceinline__ float toFloat<BFloat16>(BFloat16 value) {
  return bf16ToFloat(value);
}
template <typename T> __device__ __forceinline__ T fromFloat(float value);
template <> __device__ __forceinline__ Half fromFloat<Half>(float value) { return floatToHalf(value); }
template <> __device__ __forceinline__ BFloat16 fromFloat<BFloat16>(float value) {
  return floatToBf16(value);
}
/// Rounds through the activation dtype.
template <typename T> __device__ __forceinline__ float roundTo(float value) {
  return toFloat<T>(fromFloat<T>(value));
}
/// An output value in the activation dtype: the format's fp16 value, converted (bf16 outputs
/// are bf16(fp16(x)), as the format keeps fp16 up to the output).
template <typename T> __device__ __forceinline__ T outputValue(float value) {
  if constexpr (SameType<T, Half>::value)
    return floatToHalf(value);
  else
    return fromFloat<T>(roundTo<Half>(value));
}

/// fp16 of 1/sqrt(D) as the reference's H16 holds it.
template <int D> __device__ __forceinline__ float hadamardScale() {
  return halfToFloat(floatToHalf(1.0f / sqrtf(float(D))));
}

/// Starts pulling the 128-byte line at `address` into L2 (no register, no wait).
__device__ __forceinline__ void prefetchL2(const void *address) {
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(address));
}

/// n / d for a divisor d given as (multiplier, shift1, shift2) by the host (unsignedDivisor in
/// launch.h): a multiply-high, a subtract, an add and two shifts instead of a division.
__device__ __forceinline__ unsigned divideInvariant(unsigned n, unsigned multiplier, int shift1,
                                                   int shift2) {
  const unsigned t = __umulhi(multiplier, n);
  return (t + ((n - t) >> shift1)) >> shift2;
}

/// Programmatic dependent launch (sm_90 and later; no-ops before). A kernel launched after this
/// one with programmatic stream serialization may start once every CTA here has called
/// releaseDependents (or exited); it calls awaitPrerequisites before it reads anything this one
/// writes, which waits for this grid to complete and its writes to be visible. Without that
/// launch attribute both return at once.
__device__ __forceinline__ void releaseDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void awaitPrerequisites() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

/// The in-lane butterfly levels h = FROM, 2 FROM, ... < TO of x[E] (element bits log2(FROM) up to
/// log2(TO) - 1).
template <int E, int FROM, int TO> __device__ __forceinline__ void butterflyLevels(float (&x)[E]) {
  static_assert(E >= 1 && (E & (E - 1)) == 0 && FROM >= 1 && TO <= E, "powers of two");
#pragma unroll
  for (int h = FROM; h < TO; h <<= 1)
#pragma unroll
    for (int e = 0; e < E; ++e)
      if ((e & h) == 0) {
        const float a = x[e], b = x[e + h];
        x[e] = a + b;
        x[e + h] = a - b;
      }
}

/// The butterfly levels across a group of LANES lanes (aligned in the warp), each on all E values.
template <int E, int LANES>
__device__ __forceinline__ void laneGroupLevels(float (&x)[E], int laneInGroup) {
  static_assert(LANES >= 1 && LANES <= 32 && (LANES & (LANES - 1)) == 0, "powers of two");
#pragma unroll
  for (int laneMask = 1; laneMask < LANES; laneMask <<= 1) {
    // partner + x (lower lane) or partner - x (upper lane) as one fma with a sign of +-1: the
    // product is exact, so the result is the same correctly rounded sum, without a select.
    const float sign = (laneInGroup & laneMask) != 0 ? -1.0f : 1.0f;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const float partner = __shfl_xor_sync(0xffffffffu, x[e], laneMask);
      x[e] = __fmaf_rn(sign, x[e], partner);
    }
  }
}

/// Unnormalized Walsh-Hadamard butterflies of one row of E * LANES values held by LANES
/// consecutive lanes, lane l holding the E contiguous values [E*l, E*l + E): log2(E) levels inside
/// the lane, then log2(LANES) across lanes (shuffles; call with the whole warp converged). The
/// levels run by increasing stride with `a + b`, `a - b` per pair (natural order; H16 up to the
/// scale and summation order), so every caller with the same row gets the same bits: the
/// query rotation and the output un-rotation of decode and of its merge kernel, and append,
/// whose lanes hold interleaved pieces but run the same levels in the same order.
template <int E, int LANES>
__device__ __forceinline__ void laneGroupFwht(float (&x)[E], int laneInGroup) {
  butterflyLevels<E, 1, E>(x);
  laneGroupLevels<E, LANES>(x, laneInGroup);
}

/// The alignment loadPairs's vector path needs: its widest vector, at most 16 bytes.
template <int Words> __device__ __forceinline__ constexpr uint64_t pairVectorBytes() {
  return 4 * Words < 16 ? 4 * Words : 16;
}

/// Loads 2 * Words activation values from `source` as packed pairs: vector loads when the
/// caller checked their alignment (pairVectorBytes), 16-bit loads otherwise.
template <int Words>
__device__ __forceinline__ void loadPairs(uint32_t (&w)[Words], const void *source, bool vector) {
  if (vector) {
    loadWords(w, source);
    return;
  }
  const unsigned short *element = static_cast<const unsigned short *>(source);
#pragma unroll
  for (int k = 0; k < Words; ++k)
    w[k] = uint32_t(element[2 * k]) | (uint32_t(element[2 * k + 1]) << 16);
}

/// Record layout constants (kvarn-format.md §5).
template <int KB, int VB, int G, int D, bool COMPACT> struct RecordLayout {
  static constexpr int keyPacked = 0;
  static constexpr int keyScaleCol = D * G * KB / 8;
  static constexpr int keyZeroPoint = keyScaleCol + 2 * D;
  static constexpr int keyScaleRow = keyZeroPoint + 2 * D;
  static constexpr int valuePacked = keyScaleRow + 2 * G;
  static constexpr int valueScaleCol = valuePacked + G * D * VB / 8;
  static constexpr int valueScaleRow = valueScaleCol + 2 * D;
  static constexpr int valueZeroPoint = valueScaleRow + 2 * G;
  static constexpr int tileBytes = valueZeroPoint + 2 * G;
  static constexpr int slotBytes = (tileBytes + G - 1) / G;
  static constexpr int powerOfTwo(int x) { return x <= 1 ? 1 : 2 * powerOfTwo((x + 1) / 2); }
  static constexpr int tileBytesAligned =
      (D <= 128 || COMPACT) ? (tileBytes + 7) / 8 * 8 : powerOfTwo(slotBytes) * G;
  /// Scale regions staged per page: K (s_col, zp, s_row), then V (s_col, s_row, zp).
  static constexpr int keyScaleBytes = 4 * D + 2 * G;
  static constexpr int valueScaleBytes = 2 * D + 4 * G;
};

/// Dynamic shared memory of this launch (bytes).
__device__ __forceinline__ uint32_t dynamicSharedBytes() {
  uint32_t bytes;
  asm volatile("mov.u32 %0, %%dynamic_smem_size;\n" : "=r"(bytes));
  return bytes;
}

} // namespace dev
} // namespace kvarn
