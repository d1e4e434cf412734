// File: stasis/torch_plugin.h
//
// libtorch for programs that do not link it. Loading libtorch costs about 0.4 s
// (relocations and operator registration), so the `stasis` binary never links it:
// `restore`, `inspect`, `verify` and `export` run without it, and the commands that need a
// framework (`snapshot model.pt`, `bench`, `serve`, the cold-start children) load
// libstasis_torch.so at run time (LoadTorchPlugin below) and talk to it through the
// TorchPlugin interface. Nothing here has a libtorch type, so this header compiles
// everywhere; programs that link libtorch themselves use stasis/torch.h instead.
//
//   auto cold = stasis::torch::RestoreAndBind("gpt2.stasis", {});   // restore ∥ load libtorch
//   if (!cold.ok()) ...;
//   auto outputs = cold->module->Forward(inputs);
//
// libstasis_torch.so carries its own copy of the stasis libraries; objects cross the
// boundary only as the plain types below and the RestoredModel it is given (same code,
// same layout, so either copy can read it). The loader checks an ABI number and a
// fingerprint of those types' sizes, and refuses a plugin built from other sources.
//
// Errors are Status values; no exception crosses the boundary.
// Thread safety: a TorchPlugin may be used from several threads; a LoadedModule from one
// thread at a time. LoadTorchPlugin and RestoreAndBind may be called from any thread.
#ifndef STASIS_TORCH_PLUGIN_H_
#define STASIS_TORCH_PLUGIN_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "stasis/image.h"
#include "stasis/restore.h"
#include "stasis/status.h"
#include "stasis/tensor.h"

namespace stasis::torch {

// Bumped whenever this header changes incompatibly; the loader refuses a plugin whose
// stasis_torch_plugin_abi() differs.
inline constexpr int kTorchPluginAbi = 5;

// Image section holding the TorchScript archive with every parameter and buffer emptied
// (numel 0), and the metadata keys a TorchScript snapshot records.
inline constexpr char kSkeletonSection[] = "torch.skeleton";
inline constexpr char kModelKindKey[] = "stasis.model_kind";  // "torchscript" | "tensors"
inline constexpr char kTorchVersionKey[] = "torch.version";
inline constexpr char kTorchDeviceKey[] = "torch.device";         // device at snapshot time
inline constexpr char kTorchInputSpecKey[] = "torch.input_spec";  // warmup input, if any

struct TorchSnapshotOptions {
  std::string device = "cpu";  // where the module is loaded and warmed up: cpu, cuda[:N]
  // Empty: no warmup forward. Otherwise an input spec (below); it is run once before the
  // snapshot (so lazily created buffers exist) and recorded in the image metadata so that
  // `stasis bench` feeds both paths the same input.
  std::string warmup_input;
  WriterOptions writer;
};

struct TorchSnapshotReport {
  std::string torch_version;
  size_t parameters = 0;        // named parameters (aliases counted once per name)
  size_t buffers = 0;           // named buffers
  size_t storages = 0;          // distinct storages stored
  uint64_t tensor_bytes = 0;    // bytes of all tensors, counting aliases each time
  uint64_t stored_bytes = 0;    // region bytes stored (aliases once)
  uint64_t skeleton_bytes = 0;  // size of the skeleton section
  WriterStats writer;
};

// Input spec: "<dtype>:<d0>x<d1>x...[:<high>]" with dtype one of i64, i32, f32, bf16, f16.
// Integers are drawn uniformly from [0, high) (high defaults to 2), floats from N(0, 1),
// with a fixed seed, so the same spec always yields the same bytes. Example: "i64:1x64:1000".

// The summary of one forward pass: enough to prove two runs gave the same output.
struct InferenceResult {
  std::string dtype;  // e.g. "F32"
  std::vector<int64_t> shape;
  uint64_t xxh3 = 0;   // of the output's bytes, made contiguous on the cpu
  double seconds = 0;  // wall time of forward + copy of the output to the cpu
};

// How a module was bound to restored memory (the proof that no weight was deserialised).
struct BindReport {
  size_t parameters_bound = 0;
  size_t buffers_bound = 0;
  // Parameters and buffers of the skeleton that held data before binding; a correct
  // skeleton has none (every weight comes from the image).
  size_t nonempty_before_binding = 0;
  double skeleton_load_seconds = 0;
  double bind_seconds = 0;
};

// The sizes of a GPT-2-shaped module (HF GPT2LMHeadModel's names).
struct Gpt2Shape {
  int n_layer = 0;
  int64_t n_embd = 0;  // a multiple of n_head
  int64_t vocab = 0;
  int64_t n_ctx = 0;  // positions: the longest input
  int64_t n_head = 0;
};

class LoadedModule {
 public:
  virtual ~LoadedModule() = default;
  // forward(*inputs) under inference mode: inputs are copied onto the module's device, the
  // result (a tensor, or a tuple/list of tensors) comes back on the cpu, contiguous, named
  // "output" or "output.<i>". Errors: kInvalidArgument (wrong arity, dtype or shape: the
  // framework's message), kResourceExhausted (out of memory), kUnimplemented (a dtype or
  // output kind stasis cannot carry).
  virtual StatusOr<std::vector<TensorData>> Forward(const std::vector<TensorData>& inputs) = 0;
  // Runs forward() once on the input `input_spec` describes (created on the module's
  // device), under inference mode.
  virtual StatusOr<InferenceResult> Run(const std::string& input_spec) = 0;
  // Moves the module to `device` (the ordinary path's `.to(device)`); a no-op when it is
  // already there.
  virtual Status ToDevice(const std::string& device) = 0;
  // Bytes of all parameters and buffers (aliases once).
  virtual uint64_t WeightBytes() const = 0;
};

// Framework tensors without a module (a safetensors checkpoint), for `stasis bench`.
class LoadedTensors {
 public:
  virtual ~LoadedTensors() = default;
  // The "first result" of a checkpoint load: the xxh3 of every tensor's bytes (contiguous,
  // on the cpu), combined in name order; dtype "U64", shape [count]. Both paths of `stasis
  // bench` compute it, so equal values prove equal bytes.
  virtual StatusOr<InferenceResult> Checksum() = 0;
  virtual size_t count() const = 0;
  virtual uint64_t bytes() const = 0;
};

class TorchPlugin {
 public:
  virtual ~TorchPlugin() = default;
  virtual std::string TorchVersion() const = 0;
  virtual bool CudaAvailable() const = 0;

  // Loads what libtorch needs for `device` beyond its CPU part (libtorch_cuda for a cuda
  // device; nothing for cpu). Call it before anything else touches that device: ATen
  // decides once per process whether CUDA exists. Errors: those of TorchDevice's parsing,
  // and kUnavailable when this libtorch has no CUDA part.
  virtual Status LoadDeviceSupport(const std::string& device) = 0;

  // True when `path` is a TorchScript archive (a zip with a data.pkl), without loading it.
  virtual bool IsTorchScript(const std::string& path) const = 0;

  // `stasis snapshot model.pt`: loads the module the ordinary way on options.device, runs
  // the warmup, stores every storage once (aliases become views), embeds the skeleton and
  // writes the image atomically. Errors: kInvalidArgument (not TorchScript, bad spec),
  // kNotFound, kUnavailable (device), writer errors.
  virtual Status SnapshotModule(const std::string& module_path, const std::string& image_path,
                                const TorchSnapshotOptions& options,
                                TorchSnapshotReport* report) = 0;

  // The ordinary path: torch::jit::load(path) onto the cpu (then ToDevice).
  virtual StatusOr<std::unique_ptr<LoadedModule>> LoadModule(const std::string& path) = 0;

  // The stasis path: loads `skeleton` (the image's kSkeletonSection) and binds every
  // parameter and buffer to the tensor of the same name in `restored`, without copying or
  // initialising any weight. Storages alias the restored regions (tensors that shared a
  // storage at snapshot time share one after binding). Every bound storage holds a copy
  // of `keep_alive`, which must own `restored`. Errors: kFailedPrecondition (a name missing
  // from the image, dtype/shape mismatch, a non-empty skeleton weight), kDataLoss (the
  // skeleton does not load).
  virtual StatusOr<std::unique_ptr<LoadedModule>> BindModule(std::string_view skeleton,
                                                             const RestoredModel& restored,
                                                             std::shared_ptr<void> keep_alive,
                                                             BindReport* report) = 0;

  // The ordinary path for a safetensors file: read it into host memory, make a tensor of
  // each entry (views of that buffer), and move them to `device` (cpu: no copy).
  // Errors: the safetensors parser's (kInvalidArgument, kNotFound, ...), kUnavailable.
  virtual StatusOr<std::unique_ptr<LoadedTensors>> LoadSafetensors(const std::string& path,
                                                                   const std::string& device) = 0;
  // The stasis path: every tensor of `restored` as a view of its restored region (no copy);
  // every storage holds a copy of `keep_alive`, which must own `restored`.
  virtual StatusOr<std::unique_ptr<LoadedTensors>> BindTensors(
      const RestoredModel& restored, std::shared_ptr<void> keep_alive) = 0;

  // Writes a seeded GPT-2-shaped TorchScript module of `shape` (the demo models:
  // tools/genmodel/gpt2_presets.h, docs/benchmarks.md). `mixed` stores some weights as
  // bf16/f16 and adds a transposed parameter (tests); otherwise every weight is f32.
  virtual Status GenerateGpt2(const std::string& path, const Gpt2Shape& shape, uint64_t seed,
                              bool mixed) = 0;
};

// The sizes of the types that cross the boundary, folded into one number. The plugin
// exports the value it was compiled with and the loader compares it with its own, so a
// plugin built from other sources (a stale build, a mixed installation) is refused instead
// of reading a RestoredModel with another layout.
constexpr uint64_t LayoutFingerprint() {
  uint64_t h = 1469598103934665603ull;
  for (uint64_t v :
       {sizeof(RestoredModel), sizeof(RestoreReport), sizeof(RestoredTensor), sizeof(MappedRegion),
        sizeof(RestoreOptions), sizeof(TorchSnapshotOptions), sizeof(WriterOptions),
        sizeof(InferenceResult), sizeof(BindReport), sizeof(TorchSnapshotReport),
        sizeof(format::Manifest), sizeof(Status), sizeof(TensorData), sizeof(Gpt2Shape)}) {
    h = (h ^ v) * 1099511628211ull;
  }
  return h;
}

// ---- Loading the plugin ----

inline constexpr char kTorchPluginFile[] = "libstasis_torch.so";

// Finds and loads libstasis_torch.so on first use (later calls return the same plugin or
// error), so that programs which never need a framework never pay for libtorch. Search
// order: $STASIS_TORCH_PLUGIN (a path to the library), the directory of the running
// executable, <that directory>/../lib, then the dynamic linker's own search path. The
// library is never unloaded (libtorch does not support dlclose).
// Errors: kFailedPrecondition naming every place searched and the loader's message (no
// plugin: stasis was built without libtorch, or libtorch is not installed), or a plugin
// whose ABI number or type layouts differ from this program's (a stale or mixed build).
StatusOr<TorchPlugin*> LoadTorchPlugin();

// LoadTorchPlugin, then what libtorch needs for `device` (TorchPlugin::LoadDeviceSupport:
// libtorch_cuda for a cuda device). What a caller that will use `device` loads first.
StatusOr<TorchPlugin*> LoadTorchPluginFor(const std::string& device);

// ---- Cold starts: the weights restored while the framework loads ----

// Brings the framework up for a device: LoadTorchPluginFor in a program without libtorch
// (the default); libstasis_torch.so passes its own plugin.
using FrameworkLoader = std::function<StatusOr<TorchPlugin*>(const DeviceSpec& device)>;

struct ColdStartOptions {
  // Where and how to restore. restore.yield_io is used as given unless loading_framework is
  // set, which replaces it.
  RestoreOptions restore;
  // When set, *loading_framework is true while the framework loads, and the restore's reads
  // go at idle I/O priority meanwhile (RestoreOptions::yield_io): the loader's page faults
  // are not queued behind a deep restore. The flag must outlive the restored model, which
  // every tensor bound to it keeps alive (a Reload reads through the flag again).
  std::atomic<bool>* loading_framework = nullptr;
  // Load the framework first and restore after, instead of both at once (to time the
  // restore alone, as bench/peers does).
  bool framework_first = false;
};

// What a cold start produced, and when each part was done (CLOCK_MONOTONIC nanoseconds).
struct ColdStart {
  TorchPlugin* plugin = nullptr;
  std::shared_ptr<RestoredModel> restored;  // held by every tensor bound to it
  int64_t started_ns = 0;
  int64_t framework_loaded_ns = 0;
  int64_t restored_ns = 0;
};

// A cold start of a TorchScript image: the module bound to the restored weights.
struct BoundColdStart : ColdStart {
  std::unique_ptr<LoadedModule> module;
  BindReport bind;
  int64_t bound_ns = 0;
};

// Restores `image` (RestoredModel::Restore with options.restore) on a thread of its own
// while `load` brings the framework up on the calling thread (with framework_first: the
// framework, then the restore, both on the calling thread, and no restore when the
// framework fails). Errors: the framework's, then the restore's (both are waited for); an
// exception from either, or from the plugin, is a Status (kResourceExhausted for memory,
// kInternal otherwise).
StatusOr<ColdStart> RestoreWhileLoading(const std::string& image, const ColdStartOptions& options,
                                        const FrameworkLoader& load = {});

// The cold start of a TorchScript image (made by TorchPlugin::SnapshotModule): its skeleton
// is read before any weight, the weights are restored while the framework loads
// (RestoreWhileLoading), and the skeleton is bound to them (TorchPlugin::BindModule).
// Errors: kFailedPrecondition for an image without a skeleton (one made from safetensors:
// bind its tensors with TorchPlugin::BindTensors), naming what the image holds; kAborted
// when the image was replaced during the cold start (the restored image's skeleton differs
// from the one read first); RestoreWhileLoading's; BindModule's.
StatusOr<BoundColdStart> RestoreAndBind(const std::string& image, const ColdStartOptions& options,
                                        const FrameworkLoader& load = {});

}  // namespace stasis::torch

// The plugin's entry points (extern "C" so dlsym finds them unmangled).
extern "C" {
int stasis_torch_plugin_abi();
uint64_t stasis_torch_plugin_layout();  // LayoutFingerprint() as the plugin was compiled
stasis::torch::TorchPlugin* stasis_torch_plugin();
}

#endif  // STASIS_TORCH_PLUGIN_H_
