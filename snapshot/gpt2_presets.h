// File: snapshot/gpt2_presets.h
//
// The sizes of the GPT-2-shaped demo models, shared by the two generators that must agree
// on them: `stasis-genmodel` (safetensors, tools/stasis_genmodel.cc) and the libtorch
// plugin's TorchScript generator (restore/torch/torch_gpt2.cc). Shapes follow the HF
// `gpt2` and `gpt2-xl`-like configurations; the names are what `--preset` accepts.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace stasis {

struct Gpt2Preset {
  const char* name;
  int n_layer;
  int64_t n_embd;
  int64_t vocab;
  int64_t n_ctx;
  int64_t n_head;
  // T of the input spec the TorchScript generator prints. Short for the large presets:
  // Debian's libtorch runs matmuls on the reference BLAS (about 5 GFLOP/s here), and the
  // first inference is the same work on both paths of `stasis bench`, so a long one only
  // dilutes the comparison.
  int64_t input_len;
};

inline constexpr Gpt2Preset kGpt2Presets[] = {
    {"tiny", 2, 64, 1000, 64, 4, 32},
    {"125m", 12, 768, 50257, 1024, 12, 16},
    {"1.3b", 24, 2048, 50257, 2048, 16, 8},
};

// The preset called `name`. Errors: InvalidArgument naming the valid presets.
inline StatusOr<const Gpt2Preset*> FindGpt2Preset(const std::string& name) {
  std::string valid;
  for (const Gpt2Preset& p : kGpt2Presets) {
    if (name == p.name) return &p;
    valid += valid.empty() ? "" : ", ";
    valid += p.name;
  }
  return InvalidArgumentError("unknown GPT-2 preset '" + name + "' (valid: " + valid + ")");
}

}  // namespace stasis
