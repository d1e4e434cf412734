// File: snapshot/format.h
//
// The stasis image format, version 1. See docs/image-format.md: it is the specification and
// this header only mirrors its constants (the records are public: stasis/image.h).
// Encoding and decoding here are pure functions on bytes (no I/O), so the writer, the
// readers and the fuzzers share them.
#ifndef STASIS_SNAPSHOT_FORMAT_H_
#define STASIS_SNAPSHOT_FORMAT_H_

#include <cstdint>
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
inline constexpr size_t kTensorRecordFixed = 32;
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
inline constexpr size_t kMaxRank = 32;
inline constexpr uint64_t kMaxSections = 1024;
inline constexpr uint64_t kMaxSectionSize = 1ull << 30;
inline constexpr size_t kMaxSectionNameLen = 256;
inline constexpr uint64_t kMaxMetadata = 4096;
inline constexpr size_t kMaxMetadataKeyLen = 256;
inline constexpr size_t kMaxMetadataValueLen = 1u << 20;

// Element count of a shape (1 for rank 0). Fails on negative dims or overflow past 2^62.
StatusOr<uint64_t> ElementCount(const std::vector<int64_t>& shape);
// Row-major strides (in elements) for `shape`.
std::vector<int64_t> ContiguousStrides(const std::vector<int64_t>& shape);
// The bytes a view spans (docs: Tensor record, byte_size). Fails on inconsistent input.
StatusOr<uint64_t> ViewByteSize(DType dtype, const std::vector<int64_t>& shape,
                                const std::vector<int64_t>& strides);

// Round `v` up / down to a multiple of `a` (a > 0).
uint64_t AlignUp(uint64_t v, uint64_t a);
uint64_t AlignDown(uint64_t v, uint64_t a);

std::string EncodeHeader();
// `bytes` must hold kHeaderSize bytes.
Status DecodeHeader(std::string_view bytes);

std::string EncodeFooter(const Footer& f);
// `bytes` must hold kFooterSize bytes; checks magic, version, flags and footer_xxh3.
StatusOr<Footer> DecodeFooter(std::string_view bytes);

std::string EncodeManifest(const Manifest& m);
// Parses and fully validates a manifest (every rule of the spec that the manifest alone
// decides, given where it starts). Never allocates more than a bounded multiple of
// `bytes.size()`.
StatusOr<Manifest> DecodeManifest(std::string_view bytes, uint64_t manifest_offset);
// The semantic rules alone; the writer runs them before publishing, so it can never write
// an image the reader rejects.
Status ValidateManifest(const Manifest& m, uint64_t manifest_offset);

}  // namespace stasis::format

#endif  // STASIS_SNAPSHOT_FORMAT_H_
