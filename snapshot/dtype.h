// File: snapshot/dtype.h
//
// What the image format adds to stasis/tensor.h's DType: the id check of its dtype table
// (docs/image-format.md, "Dtype table") and the element size its `grouped` codec uses.
#ifndef STASIS_SNAPSHOT_DTYPE_H_
#define STASIS_SNAPSHOT_DTYPE_H_

#include <cstdint>
#include <optional>

#include "stasis/tensor.h"

namespace stasis {

// Valid id from the format's dtype table.
std::optional<DType> DTypeFromId(uint8_t id);
// The element size the `grouped` codec uses for this dtype: 2 for F16/BF16, 4 for F32,
// 0 where grouping does not help (integers, 8-bit floats, F64).
int GroupingElementSize(DType t);

}  // namespace stasis

#endif  // STASIS_SNAPSHOT_DTYPE_H_
