// KVarN formats: preset parsing, validation, and the tile-record layout (kvarn-format.md §1, §5).
#pragma once

#include "kvarn/status.h"

#include <cstddef>
#include <string>
#include <string_view>

namespace kvarn {

/// Default number of Sinkhorn iterations (the reference backend's value).
inline constexpr int kDefaultSinkhornIterations = 8;

/// How records are padded: the reference backend's rule, or 8-byte rounding at every head_dim
/// (saves the power-of-two padding at D >= 256; not readable by the reference backend).
enum class RecordAlignment { Reference, Compact };

/// One KVarN storage format: key/value bit widths, tile size, head_dim, normalization iterations.
struct Format {
  int keyBits = 4;
  int valueBits = 2;
  int tileTokens = 128; ///< G: tokens per tile (= paged-KV block size)
  int headDim = 128;    ///< D
  int sinkhornIterations = kDefaultSinkhornIterations;
  RecordAlignment alignment = RecordAlignment::Reference;

  /// Preset name, e.g. "kvarn_k4v2_g128".
  std::string presetName() const;
  /// Codes per byte for keys / values.
  int keyCodesPerByte() const { return 8 / keyBits; }
  int valueCodesPerByte() const { return 8 / valueBits; }
  bool operator==(const Format &other) const = default;
};

/// Validates the bit width of keys or values; `what` names the field in the message.
Status validateBits(int bits, std::string_view what);
/// Validates G (64 or 128).
Status validateTileTokens(int tileTokens);
/// Validates head_dim (64, 128, 256, 512).
Status validateHeadDim(int headDim);
/// Validates every field of a format.
Status validateFormat(const Format &format);

/// Parses `kvarn_k{kb}v{vb}_g{G}` (the `kvarn_` prefix is optional) and attaches head_dim.
Expected<Format> parseFormat(std::string_view preset, int headDim,
                             int sinkhornIterations = kDefaultSinkhornIterations);

/// Byte offsets and sizes of one (block, kv-head) tile record.
struct RecordLayout {
  size_t keyPacked = 0;     ///< u8 [D][G*kb/8]
  size_t keyScaleCol = 0;   ///< fp16 [D]
  size_t keyZeroPoint = 0;  ///< fp16 [D]
  size_t keyScaleRow = 0;   ///< fp16 [G]
  size_t valuePacked = 0;   ///< u8 [G][D*vb/8]
  size_t valueScaleCol = 0; ///< fp16 [D]
  size_t valueScaleRow = 0; ///< fp16 [G]
  size_t valueZeroPoint = 0;///< fp16 [G]
  size_t keyPackedBytes = 0;
  size_t valuePackedBytes = 0;
  size_t tileBytes = 0;        ///< sum of the fields
  size_t tileBytesAligned = 0; ///< record stride in the cache tensor
  int tileTokens = 0;
  int headDim = 0;

  /// Cache bytes per token per kv-head.
  double bytesPerToken() const { return double(tileBytesAligned) / tileTokens; }
  /// Bytes per token per kv-head that a decode reads: the record's fields, without the padding
  /// to the aligned stride (which D >= 256 records carry: 22% of a k4v2 and 87% of a k4v4 record
  /// at D = 256).
  double readBytesPerToken() const { return double(tileBytes) / tileTokens; }
  /// fp16 K+V bytes per token per kv-head divided by bytesPerToken().
  double compressionRatio() const { return (4.0 * headDim) / bytesPerToken(); }
};

/// Computes the reference-compatible record layout (alignment rule of kvarn-format.md §5).
RecordLayout recordLayout(const Format &format);

} // namespace kvarn
