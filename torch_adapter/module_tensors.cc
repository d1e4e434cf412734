#include "torch_adapter/module_tensors.h"

#include <algorithm>
#include <unordered_set>

namespace stasis::torch {

std::vector<NamedTensor> ModuleTensors(const ::torch::jit::Module& module) {
  std::vector<NamedTensor> out;
  std::unordered_set<std::string> names;
  for (const auto& p : module.named_parameters(/*recurse=*/true))
    if (p.value.defined() && names.insert(p.name).second) out.push_back({p.name, p.value, true});
  for (const auto& b : module.named_buffers(/*recurse=*/true))
    if (b.value.defined() && names.insert(b.name).second) out.push_back({b.name, b.value, false});
  return out;
}

std::vector<Span> MergeSpans(std::vector<Span> spans) {
  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return a.begin < b.begin; });
  std::vector<Span> merged;
  for (const Span& s : spans) {
    if (!merged.empty() && s.begin < merged.back().end) {
      Span& last = merged.back();
      last.end = std::max(last.end, s.end);
      if (last.element_size != s.element_size) last.element_size = 0;
    } else {
      merged.push_back(s);
    }
  }
  return merged;
}

c10::Device ModuleDevice(const ::torch::jit::Module& module) {
  for (const at::Tensor& t : module.parameters(/*recurse=*/true))
    if (t.defined()) return t.device();
  for (const at::Tensor& t : module.buffers(/*recurse=*/true))
    if (t.defined()) return t.device();
  return c10::Device(at::kCPU);
}

uint64_t ModuleWeightBytes(const ::torch::jit::Module& module) {
  // The bytes the tensors span, shared ones once: not their storages' sizes, which on the
  // stasis path are whole regions (alignment gaps included, 2 MiB granules on a GPU).
  std::vector<Span> spans;
  try {
    for (const NamedTensor& n : ModuleTensors(module)) {
      const at::Tensor& t = n.tensor;
      if (!t.has_storage() || t.numel() == 0) continue;
      uint64_t last = 0;  // offset of the last element, in elements
      for (int64_t d = 0; d < t.dim(); ++d)
        last += static_cast<uint64_t>(t.size(d) - 1) * static_cast<uint64_t>(t.stride(d));
      const auto begin = reinterpret_cast<uintptr_t>(t.storage().data()) +
                         static_cast<uintptr_t>(t.storage_offset()) * t.element_size();
      spans.push_back({begin, begin + (last + 1) * t.element_size(), 0});
    }
  } catch (...) {
  }
  uint64_t bytes = 0;
  for (const Span& s : MergeSpans(std::move(spans))) bytes += s.end - s.begin;
  return bytes;
}

}  // namespace stasis::torch
