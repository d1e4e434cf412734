#include "torch_adapter/dtype_map.h"

#include <torch/version.h>

namespace stasis::torch {
namespace {

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

std::string ScalarTypeName(at::ScalarType t) { return c10::toString(t); }

}  // namespace stasis::torch
