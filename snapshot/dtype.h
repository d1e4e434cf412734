// File: snapshot/dtype.h
//
// Element types of stored tensors: the safetensors set, with the ids of the image format
// (docs/image-format.md, "Dtype table").
#ifndef STASIS_SNAPSHOT_DTYPE_H_
#define STASIS_SNAPSHOT_DTYPE_H_

#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

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
std::optional<DType> DTypeFromName(std::string_view name);
// Valid id from the format's dtype table.
std::optional<DType> DTypeFromId(uint8_t id);
// The element size the `grouped` codec uses for this dtype: 2 for F16/BF16, 4 for F32,
// 0 where grouping does not help (integers, 8-bit floats, F64).
int GroupingElementSize(DType t);

// f32 → bf16, rounding to nearest with ties to even (what torch and the reference writers
// do); NaN stays NaN.
inline uint16_t Float32ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace stasis

#endif  // STASIS_SNAPSHOT_DTYPE_H_
