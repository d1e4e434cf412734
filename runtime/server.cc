#include "runtime/server.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>
#include <vector>

#include "restore/report_json.h"
#include "runtime/admission.h"
#include "runtime/auth.h"
#include "runtime/http_common.h"
#include "runtime/http_server.h"
#include "runtime/input_fetch.h"
#include "runtime/tensor_codec.h"
#include "stasis/tensor.h"

namespace stasis::runtime {

using json = nlohmann::json;
using internal::Admission;
using internal::Fixed3;
using internal::FromStatus;
using internal::HttpError;
using internal::HttpRequest;
using internal::HttpResponse;
using internal::kJsonType;
using internal::kSafetensorsType;
using internal::Printable;

namespace {

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

bool IsBlockingRoute(const HttpRequest& r) {
  return r.method == "POST" &&
         (r.path == "/v1/infer" || r.path == "/v1/warmup" || r.path == "/v1/unload");
}

bool IsKnownPath(std::string_view path) {
  return path == "/v1/infer" || path == "/v1/warmup" || path == "/v1/unload" ||
         path == "/v1/status" || path == "/healthz" || path == "/readyz" || path == "/metrics";
}

}  // namespace

struct Server::Impl final : internal::HttpHandler {
  Impl(Lifecycle* lifecycle, Metrics* metrics, Clock* clock, ServerOptions options)
      : lifecycle(lifecycle),
        metrics(metrics),
        clock(clock),
        options(std::move(options)),
        admission(this->options.max_concurrency, this->options.queue,
                  this->options.request_timeout_ns, clock) {
    url_inputs.fetch_timeout_ns = this->options.fetch_timeout_ns;
    url_inputs.clock = clock;
  }

  // internal::HttpHandler
  std::optional<HttpResponse> OnHead(const HttpRequest& head) override;
  bool Blocking(const HttpRequest& request) override { return IsBlockingRoute(request); }
  HttpResponse Handle(HttpRequest& request) override;
  HttpResponse ErrorAnswer(const HttpRequest& request, int status, std::string code,
                           std::string message) override;
  void OnDone(const HttpRequest& request, const HttpResponse& response, bool written) override;

  // Request plumbing. Each request's id, start and outcome travel in its annotations.
  static HttpResponse Json(int status, const json& body);
  HttpResponse Error(const HttpRequest& req, const HttpError& e);
  void Annotate(const HttpRequest& req);
  static HttpResponse Stamp(const HttpRequest& req, HttpResponse res) {  // adds X-Request-Id
    res.headers.emplace_back("X-Request-Id", req.annotations.id);
    return res;
  }
  bool Authorized(const HttpRequest& req) const;
  std::string NewRequestId(const HttpRequest& req);
  bool Enter();  // false while draining
  void Leave();
  struct ActiveRequest {  // Leave() however the handler ends
    Impl* impl;
    ~ActiveRequest() { impl->Leave(); }
  };

  // Endpoints.
  HttpResponse Route(HttpRequest& req);
  HttpResponse HandleInfer(HttpRequest& req);
  std::optional<HttpError> RunInfer(HttpRequest& req, HttpResponse* res);
  HttpResponse HandleWarmup(HttpRequest& req);
  HttpResponse HandleUnload(HttpRequest& req);
  HttpResponse HandleStatus();
  HttpResponse HandleReadyz();
  HttpResponse HandleMetrics();

  Lifecycle* const lifecycle;
  Metrics* const metrics;
  Clock* const clock;
  const ServerOptions options;
  // file_root: realpath of options.file_root ("" when unset); http_hosts:
  // options.http_input_hosts, parsed (both set by Start).
  internal::UrlInputPolicy url_inputs;
  Admission admission;
  std::unique_ptr<internal::HttpServer> http;
  std::atomic<uint64_t> next_request{1};

  mutable std::mutex mu;
  std::condition_variable cv;
  bool draining = false;
  int active = 0;               // infer/warmup/unload requests being handled
  bool transport_done = false;  // the transport has stopped

  std::mutex stop_mu;  // serialises the stop of Shutdown
  bool stopped = false;
};

HttpResponse Server::Impl::Json(int status, const json& body) {
  HttpResponse r;
  r.status = status;
  r.content_type = kJsonType;
  r.body = Dump(body);
  return r;
}

HttpResponse Server::Impl::Error(const HttpRequest& req, const HttpError& e) {
  HttpResponse r = Json(e.status, json{{"error", {{"code", e.code}, {"message", e.message}}}});
  if (e.status == 503 || e.status == 429) {
    r.headers.emplace_back("Retry-After", std::to_string(std::max(options.retry_after_s, 0)));
  }
  if (e.status == 401) r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"stasis\"");
  if (e.rejected) req.annotations.rejected = true;
  return r;
}

bool Server::Impl::Authorized(const HttpRequest& req) const {
  return internal::BearerTokenMatches(std::string(req.Header("Authorization")), options.token);
}

std::string Server::Impl::NewRequestId(const HttpRequest& req) {
  const std::string_view given = req.Header("X-Request-Id");
  if (!given.empty() && given.size() <= 64 && std::all_of(given.begin(), given.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
      })) {
    return std::string(given);
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "r%06llx",
                static_cast<unsigned long long>(next_request.fetch_add(1)));
  return buf;
}

void Server::Impl::Annotate(const HttpRequest& req) {
  if (!req.annotations.id.empty()) return;
  req.annotations.id = NewRequestId(req);
  req.annotations.start_ns = clock->NowNanos();
}

std::optional<HttpResponse> Server::Impl::OnHead(const HttpRequest& head) {
  Annotate(head);
  if (!options.token.empty() && head.path != "/healthz" && !Authorized(head)) {
    return Stamp(head, Error(head, {401, "unauthenticated", "missing or invalid bearer token"}));
  }
  if (!IsKnownPath(head.path)) {
    return Stamp(head, Error(head, {404, "not_found",
                                    "no such endpoint: " + Printable(head.method, 16) + " " +
                                        Printable(head.path)}));
  }
  return std::nullopt;
}

HttpResponse Server::Impl::ErrorAnswer(const HttpRequest& request, int status, std::string code,
                                       std::string message) {
  Annotate(request);
  return Stamp(request, Error(request, {status, std::move(code), std::move(message)}));
}

HttpResponse Server::Impl::Handle(HttpRequest& req) {
  Annotate(req);
  try {
    return Stamp(req, Route(req));
  } catch (const std::bad_alloc&) {
    spdlog::error("request {}: out of memory", req.annotations.id);
    return Stamp(req,
                 Error(req, {503, "resource_exhausted", "out of memory handling the request"}));
  } catch (const std::exception& e) {
    // The text stays in the log: it may name internals the client has no use for.
    spdlog::error("request {}: unhandled exception: {}", req.annotations.id, e.what());
    return Stamp(
        req, Error(req, {500, "internal", "internal error (request " + req.annotations.id + ")"}));
  }
}

void Server::Impl::OnDone(const HttpRequest& req, const HttpResponse& res, bool written) {
  const internal::RequestAnnotations& a = req.annotations;
  const int64_t now = clock->NowNanos();
  const double seconds = a.id.empty() ? 0.0 : static_cast<double>(now - a.start_ns) / 1e9;
  if (req.path == "/v1/infer" && req.method == "POST") {
    std::string_view outcome = "ok";
    if (a.rejected) {
      outcome = "rejected";
    } else if (res.status >= 500) {
      outcome = "server_error";
    } else if (res.status >= 400) {
      outcome = "client_error";
    }
    metrics->ObserveRequest(outcome, seconds);
    metrics->Set("stasis_queued", admission.queued());
    metrics->SyncLifecycle(lifecycle->status());
  }
  const bool probe = req.path == "/healthz" || req.path == "/readyz" || req.path == "/metrics";
  spdlog::log(probe ? spdlog::level::debug : spdlog::level::info,
              "request id={} method={} path={} status={} state={} cold={} latency_ms={:.3f} "
              "remote={}{}",
              a.id.empty() ? "-" : a.id, Printable(req.method, 16), Printable(req.path), res.status,
              ModelStateName(lifecycle->state()), a.cold < 0 ? "-" : (a.cold ? "true" : "false"),
              seconds * 1e3, Printable(req.remote, 64), written ? "" : " (not delivered)");
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

HttpResponse Server::Impl::Route(HttpRequest& req) {
  HttpResponse res;
  const bool post = req.method == "POST";
  const bool get = req.method == "GET";
  if (req.path == "/v1/infer" && post) {
    res = HandleInfer(req);
  } else if (req.path == "/v1/warmup" && post) {
    res = HandleWarmup(req);
  } else if (req.path == "/v1/unload" && post) {
    res = HandleUnload(req);
  } else if (req.path == "/v1/status" && get) {
    res = HandleStatus();
  } else if (req.path == "/healthz" && get) {
    res = Json(200, json{{"status", "ok"}});
  } else if (req.path == "/readyz" && get) {
    res = HandleReadyz();
  } else if (req.path == "/metrics" && get) {
    res = HandleMetrics();
  } else {
    const bool known = IsKnownPath(req.path);
    res = Error(req, {known ? 405 : 404, known ? "method_not_allowed" : "not_found",
                      (known ? "method not allowed: " : "no such endpoint: ") +
                          Printable(req.method, 16) + " " + Printable(req.path)});
    if (known) {
      const bool post_only =
          req.path == "/v1/infer" || req.path == "/v1/warmup" || req.path == "/v1/unload";
      res.headers.emplace_back("Allow", post_only ? "POST" : "GET");
    }
  }
  return res;
}

// ----- /v1/infer -----

HttpResponse Server::Impl::HandleInfer(HttpRequest& req) {
  if (!Enter()) {
    return Error(req, {503, "shutting_down", "the server is shutting down", true});
  }
  ActiveRequest active_request{this};
  HttpResponse res;
  if (std::optional<HttpError> err = RunInfer(req, &res)) return Error(req, *err);
  return res;
}

std::optional<HttpError> Server::Impl::RunInfer(HttpRequest& req, HttpResponse* res) {
  if (req.body.size() > options.max_body_bytes) {
    return HttpError{413, "payload_too_large",
                     "request body exceeds " + std::to_string(options.max_body_bytes) + " bytes"};
  }
  const internal::WireFormats formats = internal::NegotiateWireFormats(
      std::string(req.Header("Content-Type")), std::string(req.Header("Accept")));

  std::vector<TensorData> inputs;
  if (formats.safetensors_in) {
    if (auto e = internal::ParseSafetensorsInputs(req.body, &inputs)) return e;
  } else if (auto e = internal::ParseJsonInputs(
                 req.body, options.max_body_bytes,
                 [this](const json& spec, size_t index, uint64_t* budget, TensorData* t) {
                   return internal::FetchUrlInput(url_inputs, spec, index, budget, t);
                 },
                 &inputs)) {
    return e;
  }
  // The body is not needed any more; a large one should not live through the inference.
  std::string().swap(req.body);

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
  req.annotations.cold = cold ? 1 : 0;
  if (!result.ok()) return FromStatus(result.status());

  // Bound the answer before building it: a small request can ask for a huge output.
  const uint64_t estimate = internal::EstimateOutputBytes(*result, !formats.safetensors_out);
  if (estimate > options.max_output_bytes) {
    return HttpError{413, "output_too_large",
                     "the answer would take about " + std::to_string(estimate) +
                         " bytes, over the limit of " + std::to_string(options.max_output_bytes) +
                         " (stasis serve --max-output)"};
  }
  const double latency_ms = static_cast<double>(clock->NowNanos() - req.annotations.start_ns) / 1e6;
  if (formats.safetensors_out) {
    auto body = internal::EncodeSafetensors(
        *result, {{"cold", cold ? "true" : "false"}, {"latency_ms", Fixed3(latency_ms)}});
    if (!body.ok()) {
      return HttpError{500, "internal",
                       "cannot encode the outputs: " + std::string(body.status().message())};
    }
    res->status = 200;
    res->content_type = kSafetensorsType;
    res->body = std::move(body).value();
  } else {
    json outputs;
    if (auto e = internal::OutputsToJson(*result, &outputs)) return e;
    *res = Json(200, json{{"outputs", std::move(outputs)},
                          {"cold", cold},
                          {"latency_ms", latency_ms},
                          {"request_id", req.annotations.id}});
  }
  res->headers.emplace_back("X-Stasis-Cold", cold ? "true" : "false");
  res->headers.emplace_back("X-Stasis-Latency-Ms", Fixed3(latency_ms));
  return std::nullopt;
}

// ----- admin and observability -----

HttpResponse Server::Impl::HandleWarmup(HttpRequest& req) {
  if (!Enter()) return Error(req, {503, "shutting_down", "the server is shutting down", true});
  ActiveRequest active_request{this};
  const bool was_warm = lifecycle->state() == ModelState::kWarm;
  const int64_t start = clock->NowNanos();
  Status s = lifecycle->Warmup();
  metrics->SyncLifecycle(lifecycle->status());
  if (!s.ok()) return Error(req, FromStatus(s));
  req.annotations.cold = was_warm ? 0 : 1;
  return Json(200, json{{"state", ModelStateName(lifecycle->state())},
                        {"cold", !was_warm},
                        {"latency_ms", static_cast<double>(clock->NowNanos() - start) / 1e6}});
}

HttpResponse Server::Impl::HandleUnload(HttpRequest& req) {
  if (!Enter()) return Error(req, {503, "shutting_down", "the server is shutting down", true});
  ActiveRequest active_request{this};
  const bool was_warm = lifecycle->state() == ModelState::kWarm;
  Status s = lifecycle->UnloadNow();
  metrics->SyncLifecycle(lifecycle->status());
  if (!s.ok()) return Error(req, FromStatus(s));
  return Json(200, json{{"state", ModelStateName(lifecycle->state())}, {"unloaded", was_warm}});
}

HttpResponse Server::Impl::HandleStatus() {
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
  return Json(200, j);
}

HttpResponse Server::Impl::HandleReadyz() {
  bool is_draining;
  {
    std::lock_guard l(mu);
    is_draining = draining;
  }
  const ModelState state = lifecycle->state();
  const HttpRequest none;
  if (is_draining) {
    return Error(none, {503, "shutting_down", "the server is shutting down", true});
  } else if (state == ModelState::kFailed) {
    const LifecycleStatus st = lifecycle->status();
    std::string message = "the last restore failed: " + st.last_error;
    if (st.retry_in_seconds >= 0) {
      char retry[64];
      std::snprintf(retry, sizeof retry, " (retrying by itself in %.1f s)", st.retry_in_seconds);
      message += retry;
    }
    return Error(none, {503, "failed", message, false});
  }
  return Json(200, json{{"ready", true}, {"state", ModelStateName(state)}});
}

HttpResponse Server::Impl::HandleMetrics() {
  metrics->Set("stasis_queued", admission.queued());
  metrics->SyncLifecycle(lifecycle->status());
  HttpResponse res;
  res.content_type = "text/plain; version=0.0.4; charset=utf-8";
  res.body = metrics->Render();
  return res;
}

// ----- Server -----

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() { Shutdown(); }

StatusOr<std::unique_ptr<Server>> Server::Start(Lifecycle* lifecycle, Metrics* metrics,
                                                Clock* clock, ServerOptions options) {
  if (lifecycle == nullptr || metrics == nullptr || clock == nullptr) {
    return InvalidArgumentError("server: lifecycle, metrics and clock are required");
  }
  if (options.max_concurrency < 1) {
    return InvalidArgumentError("server: max_concurrency must be at least 1");
  }
  if (options.queue < 0) return InvalidArgumentError("server: queue must be >= 0");
  auto http_hosts = internal::ParseHttpHostList(options.http_input_hosts);
  if (!http_hosts.ok()) return http_hosts.status().WithContext("server");
  if (options.port < 0 || options.port > 65535) {
    return InvalidArgumentError("server: port out of range: " + std::to_string(options.port));
  }
  if (options.max_body_bytes == 0) {
    return InvalidArgumentError("server: max_body_bytes must be positive");
  }
  auto impl = std::make_unique<Impl>(lifecycle, metrics, clock, std::move(options));
  impl->url_inputs.http_hosts = std::move(http_hosts).value();
  const ServerOptions& o = impl->options;
  if (!o.file_root.empty()) {
    char* resolved = ::realpath(o.file_root.c_str(), nullptr);
    if (resolved == nullptr) {
      return ErrnoToStatus(errno, "server: file root " + o.file_root)
          .WithContext("invalid file root");
    }
    impl->url_inputs.file_root = resolved;
    std::free(resolved);
    struct stat st;
    if (::stat(impl->url_inputs.file_root.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return InvalidArgumentError("server: file root is not a directory: " + o.file_root);
    }
  }
  internal::HttpServerOptions h;
  h.host = o.host;
  h.port = o.port;
  h.max_body_bytes = o.max_body_bytes;
  h.max_header_bytes = o.max_header_bytes;
  h.header_timeout_ms = o.header_timeout_ms;
  h.keep_alive_timeout_ms = std::max(o.keep_alive_timeout_s, 0) * int64_t{1000};
  h.body_timeout_ms = o.body_timeout_ms;
  h.write_timeout_ms = o.write_timeout_ms;
  h.shutdown_grace_ms = o.shutdown_grace_ms;
  h.max_connections = o.max_connections;
  h.io_threads = std::max(o.io_threads, 1);
  h.workers = std::max({o.threads, o.max_concurrency + o.queue + 2, 2});
  h.max_pending = h.workers;
  auto http = internal::HttpServer::Start(impl.get(), std::move(h));
  if (!http.ok()) return http.status().WithContext("server");
  impl->http = std::move(http).value();
  metrics->SyncLifecycle(lifecycle->status());
  spdlog::debug("listening on http://{}:{} (max_concurrency={}, queue={}{})", o.host,
                impl->http->port(), o.max_concurrency, o.queue,
                o.token.empty() ? "" : ", token required");
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

int Server::port() const { return impl_->http->port(); }

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
  m.http->Stop();
  {
    std::lock_guard l(m.mu);
    m.transport_done = true;
  }
  m.cv.notify_all();
  m.stopped = true;
  spdlog::info("server stopped");
}

void Server::Wait() {
  Impl& m = *impl_;
  std::unique_lock l(m.mu);
  m.cv.wait(l, [&] { return m.transport_done; });
}

}  // namespace stasis::runtime
