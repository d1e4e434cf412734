// Load benchmark of `stasis serve` (docs/runtime.md), loopback only, bounded in count and
// time: for --seconds it alternates bursts of back-to-back requests from --clients threads
// with quiet phases longer than the idle timeout, so that the server unloads the model
// between bursts and every burst begins with a cold start (restore). It checks that
//  - every request answers 200 with an F32 output of shape [1, T, vocab] (failures: transport
//    errors, other statuses, malformed or wrongly shaped outputs),
//  - one fixed probe input, sent alone at the start of every burst (the cold request) and
//    again at its end (warm), gives bitwise the same output in every cycle,
//  - the server's own counters (/v1/status) agree: cold starts, no failed restores,
//  - SIGTERM ends the server with exit status 0 within 20 s,
// and reports p50/p99/max latency of warm requests and of cold starts (client side: request
// sent to response parsed), the cold-start count and requests/s during bursts. Exit status
// 1 when anything failed or fewer than 3 unload/restore cycles happened.
//
// With --slow-clients N, every second cycle runs with N slow clients alongside (bench/
// slow_clients.h: connections that trickle a request head that never ends), so both kinds
// of cycle share one run: it reports the warm p99 of each and their ratio (the target is
// <= 2, issue 16), and /healthz latency, polled during every burst (the target is < 2 s
// under slow clients). Either target missed is a failure.
//
// The model is a seeded GPT-2-shaped TorchScript module from stasis-genmodel (--preset),
// generated once into --dir and snapshotted (raw codec) on every run.
#include <fcntl.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/slow_clients.h"

namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::ordered_json;

const std::string kStasis = STASIS_BIN;
const std::string kGen = STASIS_GENMODEL_BIN;
constexpr int kMaxConcurrency = 2;
constexpr int kQueue = 64;

pid_t g_server = -1;  // killed by Die()

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "serve_load_bench: %s\n", what.c_str());
  if (g_server > 0) {
    ::kill(g_server, SIGKILL);
    ::waitpid(g_server, nullptr, 0);
  }
  std::exit(1);
}

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string Tail(const std::string& text, size_t lines) {
  size_t at = text.size();
  for (size_t n = 0; n <= lines && at > 0; ++n) {
    at = text.rfind('\n', at - 1);
    if (at == std::string::npos) return text;
  }
  return text.substr(at + 1);
}

// fork + execv with stdout and stderr redirected to files ("" keeps them).
pid_t Spawn(const std::vector<std::string>& args, const std::string& out, const std::string& err) {
  // Everything is opened and built before fork: the files are truncated before the caller
  // can read them (a port read from the last run's log would be a dead server's), and the
  // child makes no allocation between fork and exec.
  auto open_out = [](const std::string& path) {
    return path.empty() ? -1 : ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  };
  const int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const int out_fd = open_out(out), err_fd = open_out(err);
  std::vector<std::string> copy = args;
  std::vector<char*> argv;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) Die(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    if (devnull >= 0) ::dup2(devnull, STDIN_FILENO);
    if (out_fd >= 0) ::dup2(out_fd, STDOUT_FILENO);
    if (err_fd >= 0) ::dup2(err_fd, STDERR_FILENO);
    ::execv(argv[0], argv.data());
    _exit(127);
  }
  for (int fd : {devnull, out_fd, err_fd})
    if (fd >= 0) ::close(fd);
  return pid;
}

// The exit code of `pid`, or -2 when it has not exited within `seconds` (it keeps running).
int WaitExit(pid_t pid, double seconds) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
  for (;;) {
    int status = 0;
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (r < 0) return -1;
    if (Clock::now() >= deadline) return -2;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Runs a command to completion (killed after `seconds`); its stdout/stderr go to `log`.
void RunOrDie(const std::vector<std::string>& args, const std::string& log, double seconds,
              const std::string& out = "") {
  pid_t pid = Spawn(args, out.empty() ? log : out, log);
  int rc = WaitExit(pid, seconds);
  if (rc == -2) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    Die(args[0] + " " + args[1] + ": still running after " + std::to_string(seconds) + " s");
  }
  if (rc != 0)
    Die(args[0] + " " + args[1] + " exited " + std::to_string(rc) + ":\n" +
        Tail(ReadFile(log), 20));
}

// "500ms", "1s", "1.5", "2m" → seconds; < 0 when it is not one of those.
double ParseSeconds(const std::string& text) {
  size_t used = 0;
  double v = -1;
  try {
    v = std::stod(text, &used);
  } catch (...) {
    return -1;
  }
  const std::string unit = text.substr(used);
  if (unit == "ms") return v / 1e3;
  if (unit.empty() || unit == "s") return v;
  if (unit == "m") return v * 60;
  return -1;
}

// Nearest-rank percentile; 0 for no samples.
double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  return v[std::min(v.size(), std::max<size_t>(rank, 1)) - 1];
}

Json Summary(const std::vector<double>& ms) {
  return Json{{"count", ms.size()},
              {"p50", Percentile(ms, 50)},
              {"p99", Percentile(ms, 99)},
              {"max", ms.empty() ? 0.0 : *std::max_element(ms.begin(), ms.end())}};
}

struct Spec {
  int64_t tokens = 0;  // T of [1, T]
  int64_t vocab = 0;   // tokens are < vocab
};

// "i64:1xT:vocab" (stasis-genmodel --print-input-spec).
Spec ParseSpec(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  Spec s;
  long long t = 0, v = 0;
  char tail = 0;
  if (std::sscanf(text.c_str(), "i64:1x%lld:%lld%c", &t, &v, &tail) != 2 || t <= 0 || v <= 0)
    Die("unexpected input spec '" + text + "' (want i64:1xT:vocab)");
  s.tokens = t;
  s.vocab = v;
  return s;
}

struct Failures {
  std::mutex mu;
  uint64_t transport = 0, http = 0, bad_output = 0, determinism = 0, other = 0;
  std::vector<std::string> examples;  // the first few, for the report

  void Add(uint64_t Failures::*kind, const std::string& what) {
    std::lock_guard l(mu);
    ++(this->*kind);
    if (examples.size() < 8) examples.push_back(what);
  }
  uint64_t total() {
    std::lock_guard l(mu);
    return transport + http + bad_output + determinism + other;
  }
};

struct Sample {
  double ms = 0;         // client side
  double server_ms = 0;  // the response's latency_ms
  bool cold = false;
};

struct Outcome {
  bool ok = false;
  Sample sample;
  std::vector<float> data;  // the output, when asked for
};

class Bench {
 public:
  Bench(int port, Spec spec, Clock::time_point deadline)
      : port_(port), spec_(spec), deadline_(deadline) {}

  double Remaining() const {
    return std::chrono::duration<double>(deadline_ - Clock::now()).count();
  }
  bool Expired() const { return Clock::now() >= deadline_; }

  std::unique_ptr<httplib::Client> NewClient(bool keep_alive) const {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", port_);
    c->set_connection_timeout(5, 0);
    c->set_write_timeout(10, 0);
    c->set_read_timeout(10, 0);
    c->set_keep_alive(keep_alive);
    return c;
  }

  std::string Body(const std::vector<int64_t>& tokens) const {
    Json body = {{"inputs",
                  {{{"name", "input_ids"},
                    {"dtype", "I64"},
                    {"shape", {1, spec_.tokens}},
                    {"data", tokens}}}}};
    return body.dump();
  }

  std::vector<int64_t> RandomTokens(std::mt19937_64& rng) const {
    std::vector<int64_t> t(static_cast<size_t>(spec_.tokens));
    for (auto& x : t) x = static_cast<int64_t>(rng() % static_cast<uint64_t>(spec_.vocab));
    return t;
  }

  // One POST /v1/infer, checked; failures are counted in `failures_`.
  Outcome Infer(httplib::Client& client, const std::string& body, bool keep_data) {
    Outcome o;
    const double remaining = Remaining();
    if (remaining <= 0) {
      failures_.Add(&Failures::other, "deadline passed before a request could be sent");
      return o;
    }
    client.set_read_timeout(static_cast<time_t>(std::clamp(remaining, 1.0, 300.0)), 0);
    const auto start = Clock::now();
    auto res = client.Post("/v1/infer", body, "application/json");
    o.sample.ms = Since(start) * 1e3;
    if (!res) {
      failures_.Add(&Failures::transport, "transport: " + httplib::to_string(res.error()));
      return o;
    }
    if (res->status != 200) {
      failures_.Add(&Failures::http,
                    "HTTP " + std::to_string(res->status) + ": " + res->body.substr(0, 300));
      return o;
    }
    Json j = Json::parse(res->body, nullptr, false);
    const std::vector<int64_t> want_shape = {1, spec_.tokens, spec_.vocab};
    const size_t want_elems = static_cast<size_t>(spec_.tokens * spec_.vocab);
    std::string bad;
    if (!j.is_object() || !j.contains("outputs") || !j["outputs"].is_array() ||
        j["outputs"].size() != 1 || !j.contains("cold") || !j["cold"].is_boolean()) {
      bad = "malformed response: " + res->body.substr(0, 200);
    } else {
      const Json& out = j["outputs"][0];
      if (out.value("dtype", "") != "F32") {
        bad = "output dtype " + out.value("dtype", "?");
      } else if (!out.contains("shape") || out["shape"] != Json(want_shape)) {
        bad = "output shape " + (out.contains("shape") ? out["shape"].dump() : "missing") +
              ", want " + Json(want_shape).dump();
      } else if (!out.contains("data") || !out["data"].is_array() ||
                 out["data"].size() != want_elems) {
        bad = "output data of " +
              std::to_string(out.contains("data") ? out["data"].size() : size_t{0}) +
              " elements, want " + std::to_string(want_elems);
      }
    }
    if (!bad.empty()) {
      failures_.Add(&Failures::bad_output, bad);
      return o;
    }
    o.sample.cold = j["cold"].get<bool>();
    o.sample.server_ms = j.value("latency_ms", 0.0);
    if (keep_data) o.data = j["outputs"][0]["data"].get<std::vector<float>>();
    o.ok = true;
    return o;
  }

  // GET /healthz on a fresh connection: its latency in ms, or -1 when it failed.
  double HealthzMs() const {
    auto c = NewClient(false);
    c->set_read_timeout(10, 0);
    const auto start = Clock::now();
    auto res = c->Get("/healthz");
    if (!res || res->status != 200) return -1;
    return Since(start) * 1e3;
  }

  // GET /v1/status, or a discarded Json when it failed.
  Json Status() const {
    auto c = NewClient(false);
    c->set_read_timeout(5, 0);
    auto res = c->Get("/v1/status");
    if (!res || res->status != 200) return Json::value_t::discarded;
    return Json::parse(res->body, nullptr, false);
  }

  // Polls /v1/status until state == "cold"; false after `seconds` (or the deadline).
  bool WaitCold(double seconds) const {
    const auto until =
        std::min(deadline_, Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                               std::chrono::duration<double>(seconds)));
    while (Clock::now() < until) {
      Json st = Status();
      if (st.is_object() && st.value("state", "") == "cold") return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    return false;
  }

  Failures& failures() { return failures_; }
  const Spec& spec() const { return spec_; }

 private:
  const int port_;
  const Spec spec_;
  const Clock::time_point deadline_;
  Failures failures_;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"stasis serve load benchmark: bursts and idle unloads, loopback only"};
  double seconds = 60;
  std::string preset = "tiny";
  std::string idle_timeout = "1s";
  int clients = 4;
  double burst = 3;
  uint64_t seed = 1;
  std::string dir = "/var/tmp/stasis-serve-bench";
  std::string json_path;
  int slow_clients = 0;
  app.add_option("--seconds", seconds, "how long to keep starting bursts (default 60)")
      ->check(CLI::Range(1.0, 3600.0));
  app.add_option("--preset", preset, "model size (default tiny)")
      ->check(CLI::IsMember({"tiny", "125m"}));
  app.add_option("--idle-timeout", idle_timeout, "the server's idle timeout (default 1s)");
  app.add_option("--clients", clients, "concurrent clients in a burst (default 4)")
      ->check(CLI::Range(1, 64));
  app.add_option("--burst", burst,
                 "mean burst length in seconds; each is drawn from [2/3, 4/3] of it (default 3)")
      ->check(CLI::Range(0.1, 600.0));
  app.add_option("--seed", seed, "seed of the inputs and burst lengths (default 1)");
  app.add_option("--dir", dir, "work directory: model, image, server log");
  app.add_option("--json", json_path, "also write the results as JSON here");
  app.add_option("--slow-clients", slow_clients,
                 "slow clients alongside every second cycle (default 0: none)")
      ->check(CLI::Range(0, 900));
  CLI11_PARSE(app, argc, argv);
  const double idle_s = ParseSeconds(idle_timeout);
  if (idle_s <= 0) Die("--idle-timeout: '" + idle_timeout + "' is not a positive duration");
  ::signal(SIGPIPE, SIG_IGN);

  // The model (generated once per preset) and its image (made on every run).
  const std::string work = dir + "/" + preset;
  std::error_code ec;
  std::filesystem::create_directories(work, ec);
  if (ec) Die("cannot create " + work + ": " + ec.message());
  const std::string model = work + "/model.pt", image = work + "/model.stasis";
  const std::string tool_log = work + "/tools.log", serve_log = work + "/serve.log";
  RunOrDie({kGen, "--format", "torchscript", "--preset", preset, "--print-input-spec"}, tool_log,
           120, work + "/input-spec.txt");
  const Spec spec = ParseSpec(ReadFile(work + "/input-spec.txt"));
  if (!std::filesystem::exists(model)) {
    std::printf("generating %s (stasis-genmodel --preset %s)\n", model.c_str(), preset.c_str());
    std::fflush(stdout);
    const std::string tmp = work + "/model.tmp.pt";
    RunOrDie({kGen, "--format", "torchscript", "--preset", preset, "-o", tmp}, tool_log, 1800);
    std::filesystem::rename(tmp, model, ec);
    if (ec) Die("rename " + tmp + ": " + ec.message());
  }
  RunOrDie({kStasis, "snapshot", model, "-o", image, "--codec", "raw", "--force"}, tool_log, 1800);

  std::printf(
      "serve load: preset %s (input i64 [1,%lld] < %lld), %.0f s, idle timeout %s, %d clients, "
      "--max-concurrency %d --queue %d, seed %llu, %d slow clients every second cycle\n",
      preset.c_str(), static_cast<long long>(spec.tokens), static_cast<long long>(spec.vocab),
      seconds, idle_timeout.c_str(), clients, kMaxConcurrency, kQueue,
      static_cast<unsigned long long>(seed), slow_clients);
  std::fflush(stdout);

  // The server: its stderr announces the port.
  const auto t0 = Clock::now();
  const auto deadline =
      t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds + 60));
  g_server = Spawn({kStasis, "serve", image, "--host", "127.0.0.1", "--port", "0", "--idle-timeout",
                    idle_timeout, "--max-concurrency", std::to_string(kMaxConcurrency), "--queue",
                    std::to_string(kQueue)},
                   "/dev/null", serve_log);
  int port = 0;
  while (port == 0 && Since(t0) < 30) {
    const std::string text = ReadFile(serve_log);
    const std::string marker = "on http://127.0.0.1:";
    size_t at = text.find(marker);
    if (at != std::string::npos) port = std::atoi(text.c_str() + at + marker.size());
    int status = 0;
    if (port == 0 && ::waitpid(g_server, &status, WNOHANG) == g_server) {
      g_server = -1;
      Die("stasis serve exited at start:\n" + Tail(text, 20));
    }
    if (port == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (port == 0)
    Die("stasis serve announced no port within 30 s:\n" + Tail(ReadFile(serve_log), 20));

  Bench bench(port, spec, deadline);
  Failures& failures = bench.failures();
  std::vector<int64_t> probe_tokens;
  {
    std::mt19937_64 rng(seed ^ 0x70726f6265ull);  // "probe"
    probe_tokens = bench.RandomTokens(rng);
  }
  const std::string probe_body = bench.Body(probe_tokens);
  std::vector<float> reference;  // the probe's output in the first cycle

  std::mt19937_64 burst_rng(seed);
  std::uniform_real_distribution<double> burst_len(burst * 2 / 3, burst * 4 / 3);
  std::vector<Sample> warm, cold;
  std::vector<double> warm_probe_ms;  // the warm probe, sent alone: comparable with cold
  uint64_t requests = 0, ok_requests = 0, burst_requests = 0, cycles = 0, bursts = 0;
  uint64_t unexpected_cold = 0;
  double burst_seconds = 0;
  std::vector<double> idle_to_cold;
  // With --slow-clients: warm latencies and /healthz latencies of the cycles with and
  // without them.
  std::vector<double> warm_ms_by[2], healthz_ms_by[2];
  uint64_t healthz_failed = 0, slow_reconnects = 0, slow_connect_failures = 0;
  int slow_open_min = slow_clients;
  bool stop = false;

  auto compare_probe = [&](const Outcome& o, const char* which, uint64_t cycle) {
    if (!o.ok) return;
    if (reference.empty()) {
      reference = o.data;
      return;
    }
    if (o.data.size() != reference.size() ||
        std::memcmp(o.data.data(), reference.data(), reference.size() * sizeof(float)) != 0) {
      failures.Add(&Failures::determinism, std::string("cycle ") + std::to_string(cycle) + ": " +
                                               which + " probe output differs from cycle 1's");
    }
  };

  if (!bench.WaitCold(30)) {
    failures.Add(&Failures::other, "the server was not cold at start");
    stop = true;
  }
  while (!stop && Since(t0) < seconds && !bench.Expired()) {
    ++bursts;
    // Every second cycle with the slow clients, from before its cold request to the end of
    // its burst.
    const bool slow = slow_clients > 0 && bursts % 2 == 0;
    std::optional<stasis::bench::SlowClients> trickle;
    if (slow) trickle.emplace(port, slow_clients, std::chrono::milliseconds(500));
    // The cold request: the probe, alone.
    auto probe_client = bench.NewClient(false);
    Outcome first = bench.Infer(*probe_client, probe_body, /*keep_data=*/true);
    ++requests;
    if (first.ok) {
      ++ok_requests;
      (first.sample.cold ? cold : warm).push_back(first.sample);
      if (first.sample.cold) ++cycles;
      compare_probe(first, "cold", bursts);
    }

    // The burst: `clients` threads back to back until its end.
    const double len = std::min(burst_len(burst_rng), std::max(1.0, seconds - Since(t0)));
    const auto burst_start = Clock::now();
    const auto burst_end =
        std::min(deadline, burst_start + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(len)));
    std::vector<std::vector<Sample>> per_client(static_cast<size_t>(clients));
    std::vector<uint64_t> sent(static_cast<size_t>(clients), 0);
    std::vector<std::thread> threads;
    for (int c = 0; c < clients; ++c) {
      threads.emplace_back([&, c] {
        std::mt19937_64 rng(seed * 1000003 + bursts * 131 + static_cast<uint64_t>(c));
        auto client = bench.NewClient(true);
        while (Clock::now() < burst_end) {
          Outcome o = bench.Infer(*client, bench.Body(bench.RandomTokens(rng)), false);
          ++sent[static_cast<size_t>(c)];
          if (o.ok) {
            per_client[static_cast<size_t>(c)].push_back(o.sample);
          } else {
            std::this_thread::sleep_for(std::chrono::milliseconds(20));  // no hot loop
          }
        }
      });
    }
    // /healthz meanwhile, every 200 ms.
    while (Clock::now() < burst_end) {
      const double ms = bench.HealthzMs();
      if (ms < 0) {
        ++healthz_failed;
        failures.Add(&Failures::other, std::string("GET /healthz failed during a burst") +
                                           (slow ? " with slow clients" : ""));
      } else {
        healthz_ms_by[slow].push_back(ms);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    for (auto& t : threads) t.join();
    const double took = Since(burst_start);
    burst_seconds += took;
    uint64_t n_ok = 0, n_sent = 0;
    for (int c = 0; c < clients; ++c) {
      n_sent += sent[static_cast<size_t>(c)];
      for (const Sample& s : per_client[static_cast<size_t>(c)]) {
        ++n_ok;
        (s.cold ? cold : warm).push_back(s);
        if (s.cold) ++unexpected_cold;
        if (!s.cold) warm_ms_by[slow].push_back(s.ms);
      }
    }
    requests += n_sent;
    ok_requests += n_ok;
    burst_requests += n_sent;
    if (trickle) {
      slow_open_min = std::min(slow_open_min, trickle->open());
      slow_reconnects += trickle->closed_by_server();
      slow_connect_failures += trickle->connect_failures();
      trickle.reset();
    }

    // The probe again, warm: the same bits as the cold one.
    Outcome last = bench.Infer(*probe_client, probe_body, /*keep_data=*/true);
    ++requests;
    if (last.ok) {
      ++ok_requests;
      (last.sample.cold ? cold : warm).push_back(last.sample);
      if (last.sample.cold) ++unexpected_cold;
      if (!last.sample.cold) warm_probe_ms.push_back(last.sample.ms);
      compare_probe(last, "warm", bursts);
    }
    probe_client.reset();

    // Quiet until the idle timeout has unloaded the model.
    const auto quiet_start = Clock::now();
    const bool unloaded = bench.WaitCold(idle_s + 30);
    const double quiet = Since(quiet_start);
    if (unloaded) idle_to_cold.push_back(quiet);
    std::printf(
        "cycle %llu%s: first request %s %.1f ms, burst %.2f s %llu requests (%.0f/s), "
        "cold again %.2f s after the last response\n",
        static_cast<unsigned long long>(bursts), slow ? " (slow clients)" : "",
        first.ok ? (first.sample.cold ? "cold" : "WARM") : "FAILED", first.sample.ms, took,
        static_cast<unsigned long long>(n_sent),
        took > 0 ? static_cast<double>(n_sent) / took : 0.0, quiet);
    std::fflush(stdout);
    if (!unloaded) {
      failures.Add(&Failures::other, "the model was not unloaded within the idle timeout + 30 s");
      stop = true;
    }
    int status = 0;
    if (::waitpid(g_server, &status, WNOHANG) == g_server) {
      g_server = -1;
      failures.Add(&Failures::other, "stasis serve exited during the run");
      stop = true;
    }
  }
  if (bench.Expired()) failures.Add(&Failures::other, "the deadline (--seconds + 60 s) passed");

  // The server's own account, then SIGTERM.
  Json st = bench.Status();
  uint64_t status_cold_starts = 0, status_unloads = 0, status_failed_restores = 0;
  if (!st.is_object()) {
    failures.Add(&Failures::other, "GET /v1/status failed at the end");
  } else {
    status_cold_starts = st.value("cold_starts", uint64_t{0});
    status_unloads = st.value("unloads", uint64_t{0});
    status_failed_restores = st.value("failed_restores", uint64_t{0});
    if (status_failed_restores != 0)
      failures.Add(&Failures::other,
                   "/v1/status failed_restores = " + std::to_string(status_failed_restores));
    if (status_cold_starts != cold.size())
      failures.Add(&Failures::other, "/v1/status cold_starts " +
                                         std::to_string(status_cold_starts) +
                                         " != cold responses " + std::to_string(cold.size()));
  }
  int exit_code = -1;
  if (g_server > 0) {
    ::kill(g_server, SIGTERM);
    exit_code = WaitExit(g_server, 20);
    if (exit_code == -2) {
      ::kill(g_server, SIGKILL);
      ::waitpid(g_server, nullptr, 0);
    }
    g_server = -1;
  }
  if (exit_code != 0)
    failures.Add(&Failures::other, exit_code == -2
                                       ? "stasis serve did not exit within 20 s of SIGTERM"
                                       : "stasis serve exited " + std::to_string(exit_code));
  const double wall = Since(t0);

  std::vector<double> warm_ms, cold_ms, warm_server_ms, cold_server_ms;
  for (const Sample& s : warm) {
    warm_ms.push_back(s.ms);
    warm_server_ms.push_back(s.server_ms);
  }
  for (const Sample& s : cold) {
    cold_ms.push_back(s.ms);
    cold_server_ms.push_back(s.server_ms);
  }
  const double rps = burst_seconds > 0 ? static_cast<double>(burst_requests) / burst_seconds : 0;
  // The slow-client targets (issue 16): warm p99 within 2x, /healthz within 2 s.
  const double p99_quiet = Percentile(warm_ms_by[0], 99), p99_slow = Percentile(warm_ms_by[1], 99);
  const double slow_ratio = p99_quiet > 0 ? p99_slow / p99_quiet : 0;
  const double healthz_max_slow =
      healthz_ms_by[1].empty()
          ? 0.0
          : *std::max_element(healthz_ms_by[1].begin(), healthz_ms_by[1].end());
  if (slow_clients > 0) {
    if (warm_ms_by[1].empty() || warm_ms_by[0].empty())
      failures.Add(&Failures::other, "no warm requests in cycles with or without slow clients");
    else if (slow_ratio > 2)
      failures.Add(&Failures::other, "warm p99 with slow clients is " + std::to_string(slow_ratio) +
                                         "x that without (> 2)");
    if (healthz_max_slow >= 2000)
      failures.Add(&Failures::other, "/healthz took " + std::to_string(healthz_max_slow) +
                                         " ms with slow clients (>= 2000)");
    // Most of them, not all: one the server just closed counts as closed until reopened.
    if (slow_open_min < slow_clients * 9 / 10)
      failures.Add(&Failures::other, "only " + std::to_string(slow_open_min) + " of " +
                                         std::to_string(slow_clients) +
                                         " slow clients were connected at the end of a burst");
  }
  const uint64_t failed = failures.total();
  const bool pass = failed == 0 && cycles >= 3;

  std::printf(
      "\nrequests          %llu (%llu ok, %llu failed: transport %llu, http %llu, "
      "bad output %llu, determinism %llu, other %llu)\n",
      static_cast<unsigned long long>(requests), static_cast<unsigned long long>(ok_requests),
      static_cast<unsigned long long>(failed), static_cast<unsigned long long>(failures.transport),
      static_cast<unsigned long long>(failures.http),
      static_cast<unsigned long long>(failures.bad_output),
      static_cast<unsigned long long>(failures.determinism),
      static_cast<unsigned long long>(failures.other));
  std::printf(
      "cold starts       %zu from responses, %llu from /v1/status (unloads %llu, failed "
      "restores %llu)\n",
      cold.size(), static_cast<unsigned long long>(status_cold_starts),
      static_cast<unsigned long long>(status_unloads),
      static_cast<unsigned long long>(status_failed_restores));
  std::printf(
      "cycles            %llu unload/restore cycles in %llu bursts (%llu cold requests "
      "inside bursts)\n",
      static_cast<unsigned long long>(cycles), static_cast<unsigned long long>(bursts),
      static_cast<unsigned long long>(unexpected_cold));
  std::printf(
      "warm latency ms   p50 %.2f  p99 %.2f  max %.2f  (%zu requests; server side p50 "
      "%.2f p99 %.2f)\n",
      Percentile(warm_ms, 50), Percentile(warm_ms, 99),
      warm_ms.empty() ? 0.0 : *std::max_element(warm_ms.begin(), warm_ms.end()), warm_ms.size(),
      Percentile(warm_server_ms, 50), Percentile(warm_server_ms, 99));
  std::printf(
      "cold latency ms   p50 %.2f  p99 %.2f  max %.2f  (%zu requests; server side p50 "
      "%.2f p99 %.2f)\n",
      Percentile(cold_ms, 50), Percentile(cold_ms, 99),
      cold_ms.empty() ? 0.0 : *std::max_element(cold_ms.begin(), cold_ms.end()), cold_ms.size(),
      Percentile(cold_server_ms, 50), Percentile(cold_server_ms, 99));
  std::printf(
      "warm probe ms     p50 %.2f  max %.2f  (%zu requests sent alone after a burst, as the "
      "cold ones are)\n",
      Percentile(warm_probe_ms, 50),
      warm_probe_ms.empty() ? 0.0 : *std::max_element(warm_probe_ms.begin(), warm_probe_ms.end()),
      warm_probe_ms.size());
  std::printf("bursts            %.1f requests/s (%llu requests in %.1f s)\n", rps,
              static_cast<unsigned long long>(burst_requests), burst_seconds);
  std::printf(
      "idle to cold      p50 %.2f s  max %.2f s (last response received to state cold; the "
      "server's idle clock starts when the inference ends)\n",
      Percentile(idle_to_cold, 50),
      idle_to_cold.empty() ? 0.0 : *std::max_element(idle_to_cold.begin(), idle_to_cold.end()));
  if (slow_clients > 0) {
    std::printf(
        "slow clients      %d every second cycle (fewest connected at a burst's end %d, "
        "closed by the server and reopened %llu, failed to connect %llu)\n",
        slow_clients, slow_open_min, static_cast<unsigned long long>(slow_reconnects),
        static_cast<unsigned long long>(slow_connect_failures));
    std::printf("  warm p99 ms     without %.2f (%zu)  with %.2f (%zu)  ratio %.2f (target <= 2)\n",
                p99_quiet, warm_ms_by[0].size(), p99_slow, warm_ms_by[1].size(), slow_ratio);
    std::printf("  warm p50 ms     without %.2f  with %.2f\n", Percentile(warm_ms_by[0], 50),
                Percentile(warm_ms_by[1], 50));
  }
  std::printf(
      "healthz ms        p50 %.2f max %.2f without slow clients; p50 %.2f max %.2f with "
      "(target < 2000); %llu failed\n",
      Percentile(healthz_ms_by[0], 50),
      healthz_ms_by[0].empty()
          ? 0.0
          : *std::max_element(healthz_ms_by[0].begin(), healthz_ms_by[0].end()),
      Percentile(healthz_ms_by[1], 50), healthz_max_slow,
      static_cast<unsigned long long>(healthz_failed));
  std::printf("server exit       %d after SIGTERM; wall %.1f s\n", exit_code, wall);
  {
    std::lock_guard l(failures.mu);
    for (const std::string& e : failures.examples) std::printf("failure: %s\n", e.c_str());
  }
  if (cycles < 3)
    std::printf("failure: %llu unload/restore cycles, want >= 3\n",
                static_cast<unsigned long long>(cycles));
  std::printf("%s\n", pass ? "PASS" : "FAIL");
  if (!pass)
    std::printf("server log (%s), last lines:\n%s", serve_log.c_str(),
                Tail(ReadFile(serve_log), 15).c_str());

  if (!json_path.empty()) {
    Json out;
    out["preset"] = preset;
    out["input"] = Json{{"dtype", "I64"}, {"shape", {1, spec.tokens}}, {"vocab", spec.vocab}};
    out["seconds"] = seconds;
    out["idle_timeout"] = idle_timeout;
    out["clients"] = clients;
    out["max_concurrency"] = kMaxConcurrency;
    out["queue"] = kQueue;
    out["seed"] = seed;
    out["requests"] = requests;
    out["ok_requests"] = ok_requests;
    out["failures"] = Json{{"total", failed},
                           {"transport", failures.transport},
                           {"http", failures.http},
                           {"bad_output", failures.bad_output},
                           {"determinism", failures.determinism},
                           {"other", failures.other},
                           {"examples", failures.examples}};
    out["cold_starts"] = Json{{"responses", cold.size()},
                              {"status", status_cold_starts},
                              {"status_unloads", status_unloads},
                              {"status_failed_restores", status_failed_restores}};
    out["cycles"] = cycles;
    out["bursts"] = bursts;
    out["cold_requests_in_bursts"] = unexpected_cold;
    out["warm_ms"] = Summary(warm_ms);
    out["cold_ms"] = Summary(cold_ms);
    out["warm_server_ms"] = Summary(warm_server_ms);
    out["cold_server_ms"] = Summary(cold_server_ms);
    out["warm_probe_ms"] = Summary(warm_probe_ms);
    out["burst_requests"] = burst_requests;
    out["burst_seconds"] = burst_seconds;
    out["burst_requests_per_s"] = rps;
    out["idle_to_cold_s"] = Json{
        {"p50", Percentile(idle_to_cold, 50)},
        {"max",
         idle_to_cold.empty() ? 0.0 : *std::max_element(idle_to_cold.begin(), idle_to_cold.end())}};
    out["slow_clients"] = Json{{"count", slow_clients},
                               {"fewest_connected", slow_open_min},
                               {"reconnects", slow_reconnects},
                               {"connect_failures", slow_connect_failures},
                               {"warm_ms_without", Summary(warm_ms_by[0])},
                               {"warm_ms_with", Summary(warm_ms_by[1])},
                               {"warm_p99_ratio", slow_ratio},
                               {"healthz_ms_without", Summary(healthz_ms_by[0])},
                               {"healthz_ms_with", Summary(healthz_ms_by[1])}};
    out["server_exit_code"] = exit_code;
    out["wall_seconds"] = wall;
    out["pass"] = pass;
    std::ofstream(json_path) << out.dump(2) << "\n";
  }
  return pass ? 0 : 1;
}
