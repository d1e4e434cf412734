// RestoreModule and RestoreTensors (stasis/torch.h): the cold starts of torch_plugin.h run
// in this process, with this library's own plugin as the framework.
#include <string>
#include <utility>
#include <vector>

#include "stasis/remote.h"
#include "stasis/torch.h"
#include "torch_adapter/device.h"
#include "torch_adapter/exception_status.h"
#include "torch_adapter/loaded_module.h"
#include "torch_adapter/module_bind.h"

namespace stasis::torch {
namespace {

// A location as messages show it: a remote one without its query (a presigned signature).
std::string Shown(const std::string& image) {
  return IsRemoteLocation(image) ? RedactLocation(image) : image;
}

// The framework is already here: only the device needs checking (and, for cuda, libtorch's
// CUDA part loading), as the bound tensors need it.
StatusOr<TorchPlugin*> InProcess(const DeviceSpec& device) {
  STASIS_RETURN_IF_ERROR(TorchDevice(device).status());
  return stasis_torch_plugin();
}

StatusOr<BoundModule> RestoreModuleImpl(const std::string& image, const RestoreOptions& options) {
  ColdStartOptions o;
  o.restore = options;
  STASIS_ASSIGN_OR_RETURN(BoundColdStart cold, RestoreAndBind(image, o, InProcess));
  auto* bound = dynamic_cast<TorchLoadedModule*>(cold.module.get());
  if (bound == nullptr) return InternalError("the in-process plugin bound a foreign module");
  BoundModule out;
  out.module = std::move(bound->module());
  out.restored = std::move(cold.restored);
  out.bind = cold.bind;
  return out;
}

StatusOr<std::vector<std::pair<std::string, at::Tensor>>> RestoreTensorsImpl(
    const std::string& image, const RestoreOptions& options) {
  ColdStartOptions o;
  o.restore = options;
  STASIS_ASSIGN_OR_RETURN(ColdStart cold, RestoreWhileLoading(image, o, InProcess));
  auto out = ViewRestoredTensors(*cold.restored, cold.restored);
  if (!out.ok()) return out.status().WithContext(Shown(image));
  return out;
}

}  // namespace

StatusOr<BoundModule> RestoreModule(const std::string& image, const RestoreOptions& options) {
  return internal::Guarded("restoring " + Shown(image),
                           [&] { return RestoreModuleImpl(image, options); });
}

StatusOr<std::vector<std::pair<std::string, at::Tensor>>> RestoreTensors(
    const std::string& image, const RestoreOptions& options) {
  return internal::Guarded("restoring " + Shown(image),
                           [&] { return RestoreTensorsImpl(image, options); });
}

}  // namespace stasis::torch
