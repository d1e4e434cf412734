#include "runtime/input_fetch.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#if __has_include(<linux/openat2.h>)  // kernel headers >= 5.6
#include <linux/openat2.h>
#endif

#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string_view>
#include <system_error>
#include <utility>

#include "runtime/server.h"
#include "runtime/tensor_codec.h"

namespace stasis::runtime {
namespace internal {

using json = nlohmann::json;

namespace {

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

// realpath of the longest prefix of `normal` (a lexically normal absolute path) that
// resolves, followed by the rest unchanged.
std::string ResolveExistingPrefix(const std::string& normal) {
  size_t end = normal.size();
  while (end > 0) {
    const std::string prefix = normal.substr(0, end);
    if (char* r = ::realpath(prefix.c_str(), nullptr)) {
      std::string out(r);
      std::free(r);
      if (end < normal.size()) {
        if (out != "/") out += '/';
        out += normal.substr(end + 1);
      }
      return out;
    }
    const size_t slash = normal.rfind('/', end - 1);
    if (slash == std::string::npos || slash == 0) break;
    end = slash;
  }
  return normal;
}

bool IsUnder(std::string_view path, std::string_view root) {
  if (root == "/") return true;
  return path == root ||
         (StartsWith(path, root) && path.size() > root.size() && path[root.size()] == '/');
}

std::optional<HttpError> ReadFileUrl(const UrlInputPolicy& policy, std::string_view rest,
                                     uint64_t budget, std::string* out) {
  if (policy.file_root.empty()) {
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
    // Outside the root: 403 whether the path exists or not (no probing of the host). The
    // part of the path that exists is resolved, so that a symlink inside the root that
    // leads out gives 403 for missing names behind it too.
    if (!IsUnder(LexicallyNormal(path), policy.file_root) ||
        !IsUnder(ResolveExistingPrefix(LexicallyNormal(path)), policy.file_root)) {
      return HttpError{403, "forbidden", "file input outside the file root"};
    }
    if (err == ENOENT || err == ENOTDIR) {
      return HttpError{404, "not_found", "no such input file: " + Printable(path)};
    }
    return HttpError{403, "forbidden", "cannot resolve input file: " + Printable(path)};
  }
  const std::string real(resolved);
  std::free(resolved);
  if (!IsUnder(real, policy.file_root)) {
    return HttpError{403, "forbidden", "file input outside the file root"};
  }
  const int fd = OpenBeneath(policy.file_root, real);
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
    if (n == 0) {  // shorter than it said (a /proc or /sys file, or truncated meanwhile)
      ::close(fd);
      return BadRequest("input file ended before its size: " + Printable(path));
    }
    if (n < 0) {
      ::close(fd);
      return HttpError{500, "internal", "reading input file failed: " + Printable(path)};
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return std::nullopt;
}

std::optional<HttpError> FetchHttpUrl(const UrlInputPolicy& policy, std::string_view url,
                                      uint64_t budget, std::string* out) {
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
  if (!policy.http_hosts.Allows(*parsed)) {
    return HttpError{403, "forbidden",
                     policy.http_hosts.empty()
                         ? "http:// inputs are disabled (stasis serve --http-inputs HOST,...)"
                         : "http:// inputs from " + Printable(authority) + " are not allowed"};
  }
  // The URL is rebuilt from the parts parsed above: curl never parses the client's text.
  const std::string host =
      parsed->host.find(':') != std::string::npos ? "[" + parsed->host + "]" : parsed->host;
  const std::string fetch_url =
      "http://" + host + ":" + std::to_string(parsed->port == 0 ? 80 : parsed->port) + path;
  static std::once_flag curl_init;
  std::call_once(curl_init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return HttpError{500, "internal", "cannot start an HTTP client"};
  struct Cleanup {
    CURL* c;
    ~Cleanup() { curl_easy_cleanup(c); }
  } cleanup{curl};

  struct Sink {
    CURL* curl;
    std::string* out;
    uint64_t budget;
    bool too_big = false;
    bool not_ok = false;
  } sink{curl, out, budget};
  auto write = +[](char* data, size_t, size_t n, void* p) -> size_t {
    auto* s = static_cast<Sink*>(p);
    long code = 0;
    curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &code);
    if (code != 200) {  // an error page is not an input; stop reading it
      s->not_ok = true;
      return 0;
    }
    if (s->out->size() + n > s->budget) {
      s->too_big = true;
      return 0;
    }
    s->out->append(data, n);
    return n;
  };
  const long timeout_ms =
      static_cast<long>(std::max<int64_t>(policy.fetch_timeout_ns / 1'000'000, 1));
  curl_easy_setopt(curl, CURLOPT_URL, fetch_url.c_str());
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http");
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);  // a redirect could lead past the list
  curl_easy_setopt(curl, CURLOPT_PROXY, "");           // no proxy from the environment
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
  // The whole fetch: an upstream sending a byte now and then cannot hold the request.
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(curl, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(budget));
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, write);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &sink);
  const CURLcode rc = curl_easy_perform(curl);
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  if (sink.too_big || rc == CURLE_FILESIZE_EXCEEDED) {
    return HttpError{
        413, "payload_too_large",
        "input at " + Printable(url) + " exceeds " + std::to_string(budget) + " bytes"};
  }
  if (status != 0 && status != 200) {
    return HttpError{502, "bad_gateway",
                     "fetching " + Printable(url) + " returned HTTP " + std::to_string(status)};
  }
  if (rc == CURLE_OPERATION_TIMEDOUT) {
    return HttpError{502, "bad_gateway",
                     "fetching " + Printable(url) + " took longer than " +
                         Fixed3(static_cast<double>(policy.fetch_timeout_ns) / 1e9) + " s"};
  }
  if (rc != CURLE_OK) {
    return HttpError{502, "bad_gateway",
                     "fetching " + Printable(url) + " failed: " + curl_easy_strerror(rc)};
  }
  return std::nullopt;
}

}  // namespace

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

std::optional<HttpError> FetchUrlInput(const UrlInputPolicy& policy, const json& spec, size_t index,
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
    if (auto e = ReadFileUrl(policy, std::string_view(url).substr(7), *budget, &bytes)) {
      e->message = where + ": " + e->message;
      return e;
    }
  } else if (StartsWith(url, "http://")) {
    if (auto e = FetchHttpUrl(policy, url, *budget, &bytes)) {
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

}  // namespace internal

Status CheckHttpInputHosts(const std::vector<std::string>& hosts) {
  return internal::ParseHttpHostList(hosts).status();
}

}  // namespace stasis::runtime
