// File: torch_adapter/forward.h
//
// Running a module: forward() on plain tensors (the runtime's requests) or on the input a
// spec describes (the cold starts' first inference).
#ifndef STASIS_TORCH_ADAPTER_FORWARD_H_
#define STASIS_TORCH_ADAPTER_FORWARD_H_

#include <torch/script.h>

#include <string_view>
#include <vector>

#include "stasis/status.h"
#include "stasis/tensor.h"
#include "stasis/torch_plugin.h"

namespace stasis::torch {

// module.forward(*inputs) under inference mode (LoadedModule::Forward in torch_plugin.h).
StatusOr<std::vector<TensorData>> ForwardModule(::torch::jit::Module& module,
                                                const std::vector<TensorData>& inputs);

// Runs module.forward(input) once under inference mode, with the input built on the
// device of the module's first parameter (or buffer; cpu if it has none).
StatusOr<InferenceResult> RunModule(::torch::jit::Module& module, std::string_view input_spec);

}  // namespace stasis::torch

#endif  // STASIS_TORCH_ADAPTER_FORWARD_H_
