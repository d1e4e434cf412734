#include "restore/device/open_backend.h"

#ifdef STASIS_HAVE_CUDA
#include "restore/device/cuda_backend.h"
#endif

namespace stasis {

Status CheckBackendBuilt(const DeviceSpec& device) {
  switch (device.kind) {
    case format::DeviceKind::kCpu:
      return OkStatus();
    case format::DeviceKind::kCuda:
#ifdef STASIS_HAVE_CUDA
      return OkStatus();
#else
      return UnimplementedError(
          "this stasis was built without CUDA (STASIS_WITH_CUDA=OFF or no toolkit)");
#endif
  }
  return InvalidArgumentError("unknown device kind " +
                              std::to_string(static_cast<uint32_t>(device.kind)));
}

StatusOr<std::unique_ptr<DeviceBackend>> OpenDeviceBackend(const DeviceSpec& device,
                                                           bool huge_pages) {
  STASIS_RETURN_IF_ERROR(CheckBackendBuilt(device));
  if (device.kind == format::DeviceKind::kCpu) return NewHostBackend(huge_pages);
#ifdef STASIS_HAVE_CUDA
  return OpenCudaBackend(device.ordinal);
#else
  return InternalError("no backend for " + DeviceSpecString(device));
#endif
}

}  // namespace stasis
