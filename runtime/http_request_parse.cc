#include "runtime/http_request_parse.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>

namespace stasis::runtime::internal {

bool EqualsIgnoringCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view TrimWhitespace(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::string_view HttpRequest::Header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (EqualsIgnoringCase(k, name)) return v;
  }
  return {};
}

std::optional<std::pair<int, std::string>> CheckRequestHead(const HttpRequest& head) {
  for (const auto& [k, v] : head.headers) {
    if (EqualsIgnoringCase(k, "Transfer-Encoding") &&
        !EqualsIgnoringCase(TrimWhitespace(v), "chunked")) {
      return std::pair<int, std::string>(
          501, "unsupported Transfer-Encoding (only \"chunked\" alone is accepted)");
    }
    if (EqualsIgnoringCase(k, "Content-Encoding")) {
      const std::string_view e = TrimWhitespace(v);
      if (!e.empty() && !EqualsIgnoringCase(e, "identity") && !EqualsIgnoringCase(e, "gzip") &&
          !EqualsIgnoringCase(e, "x-gzip") && !EqualsIgnoringCase(e, "deflate")) {
        return std::pair<int, std::string>(
            415, "unsupported Content-Encoding (identity, gzip or deflate)");
      }
    }
  }
  return std::nullopt;
}

StatusOr<std::string> DecodeContent(std::string_view encoding, std::string body,
                                    uint64_t max_bytes) {
  encoding = TrimWhitespace(encoding);
  if (encoding.empty() || EqualsIgnoringCase(encoding, "identity")) {
    if (body.size() > max_bytes) return ResourceExhaustedError("body exceeds the limit");
    return body;
  }
  if (!EqualsIgnoringCase(encoding, "gzip") && !EqualsIgnoringCase(encoding, "x-gzip") &&
      !EqualsIgnoringCase(encoding, "deflate")) {
    return UnimplementedError("unsupported Content-Encoding");
  }
  z_stream zs{};
  // 32 + MAX_WBITS: a gzip or a zlib header, detected (servers send both as "deflate").
  if (inflateInit2(&zs, 32 + MAX_WBITS) != Z_OK) return InternalError("zlib: inflateInit2 failed");
  struct End {
    z_stream* z;
    ~End() { inflateEnd(z); }
  } end{&zs};
  std::string out;
  zs.next_in = reinterpret_cast<Bytef*>(body.data());
  zs.avail_in = static_cast<uInt>(std::min<size_t>(body.size(), UINT32_MAX));
  if (body.size() > UINT32_MAX) return ResourceExhaustedError("compressed body too large");
  constexpr size_t kStep = 64 << 10;
  for (;;) {
    const size_t used = out.size();
    // Never more than the limit plus one step, whatever the ratio of the input.
    if (used > max_bytes) return ResourceExhaustedError("decoded body exceeds the limit");
    out.resize(used + kStep);
    zs.next_out = reinterpret_cast<Bytef*>(out.data() + used);
    zs.avail_out = static_cast<uInt>(kStep);
    const int rc = inflate(&zs, Z_NO_FLUSH);
    out.resize(used + (kStep - zs.avail_out));
    if (rc == Z_STREAM_END) {
      if (zs.avail_in == 0) break;
      // Concatenated gzip members (RFC 1952 allows them).
      if (inflateReset(&zs) != Z_OK) return InvalidArgumentError("corrupt compressed body");
      continue;
    }
    if (rc == Z_BUF_ERROR && zs.avail_in == 0) {
      return InvalidArgumentError("truncated compressed body");
    }
    if (rc != Z_OK && rc != Z_BUF_ERROR) {
      return InvalidArgumentError(std::string("corrupt compressed body: ") +
                                  (zs.msg != nullptr ? zs.msg : "inflate failed"));
    }
  }
  if (out.size() > max_bytes) return ResourceExhaustedError("decoded body exceeds the limit");
  return out;
}

void LimitRequestParser(RequestParser* parser, uint32_t max_header_bytes, uint64_t max_body_bytes) {
  parser->header_limit(max_header_bytes);
  parser->body_limit(max_body_bytes);
}

void CopyRequestHead(const RequestParser& parser, HttpRequest* request) {
  const auto& h = parser.get();
  request->method.assign(h.method_string().data(), h.method_string().size());
  request->target.assign(h.target().data(), h.target().size());
  request->path = request->target.substr(0, request->target.find('?'));
  request->headers.clear();
  for (const auto& f : h) {
    request->headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
  }
  request->has_body = parser.chunked() || parser.content_length().value_or(0) > 0;
}

}  // namespace stasis::runtime::internal
