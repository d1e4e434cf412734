// File: torch_adapter/baseline.h
//
// The ordinary paths `stasis bench` measures stasis against, for a safetensors checkpoint:
// read it into framework tensors, and checksum tensors the way both paths must agree on.
#ifndef STASIS_TORCH_ADAPTER_BASELINE_H_
#define STASIS_TORCH_ADAPTER_BASELINE_H_

#include <torch/script.h>

#include <string>
#include <utility>
#include <vector>

#include "stasis/status.h"
#include "stasis/torch_plugin.h"

namespace stasis::torch {

// Reads a safetensors file into one host buffer and returns its entries as tensors viewing
// it (the buffer lives as long as they do), moved to `device`.
StatusOr<std::vector<std::pair<std::string, at::Tensor>>> LoadSafetensorsTensors(
    const std::string& path, const c10::Device& device);

// LoadedTensors::Checksum over named tensors: every tensor's xxh3 (contiguous, on the cpu)
// combined in name order.
StatusOr<InferenceResult> TensorsChecksum(
    const std::vector<std::pair<std::string, at::Tensor>>& tensors);

}  // namespace stasis::torch

#endif  // STASIS_TORCH_ADAPTER_BASELINE_H_
