#include "torch_adapter/device.h"

#include <dlfcn.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include <string>

#include "common/numbers.h"
#include "stasis/device_backend.h"
#include "stasis/torch.h"

namespace stasis::torch {

Status LoadCudaSupport() {
  static const Status status = []() -> Status {
    std::string path = "libtorch_cuda.so";
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&at::globalContext), &info) != 0 &&
        info.dli_fname != nullptr) {
      const std::string cpu_lib = info.dli_fname;
      const size_t slash = cpu_lib.rfind('/');
      if (slash != std::string::npos) path = cpu_lib.substr(0, slash + 1) + path;
    }
    // RTLD_GLOBAL, as when linked: its kernels and hooks register with libtorch_cpu's
    // registries. Never closed.
    if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) != nullptr) return OkStatus();
    const char* err = dlerror();
    return UnavailableError("libtorch " TORCH_VERSION " has no usable CUDA part (" +
                            std::string(err != nullptr ? err : path) + ")");
  }();
  return status;
}

StatusOr<c10::Device> TorchDevice(std::string_view device) {
  STASIS_ASSIGN_OR_RETURN(DeviceSpec spec, ParseDeviceSpec(device));
  if (spec.kind == format::DeviceKind::kCpu) return c10::Device(at::kCPU);
  if (Status s = LoadCudaSupport(); !s.ok())
    return UnavailableError("device '" + std::string(device) + "': " + std::string(s.message()));
  bool available = false;
  int64_t count = 0;
  try {
    available = ::torch::cuda::is_available();
    count = available ? static_cast<int64_t>(::torch::cuda::device_count()) : 0;
  } catch (...) {
    available = false;
  }
  if (!available)
    return UnavailableError("device '" + std::string(device) + "': libtorch " TORCH_VERSION +
                            std::string(" has no usable CUDA (no CUDA build, driver or device)"));
  if (spec.ordinal >= count)
    return NotFoundError("device '" + std::string(device) + "': no CUDA device " +
                         Num(spec.ordinal) + " (" + Num(count) + " present)");
  return c10::Device(at::kCUDA, static_cast<c10::DeviceIndex>(spec.ordinal));
}

StatusOr<c10::Device> TorchDevice(const DeviceSpec& spec) {
  return TorchDevice(DeviceSpecString(spec));
}

}  // namespace stasis::torch
