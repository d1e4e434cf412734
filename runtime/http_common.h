// File: runtime/http_common.h
//
// What the parts of the HTTP server (server.cc, tensor_codec.cc, input_fetch.cc) share: an
// error answer before it becomes a response (HttpError, with the constructors BadRequest and
// FromStatus, which maps a Status through HttpStatusForCode of runtime/server.h, defined in
// http_common.cc), the content types of the two wire formats, and the small text helpers of
// messages and logs. The JSON error body itself is written by the server (runtime/server.h,
// "Errors").
//
// Internal to runtime/: not part of the server's interface.
//
// Thread safety: plain values and pure functions.
#ifndef STASIS_RUNTIME_HTTP_COMMON_H_
#define STASIS_RUNTIME_HTTP_COMMON_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "stasis/status.h"

namespace stasis::runtime::internal {

inline constexpr char kJsonType[] = "application/json";
inline constexpr char kSafetensorsType[] = "application/octet-stream";

// An answer other than success, before it becomes a response.
struct HttpError {
  int status = 500;
  std::string code;
  std::string message;
  bool rejected = false;  // load shedding (queue full/timeout, draining): outcome "rejected"
};

// 400 "bad_request" with `message`.
HttpError BadRequest(std::string message);

// The answer for a non-OK Status: HttpStatusForCode(code), the code's name in lower case.
HttpError FromStatus(const Status& s);

// `v` with three decimals ("1.500"); "0" if it cannot be formatted.
std::string Fixed3(double v);

bool StartsWith(std::string_view s, std::string_view prefix);

// True if `s` starts with `prefix`, ignoring ASCII case.
bool IEqualsPrefix(std::string_view s, std::string_view prefix);

// For log lines: control characters would let a client forge lines.
std::string Printable(std::string_view s, size_t max = 256);

}  // namespace stasis::runtime::internal

#endif  // STASIS_RUNTIME_HTTP_COMMON_H_
