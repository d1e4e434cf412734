#include "runtime/server.h"

#include <httplib.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "restore/report_json.h"
#include "runtime/admission.h"
#include "runtime/auth.h"
#include "runtime/http_common.h"
#include "runtime/input_fetch.h"
#include "runtime/tensor_codec.h"
#include "stasis/tensor.h"

namespace stasis::runtime {

using json = nlohmann::json;
using internal::Admission;
using internal::Fixed3;
using internal::FromStatus;
using internal::HttpError;
using internal::kJsonType;
using internal::kSafetensorsType;
using internal::Printable;

namespace {

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

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

}  // namespace

struct Server::Impl {
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

  Lifecycle* const lifecycle;
  Metrics* const metrics;
  Clock* const clock;
  const ServerOptions options;
  // file_root: realpath of options.file_root ("" when unset); http_hosts:
  // options.http_input_hosts, parsed (both set by Start).
  internal::UrlInputPolicy url_inputs;
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
  return internal::BearerTokenMatches(req.get_header_value("Authorization"), options.token);
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
  const internal::WireFormats formats = internal::NegotiateWireFormats(
      req.get_header_value("Content-Type"), req.get_header_value("Accept"));

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
  if (formats.safetensors_out) {
    auto body = internal::EncodeSafetensors(
        *result, {{"cold", cold ? "true" : "false"}, {"latency_ms", Fixed3(latency_ms)}});
    if (!body.ok()) {
      return HttpError{500, "internal",
                       "cannot encode the outputs: " + std::string(body.status().message())};
    }
    res.status = 200;
    res.set_content(std::move(body).value(), kSafetensorsType);
    return std::nullopt;
  }
  json outputs;
  if (auto e = internal::OutputsToJson(*result, &outputs)) return e;
  SendJson(res, 200,
           json{{"outputs", std::move(outputs)},
                {"cold", cold},
                {"latency_ms", latency_ms},
                {"request_id", tls_request.id}});
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
