// Correctness checks of compiled kernels on the GPU (Checks.h).
#include "kvarn/Autotune/Checks.h"

#include "kvarn/half.h"
#include "kvarn/reference.h"

#include <cmath>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace kvarn::autotune {

Status checkAppendKernel(const KernelModule &module, const AppendCheck &check) {
  const int d = check.headDim, hk = check.kvHeads, tokens = check.tokens, g = 128, blocks = 4;
  const int64_t stride = check.stride > 0 ? check.stride : int64_t(hk) * d;
  std::mt19937_64 rng(check.seed);
  std::normal_distribution<float> normal;
  std::vector<uint16_t> keys(size_t(tokens) * stride), values(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    keys[i] = floatToDType(normal(rng) * 3.0f, check.dtype);
    values[i] = floatToDType(normal(rng), check.dtype);
  }
  std::vector<int64_t> mapping(tokens);
  for (int t = 0; t < tokens; ++t)
    mapping[t] = t % 7 == 3 ? -1 : (int64_t(t) * 5) % (blocks * g);
  const size_t poolElements = size_t(blocks) * g * hk * d;
  Expected<DeviceBuffer> dKey = DeviceBuffer::copyOf(keys), dValue = DeviceBuffer::copyOf(values),
                         dMap = DeviceBuffer::copyOf(mapping),
                         dPoolKey = DeviceBuffer::allocate(poolElements * 2),
                         dPoolValue = DeviceBuffer::allocate(poolElements * 2);
  for (Expected<DeviceBuffer> *b : {&dKey, &dValue, &dMap, &dPoolKey, &dPoolValue})
    if (!*b)
      return b->error();
  if (Status s = dPoolKey->fill(0xff); !s)
    return s;
  if (Status s = dPoolValue->fill(0xff); !s)
    return s;
  const dev::AppendParams params{dKey->as<void>(),
                                 dValue->as<void>(),
                                 dMap->as<long long>(),
                                 dPoolKey->as<void>(),
                                 dPoolValue->as<void>(),
                                 tokens,
                                 hk,
                                 (long long)stride,
                                 (long long)stride};
  if (Status s = launchAppend(module, params, nullptr); !s)
    return s;
  std::vector<uint16_t> poolKey(poolElements), poolValue(poolElements);
  if (Status s = dPoolKey->download(poolKey.data(), poolElements * 2); !s) // synchronizes
    return s;
  if (Status s = dPoolValue->download(poolValue.data(), poolElements * 2); !s)
    return s;
  const std::string where = " (D " + std::to_string(d) + ", " + dtypeName(check.dtype) + ", " +
                            std::to_string(hk) + " kv heads, token stride " +
                            std::to_string(stride) + ")";
  std::vector<bool> written(size_t(blocks) * g, false);
  std::vector<uint16_t> expected(size_t(hk) * d);
  for (int t = 0; t < tokens; ++t) {
    if (mapping[t] < 0)
      continue;
    written[mapping[t]] = true;
    for (int tensor = 0; tensor < 2; ++tensor) {
      const std::vector<uint16_t> &source = tensor == 0 ? keys : values;
      const std::vector<uint16_t> &pool = tensor == 0 ? poolKey : poolValue;
      if (Status s =
              reference::rotateRows(std::span(source).subspan(size_t(t) * stride, size_t(hk) * d),
                                    check.dtype, hk, d, d, expected);
          !s)
        return s;
      for (int i = 0; i < hk * d; ++i) {
        const float got = halfToFloat(pool[size_t(mapping[t]) * hk * d + i]);
        const float want = halfToFloat(expected[i]);
        if (!(std::fabs(got - want) <= std::fabs(want) * 2e-3f + 2e-3f))
          return makeError(ErrorCode::InvalidData,
                           std::string("wrong results: ") + (tensor == 0 ? "K" : "V") +
                               " of token " + std::to_string(t) + ", element " + std::to_string(i) +
                               ": " + std::to_string(got) + ", expected " + std::to_string(want) +
                               where);
      }
    }
  }
  for (size_t row = 0; row < written.size(); ++row) {
    if (written[row])
      continue;
    for (int i = 0; i < hk * d; ++i)
      if (poolKey[row * hk * d + i] != 0xffff || poolValue[row * hk * d + i] != 0xffff)
        return makeError(ErrorCode::InvalidData, "wrong results: pool row " + std::to_string(row) +
                                                     ", which no token maps to, was written" +
                                                     where);
  }
  return Status::success();
}

} // namespace kvarn::autotune
