#include "restore/io/remote_location.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "stasis/remote.h"

namespace stasis {
namespace {

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool StartsWithNoCase(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && Lower(s.substr(0, prefix.size())) == prefix;
}

std::string Trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

// One INI section's keys (the AWS CLI's files: "[name]" sections, "key = value" lines,
// '#' and ';' comments). Returns false when the file cannot be read.
using IniSections = std::map<std::string, std::map<std::string, std::string>>;
StatusOr<bool> ReadIni(const std::string& path, IniSections* out) {
  std::ifstream in(path);
  if (!in) return false;
  std::string line, section;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    std::string t = Trim(line);
    if (t.empty() || t[0] == '#' || t[0] == ';') continue;
    if (t.front() == '[') {
      if (t.back() != ']')
        return Status(StatusCode::kDataLoss,
                      path + ":" + std::to_string(lineno) + ": a section header without ']'");
      section = Trim(std::string_view(t).substr(1, t.size() - 2));
      (*out)[section];
      continue;
    }
    size_t eq = t.find('=');
    if (eq == std::string::npos) continue;  // continuation lines of nested settings
    if (section.empty()) continue;
    (*out)[section][Lower(Trim(std::string_view(t).substr(0, eq)))] =
        Trim(std::string_view(t).substr(eq + 1));
  }
  return true;
}

std::string HomePath(const RemoteEnvironment& env, const char* rest) {
  std::optional<std::string> home = env.Get("HOME");
  return (home ? *home : std::string(".")) + rest;
}

std::string Profile(const RemoteEnvironment& env) {
  std::optional<std::string> p = env.Get("AWS_PROFILE");
  return p ? *p : std::string("default");
}

// The profile's region from the config file ("[profile x]", or "[default]").
StatusOr<std::optional<std::string>> ConfigRegion(const RemoteEnvironment& env) {
  std::optional<std::string> file = env.Get("AWS_CONFIG_FILE");
  IniSections ini;
  STASIS_ASSIGN_OR_RETURN(bool read, ReadIni(file ? *file : HomePath(env, "/.aws/config"), &ini));
  if (!read) return std::optional<std::string>();
  const std::string profile = Profile(env);
  for (const std::string& name : {"profile " + profile, profile}) {
    auto s = ini.find(name);
    if (s == ini.end()) continue;
    auto r = s->second.find("region");
    if (r != s->second.end() && !r->second.empty()) return std::optional<std::string>(r->second);
  }
  return std::optional<std::string>();
}

StatusOr<std::string> ResolveRegion(const RemoteEnvironment& env) {
  for (const char* name : {"AWS_REGION", "AWS_DEFAULT_REGION"})
    if (std::optional<std::string> r = env.Get(name)) return *r;
  STASIS_ASSIGN_OR_RETURN(std::optional<std::string> r, ConfigRegion(env));
  return r ? *r : std::string("us-east-1");
}

// "http://host:port[/prefix]" without a trailing '/'.
StatusOr<std::string> CheckEndpoint(std::string endpoint) {
  if (!StartsWithNoCase(endpoint, "http://") && !StartsWithNoCase(endpoint, "https://"))
    return InvalidArgumentError("S3 endpoint must be an http:// or https:// URL, not '" +
                                RedactLocation(endpoint) + "'");
  if (endpoint.find('?') != std::string::npos)
    return InvalidArgumentError("S3 endpoint '" + RedactLocation(endpoint) +
                                "' must not have a query string");
  while (!endpoint.empty() && endpoint.back() == '/') endpoint.pop_back();
  return endpoint;
}

// A query string ("?b=2&a") in SigV4's canonical form ("?a=&b=2"): libcurl 7.88 signs the
// query as it is sent, so it must be sent canonical. Values are taken as already encoded.
std::string CanonicalQuery(std::string_view suffix) {
  if (suffix.empty() || suffix.front() != '?') return std::string(suffix);
  std::vector<std::string> params;
  std::string_view q = suffix.substr(1);
  while (!q.empty()) {
    size_t amp = q.find('&');
    std::string p(q.substr(0, amp));
    if (!p.empty()) params.push_back(p.find('=') == std::string::npos ? p + "=" : p);
    if (amp == std::string_view::npos) break;
    q.remove_prefix(amp + 1);
  }
  std::sort(params.begin(), params.end());
  std::string out = "?";
  for (size_t i = 0; i < params.size(); ++i) out += (i ? "&" : "") + params[i];
  return out;
}

}  // namespace

RemoteEnvironment RemoteEnvironment::Process() {
  RemoteEnvironment env;
  env.getenv = [](const char* name) -> std::optional<std::string> {
    const char* v = std::getenv(name);
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
  return env;
}

std::optional<std::string> RemoteEnvironment::Get(const char* name) const {
  if (!getenv) return std::nullopt;
  std::optional<std::string> v = getenv(name);
  if (v && v->empty()) return std::nullopt;
  return v;
}

bool IsRemoteLocation(std::string_view location) {
  return StartsWithNoCase(location, "s3://") || StartsWithNoCase(location, "http://") ||
         StartsWithNoCase(location, "https://");
}

std::string RedactLocation(std::string_view location) {
  std::string s(location.substr(0, location.find_first_of("?#")));
  // scheme://user:password@host/... → scheme://host/...
  size_t scheme = s.find("://");
  if (scheme != std::string::npos) {
    size_t host = scheme + 3;
    size_t slash = s.find('/', host);
    size_t at = s.rfind('@', slash == std::string::npos ? s.size() : slash);
    if (at != std::string::npos && at >= host) s.erase(host, at + 1 - host);
  }
  return s;
}

std::string PercentEncode(std::string_view text, bool keep_slash) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' ||
        (keep_slash && c == '/')) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

StatusOr<std::optional<AwsCredentials>> LoadAwsCredentials(const RemoteEnvironment& env,
                                                           std::string* source) {
  std::optional<std::string> id = env.Get("AWS_ACCESS_KEY_ID");
  std::optional<std::string> secret = env.Get("AWS_SECRET_ACCESS_KEY");
  if (id && secret) {
    AwsCredentials c{*id, *secret, env.Get("AWS_SESSION_TOKEN").value_or("")};
    *source = "environment";
    return std::optional<AwsCredentials>(std::move(c));
  }
  if (id || secret)
    return InvalidArgumentError(
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together (one is empty)");
  const std::string profile = Profile(env);
  const bool named = env.Get("AWS_PROFILE").has_value();
  std::optional<std::string> file = env.Get("AWS_SHARED_CREDENTIALS_FILE");
  const std::string path = file ? *file : HomePath(env, "/.aws/credentials");
  IniSections ini;
  STASIS_ASSIGN_OR_RETURN(bool read, ReadIni(path, &ini));
  auto s = ini.find(profile);
  if (!read || s == ini.end()) {
    if (named)
      return NotFoundError("AWS profile '" + profile + "' (AWS_PROFILE) is not in " + path);
    *source = "none";
    return std::optional<AwsCredentials>();
  }
  auto get = [&](const char* k) {
    auto it = s->second.find(k);
    return it == s->second.end() ? std::string() : it->second;
  };
  AwsCredentials c{get("aws_access_key_id"), get("aws_secret_access_key"),
                   get("aws_session_token")};
  if (c.access_key_id.empty() || c.secret_access_key.empty())
    return InvalidArgumentError("AWS profile '" + profile + "' in " + path +
                                " lacks aws_access_key_id or aws_secret_access_key");
  *source = "profile '" + profile + "'";
  return std::optional<AwsCredentials>(std::move(c));
}

StatusOr<ResolvedLocation> ResolveLocation(std::string_view location, const RemoteOptions& options,
                                           const RemoteEnvironment& env) {
  ResolvedLocation loc;
  loc.display = RedactLocation(location);
  if (StartsWithNoCase(location, "http://") || StartsWithNoCase(location, "https://")) {
    loc.url = std::string(location);
    if (loc.url.find("://") + 3 >= loc.url.size())
      return InvalidArgumentError("'" + loc.display + "' has no host");
    return loc;
  }
  if (!StartsWithNoCase(location, "s3://"))
    return InvalidArgumentError("'" + loc.display +
                                "' is not a remote location (s3://, http://, https://)");
  std::string_view rest = location.substr(5);
  size_t slash = rest.find('/');
  if (slash == std::string_view::npos || slash == 0 || slash + 1 >= rest.size())
    return InvalidArgumentError("'" + loc.display +
                                "' must name a bucket and a key: s3://BUCKET/KEY");
  loc.s3 = true;
  loc.bucket = std::string(rest.substr(0, slash));
  loc.key = std::string(rest.substr(slash + 1));
  if (loc.key.find_first_of("?#") != std::string::npos)
    return InvalidArgumentError("s3:// keys with '?' or '#' are not supported: '" + loc.display +
                                "'");
  STASIS_ASSIGN_OR_RETURN(loc.region, ResolveRegion(env));
  std::string endpoint = options.s3_endpoint;
  if (endpoint.empty())
    for (const char* name : {"AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"})
      if (std::optional<std::string> e = env.Get(name)) {
        endpoint = *e;
        break;
      }
  const std::string key = EncodeS3Key(loc.key);
  if (endpoint.empty()) {
    // Virtual-hosted addressing; bucket names with dots break TLS wildcard certificates,
    // so those go path-style (as the AWS CLI does).
    if (loc.bucket.find('.') == std::string::npos)
      loc.url = "https://" + loc.bucket + ".s3." + loc.region + ".amazonaws.com/" + key;
    else
      loc.url = "https://s3." + loc.region + ".amazonaws.com/" + loc.bucket + "/" + key;
  } else {
    STASIS_ASSIGN_OR_RETURN(loc.endpoint, CheckEndpoint(endpoint));
    loc.url = loc.endpoint + "/" + loc.bucket + "/" + key;
  }
  STASIS_ASSIGN_OR_RETURN(loc.credentials, LoadAwsCredentials(env, &loc.credentials_source));
  return loc;
}

Status ConfigureRequest(CURL* h, const ResolvedLocation& loc, const RemoteOptions& options,
                        std::string_view url_suffix, curl_slist** headers,
                        std::string_view payload_sha256_hex) {
  curl_easy_reset(h);
  const std::string url = loc.url + CanonicalQuery(url_suffix);
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());  // libcurl copies option strings
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);  // a redirect would carry the token
  // Keys are paths of their own: "a/../b" names that object, not "b" (curl would
  // normalise the dot segments away, and path-style could then reach another bucket).
  curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  // HTTP/1.1: parallel GETs on connections of their own. libcurl would otherwise multiplex
  // them all over one HTTP/2 connection where the server offers it (one TCP window).
  curl_easy_setopt(h, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_1_1));
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(std::max(0.001, options.connect_timeout_s) * 1000));
  // A stall: fewer than 1 KiB/s for stall_timeout_s.
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1024L);
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME,
                   static_cast<long>(std::max(1.0, options.stall_timeout_s)));
  curl_easy_setopt(h, CURLOPT_USERAGENT, "stasis");
  if (loc.s3 && loc.credentials) {
    const AwsCredentials& c = *loc.credentials;
    const std::string sigv4 = "aws:amz:" + loc.region + ":s3";
    curl_easy_setopt(h, CURLOPT_AWS_SIGV4, sigv4.c_str());
    curl_easy_setopt(h, CURLOPT_USERNAME, c.access_key_id.c_str());
    curl_easy_setopt(h, CURLOPT_PASSWORD, c.secret_access_key.c_str());
    const std::string hash = payload_sha256_hex.empty() ? std::string("UNSIGNED-PAYLOAD")
                                                        : std::string(payload_sha256_hex);
    *headers = curl_slist_append(*headers, ("x-amz-content-sha256: " + hash).c_str());
    if (!c.session_token.empty())
      *headers = curl_slist_append(*headers, ("x-amz-security-token: " + c.session_token).c_str());
    if (*headers == nullptr) return ResourceExhaustedError("out of memory for request headers");
  }
  return OkStatus();
}

}  // namespace stasis
