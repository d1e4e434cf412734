// File: restore/io/remote_location.h
//
// From a location string (s3://, http://, https://) and the environment to what a request
// needs: the URL, the S3 region and credentials, and the redacted form messages show.
// Pure but for the environment, which comes through RemoteEnvironment so tests set it.
// Also the one place an easy handle is configured for a location (URL, SigV4 signing,
// timeouts), so the restore's reads and `stasis push` sign alike.
#ifndef STASIS_RESTORE_IO_REMOTE_LOCATION_H_
#define STASIS_RESTORE_IO_REMOTE_LOCATION_H_

#include <curl/curl.h>

#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "stasis/remote.h"
#include "stasis/status.h"

namespace stasis {

struct AwsCredentials {
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  // empty unless temporary credentials
};

// Where settings come from: the process environment and $HOME by default.
struct RemoteEnvironment {
  std::function<std::optional<std::string>(const char* name)> getenv;
  static RemoteEnvironment Process();
  std::optional<std::string> Get(const char* name) const;  // empty values count as unset
};

struct ResolvedLocation {
  bool s3 = false;
  std::string url;      // the object's URL, query string included (presigned URLs)
  std::string display;  // RedactLocation(location): for messages and logs
  // S3 only.
  std::string bucket, key;
  std::string region;
  std::string endpoint;  // the endpoint the URL was built from ("" for AWS's own)
  std::optional<AwsCredentials> credentials;  // nullopt: unsigned requests
  std::string credentials_source;             // "environment", "profile 'x'", "none"
};

// Errors: kInvalidArgument (not s3/http/https, no bucket or key, a bad endpoint URL),
// kNotFound (AWS_PROFILE names a profile no file has), kDataLoss (a credentials file that
// does not parse).
StatusOr<ResolvedLocation> ResolveLocation(std::string_view location, const RemoteOptions& options,
                                           const RemoteEnvironment& env);

// Credentials as the AWS CLI finds them (stasis/remote.h); nullopt when there are none.
StatusOr<std::optional<AwsCredentials>> LoadAwsCredentials(const RemoteEnvironment& env,
                                                           std::string* source);

// SigV4's percent-encoding: unreserved characters (A-Z a-z 0-9 - _ . ~) kept, '/' too when
// `keep_slash` (a key in a path), every other byte %XX in upper case.
std::string PercentEncode(std::string_view text, bool keep_slash);
// An S3 key for a URL path ('/' kept, as S3 and SigV4's canonical URI want).
inline std::string EncodeS3Key(std::string_view key) { return PercentEncode(key, true); }

// Arms an easy handle for a request to `loc` (URL with `url_suffix` appended, e.g.
// "?uploads"; libcurl 7.88 signs the query as it is sent, so the query is put in SigV4's
// canonical form here: parameters sorted, '=' after every name; values must come
// percent-encoded): SigV4 signing when credentials are set (CURLOPT_AWS_SIGV4
// "aws:amz:REGION:s3", x-amz-content-sha256 and x-amz-security-token headers appended to
// *headers), connect timeout, stall detection, TCP keep-alive, no signals. The caller
// owns *headers (curl_slist_free_all) and sets CURLOPT_HTTPHEADER after adding its own.
// `payload_sha256_hex`: the body's SHA-256 for signed uploads; empty: UNSIGNED-PAYLOAD.
Status ConfigureRequest(CURL* handle, const ResolvedLocation& loc, const RemoteOptions& options,
                        std::string_view url_suffix, curl_slist** headers,
                        std::string_view payload_sha256_hex = {});

}  // namespace stasis

#endif  // STASIS_RESTORE_IO_REMOTE_LOCATION_H_
