// The ModelHost that serves a TorchScript image: restore with RestoredModel, bind through the
// torch plugin once, and afterwards Unload()/Reload() the same regions, so the bound module's
// tensors stay valid across idle cycles without rebinding.
#include <atomic>
#include <mutex>
#include <thread>

#include "restore/default_backend.h"
#include "restore/torch_plugin_loader.h"
#include "runtime/model_host.h"

namespace stasis::runtime {
namespace {

class TorchModelHost final : public ModelHost {
 public:
  TorchModelHost(std::string image, RestoreOptions options, bool yield_io)
      : image_(std::move(image)),
        options_(WithYield(std::move(options), yield_io ? &loading_framework_ : nullptr)) {}

  Status Load(RestoreReport* report) override {
    if (memory_ == nullptr) {
      STASIS_RETURN_IF_ERROR(FirstLoad());
    } else {
      STASIS_RETURN_IF_ERROR(memory_->Reload());
    }
    device_bytes_.store(memory_->device_bytes(), std::memory_order_relaxed);
    if (report != nullptr) *report = memory_->report();
    return OkStatus();
  }

  Status Unload() override {
    if (memory_ == nullptr) return OkStatus();
    Status s = memory_->Unload();
    device_bytes_.store(memory_->device_bytes(), std::memory_order_relaxed);
    return s;
  }

  StatusOr<std::vector<TensorData>> Infer(const std::vector<TensorData>& inputs) override {
    if (module_ == nullptr || memory_ == nullptr || !memory_->loaded())
      return FailedPreconditionError("the model is not loaded");
    return module_->Forward(inputs);
  }

  uint64_t DeviceBytes() const override { return device_bytes_.load(std::memory_order_relaxed); }

  std::string Describe() const override {
    return image_ + " on " + DeviceSpecString(options_.device);
  }

 private:
  // The first cold start: the weights are restored on worker threads while libtorch loads
  // (the plugin), as in `stasis coldstart`; then the skeleton is bound once.
  Status FirstLoad() {
    StatusOr<std::unique_ptr<RestoredModel>> restored = InternalError("restore did not run");
    loading_framework_ = true;  // with --yield-io, the restore's reads behind libtorch's faults
    std::thread restorer([&] { restored = RestoredModel::Restore(image_, options_); });
    StatusOr<torch::TorchPlugin*> plugin =
        torch::LoadTorchPluginFor(DeviceSpecString(options_.device));
    loading_framework_ = false;
    restorer.join();
    STASIS_RETURN_IF_ERROR(plugin.status());
    STASIS_RETURN_IF_ERROR(restored.status());
    std::shared_ptr<RestoredModel> memory(std::move(*restored));
    auto skeleton = memory->ReadSection(torch::kSkeletonSection);
    if (!skeleton.ok()) {
      if (skeleton.status().code() == StatusCode::kNotFound)
        return FailedPreconditionError(image_ +
                                       " holds no TorchScript module (no skeleton section): "
                                       "`stasis serve` needs an image made from model.pt");
      return skeleton.status();
    }
    torch::BindReport bind;
    STASIS_ASSIGN_OR_RETURN(std::unique_ptr<torch::LoadedModule> module,
                            (*plugin)->BindModule(*skeleton, *memory, memory, &bind));
    memory_ = std::move(memory);
    module_ = std::move(module);
    return OkStatus();
  }

  static RestoreOptions WithYield(RestoreOptions o, const std::atomic<bool>* flag) {
    o.yield_io = flag;
    return o;
  }

  std::atomic<bool> loading_framework_{false};  // declared before options_, which points at it
  const std::string image_;
  const RestoreOptions options_;
  std::shared_ptr<RestoredModel> memory_;
  std::unique_ptr<torch::LoadedModule> module_;
  std::atomic<uint64_t> device_bytes_{0};
};

}  // namespace

StatusOr<std::unique_ptr<ModelHost>> NewTorchModelHost(const std::string& image,
                                                       const RestoreOptions& options,
                                                       bool yield_io) {
  RestoreOptions o = options;
  STASIS_RETURN_IF_ERROR(UseDefaultBackend(&o));
  return std::unique_ptr<ModelHost>(new TorchModelHost(image, std::move(o), yield_io));
}

}  // namespace stasis::runtime
