#include "runtime/server.h"

#include <fcntl.h>
#include <httplib.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#if __has_include(<linux/openat2.h>)  // kernel headers >= 5.6
#include <linux/openat2.h>
#endif

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <list>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "common/float16.h"
#include "restore/report_json.h"
#include "snapshot/dtype.h"
#include "snapshot/format.h"
#include "snapshot/safetensors.h"
#include "stasis/device_backend.h"

namespace stasis::runtime {

using json = nlohmann::json;

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

bool ConstantTimeEquals(std::string_view given, std::string_view expected) {
  // Runs over `expected` whatever `given` is, so the time reveals only the token's length.
  volatile unsigned char diff = given.size() != expected.size() ? 1 : 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff = diff | (g ^ static_cast<unsigned char>(expected[i]));
  }
  return diff == 0;
}

namespace {

constexpr char kJsonType[] = "application/json";
constexpr char kSafetensorsType[] = "application/octet-stream";

// An answer other than success, before it becomes a response.
struct HttpError {
  int status = 500;
  std::string code;
  std::string message;
  bool rejected = false;  // load shedding (queue full/timeout, draining): outcome "rejected"
};

HttpError BadRequest(std::string message) { return {400, "bad_request", std::move(message)}; }

std::string LowerCodeName(StatusCode code) {
  std::string s(StatusCodeName(code));
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

HttpError FromStatus(const Status& s) {
  return {HttpStatusForCode(s.code()), LowerCodeName(s.code()), std::string(s.message())};
}

std::string Fixed3(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::fixed, 3);
  if (ec != std::errc()) return "0";
  return std::string(buf, end);
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

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

// For log lines: control characters would let a client forge lines.
std::string Printable(std::string_view s, size_t max = 256) {
  std::string out;
  for (char c : s.substr(0, max)) {
    out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  }
  if (s.size() > max) out += "...";
  return out;
}

// An http:// authority, parsed strictly: a host name ([A-Za-z0-9.-], at most 253
// characters) or a bracketed IPv6 address ([0-9A-Fa-f:.]), then optionally ':' and a port
// of 1-5 digits in 1..65535. Anything else (userinfo, percent-encoding, zone ids, stray
// brackets, overlong or empty parts) is refused here, before any library parses it.
struct Authority {
  std::string host;  // lower case; IPv6 without brackets
  int port = 0;      // 0: none given
};

std::optional<Authority> ParseAuthority(std::string_view a) {
  Authority out;
  std::string_view host, port;
  bool v6 = false;
  if (!a.empty() && a.front() == '[') {
    const size_t close = a.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    host = a.substr(1, close - 1);
    std::string_view rest = a.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return std::nullopt;
      port = rest.substr(1);
      if (port.empty()) return std::nullopt;
    }
    v6 = true;
  } else {
    const size_t colon = a.find(':');
    host = a.substr(0, colon);
    if (colon != std::string_view::npos) {
      port = a.substr(colon + 1);
      if (port.empty()) return std::nullopt;
    }
  }
  if (host.empty() || host.size() > 253) return std::nullopt;
  for (char c : host) {
    const bool ok = v6 ? (std::isxdigit(static_cast<unsigned char>(c)) || c == ':' || c == '.')
                       : (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-');
    if (!ok) return std::nullopt;
  }
  if (v6 && host.find(':') == std::string_view::npos) return std::nullopt;
  if (!port.empty()) {
    if (port.size() > 5) return std::nullopt;
    auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), out.port);
    if (ec != std::errc() || ptr != port.data() + port.size() || out.port < 1 || out.port > 65535)
      return std::nullopt;
  }
  out.host.assign(host);
  std::transform(out.host.begin(), out.host.end(), out.host.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// The --http-inputs list (ServerOptions::http_input_hosts), parsed once when the server
// starts: "*", a host with any port ("host"), or a host and port ("host:port").
struct HttpHostList {
  bool any = false;
  std::vector<Authority> hosts;

  bool Allows(const Authority& url) const {
    return any || std::any_of(hosts.begin(), hosts.end(), [&](const Authority& want) {
             return want.host == url.host && (want.port == 0 || want.port == url.port);
           });
  }
};

StatusOr<HttpHostList> ParseHttpHostList(const std::vector<std::string>& entries) {
  HttpHostList list;
  for (const std::string& entry : entries) {
    if (entry == "*") {
      list.any = true;
      continue;
    }
    std::optional<Authority> a = ParseAuthority(entry);
    if (!a)
      return InvalidArgumentError("http input host '" + Printable(entry) +
                                  "' is not HOST, HOST:PORT, [IPv6]:PORT or *");
    list.hosts.push_back(std::move(*a));
  }
  return list;
}

// Opens `real` (resolved by realpath, under `root`) for reading. Where the kernel has
// openat2 (5.6+) the walk from the root is done again with RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS, so a directory swapped for a symlink after realpath cannot lead out
// of the root; elsewhere O_NOFOLLOW guards the last component only. O_NONBLOCK: a FIFO put
// there must not block the request before the regular-file check.
int OpenBeneath(const std::string& root, const std::string& real) {
  constexpr int kFlags = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK;
#if defined(SYS_openat2) && defined(RESOLVE_BENEATH)
  if (real.size() > root.size() + 1 && real.compare(0, root.size(), root) == 0 &&
      real[root.size()] == '/') {
    const int dir = ::open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
      struct open_how how = {};
      how.flags = static_cast<uint64_t>(kFlags);
      how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS;
      const std::string relative = real.substr(root.size() + 1);
      const long fd = ::syscall(SYS_openat2, dir, relative.c_str(), &how, sizeof(how));
      const int err = errno;
      ::close(dir);
      if (fd >= 0 || err != ENOSYS) {
        errno = err;
        return static_cast<int>(fd);
      }
    }
  }
#endif
  return ::open(real.c_str(), kFlags);
}

// ----- element conversions -----

// A float as the double whose shortest form is the float's shortest form, so that JSON
// shows 0.1 rather than 0.10000000149011612.
double FloatForJson(float f) {
  if (!std::isfinite(f)) return f;
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), f);
  if (ec != std::errc()) return f;
  *end = '\0';
  return std::strtod(buf, nullptr);
}

bool JsonCarries(DType t) {
  switch (t) {
    case DType::kBool:
    case DType::kU8:
    case DType::kI8:
    case DType::kI16:
    case DType::kU16:
    case DType::kI32:
    case DType::kU32:
    case DType::kI64:
    case DType::kU64:
    case DType::kF16:
    case DType::kBF16:
    case DType::kF32:
    case DType::kF64:
      return true;
    default:
      return false;
  }
}

template <typename T>
void Append(std::string* out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out->append(b, sizeof(T));
}

template <typename T>
T Load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <typename T>
std::optional<std::string> AppendInt(const json& v, std::string* out) {
  if (!v.is_number_integer()) return "expected an integer";
  bool ok;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    ok = u <= static_cast<uint64_t>(std::numeric_limits<T>::max());
    if (ok) Append<T>(out, static_cast<T>(u));
  } else {
    const int64_t s = v.get<int64_t>();
    if constexpr (std::is_signed_v<T>) {
      ok = s >= static_cast<int64_t>(std::numeric_limits<T>::min()) &&
           s <= static_cast<int64_t>(std::numeric_limits<T>::max());
    } else {
      ok = s >= 0 &&
           static_cast<uint64_t>(s) <= static_cast<uint64_t>(std::numeric_limits<T>::max());
    }
    if (ok) Append<T>(out, static_cast<T>(s));
  }
  if (!ok) {
    return "integer out of range [" + std::to_string(std::numeric_limits<T>::min()) + ", " +
           std::to_string(std::numeric_limits<T>::max()) + "]";
  }
  return std::nullopt;
}

// Appends one JSON element as `t`; an error message otherwise.
std::optional<std::string> AppendElement(DType t, const json& v, std::string* out) {
  switch (t) {
    case DType::kBool:
      if (v.is_boolean()) {
        out->push_back(v.get<bool>() ? 1 : 0);
        return std::nullopt;
      }
      if (v.is_number_integer() && (v.get<int64_t>() == 0 || v.get<int64_t>() == 1)) {
        out->push_back(static_cast<char>(v.get<int64_t>()));
        return std::nullopt;
      }
      return "expected true, false, 0 or 1";
    case DType::kU8:
      return AppendInt<uint8_t>(v, out);
    case DType::kI8:
      return AppendInt<int8_t>(v, out);
    case DType::kI16:
      return AppendInt<int16_t>(v, out);
    case DType::kU16:
      return AppendInt<uint16_t>(v, out);
    case DType::kI32:
      return AppendInt<int32_t>(v, out);
    case DType::kU32:
      return AppendInt<uint32_t>(v, out);
    case DType::kI64:
      return AppendInt<int64_t>(v, out);
    case DType::kU64:
      return AppendInt<uint64_t>(v, out);
    case DType::kF16:
    case DType::kBF16:
    case DType::kF32:
    case DType::kF64: {
      if (!v.is_number()) return "expected a number";
      const double d = v.get<double>();
      if (t == DType::kF64) {
        Append<double>(out, d);
      } else if (t == DType::kF32) {
        Append<float>(out, static_cast<float>(d));
      } else if (t == DType::kF16) {
        Append<uint16_t>(out, FloatToHalf(static_cast<float>(d)));
      } else {
        Append<uint16_t>(out, Float32ToBf16(static_cast<float>(d)));
      }
      return std::nullopt;
    }
    default:
      return "dtype not carried by JSON";
  }
}

json ElementToJson(DType t, const char* p) {
  switch (t) {
    case DType::kBool:
      return *p != 0;
    case DType::kU8:
      return Load<uint8_t>(p);
    case DType::kI8:
      return Load<int8_t>(p);
    case DType::kI16:
      return Load<int16_t>(p);
    case DType::kU16:
      return Load<uint16_t>(p);
    case DType::kI32:
      return Load<int32_t>(p);
    case DType::kU32:
      return Load<uint32_t>(p);
    case DType::kI64:
      return Load<int64_t>(p);
    case DType::kU64:
      return Load<uint64_t>(p);
    case DType::kF16:
      return FloatForJson(HalfToFloat(Load<uint16_t>(p)));
    case DType::kBF16:
      return FloatForJson(Bf16ToFloat(Load<uint16_t>(p)));
    case DType::kF32:
      return FloatForJson(Load<float>(p));
    case DType::kF64:
      return Load<double>(p);
    default:
      return nullptr;
  }
}

// Element count of `shape`, or nullopt on overflow past 2^62 / a negative dimension.
std::optional<uint64_t> ElementCount(const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (d != 0 && n > (uint64_t{1} << 62) / static_cast<uint64_t>(d)) return std::nullopt;
    n *= static_cast<uint64_t>(d);
  }
  return n;
}

std::optional<uint64_t> ByteSize(DType t, const std::vector<int64_t>& shape) {
  auto n = ElementCount(shape);
  if (!n) return std::nullopt;
  const uint64_t bits = *n * static_cast<uint64_t>(DTypeBits(t));
  if (bits % 8 != 0) return std::nullopt;
  return bits / 8;
}

// ----- safetensors bodies -----

// The tensors of a safetensors file held in memory, in header order.
StatusOr<std::vector<TensorData>> ParseSafetensorsBytes(std::string_view bytes) {
  STASIS_ASSIGN_OR_RETURN(SafetensorsHeader header, ParseSafetensorsFileBytes(bytes));
  std::vector<TensorData> out;
  out.reserve(header.entries.size());
  for (const SafetensorsEntry& e : header.entries) {
    TensorData t;
    t.name = e.name;
    t.dtype = e.dtype;
    t.shape = e.shape;
    t.bytes.assign(bytes.substr(header.data_start + e.begin, e.end - e.begin));
    out.push_back(std::move(t));
  }
  return out;
}

// The index in "<prefix>.<i>" or "<i>", if the name has that form.
std::optional<size_t> TrailingIndex(std::string_view name) {
  const size_t dot = name.rfind('.');
  std::string_view digits = dot == std::string_view::npos ? name : name.substr(dot + 1);
  if (digits.empty() || digits.size() > 9) return std::nullopt;
  size_t v = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<size_t>(c - '0');
  }
  return v;
}

// Header order, unless the names carry the indices 0..n-1 (see server.h).
void OrderPositionalInputs(std::vector<TensorData>* tensors) {
  const size_t n = tensors->size();
  std::vector<int> slot(n, -1);
  for (size_t i = 0; i < n; ++i) {
    auto idx = TrailingIndex((*tensors)[i].name);
    if (!idx || *idx >= n || slot[*idx] != -1) return;
    slot[*idx] = static_cast<int>(i);
  }
  std::vector<TensorData> ordered;
  ordered.reserve(n);
  for (size_t i = 0; i < n; ++i) ordered.push_back(std::move((*tensors)[slot[i]]));
  *tensors = std::move(ordered);
}

StatusOr<std::string> EncodeSafetensors(
    const std::vector<TensorData>& tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::vector<SafetensorsTensorOut> out;
  uint64_t total = 0;
  for (const TensorData& t : tensors) {
    SafetensorsTensorOut o;
    o.name = t.name;
    o.dtype = t.dtype;
    o.shape = t.shape;
    o.data = t.bytes.data();
    o.size = t.bytes.size();
    total += t.bytes.size();
    out.push_back(std::move(o));
  }
  STASIS_ASSIGN_OR_RETURN(std::string body, EncodeSafetensorsHeader(out, metadata));
  body.reserve(body.size() + total);
  for (const TensorData& t : tensors) body += t.bytes;
  return body;
}

// ----- url inputs -----

std::string PercentDecode(std::string_view s, bool* ok) {
  std::string out;
  *ok = true;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size() || !std::isxdigit(static_cast<unsigned char>(s[i + 1])) ||
        !std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      *ok = false;
      return out;
    }
    const char hex[3] = {s[i + 1], s[i + 2], 0};
    const char c = static_cast<char>(std::strtol(hex, nullptr, 16));
    if (c == '\0') {
      *ok = false;
      return out;
    }
    out += c;
    i += 2;
  }
  return out;
}

// "/a/./b/../c" → "/a/c", without touching the file system.
std::string LexicallyNormal(std::string_view path) {
  std::vector<std::string_view> parts;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    std::string_view part = path.substr(i, j - i);
    if (part == "..") {
      if (!parts.empty()) parts.pop_back();
    } else if (!part.empty() && part != ".") {
      parts.push_back(part);
    }
    i = j + 1;
  }
  std::string out;
  for (auto p : parts) {
    out += '/';
    out += p;
  }
  return out.empty() ? "/" : out;
}

bool IsUnder(std::string_view path, std::string_view root) {
  if (root == "/") return true;
  return path == root ||
         (StartsWith(path, root) && path.size() > root.size() && path[root.size()] == '/');
}

// One request's state, for the log line and the metrics (handlers of one request run on
// one worker thread, from the pre-routing handler to the logger).
struct RequestContext {
  bool active = false;
  std::string id;
  int64_t start_ns = 0;
  bool observed = false;  // stasis_request_seconds recorded
  int cold = -1;          // -1: not an inference
};
thread_local RequestContext tls_request;

// Waits for one of `max` slots, FIFO, with at most `capacity` waiting.
class Admission {
 public:
  enum class Result { kAdmitted, kQueueFull, kTimeout };

  Admission(int max, int capacity, int64_t timeout_ns, Clock* clock)
      : max_(max), capacity_(capacity), timeout_ns_(timeout_ns), clock_(clock) {}

  Result Acquire() {
    std::unique_lock l(mu_);
    if (running_ < max_ && waiters_.empty()) {
      ++running_;
      return Result::kAdmitted;
    }
    if (static_cast<int>(waiters_.size()) >= capacity_) return Result::kQueueFull;
    auto me = waiters_.insert(waiters_.end(), next_ticket_++);
    const int64_t start = clock_->NowNanos();
    for (;;) {
      if (waiters_.begin() == me && running_ < max_) {
        waiters_.erase(me);
        ++running_;
        cv_.notify_all();  // the next in line may fit too
        return Result::kAdmitted;
      }
      const int64_t remaining = timeout_ns_ - (clock_->NowNanos() - start);
      if (remaining <= 0) {
        waiters_.erase(me);
        cv_.notify_all();
        return Result::kTimeout;
      }
      // Polls so that an injected (manual) clock's advances are seen too.
      cv_.wait_for(l, std::chrono::nanoseconds(std::min<int64_t>(remaining, 20'000'000)));
    }
  }

  void Release() {
    {
      std::lock_guard l(mu_);
      --running_;
    }
    cv_.notify_all();
  }

  int queued() const {
    std::lock_guard l(mu_);
    return static_cast<int>(waiters_.size());
  }
  int running() const {
    std::lock_guard l(mu_);
    return running_;
  }

 private:
  const int max_, capacity_;
  const int64_t timeout_ns_;
  Clock* const clock_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int running_ = 0;
  std::list<uint64_t> waiters_;
  uint64_t next_ticket_ = 0;
};

}  // namespace

struct Server::Impl {
  Impl(Lifecycle* lifecycle, Metrics* metrics, Clock* clock, ServerOptions options)
      : lifecycle(lifecycle),
        metrics(metrics),
        clock(clock),
        options(std::move(options)),
        admission(this->options.max_concurrency, this->options.queue,
                  this->options.request_timeout_ns, clock) {}

  void Install();

  // Request plumbing.
  void SendJson(httplib::Response& res, int status, const json& body);
  void SendError(httplib::Response& res, const HttpError& e);
  bool Authorized(const httplib::Request& req) const;
  std::string NewRequestId(const httplib::Request& req);
  void ObserveInfer(const httplib::Request& req, const httplib::Response& res, bool rejected);
  void LogRequest(const httplib::Request& req, const httplib::Response& res);
  bool Enter();  // false while draining
  void Leave();
  // Leave() when it goes, however the handler ends (httplib turns an exception into a 500;
  // a skipped Leave() would make Shutdown wait forever).
  struct ActiveRequest {
    Impl* impl;
    ~ActiveRequest() { impl->Leave(); }
  };

  // Endpoints.
  void HandleInfer(const httplib::Request& req, httplib::Response& res);
  std::optional<HttpError> RunInfer(const httplib::Request& req, httplib::Response& res);
  void HandleWarmup(const httplib::Request& req, httplib::Response& res);
  void HandleUnload(const httplib::Request& req, httplib::Response& res);
  void HandleStatus(const httplib::Request& req, httplib::Response& res);
  void HandleReadyz(const httplib::Request& req, httplib::Response& res);
  void HandleMetrics(const httplib::Request& req, httplib::Response& res);

  // Inputs.
  std::optional<HttpError> ParseJsonInputs(const std::string& body, std::vector<TensorData>* out);
  std::optional<HttpError> FetchUrlInput(const json& spec, size_t index, uint64_t* budget,
                                         TensorData* out);
  std::optional<HttpError> ReadFileUrl(std::string_view path, uint64_t budget, std::string* out);
  std::optional<HttpError> FetchHttpUrl(std::string_view url, uint64_t budget, std::string* out);

  Lifecycle* const lifecycle;
  Metrics* const metrics;
  Clock* const clock;
  const ServerOptions options;
  std::string file_root_real;  // realpath of options.file_root ("" when unset)
  HttpHostList http_hosts;     // options.http_input_hosts, parsed
  Admission admission;
  httplib::Server http;
  int port = 0;
  std::thread listener;
  std::atomic<uint64_t> next_request{1};

  mutable std::mutex mu;
  std::condition_variable cv;
  bool draining = false;
  int active = 0;              // infer/warmup/unload requests being handled
  bool listener_done = false;  // listen_after_bind returned

  std::mutex stop_mu;  // serialises the stop-and-join of Shutdown
  bool stopped = false;
};

void Server::Impl::SendJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(Dump(body), kJsonType);
}

void Server::Impl::SendError(httplib::Response& res, const HttpError& e) {
  if (e.status == 503 || e.status == 429) {
    res.set_header("Retry-After", std::to_string(std::max(options.retry_after_s, 0)));
  }
  if (e.status == 401) res.set_header("WWW-Authenticate", "Bearer realm=\"stasis\"");
  SendJson(res, e.status, json{{"error", {{"code", e.code}, {"message", e.message}}}});
}

bool Server::Impl::Authorized(const httplib::Request& req) const {
  const std::string h = req.get_header_value("Authorization");
  std::string_view v = h;
  if (!IEqualsPrefix(v, "Bearer ")) return false;
  v.remove_prefix(7);
  while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return ConstantTimeEquals(v, options.token);
}

std::string Server::Impl::NewRequestId(const httplib::Request& req) {
  const std::string given = req.get_header_value("X-Request-Id");
  if (!given.empty() && given.size() <= 64 && std::all_of(given.begin(), given.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
      })) {
    return given;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "r%06llx",
                static_cast<unsigned long long>(next_request.fetch_add(1)));
  return buf;
}

void Server::Impl::ObserveInfer(const httplib::Request& req, const httplib::Response& res,
                                bool rejected) {
  RequestContext& ctx = tls_request;
  if (req.path != "/v1/infer" || req.method != "POST" || !ctx.active || ctx.observed) return;
  ctx.observed = true;
  std::string_view outcome = "ok";
  if (rejected) {
    outcome = "rejected";
  } else if (res.status >= 500) {
    outcome = "server_error";
  } else if (res.status >= 400) {
    outcome = "client_error";
  }
  metrics->ObserveRequest(outcome, static_cast<double>(clock->NowNanos() - ctx.start_ns) / 1e9);
  metrics->Set("stasis_queued", admission.queued());
  metrics->SyncLifecycle(lifecycle->status());
}

void Server::Impl::LogRequest(const httplib::Request& req, const httplib::Response& res) {
  RequestContext& ctx = tls_request;
  const bool probe = req.path == "/healthz" || req.path == "/readyz" || req.path == "/metrics";
  const double latency_ms =
      ctx.active ? static_cast<double>(clock->NowNanos() - ctx.start_ns) / 1e6 : 0.0;
  spdlog::log(probe ? spdlog::level::debug : spdlog::level::info,
              "request id={} method={} path={} status={} state={} cold={} latency_ms={:.3f} "
              "remote={}",
              ctx.active ? ctx.id : "-", Printable(req.method, 16), Printable(req.path), res.status,
              ModelStateName(lifecycle->state()),
              ctx.cold < 0 ? "-" : (ctx.cold ? "true" : "false"), latency_ms,
              Printable(req.remote_addr, 64));
  ctx = RequestContext();
}

bool Server::Impl::Enter() {
  std::lock_guard l(mu);
  if (draining) return false;
  ++active;
  return true;
}

void Server::Impl::Leave() {
  {
    std::lock_guard l(mu);
    --active;
  }
  cv.notify_all();
}

void Server::Impl::Install() {
  const int pool = std::max({options.threads, options.max_concurrency + options.queue + 2, 2});
  http.new_task_queue = [pool] { return new httplib::ThreadPool(static_cast<size_t>(pool)); };
  http.set_payload_max_length(static_cast<size_t>(options.max_body_bytes));
  http.set_keep_alive_timeout(std::max(options.keep_alive_timeout_s, 0));

  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    RequestContext& ctx = tls_request;
    ctx = RequestContext();
    ctx.active = true;
    ctx.id = NewRequestId(req);
    ctx.start_ns = clock->NowNanos();
    res.set_header("X-Request-Id", ctx.id);
    if (!options.token.empty() && req.path != "/healthz" && !Authorized(req)) {
      // The body is not read: close the connection rather than parse it as a request.
      res.set_header("Connection", "close");
      SendError(res, {401, "unauthenticated", "missing or invalid bearer token"});
      ObserveInfer(req, res, false);
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  // Answers httplib produced itself (404, 413, 400 for a malformed request...) get the
  // JSON error body too.
  http.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req,
                                                                     httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    HttpError e;
    e.status = res.status;
    switch (res.status) {
      case 404:
        e.code = "not_found";
        e.message = "no such endpoint: " + Printable(req.method, 16) + " " + Printable(req.path);
        break;
      case 413:
        e.code = "payload_too_large";
        e.message = "request body exceeds " + std::to_string(options.max_body_bytes) + " bytes";
        break;
      case 400:
        e.code = "bad_request";
        e.message = "malformed HTTP request";
        break;
      default:
        e.code = "http_" + std::to_string(res.status);
        e.message = "HTTP error " + std::to_string(res.status);
        break;
    }
    SendError(res, e);
    ObserveInfer(req, res, false);
    return httplib::Server::HandlerResponse::Handled;
  }));

  http.set_exception_handler(
      [this](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown exception";
        try {
          if (ep) std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        spdlog::error("request {}: unhandled exception: {}", tls_request.id, what);
        // The text stays in the log: it may name internals the client has no use for.
        SendError(res, {500, "internal", "internal error (request " + tls_request.id + ")"});
        ObserveInfer(req, res, false);
      });

  http.set_logger(
      [this](const httplib::Request& req, const httplib::Response& res) { LogRequest(req, res); });

  http.Post("/v1/infer",
            [this](const httplib::Request& req, httplib::Response& res) { HandleInfer(req, res); });
  http.Post("/v1/warmup", [this](const httplib::Request& req, httplib::Response& res) {
    HandleWarmup(req, res);
  });
  http.Post("/v1/unload", [this](const httplib::Request& req, httplib::Response& res) {
    HandleUnload(req, res);
  });
  http.Get("/v1/status",
           [this](const httplib::Request& req, httplib::Response& res) { HandleStatus(req, res); });
  http.Get("/healthz", [this](const httplib::Request&, httplib::Response& res) {
    SendJson(res, 200, json{{"status", "ok"}});
  });
  http.Get("/readyz",
           [this](const httplib::Request& req, httplib::Response& res) { HandleReadyz(req, res); });
  http.Get("/metrics", [this](const httplib::Request& req, httplib::Response& res) {
    HandleMetrics(req, res);
  });
}

// ----- /v1/infer -----

void Server::Impl::HandleInfer(const httplib::Request& req, httplib::Response& res) {
  if (!Enter()) {
    HttpError e{503, "shutting_down", "the server is shutting down", true};
    SendError(res, e);
    ObserveInfer(req, res, true);
    return;
  }
  ActiveRequest active_request{this};
  std::optional<HttpError> err = RunInfer(req, res);
  if (err) SendError(res, *err);
  ObserveInfer(req, res, err && err->rejected);
}

std::optional<HttpError> Server::Impl::RunInfer(const httplib::Request& req,
                                                httplib::Response& res) {
  if (req.body.size() > options.max_body_bytes) {
    return HttpError{413, "payload_too_large",
                     "request body exceeds " + std::to_string(options.max_body_bytes) + " bytes"};
  }
  const std::string content_type = req.get_header_value("Content-Type");
  const bool st_in = IEqualsPrefix(content_type, kSafetensorsType) ||
                     IEqualsPrefix(content_type, "application/x-safetensors");
  bool st_out = st_in;
  const std::string accept = req.get_header_value("Accept");
  if (accept.find("application/json") != std::string::npos) {
    st_out = false;
  } else if (accept.find(kSafetensorsType) != std::string::npos ||
             accept.find("application/x-safetensors") != std::string::npos) {
    st_out = true;
  }

  std::vector<TensorData> inputs;
  if (st_in) {
    auto parsed = ParseSafetensorsBytes(req.body);
    if (!parsed.ok()) return BadRequest(std::string(parsed.status().message()));
    inputs = std::move(parsed).value();
    OrderPositionalInputs(&inputs);
  } else if (auto e = ParseJsonInputs(req.body, &inputs)) {
    return e;
  }

  switch (admission.Acquire()) {
    case Admission::Result::kAdmitted:
      break;
    case Admission::Result::kQueueFull:
      return HttpError{503, "queue_full",
                       "too many requests: " + std::to_string(options.max_concurrency) +
                           " running and " + std::to_string(options.queue) + " queued",
                       true};
    case Admission::Result::kTimeout:
      return HttpError{503, "queue_timeout",
                       "waited longer than " +
                           Fixed3(static_cast<double>(options.request_timeout_ns) / 1e9) +
                           " s for a free slot",
                       true};
  }
  metrics->Set("stasis_queued", admission.queued());
  bool cold = false;
  StatusOr<std::vector<TensorData>> result = InternalError("not run");
  {
    struct Slot {  // released however Infer ends
      Admission* a;
      ~Slot() { a->Release(); }
    } slot{&admission};
    result = lifecycle->Infer(inputs, &cold);
  }
  tls_request.cold = cold ? 1 : 0;
  if (!result.ok()) return FromStatus(result.status());

  const double latency_ms = static_cast<double>(clock->NowNanos() - tls_request.start_ns) / 1e6;
  res.set_header("X-Stasis-Cold", cold ? "true" : "false");
  res.set_header("X-Stasis-Latency-Ms", Fixed3(latency_ms));
  if (st_out) {
    auto body = EncodeSafetensors(
        *result, {{"cold", cold ? "true" : "false"}, {"latency_ms", Fixed3(latency_ms)}});
    if (!body.ok()) {
      return HttpError{500, "internal",
                       "cannot encode the outputs: " + std::string(body.status().message())};
    }
    res.status = 200;
    res.set_content(std::move(body).value(), kSafetensorsType);
    return std::nullopt;
  }
  json outputs = json::array();
  for (const TensorData& t : *result) {
    auto size = ByteSize(t.dtype, t.shape);
    if (!size || *size != t.bytes.size()) {
      return HttpError{500, "internal", "output '" + t.name + "' has an inconsistent size"};
    }
    if (!JsonCarries(t.dtype)) {
      return HttpError{500, "unimplemented",
                       "output '" + t.name + "' has dtype " + std::string(DTypeName(t.dtype)) +
                           ", which JSON does not carry; ask for safetensors (Accept: " +
                           kSafetensorsType + ")"};
    }
    const size_t elem = static_cast<size_t>(DTypeBits(t.dtype) / 8);
    json data = json::array();
    data.get_ref<json::array_t&>().reserve(elem == 0 ? 0 : t.bytes.size() / elem);
    for (size_t off = 0; off + elem <= t.bytes.size(); off += elem) {
      data.push_back(ElementToJson(t.dtype, t.bytes.data() + off));
    }
    outputs.push_back(json{{"name", t.name},
                           {"dtype", DTypeName(t.dtype)},
                           {"shape", t.shape},
                           {"data", std::move(data)}});
  }
  SendJson(res, 200,
           json{{"outputs", std::move(outputs)},
                {"cold", cold},
                {"latency_ms", latency_ms},
                {"request_id", tls_request.id}});
  return std::nullopt;
}

std::optional<HttpError> Server::Impl::ParseJsonInputs(const std::string& body,
                                                       std::vector<TensorData>* out) {
  json doc;
  try {
    doc = json::parse(body);
  } catch (const json::parse_error& e) {
    return HttpError{400, "bad_json", std::string("malformed JSON: ") + e.what()};
  }
  if (!doc.is_object() || !doc.contains("inputs") || !doc["inputs"].is_array()) {
    return BadRequest("expected {\"inputs\": [...]}");
  }
  uint64_t budget = options.max_body_bytes > body.size() ? options.max_body_bytes - body.size() : 0;
  const json& list = doc["inputs"];
  for (size_t i = 0; i < list.size(); ++i) {
    const json& spec = list[i];
    const std::string where = "inputs[" + std::to_string(i) + "]";
    if (!spec.is_object()) return BadRequest(where + ": expected an object");
    TensorData t;
    if (spec.contains("name")) {
      if (!spec["name"].is_string()) return BadRequest(where + ".name: expected a string");
      t.name = spec["name"].get<std::string>();
    } else {
      t.name = "input." + std::to_string(i);
    }
    if (spec.contains("url")) {
      if (auto e = FetchUrlInput(spec, i, &budget, &t)) return e;
      out->push_back(std::move(t));
      continue;
    }
    if (!spec.contains("dtype") || !spec["dtype"].is_string()) {
      return BadRequest(where + ".dtype: expected a dtype name such as \"F32\"");
    }
    const std::string dtype_name = spec["dtype"].get<std::string>();
    auto dtype = DTypeFromName(dtype_name);
    if (!dtype) return BadRequest(where + ".dtype: unknown dtype \"" + dtype_name + "\"");
    if (!JsonCarries(*dtype)) {
      return BadRequest(where + ".dtype: " + dtype_name +
                        " is not carried by JSON; send a safetensors body");
    }
    t.dtype = *dtype;
    if (!spec.contains("shape") || !spec["shape"].is_array()) {
      return BadRequest(where + ".shape: expected an array of integers");
    }
    if (spec["shape"].size() > format::kMaxRank) {
      return BadRequest(where + ".shape: rank above " + std::to_string(format::kMaxRank));
    }
    for (const json& d : spec["shape"]) {
      if (!d.is_number_integer() ||
          (d.is_number_integer() && !d.is_number_unsigned() && d.get<int64_t>() < 0)) {
        return BadRequest(where + ".shape: expected non-negative integers");
      }
      if (d.is_number_unsigned() &&
          d.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return BadRequest(where + ".shape: dimension too large");
      }
      t.shape.push_back(d.get<int64_t>());
    }
    auto count = ElementCount(t.shape);
    if (!count) return BadRequest(where + ".shape: too many elements");
    if (!spec.contains("data") || !spec["data"].is_array()) {
      return BadRequest(where + ".data: expected a flat array of numbers");
    }
    const json& data = spec["data"];
    if (data.size() != *count) {
      return BadRequest(where + ": shape holds " + std::to_string(*count) +
                        " elements but data has " + std::to_string(data.size()));
    }
    t.bytes.reserve(*count * static_cast<uint64_t>(DTypeBits(t.dtype) / 8));
    for (size_t k = 0; k < data.size(); ++k) {
      if (auto e = AppendElement(t.dtype, data[k], &t.bytes)) {
        return BadRequest(where + ".data[" + std::to_string(k) + "]: " + *e + " for " + dtype_name);
      }
    }
    out->push_back(std::move(t));
  }
  return std::nullopt;
}

std::optional<HttpError> Server::Impl::FetchUrlInput(const json& spec, size_t index,
                                                     uint64_t* budget, TensorData* out) {
  const std::string where = "inputs[" + std::to_string(index) + "]";
  if (!spec["url"].is_string()) return BadRequest(where + ".url: expected a string");
  const std::string url = spec["url"].get<std::string>();
  std::optional<std::string> want;
  if (spec.contains("tensor")) {
    if (!spec["tensor"].is_string()) return BadRequest(where + ".tensor: expected a string");
    want = spec["tensor"].get<std::string>();
  }
  std::string bytes;
  if (StartsWith(url, "file://")) {
    if (auto e = ReadFileUrl(std::string_view(url).substr(7), *budget, &bytes)) {
      e->message = where + ": " + e->message;
      return e;
    }
  } else if (StartsWith(url, "http://")) {
    if (auto e = FetchHttpUrl(url, *budget, &bytes)) {
      e->message = where + ": " + e->message;
      return e;
    }
  } else {
    return BadRequest(where + ".url: unsupported URL (file:// or http:// only): " + Printable(url));
  }
  *budget -= std::min<uint64_t>(*budget, bytes.size());
  auto tensors = ParseSafetensorsBytes(bytes);
  if (!tensors.ok()) {
    return BadRequest(where + ": " + Printable(url) +
                      " is not a safetensors file: " + std::string(tensors.status().message()));
  }
  if (tensors->empty()) return BadRequest(where + ": " + Printable(url) + " holds no tensor");
  auto it = tensors->begin();
  if (want) {
    it = std::find_if(tensors->begin(), tensors->end(),
                      [&](const TensorData& t) { return t.name == *want; });
    if (it == tensors->end()) {
      return BadRequest(where + ": no tensor \"" + Printable(*want) + "\" in " + Printable(url));
    }
  }
  std::string name = std::move(out->name);
  *out = std::move(*it);
  out->name = std::move(name);
  return std::nullopt;
}

std::optional<HttpError> Server::Impl::ReadFileUrl(std::string_view rest, uint64_t budget,
                                                   std::string* out) {
  if (file_root_real.empty()) {
    return HttpError{403, "forbidden", "file:// inputs are disabled (no file root configured)"};
  }
  if (StartsWith(rest, "localhost/")) rest.remove_prefix(9);
  bool ok = false;
  const std::string path = PercentDecode(rest, &ok);
  if (!ok || path.empty() || path[0] != '/') {
    return BadRequest("file URL needs an absolute path: file:///dir/name.safetensors");
  }
  char* resolved = ::realpath(path.c_str(), nullptr);
  if (resolved == nullptr) {
    const int err = errno;
    // Outside the root: 403 whether the path exists or not (no probing of the host).
    if (!IsUnder(LexicallyNormal(path), file_root_real)) {
      return HttpError{403, "forbidden", "file input outside the file root"};
    }
    if (err == ENOENT || err == ENOTDIR) {
      return HttpError{404, "not_found", "no such input file: " + Printable(path)};
    }
    return HttpError{403, "forbidden", "cannot resolve input file: " + Printable(path)};
  }
  const std::string real(resolved);
  std::free(resolved);
  if (!IsUnder(real, file_root_real)) {
    return HttpError{403, "forbidden", "file input outside the file root"};
  }
  const int fd = OpenBeneath(file_root_real, real);
  if (fd < 0) {
    return HttpError{errno == ENOENT ? 404 : 403, errno == ENOENT ? "not_found" : "forbidden",
                     "cannot open input file: " + Printable(path)};
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return BadRequest("input is not a regular file: " + Printable(path));
  }
  if (static_cast<uint64_t>(st.st_size) > budget) {
    ::close(fd);
    return HttpError{413, "payload_too_large",
                     "input file of " + std::to_string(st.st_size) + " bytes exceeds the limit"};
  }
  out->resize(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < out->size()) {
    const ssize_t n = ::read(fd, out->data() + done, out->size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      return HttpError{500, "internal", "reading input file failed: " + Printable(path)};
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return std::nullopt;
}

std::optional<HttpError> Server::Impl::FetchHttpUrl(std::string_view url, uint64_t budget,
                                                    std::string* out) {
  std::string_view rest = url.substr(7);
  const size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  const std::string path = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  if (std::any_of(path.begin(), path.end(), [](char c) {
        return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f || c == '#';
      })) {
    return BadRequest("malformed http URL (path): " + Printable(url));
  }
  const std::optional<Authority> parsed = ParseAuthority(authority);
  if (!parsed) {
    return BadRequest("malformed http URL (expected http://HOST[:PORT]/...): " + Printable(url));
  }
  if (!http_hosts.Allows(*parsed)) {
    return HttpError{403, "forbidden",
                     options.http_input_hosts.empty()
                         ? "http:// inputs are disabled (stasis serve --http-inputs HOST,...)"
                         : "http:// inputs from " + Printable(authority) + " are not allowed"};
  }
  // Host and port as parsed above: httplib never parses the client's text itself.
  httplib::Client cli(parsed->host, parsed->port == 0 ? 80 : parsed->port);
  cli.set_follow_location(false);  // a redirect could lead past the host list
  const auto timeout = std::chrono::nanoseconds(std::max<int64_t>(options.fetch_timeout_ns, 1));
  cli.set_connection_timeout(std::chrono::duration_cast<std::chrono::microseconds>(timeout));
  cli.set_read_timeout(std::chrono::duration_cast<std::chrono::microseconds>(timeout));
  cli.set_write_timeout(std::chrono::duration_cast<std::chrono::microseconds>(timeout));
  int status = 0;
  bool too_big = false, timed_out = false;
  const int64_t deadline_ns = clock->NowNanos() + std::max<int64_t>(options.fetch_timeout_ns, 1);
  auto result = cli.Get(
      path,
      [&](const httplib::Response& r) {
        status = r.status;
        if (r.status != 200) return false;
        if (r.has_header("Content-Length")) {
          const std::string cl = r.get_header_value("Content-Length");
          uint64_t n = 0;
          auto [ptr, ec] = std::from_chars(cl.data(), cl.data() + cl.size(), n);
          if (ec == std::errc() && n > budget) {
            too_big = true;
            return false;
          }
          if (ec == std::errc()) out->reserve(static_cast<size_t>(n));
        }
        return true;
      },
      [&](const char* data, size_t len) {
        if (out->size() + len > budget) {
          too_big = true;
          return false;
        }
        // The timeouts above bound each read; this bounds the whole fetch (an upstream
        // sending a byte now and then would otherwise hold the request forever).
        if (clock->NowNanos() > deadline_ns) {
          timed_out = true;
          return false;
        }
        out->append(data, len);
        return true;
      });
  if (timed_out) {
    return HttpError{502, "bad_gateway",
                     "fetching " + Printable(url) + " took longer than " +
                         Fixed3(static_cast<double>(options.fetch_timeout_ns) / 1e9) + " s"};
  }
  if (too_big) {
    return HttpError{
        413, "payload_too_large",
        "input at " + Printable(url) + " exceeds " + std::to_string(budget) + " bytes"};
  }
  if (status != 0 && status != 200) {
    return HttpError{502, "bad_gateway",
                     "fetching " + Printable(url) + " returned HTTP " + std::to_string(status)};
  }
  if (!result) {
    return HttpError{
        502, "bad_gateway",
        "fetching " + Printable(url) + " failed: " + httplib::to_string(result.error())};
  }
  return std::nullopt;
}

// ----- admin and observability -----

void Server::Impl::HandleWarmup(const httplib::Request& req, httplib::Response& res) {
  if (!Enter()) {
    SendError(res, {503, "shutting_down", "the server is shutting down", true});
    return;
  }
  ActiveRequest active_request{this};
  const bool was_warm = lifecycle->state() == ModelState::kWarm;
  const int64_t start = clock->NowNanos();
  Status s = lifecycle->Warmup();
  metrics->SyncLifecycle(lifecycle->status());
  if (s.ok()) {
    tls_request.cold = was_warm ? 0 : 1;
    SendJson(res, 200,
             json{{"state", ModelStateName(lifecycle->state())},
                  {"cold", !was_warm},
                  {"latency_ms", static_cast<double>(clock->NowNanos() - start) / 1e6}});
  } else {
    SendError(res, FromStatus(s));
  }
}

void Server::Impl::HandleUnload(const httplib::Request& req, httplib::Response& res) {
  if (!Enter()) {
    SendError(res, {503, "shutting_down", "the server is shutting down", true});
    return;
  }
  ActiveRequest active_request{this};
  const bool was_warm = lifecycle->state() == ModelState::kWarm;
  Status s = lifecycle->UnloadNow();
  metrics->SyncLifecycle(lifecycle->status());
  if (s.ok()) {
    SendJson(res, 200, json{{"state", ModelStateName(lifecycle->state())}, {"unloaded", was_warm}});
  } else {
    SendError(res, FromStatus(s));
  }
}

void Server::Impl::HandleStatus(const httplib::Request&, httplib::Response& res) {
  const LifecycleStatus st = lifecycle->status();
  metrics->SyncLifecycle(st);
  bool is_draining;
  {
    std::lock_guard l(mu);
    is_draining = draining;
  }
  json j{
      {"state", ModelStateName(st.state)},
      {"model", options.model},
      {"ready", !is_draining && st.state != ModelState::kFailed},
      {"draining", is_draining},
      {"idle_seconds", st.idle_seconds},
      {"in_flight", st.in_flight},
      {"waiting", st.waiting},
      {"queued", admission.queued()},
      {"running", admission.running()},
      {"max_concurrency", options.max_concurrency},
      {"cold_starts", st.cold_starts},
      {"failed_restores", st.failed_restores},
      {"warm_requests", st.warm_requests},
      {"cold_requests", st.cold_requests},
      {"unloads", st.unloads},
      {"device_bytes", st.device_bytes},
      {"last_error", st.last_error},
      {"consecutive_failures", st.consecutive_failures},
      {"retry_in_seconds", st.retry_in_seconds >= 0 ? json(st.retry_in_seconds) : json(nullptr)}};
  if (st.has_last_restore) {
    j["last_restore"] = RestoreReportJson(st.last_restore);
  } else {
    j["last_restore"] = nullptr;
  }
  SendJson(res, 200, j);
}

void Server::Impl::HandleReadyz(const httplib::Request&, httplib::Response& res) {
  bool is_draining;
  {
    std::lock_guard l(mu);
    is_draining = draining;
  }
  const ModelState state = lifecycle->state();
  if (is_draining) {
    SendError(res, {503, "shutting_down", "the server is shutting down", true});
  } else if (state == ModelState::kFailed) {
    const LifecycleStatus st = lifecycle->status();
    std::string message = "the last restore failed: " + st.last_error;
    if (st.retry_in_seconds >= 0) {
      char retry[64];
      std::snprintf(retry, sizeof retry, " (retrying by itself in %.1f s)", st.retry_in_seconds);
      message += retry;
    }
    SendError(res, {503, "failed", message, false});
  } else {
    SendJson(res, 200, json{{"ready", true}, {"state", ModelStateName(state)}});
  }
}

void Server::Impl::HandleMetrics(const httplib::Request&, httplib::Response& res) {
  metrics->Set("stasis_queued", admission.queued());
  metrics->SyncLifecycle(lifecycle->status());
  res.status = 200;
  res.set_content(metrics->Render(), "text/plain; version=0.0.4; charset=utf-8");
}

// ----- Server -----

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() { Shutdown(); }

Status CheckHttpInputHosts(const std::vector<std::string>& hosts) {
  return ParseHttpHostList(hosts).status();
}

StatusOr<std::unique_ptr<Server>> Server::Start(Lifecycle* lifecycle, Metrics* metrics,
                                                Clock* clock, ServerOptions options) {
  if (lifecycle == nullptr || metrics == nullptr || clock == nullptr) {
    return InvalidArgumentError("server: lifecycle, metrics and clock are required");
  }
  if (options.max_concurrency < 1) {
    return InvalidArgumentError("server: max_concurrency must be at least 1");
  }
  if (options.queue < 0) return InvalidArgumentError("server: queue must be >= 0");
  auto http_hosts = ParseHttpHostList(options.http_input_hosts);
  if (!http_hosts.ok()) return http_hosts.status().WithContext("server");
  if (options.port < 0 || options.port > 65535) {
    return InvalidArgumentError("server: port out of range: " + std::to_string(options.port));
  }
  if (options.max_body_bytes == 0) {
    return InvalidArgumentError("server: max_body_bytes must be positive");
  }
  auto impl = std::make_unique<Impl>(lifecycle, metrics, clock, std::move(options));
  impl->http_hosts = std::move(http_hosts).value();
  const ServerOptions& o = impl->options;
  if (!o.file_root.empty()) {
    char* resolved = ::realpath(o.file_root.c_str(), nullptr);
    if (resolved == nullptr) {
      return ErrnoToStatus(errno, "server: file root " + o.file_root)
          .WithContext("invalid file root");
    }
    impl->file_root_real = resolved;
    std::free(resolved);
    struct stat st;
    if (::stat(impl->file_root_real.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return InvalidArgumentError("server: file root is not a directory: " + o.file_root);
    }
  }
  impl->Install();
  if (o.port == 0) {
    impl->port = impl->http.bind_to_any_port(o.host);
    if (impl->port <= 0) {
      return UnavailableError("server: cannot bind " + o.host + " (ephemeral port)");
    }
  } else {
    if (!impl->http.bind_to_port(o.host, o.port)) {
      return UnavailableError("server: cannot bind " + o.host + ":" + std::to_string(o.port));
    }
    impl->port = o.port;
  }
  Impl* p = impl.get();
  impl->listener = std::thread([p] {
    p->http.listen_after_bind();
    {
      std::lock_guard l(p->mu);
      p->listener_done = true;
    }
    p->cv.notify_all();
  });
  // stop() is a no-op until the listener runs: wait for it, so Shutdown always stops it.
  for (;;) {
    if (p->http.is_running()) break;
    {
      std::lock_guard l(p->mu);
      if (p->listener_done) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  {
    std::lock_guard l(p->mu);
    if (p->listener_done) {
      p->listener.join();
      return UnavailableError("server: the listener stopped at once on " + o.host + ":" +
                              std::to_string(p->port));
    }
  }
  metrics->SyncLifecycle(lifecycle->status());
  spdlog::debug("listening on http://{}:{} (max_concurrency={}, queue={}{})", o.host, p->port,
                o.max_concurrency, o.queue, o.token.empty() ? "" : ", token required");
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

int Server::port() const { return impl_->port; }

bool Server::draining() const {
  std::lock_guard l(impl_->mu);
  return impl_->draining;
}

void Server::Shutdown() {
  Impl& m = *impl_;
  {
    std::unique_lock l(m.mu);
    if (!m.draining) {
      m.draining = true;
      spdlog::info("shutting down: draining {} request(s)", m.active);
    }
    m.cv.wait(l, [&] { return m.active == 0; });
  }
  std::lock_guard g(m.stop_mu);
  if (m.stopped) return;
  m.http.stop();
  if (m.listener.joinable()) m.listener.join();
  m.stopped = true;
  spdlog::info("server stopped");
}

void Server::Wait() {
  Impl& m = *impl_;
  std::unique_lock l(m.mu);
  m.cv.wait(l, [&] { return m.listener_done; });
}

}  // namespace stasis::runtime
