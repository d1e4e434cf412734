// File: torch_adapter/device.h
//
// The device a stasis device spec names, as libtorch sees it. LoadCudaSupport (the
// loading of libtorch's CUDA part) is public: stasis/torch.h.
#ifndef STASIS_TORCH_ADAPTER_DEVICE_H_
#define STASIS_TORCH_ADAPTER_DEVICE_H_

#include <c10/core/Device.h>

#include <string_view>

#include "stasis/device_backend.h"
#include "stasis/status.h"

namespace stasis::torch {

// Validates a device string (cpu, cuda, cuda:N) and that this libtorch can use it (for
// cuda, after LoadCudaSupport). kInvalidArgument for a malformed string, kUnavailable when
// CUDA is not usable, kNotFound for an ordinal past the devices present.
StatusOr<c10::Device> TorchDevice(std::string_view device);
StatusOr<c10::Device> TorchDevice(const DeviceSpec& spec);

}  // namespace stasis::torch

#endif  // STASIS_TORCH_ADAPTER_DEVICE_H_
