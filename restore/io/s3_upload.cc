#include "restore/io/s3_upload.h"

#include <fcntl.h>
#include <openssl/sha.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "common/numbers.h"
#include "common/stopwatch.h"
#include "common/thread_pool.h"
#include "restore/io/http_status.h"

namespace stasis {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kMaxAnswerBody = 64 << 10;  // error bodies, Create's and Complete's XML
// Complete may take minutes for many parts (S3 sends spaces meanwhile, far below the stall
// rate), so it has a timeout instead of stall detection.
constexpr double kCompleteTimeoutS = 900;
constexpr double kAbortBudgetS = 30;

std::string Sha256Hex(const uint8_t* data, size_t n) {
  static const uint8_t kEmpty[1] = {0};
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(n ? data : kEmpty, n, md);
  static const char kHex[] = "0123456789abcdef";
  std::string out(2 * SHA256_DIGEST_LENGTH, '0');
  for (int i = 0; i < SHA256_DIGEST_LENGTH; ++i) {
    out[2 * i] = kHex[md[i] >> 4];
    out[2 * i + 1] = kHex[md[i] & 15];
  }
  return out;
}

std::string XmlEscape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

std::string XmlUnescape(std::string_view s) {
  static const std::pair<std::string_view, char> kEntities[] = {
      {"&amp;", '&'},   {"&lt;", '<'},  {"&gt;", '>'},   {"&quot;", '"'},
      {"&apos;", '\''}, {"&#34;", '"'}, {"&#39;", '\''}, {"&#x22;", '"'}};
  std::string out;
  for (size_t i = 0; i < s.size();) {
    bool replaced = false;
    if (s[i] == '&') {
      for (const auto& [entity, c] : kEntities) {
        if (s.substr(i, entity.size()) == entity) {
          out.push_back(c);
          i += entity.size();
          replaced = true;
          break;
        }
      }
    }
    if (!replaced) out.push_back(s[i++]);
  }
  return out;
}

// The text of the first <tag>...</tag> in `xml`, entities decoded; "" when absent.
std::string XmlField(const std::string& xml, std::string_view tag) {
  const std::string open = "<" + std::string(tag) + ">", close = "</" + std::string(tag) + ">";
  size_t b = xml.find(open);
  if (b == std::string::npos) return {};
  b += open.size();
  size_t e = xml.find(close, b);
  if (e == std::string::npos) return {};
  return XmlUnescape(std::string_view(xml).substr(b, e - b));
}

// S3 error codes that a retry may cure besides those of a 5xx: a socket S3 found idle
// (400 RequestTimeout) and a body that arrived damaged (its hash did not match).
bool RetryableS3Code(const std::string& body) {
  const std::string code = XmlField(body, "Code");
  return code == "RequestTimeout" || code == "XAmzContentSHA256Mismatch" || code == "BadDigest" ||
         code == "InternalError" || code == "SlowDown" || code == "ServiceUnavailable";
}

// One answer: its status and ETag (ResponseHead) and the start of its body.
struct Answer : ResponseHead {
  std::string body;
  curl_off_t sent = 0;  // request body bytes sent (the progress callback)
  // When set, a transfer stops once it is (the loop of the parts checks it itself).
  const std::atomic<bool>* cancel = nullptr;

  void Clear() {
    ResponseHead::Clear();
    body.clear();
    sent = 0;
  }
  static size_t OnHeader(char* data, size_t size, size_t n, void* self) {
    auto* a = static_cast<Answer*>(self);
    if (a->Take(std::string_view(data, size * n))) a->body.clear();
    return size * n;
  }
  static size_t OnBody(char* data, size_t size, size_t n, void* self) {
    auto* a = static_cast<Answer*>(self);
    const size_t bytes = size * n;
    if (a->body.size() < kMaxAnswerBody)
      a->body.append(data, std::min(bytes, kMaxAnswerBody - a->body.size()));
    return bytes;
  }
  static int OnProgress(void* self, curl_off_t, curl_off_t, curl_off_t, curl_off_t ulnow) {
    auto* a = static_cast<Answer*>(self);
    a->sent = ulnow;
    return a->cancel != nullptr && a->cancel->load(std::memory_order_relaxed) ? 1 : 0;
  }
};

// A request body in memory, read by libcurl (CURLOPT_UPLOAD) and rewound on its demand.
struct Body {
  const uint8_t* data = nullptr;
  size_t size = 0;
  size_t pos = 0;

  static size_t Read(char* dst, size_t size, size_t n, void* self) {
    auto* b = static_cast<Body*>(self);
    const size_t k = std::min(size * n, b->size - b->pos);
    std::memcpy(dst, b->data + b->pos, k);
    b->pos += k;
    return k;
  }
  static int Seek(void* self, curl_off_t offset, int origin) {
    auto* b = static_cast<Body*>(self);
    if (origin != SEEK_SET || offset < 0 || static_cast<uint64_t>(offset) > b->size)
      return CURL_SEEKFUNC_FAIL;
    b->pos = static_cast<size_t>(offset);
    return CURL_SEEKFUNC_OK;
  }
};

// The outcome of one attempt at a request.
struct Attempt {
  Status status;
  bool retry = false;
};

// A 2xx is ok; anything else an HttpError, retryable for 5xx, 429, 408 and the S3 codes
// above.
Attempt HttpOutcome(const Answer& a, const std::string& display, std::string_view what) {
  if (a.code >= 200 && a.code < 300) return {};
  return {HttpError(a.code, a.body, display, what),
          RetryableHttp(a.code) || RetryableS3Code(a.body)};
}

// Reads exactly n bytes at offset; a short read means the file shrank.
Status ReadFully(int fd, uint64_t offset, size_t n, uint8_t* dst, const std::string& path) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::pread(fd, dst + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, "reading " + path);
    }
    if (r == 0)
      return Status(StatusCode::kAborted, "'" + path + "' shrank while it was uploaded (" +
                                              Num(offset + done) + " bytes left); push it again");
    done += static_cast<size_t>(r);
  }
  return OkStatus();
}

class Uploader {
 public:
  Uploader(ResolvedLocation loc, const S3UploadOptions& options, std::string path, int fd,
           const struct stat& st, S3UploadReport* report)
      : loc_(std::move(loc)),
        options_(options),
        path_(std::move(path)),
        fd_(fd),
        st_(st),
        size_(static_cast<uint64_t>(st.st_size)),
        report_(report) {
    if (options.remote.deadline_s > 0)
      deadline_ = Clock::now() +
                  std::chrono::milliseconds(static_cast<int64_t>(options.remote.deadline_s * 1000));
  }
  ~Uploader() {
    if (h_ != nullptr) curl_easy_cleanup(h_);
  }

  Status Run() {
    h_ = curl_easy_init();
    if (h_ == nullptr) return ResourceExhaustedError("curl_easy_init failed");
    STASIS_ASSIGN_OR_RETURN(part_size_, S3PartSize(size_, options_.part_size));
    report_->part_size = part_size_;
    if (size_ < part_size_) return PutObject();
    return Multipart();
  }

 private:
  // One request on h_, the sequential ones (all but the parts).
  struct Call {
    std::string what;    // "starting the multipart upload of", for messages
    const char* method;  // "POST", "PUT", "DELETE", "HEAD"
    std::string suffix;  // the query, e.g. "?uploads"
    const uint8_t* body = nullptr;
    size_t body_size = 0;
    std::string body_sha256;  // "" for an empty body: computed here
    const char* content_type = nullptr;
    bool slow_answer = false;  // Complete: a timeout instead of stall detection
  };

  bool Cancelled() const {
    return options_.cancel != nullptr && options_.cancel->load(std::memory_order_relaxed);
  }

  Status CancelledStatus() const {
    return CancelledError("upload of '" + path_ + "' to " + loc_.display + " cancelled");
  }

  Status DeadlineStatus(const Status& last, double seconds) const {
    return Status(
        StatusCode::kDeadlineExceeded,
        "deadline of " + SecondsText(seconds) + " s exceeded uploading " + loc_.display +
            (last.ok() ? std::string() : " (last error: " + std::string(last.message()) + ")"));
  }

  long MillisLeft(Clock::time_point deadline) const {
    return static_cast<long>(std::max<int64_t>(
        1, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count()));
  }

  // Sleeps `d`, waking every 50 ms to check for a cancellation (when `honour_cancel`).
  bool SleepUnlessCancelled(std::chrono::milliseconds d, bool honour_cancel) const {
    const auto until = Clock::now() + d;
    while (Clock::now() < until) {
      if (honour_cancel && Cancelled()) return false;
      std::this_thread::sleep_for(
          std::min<Clock::duration>(std::chrono::milliseconds(50), until - Clock::now()));
    }
    return !(honour_cancel && Cancelled());
  }

  // Arms `h` for a request (its body from *body, its answer into *answer); *headers is
  // replaced and stays the caller's to free.
  Status Arm(CURL* h, const std::string& suffix, const char* method, Body* body,
             const std::string& sha256, const char* content_type, Answer* answer,
             curl_slist** headers, char* errbuf) {
    curl_slist_free_all(*headers);
    *headers = nullptr;
    STASIS_RETURN_IF_ERROR(ConfigureRequest(h, loc_, options_.remote, suffix, headers, sha256));
    if (content_type != nullptr)
      *headers =
          curl_slist_append(*headers, (std::string("Content-Type: ") + content_type).c_str());
    if (std::strcmp(method, "PUT") == 0) {
      curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(h, CURLOPT_READFUNCTION, &Body::Read);
      curl_easy_setopt(h, CURLOPT_READDATA, body);
      curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, &Body::Seek);
      curl_easy_setopt(h, CURLOPT_SEEKDATA, body);
      curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(body->size));
      // libcurl sends "Expect: 100-continue" with every PUT body and waits up to a second
      // for the interim answer; send the body at once instead (an "Expect:" entry that
      // removes the header would be signed but not sent: a SignatureDoesNotMatch).
      curl_easy_setopt(h, CURLOPT_EXPECT_100_TIMEOUT_MS, 0L);
    } else if (std::strcmp(method, "POST") == 0) {
      // From memory, never from the read callback (null POSTFIELDS would read stdin).
      curl_easy_setopt(h, CURLOPT_POST, 1L);
      curl_easy_setopt(h, CURLOPT_POSTFIELDS,
                       body->size ? reinterpret_cast<const char*>(body->data) : "");
      curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body->size));
      curl_easy_setopt(h, CURLOPT_EXPECT_100_TIMEOUT_MS, 0L);
    } else if (std::strcmp(method, "HEAD") == 0) {
      curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else {
      curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    }
    if (*headers == nullptr) return ResourceExhaustedError("out of memory for request headers");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, *headers);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, &Answer::OnHeader);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, answer);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &Answer::OnBody);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, answer);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, &Answer::OnProgress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, answer);
    errbuf[0] = 0;
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    body->pos = 0;
    answer->Clear();
    return OkStatus();
  }

  // One attempt at `call` on h_.
  Attempt SendOnce(const Call& call, Clock::time_point deadline, Answer* answer) {
    Body body{call.body, call.body_size, 0};
    const std::string sha256 =
        call.body_sha256.empty() ? Sha256Hex(call.body, call.body_size) : call.body_sha256;
    curl_slist* headers = nullptr;
    char errbuf[CURL_ERROR_SIZE];
    Status armed = Arm(h_, call.suffix, call.method, &body, sha256, call.content_type, answer,
                       &headers, errbuf);
    if (!armed.ok()) {
      curl_slist_free_all(headers);
      return {armed, false};
    }
    long timeout_ms = MillisLeft(deadline);
    if (call.slow_answer) {
      curl_easy_setopt(h_, CURLOPT_LOW_SPEED_LIMIT, 0L);
      timeout_ms = std::min<long>(timeout_ms, static_cast<long>(kCompleteTimeoutS * 1000));
    }
    if (call.slow_answer || deadline != Clock::time_point::max())
      curl_easy_setopt(h_, CURLOPT_TIMEOUT_MS, timeout_ms);
    CURLcode c = curl_easy_perform(h_);
    curl_easy_setopt(h_, CURLOPT_ERRORBUFFER, nullptr);
    curl_slist_free_all(headers);
    if (c == CURLE_ABORTED_BY_CALLBACK) return {CancelledStatus(), false};
    // An answer that came before the body was all sent (a 403 to a PUT) is that answer.
    if (c != CURLE_OK && answer->code < 300)
      return {CurlError(c, errbuf, loc_.display, call.what), RetryableCurl(c)};
    return HttpOutcome(*answer, loc_.display, call.what);
  }

  // `once` until it succeeds, fails for good, or the retries, the deadline or (when
  // `honour_cancel`) a cancellation end it.
  Status Retrying(const std::string& what, bool honour_cancel, Clock::time_point deadline,
                  double deadline_s, const std::function<Attempt()>& once) {
    Status last;
    for (int attempt = 0;; ++attempt) {
      if (attempt > 0) {
        ++report_->retries;
        spdlog::info("retrying {} {} after: {}", what, loc_.display, last.message());
        if (!SleepUnlessCancelled(RetryBackoff(attempt, 0), honour_cancel))
          return CancelledStatus();
      }
      if (honour_cancel && Cancelled()) return CancelledStatus();
      if (Clock::now() >= deadline) return DeadlineStatus(last, deadline_s);
      Attempt a = once();
      if (a.status.ok()) return a.status;
      if (Clock::now() >= deadline) return DeadlineStatus(a.status, deadline_s);
      if (!a.retry) return a.status;
      last = a.status;
      if (attempt >= options_.remote.max_retries)
        return Status(
            last.code() == StatusCode::kFailedPrecondition ? StatusCode::kUnavailable : last.code(),
            std::string(last.message()) + " (gave up after " + std::to_string(attempt + 1) +
                " attempts)");
    }
  }

  Status PutObject() {
    report_->multipart = false;
    report_->parts = 1;
    report_->concurrency = 1;
    std::unique_ptr<uint8_t[]> data(new (std::nothrow) uint8_t[std::max<uint64_t>(size_, 1)]);
    if (data == nullptr)
      return ResourceExhaustedError("cannot allocate " + Num(size_) + " bytes to upload " + path_);
    STASIS_RETURN_IF_ERROR(ReadFully(fd_, 0, size_, data.get(), path_));
    STASIS_RETURN_IF_ERROR(CheckUnchanged());
    Call call{"uploading to", "PUT", ""};
    call.body = data.get();
    call.body_size = size_;
    call.body_sha256 = Sha256Hex(data.get(), size_);
    call.content_type = "application/octet-stream";
    Answer answer;
    answer.cancel = options_.cancel;  // one request: stopped as it runs
    STASIS_RETURN_IF_ERROR(Retrying(call.what, true, deadline_, options_.remote.deadline_s, [&] {
      Attempt a = SendOnce(call, deadline_, &answer);
      if (a.status.ok() && options_.progress) options_.progress(size_);
      return a;
    }));
    report_->etag = answer.etag;
    return OkStatus();
  }

  Status Multipart() {
    report_->multipart = true;
    const uint64_t parts = (size_ + part_size_ - 1) / part_size_;
    report_->parts = static_cast<int>(parts);
    etags_.assign(parts, std::string());
    STASIS_RETURN_IF_ERROR(Create());
    Status s = UploadParts(parts);
    if (s.ok()) s = CheckUnchanged();
    if (s.ok()) s = Complete();
    if (s.ok()) return s;
    if (!completed_) {
      Status aborted = Abort();
      if (!aborted.ok())
        return Status(s.code(), std::string(s.message()) + "; " + std::string(aborted.message()));
    }
    return s;
  }

  Status Create() {
    Call call{"starting the multipart upload of", "POST", "?uploads"};
    call.content_type = "application/octet-stream";  // the object's (libcurl would say a form)
    Answer answer;
    STASIS_RETURN_IF_ERROR(Retrying(call.what, true, deadline_, options_.remote.deadline_s, [&] {
      Attempt a = SendOnce(call, deadline_, &answer);
      if (a.status.ok() && XmlField(answer.body, "UploadId").empty())
        a = {FailedPreconditionError("no UploadId in the answer to CreateMultipartUpload for " +
                                     loc_.display),
             false};
      return a;
    }));
    upload_id_ = XmlField(answer.body, "UploadId");
    spdlog::info("multipart upload {} of {} to {}: {} parts of {} bytes", upload_id_, path_,
                 loc_.display, etags_.size(), part_size_);
    return OkStatus();
  }

  Status CheckUnchanged() const {
    struct stat now;
    if (::fstat(fd_, &now) != 0) return ErrnoToStatus(errno, "stat " + path_);
    if (now.st_size != st_.st_size || now.st_mtim.tv_sec != st_.st_mtim.tv_sec ||
        now.st_mtim.tv_nsec != st_.st_mtim.tv_nsec)
      return Status(StatusCode::kAborted,
                    "'" + path_ + "' changed while it was uploaded; push it again");
    return OkStatus();
  }

  // ---- the parts ------------------------------------------------------------------------

  struct Slot {
    enum class State { kIdle, kPreparing, kSending, kWaiting };
    State state = State::kIdle;
    CURL* easy = nullptr;
    std::unique_ptr<uint8_t[]> buffer;
    size_t capacity = 0;
    uint64_t part = 0;  // 0-based
    Body body;
    std::string sha256;
    // Set by the preparing thread (release), read by the loop (acquire).
    std::atomic<int> prepared{0};  // 0: pending, 1: ready, 2: failed
    Status prepare_status;
    Answer answer;
    curl_slist* headers = nullptr;
    char errbuf[CURL_ERROR_SIZE];
    int failures = 0;  // in a row, for the backoff and the bound
    int attempts = 0;
    Clock::time_point retry_at;
  };

  uint64_t PartOffset(uint64_t part) const { return part * part_size_; }
  size_t PartLength(uint64_t part) const {
    return static_cast<size_t>(std::min<uint64_t>(part_size_, size_ - PartOffset(part)));
  }

  std::string PartWhat(const Slot& s) const {
    return "uploading part " + std::to_string(s.part + 1) + " of " + std::to_string(etags_.size()) +
           " to";
  }

  // On a pool thread: the part's bytes and their hash.
  void Prepare(Slot* s) {
    Status st;
    if (stop_.load(std::memory_order_acquire)) {
      st = CancelledStatus();
    } else {
      const size_t n = PartLength(s->part);
      if (s->capacity < n) {
        s->buffer.reset(new (std::nothrow) uint8_t[n]);
        s->capacity = s->buffer ? n : 0;
      }
      if (s->buffer == nullptr) {
        st = ResourceExhaustedError("cannot allocate a part buffer of " + Num(n) + " bytes");
      } else {
        st = ReadFully(fd_, PartOffset(s->part), n, s->buffer.get(), path_);
        if (st.ok()) {
          s->body = Body{s->buffer.get(), n, 0};
          s->sha256 = Sha256Hex(s->buffer.get(), n);
        }
      }
    }
    s->prepare_status = st;
    s->prepared.store(st.ok() ? 1 : 2, std::memory_order_release);
    curl_multi_wakeup(multi_);
  }

  Status StartSending(Slot* s) {
    const std::string suffix = "?partNumber=" + std::to_string(s->part + 1) +
                               "&uploadId=" + PercentEncode(upload_id_, /*keep_slash=*/false);
    STASIS_RETURN_IF_ERROR(Arm(s->easy, suffix, "PUT", &s->body, s->sha256, nullptr, &s->answer,
                               &s->headers, s->errbuf));
    curl_easy_setopt(s->easy, CURLOPT_PRIVATE, s);
    if (options_.remote.deadline_s > 0)
      curl_easy_setopt(s->easy, CURLOPT_TIMEOUT_MS, MillisLeft(deadline_));
    ++s->attempts;
    if (CURLMcode m = curl_multi_add_handle(multi_, s->easy); m != CURLM_OK)
      return InternalError(std::string("curl_multi_add_handle: ") + curl_multi_strerror(m));
    s->state = Slot::State::kSending;
    return OkStatus();
  }

  // A part's transfer ended: ok (its ETag kept), to be retried, or a failure returned.
  Status FinishPart(Slot* s, CURLcode c) {
    Attempt a;
    const std::string what = PartWhat(*s);
    if (c != CURLE_OK && !(s->answer.code >= 300))
      a = {CurlError(c, s->errbuf, loc_.display, what), RetryableCurl(c)};
    else
      a = HttpOutcome(s->answer, loc_.display, what);
    if (a.status.ok() && s->answer.etag.empty())
      a = {FailedPreconditionError("no ETag in the answer to " + what + " " + loc_.display), false};
    if (a.status.ok()) {
      etags_[s->part] = s->answer.etag;
      done_bytes_ += s->body.size;
      ++done_parts_;
      s->failures = 0;
      s->state = Slot::State::kIdle;
      return OkStatus();
    }
    if (!a.retry) return a.status;
    ++s->failures;
    if (s->failures > options_.remote.max_retries)
      return Status(a.status.code() == StatusCode::kFailedPrecondition ? StatusCode::kUnavailable
                                                                       : a.status.code(),
                    std::string(a.status.message()) + " (gave up after " +
                        std::to_string(s->attempts) + " attempts)");
    ++report_->retries;
    spdlog::info("retrying part {} of {} after: {}", s->part + 1, loc_.display, a.status.message());
    s->retry_at = Clock::now() + RetryBackoff(s->failures, s->part * 7919);
    s->state = Slot::State::kWaiting;
    return OkStatus();
  }

  void ReportProgress(const std::vector<std::unique_ptr<Slot>>& slots) {
    if (!options_.progress) return;
    uint64_t sent = done_bytes_;
    for (const auto& s : slots)
      if (s->state == Slot::State::kSending)
        sent += static_cast<uint64_t>(std::max<curl_off_t>(0, s->answer.sent));
    sent = std::max(std::min(sent, size_), reported_);
    reported_ = sent;
    options_.progress(sent);
  }

  Status UploadParts(uint64_t parts) {
    const int n = static_cast<int>(std::min<uint64_t>(options_.concurrency, parts));
    report_->concurrency = n;
    multi_ = curl_multi_init();
    if (multi_ == nullptr) return ResourceExhaustedError("curl_multi_init failed");
    std::vector<std::unique_ptr<Slot>> slots;
    Status failure;
    for (int i = 0; i < n && failure.ok(); ++i) {
      slots.push_back(std::make_unique<Slot>());
      slots.back()->easy = curl_easy_init();
      if (slots.back()->easy == nullptr) failure = ResourceExhaustedError("curl_easy_init failed");
    }
    // Reading and hashing a part takes a core; sending it mostly waits.
    StatusOr<std::unique_ptr<ThreadPool>> pool =
        ThreadPool::Create(std::min(n, ThreadPool::ResolveThreadCount(0)));
    if (failure.ok() && !pool.ok()) failure = pool.status();
    uint64_t next = 0;
    while (failure.ok() && done_parts_ < parts) {
      if (Cancelled()) {
        failure = CancelledStatus();
        break;
      }
      if (Clock::now() >= deadline_) {
        failure = DeadlineStatus(OkStatus(), options_.remote.deadline_s);
        break;
      }
      Clock::time_point wake = Clock::now() + std::chrono::milliseconds(100);
      for (auto& sp : slots) {
        Slot* s = sp.get();
        if (s->state == Slot::State::kIdle && next < parts) {
          s->part = next++;
          s->failures = s->attempts = 0;
          s->prepared.store(0, std::memory_order_relaxed);
          s->state = Slot::State::kPreparing;
          (*pool)->Submit([this, s] { Prepare(s); });
        } else if (s->state == Slot::State::kPreparing) {
          const int p = s->prepared.load(std::memory_order_acquire);
          if (p == 2) failure = s->prepare_status;
          if (p == 1) failure = StartSending(s);
        } else if (s->state == Slot::State::kWaiting) {
          if (Clock::now() >= s->retry_at)
            failure = StartSending(s);
          else
            wake = std::min(wake, s->retry_at);
        }
        if (!failure.ok()) break;
      }
      if (!failure.ok()) break;
      int running = 0;
      if (CURLMcode m = curl_multi_perform(multi_, &running); m != CURLM_OK) {
        failure = InternalError(std::string("curl_multi_perform: ") + curl_multi_strerror(m));
        break;
      }
      int queued = 0;
      while (CURLMsg* msg = curl_multi_info_read(multi_, &queued)) {
        if (msg->msg != CURLMSG_DONE) continue;
        Slot* s = nullptr;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, reinterpret_cast<char**>(&s));
        const CURLcode code = msg->data.result;
        curl_multi_remove_handle(multi_, msg->easy_handle);
        s->state = Slot::State::kIdle;  // FinishPart decides what comes next
        if (Status f = FinishPart(s, code); !f.ok() && failure.ok()) failure = f;
      }
      ReportProgress(slots);
      if (!failure.ok() || done_parts_ == parts) break;
      // A slot that became idle starts its next part at once; otherwise wait for sockets,
      // a prepared part (curl_multi_wakeup) or the next retry.
      bool idle = false;
      for (auto& sp : slots) idle |= sp->state == Slot::State::kIdle && next < parts;
      if (idle) continue;
      const long ms = static_cast<long>(std::max<int64_t>(
          0, std::chrono::duration_cast<std::chrono::milliseconds>(wake - Clock::now()).count()));
      curl_multi_poll(multi_, nullptr, 0, static_cast<int>(ms), nullptr);
    }
    // Stop: transfers in flight are dropped, preparations not yet begun skip their work,
    // and the pool is drained before the buffers go.
    stop_.store(true, std::memory_order_release);
    for (auto& sp : slots)
      if (sp->state == Slot::State::kSending) curl_multi_remove_handle(multi_, sp->easy);
    if (pool.ok()) pool->reset();
    for (auto& sp : slots) {
      curl_slist_free_all(sp->headers);
      if (sp->easy != nullptr) curl_easy_cleanup(sp->easy);
    }
    curl_multi_cleanup(multi_);
    multi_ = nullptr;
    return failure;
  }

  // ---- Complete and Abort ---------------------------------------------------------------

  std::string CompleteBody() const {
    std::string xml = "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">";
    for (size_t i = 0; i < etags_.size(); ++i)
      xml += "<Part><PartNumber>" + std::to_string(i + 1) + "</PartNumber><ETag>" +
             XmlEscape(etags_[i]) + "</ETag></Part>";
    xml += "</CompleteMultipartUpload>";
    return xml;
  }

  Status Complete() {
    const std::string xml = CompleteBody();
    Call call{"completing the multipart upload of", "POST",
              "?uploadId=" + PercentEncode(upload_id_, /*keep_slash=*/false)};
    call.body = reinterpret_cast<const uint8_t*>(xml.data());
    call.body_size = xml.size();
    call.content_type = "application/xml";
    call.slow_answer = true;
    Answer answer;
    bool sent_before = false;  // an attempt that may have reached S3 and succeeded there
    Status s = Retrying(call.what, true, deadline_, options_.remote.deadline_s, [&]() -> Attempt {
      Attempt a = SendOnce(call, deadline_, &answer);
      if (a.status.ok()) {
        // S3 answers 200 at once and sends the outcome later: an <Error> in a 200.
        if (answer.body.find("<Error>") != std::string::npos) {
          const std::string summary = S3ErrorSummary(answer.body);
          a = {FailedPreconditionError("completing the multipart upload of " + loc_.display +
                                       " failed (" + summary + ")"),
               RetryableS3Code(answer.body)};
        } else if (answer.body.find("CompleteMultipartUploadResult") == std::string::npos) {
          a = {FailedPreconditionError("an answer to CompleteMultipartUpload for " + loc_.display +
                                       " without its result"),
               true};
        }
      } else if (sent_before && answer.code == 404 &&
                 XmlField(answer.body, "Code") == "NoSuchUpload") {
        // The upload is gone: an earlier attempt whose answer was lost completed it, or
        // it was aborted. The object tells: its multipart ETag ends in "-<parts>".
        return CompletedEarlier();
      }
      sent_before = true;
      return a;
    });
    if (!s.ok()) return s;
    completed_ = true;
    if (report_->etag.empty()) report_->etag = XmlField(answer.body, "ETag");
    return OkStatus();
  }

  // After a lost answer to Complete: whether the object now is this upload (HEAD).
  Attempt CompletedEarlier() {
    Answer head;
    curl_slist* headers = nullptr;
    Body none;
    char errbuf[CURL_ERROR_SIZE];
    Status armed =
        Arm(h_, "", "HEAD", &none, Sha256Hex(nullptr, 0), nullptr, &head, &headers, errbuf);
    curl_easy_setopt(h_, CURLOPT_TIMEOUT_MS, std::min(MillisLeft(deadline_), 60000L));
    CURLcode c = armed.ok() ? curl_easy_perform(h_) : CURLE_OK;
    curl_easy_setopt(h_, CURLOPT_ERRORBUFFER, nullptr);
    curl_slist_free_all(headers);
    const std::string suffix = "-" + std::to_string(etags_.size()) + "\"";
    if (armed.ok() && c == CURLE_OK && head.code == 200 && head.etag.size() > suffix.size() &&
        head.etag.compare(head.etag.size() - suffix.size(), suffix.size(), suffix) == 0) {
      report_->etag = head.etag;
      return {};
    }
    return {FailedPreconditionError("the multipart upload to " + loc_.display +
                                    " vanished while it was completed (aborted elsewhere?)"),
            false};
  }

  // AbortMultipartUpload, whatever stopped the upload (a cancellation included).
  Status Abort() {
    const auto deadline =
        Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(kAbortBudgetS * 1000));
    Call call{"aborting the multipart upload of", "DELETE",
              "?uploadId=" + PercentEncode(upload_id_, /*keep_slash=*/false)};
    Answer answer;
    Status s = Retrying(call.what, false, deadline, kAbortBudgetS, [&] {
      Attempt a = SendOnce(call, deadline, &answer);
      if (!a.status.ok() && answer.code == 404) return Attempt{};  // gone already
      return a;
    });
    if (s.ok()) {
      spdlog::info("aborted multipart upload {} to {}", upload_id_, loc_.display);
      return s;
    }
    spdlog::warn(
        "the multipart upload {} to {} could not be aborted ({}); its parts are billed until "
        "`aws s3api abort-multipart-upload` or a lifecycle rule removes them",
        upload_id_, loc_.display, s.message());
    return Status(s.code(), "the multipart upload " + upload_id_ +
                                " could not be aborted: " + std::string(s.message()));
  }

  ResolvedLocation loc_;
  S3UploadOptions options_;
  std::string path_;
  int fd_;
  struct stat st_;
  uint64_t size_;
  S3UploadReport* report_;
  Clock::time_point deadline_ = Clock::time_point::max();  // max: none
  uint64_t part_size_ = 0;
  CURL* h_ = nullptr;
  CURLM* multi_ = nullptr;
  std::string upload_id_;
  std::vector<std::string> etags_;
  uint64_t done_bytes_ = 0, done_parts_ = 0, reported_ = 0;
  std::atomic<bool> stop_{false};
  bool completed_ = false;
};

}  // namespace

StatusOr<uint64_t> S3PartSize(uint64_t file_size, uint64_t requested) {
  if (requested < kS3MinPartSize || requested > kS3MaxPartSize)
    return InvalidArgumentError("part size must be 5MiB..5GiB (S3's limits), not " +
                                Num(requested) + " bytes");
  if (file_size > kS3MaxObjectSize)
    return ResourceExhaustedError(Num(file_size) +
                                  " bytes is more than S3 takes in one object (5 TiB)");
  if (file_size <= requested * kS3MaxParts) return requested;
  constexpr uint64_t kMiB = uint64_t{1} << 20;
  const uint64_t needed = (file_size + kS3MaxParts - 1) / kS3MaxParts;
  return (needed + kMiB - 1) / kMiB * kMiB;  // <= 525 MiB for 5 TiB
}

Status UploadToS3(const std::string& local_path, const std::string& location,
                  const S3UploadOptions& options, S3UploadReport* report,
                  const RemoteEnvironment& env) {
  InitCurlOnce();
  const Stopwatch watch;
  S3UploadReport local_report;
  if (report == nullptr) report = &local_report;
  *report = S3UploadReport();
  report->location = RedactLocation(location);
  if (options.concurrency < 1 || options.concurrency > 64)
    return InvalidArgumentError("upload concurrency must be 1..64, not " +
                                std::to_string(options.concurrency));
  if (options.remote.max_retries < 0 || options.remote.max_retries > 100)
    return InvalidArgumentError("remote retries must be 0..100, not " +
                                std::to_string(options.remote.max_retries));
  if (!(options.remote.stall_timeout_s > 0) || !(options.remote.deadline_s >= 0) ||
      !(options.remote.connect_timeout_s > 0))
    return InvalidArgumentError("remote timeouts must be positive");
  STASIS_ASSIGN_OR_RETURN(ResolvedLocation loc, ResolveLocation(location, options.remote, env));
  if (!loc.s3)
    return InvalidArgumentError("uploads go to s3://BUCKET/KEY, not '" + loc.display + "'");
  const int fd = ::open(local_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, "opening " + local_path);
  struct stat st;
  Status s;
  if (::fstat(fd, &st) != 0) {
    s = ErrnoToStatus(errno, "stat " + local_path);
  } else if (!S_ISREG(st.st_mode)) {
    s = InvalidArgumentError("'" + local_path + "' is not a regular file");
  } else {
    report->bytes = static_cast<uint64_t>(st.st_size);
    Uploader uploader(std::move(loc), options, local_path, fd, st, report);
    s = uploader.Run();
  }
  ::close(fd);
  report->seconds = watch.Seconds();
  if (s.ok())
    spdlog::info("uploaded {} to {}: {} bytes in {} part(s), {} s", local_path, report->location,
                 report->bytes, report->parts, report->seconds);
  return s;
}

}  // namespace stasis
