// File: stasis/status.h
//
// Status and StatusOr<T>: the one error model of stasis. Every fallible call returns one
// of these; no exception crosses a module boundary and no bad input aborts. Codes follow
// abseil's canonical set. Conversion to exit codes or HTTP statuses happens only at the
// edges (tools/, runtime/).
//
// Thread safety: Status and StatusOr are values; distinct objects may be used from
// different threads, one object needs external synchronisation like any value.
#ifndef STASIS_STATUS_H_
#define STASIS_STATUS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace stasis {

enum class StatusCode : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,  // bad caller input: CLI flags, malformed safetensors
  kDeadlineExceeded = 4,
  kNotFound = 5,  // missing file, tensor or section
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,   // ENOSPC, memory, a limit of the format exceeded
  kFailedPrecondition = 9,  // state/version/device mismatch
  kAborted = 10,
  kOutOfRange = 11,     // truncation: a read past the end of a file
  kUnimplemented = 12,  // unsupported format version or codec
  kInternal = 13,       // a broken invariant of stasis itself
  kUnavailable = 14,    // retryable I/O condition (EAGAIN, EINTR storms)
  kDataLoss = 15,       // corrupted image: checksum mismatch, inconsistent structure
  kUnauthenticated = 16,
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  // OK status; costs one null pointer.
  Status() = default;
  Status(StatusCode code, std::string_view message);

  Status(const Status& other);
  Status& operator=(const Status& other);
  Status(Status&&) noexcept = default;
  Status& operator=(Status&&) noexcept = default;

  bool ok() const { return rep_ == nullptr; }
  StatusCode code() const { return rep_ ? rep_->code : StatusCode::kOk; }
  std::string_view message() const { return rep_ ? std::string_view(rep_->message) : ""; }
  // "CODE: message", or "OK".
  std::string ToString() const;

  // Returns a copy whose message is "context: message". OK stays OK.
  Status WithContext(std::string_view context) const;

  // Explicitly ignores a status whose failure does not matter (e.g. best-effort cleanup).
  void IgnoreError() const {}

  friend bool operator==(const Status& a, const Status& b) {
    return a.code() == b.code() && a.message() == b.message();
  }

 private:
  struct Rep {
    StatusCode code;
    std::string message;
  };
  std::unique_ptr<Rep> rep_;
};

inline Status OkStatus() { return Status(); }
std::ostream& operator<<(std::ostream& os, const Status& s);

Status CancelledError(std::string_view msg);
Status UnknownError(std::string_view msg);
Status InvalidArgumentError(std::string_view msg);
Status NotFoundError(std::string_view msg);
Status AlreadyExistsError(std::string_view msg);
Status PermissionDeniedError(std::string_view msg);
Status ResourceExhaustedError(std::string_view msg);
Status FailedPreconditionError(std::string_view msg);
Status OutOfRangeError(std::string_view msg);
Status UnimplementedError(std::string_view msg);
Status InternalError(std::string_view msg);
Status UnavailableError(std::string_view msg);
Status DataLossError(std::string_view msg);

// Maps an errno value to the closest code; the message is "context: strerror(err)".
Status ErrnoToStatus(int err, std::string_view context);

// StatusOr<T>: a T or a non-OK Status.
// REQUIRES: value() is only called when ok(); constructing from an OK Status is a bug and
// yields kInternal.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(const Status& status) : v_(status) { Check(); }
  StatusOr(Status&& status) : v_(std::move(status)) { Check(); }
  StatusOr(const T& value) : v_(value) {}
  StatusOr(T&& value) : v_(std::move(value)) {}
  template <typename U, typename = std::enable_if_t<std::is_convertible_v<U&&, T> &&
                                                    !std::is_same_v<std::decay_t<U>, Status> &&
                                                    !std::is_same_v<std::decay_t<U>, StatusOr<T>>>>
  StatusOr(U&& value) : v_(T(std::forward<U>(value))) {}

  bool ok() const { return v_.index() == 1; }
  Status status() const { return ok() ? OkStatus() : std::get<0>(v_); }

  T& value() & { return std::get<1>(v_); }
  const T& value() const& { return std::get<1>(v_); }
  T&& value() && { return std::get<1>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  void Check() {
    if (std::get<0>(v_).ok()) v_ = Status(StatusCode::kInternal, "StatusOr built from OK status");
  }
  std::variant<Status, T> v_;
};

namespace internal {
inline const Status& AsStatus(const Status& s) { return s; }
template <typename T>
Status AsStatus(const StatusOr<T>& s) {
  return s.status();
}
}  // namespace internal

}  // namespace stasis

#define STASIS_CONCAT_INNER_(a, b) a##b
#define STASIS_CONCAT_(a, b) STASIS_CONCAT_INNER_(a, b)

// Returns from the current function when `expr` (a Status or StatusOr) is not OK.
#define STASIS_RETURN_IF_ERROR(expr)                                               \
  do {                                                                             \
    auto&& stasis_status_ = (expr);                                                \
    if (!stasis_status_.ok()) return ::stasis::internal::AsStatus(stasis_status_); \
  } while (0)

// STASIS_ASSIGN_OR_RETURN(lhs, expr): evaluates a StatusOr, returns its status on error,
// otherwise moves the value into `lhs` (which may be a declaration).
#define STASIS_ASSIGN_OR_RETURN(lhs, expr) \
  STASIS_ASSIGN_OR_RETURN_IMPL_(STASIS_CONCAT_(stasis_statusor_, __LINE__), lhs, expr)
#define STASIS_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return tmp.status();                 \
  lhs = std::move(tmp).value()

#endif  // STASIS_STATUS_H_
