// File: tools/genmodel/gpt2_presets.h
//
// The GPT-2-shaped demo models of the demo, the tests and the benchmarks: the sizes
// `stasis-genmodel --preset` accepts, for its safetensors models and for the TorchScript
// ones the torch plugin builds (TorchPlugin::GenerateGpt2). Shapes follow the HF `gpt2`
// and `gpt2-xl`-like configurations (docs/benchmarks.md).
#ifndef STASIS_TOOLS_GENMODEL_GPT2_PRESETS_H_
#define STASIS_TOOLS_GENMODEL_GPT2_PRESETS_H_

#include <cstdint>
#include <string>

#include "stasis/status.h"
#include "stasis/torch_plugin.h"

namespace stasis {

struct Gpt2Preset {
  const char* name;
  int n_layer;
  int64_t n_embd;
  int64_t vocab;
  int64_t n_ctx;
  int64_t n_head;
  // T of the input spec (Gpt2InputSpec). Short for the large presets: Debian's libtorch
  // runs matmuls on the reference BLAS (about 5 GFLOP/s here), and the first inference is
  // the same work on both paths of `stasis bench`, so a long one only dilutes the
  // comparison.
  int64_t input_len;

  torch::Gpt2Shape shape() const { return {n_layer, n_embd, vocab, n_ctx, n_head}; }
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

// The input spec (stasis/torch_plugin.h) of the preset's first inference:
// "i64:1x<input_len>:<vocab>".
inline std::string Gpt2InputSpec(const Gpt2Preset& p) {
  return "i64:1x" + std::to_string(p.input_len) + ":" + std::to_string(p.vocab);
}

}  // namespace stasis

#endif  // STASIS_TOOLS_GENMODEL_GPT2_PRESETS_H_
