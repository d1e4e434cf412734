// File: stasis/remote.h
//
// Images in object storage: every place that takes an image path also takes
//
//   s3://bucket/key              signed with AWS Signature V4 (libcurl's own signer)
//   https://host/path[?query]    presigned URLs included (the query is passed through)
//   http://host/path[?query]
//
// A remote image is pinned when it is opened: the first request (one suffix-range GET that
// also brings the footer and, for most images, the manifest) records its size and ETag, and
// every later range GET carries If-Match with that ETag and checks the ETag it gets back.
// An object replaced while it is read is kAborted ("... was replaced while it was read"),
// never a mix of two objects' bytes. Range GETs run in parallel over reused connections
// (libcurl multi); a 5xx, a reset, a timeout or a stall is retried with exponential
// backoff, fetching only the bytes still missing.
//
// S3 settings come from the standard places, in this order:
//   endpoint     RemoteOptions::s3_endpoint, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL; none:
//                https://BUCKET.s3.REGION.amazonaws.com (virtual-hosted); a custom endpoint
//                is addressed path-style (ENDPOINT/BUCKET/KEY), as S3-compatible stores need
//   region       AWS_REGION, AWS_DEFAULT_REGION, the profile's `region` in ~/.aws/config
//                (AWS_CONFIG_FILE), else us-east-1
//   credentials  AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN), else the
//                profile AWS_PROFILE (default "default") of ~/.aws/credentials
//                (AWS_SHARED_CREDENTIALS_FILE); none at all: requests go unsigned
//                (public buckets)
//
// Errors: kPermissionDenied (403: credentials or policy), kNotFound (404: no bucket or key),
// kUnavailable (DNS, connect, 5xx, resets and stalls once the retries are spent),
// kDeadlineExceeded (RemoteOptions::deadline_s), kAborted (the object was replaced),
// kUnimplemented (a server that ignores Range). Messages name the location without its
// query string: no credential, signature or token appears in a log, report or error.
//
// Thread safety: the functions here are safe to call concurrently.
#ifndef STASIS_REMOTE_H_
#define STASIS_REMOTE_H_

#include <memory>
#include <string>
#include <string_view>

#include "stasis/status.h"

namespace stasis {

class ImageReader;

struct RemoteOptions {
  // S3 endpoint URL (http://127.0.0.1:9000); empty: the environment's, else AWS's.
  std::string s3_endpoint;
  // Range GETs in flight for one restore (connections are reused between them), 1..256.
  // 16 saturated a 2 Gbit/s endpoint with 4 MiB chunks; object stores serve each
  // connection at 50-100 MB/s, so faster links want more.
  int concurrency = 16;
  // Attempts per range after the first, with backoff from 100 ms doubling to 5 s.
  int max_retries = 6;
  // A transfer that receives no byte for this long, or averages under 1 KiB/s over it
  // (libcurl's low-speed check, which averages over a few seconds), is a stall: retried.
  double stall_timeout_s = 20;
  // Seconds a whole remote operation (an open, a restore's reads) may take; 0: no limit.
  // Retries and stalls are bounded anyway; this bounds a slow trickle.
  double deadline_s = 0;
  // TCP connect timeout per connection.
  double connect_timeout_s = 10;
};

// True for s3://, http:// and https:// locations (case-insensitive scheme).
bool IsRemoteLocation(std::string_view location);

// The location as messages show it: without its query string (presigned URLs carry
// their signature there) and without user:password@.
std::string RedactLocation(std::string_view location);

// Opens an image for reading its manifest and chunks: a local path (as ImageReader::Open)
// or a remote location (pinned as above). Errors as ImageReader::Open, plus the remote
// ones above.
StatusOr<std::unique_ptr<ImageReader>> OpenImageReader(const std::string& location,
                                                       const RemoteOptions& options = {});

}  // namespace stasis

#endif  // STASIS_REMOTE_H_
