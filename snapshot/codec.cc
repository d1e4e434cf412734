#include "snapshot/codec.h"

// For ZSTD_c_literalCompressionMode: an experimental parameter, set through the stable
// ZSTD_CCtx_setParameter (so the shared library suffices).
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>
#include <zstd_errors.h>

#include <cmath>
#include <cstring>

namespace stasis {
namespace {

inline uint32_t Load32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;  // little-endian host (x86-64, aarch64); checked in CMake-free code by static_assert
             // below
}
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "stasis assumes a little-endian host");

void StoreU32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }

// Order-0 entropy (bits per byte) of a sample of `data`: 16 windows of 1 KiB spread evenly.
// Above kIncompressibleBits no order-0 coder can save kMinSavings, and trying zstd on such
// bytes (the mantissa plane of every float) costs as much as compressing the exponents.
// Data that is uniform byte-wise yet repetitive would be missed; model weights are not.
constexpr double kIncompressibleBits = 8.0 * (1.0 - kMinSavings) + 0.1;

double SampledEntropyBits(const uint8_t* data, size_t n) {
  constexpr size_t kWindows = 16, kWindow = 1024;
  uint32_t hist[256] = {};
  size_t total = 0;
  if (n <= kWindows * kWindow) {
    for (size_t i = 0; i < n; ++i) hist[data[i]]++;
    total = n;
  } else {
    size_t step = (n - kWindow) / (kWindows - 1);
    for (size_t w = 0; w < kWindows; ++w) {
      const uint8_t* p = data + w * step;
      for (size_t i = 0; i < kWindow; ++i) hist[p[i]]++;
    }
    total = kWindows * kWindow;
  }
  double bits = 0;
  for (uint32_t c : hist) {
    if (c == 0) continue;
    double p = static_cast<double>(c) / static_cast<double>(total);
    bits -= p * std::log2(p);
  }
  return bits;
}

}  // namespace

// These two loops run over every byte of every float chunk, on snapshot and on restore.
// They are written so the compiler vectorises them (restrict pointers, whole-word loads
// and stores, no loop-carried state); codec.cc is built with -O3 for that reason.
void GroupBytes(const uint8_t* __restrict in, size_t n, int element_size, uint8_t* __restrict out) {
  if (element_size == 2) {
    const size_t count = n / 2;
    uint8_t* __restrict lo = out;
    uint8_t* __restrict hi = out + count;
    for (size_t i = 0; i < count; ++i) {
      uint16_t u;
      std::memcpy(&u, in + 2 * i, 2);
      const uint16_t r = static_cast<uint16_t>((u << 1) | (u >> 15));
      lo[i] = static_cast<uint8_t>(r);
      hi[i] = static_cast<uint8_t>(r >> 8);
    }
  } else {
    const size_t count = n / 4;
    uint8_t* __restrict p0 = out;
    uint8_t* __restrict p1 = out + count;
    uint8_t* __restrict p2 = out + 2 * count;
    uint8_t* __restrict p3 = out + 3 * count;
    for (size_t i = 0; i < count; ++i) {
      uint32_t u;
      std::memcpy(&u, in + 4 * i, 4);
      const uint32_t r = (u << 1) | (u >> 31);
      p0[i] = static_cast<uint8_t>(r);
      p1[i] = static_cast<uint8_t>(r >> 8);
      p2[i] = static_cast<uint8_t>(r >> 16);
      p3[i] = static_cast<uint8_t>(r >> 24);
    }
  }
}

void UngroupBytes(const uint8_t* const* planes, size_t n, int element_size,
                  uint8_t* __restrict out) {
  if (element_size == 2) {
    const size_t count = n / 2;
    const uint8_t* __restrict lo = planes[0];
    const uint8_t* __restrict hi = planes[1];
    for (size_t i = 0; i < count; ++i) {
      const uint16_t r = static_cast<uint16_t>(lo[i] | (hi[i] << 8));
      const uint16_t u = static_cast<uint16_t>((r >> 1) | (r << 15));
      std::memcpy(out + 2 * i, &u, 2);
    }
  } else {
    const size_t count = n / 4;
    const uint8_t* __restrict p0 = planes[0];
    const uint8_t* __restrict p1 = planes[1];
    const uint8_t* __restrict p2 = planes[2];
    const uint8_t* __restrict p3 = planes[3];
    for (size_t i = 0; i < count; ++i) {
      const uint32_t r = static_cast<uint32_t>(p0[i]) | (static_cast<uint32_t>(p1[i]) << 8) |
                         (static_cast<uint32_t>(p2[i]) << 16) |
                         (static_cast<uint32_t>(p3[i]) << 24);
      const uint32_t u = (r >> 1) | (r << 31);
      std::memcpy(out + 4 * i, &u, 4);
    }
  }
}

ChunkEncoder::ChunkEncoder(int zstd_level)
    : level_(zstd_level), cctx_(ZSTD_createCCtx()), plane_cctx_(ZSTD_createCCtx()) {
  if (cctx_ != nullptr) ZSTD_CCtx_setParameter(cctx_, ZSTD_c_compressionLevel, level_);
  if (plane_cctx_ != nullptr) {
    // Byte planes of floats are close to i.i.d. symbols: matches are rare and short, so
    // the best coder is Huffman on literals. A fast strategy that barely searches for
    // matches, with literal compression forced on (negative levels turn it off) and long
    // minimum matches, gives a better ratio than level 1 at about twice the speed in both
    // directions (measured on N(0, 0.02) bf16: exponent plane 2.92x vs 2.78x).
    ZSTD_CCtx_setParameter(plane_cctx_, ZSTD_c_compressionLevel, -10);
    ZSTD_CCtx_setParameter(plane_cctx_, ZSTD_c_literalCompressionMode, ZSTD_ps_enable);
    ZSTD_CCtx_setParameter(plane_cctx_, ZSTD_c_minMatch, 7);
  }
}
ChunkEncoder::~ChunkEncoder() {
  ZSTD_freeCCtx(cctx_);
  ZSTD_freeCCtx(plane_cctx_);
}

StatusOr<CodecChoice> ParseCodecChoice(std::string_view text) {
  if (text == "auto") return CodecChoice::kAuto;
  if (text == "zstd") return CodecChoice::kZstd;
  if (text == "raw") return CodecChoice::kRaw;
  return InvalidArgumentError("--codec must be auto, raw or zstd");
}

StatusOr<size_t> ChunkEncoder::Compress(ZSTD_CCtx_s* cctx, const void* src, size_t n, uint8_t* dst,
                                        size_t cap) {
  if (cctx == nullptr) return ResourceExhaustedError("cannot allocate a zstd context");
  // Small inputs are cheap to try; sampling only pays on large ones.
  if (n >= 64 * 1024 &&
      SampledEntropyBits(static_cast<const uint8_t*>(src), n) > kIncompressibleBits)
    return size_t{0};
  size_t r = ZSTD_compress2(cctx, dst, cap, src, n);
  if (ZSTD_isError(r)) {
    // dstSize_tooSmall means the output would not have saved enough: not an error.
    if (ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall) return size_t{0};
    return InternalError(std::string("zstd compression failed: ") + ZSTD_getErrorName(r));
  }
  return r;
}

Status ChunkEncoder::Encode(const void* raw, size_t n, CodecChoice choice, int element_size,
                            Result* out) {
  out->codec = format::Codec::kRaw;
  out->element_size = 0;
  out->stored.clear();
  if (choice == CodecChoice::kRaw || n == 0) return OkStatus();
  // Anything that does not save kMinSavings is stored raw, so the compressor gets a budget.
  const size_t budget = n - static_cast<size_t>(static_cast<double>(n) * kMinSavings);
  bool grouped = choice == CodecChoice::kAuto && (element_size == 2 || element_size == 4) &&
                 n % static_cast<size_t>(element_size) == 0;
  if (!grouped) {
    out->stored.resize(ZSTD_compressBound(n));
    STASIS_ASSIGN_OR_RETURN(size_t c, Compress(cctx_, raw, n, out->stored.data(), budget));
    if (c == 0 || c >= budget) {
      out->stored.clear();
      return OkStatus();
    }
    out->stored.resize(c);
    out->codec = format::Codec::kZstd;
    return OkStatus();
  }

  const size_t e = static_cast<size_t>(element_size);
  const size_t plane = n / e;
  planes_.resize(n);
  GroupBytes(static_cast<const uint8_t*>(raw), n, element_size, planes_.data());
  const size_t table = 8 * e;
  out->stored.resize(table + n);  // worst case: every plane raw
  size_t pos = table;
  const size_t plane_budget = plane - static_cast<size_t>(static_cast<double>(plane) * kMinSavings);
  for (size_t k = 0; k < e; ++k) {
    const uint8_t* src = planes_.data() + k * plane;
    size_t c = 0;
    if (plane > 0) {
      STASIS_ASSIGN_OR_RETURN(
          c, Compress(plane_cctx_, src, plane, out->stored.data() + pos, plane_budget));
    }
    uint32_t codec = 1;
    if (c == 0 || c >= plane_budget) {
      std::memcpy(out->stored.data() + pos, src, plane);
      c = plane;
      codec = 0;
    }
    StoreU32(out->stored.data() + 8 * k, static_cast<uint32_t>(c));
    StoreU32(out->stored.data() + 8 * k + 4, codec);
    pos += c;
  }
  if (pos >= budget) {
    out->stored.clear();
    return OkStatus();
  }
  out->stored.resize(pos);
  out->codec = format::Codec::kGrouped;
  out->element_size = static_cast<uint8_t>(element_size);
  return OkStatus();
}

ChunkDecoder::ChunkDecoder() : dctx_(ZSTD_createDCtx()) {}
ChunkDecoder::~ChunkDecoder() { ZSTD_freeDCtx(dctx_); }

Status ChunkDecoder::DecodeZstd(const uint8_t* src, size_t n, uint8_t* dst, size_t raw,
                                const std::string& what) {
  if (dctx_ == nullptr) return ResourceExhaustedError("cannot allocate a zstd context");
  unsigned long long content = ZSTD_getFrameContentSize(src, n);
  if (content != raw)
    return DataLossError(what + ": zstd frame content size does not match (expected " +
                         std::to_string(raw) + ")");
  size_t frame = ZSTD_findFrameCompressedSize(src, n);
  if (ZSTD_isError(frame) || frame != n)
    return DataLossError(what + ": zstd frame does not fill its payload exactly");
  size_t r = ZSTD_decompressDCtx(dctx_, dst, raw, src, n);
  if (ZSTD_isError(r)) return DataLossError(what + ": zstd: " + ZSTD_getErrorName(r));
  if (r != raw) return DataLossError(what + ": zstd frame decoded to the wrong size");
  return OkStatus();
}

Status ChunkDecoder::Decode(const format::ChunkInfo& chunk, size_t chunk_index, const void* stored,
                            void* dst) {
  const std::string what = "chunk " + std::to_string(chunk_index);
  const uint8_t* src = static_cast<const uint8_t*>(stored);
  uint8_t* out = static_cast<uint8_t*>(dst);
  switch (chunk.codec) {
    case format::Codec::kRaw:
      if (chunk.stored_size != chunk.raw_size) return DataLossError(what + ": raw size mismatch");
      if (out != src) std::memcpy(out, src, chunk.raw_size);
      return OkStatus();
    case format::Codec::kZstd:
      return DecodeZstd(src, chunk.stored_size, out, chunk.raw_size, what);
    case format::Codec::kGrouped:
      break;
  }
  const size_t e = chunk.element_size;
  if ((e != 2 && e != 4) || chunk.raw_size % e != 0 || chunk.stored_size < 8 * e)
    return DataLossError(what + ": bad grouped chunk geometry");
  const size_t plane = chunk.raw_size / e;
  const uint8_t* planes[4];
  size_t pos = 8 * e;
  size_t zstd_planes = 0;
  for (size_t k = 0; k < e; ++k) zstd_planes += Load32(src + 8 * k + 4) == 1;
  scratch_.resize(zstd_planes * plane);
  size_t next_scratch = 0;
  for (size_t k = 0; k < e; ++k) {
    uint64_t size = Load32(src + 8 * k);
    uint32_t codec = Load32(src + 8 * k + 4);
    if (size > chunk.stored_size - pos)
      return DataLossError(what + ": plane " + std::to_string(k) + " runs past the payload");
    if (codec == 0) {
      if (size != plane)
        return DataLossError(what + ": raw plane " + std::to_string(k) + " has the wrong size");
      planes[k] = src + pos;
    } else if (codec == 1) {
      uint8_t* p = scratch_.data() + next_scratch * plane;
      ++next_scratch;
      STASIS_RETURN_IF_ERROR(
          DecodeZstd(src + pos, size, p, plane, what + " plane " + std::to_string(k)));
      planes[k] = p;
    } else {
      return DataLossError(what + ": plane " + std::to_string(k) + " has unknown codec " +
                           std::to_string(codec));
    }
    pos += size;
  }
  if (pos != chunk.stored_size) return DataLossError(what + ": planes do not fill the payload");
  UngroupBytes(planes, chunk.raw_size, static_cast<int>(e), out);
  return OkStatus();
}

}  // namespace stasis
