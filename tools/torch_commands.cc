#include "tools/torch_commands.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <vector>

#include "common/file_system.h"
#include "restore/default_backend.h"
#include "restore/report_json.h"
#include "restore/restored_model.h"
#include "restore/torch_plugin_loader.h"
#include "snapshot/image_reader.h"
#include "snapshot/image_writer.h"
#include "snapshot/safetensors.h"
#include "tools/cli_common.h"

extern char** environ;

namespace stasis::cli {
namespace {

using Json = nlohmann::ordered_json;

int64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

}  // namespace

// ---- snapshot model.pt ----------------------------------------------------------------

int RunTorchSnapshot(const TorchSnapshotArgs& a) {
  auto plugin = torch::LoadTorchPluginFor(a.device);
  if (!plugin.ok()) return ReportError(plugin.status());
  torch::TorchSnapshotOptions opt;
  opt.device = a.device;
  opt.warmup_input = a.warmup_input;
  auto codec = ParseCodecChoice(a.codec);
  if (!codec.ok()) return ReportError(codec.status());
  opt.writer.codec = *codec;
  auto chunk = ParseSize(a.chunk_size);
  if (!chunk.ok()) return ReportError(chunk.status());
  opt.writer.chunk_size = *chunk;
  opt.writer.zstd_level = a.level;
  opt.writer.threads = a.threads;
  opt.writer.overwrite = a.force;
  const int64_t start = MonotonicNs();
  torch::TorchSnapshotReport r;
  Status s = (*plugin)->SnapshotModule(a.input, a.output, opt, &r);
  if (!s.ok()) return ReportError(s);
  const double secs = static_cast<double>(MonotonicNs() - start) / 1e9;
  const double ratio = r.writer.stored_bytes ? static_cast<double>(r.writer.raw_bytes) /
                                                   static_cast<double>(r.writer.stored_bytes)
                                             : 1.0;
  if (a.json) {
    Json j;
    j["image"] = a.output;
    j["model"] = a.input;
    j["torch_version"] = r.torch_version;
    j["device"] = a.device;
    j["parameters"] = r.parameters;
    j["buffers"] = r.buffers;
    j["storages"] = r.storages;
    j["tensor_bytes"] = r.tensor_bytes;
    j["stored_bytes"] = r.stored_bytes;
    j["skeleton_bytes"] = r.skeleton_bytes;
    j["file_size"] = r.writer.file_size;
    j["ratio"] = ratio;
    j["seconds"] = secs;
    std::cout << j.dump(2) << "\n";
  } else {
    std::printf(
        "wrote %s: TorchScript module (torch %s, %s) with %zu parameters and %zu buffers in %zu "
        "storages, %s of weights, skeleton %s, file %s (ratio %.3f) in %.2f s\n",
        a.output.c_str(), r.torch_version.c_str(), a.device.c_str(), r.parameters, r.buffers,
        r.storages, HumanBytes(r.stored_bytes).c_str(), HumanBytes(r.skeleton_bytes).c_str(),
        HumanBytes(r.writer.file_size).c_str(), ratio, secs);
  }
  return kExitOk;
}

// ---- coldstart (the child of `stasis bench`) -------------------------------------------

namespace {

class PhaseLog {
 public:
  explicit PhaseLog(int64_t origin_ns) : origin_(origin_ns) {}
  double Now() const { return static_cast<double>(MonotonicNs() - origin_) / 1e9; }
  void Add(const std::string& name, double start, double end) {
    phases_.push_back({{"name", name}, {"start", start}, {"end", end}});
  }
  Json json() const { return phases_; }

 private:
  int64_t origin_;
  Json phases_ = Json::array();
};

// What every cold start reports at its end, whichever path and model kind.
void RecordResult(double t_ready, double t_result, const torch::InferenceResult& r,
                  uint64_t weight_bytes, Json* out) {
  (*out)["ready"] = t_ready;
  (*out)["first_result"] = t_result;
  (*out)["output"] = {{"dtype", r.dtype}, {"shape", r.shape}, {"xxh3", Hex64(r.xxh3)}};
  (*out)["weight_bytes"] = weight_bytes;
}

// The end of a checkpoint's cold start on either path: `tensors` became ready after phase
// `phase` (from `start`), and their checksum is the first result.
Status FinishTensors(torch::LoadedTensors& tensors, const char* phase, double start, PhaseLog* log,
                     Json* out) {
  const double t_ready = log->Now();
  log->Add(phase, start, t_ready);
  STASIS_ASSIGN_OR_RETURN(torch::InferenceResult result, tensors.Checksum());
  const double t_result = log->Now();
  log->Add("first result (checksum)", t_ready, t_result);
  RecordResult(t_ready, t_result, result, tensors.bytes(), out);
  return OkStatus();
}

Status ColdStartBaseline(const ColdStartArgs& a, PhaseLog* log, Json* out) {
  const double t_main = log->Now();
  auto plugin = torch::LoadTorchPluginFor(a.device);
  STASIS_RETURN_IF_ERROR(plugin.status());
  const double t_lib = log->Now();
  log->Add("library load", t_main, t_lib);
  if (a.kind == "tensors") {
    // A checkpoint without a module: read it into framework tensors (and onto the device).
    STASIS_ASSIGN_OR_RETURN(auto tensors, (*plugin)->LoadSafetensors(a.path, a.device));
    return FinishTensors(*tensors, "framework load + weight I/O", t_lib, log, out);
  }
  if (a.input.empty()) return InvalidArgumentError("--input is required for a module");
  STASIS_ASSIGN_OR_RETURN(auto module, (*plugin)->LoadModule(a.path));
  const double t_loaded = log->Now();
  log->Add("framework load + weight I/O", t_lib, t_loaded);
  STASIS_RETURN_IF_ERROR(module->ToDevice(a.device));
  const double t_ready = log->Now();
  log->Add("copy to device", t_loaded, t_ready);
  STASIS_ASSIGN_OR_RETURN(torch::InferenceResult result, module->Run(a.input));
  const double t_result = log->Now();
  log->Add("first inference", t_ready, t_result);
  RecordResult(t_ready, t_result, result, module->WeightBytes(), out);
  return OkStatus();
}

Status ColdStartStasis(const ColdStartArgs& a, PhaseLog* log, Json* out) {
  const double t_main = log->Now();
  RestoreOptions options;
  STASIS_ASSIGN_OR_RETURN(options.device, ParseDeviceSpec(a.device));
  options.threads = a.threads;
  STASIS_RETURN_IF_ERROR(UseDefaultBackend(&options));
  // The weights do not need the framework: restore them while libtorch loads, with the
  // restore's reads behind the loader's page faults (idle I/O priority) until it is loaded.
  std::atomic<bool> loading_framework{a.yield_io && !a.library_first};
  options.yield_io = &loading_framework;
  StatusOr<std::unique_ptr<RestoredModel>> restored = InternalError("restore did not run");
  double t_restored = 0;
  auto restore = [&] {
    // On a thread of its own: nothing may escape it (std::terminate).
    try {
      restored = RestoredModel::Restore(a.path, options);
    } catch (const std::exception& e) {
      restored = InternalError(std::string("restore threw: ") + e.what());
    } catch (...) {
      restored = InternalError("restore threw");
    }
    t_restored = log->Now();
  };
  StatusOr<torch::TorchPlugin*> plugin = InternalError("libtorch not loaded");
  double t_lib = 0;
  if (a.library_first) {
    plugin = torch::LoadTorchPluginFor(a.device);
    t_lib = log->Now();
    restore();
  } else {
    std::thread restorer(restore);
    plugin = torch::LoadTorchPluginFor(a.device);
    loading_framework = false;
    t_lib = log->Now();
    restorer.join();
  }
  STASIS_RETURN_IF_ERROR(plugin.status());
  STASIS_RETURN_IF_ERROR(restored.status());
  log->Add("library load", t_main, t_lib);
  log->Add("weight I/O + copy (restore)", a.library_first ? t_lib : t_main, t_restored);
  std::shared_ptr<RestoredModel> model(std::move(*restored));
  const double t_bind_start = std::max(t_lib, t_restored);
  (*out)["restore"] = RestoreReportJson(model->report());
  if (a.kind == "tensors") {
    STASIS_ASSIGN_OR_RETURN(auto tensors, (*plugin)->BindTensors(*model, model));
    return FinishTensors(*tensors, "bind weights", t_bind_start, log, out);
  }
  if (a.input.empty()) return InvalidArgumentError("--input is required for a module");
  STASIS_ASSIGN_OR_RETURN(std::string skeleton, model->ReadSection(torch::kSkeletonSection));
  torch::BindReport bind;
  STASIS_ASSIGN_OR_RETURN(auto module, (*plugin)->BindModule(skeleton, *model, model, &bind));
  const double t_ready = log->Now();
  const double t_skeleton = std::min(t_ready, t_bind_start + bind.skeleton_load_seconds);
  log->Add("skeleton load", t_bind_start, t_skeleton);
  log->Add("bind weights", t_skeleton, t_ready);
  STASIS_ASSIGN_OR_RETURN(torch::InferenceResult result, module->Run(a.input));
  const double t_result = log->Now();
  log->Add("first inference", t_ready, t_result);
  RecordResult(t_ready, t_result, result, module->WeightBytes(), out);
  (*out)["bind"] = {{"parameters_bound", bind.parameters_bound},
                    {"buffers_bound", bind.buffers_bound},
                    {"nonempty_before_binding", bind.nonempty_before_binding},
                    {"skeleton_load_seconds", bind.skeleton_load_seconds},
                    {"bind_seconds", bind.bind_seconds}};
  return OkStatus();
}

}  // namespace

int RunColdStart(const ColdStartArgs& a) {
  const int64_t origin = a.spawn_ns > 0 ? a.spawn_ns : MonotonicNs();
  PhaseLog log(origin);
  const double t_main = log.Now();
  log.Add("process start", 0, t_main);
  Json out;
  out["mode"] = a.mode;
  out["device"] = a.device;
  Status s;
  if (a.kind != "module" && a.kind != "tensors") {
    s = InvalidArgumentError("--kind must be module or tensors");
  } else if (a.mode == "baseline") {
    s = ColdStartBaseline(a, &log, &out);
  } else if (a.mode == "stasis") {
    s = ColdStartStasis(a, &log, &out);
  } else {
    s = InvalidArgumentError("--mode must be baseline or stasis");
  }
  if (!s.ok()) return ReportError(s);
  out["phases"] = log.json();
  std::cout << out.dump() << "\n";
  return kExitOk;
}

// ---- bench ----------------------------------------------------------------------------

namespace {

struct ChildResult {
  Json report;
  double max_rss_mb = 0;
};

struct SelfRun {
  std::string output;  // its stdout
  rusage usage{};
};

// Runs this binary (`stasis <args>`) in a fresh process, stdout captured, stderr to
// `stderr_path`. With `pass_spawn_time`, `--spawn-ns <CLOCK_MONOTONIC now>` is appended just
// before the spawn (coldstart times its own process start from it). A failed child is an
// error carrying its stderr.
StatusOr<SelfRun> RunSelf(const std::vector<std::string>& args, const std::string& stderr_path,
                          bool pass_spawn_time) {
  std::string exe = std::filesystem::read_symlink("/proc/self/exe").string();
  int out_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "pipe");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], STDOUT_FILENO);
  posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, stderr_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<std::string> full = {exe};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  pid_t pid = 0;
  if (pass_spawn_time) {
    full.push_back("--spawn-ns");
    full.push_back(std::to_string(MonotonicNs()));
  }
  for (auto& s : full) argv.push_back(s.data());
  argv.push_back(nullptr);
  int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(out_pipe[1]);
  if (rc != 0) {
    close(out_pipe[0]);
    return ErrnoToStatus(rc, "posix_spawn " + exe);
  }
  std::string output;
  char buf[4096];
  for (;;) {
    ssize_t n = read(out_pipe[0], buf, sizeof(buf));
    if (n > 0) {
      output.append(buf, static_cast<size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  close(out_pipe[0]);
  int status = 0;
  SelfRun run;
  while (wait4(pid, &status, 0, &run.usage) < 0) {
    if (errno != EINTR) return ErrnoToStatus(errno, "wait4");
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::ifstream err(stderr_path);
    std::stringstream ss;
    ss << err.rdbuf();
    std::string why = ss.str();
    while (!why.empty() && why.back() == '\n') why.pop_back();
    std::string what;
    for (size_t i = 1; i < full.size() && i < 4; ++i) what += (i > 1 ? " " : "") + full[i];
    return InternalError("child `stasis " + what + " ...` failed: " +
                         (why.empty() ? "exit status " + std::to_string(status) : why));
  }
  run.output = std::move(output);
  return run;
}

// Runs `stasis coldstart ...` in a fresh process; its stdout is the JSON report.
StatusOr<ChildResult> SpawnColdStart(const std::vector<std::string>& args,
                                     const std::string& stderr_path) {
  std::vector<std::string> full = {"coldstart"};
  full.insert(full.end(), args.begin(), args.end());
  STASIS_ASSIGN_OR_RETURN(SelfRun run, RunSelf(full, stderr_path, /*pass_spawn_time=*/true));
  ChildResult r;
  r.report = Json::parse(run.output, nullptr, /*allow_exceptions=*/false);
  if (r.report.is_discarded() || !r.report.is_object())
    return InternalError("cold-start child printed no JSON report: " + run.output);
  r.max_rss_mb = static_cast<double>(run.usage.ru_maxrss) / 1024.0;
  return r;
}

// Evicts the page cache. Returns "" when every cached page was dropped, else a note saying
// what was done instead.
std::string DropCaches(const std::vector<std::string>& files) {
  sync();
  int fd = ::open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
  if (fd >= 0) {
    bool ok = ::write(fd, "3", 1) == 1;
    int err = errno;
    ::close(fd);
    if (ok) return "";
    errno = err;
  }
  std::string why = std::strerror(errno);
  for (const auto& f : files) {
    int ffd = ::open(f.c_str(), O_RDONLY | O_CLOEXEC);
    if (ffd < 0) continue;
    posix_fadvise(ffd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(ffd);
  }
  return "cannot write /proc/sys/vm/drop_caches (" + why +
         "): only the model and image files were evicted (posix_fadvise DONTNEED); libraries "
         "stayed cached";
}

// Reads `files` through the page cache. An unmeasured run of each path is not enough: a
// restore that finds the image uncached reads it with O_DIRECT, which leaves it uncached,
// so "hot" runs after a cold series would stay cold.
Status WarmPageCache(const std::vector<std::string>& files) {
  std::vector<char> buf(8 << 20);
  for (const auto& f : files) {
    const int fd = ::open(f.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoToStatus(errno, "open '" + f + "'");
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    ssize_t n;
    while ((n = ::read(fd, buf.data(), buf.size())) > 0 || (n < 0 && errno == EINTR)) {
    }
    const int err = errno;
    ::close(fd);
    if (n < 0) return ErrnoToStatus(err, "read '" + f + "'");
  }
  return OkStatus();
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct PathSummary {
  std::vector<ChildResult> runs;
  double ready = 0, first_result = 0, max_rss_mb = 0;
  Json phases = Json::array();  // median start/end per phase, in first-run order
};

void Summarise(PathSummary* p) {
  std::vector<double> ready, first, rss;
  std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> spans;
  std::vector<std::string> order;
  for (const auto& r : p->runs) {
    ready.push_back(r.report["ready"].get<double>());
    first.push_back(r.report["first_result"].get<double>());
    rss.push_back(r.max_rss_mb);
    for (const auto& ph : r.report["phases"]) {
      const std::string name = ph["name"].get<std::string>();
      if (!spans.count(name)) order.push_back(name);
      spans[name].first.push_back(ph["start"].get<double>());
      spans[name].second.push_back(ph["end"].get<double>());
    }
  }
  p->ready = Median(ready);
  p->first_result = Median(first);
  p->max_rss_mb = Median(rss);
  p->phases = Json::array();
  for (const auto& name : order) {
    p->phases.push_back({{"name", name},
                         {"start", Median(spans[name].first)},
                         {"end", Median(spans[name].second)}});
  }
}

struct CacheResult {
  std::string cache;  // "hot" | "cold"
  std::string note;   // how the cache was dropped, when it was not fully
  PathSummary baseline, stasis;
};

std::string PhaseColor(const std::string& name) {
  if (name == "process start") return "#9e9e9e";
  if (name == "library load") return "#8d6e63";
  if (name == "framework load + weight I/O") return "#e53935";
  if (name == "copy to device") return "#fb8c00";
  if (name == "weight I/O + copy (restore)") return "#1e88e5";
  if (name == "skeleton load") return "#8e24aa";
  if (name == "bind weights") return "#00acc1";
  if (name == "first inference") return "#43a047";
  return "#607d8b";
}

std::string XmlEscape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '<':
        o += "&lt;";
        break;
      case '>':
        o += "&gt;";
        break;
      case '&':
        o += "&amp;";
        break;
      case '"':
        o += "&quot;";
        break;
      default:
        o += c;
    }
  }
  return o;
}

// A phase waterfall: per cache state, the baseline's phases above stasis's, one bar per
// phase on a shared time axis, with time-to-ready and time-to-first-result marked.
std::string WaterfallSvg(const std::string& title, const std::vector<CacheResult>& results) {
  const double kLeft = 250, kWidth = 640, kRow = 22, kRight = 40;
  double tmax = 0;
  for (const auto& c : results)
    tmax = std::max({tmax, c.baseline.first_result, c.stasis.first_result});
  tmax = tmax > 0 ? tmax * 1.05 : 1;
  auto x = [&](double t) { return kLeft + t / tmax * kWidth; };
  std::ostringstream body;
  double y = 40;
  char buf[512];
  for (const auto& c : results) {
    const double ready_x = c.stasis.ready > 0 ? c.baseline.ready / c.stasis.ready : 0;
    const double first_x =
        c.stasis.first_result > 0 ? c.baseline.first_result / c.stasis.first_result : 0;
    std::snprintf(buf, sizeof(buf),
                  "<text x=\"10\" y=\"%.0f\" font-weight=\"bold\">page cache %s: time to ready "
                  "%.2fx faster, time to first result %.2fx faster</text>\n",
                  y, c.cache.c_str(), ready_x, first_x);
    body << buf;
    y += 10;
    for (const auto* path : {&c.baseline, &c.stasis}) {
      const bool base = path == &c.baseline;
      y += 8;
      std::snprintf(buf, sizeof(buf),
                    "<text x=\"10\" y=\"%.0f\" font-style=\"italic\">%s: ready %.3f s, first "
                    "result %.3f s, peak RSS %.0f MB</text>\n",
                    y + 12, base ? "baseline (torch::jit::load)" : "stasis (restore + bind)",
                    path->ready, path->first_result, path->max_rss_mb);
      body << buf;
      y += kRow;
      const double top = y;
      for (const auto& ph : path->phases) {
        const std::string name = ph["name"].get<std::string>();
        const double s = ph["start"].get<double>(), e = ph["end"].get<double>();
        std::snprintf(buf, sizeof(buf),
                      "<text x=\"20\" y=\"%.0f\">%s</text><rect x=\"%.1f\" y=\"%.0f\" "
                      "width=\"%.1f\" height=\"%.0f\" fill=\"%s\"/><text x=\"%.1f\" y=\"%.0f\" "
                      "font-size=\"11\">%.3f s</text>\n",
                      y + 15, XmlEscape(name).c_str(), x(s), y + 3, std::max(1.0, x(e) - x(s)),
                      kRow - 6, PhaseColor(name).c_str(), x(e) + 4, y + 15, e - s);
        body << buf;
        y += kRow;
      }
      std::snprintf(buf, sizeof(buf),
                    "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"black\" "
                    "stroke-dasharray=\"4 3\"/><text x=\"%.1f\" y=\"%.0f\" "
                    "font-size=\"11\">ready</text>\n",
                    x(path->ready), top, x(path->ready), y, x(path->ready) + 3, y + 11);
      body << buf;
      y += 14;
    }
    y += 26;
  }
  // Time axis.
  std::ostringstream axis;
  const double step = tmax > 4 ? 1.0 : tmax > 2 ? 0.5 : tmax > 0.8 ? 0.2 : 0.1;
  for (double t = 0; t <= tmax; t += step) {
    std::snprintf(buf, sizeof(buf),
                  "<line x1=\"%.1f\" y1=\"30\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#e0e0e0\"/>"
                  "<text x=\"%.1f\" y=\"%.0f\" font-size=\"11\" text-anchor=\"middle\">%.1f "
                  "s</text>\n",
                  x(t), x(t), y, x(t), y + 14, t);
    axis << buf;
  }
  std::ostringstream svg;
  const double height = y + 30;
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kLeft + kWidth + kRight
      << "\" height=\"" << height << "\" font-family=\"sans-serif\" font-size=\"13\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"10\" y=\"20\" font-size=\"15\" font-weight=\"bold\">" << XmlEscape(title)
      << "</text>\n"
      << axis.str() << body.str() << "</svg>\n";
  return svg.str();
}

Json PathJson(const PathSummary& p) {
  Json runs = Json::array();
  for (const auto& r : p.runs) {
    Json j = r.report;
    j["max_rss_mb"] = r.max_rss_mb;
    runs.push_back(std::move(j));
  }
  return {{"ready_s", p.ready},
          {"first_result_s", p.first_result},
          {"max_rss_mb", p.max_rss_mb},
          {"phases", p.phases},
          {"runs", runs}};
}

Status WriteFile(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
  f.close();
  if (!f) return ErrnoToStatus(errno, "write " + path);
  return OkStatus();
}

StatusOr<std::string> ImageInputSpec(const std::string& image) {
  STASIS_ASSIGN_OR_RETURN(auto reader, ImageReader::Open(image));
  const format::Manifest& m = reader->manifest();
  const std::string* kind = m.FindMetadata(torch::kModelKindKey);
  if (kind == nullptr || *kind != "torchscript") {
    return FailedPreconditionError(image +
                                   " was not made from a TorchScript module (no skeleton); "
                                   "`stasis bench` needs model.pt and its image");
  }
  const std::string* spec = m.FindMetadata(torch::kTorchInputSpecKey);
  if (spec == nullptr) {
    return FailedPreconditionError(image +
                                   " records no input; give --input SPEC (e.g. i64:1x64:50257)");
  }
  return *spec;
}

}  // namespace

int RunBench(const BenchArgs& a) {
  if (a.runs < 1 || a.runs > 1000)
    return ReportError(InvalidArgumentError("--runs must be 1..1000"));
  if (!a.hot && !a.cold)
    return ReportError(InvalidArgumentError("nothing to run (--no-hot without --cold)"));
  // The device's part of libtorch before anything else (a stale image is snapshotted on
  // that device below).
  auto plugin = torch::LoadTorchPluginFor(a.device);
  if (!plugin.ok()) return ReportError(plugin.status());
  if (!DefaultFileSystem()->Exists(a.model))
    return ReportError(NotFoundError(a.model + ": no such file"));
  // A TorchScript module (time to a first inference) or a safetensors checkpoint (time to
  // framework tensors, and a checksum of them as the first result).
  const bool module = (*plugin)->IsTorchScript(a.model);
  if (!module) {
    auto header = ReadSafetensorsHeader(DefaultFileSystem(), a.model);
    if (!header.ok()) {
      return ReportError(InvalidArgumentError(
          a.model + " is neither a TorchScript archive nor a safetensors file (" +
          header.status().ToString() + ")"));
    }
  }
  std::error_code ec;
  std::filesystem::create_directories(a.out, ec);
  if (ec) return ReportError(ErrnoToStatus(ec.value(), "create " + a.out));
  std::string image = a.image;
  if (image.empty())
    image =
        (std::filesystem::path(a.out) / std::filesystem::path(a.model).stem()).string() + ".stasis";
  const bool stale =
      !std::filesystem::exists(image) ||
      std::filesystem::last_write_time(image, ec) < std::filesystem::last_write_time(a.model, ec);
  if ((a.force_snapshot || stale) && !module) {
    std::fprintf(stderr, "bench: snapshotting %s into %s\n", a.model.c_str(), image.c_str());
    WriterOptions wo;
    wo.overwrite = true;
    auto codec = ParseCodecChoice(a.codec);
    if (!codec.ok()) return ReportError(codec.status());
    wo.codec = *codec;
    auto writer = ImageWriter::Create(image, wo);
    if (!writer.ok()) return ReportError(writer.status());
    Status s = ImportSafetensors(DefaultFileSystem(), a.model, writer->get());
    if (s.ok()) s = (*writer)->Finish();
    if (!s.ok()) {
      (*writer)->Abandon();
      return ReportError(s);
    }
  } else if (a.force_snapshot || stale) {
    std::fprintf(stderr, "bench: snapshotting %s into %s\n", a.model.c_str(), image.c_str());
    // In a child: the snapshot loads the model onto the device and runs it, and the
    // framework's allocator keeps that memory cached for its process; the cold starts
    // measured next must not share the device with it.
    std::vector<std::string> args = {"snapshot", a.model,   "-o",    image,     "--device",
                                     a.device,   "--codec", a.codec, "--force", "--quiet"};
    if (!a.input.empty()) {
      args.push_back("--warmup-input");
      args.push_back(a.input);
    }
    std::filesystem::create_directories(a.out);
    auto run = RunSelf(args, (std::filesystem::path(a.out) / "snapshot-stderr.txt").string(),
                       /*pass_spawn_time=*/false);
    if (!run.ok()) return ReportError(run.status());
  }
  std::string input = a.input;
  if (input.empty() && module) {
    auto spec = ImageInputSpec(image);
    if (!spec.ok()) return ReportError(spec.status());
    input = *spec;
  }

  const std::string err_path = (std::filesystem::path(a.out) / "child-stderr.txt").string();
  const std::string kind = module ? "module" : "tensors";
  std::vector<std::string> baseline_args = {"--mode", "baseline", a.model, "--device",
                                            a.device, "--kind",   kind};
  std::vector<std::string> stasis_args = {"--mode", "stasis", image, "--device",
                                          a.device, "--kind", kind};
  if (module) {
    for (auto* args : {&baseline_args, &stasis_args}) {
      args->push_back("--input");
      args->push_back(input);
    }
  }
  if (a.threads > 0) {
    stasis_args.push_back("--threads");
    stasis_args.push_back(std::to_string(a.threads));
  }
  if (a.yield_io) {
    stasis_args.push_back("--yield-io");
  }
  std::vector<CacheResult> results;
  std::vector<std::string> caches;
  if (a.hot) caches.push_back("hot");
  if (a.cold) caches.push_back("cold");
  for (const std::string& cache : caches) {
    CacheResult c;
    c.cache = cache;
    const bool cold = cache == "cold";
    if (!cold) {
      // The model and image into the page cache, then one unmeasured run of each path for
      // the libraries.
      if (Status s = WarmPageCache({a.model, image}); !s.ok()) return ReportError(s);
      for (const std::vector<std::string>* args : {&baseline_args, &stasis_args}) {
        auto r = SpawnColdStart(*args, err_path);
        if (!r.ok()) return ReportError(r.status());
      }
    }
    for (int i = 0; i < a.runs; ++i) {
      // Alternate which path goes first, so drift in the machine hits both alike.
      const bool baseline_first = i % 2 == 0;
      for (int k = 0; k < 2; ++k) {
        const bool is_baseline = (k == 0) == baseline_first;
        if (cold) {
          std::string note = DropCaches({a.model, image});
          if (!note.empty()) c.note = note;
        }
        auto r = SpawnColdStart(is_baseline ? baseline_args : stasis_args, err_path);
        if (!r.ok()) return ReportError(r.status());
        (is_baseline ? c.baseline : c.stasis).runs.push_back(std::move(*r));
      }
      std::fprintf(stderr, "\rbench: %s cache, run %d/%d", cache.c_str(), i + 1, a.runs);
    }
    std::fprintf(stderr, "\n");
    Summarise(&c.baseline);
    Summarise(&c.stasis);
    results.push_back(std::move(c));
  }

  // Both paths must compute the same thing.
  std::string expected;
  bool same = true;
  for (const auto& c : results) {
    for (const auto* p : {&c.baseline, &c.stasis}) {
      for (const auto& r : p->runs) {
        std::string h = r.report["output"]["xxh3"].get<std::string>();
        if (expected.empty()) expected = h;
        same = same && h == expected;
      }
    }
  }

  Json j;
  j["model"] = a.model;
  j["image"] = image;
  j["device"] = a.device;
  j["input"] = input;
  j["runs"] = a.runs;
  j["torch_version"] = (*plugin)->TorchVersion();
  j["outputs_identical"] = same;
  j["output_xxh3"] = expected;
  Json per_cache = Json::object();
  std::printf("stasis bench: %s on %s, %d fresh-process runs per path (medians)\n", a.model.c_str(),
              a.device.c_str(), a.runs);
  for (const auto& c : results) {
    const double ready_x = c.stasis.ready > 0 ? c.baseline.ready / c.stasis.ready : 0;
    const double first_x =
        c.stasis.first_result > 0 ? c.baseline.first_result / c.stasis.first_result : 0;
    per_cache[c.cache] = {{"baseline", PathJson(c.baseline)},
                          {"stasis", PathJson(c.stasis)},
                          {"ready_speedup", ready_x},
                          {"first_result_speedup", first_x},
                          {"cache_note", c.note}};
    std::printf("\npage cache %s%s%s\n", c.cache.c_str(), c.note.empty() ? "" : ": ",
                c.note.c_str());
    for (const auto* p : {&c.baseline, &c.stasis}) {
      std::printf("  %-8s", p == &c.baseline ? "baseline" : "stasis");
      for (const auto& ph : p->phases) {
        std::printf("  %s %.3f", ph["name"].get<std::string>().c_str(),
                    ph["end"].get<double>() - ph["start"].get<double>());
      }
      std::printf("\n  %-8s  ready %.3f s  first result %.3f s  peak RSS %.0f MB\n", "", p->ready,
                  p->first_result, p->max_rss_mb);
    }
    std::printf("  time to ready: %.2fx faster; time to first result: %.2fx faster\n", ready_x,
                first_x);
  }
  j["results"] = per_cache;
  const std::string json_path = (std::filesystem::path(a.out) / "bench.json").string();
  const std::string svg_path = (std::filesystem::path(a.out) / "bench.svg").string();
  if (Status s = WriteFile(json_path, j.dump(2) + "\n"); !s.ok()) return ReportError(s);
  const std::string title = "stasis bench: " + std::filesystem::path(a.model).filename().string() +
                            " on " + a.device + " (medians of " + std::to_string(a.runs) +
                            " fresh processes)";
  if (Status s = WriteFile(svg_path, WaterfallSvg(title, results)); !s.ok()) return ReportError(s);
  std::printf("\noutputs identical across paths and runs: %s (xxh3 %s)\n", same ? "yes" : "NO",
              expected.c_str());
  std::printf("wrote %s and %s\n", json_path.c_str(), svg_path.c_str());
  if (!same)
    return ReportError(
        InternalError("the stasis path computed a different output than the baseline"));
  return kExitOk;
}

}  // namespace stasis::cli
