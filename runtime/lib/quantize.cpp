// Reference rotation, variance normalization, RTN, folding and packing (kvarn-format.md §2, §4).
#include "kvarn/reference.h"
#include "kvarn/roundedmath.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <random>
#include <string>

namespace kvarn::reference {

std::vector<uint16_t> hadamard16(int headDim) {
  const size_t d = static_cast<size_t>(headDim);
  const float magnitude = 1.0f / std::sqrt(static_cast<float>(headDim));
  std::vector<uint16_t> h(d * d);
  for (size_t i = 0; i < d; ++i)
    for (size_t j = 0; j < d; ++j)
      h[i * d + j] = floatToHalf(__builtin_popcountll(i & j) & 1 ? -magnitude : magnitude);
  return h;
}

Status rotateRows(std::span<const uint16_t> input, DType dtype, int rows, int headDim,
                  size_t inputStride, std::span<uint16_t> output) {
  if (Status s = validateHeadDim(headDim); !s)
    return s;
  const size_t d = static_cast<size_t>(headDim);
  if (rows < 0 || inputStride < d)
    return makeError(ErrorCode::InvalidArgument, "rotateRows: bad rows/stride");
  if (rows > 0 && input.size() < (static_cast<size_t>(rows) - 1) * inputStride + d)
    return makeError(ErrorCode::BufferSize, "rotateRows: input holds " +
                                                std::to_string(input.size()) +
                                                " elements, too few for the rows requested");
  if (output.size() != static_cast<size_t>(rows) * d)
    return makeError(ErrorCode::BufferSize, "rotateRows: output must hold rows*head_dim = " +
                                                std::to_string(static_cast<size_t>(rows) * d) +
                                                " elements, got " + std::to_string(output.size()));
  std::vector<float> h(d * d);
  {
    std::vector<uint16_t> h16 = hadamard16(headDim);
    for (size_t i = 0; i < d * d; ++i)
      h[i] = halfToFloat(h16[i]);
  }
  std::vector<float> row(d);
  for (size_t r = 0; r < static_cast<size_t>(rows); ++r) {
    for (size_t c = 0; c < d; ++c) {
      row[c] = dtypeToFloat(input[r * inputStride + c], dtype);
      if (!std::isfinite(row[c]))
        return makeError(ErrorCode::InvalidData, "rotateRows: non-finite input at row " +
                                                     std::to_string(r) + ", channel " +
                                                     std::to_string(c));
    }
    for (size_t j = 0; j < d; ++j) {
      float acc = 0;
      for (size_t c = 0; c < d; ++c)
        acc += row[c] * h[c * d + j];
      output[r * d + j] = floatToHalf(acc);
    }
  }
  return Status::success();
}

namespace {
/// The fp32 sum and sum of squares of `count` > 0 values, added in a fixed pairwise tree: a line
/// of n values splits into its first bit_floor(n - 1) values and the rest, so a line of 2^k values
/// adds in pairs, pairs of pairs, and so on. A pair (a, b) gives (a + b, fma(b, b, a*a)), a*a
/// rounded in fp32; a lone value (x, x*x). The GPU flush adds in the same tree (each thread a
/// power-of-two segment of whole pairs, the segments pairwise), so both give the same bits in any
/// summation layout.
std::pair<float, float> pairwiseSums(const float *values, size_t count, size_t stride) {
  if (count == 1)
    return {values[0], values[0] * values[0]};
  if (count == 2)
    return {values[0] + values[stride],
            std::fma(values[stride], values[stride], values[0] * values[0])};
  const size_t half = std::bit_floor(count - 1);
  const auto [sum, squares] = pairwiseSums(values, half, stride);
  const auto [restSum, restSquares] = pairwiseSums(values + half * stride, count - half, stride);
  return {sum + restSum, squares + restSquares};
}
} // namespace

float sampleStd(const float *values, size_t count, size_t stride) {
  if (count == 0)
    return 0.0f;
  const auto [sum, sumSquares] = pairwiseSums(values, count, stride);
  const float n = static_cast<float>(count);
  const float mean = sum / n;
  const float variance = std::max(sumSquares / n - mean * mean, 0.0f);
  return std::sqrt(variance * (n / (n - 1.0f)));
}

namespace {

struct StdVectors {
  std::vector<float> rows, cols;
};

/// The row and column stds of a [rows][cols] matrix.
StdVectors rowColStd(std::span<const float> x, int rows, int cols) {
  StdVectors out;
  out.rows.resize(rows);
  for (int r = 0; r < rows; ++r)
    out.rows[r] = sampleStd(&x[static_cast<size_t>(r) * cols], cols, 1);
  out.cols.resize(cols);
  for (int c = 0; c < cols; ++c)
    out.cols[c] = sampleStd(&x[c], rows, cols);
  return out;
}

float imbalanceOf(const StdVectors &s) {
  auto ratio = [](const std::vector<float> &v) {
    auto [lo, hi] = std::minmax_element(v.begin(), v.end());
    return *hi / std::max(*lo, 1e-8f);
  };
  return ratio(s.cols) + ratio(s.rows);
}

void applyScales(std::span<const float> m, const std::vector<float> &colScale,
                 const std::vector<float> &rowScale, int rows, int cols, std::vector<float> &x) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      size_t i = static_cast<size_t>(r) * cols + c;
      x[i] = m[i] / colScale[c] / rowScale[r];
    }
}

/// fp16 of a folded scale. Where the reference would overflow to Inf (a tile near the fp16 limit
/// whose normalization divides by < 1), saturate to +-65504 so every record stays finite.
uint16_t floatToHalfSaturate(float value) {
  return floatToHalf(std::min(std::max(value, -65504.0f), 65504.0f));
}

float clampf(float v, float lo, float hi) { return std::min(std::max(v, lo), hi); }

/// log and exp of a float by the same sequence of fp32 operations the GPU flush runs
/// (roundedmath.h), so both agree bit for bit where fp32 libraries differ in the last place. An
/// ill-conditioned tile (a mean far above the spread) turns one such ulp into visible code
/// differences.
using roundedmath::expFloat;
using roundedmath::logFloat;

} // namespace

Normalization normalizeVariance(std::span<const float> matrix, int rows, int cols,
                                int iterations) {
  Normalization result;
  result.colScale.assign(cols, 1.0f);
  result.rowScale.assign(rows, 1.0f);
  const size_t r = static_cast<size_t>(rows), c = static_cast<size_t>(cols);
  // Iteration 0: the stds of M itself. Afterwards the column stds that start an iteration are the
  // ones the previous iteration's imbalance measured (X has not changed since).
  StdVectors stds = rowColStd(matrix, rows, cols);
  result.imbalance = imbalanceOf(stds);
  std::vector<float> logc(c, 0.0f), logr(r, 0.0f), expc(c, 1.0f), expr(r, 1.0f);
  std::vector<float> colInverse(c), rowInverse(r), y(matrix.size());
  for (int it = 1; it <= iterations; ++it) {
    for (size_t j = 0; j < c; ++j) {
      logc[j] = clampf(logc[j] + logFloat(clampf(stds.cols[j], 1e-3f, 1e3f)), -0.3f, 10.0f);
      expc[j] = expFloat(logc[j]);
      colInverse[j] = 1.0f / expc[j];
    }
    // Row stds of X = M / c / r as rowstd(M * (1/c)) / r: the old r's for the row step, the new
    // ones for the imbalance.
    for (size_t i = 0; i < r; ++i)
      for (size_t j = 0; j < c; ++j)
        y[i * c + j] = matrix[i * c + j] * colInverse[j];
    for (size_t i = 0; i < r; ++i) {
      const float unscaled = sampleStd(&y[i * c], c, 1);
      logr[i] = clampf(logr[i] + logFloat(clampf(unscaled / expr[i], 1e-3f, 1e3f)), -0.3f, 10.0f);
      expr[i] = expFloat(logr[i]);
      stds.rows[i] = unscaled / expr[i];
    }
    // Column stds as colstd(M * (1/r)) / c.
    for (size_t i = 0; i < r; ++i) {
      rowInverse[i] = 1.0f / expr[i];
      for (size_t j = 0; j < c; ++j)
        y[i * c + j] = matrix[i * c + j] * rowInverse[i];
    }
    for (size_t j = 0; j < c; ++j)
      stds.cols[j] = sampleStd(&y[j], r, c) / expc[j];
    const float imbalance = imbalanceOf(stds);
    if (imbalance <= result.imbalance) { // ties: the later iterate wins
      result.imbalance = imbalance;
      result.colScale = expc;
      result.rowScale = expr;
      result.chosenIteration = it;
    }
  }
  return result;
}

Expected<std::vector<float>> syntheticRotatedKeyMatrix(int tileTokens, int headDim,
                                                      uint64_t seed) {
  const int g = tileTokens, d = headDim;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> channelScale(d), channelBias(d), tokenScale(g);
  for (int c = 0; c < d; ++c) {
    channelScale[c] = std::exp(0.7f * normal(rng)) * (c % 33 == 5 ? 9.0f : 1.0f); // ~3% outliers
    channelBias[c] = 0.5f * normal(rng);
  }
  for (int t = 0; t < g; ++t)
    tokenScale[t] = std::exp(0.5f * normal(rng)) * (t == 0 ? 4.0f : 1.0f);
  std::vector<uint16_t> rows(static_cast<size_t>(g) * d), rotated(rows.size());
  for (int t = 0; t < g; ++t)
    for (int c = 0; c < d; ++c)
      rows[static_cast<size_t>(t) * d + c] =
          floatToHalf((normal(rng) * channelScale[c] + channelBias[c]) * tokenScale[t]);
  if (Status s = rotateRows(rows, DType::F16, g, d, static_cast<size_t>(d), rotated); !s)
    return s.error();
  std::vector<float> matrix(rows.size());
  for (int t = 0; t < g; ++t)
    for (int c = 0; c < d; ++c)
      matrix[static_cast<size_t>(c) * g + t] = halfToFloat(rotated[static_cast<size_t>(t) * d + c]);
  return matrix;
}

float QuantizedMatrix::reconstruct(int row, int col) const {
  float code = codes[static_cast<size_t>(row) * cols + col];
  return (code * halfToFloat(rowScale[row]) + halfToFloat(rowZeroPoint[row])) *
         halfToFloat(colScale[col]);
}

namespace {
/// The checks both quantizers make: bits, the matrix's size, finite values.
Status validateMatrix(std::span<const float> matrix, int rows, int cols, int bits,
                      const char *caller) {
  if (Status s = validateBits(bits, "quantization"); !s)
    return s;
  if (rows < 2 || cols < 2 || matrix.size() != static_cast<size_t>(rows) * cols)
    return makeError(ErrorCode::BufferSize, std::string(caller) +
                                                ": matrix must hold rows*cols (>= 2x2) elements, "
                                                "got " +
                                                std::to_string(matrix.size()));
  for (size_t i = 0; i < matrix.size(); ++i)
    if (!std::isfinite(matrix[i]))
      return makeError(ErrorCode::InvalidData,
                       "non-finite value in tile at row " + std::to_string(i / cols) +
                           ", column " + std::to_string(i % cols) + "; NaN/Inf cannot be quantized");
  return Status::success();
}

/// RTN and folding of a checked matrix with scales of the right sizes.
QuantizedMatrix roundAndFold(std::span<const float> matrix, int rows, int cols, int bits,
                             const Normalization &norm) {
  std::vector<float> n(matrix.size());
  applyScales(matrix, norm.colScale, norm.rowScale, rows, cols, n);

  QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  q.bits = bits;
  q.codes.resize(matrix.size());
  q.rowScale.resize(rows);
  q.rowZeroPoint.resize(rows);
  q.colScale.resize(cols);
  const float qmax = static_cast<float>((1 << bits) - 1);
  for (int r = 0; r < rows; ++r) {
    const float *row = &n[static_cast<size_t>(r) * cols];
    auto [lo, hi] = std::minmax_element(row, row + cols);
    // A zero minimum is +0 whichever zero came first (-0 + 0 = +0), as the GPU flush's exact
    // divisions give it: the zero point's sign bit is then defined (the codes do not change).
    const float low = *lo + 0.0f;
    const float scale = std::max((*hi - low) / qmax, 1e-10f);
    for (int c = 0; c < cols; ++c) {
      float code = std::nearbyint((row[c] - low) / scale); // default rounding mode: half to even
      q.codes[static_cast<size_t>(r) * cols + c] =
          static_cast<uint8_t>(std::min(std::max(code, 0.0f), qmax));
    }
    q.rowScale[r] = floatToHalfSaturate(norm.rowScale[r] * scale);
    q.rowZeroPoint[r] = floatToHalfSaturate(norm.rowScale[r] * low);
  }
  for (int c = 0; c < cols; ++c)
    q.colScale[c] = floatToHalfSaturate(norm.colScale[c]);
  return q;
}
} // namespace

Expected<QuantizedMatrix> quantizeMatrix(std::span<const float> matrix, int rows, int cols,
                                         int bits, int iterations) {
  if (Status s = validateMatrix(matrix, rows, cols, bits, "quantizeMatrix"); !s)
    return s.error();
  return roundAndFold(matrix, rows, cols, bits, normalizeVariance(matrix, rows, cols, iterations));
}

Expected<QuantizedMatrix> quantizeNormalized(std::span<const float> matrix, int rows, int cols,
                                             int bits, const Normalization &norm) {
  if (Status s = validateMatrix(matrix, rows, cols, bits, "quantizeNormalized"); !s)
    return s.error();
  if (norm.colScale.size() != static_cast<size_t>(cols) ||
      norm.rowScale.size() != static_cast<size_t>(rows))
    return makeError(ErrorCode::BufferSize,
                     "quantizeNormalized: " + std::to_string(norm.colScale.size()) +
                         " column and " + std::to_string(norm.rowScale.size()) +
                         " row scales for a " + std::to_string(rows) + "x" + std::to_string(cols) +
                         " matrix");
  return roundAndFold(matrix, rows, cols, bits, norm);
}

Status packCodes(std::span<const uint8_t> codes, int bits, std::span<uint8_t> packed) {
  if (Status s = validateBits(bits, "packing"); !s)
    return s;
  const size_t perByte = static_cast<size_t>(8 / bits);
  if (codes.size() % perByte != 0 || packed.size() != codes.size() / perByte)
    return makeError(ErrorCode::BufferSize,
                     "packCodes: " + std::to_string(codes.size()) + " codes of " +
                         std::to_string(bits) + " bits need exactly " +
                         std::to_string(codes.size() / perByte) + " bytes, got " +
                         std::to_string(packed.size()));
  const unsigned mask = (1u << bits) - 1u;
  for (size_t byte = 0; byte < packed.size(); ++byte) {
    unsigned value = 0;
    for (size_t k = 0; k < perByte; ++k) {
      unsigned code = codes[byte * perByte + k];
      if (code > mask)
        return makeError(ErrorCode::InvalidData, "packCodes: code " + std::to_string(code) +
                                                     " does not fit in " + std::to_string(bits) +
                                                     " bits");
      value |= code << (k * bits);
    }
    packed[byte] = static_cast<uint8_t>(value);
  }
  return Status::success();
}

Status unpackCodes(std::span<const uint8_t> packed, int bits, std::span<uint8_t> codes) {
  if (Status s = validateBits(bits, "packing"); !s)
    return s;
  const size_t perByte = static_cast<size_t>(8 / bits);
  if (codes.size() % perByte != 0 || packed.size() != codes.size() / perByte)
    return makeError(ErrorCode::BufferSize,
                     "unpackCodes: " + std::to_string(codes.size()) + " codes need exactly " +
                         std::to_string(codes.size() / perByte) + " bytes, got " +
                         std::to_string(packed.size()));
  const unsigned mask = (1u << bits) - 1u;
  for (size_t i = 0; i < codes.size(); ++i)
    codes[i] = static_cast<uint8_t>((packed[i / perByte] >> ((i % perByte) * bits)) & mask);
  return Status::success();
}

} // namespace kvarn::reference
