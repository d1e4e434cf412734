// File: torch_adapter/module_tensors.h
//
// A TorchScript module's weights as the snapshot, the bind and the reports see them: every
// parameter and buffer under each of its names, and the byte ranges they span.
#ifndef STASIS_TORCH_ADAPTER_MODULE_TENSORS_H_
#define STASIS_TORCH_ADAPTER_MODULE_TENSORS_H_

#include <torch/script.h>

#include <cstdint>
#include <string>
#include <vector>

namespace stasis::torch {

struct NamedTensor {
  std::string name;
  at::Tensor tensor;
  bool parameter = false;
};

// Parameters, then buffers, each name once (a name is a path, so aliases under different
// paths are listed under each).
std::vector<NamedTensor> ModuleTensors(const ::torch::jit::Module& module);

// [begin, end) byte ranges, with the element size the codec may group by (0: mixed).
struct Span {
  uintptr_t begin = 0, end = 0;
  int element_size = 0;
};
// The spans sorted and merged where they overlap.
std::vector<Span> MergeSpans(std::vector<Span> spans);

// The device the module's weights are on (first parameter, else first buffer, else cpu).
c10::Device ModuleDevice(const ::torch::jit::Module& module);

// Bytes the module's parameters and buffers span, shared ones once.
uint64_t ModuleWeightBytes(const ::torch::jit::Module& module);

}  // namespace stasis::torch

#endif  // STASIS_TORCH_ADAPTER_MODULE_TENSORS_H_
