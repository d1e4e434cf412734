// File: torch_adapter/input_spec.h
//
// Input specs (stasis/torch_plugin.h): "<dtype>:<d0>x<d1>...[:<high>]", dtype i64, i32,
// f32, bf16 or f16, and the seeded input each describes.
#ifndef STASIS_TORCH_ADAPTER_INPUT_SPEC_H_
#define STASIS_TORCH_ADAPTER_INPUT_SPEC_H_

#include <torch/script.h>

#include <cstdint>
#include <string_view>
#include <vector>

#include "stasis/status.h"

namespace stasis::torch {

struct InputSpec {
  at::ScalarType type = at::kLong;
  std::vector<int64_t> shape;
  int64_t high = 2;  // integers only
};

// kInvalidArgument naming what is wrong (at most 2^28 elements, rank 8).
StatusOr<InputSpec> ParseInputSpec(std::string_view spec);

// The input a spec describes, on `device`. Bytes are generated on the host from a fixed
// seed (not with torch's generators), so they are the same for every libtorch version:
// integers uniform in [0, high), floats N(0, 1).
StatusOr<at::Tensor> MakeInput(const InputSpec& spec, const c10::Device& device);

}  // namespace stasis::torch

#endif  // STASIS_TORCH_ADAPTER_INPUT_SPEC_H_
