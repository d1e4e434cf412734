// SnapshotModule (stasis/torch.h): load the module the ordinary way on the device, run the
// warmup, store every storage once (aliases become views; on a GPU, storages cluster into
// regions at their device addresses, copied to the host in bounded pieces), and embed the
// module with every weight emptied as the skeleton section. A module whose weights are not
// all reachable as parameters or buffers is refused: they would stay in the skeleton and be
// deserialised on every cold start.
#include <torch/version.h>

#include <algorithm>
#include <optional>
#include <sstream>
#include <string>
#include <unordered_set>
#include <vector>

#include "snapshot/dtype.h"
#include "snapshot/format.h"
#include "stasis/device_backend.h"
#include "stasis/image.h"
#include "stasis/torch.h"
#include "torch_adapter/archive.h"
#include "torch_adapter/device.h"
#include "torch_adapter/dtype_map.h"
#include "torch_adapter/exception_status.h"
#include "torch_adapter/input_spec.h"
#include "torch_adapter/module_tensors.h"

namespace stasis::torch {
namespace {

using internal::ExceptionStatus;

std::string Basename(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

template <typename T>
std::string Str(const T& v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// Weights a snapshot could not move out of the skeleton: tensors held as plain attributes
// rather than parameters or buffers. (A torch.jit.freeze'd module keeps its weights as
// constants of its code instead, with no parameters at all; SnapshotInto refuses that too.)
// A few small ones (masks, constants) may stay; more than this many bytes may not, or the
// cold start would deserialise weights after all.
constexpr uint64_t kMaxSkeletonTensorBytes = 1 << 20;
// A skeleton is code and small metadata (76 KB for the 1.3B demo model); far more means
// weights it should not hold.
constexpr uint64_t kMaxSkeletonBytes = 16 << 20;

Status CheckNoWeightsOutsideParameters(const ::torch::jit::Module& module,
                                       const std::vector<NamedTensor>& moved,
                                       const std::string& module_path) {
  std::unordered_set<std::string> names;
  for (const NamedTensor& n : moved) names.insert(n.name);
  uint64_t bytes = 0;
  std::vector<std::string> left;
  for (const auto& a : module.named_attributes(/*recurse=*/true)) {
    if (!a.value.isTensor() || names.count(a.name)) continue;
    const at::Tensor& t = a.value.toTensor();
    if (!t.defined() || t.numel() == 0) continue;
    bytes += static_cast<uint64_t>(t.numel()) * t.element_size();
    left.push_back(a.name);
  }
  if (bytes <= kMaxSkeletonTensorBytes) return OkStatus();
  std::string list;
  for (size_t i = 0; i < left.size() && i < 5; ++i) list += (i ? ", " : "") + left[i];
  if (left.size() > 5) list += ", ...";
  return FailedPreconditionError(
      module_path + " holds " + std::to_string(bytes) + " bytes in " + std::to_string(left.size()) +
      " tensor attributes that are neither parameters nor buffers (" + list +
      "): they would stay in the skeleton and be deserialised on "
      "every cold start; register them as buffers");
}

struct SnapshotTensor {
  NamedTensor named;
  DType dtype = DType::kU8;
  uintptr_t storage = 0;  // data pointer of the storage (0 when it has no bytes)
  uint64_t storage_bytes = 0;
  uint64_t byte_offset = 0;  // of element 0 within the storage
};

// Storages on a cuda device: storages whose 2 MiB-aligned ranges overlap form a cluster, one
// region each, based at the cluster's first address rounded down to 2 MiB and recording it
// as the VA hint, so that a restore at the same addresses reproduces every data_ptr.
constexpr uint64_t kCudaCluster = 2ull << 20;
constexpr uint64_t kCudaCopyPiece = 64ull << 20;

Status AddCudaTensors(const std::vector<SnapshotTensor>& tensors, const c10::Device& device,
                      ImageWriter* writer) {
  std::vector<Span> spans;
  for (const SnapshotTensor& t : tensors)
    if (t.storage_bytes > 0)
      spans.push_back({t.storage, t.storage + t.storage_bytes, GroupingElementSize(t.dtype)});
  std::vector<Span> merged = MergeSpans(std::move(spans));

  struct Cluster {
    uintptr_t begin, end;
    size_t first, last;  // merged spans [first, last)
    uint64_t base = 0;
    uint32_t region = 0;
  };
  std::vector<Cluster> clusters;
  for (size_t i = 0; i < merged.size(); ++i) {
    // Merge when the 2 MiB-aligned ranges would overlap: regions must not share a page of
    // the address space, or the second could not be mapped at its hint.
    if (!clusters.empty() && format::AlignDown(merged[i].begin, kCudaCluster) <
                                 format::AlignUp(clusters.back().end, kCudaCluster)) {
      clusters.back().end = std::max(clusters.back().end, merged[i].end);
      clusters.back().last = i + 1;
    } else {
      clusters.push_back({merged[i].begin, merged[i].end, i, i + 1});
    }
  }
  const int32_t ordinal = device.has_index() ? device.index() : 0;
  for (Cluster& c : clusters) {
    c.base = format::AlignDown(c.begin, kCudaCluster);
    format::RegionInfo info;
    info.size = format::AlignUp(c.end, kCudaCluster) - c.base;
    info.alignment = kCudaCluster;
    info.va_hint = c.base;
    info.device_kind = format::DeviceKind::kCuda;
    info.device_ordinal = ordinal;
    STASIS_ASSIGN_OR_RETURN(c.region, writer->AddRegion(info));
    // In address order, in pieces, so host memory stays bounded whatever the model size.
    for (size_t i = c.first; i < c.last; ++i) {
      const Span& s = merged[i];
      for (uintptr_t p = s.begin; p < s.end; p += kCudaCopyPiece) {
        const uint64_t n = std::min<uint64_t>(kCudaCopyPiece, s.end - p);
        at::Tensor host = ::torch::from_blob(reinterpret_cast<void*>(p), {static_cast<int64_t>(n)},
                                             at::TensorOptions().dtype(at::kByte).device(device))
                              .cpu();
        STASIS_RETURN_IF_ERROR(
            writer->AddRegionData(c.region, p - c.base, host.data_ptr(), n, s.element_size));
      }
    }
  }
  // A region for tensors without bytes when nothing else has one.
  std::optional<uint32_t> empty_region;
  if (clusters.empty() && !tensors.empty()) {
    format::RegionInfo info;
    info.size = 256;
    info.alignment = 256;
    info.device_kind = format::DeviceKind::kCuda;
    info.device_ordinal = ordinal;
    STASIS_ASSIGN_OR_RETURN(empty_region, writer->AddRegion(info));
  }
  for (const SnapshotTensor& t : tensors) {
    const at::Tensor& x = t.named.tensor;
    format::TensorInfo info;
    info.name = t.named.name;
    info.dtype = t.dtype;
    info.shape.assign(x.sizes().begin(), x.sizes().end());
    info.strides.assign(x.strides().begin(), x.strides().end());
    STASIS_ASSIGN_OR_RETURN(info.byte_size,
                            format::ViewByteSize(info.dtype, info.shape, info.strides));
    if (t.storage_bytes == 0) {
      info.region_id = empty_region ? *empty_region : clusters.front().region;
      info.byte_offset = 0;
    } else {
      auto it = std::upper_bound(clusters.begin(), clusters.end(), t.storage,
                                 [](uintptr_t a, const Cluster& c) { return a < c.begin; });
      if (it == clusters.begin()) return InternalError("storage outside every cluster");
      --it;
      info.region_id = it->region;
      info.byte_offset = t.storage - it->base + t.byte_offset;
    }
    STASIS_RETURN_IF_ERROR(writer->AddTensor(std::move(info)));
  }
  return OkStatus();
}

// The snapshot after the checks: loads, warms up, stores and embeds the skeleton.
Status SnapshotInto(const std::string& module_path, const c10::Device& device,
                    const std::optional<InputSpec>& warmup, const TorchSnapshotOptions& options,
                    const std::string& device_name, ImageWriter* writer,
                    TorchSnapshotReport* report) {
  STASIS_ASSIGN_OR_RETURN(::torch::jit::Module module, LoadTorchScript(module_path));
  try {
    if (device.is_cuda()) module.to(device);
  } catch (...) {
    return ExceptionStatus(StatusCode::kUnavailable, "moving " + module_path + " to " + device_name,
                           std::current_exception());
  }
  if (warmup) {
    STASIS_ASSIGN_OR_RETURN(at::Tensor input, MakeInput(*warmup, device));
    try {
      ::torch::NoGradGuard no_grad;
      module.forward({input});
    } catch (...) {
      return ExceptionStatus(
          StatusCode::kInvalidArgument,
          "warmup forward of " + module_path + " on '" + options.warmup_input + "' failed",
          std::current_exception());
    }
  }

  try {
    std::vector<NamedTensor> named = ModuleTensors(module);
    STASIS_RETURN_IF_ERROR(CheckNoWeightsOutsideParameters(module, named, module_path));
    std::vector<SnapshotTensor> tensors;
    std::unordered_set<const void*> storages;
    for (NamedTensor& n : named) {
      const at::Tensor& t = n.tensor;
      if (t.layout() != at::kStrided || t.is_quantized())
        return InvalidArgumentError("tensor '" + n.name + "' is not a dense tensor (layout " +
                                    Str(t.layout()) + "); only dense tensors can be " + "snapshot");
      std::optional<DType> dtype = ToDType(t.scalar_type());
      if (!dtype)
        return InvalidArgumentError("tensor '" + n.name + "' has dtype " +
                                    ScalarTypeName(t.scalar_type()) +
                                    ", which a stasis image cannot hold");
      if (t.device() != device)
        return FailedPreconditionError("tensor '" + n.name + "' is on " + t.device().str() +
                                       ", the module on " + device_name);
      SnapshotTensor s;
      s.dtype = *dtype;
      const at::Storage& st = t.storage();
      s.storage_bytes = st.nbytes();
      s.storage = s.storage_bytes ? reinterpret_cast<uintptr_t>(st.data()) : 0;
      s.byte_offset = static_cast<uint64_t>(t.storage_offset()) * t.element_size();
      if (s.storage_bytes) storages.insert(st.unsafeGetStorageImpl());
      ++(n.parameter ? report->parameters : report->buffers);
      report->tensor_bytes += static_cast<uint64_t>(t.numel()) * t.element_size();
      s.named = std::move(n);
      tensors.push_back(std::move(s));
    }
    report->storages = storages.size();
    std::vector<Span> spans;
    for (const SnapshotTensor& t : tensors)
      if (t.storage_bytes) spans.push_back({t.storage, t.storage + t.storage_bytes, 0});
    for (const Span& s : MergeSpans(std::move(spans))) report->stored_bytes += s.end - s.begin;

    if (device.is_cuda()) {
      STASIS_RETURN_IF_ERROR(AddCudaTensors(tensors, device, writer));
    } else {
      std::vector<HostTensor> host;
      host.reserve(tensors.size());
      for (const SnapshotTensor& t : tensors) {
        HostTensor h;
        h.name = t.named.name;
        h.dtype = t.dtype;
        h.shape.assign(t.named.tensor.sizes().begin(), t.named.tensor.sizes().end());
        h.strides.assign(t.named.tensor.strides().begin(), t.named.tensor.strides().end());
        h.storage = reinterpret_cast<const void*>(t.storage);
        h.storage_bytes = t.storage_bytes;
        h.byte_offset = t.byte_offset;
        host.push_back(std::move(h));
      }
      STASIS_RETURN_IF_ERROR(AddHostTensors(host, writer));
    }

    // The writer holds every byte now: empty the weights (on the cpu, so the skeleton
    // loads anywhere) and keep the rest of the module as the skeleton.
    for (SnapshotTensor& t : tensors)
      t.named.tensor.set_data(at::empty({0}, t.named.tensor.options().device(at::kCPU)));
    std::ostringstream skeleton;
    module.save(skeleton);
    const std::string bytes = skeleton.str();
    report->skeleton_bytes = bytes.size();
    // Weights kept where no parameter or buffer reaches them (the constants of a
    // torch.jit.freeze'd module) stay in the skeleton: refuse rather than pretend.
    const uint64_t limit = named.empty() ? kMaxSkeletonTensorBytes : kMaxSkeletonBytes;
    if (bytes.size() > limit)
      return FailedPreconditionError(
          module_path + ": the skeleton still holds " + std::to_string(bytes.size()) +
          " bytes after " + std::to_string(named.size()) +
          " parameters and buffers were moved out, so weights are kept elsewhere (e.g. as "
          "constants of a torch.jit.freeze'd module) and every cold start would deserialise "
          "them; snapshot the module before freezing it");
    STASIS_RETURN_IF_ERROR(writer->AddSection(kSkeletonSection, bytes));
  } catch (...) {
    return ExceptionStatus(StatusCode::kInternal, "snapshotting " + module_path,
                           std::current_exception());
  }
  STASIS_RETURN_IF_ERROR(writer->SetMetadata(kModelKindKey, "torchscript"));
  STASIS_RETURN_IF_ERROR(writer->SetMetadata(kTorchVersionKey, TORCH_VERSION));
  STASIS_RETURN_IF_ERROR(writer->SetMetadata(kTorchDeviceKey, device_name));
  if (warmup) STASIS_RETURN_IF_ERROR(writer->SetMetadata(kTorchInputSpecKey, options.warmup_input));
  STASIS_RETURN_IF_ERROR(writer->SetMetadata("torch.module_path", Basename(module_path)));
  return OkStatus();
}

Status SnapshotModuleImpl(const std::string& module_path, const std::string& image_path,
                          const TorchSnapshotOptions& options, TorchSnapshotReport* report) {
  TorchSnapshotReport local;
  TorchSnapshotReport& rep = report ? *report : local;
  rep = TorchSnapshotReport{};
  rep.torch_version = TORCH_VERSION;
  // Everything the caller can get wrong is checked before any file is created.
  STASIS_RETURN_IF_ERROR(CheckTorchScript(module_path));
  std::optional<InputSpec> warmup;
  if (!options.warmup_input.empty()) {
    auto spec = ParseInputSpec(options.warmup_input);
    if (!spec.ok()) return spec.status().WithContext("warmup input");
    warmup = *spec;
  }
  STASIS_ASSIGN_OR_RETURN(DeviceSpec device_spec, ParseDeviceSpec(options.device));
  const std::string device_name = DeviceSpecString(device_spec);
  STASIS_ASSIGN_OR_RETURN(c10::Device device, TorchDevice(options.device));

  STASIS_ASSIGN_OR_RETURN(std::unique_ptr<ImageWriter> writer,
                          ImageWriter::Create(image_path, options.writer));
  Status s;
  try {
    s = SnapshotInto(module_path, device, warmup, options, device_name, writer.get(), &rep);
  } catch (...) {
    s = ExceptionStatus(StatusCode::kInternal, "snapshotting " + module_path,
                        std::current_exception());
  }
  if (s.ok()) s = writer->Finish();
  if (!s.ok()) {
    writer->Abandon();
    return s;
  }
  rep.writer = writer->stats();
  return OkStatus();
}

}  // namespace

Status SnapshotModule(const std::string& module_path, const std::string& image_path,
                      const TorchSnapshotOptions& options, TorchSnapshotReport* report) {
  return internal::Guarded("snapshot of " + module_path, [&] {
    return SnapshotModuleImpl(module_path, image_path, options, report);
  });
}

}  // namespace stasis::torch
