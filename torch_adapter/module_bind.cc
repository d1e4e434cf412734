#include "torch_adapter/module_bind.h"

#include <caffe2/serialize/read_adapter_interface.h>
#include <torch/version.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/numbers.h"
#include "common/stopwatch.h"
#include "torch_adapter/device.h"
#include "torch_adapter/dtype_map.h"
#include "torch_adapter/exception_status.h"
#include "torch_adapter/module_tensors.h"

namespace stasis::torch {
namespace {

using internal::ExceptionStatus;

// Reads a string_view for torch::jit::load, with no copy.
class ViewReadAdapter final : public caffe2::serialize::ReadAdapterInterface {
 public:
  explicit ViewReadAdapter(std::string_view bytes) : bytes_(bytes) {}
  size_t size() const override { return bytes_.size(); }
  size_t read(uint64_t pos, void* buf, size_t n, const char* what) const override {
    if (pos >= bytes_.size()) return 0;
    n = std::min<uint64_t>(n, bytes_.size() - pos);
    std::memcpy(buf, bytes_.data() + pos, n);
    return n;
  }

 private:
  std::string_view bytes_;
};

// One storage per restored region, created on first use; tensors are views of them, so
// tensors that overlapped at snapshot time overlap again.
class RegionStorages {
 public:
  RegionStorages(const RestoredModel& restored, std::shared_ptr<void> keep_alive)
      : restored_(restored),
        keep_alive_(std::move(keep_alive)),
        storages_(restored.regions().size()) {}

  StatusOr<at::Tensor> View(const RestoredTensor& t) {
    std::optional<at::ScalarType> type = ToScalarType(t.dtype);
    if (!type)
      return UnimplementedError("tensor '" + std::string(t.name) + "' has dtype " +
                                std::string(DTypeName(t.dtype)) +
                                ", which libtorch " TORCH_VERSION " cannot hold");
    if (t.region >= restored_.regions().size())
      return InternalError("tensor '" + std::string(t.name) + "' names region " + Num(t.region) +
                           " of " + Num(restored_.regions().size()));
    const MappedRegion& region = restored_.regions()[t.region];
    if (!device_ || device_spec_.kind != t.device.kind ||
        device_spec_.ordinal != t.device.ordinal) {
      STASIS_ASSIGN_OR_RETURN(device_, TorchDevice(t.device));
      device_spec_ = t.device;
    }
    const c10::Device device = *device_;
    const int64_t itemsize = static_cast<int64_t>(c10::elementSize(*type));
    const uint64_t offset = t.address - region.address;
    if (t.address < region.address || offset > region.size || t.byte_size > region.size - offset)
      return InternalError("tensor '" + std::string(t.name) + "' lies outside its region");
    at::Storage storage;
    int64_t element_offset = 0;
    if (offset % itemsize == 0) {
      std::optional<at::Storage>& s = storages_[t.region];
      if (!s) s = Blob(region.address, region.size, device);
      storage = *s;
      element_offset = static_cast<int64_t>(offset / itemsize);
    } else {
      // Not element aligned in its region (possible in images from other writers): a
      // storage of its own, still over the restored bytes.
      storage = Blob(t.address, t.byte_size, device);
    }
    at::Tensor view = at::empty({0}, at::TensorOptions().dtype(*type).device(device));
    view.set_(storage, element_offset, c10::IntArrayRef(t.shape.data(), t.shape.size()),
              c10::IntArrayRef(t.strides.data(), t.strides.size()));
    return view;
  }

 private:
  at::Storage Blob(uint64_t address, uint64_t size, const c10::Device& device) {
    std::shared_ptr<void> keep = keep_alive_;
    // target_device: the memory is on `device` by construction (stasis mapped it there), so
    // libtorch need not ask the CUDA runtime which device owns the pointer.
    return at::for_blob(reinterpret_cast<void*>(address), {static_cast<int64_t>(size)})
        .deleter([keep](void*) {})
        .options(at::TensorOptions().dtype(at::kByte).device(device))
        .target_device(device)
        .make_tensor()
        .storage();
  }

  const RestoredModel& restored_;
  std::shared_ptr<void> keep_alive_;
  std::vector<std::optional<at::Storage>> storages_;
  std::optional<c10::Device> device_;
  DeviceSpec device_spec_;
};

StatusOr<::torch::jit::Module> BindSkeletonImpl(std::string_view skeleton,
                                                const RestoredModel& restored,
                                                std::shared_ptr<void> keep_alive,
                                                BindReport* report) {
  BindReport local;
  BindReport& rep = report ? *report : local;
  rep = BindReport{};
  if (!restored.loaded())
    return FailedPreconditionError("the restored model is unloaded: Reload() it before binding");
  ::torch::jit::Module module;
  Stopwatch t0;
  try {
    module = ::torch::jit::load(std::make_shared<ViewReadAdapter>(skeleton), c10::Device(at::kCPU));
  } catch (...) {
    return ExceptionStatus(StatusCode::kDataLoss, "skeleton section does not load",
                           std::current_exception());
  }
  rep.skeleton_load_seconds = t0.Seconds();
  t0.Restart();
  try {
    std::vector<NamedTensor> tensors = ModuleTensors(module);
    std::vector<RestoredTensor> targets;
    std::string first_nonempty;
    for (const NamedTensor& n : tensors) {
      if (n.tensor.numel() != 0) {
        if (rep.nonempty_before_binding++ == 0) first_nonempty = n.name;
      }
    }
    if (rep.nonempty_before_binding > 0)
      return FailedPreconditionError("the skeleton holds data in " +
                                     Num(rep.nonempty_before_binding) +
                                     " parameters or buffers (first '" + first_nonempty +
                                     "'); a skeleton must hold no weights");
    // RestoredModel::FindTensor scans images whose names are not sorted (version 1): one
    // index instead (models have 10^4 tensors and more, and binding is on the cold-start
    // path). The names are views of the model's table, stable while it lives.
    const RestoredTensors all = restored.tensors();
    std::unordered_map<std::string_view, size_t> by_name;
    by_name.reserve(all.size());
    for (size_t i = 0; i < all.size(); ++i) by_name.emplace(all[i].name, i);
    targets.reserve(tensors.size());
    for (const NamedTensor& n : tensors) {
      const char* kind = n.parameter ? "parameter" : "buffer";
      auto it = by_name.find(n.name);
      if (it == by_name.end())
        return FailedPreconditionError(std::string(kind) + " '" + n.name +
                                       "' of the skeleton is not in the image");
      const RestoredTensor t = all[it->second];
      std::optional<DType> dtype = ToDType(n.tensor.scalar_type());
      if (!dtype || *dtype != t.dtype)
        return FailedPreconditionError(
            std::string(kind) + " '" + n.name + "' is " + ScalarTypeName(n.tensor.scalar_type()) +
            " in the skeleton but " + std::string(DTypeName(t.dtype)) + " in the image");
      targets.push_back(t);
    }
    RegionStorages storages(restored, std::move(keep_alive));
    ::torch::NoGradGuard no_grad;
    for (size_t i = 0; i < tensors.size(); ++i) {
      STASIS_ASSIGN_OR_RETURN(at::Tensor view, storages.View(targets[i]));
      tensors[i].tensor.set_data(view);
      ++(tensors[i].parameter ? rep.parameters_bound : rep.buffers_bound);
    }
  } catch (...) {
    return ExceptionStatus(StatusCode::kInternal, "binding the skeleton", std::current_exception());
  }
  rep.bind_seconds = t0.Seconds();
  return module;
}

}  // namespace

StatusOr<::torch::jit::Module> BindSkeleton(std::string_view skeleton,
                                            const RestoredModel& restored,
                                            std::shared_ptr<void> keep_alive, BindReport* report) {
  return internal::Guarded("binding the skeleton", [&] {
    return BindSkeletonImpl(skeleton, restored, std::move(keep_alive), report);
  });
}

StatusOr<std::vector<std::pair<std::string, at::Tensor>>> ViewRestoredTensors(
    const RestoredModel& restored, std::shared_ptr<void> keep_alive) {
  try {
    RegionStorages storages(restored, std::move(keep_alive));
    std::vector<std::pair<std::string, at::Tensor>> out;
    out.reserve(restored.tensors().size());
    for (const RestoredTensor& t : restored.tensors()) {
      STASIS_ASSIGN_OR_RETURN(at::Tensor view, storages.View(t));
      out.emplace_back(t.name, std::move(view));
    }
    return out;
  } catch (...) {
    return ExceptionStatus(StatusCode::kInternal, "viewing the restored tensors",
                           std::current_exception());
  }
}

}  // namespace stasis::torch
