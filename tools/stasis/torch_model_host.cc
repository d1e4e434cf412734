#include "tools/stasis/torch_model_host.h"

#include <atomic>
#include <utility>

#include "stasis/torch_plugin.h"
#include "tools/stasis/remote_flags.h"

namespace stasis::cli {
namespace {

class TorchModelHost final : public runtime::ModelHost {
 public:
  TorchModelHost(std::string image, RestoreOptions options, bool yield_io)
      : image_(std::move(image)), options_(std::move(options)), yield_io_(yield_io) {}

  Status Load(RestoreReport* report) override {
    if (restored_ == nullptr) {
      STASIS_RETURN_IF_ERROR(FirstLoad());
    } else {
      STASIS_RETURN_IF_ERROR(restored_->Reload());
    }
    device_bytes_.store(restored_->device_bytes(), std::memory_order_relaxed);
    if (report != nullptr) *report = restored_->report();
    return OkStatus();
  }

  Status Unload() override {
    if (restored_ == nullptr) return OkStatus();
    Status s = restored_->Unload();
    device_bytes_.store(restored_->device_bytes(), std::memory_order_relaxed);
    return s;
  }

  StatusOr<std::vector<TensorData>> Infer(const std::vector<TensorData>& inputs) override {
    if (module_ == nullptr || restored_ == nullptr || !restored_->loaded())
      return FailedPreconditionError("the model is not loaded");
    return module_->Forward(inputs);
  }

  uint64_t DeviceBytes() const override { return device_bytes_.load(std::memory_order_relaxed); }

  std::string Describe() const override {
    return ShownLocation(image_) + " on " + DeviceSpecString(options_.device);
  }

 private:
  // The first cold start; later loads reload the same regions, which stay bound.
  Status FirstLoad() {
    torch::ColdStartOptions o;
    o.restore = options_;
    if (yield_io_) o.loading_framework = &loading_framework_;
    STASIS_ASSIGN_OR_RETURN(torch::BoundColdStart cold, torch::RestoreAndBind(image_, o));
    restored_ = std::move(cold.restored);
    module_ = std::move(cold.module);
    return OkStatus();
  }

  std::atomic<bool> loading_framework_{false};  // outlives restored_, which reads through it
  const std::string image_;
  const RestoreOptions options_;
  const bool yield_io_;
  std::shared_ptr<RestoredModel> restored_;
  std::unique_ptr<torch::LoadedModule> module_;
  std::atomic<uint64_t> device_bytes_{0};
};

}  // namespace

std::unique_ptr<runtime::ModelHost> NewTorchModelHost(const std::string& image,
                                                      const RestoreOptions& options,
                                                      bool yield_io) {
  return std::make_unique<TorchModelHost>(image, options, yield_io);
}

}  // namespace stasis::cli
