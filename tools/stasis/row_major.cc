#include "tools/stasis/row_major.h"

#include <algorithm>
#include <cstring>

#include "snapshot/format.h"

namespace stasis::cli {
namespace {

bool IsContiguous(const RestoredTensor& t) {
  return std::ranges::equal(t.strides, format::ContiguousStrides(t.shape));
}

// Copies a strided view into contiguous row-major order.
void GatherStrided(const uint8_t* base, const RestoredTensor& t, size_t elem, uint8_t* out) {
  const size_t rank = t.shape.size();
  std::vector<int64_t> idx(rank, 0);
  uint64_t count = *format::ElementCount(t.shape);
  for (uint64_t n = 0; n < count; ++n) {
    int64_t off = 0;
    for (size_t d = 0; d < rank; ++d) off += idx[d] * t.strides[d];
    std::memcpy(out + n * elem, base + off * static_cast<int64_t>(elem), elem);
    for (size_t d = rank; d-- > 0;) {
      if (++idx[d] < t.shape[d]) break;
      idx[d] = 0;
    }
  }
}

}  // namespace

ByteView RowMajorBytes(const RestoredTensor& t, std::vector<uint8_t>* scratch) {
  const auto* data = reinterpret_cast<const uint8_t*>(t.address);
  if (IsContiguous(t)) return {data, t.byte_size};
  const size_t elem = static_cast<size_t>(DTypeBits(t.dtype) / 8);
  scratch->resize(*format::ElementCount(t.shape) * elem);
  GatherStrided(data, t, elem, scratch->data());
  return {scratch->data(), scratch->size()};
}

}  // namespace stasis::cli
