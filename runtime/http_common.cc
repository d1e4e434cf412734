#include "runtime/http_common.h"

#include <cctype>
#include <charconv>
#include <system_error>
#include <utility>

#include "runtime/server.h"

namespace stasis::runtime {

int HttpStatusForCode(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return 200;
    case StatusCode::kInvalidArgument:
      return 422;
    case StatusCode::kFailedPrecondition:
      return 409;
    case StatusCode::kResourceExhausted:
    case StatusCode::kUnavailable:
      return 503;
    case StatusCode::kNotFound:
      return 404;
    case StatusCode::kPermissionDenied:
      return 403;
    case StatusCode::kUnauthenticated:
      return 401;
    case StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

namespace internal {
namespace {

std::string LowerCodeName(StatusCode code) {
  std::string s(StatusCodeName(code));
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

HttpError BadRequest(std::string message) { return {400, "bad_request", std::move(message)}; }

HttpError FromStatus(const Status& s) {
  return {HttpStatusForCode(s.code()), LowerCodeName(s.code()), std::string(s.message())};
}

std::string Fixed3(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::fixed, 3);
  if (ec != std::errc()) return "0";
  return std::string(buf, end);
}

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.substr(0, prefix.size()) == prefix;
}

bool IEqualsPrefix(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(s[i])) !=
        std::tolower(static_cast<unsigned char>(prefix[i]))) {
      return false;
    }
  }
  return true;
}

std::string Printable(std::string_view s, size_t max) {
  std::string out;
  for (char c : s.substr(0, max)) {
    out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  }
  if (s.size() > max) out += "...";
  return out;
}

}  // namespace internal
}  // namespace stasis::runtime
