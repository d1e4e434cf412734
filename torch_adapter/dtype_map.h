// File: torch_adapter/dtype_map.h
//
// stasis dtypes and libtorch scalar types, one table for both directions: Bool, U8, I8,
// I16, I32, I64, F16, F32, F64, BF16, C64, and with libtorch >= 2.7 also U16, U32, U64 and
// the float8 types (1.13 has none of them).
#ifndef STASIS_TORCH_ADAPTER_DTYPE_MAP_H_
#define STASIS_TORCH_ADAPTER_DTYPE_MAP_H_

#include <c10/core/ScalarType.h>

#include <optional>
#include <string>

#include "stasis/tensor.h"

namespace stasis::torch {

// nullopt for a type the other side cannot hold.
std::optional<at::ScalarType> ToScalarType(DType dtype);
std::optional<DType> ToDType(at::ScalarType type);
// libtorch's own name of `t` ("Float", "BFloat16", ...), for messages.
std::string ScalarTypeName(at::ScalarType t);

}  // namespace stasis::torch

#endif  // STASIS_TORCH_ADAPTER_DTYPE_MAP_H_
