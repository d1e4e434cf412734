// File: runtime/server.h
//
// The HTTP front of `stasis serve`: the routes, on the hardened transport of
// runtime/http_server.h (Boost.Beast; its limits, deadlines and strict parsing are listed
// there), JSON through nlohmann. It turns requests into Lifecycle calls and reports what
// happened; docs/runtime.md describes the API.
//
//   POST /v1/infer    inputs → outputs (below); restores the model first when it is cold
//   POST /v1/warmup   Lifecycle::Warmup()          POST /v1/unload   Lifecycle::UnloadNow()
//   GET  /v1/status   state, counters, the last cold start's report (restore/report_json.h)
//   GET  /healthz     200 while the process runs (never needs the token)
//   GET  /readyz      200 when accepting requests; 503 while draining or FAILED
//   GET  /metrics     Prometheus text (runtime/metrics.h)
//
// POST /v1/infer takes either
//  - JSON: {"inputs":[{"name":"x","dtype":"F32","shape":[2,3],"data":[...flat...]}, ...]}
//    (dtype: a safetensors name; JSON carries BOOL, U8..U64, I8..I64, F16, BF16, F32, F64),
//    or an input by reference: {"name":"x","url":"file:///abs/x.safetensors" |
//    "http://host:port/x.safetensors", "tensor":"optional name"} (the file's named tensor,
//    else its first); answered {"outputs":[{"name","dtype","shape","data"}...],
//    "cold":bool,"latency_ms":n,"request_id":"..."}; or
//  - a safetensors body (Content-Type application/octet-stream or application/x-safetensors):
//    the model's positional inputs are its tensors in header order, except that when every
//    name ends in ".<i>" (or is "<i>") with the indices exactly 0..n-1 they are taken in
//    index order (writers such as the Python reference sort the header); answered as
//    safetensors (outputs in the model's order, metadata cold/latency_ms) with headers
//    X-Stasis-Cold and X-Stasis-Latency-Ms.
//  An Accept header naming application/json or application/octet-stream picks the answer's
//  format; otherwise it follows the request's.
//
// Errors are JSON {"error":{"code":"...","message":"..."}}: 400 malformed requests (bad
// JSON, JSON nested deeper than 64, a number out of range, unknown dtype, a dimension above
// 2^31-1, shape/data mismatch, bad URL; malformed HTTP), 401 missing/wrong token (checked
// on the head, before any body is read; the connection is then closed), 403 a file://
// input outside file_root (or file inputs disabled) or an http:// input from a host not in
// http_input_hosts, 404 unknown path or input file, 405 a known path with another method,
// 413 a body over max_body_bytes (after Content-Encoding is undone) or an answer that would
// exceed max_output_bytes (code "output_too_large"), 415/501 an unknown content or transfer
// coding, 431 a head over its limit, 502 an http:// input that could not be fetched, 503
// (with Retry-After) queue full, queue timeout, shutting down, or a failed restore (the
// lifecycle reports those as kUnavailable); other errors of the lifecycle map by code
// (HttpStatusForCode).
//
// Admission: at most max_concurrency requests run inside the model; up to `queue` more
// wait (FIFO) for a slot, each at most request_timeout_ns (measured on the injected Clock);
// beyond that 503. The timeout covers only the wait for a slot: a running inference (and a
// cold start) is not interrupted.
//
// Shutdown: readyz and new requests answer 503 at once; requests already received (running
// or queued) finish; then the transport stops: answers being written get
// shutdown_grace_ms, every other connection (idle, or a client still sending) is closed.
// So Shutdown returns within the time the received requests take plus that grace,
// whatever clients do.
//
// Thread safety: port(), Shutdown() and Wait() may be called from any thread.
#ifndef STASIS_RUNTIME_SERVER_H_
#define STASIS_RUNTIME_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "runtime/lifecycle.h"
#include "runtime/metrics.h"
#include "stasis/status.h"

namespace stasis::runtime {

struct ServerOptions {
  std::string host = "127.0.0.1";  // loopback unless told otherwise
  int port = 8000;                 // 0: an ephemeral port (see Server::port())
  // Non-empty: "Authorization: Bearer <token>" is required on everything but /healthz.
  std::string token;
  uint64_t max_body_bytes = 256ull << 20;       // also bounds the bytes fetched for url inputs
  int max_concurrency = 1;                      // inferences running at once
  int queue = 64;                               // inferences waiting for a slot
  int64_t request_timeout_ns = 60'000'000'000;  // longest wait for a slot
  // file:// inputs must resolve (realpath) inside this directory; empty: file:// refused.
  std::string file_root;
  // Hosts http:// inputs may be fetched from: "host" (any port) or "host:port", compared with
  // the URL's authority ("[::1]:8080" for IPv6), case-insensitively; "*" allows any host.
  // Empty: http:// refused (403), so that a client cannot make the server fetch from hosts
  // only it can reach. Redirects are not followed.
  std::vector<std::string> http_input_hosts;  // checked by CheckHttpInputHosts
  int64_t fetch_timeout_ns = 30'000'000'000;  // connect/read timeout of http:// inputs
  // Threads that run inferences and admin calls (connections themselves are asynchronous
  // and hold no thread). At least max_concurrency + queue + 2, so that admission (not the
  // pool) queues inferences.
  int threads = 8;
  int io_threads = 2;  // threads of the asynchronous transport
  // The largest answer to an inference, estimated from the outputs' shapes before it is
  // encoded (JSON: at most 24 characters an element); larger ones get 413 output_too_large.
  uint64_t max_output_bytes = 64ull << 20;
  uint32_t max_header_bytes = 16 << 10;  // request line and headers together (431 past it)
  int64_t header_timeout_ms = 10'000;    // the head of a connection's first request
  int64_t body_timeout_ms = 60'000;      // a whole body
  int64_t write_timeout_ms = 60'000;     // a whole answer
  int64_t shutdown_grace_ms = 2'000;     // for answers being written when the server stops
  int max_connections = 1024;            // more are closed at once
  // Idle time (and head) allowed between requests of a keep-alive connection.
  int keep_alive_timeout_s = 5;
  int retry_after_s = 1;  // the Retry-After of 503 answers
  std::string model;      // shown in /v1/status (e.g. ModelHost::Describe())
};

// The HTTP status for a non-OK Status from the lifecycle or the model:
// kInvalidArgument 422, kFailedPrecondition 409, kResourceExhausted 503, kUnavailable 503,
// kNotFound 404, kPermissionDenied 403, kUnauthenticated 401, kDeadlineExceeded 504,
// anything else 500.
int HttpStatusForCode(StatusCode code);

// Constant-time (in the length of `expected`) string comparison, for tokens.
bool ConstantTimeEquals(std::string_view given, std::string_view expected);

// kInvalidArgument unless every entry is "*", HOST, HOST:PORT or [IPv6][:PORT] (host names
// of [A-Za-z0-9.-], ports 1..65535): the form ServerOptions::http_input_hosts takes.
Status CheckHttpInputHosts(const std::vector<std::string>& hosts);

class Server {
 public:
  // Binds and starts serving. `lifecycle`, `metrics` and `clock` must outlive the Server.
  // Errors: kInvalidArgument (bad options, a file_root that does not exist), kUnavailable
  // (the address cannot be bound).
  static StatusOr<std::unique_ptr<Server>> Start(Lifecycle* lifecycle, Metrics* metrics,
                                                 Clock* clock, ServerOptions options);
  ~Server();  // Shutdown()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The bound port (the ephemeral one when options.port was 0).
  int port() const;
  // Drains and stops: readyz and new requests get 503 from now on; waits for requests
  // already received to finish, then stops the listener. Idempotent; concurrent callers
  // all return once it is done.
  void Shutdown();
  // Blocks until the listener has stopped (after Shutdown, from any thread).
  void Wait();
  // True once Shutdown has begun.
  bool draining() const;

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace stasis::runtime

#endif  // STASIS_RUNTIME_SERVER_H_
