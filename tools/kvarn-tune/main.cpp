// kvarn-tune: the per-GPU command-line tool (tune, bench, compile, bundles, inspect).
#include "kvarn/format.h"
#include "kvarn/reference.h"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <vector>

namespace {

using namespace kvarn;

/// Quantizes a synthetic tile's keys (rotated) with and without normalization; prints the error.
int runQuantizeDemo(const std::string &preset, int headDim, int iterations, uint64_t seed) {
  Expected<Format> format = parseFormat(preset, headDim, iterations);
  if (!format) {
    std::fprintf(stderr, "kvarn-tune: %s\n", format.error().str().c_str());
    return 2;
  }
  const int g = format->tileTokens, d = format->headDim;
  Expected<std::vector<float>> keys = reference::syntheticRotatedKeyMatrix(g, d, seed);
  if (!keys) {
    std::fprintf(stderr, "kvarn-tune: %s\n", keys.error().str().c_str());
    return 1;
  }
  const std::vector<float> &matrix = *keys;
  RecordLayout layout = recordLayout(*format);
  std::printf("%s, head_dim %d: record %zu B (%zu aligned), %.1f B/token/kv-head, %.2fx smaller "
              "than fp16\n",
              format->presetName().c_str(), d, layout.tileBytes, layout.tileBytesAligned,
              layout.bytesPerToken(), layout.compressionRatio());
  for (int iters : {0, iterations}) {
    Expected<reference::QuantizedMatrix> q = reference::quantizeMatrix(matrix, d, g, format->keyBits, iters);
    if (!q) {
      std::fprintf(stderr, "kvarn-tune: %s\n", q.error().str().c_str());
      return 1;
    }
    std::vector<float> reconstructed(matrix.size());
    for (int r = 0; r < d; ++r)
      for (int c = 0; c < g; ++c)
        reconstructed[static_cast<size_t>(r) * g + c] = q->reconstruct(r, c);
    std::printf("  %d-bit keys, %d Sinkhorn iterations: relative Frobenius error %.4f\n",
                format->keyBits, iters, reference::relativeFrobeniusError(reconstructed, matrix));
  }
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  CLI::App app{"kvarn-tune: compile, tune and benchmark KVarN attention kernels for this GPU"};
  app.set_version_flag("--version", std::string("kvarn ") + KVARN_VERSION);
  app.require_subcommand(0, 1);

  std::string preset = "kvarn_k4v2_g128";
  int headDim = 128, iterations = kDefaultSinkhornIterations;
  uint64_t seed = 1;
  CLI::App *quantize = app.add_subcommand(
      "quantize", "Quantize a synthetic key tile with the CPU reference and print its error");
  quantize->add_option("--preset", preset, "KVarN preset, e.g. kvarn_k4v2_g128")->capture_default_str();
  quantize->add_option("--head-dim", headDim, "head_dim (64, 128, 256, 512)")->capture_default_str();
  quantize->add_option("--iterations", iterations, "Sinkhorn iterations")->capture_default_str();
  quantize->add_option("--seed", seed, "random seed of the synthetic tile")->capture_default_str();

  CLI11_PARSE(app, argc, argv);
  if (app.got_subcommand(quantize))
    return runQuantizeDemo(preset, headDim, iterations, seed);
  // The default job: the reference on the default presets.
  int rc = 0;
  for (const char *name : {"kvarn_k4v2_g128", "kvarn_k4v4_g128"})
    rc |= runQuantizeDemo(name, 128, kDefaultSinkhornIterations, seed);
  return rc;
}
