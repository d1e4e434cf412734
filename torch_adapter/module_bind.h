// File: torch_adapter/module_bind.h
//
// Restored memory as libtorch tensors: one storage per restored region, created on first
// use, with every tensor a view of it, so tensors that shared bytes at snapshot time share
// them again (tied weights stay tied, views keep their strides). Nothing is copied,
// deserialised or initialised; every storage holds the caller's keep_alive.
#ifndef STASIS_TORCH_ADAPTER_MODULE_BIND_H_
#define STASIS_TORCH_ADAPTER_MODULE_BIND_H_

#include <torch/script.h>

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "stasis/restore.h"
#include "stasis/status.h"
#include "stasis/torch_plugin.h"

namespace stasis::torch {

// TorchPlugin::BindModule, returning the module itself: loads `skeleton` (the image's
// kSkeletonSection) and binds every parameter and buffer to the tensor of the same name in
// `restored`. Errors: kFailedPrecondition (unloaded memory, a name missing from the image,
// a dtype mismatch, a skeleton that holds weights), kDataLoss (the skeleton does not load).
StatusOr<::torch::jit::Module> BindSkeleton(std::string_view skeleton,
                                            const RestoredModel& restored,
                                            std::shared_ptr<void> keep_alive, BindReport* report);

// Views of every tensor of `restored`, in manifest order. kUnimplemented for a dtype this
// libtorch cannot hold.
StatusOr<std::vector<std::pair<std::string, at::Tensor>>> ViewRestoredTensors(
    const RestoredModel& restored, std::shared_ptr<void> keep_alive);

}  // namespace stasis::torch

#endif  // STASIS_TORCH_ADAPTER_MODULE_BIND_H_
