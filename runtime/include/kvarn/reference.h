// CPU reference of KVarN (kvarn-format.md §2-§6): the semantics every kernel is checked against.
#pragma once

#include "kvarn/format.h"
#include "kvarn/half.h"
#include "kvarn/status.h"

#include <cstdint>
#include <span>
#include <vector>

namespace kvarn::reference {

/// The fp16 Sylvester-Hadamard matrix H16 [D][D] (fp16 bits), natural order, scaled by 1/sqrt(D).
std::vector<uint16_t> hadamard16(int headDim);

/// Rotates `rows` rows of `headDim` channels: out[r] = fp16(in[r] · H16), fp32 accumulation.
/// `input` holds `dtype` bits; rows are `inputStride` elements apart. Output is packed fp16.
/// Rejects NaN/Inf input.
Status rotateRows(std::span<const uint16_t> input, DType dtype, int rows, int headDim,
                  size_t inputStride, std::span<uint16_t> output);

/// Result of the variance normalization of an R×C matrix (kvarn-format.md §4.1).
struct Normalization {
  std::vector<float> colScale; ///< best_c [C]
  std::vector<float> rowScale; ///< best_r [R]
  float imbalance = 0;         ///< imbalance of the chosen iterate
  int chosenIteration = 0;     ///< 0 = identity
};

/// Sample standard deviation as the reference computes it: one pass in fp32, var = max(sum x^2/n -
/// mean^2, 0) * n/(n-1), the sums added in a fixed pairwise tree whose leaf pairs fuse the second
/// square into the add (the GPU flush's order; pairwiseSums in quantize.cpp).
float sampleStd(const float *values, size_t count, size_t stride);

/// Runs the log-domain Sinkhorn normalization with best-iterate tracking (kvarn-format.md §4.1).
/// The stds of X = M / c / r are taken in their factored form, as the GPU flush computes them:
/// rowstd(X) = rowstd(M * (1/c)) / r and colstd(X) = colstd(M * (1/r)) / c, each product M * (1/c)
/// (or (1/r)) rounded in fp32, 1/c and 1/r correctly rounded, the division by the line's scale
/// correctly rounded, and the sums in sampleStd's tree. This is the format's math with other
/// rounding than the reference backend's two divisions per element; both forms reproduce the
/// golden records' K codes exactly, and they differ from each other in about as many codes as
/// the direct form's own sums in another order do (docs/design.md, "Flush").
Normalization normalizeVariance(std::span<const float> matrix, int rows, int cols, int iterations);

/// Codes and folded fp16 scales of one quantized R×C matrix (§4.2-§4.3).
struct QuantizedMatrix {
  int rows = 0, cols = 0, bits = 0;
  std::vector<uint8_t> codes;          ///< [R][C], unpacked
  std::vector<uint16_t> rowScale;      ///< fp16 [R] = best_r * scale
  std::vector<uint16_t> rowZeroPoint;  ///< fp16 [R] = best_r * lo
  std::vector<uint16_t> colScale;      ///< fp16 [C] = best_c
  /// (code * rowScale + rowZeroPoint) * colScale, fp32.
  float reconstruct(int row, int col) const;
};

/// Normalizes, rounds (RTN, half to even) and folds one matrix. Rejects NaN/Inf.
Expected<QuantizedMatrix> quantizeMatrix(std::span<const float> matrix, int rows, int cols,
                                         int bits, int iterations);
/// Rounds and folds one matrix with the given scales (§4.2-§4.3: N = M / colScale / rowScale,
/// two true divisions): quantizeMatrix after its normalization, for scales found another way.
Expected<QuantizedMatrix> quantizeNormalized(std::span<const float> matrix, int rows, int cols,
                                             int bits, const Normalization &scales);

/// Packs codes (`bits` in {2,4,8}), little-endian within each byte.
Status packCodes(std::span<const uint8_t> codes, int bits, std::span<uint8_t> packed);
/// Unpacks `codes.size()` codes.
Status unpackCodes(std::span<const uint8_t> packed, int bits, std::span<uint8_t> codes);

/// Quantizes one (block, kv-head) tile into a record. `keyRows`/`valueRows` are the rotated fp16
/// rows [G][D] of that head, `rowStride` elements apart (Hk*D inside a pool page).
/// The record span must be exactly tileBytesAligned long; padding is zeroed.
Status writeRecord(const Format &format, std::span<const uint16_t> keyRows,
                   std::span<const uint16_t> valueRows, size_t rowStride,
                   std::span<uint8_t> record);

/// Both tensors of a record, decoded (codes unpacked, scales as fp16 bits).
struct DecodedRecord {
  QuantizedMatrix key;   ///< rows = channels [D], cols = tokens [G]
  QuantizedMatrix value; ///< rows = tokens [G], cols = channels [D]
};

/// Parses a record. Rejects a wrong-size span and non-finite scales.
Expected<DecodedRecord> readRecord(const Format &format, std::span<const uint8_t> record);

/// Reconstructs K̂ and V̂ of a record, token-major [G][D] fp32 (rotated frame).
Status dequantizeRecord(const Format &format, std::span<const uint8_t> record,
                        std::span<float> keyRows, std::span<float> valueRows);

/// The engine memory model of one layer (architecture.md), host pointers.
struct PagedCacheView {
  std::span<const uint8_t> records;     ///< [numBlocks][Hk][tileBytesAligned]
  std::span<const uint16_t> poolKey;    ///< fp16 [poolSlots][G][Hk][D], rotated rows
  std::span<const uint16_t> poolValue;  ///< fp16 [poolSlots][G][Hk][D]
  std::span<const int32_t> blockToSlot; ///< [numBlocks], -1 = quantized record
};

/// One decode call: one query token per request.
struct DecodeProblem {
  Format format;
  int batch = 0;
  int numQueryHeads = 0;
  int numKvHeads = 0;
  int maxBlocksPerRequest = 0;
  float softmaxScale = 0; ///< 0 means 1/sqrt(D)
  DType dtype = DType::F16;
  std::span<const uint16_t> query;      ///< [B][Hq][D] un-rotated, `dtype` bits
  std::span<const int32_t> blockTable;  ///< [B][maxBlocks], -1 past the end
  std::span<const int32_t> seqLens;     ///< [B]
};

/// Float64 decode over the quantized paged cache: q_rot = fp16(q·H16), attention in float64 over
/// the dequantized cache (split into `numSplits` runs of whole blocks merged by LSE),
/// out = dtype(fp16(fp16(out_rot)·H16)): fp16 from the rotation on, whatever the query dtype, as
/// the format stores fp16. A request with seq_len 0 gets an all-zero output.
/// `out` is [B][Hq][D] in `dtype`; `unconverted`, when not empty, gets the same outputs before
/// their conversion: fp16(out_rot)·H16 with fp32 sums (decodeOutputError's exact values).
Status decodeQuantized(const DecodeProblem &problem, const PagedCacheView &cache, int numSplits,
                       std::span<uint16_t> out, std::span<float> unconverted = {});

/// Float64 decode over an unquantized fp16 paged cache [numBlocks][G][Hk][D] (no rotation).
Status decodeFp16(const DecodeProblem &problem, std::span<const uint16_t> keyCache,
                  std::span<const uint16_t> valueCache, int numBlocks, std::span<uint16_t> out);

/// Synthetic fp16 key rows [G][D] with outlier channels, per-channel bias and per-token scale
/// (the distribution of the golden vectors), rotated by H16 and returned as the quantizer's
/// M[D][G] view (rows = channels).
Expected<std::vector<float>> syntheticRotatedKeyMatrix(int tileTokens, int headDim, uint64_t seed);

/// Relative Frobenius error ||a-b|| / ||b||.
double relativeFrobeniusError(std::span<const float> actual, std::span<const float> expected);

/// The error of a decode kernel's outputs against decodeQuantized's, relative to their norm.
/// fp16 outputs: relativeFrobeniusError(actual, expected). bf16 outputs: the error beyond the
/// output's own rounding, sqrt(max(0, ||actual - x||^2 - ||expected - x||^2)) / ||x||, with x
/// the reference's outputs before their conversion (`unconverted`). A bf16 step is 2^-8 of the
/// value: rounding alone puts a bf16 output about 1.7e-3 from x, and a kernel whose result is
/// 2e-4 off before the rounding flips enough outputs near a rounding boundary by a whole step to
/// be 1.1e-3 from the reference's bf16 outputs (scripts/bf16-rounding-error.py). A flipped output
/// sits about as far from x as the reference's, so this measure counts what the kernel adds to
/// the rounding (in quadrature). NaN in `actual` gives NaN; mismatched sizes give infinity.
double decodeOutputError(DType dtype, std::span<const float> actual,
                         std::span<const float> expected, std::span<const float> unconverted);

} // namespace kvarn::reference
