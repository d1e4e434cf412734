#include "torch_adapter/baseline.h"

#include <algorithm>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "common/hash.h"
#include "common/stopwatch.h"
#include "snapshot/safetensors.h"
#include "stasis/file_system.h"
#include "torch_adapter/dtype_map.h"
#include "torch_adapter/exception_status.h"

namespace stasis::torch {

using internal::ExceptionStatus;

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
    const Stopwatch t0;
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
    r.seconds = t0.Seconds();
    return r;
  } catch (...) {
    return ExceptionStatus(StatusCode::kInternal, "checksumming tensors", std::current_exception());
  }
}

}  // namespace stasis::torch
