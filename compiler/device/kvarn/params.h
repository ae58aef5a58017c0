// Parameter blocks of the generated kernels, shared verbatim by the device library (NVRTC) and
// the host launcher: plain C++ with no CUDA or standard headers. One struct per kernel kind.
#pragma once

namespace kvarn {
namespace dev {

/// Decode (grid: x = kv head, y = request, z = split; the merge kernel: z = 1).
struct DecodeParams {
  const void *query;              ///< [B, Hq, D] activation dtype, un-rotated
  void *out;                      ///< [B, Hq, D]
  const unsigned char *cache;     ///< [blocks, Hk, tile bytes]
  const void *poolKey;            ///< fp16 [slots, G, Hk, D], rotated rows
  const void *poolValue;
  const int *blockToSlot;         ///< [blocks], -1 = quantized record
  const int *blockTable;          ///< [B, maxBlocks]
  const int *seqLens;             ///< [B]
  float *partialOut;              ///< [B, Hq, splits, D] workspace
  float *partialLse;              ///< [B, Hq, splits]
  int batch;
  int numKvHeads;
  int maxBlocksPerRequest;
  int numSplits;                  ///< splits of this launch (planned), or the schedule's
  float softmaxScale;
};

/// Flush (grid: x = entry).
struct FlushParams {
  const void *poolKey;            ///< fp16 [slots, G, Hk, D]
  const void *poolValue;
  const int *entries;             ///< [E, 3] (block, kv head, pool slot)
  unsigned char *cache;           ///< [blocks, Hk, tile bytes]
  int *status;                    ///< bit 0 set when a tile held NaN/Inf (its record is left alone)
  int numEntries;
  int numKvHeads;
};

/// Append (grid: x = groups of rows_per_cta tokens).
struct AppendParams {
  const void *key;                ///< [T, Hk, D] activation dtype; token t at key + t*keyStride
  const void *value;
  const long long *slotMapping;   ///< [T] flat pool row (slot*G + offset); negative = skip
  void *poolKey;                  ///< fp16 [slots, G, Hk, D]
  void *poolValue;
  int numTokens;
  int numKvHeads;
  long long keyStride;            ///< elements between tokens
  long long valueStride;
};

/// Dequantize (grid-stride over entries * G token rows, one warp per row).
struct DequantizeParams {
  const unsigned char *cache;     ///< [blocks, Hk, tile bytes]
  const int *entries;             ///< [E, 2] (block, kv head)
  void *key;                      ///< fp16 [E, G, D], rotated frame
  void *value;
  int numEntries;
  int numKvHeads;
};

} // namespace dev
} // namespace kvarn
