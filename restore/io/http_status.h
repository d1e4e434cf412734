// File: restore/io/http_status.h
//
// What the remote readers (remote_object.h) and `stasis push` (s3_upload.h) share about
// libcurl answers: its one-time global set-up, the response headers they read, which
// failures are worth a retry, and how an HTTP status or a libcurl error becomes a Status
// (the codes of stasis/remote.h). Messages name the location as given (callers pass the
// redacted form) and take nothing from an S3 error body but its <Code> and <Message>.
//
// Thread safety: all functions are safe to call concurrently.
#ifndef STASIS_RESTORE_IO_HTTP_STATUS_H_
#define STASIS_RESTORE_IO_HTTP_STATUS_H_

#include <curl/curl.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "stasis/status.h"

namespace stasis {

// curl_global_init, once per process, before the first handle (curl_global_init is not
// thread-safe in 7.88 unless called first).
void InitCurlOnce();

// The value of header `name` (lower case) if `line` is that header, else "".
std::string HeaderValue(std::string_view line, std::string_view name);

// "HTTP/1.1 206 Partial Content" → 206; 0 when the line is not a status line.
long StatusLineCode(std::string_view line);

// What a response's header lines say that the readers and the upload check: its status and
// ETag, and the Content-Range of a range answer. A status line (a 100 Continue comes before
// the real one) starts over.
struct ResponseHead {
  long code = 0;
  std::string etag, content_range;
  void Clear() { *this = ResponseHead(); }
  // Takes one header line; true when it was a status line (a new response begins: the
  // caller drops what it gathered of the previous one's body).
  bool Take(std::string_view line);
};

// S3's "<Code>: <Message>" from an XML error body, "" when it holds none; never anything
// else from it (the body of SignatureDoesNotMatch echoes the canonical request, token
// header included).
std::string S3ErrorSummary(const std::string& body);

// The wait before the next attempt after `failures` consecutive failed ones: 100 ms doubling
// to 5 s (0 for none), plus up to a quarter more picked by `spread` (a range's offset, a part
// number) so that parallel retries do not align.
std::chrono::milliseconds RetryBackoff(int failures, uint64_t spread);

// Seconds as messages write them ("2", "0.5").
std::string SecondsText(double seconds);

// Failures a retry may cure: resets, timeouts, refused connections; 5xx, 429 and 408.
bool RetryableCurl(CURLcode c);
bool RetryableHttp(long code);

// A non-retryable HTTP answer as a Status: "HTTP <code> <what> <display> (<S3 summary>)",
// 401 kUnauthenticated, 403 kPermissionDenied, 404 kNotFound, 412 kAborted, 416
// kOutOfRange, others kFailedPrecondition.
Status HttpError(long code, const std::string& body, const std::string& display,
                 std::string_view what);

// A libcurl failure as a Status: DNS, connect and timeouts kUnavailable, TLS
// kFailedPrecondition, a bad URL kInvalidArgument. `errbuf`: CURLOPT_ERRORBUFFER's text or "".
Status CurlError(CURLcode c, const char* errbuf, const std::string& display, std::string_view what);

}  // namespace stasis

#endif  // STASIS_RESTORE_IO_HTTP_STATUS_H_
