// File: restore/io/remote_object.h
//
// A remote image pinned at open, and the one way its bytes are fetched: a RangeTransfer,
// a range GET that lands straight in caller memory once the response is checked to be
// that range of that object (206, Content-Range, ETag), and that is re-armed for the
// missing bytes after a retryable failure. RemoteObject::ReadRange runs transfers one at
// a time (the manifest, verification); restore/io/http_read_engine.h runs many at once.
//
// Thread safety: a RemoteObject is immutable after Open and safe for concurrent use; a
// RangeTransfer belongs to one thread at a time.
#ifndef STASIS_RESTORE_IO_REMOTE_OBJECT_H_
#define STASIS_RESTORE_IO_REMOTE_OBJECT_H_

#include <curl/curl.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "restore/io/http_status.h"
#include "restore/io/remote_location.h"
#include "stasis/file_system.h"
#include "stasis/remote.h"
#include "stasis/status.h"

namespace stasis {

class RemoteObject {
 public:
  // Bytes the opening request asks for from the end of the object: the footer and the
  // manifest of most images (a 1.3B-parameter model's manifest is about 40 KiB).
  static constexpr uint64_t kTailBytes = 1 << 20;

  // One suffix-range GET: size, ETag and the last kTailBytes. Errors: stasis/remote.h.
  static StatusOr<std::shared_ptr<const RemoteObject>> Open(
      std::string_view location, const RemoteOptions& options,
      const RemoteEnvironment& env = RemoteEnvironment::Process());
  ~RemoteObject();

  uint64_t size() const { return size_; }
  const std::string& etag() const { return etag_; }  // "" when the server sends none
  const std::string& display() const { return location_.display; }
  const ResolvedLocation& location() const { return location_; }
  const RemoteOptions& options() const { return options_; }
  // When every read of this object must have ended (RemoteOptions::deadline_s after Open).
  bool has_deadline() const { return options_.deadline_s > 0; }
  std::chrono::steady_clock::time_point deadline() const { return deadline_; }

  // Reads exactly `length` bytes at `offset` (from the opening request's tail when it holds
  // them), retrying as stasis/remote.h says. A read past the end is kOutOfRange.
  Status ReadRange(uint64_t offset, uint64_t length, void* dst) const;

  // A RandomAccessFile over this object (ImageReader reads the manifest through it).
  std::unique_ptr<RandomAccessFile> NewFile(std::shared_ptr<const RemoteObject> self) const;

 private:
  RemoteObject() = default;
  CURL* TakeHandle() const;
  void ReturnHandle(CURL* h) const;

  ResolvedLocation location_;
  RemoteOptions options_;
  std::chrono::steady_clock::time_point deadline_;
  uint64_t size_ = 0;
  std::string etag_;
  uint64_t tail_offset_ = 0;
  std::string tail_;
  mutable std::mutex mu_;
  mutable std::vector<CURL*> idle_handles_;  // kept for their connections
};

// One range GET, retried until whole or failed. The body is written into `dst` only after
// the response proved to be the asked range of the pinned object.
class RangeTransfer {
 public:
  // `object` must outlive the transfer. length > 0; [offset, offset + length) within the
  // object (callers check).
  RangeTransfer(const RemoteObject* object, uint64_t offset, uint64_t length, void* dst);
  ~RangeTransfer();
  RangeTransfer(const RangeTransfer&) = delete;
  RangeTransfer& operator=(const RangeTransfer&) = delete;

  // Arms `h` for the bytes still missing. kDeadlineExceeded when the object's deadline
  // has passed.
  Status Arm(CURL* h);

  enum class Next { kDone, kRetry, kFail };
  // Classifies a finished attempt. kRetry: wait backoff() then Arm again; kFail: *status.
  Next Finish(CURL* h, CURLcode code, Status* status);
  std::chrono::milliseconds backoff() const;

  uint64_t offset() const { return offset_; }
  uint64_t length() const { return length_; }
  uint64_t received() const { return received_; }
  int attempts() const { return attempts_; }

 private:
  static size_t OnHeader(char* data, size_t size, size_t n, void* self);
  static size_t OnBody(char* data, size_t size, size_t n, void* self);
  // libcurl's progress callback: aborts an attempt that has received nothing for
  // stall_timeout_s (libcurl's low-speed check alone averages recent bytes in).
  static int OnProgress(void* self, curl_off_t, curl_off_t, curl_off_t, curl_off_t);
  // The first body byte arrived: is this response the range asked for? Sets reject_.
  bool Accept();
  Status Failure(std::string_view what) const;

  const RemoteObject* object_;
  uint64_t offset_, length_;
  uint8_t* dst_;
  uint64_t received_ = 0;
  int attempts_ = 0;            // attempts started
  int failures_ = 0;            // consecutive failed attempts that brought no byte
  uint64_t attempt_start_ = 0;  // received_ when the attempt started
  uint64_t attempt_limit_ = 0;  // bytes this attempt's answer announced (Content-Range)
  curl_slist* headers_ = nullptr;
  // This attempt's response.
  ResponseHead head_;
  bool checked_ = false, accepted_ = false;
  bool stalled_ = false;
  std::chrono::steady_clock::time_point last_byte_;  // or the attempt's start
  std::string error_body_;  // a non-2xx response's body (S3's XML error), bounded
  Status reject_;
  Status last_error_;  // the last retryable failure, for the message when retries run out
};

}  // namespace stasis

#endif  // STASIS_RESTORE_IO_REMOTE_OBJECT_H_
