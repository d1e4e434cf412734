// File: snapshot/safetensors_common.h
//
// What the safetensors files of the snapshot layer share (safetensors_header.cc,
// safetensors_index.cc, safetensors_import.cc, safetensors_write.cc): the checks every
// tensor name and size gets on read and on write, the message helpers, and the two
// internal readers the importer builds on. The public API is snapshot/safetensors.h;
// nothing here is for use outside those files.
//
// Thread safety: all functions are reentrant; they share no state.
#ifndef STASIS_SNAPSHOT_SAFETENSORS_COMMON_H_
#define STASIS_SNAPSHOT_SAFETENSORS_COMMON_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "snapshot/safetensors.h"
#include "stasis/file_system.h"
#include "stasis/status.h"
#include "stasis/tensor.h"

namespace stasis::safetensors_internal {

// The u64 little-endian header length N at the start of every safetensors file.
inline constexpr uint64_t kLengthPrefixSize = 8;

// Quotes a name for a message, cutting very long ones so that errors stay readable.
std::string Quote(std::string_view s);

// "[2, 3]".
std::string ShapeString(std::span<const int64_t> shape);

// The checks every tensor name gets, on read and on write. Returns an empty string when
// the name is fine, else what is wrong with it.
std::string TensorNameProblem(std::string_view name);

// Byte size of a tensor: prod(shape) * bits / 8, with every step checked. The error
// message has no context; callers prefix the tensor.
StatusOr<uint64_t> TensorByteSize(DType dtype, std::span<const int64_t> shape);

// nlohmann's lexer takes a NUL byte for the end of input, so "{}\0garbage" would parse.
// A raw NUL is never valid JSON (inside strings it must be escaped), so refuse it outright.
Status CheckNoNul(std::string_view json);

// ReadSafetensorsHeader, also returning the file size (safetensors_header.cc).
StatusOr<SafetensorsHeader> ReadHeader(FileSystem* fs, const std::string& path,
                                       uint64_t* file_size);

// A parsed index (safetensors_index.cc).
struct IndexContents {
  std::vector<std::string> files;                          // distinct, first appearance
  std::vector<std::pair<std::string, size_t>> weight_map;  // tensor -> index into files
};

// ReadSafetensorsIndex, also returning the weight_map (safetensors_index.cc): `resolved`
// receives the shard paths, resolved against the index's directory.
StatusOr<IndexContents> ReadIndex(FileSystem* fs, const std::string& index_path,
                                  std::vector<std::string>* resolved);

}  // namespace stasis::safetensors_internal

#endif  // STASIS_SNAPSHOT_SAFETENSORS_COMMON_H_
