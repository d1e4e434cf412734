// File: snapshot/safetensors.h
//
// The safetensors side of the snapshot layer: a strict header parser (as strict as the
// reference Rust parser, huggingface/safetensors `tensor.rs`, and stricter where it is
// lax), the sharded index (`model.safetensors.index.json`), the importer that turns a
// checkpoint into one CPU region of a stasis image, and a writer for export.
//
// A safetensors file is: 8 bytes N (u64 little-endian), N bytes of JSON header, then the
// byte buffer. Every tensor's `data_offsets` are relative to the buffer, which starts at
// 8 + N and must be covered exactly, with no hole, overlap or trailing byte.
//
// Everything here treats its input as hostile: malformed input is kInvalidArgument with a
// message naming the tensor and field, nothing aborts, and memory stays bounded by the
// header limit (N <= 100,000,000) however the input is crafted.
//
// Thread safety: all functions are reentrant; they share no state. Concurrent calls on one
// ImageWriter are not allowed (ImageWriter is single-threaded).
#ifndef STASIS_SNAPSHOT_SAFETENSORS_H_
#define STASIS_SNAPSHOT_SAFETENSORS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "snapshot/dtype.h"
#include "stasis/file_system.h"
#include "stasis/status.h"

namespace stasis {

class ImageWriter;

// The reference parser's MAX_HEADER_SIZE.
inline constexpr uint64_t kMaxSafetensorsHeaderSize = 100'000'000;
// An index file is metadata plus one line per tensor; 64 MiB is orders of magnitude more
// than any real checkpoint needs.
inline constexpr uint64_t kMaxSafetensorsIndexSize = 64ull << 20;

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;
  // Byte range [begin, end) relative to the start of the data buffer (data_start).
  uint64_t begin = 0;
  uint64_t end = 0;
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  // in header order
  // `__metadata__`, sorted by key (keys are unique).
  std::vector<std::pair<std::string, std::string>> metadata;
  uint64_t data_start = 0;  // 8 + N: absolute file offset of the data buffer
};

// Parses and validates a header. `header_json` is the N bytes after the 8-byte length (so
// data_start = 8 + header_json.size()) and `file_size` the size of the whole file.
// Rejects (kInvalidArgument unless said otherwise):
//  - N > 100,000,000 [kResourceExhausted], file_size < 8 + N ("truncated");
//  - a first byte other than '{'; anything but strict JSON (trailing whitespace allowed);
//    duplicate keys at any level;
//  - a tensor entry that is not exactly {dtype, shape, data_offsets} (unknown or missing
//    fields); an unknown dtype; shape entries that are not integers in [0, 2^63);
//    data_offsets other than two non-negative integers with begin <= end;
//  - element counts reaching 2^62 (the image format's limit; the reference parser stops at
//    2^64), a bit count that is not a whole number of bytes (F4/F6 with a bad count), or
//    end - begin differing from the tensor's size;
//  - ranges that, sorted by begin, leave a hole, overlap, or do not end exactly at EOF;
//  - names that are empty, longer than format::kMaxTensorNameLen or contain NUL;
//  - `__metadata__` that is not an object of string values (null is accepted as absent,
//    like the reference parser's Option);
//  - more than format::kMaxTensors tensors or a rank above format::kMaxRank, limits of the
//    stasis image that the safetensors format does not have [kResourceExhausted].
// Unlike the reference parser (serde ignores unknown fields), unknown fields in a tensor
// entry are rejected: no known writer emits them, and silently dropping data is worse.
StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view header_json,
                                                   uint64_t file_size);

// Reads the 8-byte length, bounds it before allocating, reads the header and parses it.
// Errors carry the path as context.
StatusOr<SafetensorsHeader> ReadSafetensorsHeader(FileSystem* fs, const std::string& path);

// The header of a safetensors file held whole in memory (`file`: every byte of it), with
// ReadSafetensorsHeader's checks; its entries then lie inside `file`.
StatusOr<SafetensorsHeader> ParseSafetensorsFileBytes(std::string_view file);

// Reads a sharded checkpoint's index (`{"metadata": {...}, "weight_map": {tensor: file}}`,
// at most kMaxSafetensorsIndexSize bytes) and returns the distinct shard paths, resolved
// against the index's directory, in order of first appearance. Rejects a missing or empty
// weight_map, non-string file names, file names that contain '/', "..", or NUL (a shard
// must sit beside its index), and duplicate keys at any level. Unknown top-level keys are
// ignored, as transformers does.
StatusOr<std::vector<std::string>> ReadSafetensorsIndex(FileSystem* fs,
                                                        const std::string& index_path);

// Where the importer puts each tensor; exposed so the layout can be checked without
// writing an image.
struct SafetensorsImportItem {
  size_t shard = 0;            // index into SafetensorsImportPlan::shard_paths
  size_t entry = 0;            // index into that shard's header entries
  uint64_t region_offset = 0;  // byte offset in the region: format::StorageAlignment(size)
};

struct SafetensorsImportPlan {
  std::vector<std::string> shard_paths;
  std::vector<SafetensorsHeader> shards;
  std::vector<uint64_t> shard_sizes;  // file sizes, rechecked when the data is read
  // In region order: grouping class (GroupingElementSize 4, then 2, then 0), then shard,
  // then position of the data in the file (so each shard is read front to back per class).
  std::vector<SafetensorsImportItem> items;
  uint64_t region_size = 0;
  // The merged `__metadata__` of all shards as a JSON object (the first shard wins on a
  // conflicting key); empty when no shard has any.
  std::string metadata_json;
};

// Reads every header of `path` (a .safetensors file, or an index when it ends in ".json")
// and computes the layout. For a sharded checkpoint also checks that the weight_map and the
// shards agree exactly: each tensor is listed, under its own file, and no name repeats
// across shards.
StatusOr<SafetensorsImportPlan> PlanSafetensorsImport(FileSystem* fs, const std::string& path);

struct ImportOptions {
  // Nothing yet; here so options can be added without changing every caller.
};

// Imports the checkpoint at `path` into `writer`: one CPU region (alignment 4096, no VA
// hint) holding every tensor of every shard at the offsets PlanSafetensorsImport gives,
// streamed through a reused buffer of at most 4 MiB, plus metadata "source.format" =
// "safetensors" and, when present, "safetensors.metadata" (the merged `__metadata__`).
// On failure the writer holds partial state: the caller must Abandon() it.
Status ImportSafetensors(FileSystem* fs, const std::string& path, ImageWriter* writer,
                         const ImportOptions& options = {});

// One tensor to export. `size` must equal the tensor's byte size (shape x dtype bits / 8).
struct SafetensorsTensorOut {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // `size` bytes; may be null when size == 0
  uint64_t size = 0;
};

// Builds the first 8 + N bytes of a safetensors file whose tensors follow back to back in
// the given order: the length, then compact JSON (`__metadata__` first when non-empty,
// then each tensor as {"dtype","shape","data_offsets"}), space-padded so that 8 + N is a
// multiple of 8 like the reference writer. `data` is not read. Rejects bad names (empty,
// too long, NUL, invalid UTF-8, "__metadata__", duplicates), duplicate metadata keys,
// invalid UTF-8 metadata, and sizes that do not match shape and dtype.
StatusOr<std::string> EncodeSafetensorsHeader(
    const std::vector<SafetensorsTensorOut>& tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata);

// Writes a safetensors file atomically: the bytes go to "<path>.stasis-tmp.<pid>.<n>"
// (created exclusively), which is synced, closed and renamed over `path`, and the
// directory is synced. On any failure the temporary file is removed and nothing is left
// at `path` (if the failure comes after the rename, i.e. the directory sync, the new file
// is removed again). An existing `path` is kAlreadyExists unless `overwrite`.
Status WriteSafetensors(FileSystem* fs, const std::string& path,
                        const std::vector<SafetensorsTensorOut>& tensors,
                        const std::vector<std::pair<std::string, std::string>>& metadata,
                        bool overwrite);

}  // namespace stasis

#endif  // STASIS_SNAPSHOT_SAFETENSORS_H_
