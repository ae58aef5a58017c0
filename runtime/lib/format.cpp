// Preset parsing, validation and the record layout.
#include "kvarn/format.h"

#include <charconv>

namespace kvarn {

const char *errorCodeName(ErrorCode code) {
  switch (code) {
  case ErrorCode::InvalidArgument: return "invalid argument";
  case ErrorCode::InvalidData: return "invalid data";
  case ErrorCode::BufferSize: return "bad buffer";
  case ErrorCode::Unsupported: return "unsupported";
  case ErrorCode::NotFound: return "not found";
  case ErrorCode::Io: return "i/o error";
  case ErrorCode::Internal: return "internal error";
  }
  return "error";
}

std::string Format::presetName() const {
  return "kvarn_k" + std::to_string(keyBits) + "v" + std::to_string(valueBits) + "_g" +
         std::to_string(tileTokens);
}

Status validateBits(int bits, std::string_view what) {
  if (bits == 2 || bits == 4 || bits == 8)
    return Status::success();
  std::string name(what);
  if (bits == 3 || bits == 5)
    return makeError(ErrorCode::Unsupported,
                     "unsupported " + name + " bits: " + std::to_string(bits) +
                         " needs a bit-stream packer (supported: 2, 4, 8)");
  return makeError(ErrorCode::InvalidArgument, "unsupported " + name +
                                                   " bits: " + std::to_string(bits) +
                                                   " (supported: 2, 4, 8)");
}

Status validateTileTokens(int tileTokens) {
  if (tileTokens == 64 || tileTokens == 128)
    return Status::success();
  return makeError(ErrorCode::InvalidArgument, "unsupported tile size G: " +
                                                   std::to_string(tileTokens) +
                                                   " (supported: 64, 128)");
}

Status validateHeadDim(int headDim) {
  if (headDim == 64 || headDim == 128 || headDim == 256 || headDim == 512)
    return Status::success();
  return makeError(ErrorCode::InvalidArgument, "unsupported head_dim: " + std::to_string(headDim) +
                                                   " (supported: 64, 128, 256, 512)");
}

Status validateFormat(const Format &format) {
  if (Status s = validateBits(format.keyBits, "key"); !s)
    return s;
  if (Status s = validateBits(format.valueBits, "value"); !s)
    return s;
  if (Status s = validateTileTokens(format.tileTokens); !s)
    return s;
  if (Status s = validateHeadDim(format.headDim); !s)
    return s;
  if (format.sinkhornIterations < 0 || format.sinkhornIterations > 64)
    return makeError(ErrorCode::InvalidArgument,
                     "unsupported Sinkhorn iteration count: " +
                         std::to_string(format.sinkhornIterations) + " (supported: 0 to 64)");
  return Status::success();
}

namespace {
/// Reads a decimal integer at the front of `text`, advancing it; false if none.
bool takeInteger(std::string_view &text, int &value) {
  const char *end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr == text.data())
    return false;
  text.remove_prefix(static_cast<size_t>(ptr - text.data()));
  return true;
}
} // namespace

Expected<Format> parseFormat(std::string_view preset, int headDim, int sinkhornIterations) {
  const std::string quoted = kvarn::quoted(preset);
  auto malformed = [&](const std::string &detail) {
    return makeError(ErrorCode::InvalidArgument,
                     "malformed preset " + quoted + ": " + detail +
                         " (expected kvarn_k{key bits}v{value bits}_g{tile tokens}, e.g. "
                         "kvarn_k4v2_g128)");
  };
  std::string_view text = preset;
  if (text.substr(0, 6) == "kvarn_")
    text.remove_prefix(6);
  Format format;
  format.headDim = headDim;
  format.sinkhornIterations = sinkhornIterations;
  if (text.empty() || text.front() != 'k')
    return malformed("missing 'k'");
  text.remove_prefix(1);
  if (!takeInteger(text, format.keyBits))
    return malformed("missing key bits after 'k'");
  if (text.empty() || text.front() != 'v')
    return malformed("missing 'v' after the key bits");
  text.remove_prefix(1);
  if (!takeInteger(text, format.valueBits))
    return malformed("missing value bits after 'v'");
  if (text.substr(0, 2) != "_g")
    return malformed("missing '_g' after the value bits");
  text.remove_prefix(2);
  if (!takeInteger(text, format.tileTokens))
    return malformed("missing tile size after '_g'");
  if (!text.empty())
    return malformed("unexpected trailing text '" + std::string(text) + "'");
  if (Status s = validateFormat(format); !s)
    return s.error();
  return format;
}

RecordLayout recordLayout(const Format &format) {
  const size_t d = static_cast<size_t>(format.headDim);
  const size_t g = static_cast<size_t>(format.tileTokens);
  RecordLayout layout;
  layout.tileTokens = format.tileTokens;
  layout.headDim = format.headDim;
  layout.keyPackedBytes = d * g * static_cast<size_t>(format.keyBits) / 8;
  layout.valuePackedBytes = d * g * static_cast<size_t>(format.valueBits) / 8;
  size_t offset = 0;
  layout.keyPacked = offset;      offset += layout.keyPackedBytes;
  layout.keyScaleCol = offset;    offset += 2 * d;
  layout.keyZeroPoint = offset;   offset += 2 * d;
  layout.keyScaleRow = offset;    offset += 2 * g;
  layout.valuePacked = offset;    offset += layout.valuePackedBytes;
  layout.valueScaleCol = offset;  offset += 2 * d;
  layout.valueScaleRow = offset;  offset += 2 * g;
  layout.valueZeroPoint = offset; offset += 2 * g;
  layout.tileBytes = offset;
  if (d <= 128 || format.alignment == RecordAlignment::Compact) {
    layout.tileBytesAligned = (offset + 7) / 8 * 8;
  } else {
    size_t slot = (offset + g - 1) / g;
    size_t pow2 = 1;
    while (pow2 < slot)
      pow2 <<= 1;
    layout.tileBytesAligned = pow2 * g;
  }
  return layout;
}

} // namespace kvarn
