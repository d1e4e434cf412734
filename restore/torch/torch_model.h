// File: restore/torch/torch_model.h
//
// The libtorch side of stasis, for programs that link libtorch (and libstasis_torch.so)
// themselves. The `stasis` binary never includes this header: it reaches the same code
// through the plain interface of torch_plugin.h.
//
//   auto restored = stasis::torch::RestoreModule("gpt2.stasis");
//   if (!restored.ok()) ...;
//   restored->module.forward({input});   // weights live in restored->memory
//
// RestoreModule restores the image's regions (RestoredModel::Restore), loads the
// TorchScript skeleton stored in the image (code and structure, every weight emptied) and
// binds each parameter and buffer to a view of the restored memory: no weight is read,
// copied or initialised by libtorch. Tensors that shared a storage when the image was taken
// (tied weights, views) share one again, with the same strides.
//
// Lifetime: every bound storage holds a reference to the RestoredModel, so the memory lives
// as long as any tensor viewing it (the `memory` member may be dropped). Unload()/Reload()
// on it keep the addresses, so bound tensors survive a cycle. While unloaded they must not
// be touched: on the host their contents are undefined, and on a GPU the addresses are
// unmapped, so a kernel reading them is an illegal-address error that breaks the process's
// CUDA context for good (the runtime's lifecycle runs no inference while unloaded).
//
// Errors are Status values; no exception (c10::Error or other) escapes any function here.
// Thread safety: the functions are reentrant; a returned module is used like any other.
#ifndef STASIS_RESTORE_TORCH_TORCH_MODEL_H_
#define STASIS_RESTORE_TORCH_TORCH_MODEL_H_

#include <torch/script.h>

#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "restore/restored_model.h"
#include "restore/torch/torch_plugin.h"
#include "snapshot/dtype.h"

namespace stasis::torch {

// A TorchScript module whose weights live in restored memory.
struct RestoredModule {
  ::torch::jit::Module module;
  std::shared_ptr<RestoredModel> memory;
  BindReport bind;
};

// Restores `image` (a TorchScript snapshot, see SnapshotModule) onto options.device and
// binds the module to it. For a cuda device the CUDA VMM backend is used unless
// options.backend_factory is set. Errors: those of RestoredModel::Restore and ImageReader;
// kFailedPrecondition for an image without a skeleton (e.g. one made from safetensors: use
// RestoreTensors) and for everything BindSkeleton rejects; kDataLoss for a corrupted or
// unloadable skeleton; kUnavailable when libtorch cannot use the device; kUnimplemented
// for cuda in a stasis built without CUDA.
StatusOr<RestoredModule> RestoreModule(const std::string& image,
                                       const RestoreOptions& options = {});

// Restores any image and returns every tensor, in manifest order, as a view of its
// restored region (no copy). Each tensor's storage keeps the RestoredModel alive.
// Errors: as RestoreModule, plus kUnimplemented for a dtype this libtorch cannot hold.
StatusOr<std::vector<std::pair<std::string, at::Tensor>>> RestoreTensors(
    const std::string& image, const RestoreOptions& options = {});

// ---- The pieces the plugin (torch_plugin.cc) is made of. ----

namespace internal {
// The Status for the exception `error` (a c10::Error or anything else), as "context:
// message" with `code`, or kResourceExhausted when it reports running out of memory.
// Used in a `catch (...)` at every entry point, so no exception escapes.
Status ExceptionStatus(StatusCode code, std::string_view context, std::exception_ptr error);
}  // namespace internal

// stasis dtype ↔ libtorch scalar type (Bool, U8, I8, I16, I32, I64, F16, F32, F64, BF16,
// C64); nullopt for the others.
std::optional<at::ScalarType> ToScalarType(DType dtype);
std::optional<DType> ToDType(at::ScalarType type);

// Validates a device string (cpu, cuda, cuda:N) and that this libtorch can use it (for
// cuda, after LoadCudaSupport). kInvalidArgument for a malformed string, kUnavailable when
// CUDA is not usable, kNotFound for an ordinal past the devices present.
StatusOr<c10::Device> TorchDevice(std::string_view device);

// libstasis_torch.so links only libtorch's CPU part (libtorch_cpu, libc10), so a process
// that restores onto the CPU never loads the CUDA part and its libraries (cuBLAS, cuDNN,
// NCCL: 0.11 s of the 0.29 s that PyTorch 2.11's libtorch.so takes to load here). This
// loads libtorch_cuda.so, from libtorch_cpu's directory, once per process; it must run
// before anything asks ATen about CUDA, which caches its answer on first use. A program
// that links libtorch_cuda itself gets the loaded copy. Thread-safe. Errors: kUnavailable
// when this libtorch has no CUDA part (Debian's is CPU-only), with the loader's message.
Status LoadCudaSupport();

// OK when `path` is a TorchScript archive: a zip file (local-file magic "PK\3\4") whose
// central directory has an entry ending in "data.pkl". kNotFound (no file),
// kInvalidArgument "<path> is not a TorchScript archive (...)", I/O errors.
Status CheckTorchScript(const std::string& path);

// CheckTorchScript, then torch::jit::load onto the cpu. kInvalidArgument when the archive
// does not load.
StatusOr<::torch::jit::Module> LoadTorchScript(const std::string& path);

// An input spec (torch_plugin.h): "<dtype>:<d0>x<d1>...[:<high>]".
struct InputSpec {
  at::ScalarType type = at::kLong;
  std::vector<int64_t> shape;
  int64_t high = 2;  // integers only
};
StatusOr<InputSpec> ParseInputSpec(std::string_view spec);
// The input a spec describes, on `device`. Bytes are generated on the host from a fixed
// seed (not with torch's generators), so they are the same for every libtorch version.
StatusOr<at::Tensor> MakeInput(const InputSpec& spec, const c10::Device& device);

// Runs module.forward(input) once under inference mode, with the input built on the
// device of the module's first parameter (or buffer; cpu if it has none).
StatusOr<InferenceResult> RunModule(::torch::jit::Module& module, std::string_view input_spec);

// module.forward(*inputs) under inference mode (LoadedModule::Forward in torch_plugin.h).
StatusOr<std::vector<TensorData>> ForwardModule(::torch::jit::Module& module,
                                                const std::vector<TensorData>& inputs);

// Views of every tensor of `memory` (RestoreTensors without the restore), in manifest order.
StatusOr<std::vector<std::pair<std::string, at::Tensor>>> ViewRestoredTensors(
    const RestoredModel& memory, std::shared_ptr<void> keep_alive);

// Reads a safetensors file into one host buffer and returns its entries as tensors viewing
// it (the buffer lives as long as they do), moved to `device`.
StatusOr<std::vector<std::pair<std::string, at::Tensor>>> LoadSafetensorsTensors(
    const std::string& path, const c10::Device& device);

// LoadedTensors::Checksum over named tensors.
StatusOr<InferenceResult> TensorsChecksum(
    const std::vector<std::pair<std::string, at::Tensor>>& tensors);

// The device the module's weights are on (first parameter, else first buffer, else cpu).
c10::Device ModuleDevice(const ::torch::jit::Module& module);

// Bytes of the module's distinct storages.
uint64_t ModuleWeightBytes(const ::torch::jit::Module& module);

// TorchPlugin::SnapshotModule.
Status SnapshotModule(const std::string& module_path, const std::string& image_path,
                      const TorchSnapshotOptions& options, TorchSnapshotReport* report);

// TorchPlugin::BindModule, returning the module itself.
StatusOr<::torch::jit::Module> BindSkeleton(std::string_view skeleton, const RestoredModel& memory,
                                            std::shared_ptr<void> keep_alive, BindReport* report);

}  // namespace stasis::torch

#endif  // STASIS_RESTORE_TORCH_TORCH_MODEL_H_
