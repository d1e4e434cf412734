// `stasis serve`: the inference runtime in a process (runtime/ does the work; this wires
// flags, the model, signals and the exit path).
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "common/clock.h"
#include "common/logging.h"
#include "runtime/lifecycle.h"
#include "runtime/metrics.h"
#include "runtime/model_host.h"
#include "runtime/server.h"
#include "stasis/remote.h"
#include "tools/stasis/cli_common.h"
#include "tools/stasis/commands.h"
#include "tools/stasis/remote_flags.h"
#include "tools/stasis/restore_options.h"
#include "tools/stasis/torch_model_host.h"

namespace stasis::cli {

bool ParseDuration(const std::string& text, int64_t* ns) {
  if (text == "never") {
    *ns = -1;
    return true;
  }
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (...) {
    return false;
  }
  const std::string unit = text.substr(used);
  double scale = 1e9;
  if (unit.empty() || unit == "s") {
    scale = 1e9;
  } else if (unit == "ms") {
    scale = 1e6;
  } else if (unit == "m") {
    scale = 60e9;
  } else if (unit == "h") {
    scale = 3600e9;
  } else {
    return false;
  }
  if (!(v >= 0) || !std::isfinite(v) || v * scale > 9e18) return false;
  *ns = static_cast<int64_t>(v * scale);
  return true;
}

namespace {

StatusOr<std::string> ReadToken(const std::string& path) {
  std::ifstream f(path);
  if (!f) return NotFoundError("--token-file " + path + ": cannot be read");
  std::stringstream ss;
  ss << f.rdbuf();
  std::string token = ss.str();
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' '))
    token.pop_back();
  if (token.empty()) return InvalidArgumentError("--token-file " + path + " is empty");
  return token;
}

}  // namespace

int RunServe(const ServeArgs& a) {
  InitLogging(a.log_format == "json" ? LogFormat::kJson : LogFormat::kText,
              a.verbose ? "debug" : "info");
  runtime::LifecycleOptions lo;
  if (!ParseDuration(a.idle_timeout, &lo.idle_timeout_ns))
    return ReportError(InvalidArgumentError("--idle-timeout: '" + a.idle_timeout +
                                            "' is not a duration (30s, 500ms, 2m, never)"));
  lo.on_idle = a.on_idle == "exit" ? runtime::OnIdle::kExit : runtime::OnIdle::kUnload;
  if (!ParseDuration(a.retry_backoff, &lo.retry_backoff_ns) || lo.retry_backoff_ns == 0)
    return ReportError(InvalidArgumentError("--retry-backoff: '" + a.retry_backoff +
                                            "' is not a positive duration (1s, 500ms) or never"));
  runtime::ServerOptions so;
  so.host = a.host;
  so.port = a.port;
  so.max_concurrency = a.max_concurrency;
  so.queue = a.queue;
  so.file_root = a.file_root;
  if (Status s = runtime::CheckHttpInputHosts(a.http_inputs); !s.ok())
    return ReportError(s.WithContext("--http-inputs"));
  so.http_input_hosts = a.http_inputs;
  if (a.threads > 0) so.threads = a.threads;
  if (!ParseDuration(a.request_timeout, &so.request_timeout_ns) || so.request_timeout_ns <= 0)
    return ReportError(InvalidArgumentError("--request-timeout: '" + a.request_timeout +
                                            "' is not a positive duration"));
  auto max_body = ParseSize(a.max_body);
  if (!max_body.ok()) return ReportError(max_body.status());
  so.max_body_bytes = *max_body;
  auto max_output = ParseSize(a.max_output);
  if (!max_output.ok()) return ReportError(max_output.status().WithContext("--max-output"));
  so.max_output_bytes = *max_output;
  if (!a.token_file.empty()) {
    auto token = ReadToken(a.token_file);
    if (!token.ok()) return ReportError(token.status());
    so.token = *token;
  }
  if (a.max_concurrency < 1 || a.queue < 0)
    return ReportError(InvalidArgumentError("--max-concurrency must be >= 1 and --queue >= 0"));

  RestoreOptions ro;
  auto device = ParseDeviceSpec(a.device);
  if (!device.ok()) return ReportError(device.status());
  ro.device = *device;
  // A device this build cannot restore onto fails now, not at the first request.
  if (Status s = CheckBackendBuilt(ro.device); !s.ok()) return ReportError(s);
  ro.remote = ToRemoteOptions(a.remote);
  auto cache = ToCacheOptions(a.cache_dir, a.cache_max);
  if (!cache.ok()) return ReportError(cache.status());
  ro.cache = *cache;  // kept across idle unloads and process exits: the next restore is local
  std::unique_ptr<runtime::ModelHost> host = NewTorchModelHost(a.image, ro, a.yield_io);
  // The image must at least be there before the server says it is ready.
  if (IsRemoteLocation(a.image)) {
    if (auto opened = OpenImageReader(a.image, ro.remote); !opened.ok())
      return ReportError(opened.status());
  } else if (!DefaultFileSystem()->Exists(a.image)) {
    return ReportError(NotFoundError(a.image + ": no such image"));
  }

  // Signals go to the main thread only: block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);   // a closed terminal: drain like SIGTERM rather than die
  sigaddset(&signals, SIGUSR1);  // sent to ourselves when the idle timeout says exit
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  runtime::Metrics metrics;
  // Every transition is logged; a finished cold start also logs its restore report. The
  // listener runs with no lifecycle lock held, so it may read the status.
  runtime::Lifecycle* lifecycle_ptr = nullptr;
  runtime::TransitionListener update_metrics = runtime::NewStateListener(&metrics);
  auto log_transition = [&](runtime::ModelState from, runtime::ModelState to) {
    update_metrics(from, to);
    spdlog::info("state {} -> {}", runtime::ModelStateName(from), runtime::ModelStateName(to));
    if (from == runtime::ModelState::kRestoring && lifecycle_ptr != nullptr) {
      const runtime::LifecycleStatus st = lifecycle_ptr->status();
      if (to == runtime::ModelState::kWarm && st.has_last_restore) {
        const RestoreReport& r = st.last_restore;
        spdlog::info(
            "cold start #{}: {} bytes in {:.3f} s ({:.2f} GB/s; open {:.3f} map {:.3f} pipeline "
            "{:.3f}; {} of {} chunks mapped; {} of {} regions at their address)",
            st.cold_starts, r.raw_bytes, r.phases.total, r.raw_gb_per_s(), r.phases.open,
            r.phases.map, r.phases.pipeline_wall, r.chunks_mapped, r.chunks, r.regions_at_hint,
            r.regions);
      } else if (to == runtime::ModelState::kFailed) {
        spdlog::error("cold start failed: {}", st.last_error);
      }
    }
  };
  runtime::Lifecycle lifecycle(
      host.get(), RealClock(), lo,
      [] {
        spdlog::info("idle timeout passed with --on-idle exit: shutting down");
        ::kill(::getpid(), SIGUSR1);
      },
      log_transition);
  lifecycle_ptr = &lifecycle;
  so.model = host->Describe();
  // --warmup restores before the listener opens, so /readyz never says ready for a model
  // that is still being restored.
  if (a.warmup) {
    Status s = lifecycle.Warmup();
    if (!s.ok()) spdlog::error("warmup failed (the first request retries): {}", s.ToString());
  }
  // A SIGTERM that came during the warmup waits, blocked, for sigwait: answer it before
  // the listener opens rather than accept requests only to drain them.
  sigset_t pending;
  if (sigpending(&pending) == 0 &&
      (sigismember(&pending, SIGTERM) == 1 || sigismember(&pending, SIGINT) == 1 ||
       sigismember(&pending, SIGHUP) == 1)) {
    spdlog::info("stopped by a signal before serving");
    Status s = lifecycle.UnloadNow();
    if (!s.ok()) spdlog::warn("releasing the device failed: {}", s.ToString());
    return kExitOk;
  }
  auto server = runtime::Server::Start(&lifecycle, &metrics, RealClock(), so);
  if (!server.ok()) return ReportError(server.status());
  spdlog::info("serving {} on http://{}:{} (idle timeout {}, on idle {})", host->Describe(), a.host,
               (*server)->port(), a.idle_timeout, a.on_idle);
  lifecycle.StartTimer();

  int sig = 0;
  while (sigwait(&signals, &sig) != 0) {
  }
  spdlog::info("{}: draining in-flight requests", sig == SIGUSR1 ? "idle exit" : strsignal(sig));
  // Draining first: the timer thread may be inside a long retry restore, and requests must
  // be refused while StopTimer waits for it.
  (*server)->Shutdown();
  lifecycle.StopTimer();
  Status s = lifecycle.UnloadNow();
  if (!s.ok()) spdlog::warn("releasing the device failed: {}", s.ToString());
  spdlog::info("stopped");
  return kExitOk;
}

}  // namespace stasis::cli
