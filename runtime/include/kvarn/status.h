// Typed errors and a small Expected<T> for the runtime (no LLVM in libkvarn).
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace kvarn {

/// Error categories; mirrored by the C API's kvarn_status codes.
enum class ErrorCode {
  InvalidArgument,  ///< malformed or unsupported user input (spec, preset, shape)
  InvalidData,      ///< NaN/Inf, corrupt record, checksum mismatch
  BufferSize,       ///< a buffer is too short, too long or misaligned
  Unsupported,      ///< valid request the implementation cannot serve yet
  NotFound,
  Io,
  Internal,
};

const char *errorCodeName(ErrorCode code);

/// A user-facing error: a code plus a message that names the bad value and what is allowed.
struct Error {
  ErrorCode code = ErrorCode::Internal;
  std::string message;
  std::string str() const { return std::string(errorCodeName(code)) + ": " + message; }
};

/// Either a value or an Error. Accessing the wrong alternative is a programming error.
template <typename T> class Expected {
public:
  Expected(T value) : storage_(std::move(value)) {}
  Expected(Error error) : storage_(std::move(error)) {}

  explicit operator bool() const { return storage_.index() == 0; }
  bool ok() const { return storage_.index() == 0; }
  T &value() { return std::get<0>(storage_); }
  const T &value() const { return std::get<0>(storage_); }
  T &operator*() { return value(); }
  const T &operator*() const { return value(); }
  T *operator->() { return &value(); }
  const T *operator->() const { return &value(); }
  const Error &error() const { return std::get<1>(storage_); }

private:
  std::variant<T, Error> storage_;
};

/// Expected<void> equivalent: empty on success.
class Status {
public:
  Status() = default;
  Status(Error error) : error_(std::move(error)), failed_(true) {}
  static Status success() { return Status(); }
  explicit operator bool() const { return !failed_; }
  bool ok() const { return !failed_; }
  const Error &error() const { return error_; }

private:
  Error error_;
  bool failed_ = false;
};

inline Error makeError(ErrorCode code, std::string message) {
  return Error{code, std::move(message)};
}

/// `text` in single quotes, for error messages (built by appends: GCC 12 warns, wrongly, about
/// "'" + std::string(...)).
inline std::string quoted(std::string_view text) {
  std::string out(1, '\'');
  out += text;
  out += '\'';
  return out;
}

} // namespace kvarn
