// File: torch_adapter/gpt2_module.h
//
// A seeded GPT-2-shaped TorchScript module, built in C++ (no Python): the fixture of the
// torch tests, demos and `stasis bench`, in the sizes of the demo presets
// (tools/genmodel/gpt2_presets.h). The initialisation mirrors stasis-genmodel's
// safetensors models (HF GPT2PreTrainedModel._init_weights: N(0, 0.02) for embeddings and
// Conv1D weights, N(0, 0.02 / sqrt(2 * n_layer)) for the residual projections, zero
// biases, LayerNorm weight 1 and bias 0).
//
// Module layout (names as in HF GPT2LMHeadModel, except that blocks are h0..h{L-1}
// because TorchScript source cannot index "h.0"):
//   wte.weight [V,D], wpe.weight [C,D], position_ids (int64 buffer [C] = arange(C)),
//   h<i>.{ln_1,ln_2}.{weight,bias} [D], h<i>.attn.c_attn.{weight [D,3D], bias [3D]},
//   h<i>.attn.c_proj.{weight [D,D], bias [D]}, h<i>.mlp.c_fc.{weight [D,4D], bias [4D]},
//   h<i>.mlp.c_proj.{weight [4D,D], bias [D]}, ln_f.{weight,bias} [D],
//   lm_head.weight: the same tensor as wte.weight (tied, one storage in the archive).
// forward(input_ids: int64 [B,T]) -> f32 logits [B,T,V] (pre-LN blocks, causal
// self-attention, tanh-GELU MLP); T must not exceed the context.
//
// `mixed` (tests): wpe.weight is bf16, every ln_1/ln_2 weight is f16 (forward converts
// them, compute stays f32), and h0.attn.c_attn.weight is the transpose of a contiguous
// [3D,D] tensor (strides (1, D)), so a snapshot has to handle three float dtypes, a
// non-contiguous parameter, an alias and an int64 buffer. Otherwise every weight is f32.
//
// The values are a pure function of (shape, seed, mixed) for a given libtorch build:
// every tensor draws from its own CPU generator seeded by (seed, tensor name).
//
// Thread safety: may be called concurrently (for different paths).
#ifndef STASIS_TORCH_ADAPTER_GPT2_MODULE_H_
#define STASIS_TORCH_ADAPTER_GPT2_MODULE_H_

#include <cstdint>
#include <string>

#include "stasis/status.h"
#include "stasis/torch_plugin.h"

namespace stasis::torch {

// Writes the module to `path` (through `path + ".tmp"` and a rename, so an interrupted
// run never leaves a truncated archive under the final name; not fsynced). Memory: about
// one copy of the model. Errors: kInvalidArgument (a shape with a non-positive size, or a
// width that is not a multiple of the heads), kNotFound / kPermissionDenied (cannot create
// the file), kUnavailable (the write failed), kInternal (libtorch refused to build the
// module).
Status GenerateGpt2Module(const std::string& path, const Gpt2Shape& shape, uint64_t seed,
                          bool mixed);

}  // namespace stasis::torch

#endif  // STASIS_TORCH_ADAPTER_GPT2_MODULE_H_
