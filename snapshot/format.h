// File: snapshot/format.h
//
// The stasis image format, versions 1 and 2. See docs/image-format.md: it is the specification and
// this header only mirrors its constants (the records are public: stasis/image.h).
// Encoding and decoding here are pure functions on bytes (no I/O), so the writer, the
// readers and the fuzzers share them.
#ifndef STASIS_SNAPSHOT_FORMAT_H_
#define STASIS_SNAPSHOT_FORMAT_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "snapshot/dtype.h"
#include "stasis/image.h"
#include "stasis/status.h"

namespace stasis::format {

inline constexpr uint64_t kBlockAlign = 4096;
// Writers place a raw chunk of at least kMapPhase bytes at a file offset congruent to its
// dst_offset modulo kMapPhase (more zero padding), so that a restorer mapping it into a
// kMapPhase-aligned region gets the page cache's large folios mapped whole (2.6 GB hot:
// half the fault time). Readers must not rely on it.
inline constexpr uint64_t kMapPhase = 2ull << 20;
inline constexpr size_t kHeaderSize = 4096;
inline constexpr size_t kHeaderChecked = 24;  // bytes covered by header_xxh3
inline constexpr size_t kFooterSize = 64;
inline constexpr size_t kFooterChecked = 48;  // bytes covered by footer_xxh3
inline constexpr size_t kManifestHeaderSize = 32;
inline constexpr size_t kRegionRecordSize = 48;
inline constexpr size_t kChunkRecordSize = 64;
inline constexpr size_t kTensorRecordFixed = 32;  // v1
// v2: shared, suffix_len, one suffix byte, dtype, rank_flags, region_id, byte_offset.
inline constexpr size_t kTensorRecordMinV2 = 7;
inline constexpr uint8_t kRankMask = 0x3f;        // v2 rank_flags: the rank
inline constexpr uint8_t kStridesPresent = 0x40;  // v2 rank_flags: explicit strides follow
inline constexpr size_t kSectionRecordFixed = 32;
inline constexpr size_t kMetadataRecordFixed = 8;
inline constexpr char kHeaderMagic[8] = {'\x89', 'S', 'T', 'A', 'S', 'I', 'S', '\n'};
inline constexpr char kFooterMagic[8] = {'\n', 'S', 'I', 'S', 'A', 'T', 'S', '\x89'};

// Limits (docs/image-format.md, "Limits").
inline constexpr uint64_t kMaxManifestSize = 256ull << 20;
inline constexpr uint64_t kMaxRegions = 65536;
inline constexpr uint64_t kMaxRegionSize = 1ull << 48;
inline constexpr uint64_t kMaxRegionAlignment = 1ull << 30;
inline constexpr uint64_t kMaxChunks = 16ull << 20;
inline constexpr uint64_t kMaxChunkRawSize = 64ull << 20;
inline constexpr uint64_t kMaxTensors = 1ull << 20;
inline constexpr size_t kMaxTensorNameLen = 4096;
// Every tensor name together, decoded (v2 names are front-coded, so a small manifest could
// otherwise name gigabytes).
inline constexpr uint64_t kMaxTensorNameBytes = 256ull << 20;
inline constexpr size_t kMaxRank = 32;
inline constexpr uint64_t kMaxSections = 1024;
inline constexpr uint64_t kMaxSectionSize = 1ull << 30;
inline constexpr size_t kMaxSectionNameLen = 256;
inline constexpr uint64_t kMaxMetadata = 4096;
inline constexpr size_t kMaxMetadataKeyLen = 256;
inline constexpr size_t kMaxMetadataValueLen = 1u << 20;

// Element count of a shape (1 for rank 0). Fails on negative dims or overflow past 2^62.
StatusOr<uint64_t> ElementCount(std::span<const int64_t> shape);
// Row-major strides (in elements) for `shape`.
Dims ContiguousStrides(std::span<const int64_t> shape);
// The bytes a view spans (docs: Tensor record, byte_size). Fails on inconsistent input.
StatusOr<uint64_t> ViewByteSize(DType dtype, std::span<const int64_t> shape,
                                std::span<const int64_t> strides);

// Where a writer places a storage of `bytes` bytes in a region (layout, not format): at a
// multiple of kStorageAlign when it has at least that many bytes (CUDA's allocation granule
// for tensors: restored tensors are then as aligned as the framework's), else at its
// natural alignment, its size rounded up to a power of two, so tiny tensors are packed
// rather than padded apart (docs/image-format.md, "Version 2").
inline constexpr uint64_t kStorageAlign = 256;
uint64_t StorageAlignment(uint64_t bytes);

// Round `v` up / down to a multiple of `a` (a > 0).
uint64_t AlignUp(uint64_t v, uint64_t a);
uint64_t AlignDown(uint64_t v, uint64_t a);

std::string EncodeHeader(uint32_t version = kFormatVersion);
// `bytes` must hold kHeaderSize bytes. Returns the format version (1 or 2).
StatusOr<uint32_t> DecodeHeader(std::string_view bytes);

// Writes f.format_version; for version 1 bytes 40..47 are zero whatever f says.
std::string EncodeFooter(const Footer& f);
// `bytes` must hold kFooterSize bytes; checks magic, version, flags, footer_xxh3 and the
// manifest's codec and sizes.
StatusOr<Footer> DecodeFooter(std::string_view bytes);

// Version 1 manifest bytes.
std::string EncodeManifest(const Manifest& m);
// Version 2 manifest bytes, decoded form. REQUIRES: m.tensors sorted by name
// (SortTensorsByName); names unique.
std::string EncodeManifestV2(const Manifest& m);
// Sorts tensors by name, bytewise, as version 2 stores them.
void SortTensorsByName(std::vector<TensorInfo>* tensors);
// The manifest as a writer stores it: version 1 raw; version 2 compact and, when that saves
// at least 5%, one zstd frame at `zstd_level`. Sets footer->format_version,
// manifest_codec and manifest_raw_size. REQUIRES for version 2: as EncodeManifestV2.
StatusOr<std::string> EncodeStoredManifest(const Manifest& m, uint32_t version, int zstd_level,
                                           Footer* footer);

// Parses and fully validates a manifest of `version` (every rule of the spec that the
// manifest alone decides, given where it starts) from its decoded bytes. Never allocates
// more than a bounded multiple of `bytes.size()`. v2 checks each tensor as it parses it,
// with no work per tensor beyond its record (no name hashing, no message unless it fails).
StatusOr<Manifest> DecodeManifest(std::string_view bytes, uint64_t manifest_offset,
                                  uint32_t version = 1);
// The stored manifest (checksum already checked) decoded per the footer: the bytes
// themselves when raw, else the zstd frame decompressed to exactly manifest_raw_size.
// Returns a view of `stored` or of `*scratch`.
StatusOr<std::string_view> DecodeStoredManifest(std::string_view stored, const Footer& footer,
                                                std::string* scratch);
// The stored manifest (checksum already checked) decoded per the footer and parsed as
// DecodeManifest does. A zstd frame is decoded piecewise as its records are parsed, never
// whole (what ImageReader::Open uses: a fresh process then first-touches the tensor table,
// not megabytes of decoded manifest besides).
StatusOr<Manifest> ParseStoredManifest(std::string_view stored, const Footer& footer);
// The semantic rules alone (any version: it does not need sorted tensors); the writer runs
// them before publishing, so it can never write an image the reader rejects.
Status ValidateManifest(const Manifest& m, uint64_t manifest_offset);

}  // namespace stasis::format

#endif  // STASIS_SNAPSHOT_FORMAT_H_
