// Float64 reference decode attention over the paged cache (kvarn-format.md §6).
#include "kvarn/reference.h"

#include "kvarn/parallel.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>

namespace kvarn::reference {
namespace {

/// Checks the shapes shared by both decode references; returns G-token blocks per request.
Status validateProblem(const DecodeProblem &p, size_t outSize) {
  if (Status s = validateFormat(p.format); !s)
    return s;
  const size_t d = static_cast<size_t>(p.format.headDim);
  if (p.batch < 0 || p.numKvHeads <= 0 || p.numQueryHeads <= 0 || p.maxBlocksPerRequest < 0)
    return makeError(ErrorCode::InvalidArgument, "decode: batch, heads and max blocks must be "
                                                 "positive");
  if (p.numQueryHeads % p.numKvHeads != 0)
    return makeError(ErrorCode::InvalidArgument,
                     "decode: query heads (" + std::to_string(p.numQueryHeads) +
                         ") must be a multiple of kv heads (" + std::to_string(p.numKvHeads) + ")");
  const size_t b = static_cast<size_t>(p.batch);
  const size_t qElements = b * static_cast<size_t>(p.numQueryHeads) * d;
  if (p.query.size() != qElements || outSize != qElements)
    return makeError(ErrorCode::BufferSize, "decode: q and out must hold B*Hq*D = " +
                                                std::to_string(qElements) + " elements");
  if (p.seqLens.size() != b ||
      p.blockTable.size() != b * static_cast<size_t>(p.maxBlocksPerRequest))
    return makeError(ErrorCode::BufferSize, "decode: seq_lens must hold B entries and the block "
                                            "table B*max_blocks");
  for (size_t r = 0; r < b; ++r) {
    const int64_t len = p.seqLens[r];
    if (len < 0 || len > int64_t(p.maxBlocksPerRequest) * p.format.tileTokens)
      return makeError(ErrorCode::InvalidArgument,
                       "decode: seq_len " + std::to_string(len) + " of request " +
                           std::to_string(r) + " is outside [0, max_blocks*G]");
  }
  return Status::success();
}

/// Loads the K and V rows (rotated frame for the quantized cache) of one block and kv head,
/// token-major [G][D] doubles; returns an error for bad indices.
using BlockLoader = std::function<Status(int32_t block, int head, std::vector<double> &key,
                                         std::vector<double> &value)>;

Status attend(const DecodeProblem &p, int numSplits, bool rotate, const BlockLoader &load,
              std::span<uint16_t> out, std::span<float> unconverted = {}) {
  const int d = p.format.headDim, g = p.format.tileTokens;
  const int group = p.numQueryHeads / p.numKvHeads;
  const double scale =
      p.softmaxScale > 0 ? p.softmaxScale : 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<float> h;
  if (rotate) {
    std::vector<uint16_t> h16 = hadamard16(d);
    h.resize(h16.size());
    for (size_t i = 0; i < h16.size(); ++i)
      h[i] = halfToFloat(h16[i]);
  }
  // The format is fp16 from the rotation on, whatever the model's dtype (kvarn-format.md §1–2):
  // q_rot and out_rot round to fp16, and a bf16 output is the fp16 output converted.
  auto roundHalf = [](double v) { return roundToHalf(static_cast<float>(v)); };
  // One task per (request, kv head) on every host thread; each writes only its own heads'
  // outputs, and the first error in task order is returned.
  const size_t tasks = static_cast<size_t>(p.batch) * p.numKvHeads;
  std::vector<Status> results(tasks, Status::success());
  parallelFor(tasks, [&](size_t task) {
    const int b = static_cast<int>(task / p.numKvHeads), kvh = static_cast<int>(task % p.numKvHeads);
    const int len = p.seqLens[b];
    const int blocks = (len + g - 1) / g;
    const int splits = std::max(1, std::min(numSplits, std::max(blocks, 1)));
    std::vector<double> key(static_cast<size_t>(g) * d), value(key.size());
    {
      // Step 1. Gather the request's tokens for this kv head.
      std::vector<double> keys(static_cast<size_t>(len) * d), values(keys.size());
      for (int k = 0; k < blocks; ++k) {
        const int32_t bid = p.blockTable[static_cast<size_t>(b) * p.maxBlocksPerRequest + k];
        if (Status s = load(bid, kvh, key, value); !s) {
          results[task] = makeError(s.error().code, "request " + std::to_string(b) + ", block " +
                                                        std::to_string(k) + ": " +
                                                        s.error().message);
          return;
        }
        const int n = std::min(g, len - k * g);
        std::copy_n(key.begin(), static_cast<size_t>(n) * d,
                    keys.begin() + static_cast<size_t>(k) * g * d);
        std::copy_n(value.begin(), static_cast<size_t>(n) * d,
                    values.begin() + static_cast<size_t>(k) * g * d);
      }
      for (int qi = 0; qi < group; ++qi) {
        const int qh = kvh * group + qi;
        const size_t base = (static_cast<size_t>(b) * p.numQueryHeads + qh) * d;
        // Step 2. q_rot = fp16(q · H16) with fp32 accumulation.
        std::vector<double> q(d);
        for (int j = 0; j < d; ++j) {
          if (!rotate) {
            q[j] = dtypeToFloat(p.query[base + j], p.dtype);
            continue;
          }
          float acc = 0;
          for (int c = 0; c < d; ++c)
            acc += dtypeToFloat(p.query[base + c], p.dtype) * h[static_cast<size_t>(c) * d + j];
          q[j] = roundHalf(acc);
        }
        // Step 3. Per split of whole blocks: partial output and log-sum-exp; then merge.
        std::vector<double> merged(d, 0.0);
        if (len > 0) {
          std::vector<std::vector<double>> partial;
          std::vector<double> lse;
          for (int s = 0; s < splits; ++s) {
            const int firstBlock = blocks * s / splits, endBlock = blocks * (s + 1) / splits;
            const int t0 = firstBlock * g, t1 = std::min(len, endBlock * g);
            if (t1 <= t0)
              continue;
            std::vector<double> scores(t1 - t0);
            double maxScore = -std::numeric_limits<double>::infinity();
            for (int t = t0; t < t1; ++t) {
              double dot = 0;
              for (int j = 0; j < d; ++j)
                dot += q[j] * keys[static_cast<size_t>(t) * d + j];
              scores[t - t0] = dot * scale;
              maxScore = std::max(maxScore, scores[t - t0]);
            }
            double sum = 0;
            std::vector<double> acc(d, 0.0);
            for (int t = t0; t < t1; ++t) {
              const double w = std::exp(scores[t - t0] - maxScore);
              sum += w;
              for (int j = 0; j < d; ++j)
                acc[j] += w * values[static_cast<size_t>(t) * d + j];
            }
            for (double &a : acc)
              a /= sum;
            partial.push_back(std::move(acc));
            lse.push_back(maxScore + std::log(sum));
          }
          const double maxLse = *std::max_element(lse.begin(), lse.end());
          double total = 0;
          for (size_t s = 0; s < partial.size(); ++s) {
            const double w = std::exp(lse[s] - maxLse);
            total += w;
            for (int j = 0; j < d; ++j)
              merged[j] += w * partial[s][j];
          }
          for (double &m : merged)
            m /= total;
        }
        // Step 4. out = dtype(fp16(fp16(out_rot) · H16)); seq_len 0 gives zeros.
        for (int j = 0; j < d; ++j) {
          double o = 0;
          if (!rotate) {
            o = merged[j];
          } else if (len > 0) {
            float acc = 0;
            for (int c = 0; c < d; ++c)
              acc += roundHalf(merged[c]) * h[static_cast<size_t>(c) * d + j];
            o = roundHalf(acc);
            if (!unconverted.empty())
              unconverted[base + j] = acc;
          }
          out[base + j] = floatToDType(static_cast<float>(o), p.dtype);
        }
      }
    }
  });
  for (Status &result : results)
    if (!result)
      return result;
  return Status::success();
}

} // namespace

Status decodeQuantized(const DecodeProblem &problem, const PagedCacheView &cache, int numSplits,
                       std::span<uint16_t> out, std::span<float> unconverted) {
  if (Status s = validateProblem(problem, out.size()); !s)
    return s;
  if (!unconverted.empty() && unconverted.size() != out.size())
    return makeError(ErrorCode::BufferSize, "decode: the unconverted output must be empty or "
                                            "hold as many elements as out");
  if (!unconverted.empty())
    std::fill(unconverted.begin(), unconverted.end(), 0.0f);
  const Format &f = problem.format;
  const RecordLayout layout = recordLayout(f);
  const size_t hk = static_cast<size_t>(problem.numKvHeads);
  const size_t numBlocks = cache.blockToSlot.size();
  const size_t pageElements = static_cast<size_t>(f.tileTokens) * hk * f.headDim;
  if (cache.records.size() != numBlocks * hk * layout.tileBytesAligned)
    return makeError(ErrorCode::BufferSize,
                     "decode: cache must hold num_blocks*Hk*tile_bytes_aligned = " +
                         std::to_string(numBlocks * hk * layout.tileBytesAligned) + " bytes, got " +
                         std::to_string(cache.records.size()));
  if (cache.poolKey.size() != cache.poolValue.size() || cache.poolKey.size() % pageElements != 0)
    return makeError(ErrorCode::BufferSize, "decode: pools must be [slots][G][Hk][D] fp16");
  const size_t poolSlots = cache.poolKey.size() / pageElements;
  BlockLoader load = [&](int32_t bid, int head, std::vector<double> &key,
                         std::vector<double> &value) -> Status {
    // Called from several threads at once: scratch tiles of its own.
    std::vector<float> keyTile(static_cast<size_t>(f.tileTokens) * f.headDim),
        valueTile(keyTile.size());
    if (bid < 0 || static_cast<size_t>(bid) >= numBlocks)
      return makeError(ErrorCode::InvalidArgument,
                       "block id " + std::to_string(bid) + " outside [0, " +
                           std::to_string(numBlocks) + ")");
    const int32_t slot = cache.blockToSlot[bid];
    if (slot >= 0) {
      if (static_cast<size_t>(slot) >= poolSlots)
        return makeError(ErrorCode::InvalidArgument, "pool slot " + std::to_string(slot) +
                                                         " outside [0, " +
                                                         std::to_string(poolSlots) + ")");
      for (int t = 0; t < f.tileTokens; ++t)
        for (int c = 0; c < f.headDim; ++c) {
          size_t src = ((static_cast<size_t>(slot) * f.tileTokens + t) * hk + head) * f.headDim + c;
          key[static_cast<size_t>(t) * f.headDim + c] = halfToFloat(cache.poolKey[src]);
          value[static_cast<size_t>(t) * f.headDim + c] = halfToFloat(cache.poolValue[src]);
        }
      return Status::success();
    }
    const size_t offset = (static_cast<size_t>(bid) * hk + head) * layout.tileBytesAligned;
    if (Status s = dequantizeRecord(f, cache.records.subspan(offset, layout.tileBytesAligned),
                                    keyTile, valueTile);
        !s)
      return s;
    std::copy(keyTile.begin(), keyTile.end(), key.begin());
    std::copy(valueTile.begin(), valueTile.end(), value.begin());
    return Status::success();
  };
  return attend(problem, numSplits, /*rotate=*/true, load, out, unconverted);
}

Status decodeFp16(const DecodeProblem &problem, std::span<const uint16_t> keyCache,
                  std::span<const uint16_t> valueCache, int numBlocks, std::span<uint16_t> out) {
  if (Status s = validateProblem(problem, out.size()); !s)
    return s;
  const Format &f = problem.format;
  const size_t hk = static_cast<size_t>(problem.numKvHeads);
  const size_t expected = static_cast<size_t>(numBlocks) * f.tileTokens * hk * f.headDim;
  if (numBlocks < 0 || keyCache.size() != expected || valueCache.size() != expected)
    return makeError(ErrorCode::BufferSize, "decode fp16: caches must hold "
                                            "num_blocks*G*Hk*D = " + std::to_string(expected) +
                                                " elements each");
  BlockLoader load = [&](int32_t bid, int head, std::vector<double> &key,
                         std::vector<double> &value) -> Status {
    if (bid < 0 || bid >= numBlocks)
      return makeError(ErrorCode::InvalidArgument, "block id " + std::to_string(bid) +
                                                       " outside [0, " +
                                                       std::to_string(numBlocks) + ")");
    for (int t = 0; t < f.tileTokens; ++t)
      for (int c = 0; c < f.headDim; ++c) {
        size_t src = ((static_cast<size_t>(bid) * f.tileTokens + t) * hk + head) * f.headDim + c;
        key[static_cast<size_t>(t) * f.headDim + c] = halfToFloat(keyCache[src]);
        value[static_cast<size_t>(t) * f.headDim + c] = halfToFloat(valueCache[src]);
      }
    return Status::success();
  };
  return attend(problem, 1, /*rotate=*/false, load, out);
}

double decodeOutputError(DType dtype, std::span<const float> actual,
                         std::span<const float> expected, std::span<const float> unconverted) {
  if (dtype != DType::BF16)
    return relativeFrobeniusError(actual, expected);
  if (actual.size() != expected.size() || unconverted.size() != expected.size())
    return std::numeric_limits<double>::infinity();
  double kernel = 0, rounding = 0, norm = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double x = unconverted[i];
    kernel += (actual[i] - x) * (actual[i] - x);
    rounding += (expected[i] - x) * (expected[i] - x);
    norm += x * x;
  }
  if (std::isnan(kernel))
    return kernel; // a NaN output is never within a bound (std::max would drop it)
  const double beyond = std::sqrt(std::max(0.0, kernel - rounding));
  return norm > 0 ? beyond / std::sqrt(norm) : beyond;
}

double relativeFrobeniusError(std::span<const float> actual, std::span<const float> expected) {
  double diff = 0, norm = 0;
  const size_t n = std::min(actual.size(), expected.size());
  for (size_t i = 0; i < n; ++i) {
    const double e = expected[i];
    diff += (actual[i] - e) * (actual[i] - e);
    norm += e * e;
  }
  if (actual.size() != expected.size())
    return std::numeric_limits<double>::infinity();
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

} // namespace kvarn::reference
