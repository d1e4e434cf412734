#include "snapshot/dtype.h"

namespace stasis {
namespace {

struct DTypeEntry {
  DType type;
  std::string_view name;
  int bits;
};

constexpr DTypeEntry kDTypes[] = {
    {DType::kBool, "BOOL", 8},
    {DType::kU8, "U8", 8},
    {DType::kI8, "I8", 8},
    {DType::kI16, "I16", 16},
    {DType::kU16, "U16", 16},
    {DType::kI32, "I32", 32},
    {DType::kU32, "U32", 32},
    {DType::kI64, "I64", 64},
    {DType::kU64, "U64", 64},
    {DType::kF16, "F16", 16},
    {DType::kF32, "F32", 32},
    {DType::kF64, "F64", 64},
    {DType::kBF16, "BF16", 16},
    {DType::kF8E5M2, "F8_E5M2", 8},
    {DType::kF8E4M3, "F8_E4M3", 8},
    {DType::kF8E8M0, "F8_E8M0", 8},
    {DType::kF8E4M3Fnuz, "F8_E4M3FNUZ", 8},
    {DType::kF8E5M2Fnuz, "F8_E5M2FNUZ", 8},
    {DType::kF4, "F4", 4},
    {DType::kF6E2M3, "F6_E2M3", 6},
    {DType::kF6E3M2, "F6_E3M2", 6},
    {DType::kC64, "C64", 64},
};
static_assert(sizeof(kDTypes) / sizeof(kDTypes[0]) == kMaxDTypeId);

const DTypeEntry& Entry(DType t) { return kDTypes[static_cast<uint8_t>(t) - 1]; }

}  // namespace

int DTypeBits(DType t) { return Entry(t).bits; }
std::string_view DTypeName(DType t) { return Entry(t).name; }

std::optional<DType> DTypeFromName(std::string_view name) {
  for (const auto& e : kDTypes)
    if (e.name == name) return e.type;
  return std::nullopt;
}

std::optional<DType> DTypeFromId(uint8_t id) {
  if (id == 0 || id > kMaxDTypeId) return std::nullopt;
  return static_cast<DType>(id);
}

int GroupingElementSize(DType t) {
  switch (t) {
    case DType::kF16:
    case DType::kBF16:
      return 2;
    case DType::kF32:
      return 4;
    default:
      return 0;
  }
}

}  // namespace stasis
