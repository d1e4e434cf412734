// File: stasis/torch.h
//
// stasis for programs that link libtorch (and libstasis_torch.so) themselves. Programs
// that do not reach the same code through stasis/torch_plugin.h.
//
//   auto bound = stasis::torch::RestoreModule("gpt2.stasis");
//   if (!bound.ok()) ...;
//   bound->module.forward({input});   // weights live in bound->restored
//
// RestoreModule restores the image's regions (RestoredModel::Restore), loads the
// TorchScript skeleton stored in the image (code and structure, every weight emptied) and
// binds each parameter and buffer to a view of the restored memory: no weight is read,
// copied or initialised by libtorch. Tensors that shared a storage when the image was taken
// (tied weights, views) share one again, with the same strides.
//
// Lifetime: every bound storage holds a reference to the RestoredModel, so the memory lives
// as long as any tensor viewing it (the `restored` member may be dropped). Unload()/Reload()
// on it keep the addresses, so bound tensors survive a cycle. While unloaded they must not
// be touched: on the host their contents are undefined, and on a GPU the addresses are
// unmapped, so a kernel reading them is an illegal-address error that breaks the process's
// CUDA context for good (the runtime's lifecycle runs no inference while unloaded).
//
// Errors are Status values; no exception (c10::Error or other) escapes any function here.
// Thread safety: the functions are reentrant; a returned module is used like any other.
#ifndef STASIS_TORCH_H_
#define STASIS_TORCH_H_

#include <torch/script.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "stasis/restore.h"
#include "stasis/status.h"
#include "stasis/torch_plugin.h"

namespace stasis::torch {

// A TorchScript module whose weights live in restored memory.
struct BoundModule {
  ::torch::jit::Module module;
  std::shared_ptr<RestoredModel> restored;
  BindReport bind;
};

// Restores `image` (a TorchScript snapshot, see SnapshotModule) onto options.device and
// binds the module to it: RestoreAndBind (stasis/torch_plugin.h) in this process. Errors:
// RestoreAndBind's (kFailedPrecondition for an image without a skeleton, e.g. one made from
// safetensors: use RestoreTensors; kAborted for an image replaced meanwhile), those of
// RestoredModel::Restore, BindModule's (kFailedPrecondition, kDataLoss for a corrupted or
// unloadable skeleton), kUnavailable when libtorch cannot use the device.
StatusOr<BoundModule> RestoreModule(const std::string& image, const RestoreOptions& options = {});

// Restores any image and returns every tensor, in manifest order, as a view of its
// restored region (no copy). Each tensor's storage keeps the RestoredModel alive.
// Errors: as RestoreModule, plus kUnimplemented for a dtype this libtorch cannot hold.
StatusOr<std::vector<std::pair<std::string, at::Tensor>>> RestoreTensors(
    const std::string& image, const RestoreOptions& options = {});

// Snapshots the TorchScript module at `module_path` into an image at `image_path`
// (TorchPlugin::SnapshotModule): loaded on options.device, warmed up on
// options.warmup_input, every storage stored once, the skeleton embedded; written
// atomically. Errors: kInvalidArgument (not TorchScript, bad input spec), kNotFound,
// kUnavailable (device), kFailedPrecondition (weights outside parameters and buffers),
// the writer's.
Status SnapshotModule(const std::string& module_path, const std::string& image_path,
                      const TorchSnapshotOptions& options, TorchSnapshotReport* report);

// libstasis_torch.so links only libtorch's CPU part (libtorch_cpu, libc10), so a process
// that restores onto the CPU never loads the CUDA part and its libraries (cuBLAS, cuDNN,
// NCCL). This loads libtorch_cuda.so, from libtorch_cpu's directory, once per process; it
// must run before anything asks ATen about CUDA, which caches its answer on first use (the
// functions here call it for a cuda device). A program that links libtorch_cuda itself gets
// the loaded copy. Thread-safe. Errors: kUnavailable when this libtorch has no CUDA part
// (Debian's is CPU-only), with the loader's message.
Status LoadCudaSupport();

}  // namespace stasis::torch

#endif  // STASIS_TORCH_H_
