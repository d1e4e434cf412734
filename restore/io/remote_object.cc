#include "restore/io/remote_object.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "common/numbers.h"
#include "restore/io/http_status.h"

namespace stasis {
namespace {

using Clock = std::chrono::steady_clock;

// "bytes a-b/total" → a, b, total (total 0 when "*").
bool ParseContentRange(std::string_view v, uint64_t* a, uint64_t* b, uint64_t* total) {
  if (v.substr(0, 6) != "bytes ") return false;
  std::string s(v.substr(6));
  unsigned long long x = 0, y = 0, t = 0;
  char star = 0;
  if (std::sscanf(s.c_str(), "%llu-%llu/%llu", &x, &y, &t) == 3) {
  } else if (std::sscanf(s.c_str(), "%llu-%llu/%c", &x, &y, &star) == 3 && star == '*') {
    t = 0;
  } else {
    return false;
  }
  if (y < x) return false;
  *a = x, *b = y, *total = t;
  return true;
}

thread_local char tls_errbuf[CURL_ERROR_SIZE];

}  // namespace

// ---- RemoteObject -------------------------------------------------------------------

StatusOr<std::shared_ptr<const RemoteObject>> RemoteObject::Open(std::string_view location,
                                                                 const RemoteOptions& options,
                                                                 const RemoteEnvironment& env) {
  InitCurlOnce();
  if (options.concurrency < 1 || options.concurrency > 256)
    return InvalidArgumentError("remote concurrency must be 1..256, not " +
                                std::to_string(options.concurrency));
  if (options.max_retries < 0 || options.max_retries > 100)
    return InvalidArgumentError("remote retries must be 0..100, not " +
                                std::to_string(options.max_retries));
  if (!(options.stall_timeout_s > 0) || !(options.deadline_s >= 0) ||
      !(options.connect_timeout_s > 0))
    return InvalidArgumentError("remote timeouts must be positive");
  std::shared_ptr<RemoteObject> o(new RemoteObject());
  o->options_ = options;
  o->deadline_ = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(
                                    (options.deadline_s > 0 ? options.deadline_s : 1e9) * 1000));
  STASIS_ASSIGN_OR_RETURN(o->location_, ResolveLocation(location, options, env));
  const std::string& display = o->location_.display;

  // The suffix range brings size, ETag and the tail in one request.
  struct Response {
    ResponseHead head;
    std::string body;
    static size_t Header(char* d, size_t s, size_t n, void* p) {
      auto* r = static_cast<Response*>(p);
      if (r->head.Take(std::string_view(d, s * n))) r->body.clear();
      return s * n;
    }
    static size_t Body(char* d, size_t s, size_t n, void* p) {
      auto* r = static_cast<Response*>(p);
      // A server that ignores Range sends everything: stop once more than the tail came.
      if (r->body.size() + s * n > kTailBytes + 1) return 0;
      r->body.append(d, s * n);
      return s * n;
    }
  };
  CURL* h = o->TakeHandle();
  if (h == nullptr) return ResourceExhaustedError("curl_easy_init failed");
  Status last;
  for (int attempt = 0;; ++attempt) {
    if (attempt > 0) {
      auto wait =
          std::chrono::milliseconds(std::min<int64_t>(5000, 100LL << std::min(attempt - 1, 6)));
      if (Clock::now() + wait >= o->deadline_) {
        o->ReturnHandle(h);
        return Status(StatusCode::kDeadlineExceeded,
                      "deadline of " + SecondsText(options.deadline_s) + " s exceeded opening " +
                          display + " (last error: " + std::string(last.message()) + ")");
      }
      std::this_thread::sleep_for(wait);
    }
    Response r;
    curl_slist* headers = nullptr;
    Status armed = ConfigureRequest(h, o->location_, options, "", &headers);
    if (!armed.ok()) {
      curl_slist_free_all(headers);
      o->ReturnHandle(h);
      return armed;
    }
    headers = curl_slist_append(headers, ("Range: bytes=-" + std::to_string(kTailBytes)).c_str());
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, &Response::Header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &r);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &Response::Body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &r);
    tls_errbuf[0] = 0;
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, tls_errbuf);
    if (options.deadline_s > 0)
      curl_easy_setopt(
          h, CURLOPT_TIMEOUT_MS,
          static_cast<long>(std::max<int64_t>(
              1, std::chrono::duration_cast<std::chrono::milliseconds>(o->deadline_ - Clock::now())
                     .count())));
    CURLcode c = curl_easy_perform(h);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, nullptr);
    curl_slist_free_all(headers);
    const bool last_try = attempt >= options.max_retries;
    if (c != CURLE_OK && !(c == CURLE_WRITE_ERROR && r.head.code == 200)) {
      Status s = CurlError(c, tls_errbuf, display, "opening");
      if (Clock::now() >= o->deadline_)
        s = Status(StatusCode::kDeadlineExceeded, "deadline of " + SecondsText(options.deadline_s) +
                                                      " s exceeded opening " + display);
      if (!RetryableCurl(c) || last_try || s.code() == StatusCode::kDeadlineExceeded) {
        o->ReturnHandle(h);
        return s;
      }
      last = s;
      continue;
    }
    if (r.head.code == 416) {  // an empty object: nothing to suffix-range
      o->ReturnHandle(h);
      return OutOfRangeError(display + " is empty: not an image");
    }
    if (r.head.code != 206 && r.head.code != 200) {
      Status s = HttpError(r.head.code, r.body, display, "opening");
      if (!RetryableHttp(r.head.code) || last_try) {
        o->ReturnHandle(h);
        return RetryableHttp(r.head.code)
                   ? UnavailableError(std::string(s.message()) + " (" +
                                      std::to_string(attempt + 1) + " attempts)")
                   : s;
      }
      last = s;
      continue;
    }
    o->etag_ = r.head.etag;
    if (r.head.code == 200) {
      // Range ignored: fine when the whole object fitted in the tail; else unsupported.
      if (c == CURLE_WRITE_ERROR) {
        o->ReturnHandle(h);
        return UnimplementedError(display +
                                  ": the server ignores Range requests (answered 200 with the "
                                  "whole object); stasis needs range reads");
      }
      o->size_ = r.body.size();
      o->tail_offset_ = 0;
    } else {
      uint64_t a = 0, b = 0, total = 0;
      if (!ParseContentRange(r.head.content_range, &a, &b, &total) || total == 0 ||
          b + 1 != total || r.body.size() != b - a + 1) {
        o->ReturnHandle(h);
        return DataLossError(display + ": a malformed answer to a suffix range (Content-Range '" +
                             r.head.content_range + "', " + Num(r.body.size()) + " bytes)");
      }
      o->size_ = total;
      o->tail_offset_ = a;
    }
    o->tail_ = std::move(r.body);
    break;
  }
  o->ReturnHandle(h);
  if (o->etag_.empty())
    spdlog::warn(
        "{}: the server sends no ETag, so a replacement mid-read is caught only by "
        "the image's checksums",
        display);
  spdlog::info("opened {}: {} bytes, ETag {}, credentials: {}", display, o->size_,
               o->etag_.empty() ? "none" : o->etag_,
               o->location_.s3 ? o->location_.credentials_source : "n/a");
  return std::shared_ptr<const RemoteObject>(std::move(o));
}

RemoteObject::~RemoteObject() {
  for (CURL* h : idle_handles_) curl_easy_cleanup(h);
}

CURL* RemoteObject::TakeHandle() const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!idle_handles_.empty()) {
      CURL* h = idle_handles_.back();
      idle_handles_.pop_back();
      return h;
    }
  }
  return curl_easy_init();
}

void RemoteObject::ReturnHandle(CURL* h) const {
  std::lock_guard<std::mutex> lock(mu_);
  idle_handles_.push_back(h);
}

Status RemoteObject::ReadRange(uint64_t offset, uint64_t length, void* dst) const {
  if (length == 0) return OkStatus();
  if (offset > size_ || length > size_ - offset)
    return OutOfRangeError("truncated: " + display() + " holds " + Num(size_) +
                           " bytes, a read of " + Num(length) + " at offset " + Num(offset) +
                           " goes past its end");
  if (offset >= tail_offset_) {
    std::memcpy(dst, tail_.data() + (offset - tail_offset_), length);
    return OkStatus();
  }
  RangeTransfer t(this, offset, length, dst);
  CURL* h = TakeHandle();
  if (h == nullptr) return ResourceExhaustedError("curl_easy_init failed");
  Status result;
  for (;;) {
    Status armed = t.Arm(h);
    if (!armed.ok()) {
      result = armed;
      break;
    }
    CURLcode c = curl_easy_perform(h);
    RangeTransfer::Next next = t.Finish(h, c, &result);
    if (next == RangeTransfer::Next::kDone) break;
    if (next == RangeTransfer::Next::kFail) break;
    std::this_thread::sleep_for(t.backoff());
  }
  ReturnHandle(h);
  return result;
}

namespace {

class RemoteFile final : public RandomAccessFile {
 public:
  explicit RemoteFile(std::shared_ptr<const RemoteObject> o) : o_(std::move(o)) {}
  StatusOr<size_t> ReadAt(uint64_t offset, size_t n, void* dst) const override {
    if (offset >= o_->size()) return size_t{0};
    n = static_cast<size_t>(std::min<uint64_t>(n, o_->size() - offset));
    STASIS_RETURN_IF_ERROR(o_->ReadRange(offset, n, dst));
    return n;
  }
  uint64_t Size() const override { return o_->size(); }

 private:
  std::shared_ptr<const RemoteObject> o_;
};

}  // namespace

std::unique_ptr<RandomAccessFile> RemoteObject::NewFile(
    std::shared_ptr<const RemoteObject> self) const {
  return std::make_unique<RemoteFile>(std::move(self));
}

// ---- RangeTransfer ------------------------------------------------------------------

RangeTransfer::RangeTransfer(const RemoteObject* object, uint64_t offset, uint64_t length,
                             void* dst)
    : object_(object), offset_(offset), length_(length), dst_(static_cast<uint8_t*>(dst)) {}

RangeTransfer::~RangeTransfer() { curl_slist_free_all(headers_); }

Status RangeTransfer::Failure(std::string_view what) const {
  return Status(StatusCode::kUnavailable,
                std::string(what) + " reading " + object_->display() + " (bytes " + Num(offset_) +
                    ".." + Num(offset_ + length_) + ", " + Num(received_) + " received, " +
                    std::to_string(attempts_) + " attempts)");
}

Status RangeTransfer::Arm(CURL* h) {
  if (Clock::now() >= object_->deadline())
    return Status(StatusCode::kDeadlineExceeded,
                  "deadline of " + SecondsText(object_->options().deadline_s) +
                      " s exceeded reading " + object_->display() + " (bytes " + Num(offset_) +
                      ".." + Num(offset_ + length_) + ", " + Num(received_) + " received" +
                      (last_error_.ok() ? std::string()
                                        : "; last error: " + std::string(last_error_.message())) +
                      ")");
  curl_slist_free_all(headers_);
  headers_ = nullptr;
  STASIS_RETURN_IF_ERROR(
      ConfigureRequest(h, object_->location(), object_->options(), "", &headers_));
  const uint64_t first = offset_ + received_, last = offset_ + length_ - 1;
  headers_ = curl_slist_append(
      headers_, ("Range: bytes=" + std::to_string(first) + "-" + std::to_string(last)).c_str());
  // If-Match compares strongly: a weak ETag (W/"...") never matches, so only the answer's
  // own ETag is compared for those (Accept).
  const std::string& pinned = object_->etag();
  if (!pinned.empty() && pinned.rfind("W/", 0) != 0)
    headers_ = curl_slist_append(headers_, ("If-Match: " + pinned).c_str());
  if (headers_ == nullptr) return ResourceExhaustedError("out of memory for request headers");
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers_);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, &RangeTransfer::OnHeader);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, this);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &RangeTransfer::OnBody);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, this);
  curl_easy_setopt(h, CURLOPT_PRIVATE, this);
  curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, &RangeTransfer::OnProgress);
  curl_easy_setopt(h, CURLOPT_XFERINFODATA, this);
  curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
  if (object_->has_deadline())
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS,
                     static_cast<long>(
                         std::max<int64_t>(1, std::chrono::duration_cast<std::chrono::milliseconds>(
                                                  object_->deadline() - Clock::now())
                                                  .count())));
  head_.Clear();
  checked_ = accepted_ = stalled_ = false;
  last_byte_ = Clock::now();
  error_body_.clear();
  reject_ = OkStatus();
  attempt_start_ = received_;
  ++attempts_;
  return OkStatus();
}

int RangeTransfer::OnProgress(void* self, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* t = static_cast<RangeTransfer*>(self);
  const auto quiet = Clock::now() - t->last_byte_;
  if (quiet < std::chrono::duration<double>(t->object_->options().stall_timeout_s)) return 0;
  t->stalled_ = true;
  return 1;  // CURLE_ABORTED_BY_CALLBACK
}

size_t RangeTransfer::OnHeader(char* data, size_t size, size_t n, void* self) {
  auto* t = static_cast<RangeTransfer*>(self);
  t->last_byte_ = Clock::now();
  std::string_view line(data, size * n);
  t->head_.Take(line);
  return size * n;
}

bool RangeTransfer::Accept() {
  const uint64_t first = offset_ + received_, last = offset_ + length_ - 1;
  const std::string& pinned = object_->etag();
  if (!pinned.empty() && head_.etag.empty()) {
    reject_ = Status(StatusCode::kAborted, object_->display() +
                                               " answered a range without an ETag, so it cannot be "
                                               "told from a replacement (opened as " +
                                               pinned + "); restore it again");
    return false;
  }
  if (!pinned.empty() && head_.etag != pinned) {
    reject_ = Status(StatusCode::kAborted,
                     object_->display() + " was replaced while it was read (ETag " + head_.etag +
                         ", opened as " + pinned + "); restore it again");
    return false;
  }
  if (head_.code == 200) {
    attempt_limit_ = length_ - received_;
    if (first == 0 && last + 1 == object_->size()) return true;
    reject_ = UnimplementedError(object_->display() +
                                 ": the server ignored a Range request (answered 200); stasis "
                                 "needs range reads");
    return false;
  }
  uint64_t a = 0, b = 0, total = 0;
  if (!ParseContentRange(head_.content_range, &a, &b, &total)) {
    reject_ = DataLossError(object_->display() + ": a 206 answer with a malformed Content-Range '" +
                            head_.content_range + "'");
    return false;
  }
  if (total != 0 && total != object_->size()) {
    reject_ = Status(StatusCode::kAborted,
                     object_->display() + " was replaced while it was read (now " + Num(total) +
                         " bytes, opened with " + Num(object_->size()) + "); restore it again");
    return false;
  }
  if (a != first || b > last) {
    reject_ = DataLossError(object_->display() + ": asked for bytes " + Num(first) + "-" +
                            Num(last) + ", got '" + head_.content_range + "'");
    return false;
  }
  attempt_limit_ = b - a + 1;  // a shorter range is taken; the rest is asked for again
  return true;
}

size_t RangeTransfer::OnBody(char* data, size_t size, size_t n, void* self) {
  auto* t = static_cast<RangeTransfer*>(self);
  const size_t bytes = size * n;
  t->last_byte_ = Clock::now();
  if (!t->checked_) {
    t->checked_ = true;
    t->accepted_ = (t->head_.code == 206 || t->head_.code == 200) && t->Accept();
    if (!t->accepted_ && !t->reject_.ok()) return 0;  // abort: never write those bytes
  }
  if (!t->accepted_) {  // an error answer: keep the start of its body for the message
    if (t->error_body_.size() < 8192)
      t->error_body_.append(data, std::min<size_t>(bytes, 8192 - t->error_body_.size()));
    return bytes;
  }
  if (bytes > t->attempt_limit_ - (t->received_ - t->attempt_start_)) {
    t->reject_ = DataLossError(
        t->object_->display() + ": the server sent more bytes than its Content-Range says (" +
        Num(t->received_ - t->attempt_start_ + bytes) + " of " + Num(t->attempt_limit_) + ")");
    return 0;
  }
  std::memcpy(t->dst_ + t->received_, data, bytes);
  t->received_ += bytes;
  return bytes;
}

RangeTransfer::Next RangeTransfer::Finish(CURL* h, CURLcode code, Status* status) {
  (void)h;
  const bool progressed = received_ > attempt_start_;
  if (!reject_.ok()) {
    *status = reject_;
    return Next::kFail;
  }
  Status failure;
  bool retryable = false;
  if (code == CURLE_ABORTED_BY_CALLBACK && stalled_) {
    failure = UnavailableError("stalled: nothing received for " +
                               SecondsText(object_->options().stall_timeout_s) + " s reading " +
                               object_->display());
    retryable = true;
  } else if (code != CURLE_OK) {
    failure = CurlError(code, "", object_->display(), "reading");
    retryable = RetryableCurl(code);
  } else if (head_.code == 206 || head_.code == 200) {
    if (received_ == length_) {
      *status = OkStatus();
      return Next::kDone;
    }
    failure = Failure("a short answer (" + Num(received_ - attempt_start_) + " bytes)");
    retryable = true;
  } else {
    failure = HttpError(head_.code, error_body_, object_->display(), "reading");
    retryable = RetryableHttp(head_.code);
  }
  if (Clock::now() >= object_->deadline()) {
    *status = Status(StatusCode::kDeadlineExceeded,
                     "deadline of " + SecondsText(object_->options().deadline_s) +
                         " s exceeded reading " + object_->display() + " (" + Num(received_) +
                         " of " + Num(length_) +
                         " bytes of a range; last: " + std::string(failure.message()) + ")");
    return Next::kFail;
  }
  if (!retryable) {
    *status = failure;
    return Next::kFail;
  }
  failures_ = progressed ? 0 : failures_ + 1;
  last_error_ = failure;
  // Progress resets the count, so a server that resets every few MB still finishes; the
  // total is bounded too, so one that sends a byte per attempt does not loop forever.
  if (failures_ > object_->options().max_retries ||
      attempts_ > 64 + object_->options().max_retries) {
    *status = Status(failure.code() == StatusCode::kFailedPrecondition ? StatusCode::kUnavailable
                                                                       : failure.code(),
                     std::string(failure.message()) + " (gave up after " +
                         std::to_string(attempts_) + " attempts)");
    return Next::kFail;
  }
  spdlog::info("retrying {} bytes {}..{} after: {}", object_->display(), offset_ + received_,
               offset_ + length_, failure.message());
  return Next::kRetry;
}

std::chrono::milliseconds RangeTransfer::backoff() const {
  // None after an attempt that brought bytes (failures_ is 0): go on at once.
  return RetryBackoff(failures_, offset_ >> 12);
}

}  // namespace stasis
