#include "restore/torch/torch_model.h"

#include <caffe2/serialize/read_adapter_interface.h>
#include <dlfcn.h>
#include <torch/cuda.h>
#include <torch/version.h>
#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <new>
#include <random>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "common/file_system.h"
#include "common/hash.h"
#include "restore/default_backend.h"
#include "snapshot/format.h"
#include "snapshot/image_reader.h"
#include "snapshot/image_writer.h"
#include "snapshot/safetensors.h"
#include "snapshot/tensor_snapshot.h"

namespace stasis::torch {

namespace internal {

Status ExceptionStatus(StatusCode code, std::string_view context, std::exception_ptr error) {
  std::string message;
  try {
    std::rethrow_exception(error);
  } catch (const c10::Error& e) {
    message = e.what_without_backtrace();
  } catch (const std::bad_alloc& e) {
    code = StatusCode::kResourceExhausted;
    message = std::string("out of memory (") + e.what() + ")";
  } catch (const std::exception& e) {
    message = e.what();
  } catch (...) {
    message = "unknown exception";
  }
  // CUDA and the caching allocator report exhaustion as a c10::Error.
  if (message.find("out of memory") != std::string::npos) code = StatusCode::kResourceExhausted;
  while (!message.empty() && (message.back() == '\n' || message.back() == ' ')) message.pop_back();
  return Status(code, std::string(context) + ": " + message);
}

}  // namespace internal

namespace {

using internal::ExceptionStatus;
using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string Num(uint64_t v) { return std::to_string(v); }

std::string Basename(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string ScalarTypeName(at::ScalarType t) { return c10::toString(t); }

template <typename T>
std::string Str(const T& v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// ---- TorchScript detection: the zip central directory. ----

uint16_t Le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t Le32(const uint8_t* p) { return Le16(p) | (static_cast<uint32_t>(Le16(p + 2)) << 16); }
uint64_t Le64(const uint8_t* p) { return Le32(p) | (static_cast<uint64_t>(Le32(p + 4)) << 32); }

// A TorchScript archive's central directory holds a few entries per submodule; this is
// orders of magnitude more than any real one.
constexpr uint64_t kMaxCentralDirectory = 64ull << 20;

// ---- Restored memory as torch storages. ----

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

StatusOr<c10::Device> DeviceFor(const DeviceSpec& spec) {
  return TorchDevice(DeviceSpecString(spec));
}

// One storage per restored region, created on first use; tensors are views of them, so
// tensors that overlapped at snapshot time overlap again.
class RegionStorages {
 public:
  RegionStorages(const RestoredModel& memory, std::shared_ptr<void> keep_alive)
      : memory_(memory), keep_alive_(std::move(keep_alive)), storages_(memory.regions().size()) {}

  StatusOr<at::Tensor> View(const RestoredTensor& t) {
    std::optional<at::ScalarType> type = ToScalarType(t.dtype);
    if (!type)
      return UnimplementedError("tensor '" + t.name + "' has dtype " +
                                std::string(DTypeName(t.dtype)) +
                                ", which libtorch " TORCH_VERSION " cannot hold");
    if (t.region >= memory_.regions().size())
      return InternalError("tensor '" + t.name + "' names region " + Num(t.region) + " of " +
                           Num(memory_.regions().size()));
    const MappedRegion& region = memory_.regions()[t.region];
    if (!device_ || device_spec_.kind != t.device.kind ||
        device_spec_.ordinal != t.device.ordinal) {
      STASIS_ASSIGN_OR_RETURN(device_, DeviceFor(t.device));
      device_spec_ = t.device;
    }
    const c10::Device device = *device_;
    const int64_t itemsize = static_cast<int64_t>(c10::elementSize(*type));
    const uint64_t offset = t.address - region.address;
    if (t.address < region.address || offset > region.size || t.byte_size > region.size - offset)
      return InternalError("tensor '" + t.name + "' lies outside its region");
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
    view.set_(storage, element_offset, t.shape, t.strides);
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

  const RestoredModel& memory_;
  std::shared_ptr<void> keep_alive_;
  std::vector<std::optional<at::Storage>> storages_;
  std::optional<c10::Device> device_;
  DeviceSpec device_spec_;
};

struct NamedTensor {
  std::string name;
  at::Tensor tensor;
  bool parameter = false;
};

// Parameters, then buffers, each name once (a name is a path, so aliases under different
// paths are listed under each).
std::vector<NamedTensor> ModuleTensors(const ::torch::jit::Module& module) {
  std::vector<NamedTensor> out;
  std::unordered_set<std::string> names;
  for (const auto& p : module.named_parameters(/*recurse=*/true))
    if (p.value.defined() && names.insert(p.name).second) out.push_back({p.name, p.value, true});
  for (const auto& b : module.named_buffers(/*recurse=*/true))
    if (b.value.defined() && names.insert(b.name).second) out.push_back({b.name, b.value, false});
  return out;
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

// Restore options for torch: the CUDA backend for a cuda device, after checking that
// libtorch can use that device (the bound tensors need it).
Status PrepareRestoreOptions(RestoreOptions* o) {
  if (o->device.kind != format::DeviceKind::kCuda) return OkStatus();
  STASIS_RETURN_IF_ERROR(DeviceFor(o->device).status());
  return UseDefaultBackend(o);
}

// [begin, end) byte ranges, merged where they overlap.
struct Span {
  uintptr_t begin = 0, end = 0;
  int element_size = 0;
};
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

// Deterministic N(0, 1) by Box-Muller on the generator's bits (std::normal_distribution
// differs between standard libraries).
class Normal {
 public:
  static constexpr double kTwoPi = 6.283185307179586476925286766559;
  explicit Normal(std::mt19937_64* rng) : rng_(rng) {}
  double Next() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = (static_cast<double>((*rng_)() >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
    const double u2 = static_cast<double>((*rng_)() >> 11) * 0x1.0p-53;          // [0, 1)
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(kTwoPi * u2);
    has_spare_ = true;
    return r * std::cos(kTwoPi * u2);
  }

 private:
  std::mt19937_64* rng_;
  double spare_ = 0;
  bool has_spare_ = false;
};

constexpr uint64_t kInputSeed = 0x5354415349530001ull;
constexpr int64_t kMaxInputElements = int64_t{1} << 28;

StatusOr<int64_t> ParsePositive(std::string_view s, std::string_view what, int64_t max) {
  if (s.empty() || s.size() > 19)
    return InvalidArgumentError(std::string(what) + " is empty or too long");
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9')
      return InvalidArgumentError(std::string(what) + " '" + std::string(s) + "' is not a number");
    v = v * 10 + (c - '0');
    if (v > max)
      return InvalidArgumentError(std::string(what) + " '" + std::string(s) + "' is too large");
  }
  if (v <= 0) return InvalidArgumentError(std::string(what) + " must be positive");
  return v;
}

// The dtypes a stasis image and libtorch share, one pair each, for both directions.
struct DTypePair {
  DType dtype;
  at::ScalarType type;
};
constexpr DTypePair kDTypePairs[] = {
    {DType::kBool, at::kBool},
    {DType::kU8, at::kByte},
    {DType::kI8, at::kChar},
    {DType::kI16, at::kShort},
    {DType::kI32, at::kInt},
    {DType::kI64, at::kLong},
    {DType::kF16, at::kHalf},
    {DType::kF32, at::kFloat},
    {DType::kF64, at::kDouble},
    {DType::kBF16, at::kBFloat16},
    {DType::kC64, at::kComplexFloat},
// Unsigned 16-64 bit and float8 tensors: libtorch 2.7 has every one the image format does
// (1.13 has none of them).
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 7)
    {DType::kU16, at::ScalarType::UInt16},
    {DType::kU32, at::ScalarType::UInt32},
    {DType::kU64, at::ScalarType::UInt64},
    {DType::kF8E5M2, at::ScalarType::Float8_e5m2},
    {DType::kF8E4M3, at::ScalarType::Float8_e4m3fn},
    {DType::kF8E8M0, at::ScalarType::Float8_e8m0fnu},
    {DType::kF8E4M3Fnuz, at::ScalarType::Float8_e4m3fnuz},
    {DType::kF8E5M2Fnuz, at::ScalarType::Float8_e5m2fnuz},
#endif
};

}  // namespace

std::optional<at::ScalarType> ToScalarType(DType dtype) {
  for (const DTypePair& p : kDTypePairs)
    if (p.dtype == dtype) return p.type;
  return std::nullopt;
}

std::optional<DType> ToDType(at::ScalarType type) {
  for (const DTypePair& p : kDTypePairs)
    if (p.type == type) return p.dtype;
  return std::nullopt;
}

Status LoadCudaSupport() {
  static const Status status = []() -> Status {
    std::string path = "libtorch_cuda.so";
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&at::globalContext), &info) != 0 &&
        info.dli_fname != nullptr) {
      const std::string cpu_lib = info.dli_fname;
      const size_t slash = cpu_lib.rfind('/');
      if (slash != std::string::npos) path = cpu_lib.substr(0, slash + 1) + path;
    }
    // RTLD_GLOBAL, as when linked: its kernels and hooks register with libtorch_cpu's
    // registries. Never closed.
    if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) != nullptr) return OkStatus();
    const char* err = dlerror();
    return UnavailableError("libtorch " TORCH_VERSION " has no usable CUDA part (" +
                            std::string(err != nullptr ? err : path) + ")");
  }();
  return status;
}

StatusOr<c10::Device> TorchDevice(std::string_view device) {
  STASIS_ASSIGN_OR_RETURN(DeviceSpec spec, ParseDeviceSpec(device));
  if (spec.kind == format::DeviceKind::kCpu) return c10::Device(at::kCPU);
  if (Status s = LoadCudaSupport(); !s.ok())
    return UnavailableError("device '" + std::string(device) + "': " + std::string(s.message()));
  bool available = false;
  int64_t count = 0;
  try {
    available = ::torch::cuda::is_available();
    count = available ? static_cast<int64_t>(::torch::cuda::device_count()) : 0;
  } catch (...) {
    available = false;
  }
  if (!available)
    return UnavailableError("device '" + std::string(device) + "': libtorch " TORCH_VERSION +
                            std::string(" has no usable CUDA (no CUDA build, driver or device)"));
  if (spec.ordinal >= count)
    return NotFoundError("device '" + std::string(device) + "': no CUDA device " +
                         Num(spec.ordinal) + " (" + Num(count) + " present)");
  return c10::Device(at::kCUDA, static_cast<c10::DeviceIndex>(spec.ordinal));
}

static Status CheckTorchScriptImpl(const std::string& path) {
  auto file = DefaultFileSystem()->OpenRandomAccess(path);
  if (!file.ok()) return file.status();
  const RandomAccessFile& f = **file;
  const uint64_t size = f.Size();
  auto bad = [&](const std::string& why) {
    return InvalidArgumentError(path + " is not a TorchScript archive (" + why + ")");
  };
  uint8_t magic[4];
  if (size < 22) return bad("too short for a zip file");
  STASIS_RETURN_IF_ERROR(f.ReadExact(0, 4, magic, path));
  if (std::memcmp(magic, "PK\x03\x04", 4) != 0) return bad("not a zip file");

  // End of central directory: the last "PK\5\6" whose comment ends at EOF (or within).
  const uint64_t tail_size = std::min<uint64_t>(size, 22 + 65535);
  std::vector<uint8_t> tail(tail_size);
  STASIS_RETURN_IF_ERROR(f.ReadExact(size - tail_size, tail_size, tail.data(), path));
  int64_t eocd = -1;
  for (int64_t i = static_cast<int64_t>(tail_size) - 22; i >= 0; --i) {
    const uint8_t* p = tail.data() + i;
    if (std::memcmp(p, "PK\x05\x06", 4) == 0 &&
        i + 22 + Le16(p + 20) <= static_cast<int64_t>(tail_size)) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) return bad("no zip end-of-central-directory record");
  const uint8_t* e = tail.data() + eocd;
  uint64_t entries = Le16(e + 10), cd_size = Le32(e + 12), cd_offset = Le32(e + 16);
  if (entries == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff) {
    // zip64: the locator sits just before the end record.
    const uint64_t eocd_abs = size - tail_size + static_cast<uint64_t>(eocd);
    if (eocd_abs < 20) return bad("zip64 locator missing");
    uint8_t loc[20];
    STASIS_RETURN_IF_ERROR(f.ReadExact(eocd_abs - 20, 20, loc, path));
    if (std::memcmp(loc, "PK\x06\x07", 4) != 0) return bad("zip64 locator missing");
    const uint64_t rec_offset = Le64(loc + 8);
    uint8_t rec[56];
    if (rec_offset > size || size - rec_offset < 56) return bad("zip64 record out of range");
    STASIS_RETURN_IF_ERROR(f.ReadExact(rec_offset, 56, rec, path));
    if (std::memcmp(rec, "PK\x06\x06", 4) != 0) return bad("bad zip64 end record");
    entries = Le64(rec + 32);
    cd_size = Le64(rec + 40);
    cd_offset = Le64(rec + 48);
  }
  if (cd_offset > size || cd_size > size - cd_offset) return bad("central directory out of range");
  if (cd_size > kMaxCentralDirectory) return bad("central directory too large");
  std::vector<uint8_t> cd(cd_size);
  STASIS_RETURN_IF_ERROR(f.ReadExact(cd_offset, cd_size, cd.data(), path));
  static constexpr std::string_view kData = "data.pkl";
  uint64_t pos = 0;
  for (uint64_t i = 0; i < entries; ++i) {
    if (cd_size - pos < 46 || std::memcmp(cd.data() + pos, "PK\x01\x02", 4) != 0)
      return bad("corrupt central directory");
    const uint8_t* r = cd.data() + pos;
    const uint64_t name_len = Le16(r + 28), extra = Le16(r + 30), comment = Le16(r + 32);
    if (cd_size - pos - 46 < name_len + extra + comment) return bad("corrupt central directory");
    std::string_view name(reinterpret_cast<const char*>(r + 46), name_len);
    if (name.size() >= kData.size() && name.substr(name.size() - kData.size()) == kData)
      return OkStatus();
    pos += 46 + name_len + extra + comment;
  }
  return bad("a zip file without data.pkl");
}

StatusOr<::torch::jit::Module> LoadTorchScript(const std::string& path) {
  STASIS_RETURN_IF_ERROR(CheckTorchScript(path));
  try {
    return ::torch::jit::load(path, c10::Device(at::kCPU));
  } catch (...) {
    return ExceptionStatus(StatusCode::kInvalidArgument,
                           path + " does not load as TorchScript (torch.save checkpoints are " +
                               "not TorchScript: save with torch.jit.save)",
                           std::current_exception());
  }
}

static StatusOr<InputSpec> ParseInputSpecImpl(std::string_view spec) {
  auto bad = [&](const std::string& why) {
    return InvalidArgumentError("bad input spec '" + std::string(spec) + "': " + why +
                                " (expected <dtype>:<d0>x<d1>...[:<high>], dtype i64, i32, f32, "
                                "bf16 or f16)");
  };
  std::vector<std::string_view> parts;
  for (size_t start = 0;;) {
    size_t colon = spec.find(':', start);
    parts.push_back(spec.substr(start, colon == std::string_view::npos ? colon : colon - start));
    if (colon == std::string_view::npos) break;
    start = colon + 1;
  }
  if (parts.size() < 2 || parts.size() > 3) return bad("wrong number of fields");
  InputSpec out;
  const std::string_view type = parts[0];
  bool integer = true;
  if (type == "i64") {
    out.type = at::kLong;
  } else if (type == "i32") {
    out.type = at::kInt;
  } else if (type == "f32" || type == "bf16" || type == "f16") {
    out.type = type == "f32" ? at::kFloat : type == "bf16" ? at::kBFloat16 : at::kHalf;
    integer = false;
  } else {
    return bad("unknown dtype '" + std::string(type) + "'");
  }
  int64_t elements = 1;
  for (size_t start = 0;;) {
    size_t x = parts[1].find('x', start);
    std::string_view dim = parts[1].substr(start, x == std::string_view::npos ? x : x - start);
    auto d = ParsePositive(dim, "dimension", kMaxInputElements);
    if (!d.ok()) return bad(std::string(d.status().message()));
    out.shape.push_back(*d);
    elements *= *d;
    if (elements > kMaxInputElements) return bad("more than 2^28 elements");
    if (out.shape.size() > 8) return bad("rank above 8");
    if (x == std::string_view::npos) break;
    start = x + 1;
  }
  if (parts.size() == 3) {
    if (!integer) return bad("<high> applies to integer dtypes only");
    auto h = ParsePositive(parts[2], "high", int64_t{1} << 62);
    if (!h.ok()) return bad(std::string(h.status().message()));
    out.high = *h;
  }
  return out;
}

StatusOr<at::Tensor> MakeInput(const InputSpec& spec, const c10::Device& device) {
  try {
    std::mt19937_64 rng(kInputSeed);
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    at::Tensor host;
    if (spec.type == at::kLong || spec.type == at::kInt) {
      host = at::empty(spec.shape, at::TensorOptions().dtype(spec.type));
      const unsigned __int128 high = static_cast<uint64_t>(spec.high);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t v = static_cast<int64_t>((rng() * high) >> 64);
        if (spec.type == at::kLong)
          host.data_ptr<int64_t>()[i] = v;
        else
          host.data_ptr<int32_t>()[i] = static_cast<int32_t>(v);
      }
    } else {
      host = at::empty(spec.shape, at::TensorOptions().dtype(at::kFloat));
      float* p = host.data_ptr<float>();
      Normal normal(&rng);
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(normal.Next());
      if (spec.type != at::kFloat) host = host.to(spec.type);  // IEEE round to nearest even
    }
    return device.is_cpu() ? host : host.to(device);
  } catch (...) {
    return ExceptionStatus(StatusCode::kInternal, "building the input", std::current_exception());
  }
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

StatusOr<std::vector<TensorData>> ForwardModule(::torch::jit::Module& module,
                                                const std::vector<TensorData>& inputs) {
  try {
    const c10::Device device = ModuleDevice(module);
    std::vector<c10::IValue> args;
    args.reserve(inputs.size());
    for (const TensorData& in : inputs) {
      std::optional<at::ScalarType> type = ToScalarType(in.dtype);
      if (!type)
        return UnimplementedError("input '" + in.name + "': dtype " +
                                  std::string(DTypeName(in.dtype)) + " has no libtorch type");
      STASIS_ASSIGN_OR_RETURN(uint64_t count, format::ElementCount(in.shape));
      const uint64_t want = count * static_cast<uint64_t>(DTypeBits(in.dtype)) / 8;
      if (in.bytes.size() != want)
        return InvalidArgumentError("input '" + in.name + "' has " + Num(in.bytes.size()) +
                                    " bytes; its dtype and shape need " + Num(want));
      at::Tensor t = ::torch::empty(in.shape, at::TensorOptions().dtype(*type));
      if (want > 0) std::memcpy(t.data_ptr(), in.bytes.data(), want);
      args.emplace_back(device.is_cpu() ? t : t.to(device));
    }
    c10::IValue result;
    {
      c10::InferenceMode guard;
      result = module.forward(args);
    }
    std::vector<at::Tensor> outs;
    if (result.isTensor()) {
      outs.push_back(result.toTensor());
    } else if (result.isTuple() || result.isList()) {
      std::vector<c10::IValue> items;
      if (result.isTuple()) {
        for (const c10::IValue& e : result.toTuple()->elements()) items.push_back(e);
      } else {
        for (const c10::IValue& e : result.toList()) items.push_back(e);
      }
      for (const c10::IValue& e : items) {
        if (!e.isTensor())
          return UnimplementedError("forward() returned a " + e.tagKind() + " inside a " +
                                    result.tagKind() + "; only tensors can be returned");
        outs.push_back(e.toTensor());
      }
    } else {
      return UnimplementedError("forward() returned " + result.tagKind() + ", not tensors");
    }
    std::vector<TensorData> out;
    for (size_t i = 0; i < outs.size(); ++i) {
      at::Tensor t = outs[i].contiguous().cpu();
      std::optional<DType> dtype = ToDType(t.scalar_type());
      if (!dtype)
        return UnimplementedError("output " + Num(i) + " is " + ScalarTypeName(t.scalar_type()));
      TensorData d;
      d.name = outs.size() == 1 ? "output" : "output." + Num(i);
      d.dtype = *dtype;
      d.shape.assign(t.sizes().begin(), t.sizes().end());
      d.bytes.assign(static_cast<const char*>(t.data_ptr()), t.nbytes());
      out.push_back(std::move(d));
    }
    return out;
  } catch (...) {
    return ExceptionStatus(StatusCode::kInvalidArgument, "forward() failed",
                           std::current_exception());
  }
}

StatusOr<InferenceResult> RunModule(::torch::jit::Module& module, std::string_view input_spec) {
  STASIS_ASSIGN_OR_RETURN(InputSpec spec, ParseInputSpec(input_spec));
  try {
    STASIS_ASSIGN_OR_RETURN(at::Tensor input, MakeInput(spec, ModuleDevice(module)));
    InferenceResult r;
    const auto t0 = Clock::now();
    at::Tensor out;
    {
      c10::InferenceMode guard;
      c10::IValue v = module.forward({input});
      if (!v.isTensor())
        return InvalidArgumentError("forward() returned " + v.tagKind() + ", not a Tensor");
      out = v.toTensor().contiguous().cpu();
    }
    r.seconds = SecondsSince(t0);
    std::optional<DType> dtype = ToDType(out.scalar_type());
    r.dtype = dtype ? std::string(DTypeName(*dtype)) : ScalarTypeName(out.scalar_type());
    r.shape.assign(out.sizes().begin(), out.sizes().end());
    r.xxh3 = XXH3_64bits(out.data_ptr(), out.nbytes());
    return r;
  } catch (...) {
    return ExceptionStatus(StatusCode::kInvalidArgument,
                           "forward() on input '" + std::string(input_spec) + "' failed",
                           std::current_exception());
  }
}

static Status SnapshotModuleImpl(const std::string& module_path, const std::string& image_path,
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

static StatusOr<::torch::jit::Module> BindSkeletonImpl(std::string_view skeleton,
                                                       const RestoredModel& memory,
                                                       std::shared_ptr<void> keep_alive,
                                                       BindReport* report) {
  BindReport local;
  BindReport& rep = report ? *report : local;
  rep = BindReport{};
  if (!memory.loaded())
    return FailedPreconditionError("the restored model is unloaded: Reload() it before binding");
  ::torch::jit::Module module;
  auto t0 = Clock::now();
  try {
    module = ::torch::jit::load(std::make_shared<ViewReadAdapter>(skeleton), c10::Device(at::kCPU));
  } catch (...) {
    return ExceptionStatus(StatusCode::kDataLoss, "skeleton section does not load",
                           std::current_exception());
  }
  rep.skeleton_load_seconds = SecondsSince(t0);
  t0 = Clock::now();
  try {
    std::vector<NamedTensor> tensors = ModuleTensors(module);
    std::vector<const RestoredTensor*> targets;
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
    // RestoredModel::FindTensor is a linear scan: one index instead (models have 10^4
    // tensors and more, and binding is on the cold-start path).
    std::unordered_map<std::string_view, const RestoredTensor*> by_name;
    by_name.reserve(memory.tensors().size());
    for (const RestoredTensor& t : memory.tensors()) by_name.emplace(t.name, &t);
    for (const NamedTensor& n : tensors) {
      const char* kind = n.parameter ? "parameter" : "buffer";
      auto it = by_name.find(n.name);
      const RestoredTensor* t = it == by_name.end() ? nullptr : it->second;
      if (t == nullptr)
        return FailedPreconditionError(std::string(kind) + " '" + n.name +
                                       "' of the skeleton is not in the image");
      std::optional<DType> dtype = ToDType(n.tensor.scalar_type());
      if (!dtype || *dtype != t->dtype)
        return FailedPreconditionError(
            std::string(kind) + " '" + n.name + "' is " + ScalarTypeName(n.tensor.scalar_type()) +
            " in the skeleton but " + std::string(DTypeName(t->dtype)) + " in the image");
      targets.push_back(t);
    }
    RegionStorages storages(memory, std::move(keep_alive));
    ::torch::NoGradGuard no_grad;
    for (size_t i = 0; i < tensors.size(); ++i) {
      STASIS_ASSIGN_OR_RETURN(at::Tensor view, storages.View(*targets[i]));
      tensors[i].tensor.set_data(view);
      ++(tensors[i].parameter ? rep.parameters_bound : rep.buffers_bound);
    }
  } catch (...) {
    return ExceptionStatus(StatusCode::kInternal, "binding the skeleton", std::current_exception());
  }
  rep.bind_seconds = SecondsSince(t0);
  return module;
}

static StatusOr<RestoredModule> RestoreModuleImpl(const std::string& image,
                                                  const RestoreOptions& options) {
  RestoreOptions o = options;
  STASIS_RETURN_IF_ERROR(PrepareRestoreOptions(&o));
  // The skeleton first: an image without one fails before any weight is read.
  std::string skeleton;
  uint64_t skeleton_xxh3 = 0;
  {
    STASIS_ASSIGN_OR_RETURN(std::unique_ptr<ImageReader> reader, ImageReader::Open(image, o.fs));
    const format::SectionInfo* section = reader->manifest().FindSection(kSkeletonSection);
    if (section == nullptr) {
      const std::string* kind = reader->manifest().FindMetadata(kModelKindKey);
      const std::string* source = reader->manifest().FindMetadata("source.format");
      std::string what = "unknown";
      if (kind != nullptr) {
        what = *kind;
      } else if (source != nullptr) {
        what = *source;
      }
      return FailedPreconditionError(image + " has no TorchScript skeleton (no section '" +
                                     kSkeletonSection + "'; model kind '" + what +
                                     "'): restore its tensors with RestoreTensors");
    }
    skeleton_xxh3 = section->xxh3;
    auto bytes = reader->ReadSection(kSkeletonSection);
    if (!bytes.ok()) return bytes.status().WithContext(image);
    skeleton = std::move(*bytes);
  }
  STASIS_ASSIGN_OR_RETURN(std::unique_ptr<RestoredModel> restored,
                          RestoredModel::Restore(image, o));
  std::shared_ptr<RestoredModel> memory(std::move(restored));
  const format::SectionInfo* section = memory->manifest().FindSection(kSkeletonSection);
  if (section == nullptr || section->xxh3 != skeleton_xxh3)
    return Status(StatusCode::kAborted, image + " was replaced while it was being restored");
  RestoredModule out;
  auto module = BindSkeleton(skeleton, *memory, memory, &out.bind);
  if (!module.ok()) return module.status().WithContext(image);
  out.module = std::move(*module);
  out.memory = std::move(memory);
  return out;
}

StatusOr<std::vector<std::pair<std::string, at::Tensor>>> ViewRestoredTensors(
    const RestoredModel& memory, std::shared_ptr<void> keep_alive) {
  try {
    RegionStorages storages(memory, std::move(keep_alive));
    std::vector<std::pair<std::string, at::Tensor>> out;
    out.reserve(memory.tensors().size());
    for (const RestoredTensor& t : memory.tensors()) {
      STASIS_ASSIGN_OR_RETURN(at::Tensor view, storages.View(t));
      out.emplace_back(t.name, std::move(view));
    }
    return out;
  } catch (...) {
    return ExceptionStatus(StatusCode::kInternal, "viewing the restored tensors",
                           std::current_exception());
  }
}

StatusOr<std::vector<std::pair<std::string, at::Tensor>>> LoadSafetensorsTensors(
    const std::string& path, const c10::Device& device) {
  STASIS_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> file,
                          DefaultFileSystem()->OpenRandomAccess(path));
  const uint64_t size = file->Size();
  // One buffer for the whole file, owned by every tensor's storage.
  auto buffer = std::shared_ptr<uint8_t[]>(new (std::nothrow) uint8_t[std::max<uint64_t>(size, 1)]);
  if (buffer == nullptr) return ResourceExhaustedError("no memory for " + path);
  STASIS_RETURN_IF_ERROR(file->ReadExact(0, size, buffer.get(), path));
  // The header is parsed from these bytes: every view below then lies inside the buffer (a
  // second open could have found another file).
  auto parsed = ParseSafetensorsFileBytes(
      std::string_view(reinterpret_cast<const char*>(buffer.get()), size));
  if (!parsed.ok()) return parsed.status().WithContext(path);
  const SafetensorsHeader& header = *parsed;
  try {
    std::vector<std::pair<std::string, at::Tensor>> out;
    out.reserve(header.entries.size());
    for (const SafetensorsEntry& e : header.entries) {
      std::optional<at::ScalarType> type = ToScalarType(e.dtype);
      if (!type)
        return UnimplementedError("tensor '" + e.name + "': dtype " +
                                  std::string(DTypeName(e.dtype)) + " has no libtorch type");
      std::shared_ptr<uint8_t[]> owner = buffer;
      at::Tensor t = ::torch::from_blob(
          buffer.get() + header.data_start + e.begin, e.shape,
          [owner](void*) mutable { owner.reset(); }, at::TensorOptions().dtype(*type));
      out.emplace_back(e.name, device.is_cpu() ? t : t.to(device));
    }
    return out;
  } catch (...) {
    return ExceptionStatus(StatusCode::kUnavailable, "tensors of " + path,
                           std::current_exception());
  }
}

StatusOr<InferenceResult> TensorsChecksum(
    const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  try {
    const auto t0 = Clock::now();
    std::vector<std::pair<std::string, uint64_t>> hashes;
    hashes.reserve(tensors.size());
    for (auto& [name, t] : tensors) {
      at::Tensor c = t.contiguous().cpu();
      hashes.emplace_back(name, Xxh3(c.data_ptr(), c.nbytes()));
    }
    InferenceResult r;
    r.dtype = "U64";
    r.shape = {static_cast<int64_t>(hashes.size())};
    r.xxh3 = CombineTensorHashes(std::move(hashes));
    r.seconds = SecondsSince(t0);
    return r;
  } catch (...) {
    return ExceptionStatus(StatusCode::kInternal, "checksumming tensors", std::current_exception());
  }
}

static StatusOr<std::vector<std::pair<std::string, at::Tensor>>> RestoreTensorsImpl(
    const std::string& image, const RestoreOptions& options) {
  RestoreOptions o = options;
  STASIS_RETURN_IF_ERROR(PrepareRestoreOptions(&o));
  STASIS_ASSIGN_OR_RETURN(std::unique_ptr<RestoredModel> restored,
                          RestoredModel::Restore(image, o));
  std::shared_ptr<RestoredModel> memory(std::move(restored));
  auto out = ViewRestoredTensors(*memory, memory);
  if (!out.ok()) return out.status().WithContext(image);
  return out;
}

// The public entry points: no exception gets past them.
namespace {
template <typename F>
auto Guarded(std::string_view context, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (...) {
    return ExceptionStatus(StatusCode::kInternal, context, std::current_exception());
  }
}
}  // namespace

Status CheckTorchScript(const std::string& path) {
  return Guarded("checking " + path, [&] { return CheckTorchScriptImpl(path); });
}

StatusOr<InputSpec> ParseInputSpec(std::string_view spec) {
  return Guarded("parsing an input spec", [&] { return ParseInputSpecImpl(spec); });
}

Status SnapshotModule(const std::string& module_path, const std::string& image_path,
                      const TorchSnapshotOptions& options, TorchSnapshotReport* report) {
  return Guarded("snapshot of " + module_path,
                 [&] { return SnapshotModuleImpl(module_path, image_path, options, report); });
}

StatusOr<RestoredModule> RestoreModule(const std::string& image, const RestoreOptions& options) {
  return Guarded("restoring " + image, [&] { return RestoreModuleImpl(image, options); });
}

StatusOr<std::vector<std::pair<std::string, at::Tensor>>> RestoreTensors(
    const std::string& image, const RestoreOptions& options) {
  return Guarded("restoring " + image, [&] { return RestoreTensorsImpl(image, options); });
}

StatusOr<::torch::jit::Module> BindSkeleton(std::string_view skeleton, const RestoredModel& memory,
                                            std::shared_ptr<void> keep_alive, BindReport* report) {
  return Guarded("binding the skeleton",
                 [&] { return BindSkeletonImpl(skeleton, memory, std::move(keep_alive), report); });
}

}  // namespace stasis::torch
