// File: runtime/server.h
//
// The HTTP front of `stasis serve` (cpp-httplib; JSON through nlohmann). It turns requests
// into Lifecycle calls and reports what happened; docs/runtime.md describes the API.
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
// JSON, unknown dtype, shape/data mismatch, bad URL), 401 missing/wrong token, 403 a file://
// input outside file_root (or file inputs disabled) or an http:// input from a host not in
// http_input_hosts, 404 unknown path or input file, 413
// body over max_body_bytes, 502 an http:// input that could not be fetched, 503 (with
// Retry-After) queue full, queue timeout or shutting down; errors of the lifecycle map by
// code (HttpStatusForCode).
//
// Admission: at most max_concurrency requests run inside the model; up to `queue` more
// wait (FIFO) for a slot, each at most request_timeout_ns (measured on the injected Clock);
// beyond that 503. The timeout covers only the wait for a slot: a running inference (and a
// cold start) is not interrupted.
//
// Shutdown: readyz and new requests answer 503 at once; requests already received (running
// or queued) finish; then the listener stops (after at most keep_alive_timeout_s more when
// clients hold idle keep-alive connections).
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
  // Worker threads of the HTTP server. The pool gets at least max_concurrency + queue + 2
  // threads, so that admission (not the pool) queues inferences and probes still answer.
  int threads = 8;
  // How long an idle keep-alive connection is kept. cpp-httplib 0.11 notices a stop only
  // between requests, so Shutdown can wait this long for idle keep-alive connections.
  int keep_alive_timeout_s = 2;
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
