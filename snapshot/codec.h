// File: snapshot/codec.h
//
// Chunk codecs of the image format (docs/image-format.md, "Data blocks"): raw, zstd, and
// zstd after byte-grouping. Pure transformations of memory; no I/O.
//
// Thread safety: a ChunkEncoder or ChunkDecoder holds a zstd context and scratch memory
// and is used by one thread at a time; keep one per worker.
#ifndef STASIS_SNAPSHOT_CODEC_H_
#define STASIS_SNAPSHOT_CODEC_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "snapshot/format.h"
#include "stasis/image.h"
#include "stasis/status.h"

struct ZSTD_CCtx_s;
struct ZSTD_DCtx_s;

namespace stasis {

// A compression must save at least this fraction of the input to be kept.
inline constexpr double kMinSavings = 0.05;

// Splits `n` bytes of E-byte elements into E planes (rotating each element left by one
// bit first), writing plane k at out + k*(n/E). REQUIRES: n % E == 0, E in {2, 4}.
void GroupBytes(const uint8_t* __restrict in, size_t n, int element_size, uint8_t* __restrict out);
// Inverse of GroupBytes, reading plane k from planes[k].
void UngroupBytes(const uint8_t* const* planes, size_t n, int element_size,
                  uint8_t* __restrict out);

class ChunkEncoder {
 public:
  explicit ChunkEncoder(int zstd_level);
  ~ChunkEncoder();
  ChunkEncoder(const ChunkEncoder&) = delete;
  ChunkEncoder& operator=(const ChunkEncoder&) = delete;

  struct Result {
    format::Codec codec = format::Codec::kRaw;
    uint8_t element_size = 0;
    // The stored payload; empty for raw chunks (the payload is the input itself).
    std::vector<uint8_t> stored;
  };
  // Encodes `raw` (n bytes). `element_size` (0, 2 or 4) says how the data groups; it is
  // used by kAuto only.
  Status Encode(const void* raw, size_t n, CodecChoice choice, int element_size, Result* out);

 private:
  // Compresses into dst (capacity cap); returns the compressed size, or 0 when the output
  // would not save kMinSavings.
  StatusOr<size_t> Compress(ZSTD_CCtx_s* cctx, const void* src, size_t n, uint8_t* dst, size_t cap);

  int level_;
  ZSTD_CCtx_s* cctx_;        // plain zstd chunks, at the caller's level
  ZSTD_CCtx_s* plane_cctx_;  // byte planes of grouped chunks (see codec.cc)
  std::vector<uint8_t> planes_;
};

class ChunkDecoder {
 public:
  ChunkDecoder();
  ~ChunkDecoder();
  ChunkDecoder(const ChunkDecoder&) = delete;
  ChunkDecoder& operator=(const ChunkDecoder&) = delete;

  // Decodes the stored payload of `chunk` (chunk.stored_size bytes at `stored`) into `dst`
  // (chunk.raw_size bytes). Does not check checksums; the caller does. `chunk_index` names
  // the chunk in errors. Corrupt payloads are kDataLoss.
  Status Decode(const format::ChunkInfo& chunk, size_t chunk_index, const void* stored, void* dst);

 private:
  Status DecodeZstd(const uint8_t* src, size_t n, uint8_t* dst, size_t raw,
                    const std::string& what);

  ZSTD_DCtx_s* dctx_;
  std::vector<uint8_t> scratch_;
};

}  // namespace stasis

#endif  // STASIS_SNAPSHOT_CODEC_H_
