// libstasis_torch.so's implementation of stasis/torch_plugin.h: a thin layer over the
// adapter's parts (one implementation of snapshot, bind and run). Every entry point turns
// exceptions into a Status; none escapes across the dlopen boundary.
#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>

#include <exception>
#include <memory>
#include <string>
#include <utility>

#include "stasis/torch.h"
#include "stasis/torch_plugin.h"
#include "torch_adapter/archive.h"
#include "torch_adapter/baseline.h"
#include "torch_adapter/device.h"
#include "torch_adapter/exception_status.h"
#include "torch_adapter/forward.h"
#include "torch_adapter/gpt2_module.h"
#include "torch_adapter/loaded_module.h"
#include "torch_adapter/module_bind.h"
#include "torch_adapter/module_tensors.h"

namespace stasis::torch {

using internal::ExceptionStatus;

StatusOr<InferenceResult> TorchLoadedModule::Run(const std::string& input_spec) {
  return RunModule(module_, input_spec);
}

StatusOr<std::vector<TensorData>> TorchLoadedModule::Forward(
    const std::vector<TensorData>& inputs) {
  return ForwardModule(module_, inputs);
}

Status TorchLoadedModule::ToDevice(const std::string& device) {
  STASIS_ASSIGN_OR_RETURN(c10::Device target, TorchDevice(device));
  try {
    if (ModuleDevice(module_) == target) return OkStatus();
    module_.to(target);
    return OkStatus();
  } catch (...) {
    return ExceptionStatus(StatusCode::kUnavailable, "moving the module to " + device,
                           std::current_exception());
  }
}

uint64_t TorchLoadedModule::WeightBytes() const { return ModuleWeightBytes(module_); }

TorchLoadedTensors::TorchLoadedTensors(std::vector<std::pair<std::string, at::Tensor>> tensors)
    : tensors_(std::move(tensors)) {
  for (const auto& [name, t] : tensors_) bytes_ += t.nbytes();
}

StatusOr<InferenceResult> TorchLoadedTensors::Checksum() { return TensorsChecksum(tensors_); }

namespace {

class TorchPluginImpl final : public TorchPlugin {
 public:
  std::string TorchVersion() const override { return TORCH_VERSION; }

  bool CudaAvailable() const override {
    if (!LoadCudaSupport().ok()) return false;
    try {
      return ::torch::cuda::is_available();
    } catch (...) {
      return false;
    }
  }

  Status LoadDeviceSupport(const std::string& device) override {
    STASIS_ASSIGN_OR_RETURN(DeviceSpec spec, ParseDeviceSpec(device));
    return spec.kind == format::DeviceKind::kCuda ? LoadCudaSupport() : OkStatus();
  }

  bool IsTorchScript(const std::string& path) const override { return CheckTorchScript(path).ok(); }

  Status SnapshotModule(const std::string& module_path, const std::string& image_path,
                        const TorchSnapshotOptions& options, TorchSnapshotReport* report) override {
    try {
      return ::stasis::torch::SnapshotModule(module_path, image_path, options, report);
    } catch (...) {
      return ExceptionStatus(StatusCode::kInternal, "snapshot of " + module_path,
                             std::current_exception());
    }
  }

  StatusOr<std::unique_ptr<LoadedModule>> LoadModule(const std::string& path) override {
    try {
      STASIS_ASSIGN_OR_RETURN(::torch::jit::Module module, LoadTorchScript(path));
      return std::unique_ptr<LoadedModule>(new TorchLoadedModule(std::move(module)));
    } catch (...) {
      return ExceptionStatus(StatusCode::kInternal, "loading " + path, std::current_exception());
    }
  }

  StatusOr<std::unique_ptr<LoadedModule>> BindModule(std::string_view skeleton,
                                                     const RestoredModel& restored,
                                                     std::shared_ptr<void> keep_alive,
                                                     BindReport* report) override {
    try {
      STASIS_ASSIGN_OR_RETURN(::torch::jit::Module module,
                              BindSkeleton(skeleton, restored, std::move(keep_alive), report));
      return std::unique_ptr<LoadedModule>(new TorchLoadedModule(std::move(module)));
    } catch (...) {
      return ExceptionStatus(StatusCode::kInternal, "binding the skeleton",
                             std::current_exception());
    }
  }

  StatusOr<std::unique_ptr<LoadedTensors>> LoadSafetensors(const std::string& path,
                                                           const std::string& device) override {
    try {
      STASIS_ASSIGN_OR_RETURN(c10::Device target, TorchDevice(device));
      STASIS_ASSIGN_OR_RETURN(auto tensors, LoadSafetensorsTensors(path, target));
      return std::unique_ptr<LoadedTensors>(new TorchLoadedTensors(std::move(tensors)));
    } catch (...) {
      return ExceptionStatus(StatusCode::kInternal, "loading " + path, std::current_exception());
    }
  }

  StatusOr<std::unique_ptr<LoadedTensors>> BindTensors(const RestoredModel& restored,
                                                       std::shared_ptr<void> keep_alive) override {
    try {
      STASIS_ASSIGN_OR_RETURN(auto tensors, ViewRestoredTensors(restored, std::move(keep_alive)));
      return std::unique_ptr<LoadedTensors>(new TorchLoadedTensors(std::move(tensors)));
    } catch (...) {
      return ExceptionStatus(StatusCode::kInternal, "viewing the restored tensors",
                             std::current_exception());
    }
  }

  Status GenerateGpt2(const std::string& path, const Gpt2Shape& shape, uint64_t seed,
                      bool mixed) override {
    try {
      return GenerateGpt2Module(path, shape, seed, mixed);
    } catch (...) {
      return ExceptionStatus(StatusCode::kInternal, "generating " + path, std::current_exception());
    }
  }
};

}  // namespace
}  // namespace stasis::torch

extern "C" {

__attribute__((visibility("default"))) int stasis_torch_plugin_abi() {
  return stasis::torch::kTorchPluginAbi;
}

__attribute__((visibility("default"))) uint64_t stasis_torch_plugin_layout() {
  return stasis::torch::LayoutFingerprint();
}

// Process lifetime and never destroyed: the plugin may be used from static destructors,
// and libtorch's own globals may already be gone when ours would run.
__attribute__((visibility("default"))) stasis::torch::TorchPlugin* stasis_torch_plugin() {
  static stasis::torch::TorchPlugin* const plugin = new stasis::torch::TorchPluginImpl();
  return plugin;
}

}  // extern "C"
