// File: torch_adapter/loaded_module.h
//
// The plugin's LoadedModule and LoadedTensors (stasis/torch_plugin.h) over libtorch
// objects. RestoreModule (restore_module.cc) reaches the module inside the one the
// in-process plugin bound.
#ifndef STASIS_TORCH_ADAPTER_LOADED_MODULE_H_
#define STASIS_TORCH_ADAPTER_LOADED_MODULE_H_

#include <torch/script.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "stasis/torch_plugin.h"

namespace stasis::torch {

class TorchLoadedModule final : public LoadedModule {
 public:
  explicit TorchLoadedModule(::torch::jit::Module module) : module_(std::move(module)) {}

  StatusOr<std::vector<TensorData>> Forward(const std::vector<TensorData>& inputs) override;
  StatusOr<InferenceResult> Run(const std::string& input_spec) override;
  Status ToDevice(const std::string& device) override;
  uint64_t WeightBytes() const override;

  ::torch::jit::Module& module() { return module_; }

 private:
  ::torch::jit::Module module_;
};

class TorchLoadedTensors final : public LoadedTensors {
 public:
  explicit TorchLoadedTensors(std::vector<std::pair<std::string, at::Tensor>> tensors);

  StatusOr<InferenceResult> Checksum() override;
  size_t count() const override { return tensors_.size(); }
  uint64_t bytes() const override { return bytes_; }

 private:
  std::vector<std::pair<std::string, at::Tensor>> tensors_;
  uint64_t bytes_ = 0;
};

}  // namespace stasis::torch

#endif  // STASIS_TORCH_ADAPTER_LOADED_MODULE_H_
