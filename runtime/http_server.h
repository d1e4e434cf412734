// File: runtime/http_server.h
//
// The HTTP/1.1 transport of `stasis serve`, built for hostile clients on Boost.Beast (Debian
// 1.74, header-only) and Asio: it reads requests, enforces the protocol and the limits, and
// hands whole requests to an HttpHandler; runtime/server.cc holds the routes.
//
// What a client cannot do to it:
//  - Hold a thread. Connections are asynchronous on `io_threads` threads; only requests the
//    handler calls Blocking run on one of `workers` worker threads, and at most
//    `max_pending` of them wait for a worker (then 503 at once). A slow or silent client costs
//    a socket and a buffer, never a thread, so /healthz answers under any number of them
//    (up to max_connections; beyond that new connections are closed at once).
//  - Take its time. The head of a request must arrive whole within header_timeout_ms (the
//    first request of a connection) or keep_alive_timeout_ms (the next ones, idle time
//    included); the body within body_timeout_ms; an answer must be taken within
//    write_timeout_ms. A connection past its deadline is closed without an answer.
//  - Smuggle a request. Parsing is Beast's strict HTTP/1.1 parser: two different
//    Content-Lengths, Content-Length with Transfer-Encoding, a Transfer-Encoding other than
//    "chunked" alone, or a malformed head is a 400 (501 for an unknown transfer coding), and
//    the connection is closed after every answer given before the body was read (401, 404,
//    413...) — a body is never parsed as a request. Pipelined requests are answered in order.
//  - Make it allocate. The head is bounded by max_header_bytes (431 past it; the header count
//    with it); the body by max_body_bytes both as sent and after Content-Encoding (gzip or
//    deflate) is undone, inflation stopping at the limit (413); chunked bodies count the
//    same way. Other content codings are 415.
//  - Take the port of another server: the listener binds without SO_REUSEPORT, so a taken
//    port is an error at Start (kUnavailable).
//  - Keep it from stopping. Stop() closes the listener, lets answers being written finish
//    for at most shutdown_grace_ms, then closes every connection and joins every thread:
//    it returns within that bound plus the time the handler's running Blocking calls take.
//
// Thread safety: Start/Stop/port may be called from any thread; Stop is idempotent. The
// handler is called concurrently from I/O threads (OnHead, ErrorAnswer, non-blocking Handle,
// OnDone) and worker threads (blocking Handle): it must be thread-safe and must not block
// except in a Handle it declared Blocking.
#ifndef STASIS_RUNTIME_HTTP_SERVER_H_
#define STASIS_RUNTIME_HTTP_SERVER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "stasis/status.h"

namespace stasis::runtime::internal {

// What the handler records about a request for its log line and metrics; the transport
// only carries it from OnHead to OnDone.
struct RequestAnnotations {
  std::string id;         // the request id ("" until the handler saw the request)
  int64_t start_ns = 0;   // on the handler's clock
  int cold = -1;          // -1: not an inference
  bool rejected = false;  // load shedding (metrics outcome "rejected")
};

struct HttpRequest {
  std::string method;                                        // as sent ("GET", "POST"...)
  std::string target;                                        // as sent, query included
  std::string path;                                          // target up to '?'
  std::vector<std::pair<std::string, std::string>> headers;  // in order, names as sent
  std::string body;       // decoded: chunked framing and Content-Encoding undone
  std::string remote;     // "address:port" of the peer
  bool has_body = false;  // the head announced a body (Content-Length > 0 or chunked)
  mutable RequestAnnotations annotations;

  // The first header named `name` (ASCII case-insensitive), or "".
  std::string_view Header(std::string_view name) const;
};

struct HttpResponse {
  int status = 200;
  std::string content_type;  // none when empty
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  bool close = false;  // close the connection after this answer
};

// What the application does with requests; see the thread-safety note above.
class HttpHandler {
 public:
  virtual ~HttpHandler() = default;
  // Called once the head is read, before the body. An answer returned here is sent at once,
  // the body (if any) is not read, and the connection is closed after it; nullopt reads the
  // body and calls Handle.
  virtual std::optional<HttpResponse> OnHead(const HttpRequest& head) = 0;
  // True when Handle may block (it then runs on a worker thread).
  virtual bool Blocking(const HttpRequest& request) = 0;
  virtual HttpResponse Handle(HttpRequest& request) = 0;
  // The answer for an error the transport found itself (400 malformed, 413, 415, 431, 501,
  // 503 when the workers are all busy). `request` holds what was read of the head (may be
  // empty).
  virtual HttpResponse ErrorAnswer(const HttpRequest& request, int status, std::string code,
                                   std::string message) = 0;
  // When an answer is about to be written (its body already handed to the transport, so
  // `response.body` is empty): for the log line and metrics. `written` is reserved (true).
  virtual void OnDone(const HttpRequest& request, const HttpResponse& response, bool written) = 0;
};

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0: an ephemeral port
  uint64_t max_body_bytes = 256ull << 20;
  uint32_t max_header_bytes = 16 << 10;
  int64_t header_timeout_ms = 10'000;
  int64_t keep_alive_timeout_ms = 5'000;
  int64_t body_timeout_ms = 60'000;
  int64_t write_timeout_ms = 60'000;
  int64_t shutdown_grace_ms = 2'000;
  int max_connections = 1024;
  int io_threads = 2;
  int workers = 8;
  int max_pending = 64;  // blocking requests waiting for a worker
};

class HttpServer {
 public:
  // Binds, listens and starts the threads. `handler` must outlive the server.
  // Errors: kInvalidArgument (bad options or host), kUnavailable (cannot bind or listen,
  // e.g. the port is taken).
  static StatusOr<std::unique_ptr<HttpServer>> Start(HttpHandler* handler,
                                                     HttpServerOptions options);
  ~HttpServer();  // Stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const;
  // See "Keep it from stopping" above.
  void Stop();

  struct Impl;

 private:
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace stasis::runtime::internal

#endif  // STASIS_RUNTIME_HTTP_SERVER_H_
