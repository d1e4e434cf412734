// File: tools/torch_commands.h
//
// The subcommands that need a framework. They load libtorch through the plugin
// (restore/torch_plugin_loader.h) only when they run, so every other command starts without
// it.
//
//   snapshot model.pt    → RunTorchSnapshot
//   coldstart            → RunColdStart: one cold start in this process, timed phase by
//                          phase, reported as JSON on stdout (the child `stasis bench` spawns)
//   bench                → RunBench: fresh-process cold starts of the ordinary framework
//                          path and of the stasis path, side by side (docs/benchmarks.md)
#ifndef STASIS_TOOLS_TORCH_COMMANDS_H_
#define STASIS_TOOLS_TORCH_COMMANDS_H_

#include <cstdint>
#include <string>

namespace stasis::cli {

struct TorchSnapshotArgs {
  std::string input, output, device = "cpu", warmup_input, codec = "auto", chunk_size = "4MiB";
  int level = 1, threads = 0;
  bool force = false, json = false;
};
int RunTorchSnapshot(const TorchSnapshotArgs& a);

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
};
int RunColdStart(const ColdStartArgs& a);

struct BenchArgs {
  std::string model, image, device = "cpu", out = "stasis-bench", input;
  std::string codec = "raw";  // of the image bench makes when none is given
  int runs = 5;
  bool cold = false, hot = true, force_snapshot = false, yield_io = false;
  int threads = 0;
};
int RunBench(const BenchArgs& a);

}  // namespace stasis::cli

#endif  // STASIS_TOOLS_TORCH_COMMANDS_H_
