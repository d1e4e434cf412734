#include "restore/io/http_status.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>

namespace stasis {

void InitCurlOnce() {
  static const bool done = [] {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return true;
  }();
  (void)done;
}

std::string HeaderValue(std::string_view line, std::string_view name) {
  if (line.size() <= name.size() || line[name.size()] != ':') return {};
  for (size_t i = 0; i < name.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(line[i])) != name[i]) return {};
  std::string_view v = line.substr(name.size() + 1);
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == '\r' || v.back() == '\n' || v.back() == ' '))
    v.remove_suffix(1);
  return std::string(v);
}

long StatusLineCode(std::string_view line) {
  if (line.substr(0, 5) != "HTTP/") return 0;
  size_t sp = line.find(' ');
  if (sp == std::string_view::npos) return 0;
  return std::strtol(std::string(line.substr(sp + 1, 3)).c_str(), nullptr, 10);
}

std::string S3ErrorSummary(const std::string& body) {
  auto field = [&](const char* tag) -> std::string {
    std::string open = std::string("<") + tag + ">", close = std::string("</") + tag + ">";
    size_t b = body.find(open);
    if (b == std::string::npos) return {};
    b += open.size();
    size_t e = body.find(close, b);
    if (e == std::string::npos || e - b > 300) return {};
    return body.substr(b, e - b);
  };
  std::string code = field("Code"), message = field("Message");
  if (code.empty()) return {};
  return message.empty() ? code : code + ": " + message;
}

bool RetryableCurl(CURLcode c) {
  switch (c) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_SSL_CONNECT_ERROR:
      return true;
    default:
      return false;
  }
}

bool RetryableHttp(long code) { return code >= 500 || code == 429 || code == 408; }

Status HttpError(long code, const std::string& body, const std::string& display,
                 std::string_view what) {
  std::string s3 = S3ErrorSummary(body);
  std::string detail = s3.empty() ? "" : " (" + s3 + ")";
  std::string m = "HTTP " + std::to_string(code) + " " + std::string(what) + " " + display + detail;
  switch (code) {
    case 401:
      return Status(StatusCode::kUnauthenticated, m + ": credentials required");
    case 403:
      return PermissionDeniedError(
          m +
          ": access denied; check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE) and the "
          "bucket policy");
    case 404:
      return NotFoundError(m + ": not found");
    case 412:
      return Status(StatusCode::kAborted,
                    m + ": the object was replaced while it was read; restore it again");
    case 416:
      return OutOfRangeError(m + ": range not satisfiable (the object is shorter than expected)");
    default:
      return FailedPreconditionError(m);
  }
}

Status CurlError(CURLcode c, const char* errbuf, const std::string& display,
                 std::string_view what) {
  std::string detail = errbuf[0] ? errbuf : curl_easy_strerror(c);
  std::string m = std::string(what) + " " + display + ": " + detail;
  switch (c) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
      return UnavailableError("could not resolve host: " + m);
    case CURLE_COULDNT_CONNECT:
      return UnavailableError("could not connect: " + m);
    case CURLE_OPERATION_TIMEDOUT:
      return UnavailableError("timed out or stalled: " + m);
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
      return FailedPreconditionError("TLS: " + m);
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
      return InvalidArgumentError(m);
    case CURLE_OUT_OF_MEMORY:
      return ResourceExhaustedError(m);
    default:
      return UnavailableError(m);
  }
}

bool ResponseHead::Take(std::string_view line) {
  const long c = StatusLineCode(line);
  if (c != 0) {
    Clear();
    code = c;
  }
  if (std::string v = HeaderValue(line, "etag"); !v.empty()) etag = v;
  if (std::string v = HeaderValue(line, "content-range"); !v.empty()) content_range = v;
  return c != 0;
}

std::chrono::milliseconds RetryBackoff(int failures, uint64_t spread) {
  if (failures <= 0) return std::chrono::milliseconds(0);
  const int64_t base = std::min<int64_t>(5000, 100LL << std::min(failures - 1, 6));
  return std::chrono::milliseconds(base + static_cast<int64_t>(spread % 97) * base / 400);
}

std::string SecondsText(double seconds) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", seconds);
  return b;
}

}  // namespace stasis
