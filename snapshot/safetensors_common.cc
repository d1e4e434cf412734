#include "snapshot/safetensors_common.h"

#include <limits>

#include "common/numbers.h"
#include "snapshot/format.h"

namespace stasis::safetensors_internal {
namespace {

// The reference parser is limited by usize; the image format by 2^62 elements. Taking the
// smaller means a header we accept always imports.
constexpr uint64_t kMaxElements = uint64_t{1} << 62;

}  // namespace

std::string Quote(std::string_view s) {
  constexpr size_t kMaxShown = 128;
  if (s.size() <= kMaxShown) return "'" + std::string(s) + "'";
  return "'" + std::string(s.substr(0, kMaxShown)) + "...' (" + Num(s.size()) + " bytes)";
}

std::string ShapeString(std::span<const int64_t> shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i != 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

std::string TensorNameProblem(std::string_view name) {
  if (name.empty()) return "empty tensor name";
  if (name.size() > format::kMaxTensorNameLen)
    return "tensor name " + Quote(name) + " exceeds " + Num(format::kMaxTensorNameLen) + " bytes";
  if (name.find('\0') != std::string_view::npos)
    return "tensor name " + Quote(name) + " contains NUL";
  return "";
}

StatusOr<uint64_t> TensorByteSize(DType dtype, std::span<const int64_t> shape) {
  uint64_t count = 1;
  for (int64_t d : shape) {
    if (d < 0) return InvalidArgumentError("negative dimension in shape " + ShapeString(shape));
    // A later zero cannot rescue an absurd partial product: the reference parser fails on
    // the overflow too, and the image format caps the count at 2^62.
    if (__builtin_mul_overflow(count, static_cast<uint64_t>(d), &count) || count >= kMaxElements)
      return InvalidArgumentError("element count of shape " + ShapeString(shape) +
                                  " overflows 2^62");
  }
  unsigned __int128 nbits = static_cast<unsigned __int128>(count) * DTypeBits(dtype);
  if (nbits % 8 != 0) {
    return InvalidArgumentError(Num(count) + " elements of " + std::string(DTypeName(dtype)) +
                                " (" + Num(DTypeBits(dtype)) +
                                " bits each) are not a whole number of bytes");
  }
  unsigned __int128 bytes = nbits / 8;
  if (bytes > std::numeric_limits<uint64_t>::max())
    return InvalidArgumentError("byte size of shape " + ShapeString(shape) + " overflows");
  return static_cast<uint64_t>(bytes);
}

Status CheckNoNul(std::string_view json) {
  size_t nul = json.find('\0');
  if (nul == std::string_view::npos) return OkStatus();
  return InvalidArgumentError("invalid JSON: NUL byte at offset " + Num(nul));
}

}  // namespace stasis::safetensors_internal
