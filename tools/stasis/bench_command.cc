// `stasis bench`: cold starts in fresh processes, the framework's own path against
// stasis's, alternated, with the page cache hot and (--cold) dropped; medians, a phase
// picture and bench.json (docs/benchmarks.md).
#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/clock.h"
#include "snapshot/safetensors.h"
#include "stasis/file_system.h"
#include "stasis/image.h"
#include "stasis/remote.h"
#include "stasis/torch_plugin.h"
#include "tools/stasis/bench_report.h"
#include "tools/stasis/bench_svg.h"
#include "tools/stasis/cli_common.h"
#include "tools/stasis/commands.h"
#include "tools/stasis/remote_flags.h"
#include "tools/stasis/same_file.h"

extern char** environ;

namespace stasis::cli {
namespace {

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
    full.push_back(std::to_string(RealClock()->NowNanos()));
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

Status WriteFile(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
  f.close();
  if (!f) return ErrnoToStatus(errno, "write " + path);
  return OkStatus();
}

StatusOr<std::string> ImageInputSpec(const std::string& location, const RemoteOptions& remote) {
  const std::string image = ShownLocation(location);
  STASIS_ASSIGN_OR_RETURN(auto reader, OpenImageReader(location, remote));
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
  std::string image = a.image;
  if (image.empty())
    image =
        (std::filesystem::path(a.out) / std::filesystem::path(a.model).stem()).string() + ".stasis";
  // A stale image is rewritten below: never when it is the model.
  if (Status s = CheckOutputIsNotAnInput({a.model}, image); !s.ok()) return ReportError(s);
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
  // A remote image is measured as it is: never made or replaced here.
  const bool remote = IsRemoteLocation(image);
  if (remote && a.force_snapshot)
    return ReportError(InvalidArgumentError("--resnapshot cannot write a remote --image"));
  const bool stale = !remote && (!std::filesystem::exists(image) ||
                                 std::filesystem::last_write_time(image, ec) <
                                     std::filesystem::last_write_time(a.model, ec));
  if ((a.force_snapshot || stale) && !module) {
    std::fprintf(stderr, "bench: snapshotting %s into %s\n", a.model.c_str(), image.c_str());
    WriterOptions wo;
    wo.overwrite = true;
    auto codec = ParseCodecChoice(a.codec);
    if (!codec.ok()) return ReportError(codec.status());
    wo.codec = *codec;
    auto written = WriteSafetensorsImage(a.model, image, wo);
    if (!written.ok()) return ReportError(written.status());
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
    auto spec = ImageInputSpec(image, ToRemoteOptions(a.remote));
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
  if (remote) {
    const RemoteArgs& r = a.remote;
    for (const std::string& arg : std::vector<std::string>{
             "--remote-concurrency", std::to_string(r.concurrency), "--remote-retries",
             std::to_string(r.retries), "--remote-deadline", std::to_string(r.deadline),
             "--remote-stall-timeout", std::to_string(r.stall_timeout)})
      stasis_args.push_back(arg);
    if (!r.s3_endpoint.empty()) {
      stasis_args.push_back("--s3-endpoint");
      stasis_args.push_back(r.s3_endpoint);
    }
  }
  // The local files whose pages the hot runs warm and the cold runs drop.
  std::vector<std::string> local_files = {a.model};
  if (!remote) local_files.push_back(image);
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
      if (Status s = WarmPageCache(local_files); !s.ok()) return ReportError(s);
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
          std::string note = DropCaches(local_files);
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
  j["image"] = ShownLocation(image);
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
  if (Status s = WriteFile(json_path, DumpJson(j) + "\n"); !s.ok()) return ReportError(s);
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
