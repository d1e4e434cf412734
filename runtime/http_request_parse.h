// File: runtime/http_request_parse.h
//
// What the transport does to the bytes of a request apart from the socket: the limits it
// gives Beast's parser, the head copied out of the parser, the checks it makes beyond
// Beast's, and the Content-Encoding undone. runtime/http_server.cc drives these functions
// on a connection; tests/fuzz/fuzz_http_request.cc drives the same ones on arbitrary bytes.
//
// Internal to runtime/. Thread safety: pure functions.
#ifndef STASIS_RUNTIME_HTTP_REQUEST_PARSE_H_
#define STASIS_RUNTIME_HTTP_REQUEST_PARSE_H_

#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "runtime/http_server.h"
#include "stasis/status.h"

namespace stasis::runtime::internal {

using RequestParser = boost::beast::http::request_parser<boost::beast::http::string_body>;

// ASCII case-insensitive equality (header names, tokens).
bool EqualsIgnoringCase(std::string_view a, std::string_view b);
// `s` without leading and trailing spaces and tabs (a header value's optional white space).
std::string_view TrimWhitespace(std::string_view s);

// Bounds `parser`: the head to `max_header_bytes` (Beast counts the request line and every
// field; past it the read fails with http::error::header_limit, a 431), the body as sent to
// `max_body_bytes` (http::error::body_limit, a 413; a Content-Length over it fails as soon as
// the head is read).
void LimitRequestParser(RequestParser* parser, uint32_t max_header_bytes, uint64_t max_body_bytes);

// Copies the head `parser` has read into `request`: method, target, path, headers in order
// and has_body. The body and remote are left alone.
void CopyRequestHead(const RequestParser& parser, HttpRequest* request);

// The checks the transport makes on a parsed head beyond Beast's: a Transfer-Encoding other
// than "chunked" alone is 501, a Content-Encoding other than identity, gzip, x-gzip or
// deflate is 415. Returns the status and a message, or nullopt when the head is acceptable.
std::optional<std::pair<int, std::string>> CheckRequestHead(const HttpRequest& head);

// `body` with the Content-Encoding `encoding` undone ("" and "identity": unchanged), at most
// `max_bytes` of output. Errors: kResourceExhausted past max_bytes (inflation stops there),
// kInvalidArgument for corrupt data, kUnimplemented for another coding.
StatusOr<std::string> DecodeContent(std::string_view encoding, std::string body,
                                    uint64_t max_bytes);

}  // namespace stasis::runtime::internal

#endif  // STASIS_RUNTIME_HTTP_REQUEST_PARSE_H_
