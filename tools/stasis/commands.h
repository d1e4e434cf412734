// File: tools/stasis/commands.h
//
// The subcommands of `stasis`, one file each (<name>_command.cc); main.cc parses the flags
// into these arguments and runs one. Each returns the process's exit status: statuses
// become exit codes and messages in cli_common.h and nowhere else.
//
// Commands that need a framework (`snapshot model.pt`, `bench`, `coldstart`, `serve`)
// load libtorch through the plugin (stasis/torch_plugin.h) only when they run, so every
// other command starts without it.
#ifndef STASIS_TOOLS_STASIS_COMMANDS_H_
#define STASIS_TOOLS_STASIS_COMMANDS_H_

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "stasis/image.h"
#include "stasis/status.h"

namespace stasis::cli {

// `stasis snapshot`: a safetensors checkpoint (file or index.json) or, for a zip file, a
// TorchScript module (loaded on `device`, warmed up on `warmup_input`).
struct SnapshotArgs {
  std::string input, output, codec = "auto", chunk_size = "4MiB";
  int level = 1, threads = 0;
  bool force = false, json = false, quiet = false;
  std::string device = "cpu", warmup_input;  // TorchScript only
};
// Like `export`, it refuses an output that is an input (same_file.h), removes the temporary
// files of writers that are gone (temp_files.h) and, interrupted, its own (interrupt.h): to
// be called while the process has no other thread.
int RunSnapshot(const SnapshotArgs& a);

// The image `snapshot` writes from a safetensors checkpoint (bench makes its images with it
// too): ImportSafetensors into a writer with `options`, published atomically.
StatusOr<WriterStats> WriteSafetensorsImage(const std::string& input, const std::string& output,
                                            const WriterOptions& options);

// Where and how a remote image (s3://, http(s)://) is fetched: the flags every command
// that reads an image takes (remote_flags.h).
struct RemoteArgs {
  std::string s3_endpoint;
  int concurrency = 16, retries = 6;
  double deadline = 0, stall_timeout = 20;
};

int RunInspect(const std::string& image, bool json, const RemoteArgs& remote);
int RunVerify(const std::string& image, int threads, bool json, const RemoteArgs& remote);

// The flags `restore` and `export` share (restore_options.h turns them into options).
struct RestoreArgs {
  std::string image, device = "cpu", io = "auto", direct = "auto";
  int threads = 0, queue_depth = 32;
  uint64_t staging_mb = 256;
  bool no_verify = false, no_checksums = false, json = false, digest = false;
  std::string huge_pages = "off";
  std::string map = "auto";
  RemoteArgs remote;
  std::string cache_dir, cache_max;  // --cache, --cache-max (STASIS_CACHE_DIR, STASIS_CACHE_MAX)
};
int RunRestore(const RestoreArgs& a);

// `stasis cache ls|prune DIR`: the cache tier's entries, and trimming them.
struct CacheArgs {
  std::string action, dir, max;
  bool json = false;
};
int RunCache(const CacheArgs& a);
// The guards of RunSnapshot on `output`, with the same contract.
int RunExport(const RestoreArgs& a, const std::string& output, bool force);

struct ServeArgs {
  std::string image, device = "cpu", host = "127.0.0.1", idle_timeout = "30s", on_idle = "unload",
                     token_file, log_format = "text", file_root, request_timeout = "60s",
                     max_body = "256MiB", max_output = "64MiB", retry_backoff = "1s";
  std::vector<std::string> http_inputs;  // hosts http:// inputs may come from; "*" any
  int port = 8000, max_concurrency = 1, queue = 64, threads = 0;
  bool warmup = false, verbose = false, yield_io = false;
  RemoteArgs remote;
  std::string cache_dir, cache_max;  // as RestoreArgs
};
// Serves until SIGTERM/SIGINT/SIGHUP (drain in-flight requests, release the device, exit 0) or,
// with --on-idle exit, until the idle timeout passes (exit 0).
int RunServe(const ServeArgs& a);

// "30s", "500ms", "2m", "1h", "never" (-1), or plain seconds; in nanoseconds.
bool ParseDuration(const std::string& text, int64_t* ns);

// `stasis coldstart` (hidden): one cold start in this process, timed phase by phase,
// reported as JSON on stdout; the child `stasis bench` spawns.
struct ColdStartArgs {
  std::string mode;  // "baseline" (torch::jit::load) or "stasis" (restore + bind)
  std::string path;  // model.pt for baseline, the image for stasis
  std::string device = "cpu";
  std::string input;            // input spec of the first inference (modules)
  std::string kind = "module";  // "module" (TorchScript image) or "tensors" (a checkpoint)
  int64_t spawn_ns = 0;         // CLOCK_MONOTONIC when the parent spawned this process; 0: main()
  int threads = 0;              // restore workers (stasis)
  // Load libtorch before restoring instead of alongside: bench/peers times the restore
  // alone, as its Python rows leave `import torch` out.
  bool library_first = false;
  // The restore's reads at idle I/O priority while libtorch loads (RestoreOptions::yield_io).
  bool yield_io = false;
  RemoteArgs remote;  // when `path` is a remote image
};
int RunColdStart(const ColdStartArgs& a);

// `stasis bench`: fresh-process cold starts of the ordinary framework path and of the
// stasis path, side by side (docs/benchmarks.md).
struct BenchArgs {
  std::string model, image, device = "cpu", out = "stasis-bench", input;
  std::string codec = "raw";  // of the image bench makes when none is given
  int runs = 5;
  bool cold = false, hot = true, force_snapshot = false, yield_io = false;
  int threads = 0;
  RemoteArgs remote;  // when --image is remote: passed on to each cold start
};
int RunBench(const BenchArgs& a);

// `stasis push IMAGE s3://BUCKET/KEY` (push_command.cc): a local image, once
// ImageReader::Open accepts it, uploaded as restore/io/s3_upload.h says (multipart, published
// whole or not at all, replacing the key as `aws s3 cp` does). SIGINT, SIGTERM and SIGHUP
// abort the upload, then exit 128 + the signal.
struct PushArgs {
  std::string image, location, part_size = "64MiB";
  int concurrency = 8;
  bool json = false, quiet = false;
  RemoteArgs remote;  // --s3-endpoint
};
int RunPush(const PushArgs& a);

// What an upload adds to a report: the location as messages show it, the upload's JSON
// report and the same as a line of text.
struct PushOutcome {
  std::string location;
  nlohmann::ordered_json json;
  std::string text;
};
using PushWrittenImage = std::function<StatusOr<PushOutcome>()>;
// `snapshot -o s3://BUCKET/KEY` (push_command.cc): `write` makes the image at a temporary
// path in $TMPDIR (`local.output`) and, once it is written and before it prints its report,
// calls `push`, which uploads it as `stasis push` does (default part size and concurrency,
// the endpoint from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL). The temporary file is removed
// whatever happens: an interrupt while it is written removes it and exits, one during the
// upload aborts the upload first. The key is replaced if it exists (S3 has no exclusive
// create), with or without --force. To be called while the process has no other thread.
int SnapshotToS3(
    const SnapshotArgs& a,
    const std::function<int(const SnapshotArgs& local, const PushWrittenImage& push)>& write);

}  // namespace stasis::cli

#endif  // STASIS_TOOLS_STASIS_COMMANDS_H_
