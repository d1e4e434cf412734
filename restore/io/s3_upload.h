// File: restore/io/s3_upload.h
//
// A local file uploaded to s3://BUCKET/KEY: `stasis push` and `stasis snapshot -o s3://`.
//
// A file smaller than a part goes up as one PutObject. A larger one goes up as an S3
// multipart upload: CreateMultipartUpload, then its parts (UploadPart) in parallel over
// reused connections (one libcurl multi handle), then CompleteMultipartUpload with every
// part's ETag. S3 publishes the object only at Complete, so a reader sees the old object or
// the whole new one, never a part of it; any failure, a cancellation or a deadline sends
// AbortMultipartUpload, so no upload stays open to be billed (an abort that itself fails
// is logged and named in the error, with the upload id for `aws s3api
// abort-multipart-upload`; a bucket lifecycle rule "AbortIncompleteMultipartUpload" is the
// backstop for a process that is killed).
//
// Every request is signed as the readers' (remote_location.h: ConfigureRequest); a body's
// x-amz-content-sha256 is its SHA-256, so S3 rejects bytes that changed on the way. A part
// that fails with a 5xx, a 429, a reset, a stall or a timeout is sent again whole, with
// backoff (RemoteOptions::max_retries per part). Each part in flight has its own buffer,
// read from the file with pread: memory is concurrency × part size, whatever the file's
// size. A file that changes while it is read (size or mtime) fails the upload (kAborted)
// rather than publish a mix.
//
// Errors: stasis/remote.h's (kPermissionDenied, kNotFound for a missing bucket,
// kUnavailable, kDeadlineExceeded), kCancelled, kInvalidArgument (not an s3:// location,
// a bad part size), kAborted (the file changed), and the file's own errors. Messages name
// the location redacted and never hold a credential or a signature.
//
// Thread safety: UploadToS3 may be called concurrently; `progress` is called on the
// calling thread.
#ifndef STASIS_RESTORE_IO_S3_UPLOAD_H_
#define STASIS_RESTORE_IO_S3_UPLOAD_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "restore/io/remote_location.h"
#include "stasis/remote.h"
#include "stasis/status.h"

namespace stasis {

// S3's limits on multipart uploads.
inline constexpr uint64_t kS3MinPartSize = uint64_t{5} << 20;  // all parts but the last
inline constexpr uint64_t kS3MaxPartSize = uint64_t{5} << 30;
inline constexpr uint64_t kS3MaxParts = 10000;
inline constexpr uint64_t kS3MaxObjectSize = uint64_t{5} << 40;

struct S3UploadOptions {
  // Endpoint, retries per request, connect and stall timeouts, and deadline_s for the
  // whole upload (Abort gets 30 s of its own). Its `concurrency` is not used here.
  RemoteOptions remote;
  // Bytes per part, kS3MinPartSize..kS3MaxPartSize; grown (S3PartSize) for a file of
  // more than kS3MaxParts parts. A file smaller than this is one PutObject.
  uint64_t part_size = uint64_t{64} << 20;
  // Parts in flight, 1..64; each holds a buffer of part_size bytes.
  int concurrency = 8;
  // Set (from any thread, a signal handler included) to stop: the upload is aborted and
  // UploadToS3 returns kCancelled within about 100 ms plus the abort's round trip.
  std::atomic<bool>* cancel = nullptr;
  // Bytes sent so far (acknowledged parts and the parts in flight), on the calling thread.
  std::function<void(uint64_t sent)> progress;
};

struct S3UploadReport {
  std::string location;  // redacted (RedactLocation)
  uint64_t bytes = 0;
  bool multipart = false;
  int parts = 0;           // 1 for a PutObject
  uint64_t part_size = 0;  // after S3PartSize
  int concurrency = 0;     // parts in flight at most
  int retries = 0;         // requests sent again after a retryable failure
  std::string etag;        // the object's, as S3 answered it
  double seconds = 0;
};

// The part size for a file of `file_size` bytes: `requested` when that makes at most
// kS3MaxParts parts, else the smallest multiple of 1 MiB that does. kInvalidArgument for a
// `requested` outside kS3MinPartSize..kS3MaxPartSize, kResourceExhausted for a file larger
// than S3 takes (kS3MaxObjectSize).
StatusOr<uint64_t> S3PartSize(uint64_t file_size, uint64_t requested);

// Uploads `local_path` to `location` (s3://BUCKET/KEY), replacing the object at that key if
// there is one, as `aws s3 cp` does (S3 has no exclusive create). `report` may be null.
Status UploadToS3(const std::string& local_path, const std::string& location,
                  const S3UploadOptions& options, S3UploadReport* report,
                  const RemoteEnvironment& env = RemoteEnvironment::Process());

}  // namespace stasis

#endif  // STASIS_RESTORE_IO_S3_UPLOAD_H_
