// File: stasis/tensor.h
//
// What a tensor is to stasis: an element type (DType: the safetensors set, with the ids of
// the image format, docs/image-format.md "Dtype table") and, where tensors cross a process
// or library boundary as plain bytes, TensorData. The runtime's requests and answers, the
// torch plugin's Forward and the HTTP wire codec all carry TensorData.
//
// Thread safety: plain values and pure functions.
#ifndef STASIS_TENSOR_H_
#define STASIS_TENSOR_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace stasis {

enum class DType : uint8_t {
  kBool = 1,
  kU8 = 2,
  kI8 = 3,
  kI16 = 4,
  kU16 = 5,
  kI32 = 6,
  kU32 = 7,
  kI64 = 8,
  kU64 = 9,
  kF16 = 10,
  kF32 = 11,
  kF64 = 12,
  kBF16 = 13,
  kF8E5M2 = 14,
  kF8E4M3 = 15,
  kF8E8M0 = 16,
  kF8E4M3Fnuz = 17,
  kF8E5M2Fnuz = 18,
  kF4 = 19,
  kF6E2M3 = 20,
  kF6E3M2 = 21,
  kC64 = 22,
};
inline constexpr uint8_t kMaxDTypeId = 22;

// Bit width of one element (4, 6, 8, 16, 32 or 64).
int DTypeBits(DType t);
// The safetensors name ("F32", "BF16", "F8_E4M3", ...).
std::string_view DTypeName(DType t);
// The inverse of DTypeName; nullopt for any other text.
std::optional<DType> DTypeFromName(std::string_view name);

// A tensor as plain bytes: row-major, contiguous, element count x element size bytes.
struct TensorData {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::string bytes;
};

}  // namespace stasis

#endif  // STASIS_TENSOR_H_
