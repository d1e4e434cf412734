#include "stasis/status.h"

#include <cerrno>
#include <cstring>

namespace stasis {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "OK";
    case StatusCode::kCancelled:
      return "CANCELLED";
    case StatusCode::kUnknown:
      return "UNKNOWN";
    case StatusCode::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case StatusCode::kDeadlineExceeded:
      return "DEADLINE_EXCEEDED";
    case StatusCode::kNotFound:
      return "NOT_FOUND";
    case StatusCode::kAlreadyExists:
      return "ALREADY_EXISTS";
    case StatusCode::kPermissionDenied:
      return "PERMISSION_DENIED";
    case StatusCode::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case StatusCode::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case StatusCode::kAborted:
      return "ABORTED";
    case StatusCode::kOutOfRange:
      return "OUT_OF_RANGE";
    case StatusCode::kUnimplemented:
      return "UNIMPLEMENTED";
    case StatusCode::kInternal:
      return "INTERNAL";
    case StatusCode::kUnavailable:
      return "UNAVAILABLE";
    case StatusCode::kDataLoss:
      return "DATA_LOSS";
    case StatusCode::kUnauthenticated:
      return "UNAUTHENTICATED";
  }
  return "UNKNOWN_CODE";
}

Status::Status(StatusCode code, std::string_view message) {
  if (code != StatusCode::kOk) rep_.reset(new Rep{code, std::string(message)});
}

Status::Status(const Status& other) : rep_(other.rep_ ? new Rep(*other.rep_) : nullptr) {}

Status& Status::operator=(const Status& other) {
  if (this != &other) rep_.reset(other.rep_ ? new Rep(*other.rep_) : nullptr);
  return *this;
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string out(StatusCodeName(code()));
  out += ": ";
  out += message();
  return out;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return Status();
  std::string msg(context);
  msg += ": ";
  msg += message();
  return Status(code(), msg);
}

std::ostream& operator<<(std::ostream& os, const Status& s) { return os << s.ToString(); }

#define STASIS_DEFINE_ERROR_(Name, Code) \
  Status Name(std::string_view msg) { return Status(StatusCode::Code, msg); }
STASIS_DEFINE_ERROR_(CancelledError, kCancelled)
STASIS_DEFINE_ERROR_(UnknownError, kUnknown)
STASIS_DEFINE_ERROR_(InvalidArgumentError, kInvalidArgument)
STASIS_DEFINE_ERROR_(NotFoundError, kNotFound)
STASIS_DEFINE_ERROR_(AlreadyExistsError, kAlreadyExists)
STASIS_DEFINE_ERROR_(PermissionDeniedError, kPermissionDenied)
STASIS_DEFINE_ERROR_(ResourceExhaustedError, kResourceExhausted)
STASIS_DEFINE_ERROR_(FailedPreconditionError, kFailedPrecondition)
STASIS_DEFINE_ERROR_(OutOfRangeError, kOutOfRange)
STASIS_DEFINE_ERROR_(UnimplementedError, kUnimplemented)
STASIS_DEFINE_ERROR_(InternalError, kInternal)
STASIS_DEFINE_ERROR_(UnavailableError, kUnavailable)
STASIS_DEFINE_ERROR_(DataLossError, kDataLoss)
#undef STASIS_DEFINE_ERROR_

Status ErrnoToStatus(int err, std::string_view context) {
  StatusCode code;
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      code = StatusCode::kNotFound;
      break;
    case EEXIST:
      code = StatusCode::kAlreadyExists;
      break;
    case EACCES:
    case EPERM:
    case EROFS:
      code = StatusCode::kPermissionDenied;
      break;
    case ENOSPC:
    case EDQUOT:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
    case EFBIG:
      code = StatusCode::kResourceExhausted;
      break;
    case EINVAL:
    case EISDIR:
    case ENAMETOOLONG:
      code = StatusCode::kInvalidArgument;
      break;
    case EAGAIN:
    case EINTR:
    case EBUSY:
      code = StatusCode::kUnavailable;
      break;
    case ENOSYS:
    case EOPNOTSUPP:
      code = StatusCode::kUnimplemented;
      break;
    case EIO:
      code = StatusCode::kUnavailable;
      break;  // as abseil maps it
    default:
      code = StatusCode::kUnknown;
      break;
  }
  std::string msg(context);
  msg += ": ";
  msg += std::strerror(err);
  return Status(code, msg);
}

}  // namespace stasis
