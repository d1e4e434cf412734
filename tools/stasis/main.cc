// The `stasis` command line: flags parsed with CLI11 into each command's arguments
// (commands.h), then one command run. Logging is set up here for every command but `serve`.
#include <CLI/CLI.hpp>
#include <string>

#include "common/logging.h"
#include "tools/stasis/cli_common.h"
#include "tools/stasis/commands.h"
#include "tools/stasis/remote_flags.h"
#include "tools/stasis/restore_options.h"

namespace {

// An upper bound alone, for flags whose command checks the lower one itself.
CLI::Validator AtMost(int max) {
  return CLI::Validator(
      [max](std::string& text) -> std::string {
        int v = 0;
        // Not a number: the conversion that follows says so.
        if (!CLI::detail::lexical_cast(text, v) || v <= max) return "";
        return "Value " + text + " is above " + std::to_string(max);
      },
      "<= " + std::to_string(max));
}

}  // namespace

int main(int argc, char** argv) {
  using namespace stasis::cli;
  CLI::App app{"stasis: snapshot model tensors into a checksummed image and restore them fast"};
  app.set_version_flag("--version", "stasis " STASIS_VERSION_STRING);
  app.require_subcommand(1);
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "log what the engine decides (to stderr)");

  SnapshotArgs snap;
  auto* snapshot = app.add_subcommand(
      "snapshot",
      "Snapshot a safetensors model (file or index.json) or a TorchScript module into an image");
  snapshot
      ->add_option("model", snap.input,
                   "model.safetensors, model.safetensors.index.json or model.pt (TorchScript)")
      ->required();
  snapshot->add_option("-o,--output", snap.output, "image to write")->required();
  snapshot->add_option("--codec", snap.codec, "auto|raw|zstd")
      ->check(CLI::IsMember({"auto", "raw", "zstd"}));
  snapshot->add_option("--level", snap.level, "zstd level (default 1)");
  snapshot->add_option("--chunk-size", snap.chunk_size, "raw bytes per chunk (default 4MiB)");
  const auto threads_range = CLI::Range(0, kMaxThreadsFlag);
  snapshot->add_option("--threads", snap.threads, "compression threads (default: all cores)")
      ->check(threads_range);
  snapshot->add_flag("--force", snap.force, "replace an existing image");
  snapshot->add_flag("--json", snap.json, "print a JSON report");
  snapshot->add_flag("-q,--quiet", snap.quiet, "no progress bar");
  snapshot->add_option("--device", snap.device,
                       "TorchScript: load and warm up the module on cpu|cuda[:N] (default cpu)");
  snapshot->add_option("--warmup-input", snap.warmup_input,
                       "TorchScript: run forward once on this input first, and record it "
                       "(e.g. i64:1x64:50257 = int64 [1,64] tokens below 50257)");

  ColdStartArgs cold;
  auto* coldstart = app.add_subcommand("coldstart", "One timed cold start (run by `bench`)");
  coldstart->group("");  // internal: not listed in --help
  coldstart->add_option("--mode", cold.mode, "baseline|stasis")->required();
  coldstart->add_option("path", cold.path, "model.pt (baseline) or image (stasis)")->required();
  coldstart->add_option("--device", cold.device);
  coldstart->add_option("--input", cold.input);
  coldstart->add_option("--kind", cold.kind, "module (default) | tensors");
  coldstart->add_option("--spawn-ns", cold.spawn_ns);
  coldstart->add_option("--threads", cold.threads)->check(threads_range);
  coldstart->add_flag("--library-first", cold.library_first);
  coldstart->add_flag("--yield-io", cold.yield_io);
  AddRemoteFlags(coldstart, &cold.remote);

  ServeArgs serve_args;
  auto* serve = app.add_subcommand(
      "serve", "Serve a TorchScript image over HTTP with a cold/warm lifecycle (docs/runtime.md)");
  serve
      ->add_option("image", serve_args.image,
                   "image made from model.pt: a path, s3://bucket/key or http(s):// URL")
      ->required();
  serve->add_option("--device", serve_args.device, "cpu|cuda[:N] (default cpu)");
  serve->add_option("--host", serve_args.host, "address to bind (default 127.0.0.1)");
  serve->add_option("--port", serve_args.port, "port (default 8000; 0: any free port)")
      ->check(CLI::Range(0, 65535));
  serve->add_option("--idle-timeout", serve_args.idle_timeout,
                    "unload (or exit) after this long without requests: 30s, 500ms, 2m, never");
  serve->add_flag("--yield-io", serve_args.yield_io,
                  "first restore at idle I/O priority while libtorch loads (helps small models "
                  "on a cold disk; docs/restore-pipeline.md)");
  serve->add_option("--retry-backoff", serve_args.retry_backoff,
                    "after a failed restore, retry it by itself this long later, doubling per "
                    "failure up to 60s (default 1s; never: only requests retry)");
  serve->add_option("--on-idle", serve_args.on_idle, "unload (default) | exit")
      ->check(CLI::IsMember({"unload", "exit"}));
  serve
      ->add_option("--max-concurrency", serve_args.max_concurrency,
                   "inferences at once (default 1)")
      ->check(AtMost(kMaxThreadsFlag));
  serve->add_option("--queue", serve_args.queue, "inferences waiting; more get 503 (default 64)")
      ->check(AtMost(1 << 16));
  serve->add_option("--request-timeout", serve_args.request_timeout,
                    "longest wait for a slot (default 60s)");
  serve->add_option("--max-body", serve_args.max_body,
                    "largest request body, after decompression (default 256MiB)");
  serve->add_option("--max-output", serve_args.max_output,
                    "largest inference answer; larger ones get 413 (default 64MiB)");
  serve->add_option("--file-root", serve_args.file_root,
                    "directory file:// inputs may be read from (default: none allowed)");
  serve
      ->add_option("--http-inputs", serve_args.http_inputs,
                   "hosts http:// inputs may be fetched from: HOST or HOST:PORT, comma-separated, "
                   "* for any (default: none allowed)")
      ->delimiter(',');
  serve
      ->add_option("--threads", serve_args.threads,
                   "threads running inferences and admin calls (connections need none)")
      ->check(threads_range);
  serve->add_flag("--warmup", serve_args.warmup, "restore at start, not on the first request");
  serve->add_option("--token-file", serve_args.token_file,
                    "require 'Authorization: Bearer <token>' (all but /healthz)");
  serve->add_option("--log-format", serve_args.log_format, "text (default) | json")
      ->check(CLI::IsMember({"text", "json"}));
  AddRemoteFlags(serve, &serve_args.remote);
  serve->add_option("--cache", serve_args.cache_dir,
                    "local cache tier for a remote image: filled by the first restore, used by "
                    "every later one, across unloads and restarts (default: STASIS_CACHE_DIR)");
  serve->add_option("--cache-max", serve_args.cache_max,
                    "evict least recently used entries beyond this size (default: "
                    "STASIS_CACHE_MAX, else no bound)");

  BenchArgs bench_args;
  auto* bench = app.add_subcommand(
      "bench",
      "Cold starts in fresh processes: torch::jit::load (or a safetensors read) vs stasis");
  bench
      ->add_option("model", bench_args.model,
                   "TorchScript model (model.pt) or a safetensors checkpoint")
      ->required();
  bench->add_option("--image", bench_args.image,
                    "its stasis image (default: <out>/<model>.stasis, made when missing)");
  bench->add_option("--device", bench_args.device, "cpu|cuda[:N] (default cpu)");
  bench->add_option("--runs", bench_args.runs, "runs per path and cache state (default 5)");
  bench->add_option("--input", bench_args.input,
                    "input of the first inference (default: the one the image records)");
  bench->add_option("--out", bench_args.out, "where bench.json and bench.svg go");
  bench
      ->add_option("--codec", bench_args.codec,
                   "codec of the image bench makes: raw (default: a page-cache-hot raw image "
                   "is mapped, not copied) | auto | zstd")
      ->check(CLI::IsMember({"auto", "raw", "zstd"}));
  bench->add_option("--threads", bench_args.threads, "restore workers (default: all cores)")
      ->check(threads_range);
  bench->add_flag("--cold", bench_args.cold, "also measure with the page cache dropped");
  bench->add_flag("!--no-hot", bench_args.hot, "skip the page-cache-hot runs");
  bench->add_flag("--resnapshot", bench_args.force_snapshot, "snapshot again even if fresh");
  bench->add_flag("--yield-io", bench_args.yield_io,
                  "stasis path: restore at idle I/O priority while libtorch loads");
  AddRemoteFlags(bench, &bench_args.remote);

  PushArgs push_args;
  auto* push = app.add_subcommand(
      "push",
      "Upload an image to s3://BUCKET/KEY (multipart, in parallel; published whole or "
      "not at all)");
  push->add_option("image", push_args.image, "a local image")->required();
  push->add_option("location", push_args.location, "s3://BUCKET/KEY (replaced if it exists)")
      ->required();
  push->add_option("--s3-endpoint", push_args.remote.s3_endpoint,
                   "S3 endpoint URL, addressed path-style (default: AWS_ENDPOINT_URL_S3, "
                   "AWS_ENDPOINT_URL, else AWS)");
  push->add_option("--part-size", push_args.part_size,
                   "bytes per part, 5MiB..5GiB (default 64MiB; grown past 10000 parts)");
  push->add_option("--concurrency", push_args.concurrency,
                   "parts in flight, each with a buffer of --part-size (default 8)")
      ->check(CLI::Range(1, 64));
  push->add_flag("--json", push_args.json, "print a JSON report");
  push->add_flag("-q,--quiet", push_args.quiet, "no progress bar");

  std::string image, output;
  bool json = false, force = false;
  int threads = 0;
  auto* inspect = app.add_subcommand(
      "inspect", "Show an image's regions, tensors, sections, metadata and codec mix");
  RemoteArgs remote;
  inspect->add_option("image", image, "image: a path, s3://bucket/key or http(s):// URL")
      ->required();
  inspect->add_flag("--json", json);
  AddRemoteFlags(inspect, &remote);

  auto* verify =
      app.add_subcommand("verify", "Check every byte of an image; exit 0 only if intact");
  verify->add_option("image", image, "image: a path, s3://bucket/key or http(s):// URL")
      ->required();
  verify->add_option("--threads", threads)->check(threads_range);
  verify->add_flag("--json", json);
  AddRemoteFlags(verify, &remote);

  RestoreArgs restore_args;
  auto* restore =
      app.add_subcommand("restore", "Restore an image onto a device and report each phase");
  restore->add_option("image", restore_args.image, "a path, s3://bucket/key or http(s):// URL")
      ->required();
  restore->add_option("--device", restore_args.device, "cpu|cuda[:N] (default cpu)");
  AddRestoreFlags(restore, &restore_args);
  restore->add_flag("--digest", restore_args.digest,
                    "then print a digest of every tensor's bytes (as bench/peers computes it)");

  RestoreArgs export_args;
  auto* exp = app.add_subcommand("export", "Restore an image to host memory and write safetensors");
  exp->add_option("image", export_args.image, "a path, s3://bucket/key or http(s):// URL")
      ->required();
  exp->add_option("-o,--output", output)->required();
  exp->add_flag("--force", force, "replace an existing output file");
  AddRestoreFlags(exp, &export_args);

  CacheArgs cache_args;
  auto* cache = app.add_subcommand(
      "cache", "The local cache tier of remote images: ls (least recently used first) | prune");
  cache->add_option("action", cache_args.action, "ls | prune")
      ->required()
      ->check(CLI::IsMember({"ls", "prune"}));
  cache->add_option("dir", cache_args.dir, "the cache (default: STASIS_CACHE_DIR)");
  cache->add_option("--max", cache_args.max,
                    "prune: keep at most this much, least recently used removed first (default: "
                    "STASIS_CACHE_MAX; without either, only abandoned partial entries go)");
  cache->add_flag("--json", cache_args.json);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }
  // Logs go to stderr, never stdout: --json output must stay parseable.
  // `serve` sets up its own logging (--log-format); InitLogging runs once per process.
  if (!*serve) stasis::InitLogging(stasis::LogFormat::kText, verbose ? "info" : "warn");
  if (*snapshot) return RunSnapshot(snap);
  if (*coldstart) return RunColdStart(cold);
  if (*serve) {
    serve_args.verbose = verbose;
    return RunServe(serve_args);
  }
  if (*bench) return RunBench(bench_args);
  if (*push) return RunPush(push_args);
  if (*inspect) return RunInspect(image, json, remote);
  if (*verify) return RunVerify(image, threads, json, remote);
  if (*restore) return RunRestore(restore_args);
  if (*exp) return RunExport(export_args, output, force);
  if (*cache) return RunCache(cache_args);
  return kExitUsage;
}
