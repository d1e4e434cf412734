#include "snapshot/format.h"

#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <unordered_set>

#include "common/hash.h"
#include "common/numbers.h"

namespace stasis::format {
namespace {

using u128 = unsigned __int128;

// The window a writer compresses a manifest with (128 KiB), see EncodeStoredManifest.
constexpr int kManifestWindowLog = 17;

// The longest a v2 tensor record can be: two name varints, the name, dtype and rank_flags,
// region and offset varints, and 32 dims and 32 strides of 10 bytes each.
constexpr size_t kMaxTensorRecordV2 = 10 + 10 + kMaxTensorNameLen + 2 + 10 + 10 + 2 * kMaxRank * 10;

class ByteWriter {
 public:
  void U8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void U16(uint16_t v) { Le(v, 2); }
  void U32(uint32_t v) { Le(v, 4); }
  void U64(uint64_t v) { Le(v, 8); }
  void I64(int64_t v) { Le(static_cast<uint64_t>(v), 8); }
  void Zeros(size_t n) { out_.append(n, '\0'); }
  void Bytes(std::string_view s) { out_.append(s); }
  void Varint(uint64_t v) {  // unsigned LEB128
    while (v >= 0x80) {
      out_.push_back(static_cast<char>((v & 0x7f) | 0x80));
      v >>= 7;
    }
    out_.push_back(static_cast<char>(v));
  }
  std::string Take() { return std::move(out_); }

 private:
  void Le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  std::string out_;
};

// Bounded little-endian cursor over the decoded manifest: every read checks the bytes left
// and fails with DataLoss naming the structure being read. The bytes are either all in
// memory, or a zstd frame decoded piecewise into a window as they are read (a manifest of
// 10^5 tensors decodes to megabytes that a fresh process would otherwise first-touch
// only to read once). Views returned by Bytes() stay valid until the next Need() or Fill().
class ByteCursor {
 public:
  explicit ByteCursor(std::string_view b) : b_(b), total_(b.size()) {}
  // The zstd frame `frame`, which decodes to `total` bytes, decoded as it is read.
  ByteCursor(std::string_view frame, uint64_t total, ZSTD_DCtx* dctx)
      : total_(total), dctx_(dctx), in_{frame.data(), frame.size(), 0} {}

  // Bytes left to read, in the window or still in the frame.
  uint64_t remaining() const { return total_ - (base_ + pos_); }
  // Makes the next min(n, remaining()) bytes readable at once.
  [[gnu::always_inline]] Status Fill(size_t n) {
    if (dctx_ == nullptr || n <= b_.size() - pos_) return OkStatus();
    return Refill(n);
  }
  // After the last record: the frame must end exactly where the declared size does.
  Status FinishFrame() {
    if (dctx_ == nullptr) return OkStatus();
    if (!frame_done_) {  // the last bytes decoded; its epilogue (a checksum) may be left
      char extra;
      ZSTD_outBuffer out{&extra, 1, 0};
      const size_t r = ZSTD_decompressStream(dctx_, &out, &in_);
      frame_done_ = !ZSTD_isError(r) && r == 0 && out.pos == 0;
    }
    if (!frame_done_ || in_.pos != in_.size)
      return DataLossError("manifest: the zstd frame does not decode to exactly " + Num(total_) +
                           " bytes");
    return OkStatus();
  }
  Status Need(size_t n, std::string_view what) {
    if (n > remaining()) {
      return DataLossError("manifest: " + std::string(what) + " needs " + std::to_string(n) +
                           " bytes at manifest offset " + std::to_string(base_ + pos_) + ", " +
                           std::to_string(remaining()) + " left");
    }
    return Fill(n);
  }
  // The same, naming record `index` of kind `what` ("chunk", 7) only when it fails.
  [[gnu::always_inline]] Status Need(size_t n, const char* what, uint64_t index,
                                     const char* tail = "") {
    if (n <= b_.size() - pos_) return OkStatus();
    if (n <= remaining()) return Fill(n);
    return Need(n, std::string(what) + " " + Num(index) + tail);
  }
  // An unsigned LEB128 of at most 10 bytes that fits in 64 bits; false when it does not, or
  // when it runs past the end (the cursor is then left anywhere: the caller fails). Reads
  // only the window: callers Fill() a whole record's worst case first.
  [[gnu::always_inline]] bool Varint(uint64_t* v) {
    // Most values of a manifest fit in one byte.
    if (pos_ < b_.size() && static_cast<uint8_t>(b_[pos_]) < 0x80) {
      *v = static_cast<uint8_t>(b_[pos_++]);
      return true;
    }
    return LongVarint(v);
  }
  uint8_t U8() { return static_cast<uint8_t>(b_[pos_++]); }
  uint16_t U16() { return static_cast<uint16_t>(Le(2)); }
  uint32_t U32() { return static_cast<uint32_t>(Le(4)); }
  uint64_t U64() { return Le(8); }
  int64_t I64() { return static_cast<int64_t>(Le(8)); }
  std::string_view Bytes(size_t n) {
    std::string_view s = b_.substr(pos_, n);
    pos_ += n;
    return s;
  }

 private:
  Status Refill(size_t n) {
    // Keep what is unread, then decode at least 128 KiB more (or what is left).
    const size_t unread = b_.size() - pos_;
    const size_t want =
        static_cast<size_t>(std::min<uint64_t>(remaining(), std::max<size_t>(n, 128u << 10)));
    if (window_.size() < want) {
      std::string grown(std::max(want, 2 * window_.size()), '\0');
      if (unread > 0) std::memcpy(grown.data(), b_.data() + pos_, unread);
      window_ = std::move(grown);
    } else if (unread > 0) {
      std::memmove(window_.data(), b_.data() + pos_, unread);
    }
    base_ += pos_;
    pos_ = 0;
    size_t have = unread;
    while (have < want) {
      ZSTD_outBuffer out{window_.data() + have, want - have, 0};
      const size_t in_before = in_.pos;
      const size_t r = ZSTD_decompressStream(dctx_, &out, &in_);
      if (ZSTD_isError(r))
        return DataLossError(std::string("manifest: the zstd frame does not decode: ") +
                             ZSTD_getErrorName(r));
      have += out.pos;
      frame_done_ = r == 0;
      if (out.pos == 0 && in_.pos == in_before)  // the frame ended (or stalled) short
        return DataLossError("manifest: the zstd frame decodes to fewer than " + Num(total_) +
                             " bytes");
    }
    b_ = std::string_view(window_.data(), have);
    return OkStatus();
  }
  bool LongVarint(uint64_t* v) {
    uint64_t out = 0;
    for (int shift = 0; shift < 70; shift += 7) {
      if (pos_ >= b_.size()) return false;
      const uint8_t byte = static_cast<uint8_t>(b_[pos_++]);
      if (shift == 63 && byte > 1) return false;  // past 64 bits
      out |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) {
        *v = out;
        return true;
      }
    }
    return false;  // longer than 10 bytes
  }
  uint64_t Le(int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i)
      v |= static_cast<uint64_t>(static_cast<uint8_t>(b_[pos_ + i])) << (8 * i);
    pos_ += n;
    return v;
  }
  std::string_view b_;  // the window: decoded bytes [base_, base_ + b_.size())
  size_t pos_ = 0;
  uint64_t base_ = 0;
  uint64_t total_;
  ZSTD_DCtx* dctx_ = nullptr;
  ZSTD_inBuffer in_{nullptr, 0, 0};
  bool frame_done_ = false;  // zstd said the frame is complete
  std::string window_;
};

uint64_t LoadU64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}
uint32_t LoadU32(const char* p) { return static_cast<uint32_t>(LoadU64(p) & 0xffffffffu); }

bool AllZero(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == 0; });
}

bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

}  // namespace

std::string_view CodecName(Codec c) {
  switch (c) {
    case Codec::kRaw:
      return "raw";
    case Codec::kZstd:
      return "zstd";
    case Codec::kGrouped:
      return "grouped";
  }
  return "unknown";
}

std::optional<TensorRef> Manifest::FindTensor(std::string_view name) const {
  const std::optional<size_t> i = tensors.Find(name);
  if (!i) return std::nullopt;
  return tensors[*i];
}
const SectionInfo* Manifest::FindSection(std::string_view name) const {
  for (const auto& s : sections)
    if (s.name == name) return &s;
  return nullptr;
}
const std::string* Manifest::FindMetadata(std::string_view key) const {
  for (const auto& kv : metadata)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

uint64_t StorageAlignment(uint64_t bytes) {
  if (bytes >= kStorageAlign) return kStorageAlign;
  uint64_t a = 1;
  while (a < bytes) a <<= 1;
  return a;
}

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
uint64_t AlignDown(uint64_t v, uint64_t a) { return v / a * a; }

uint64_t Manifest::StoredBytes() const {
  uint64_t n = 0;
  for (const auto& c : chunks) n += c.stored_size;
  return n;
}

uint64_t Manifest::RawBytes() const {
  uint64_t n = 0;
  for (const auto& c : chunks) n += c.raw_size;
  return n;
}

StatusOr<uint64_t> ElementCount(std::span<const int64_t> shape) {
  u128 count = 1;
  for (int64_t d : shape) {
    if (d < 0) return InvalidArgumentError("negative dimension " + std::to_string(d));
    count *= static_cast<uint64_t>(d);
    if (count >= (static_cast<u128>(1) << 62)) {
      // A zero later in the shape cannot rescue an absurd product: reject outright.
      return ResourceExhaustedError("element count overflows 2^62");
    }
  }
  return static_cast<uint64_t>(count);
}

Dims ContiguousStrides(std::span<const int64_t> shape) {
  Dims strides;
  strides.resize(shape.size());
  // Unsigned: a shape past 2^63 elements wraps here instead of overflowing (undefined);
  // such a shape is refused by ElementCount wherever it matters.
  uint64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = static_cast<int64_t>(s);
    s *= shape[i] > 0 ? static_cast<uint64_t>(shape[i]) : 1;
  }
  return strides;
}

StatusOr<uint64_t> ViewByteSize(DType dtype, std::span<const int64_t> shape,
                                std::span<const int64_t> strides) {
  if (shape.size() != strides.size())
    return InvalidArgumentError("shape and strides differ in rank");
  STASIS_ASSIGN_OR_RETURN(uint64_t count, ElementCount(shape));
  for (int64_t s : strides)
    if (s < 0) return InvalidArgumentError("negative stride " + std::to_string(s));
  if (count == 0) return uint64_t{0};
  int bits = DTypeBits(dtype);
  if (bits % 8 != 0) {
    const Dims contiguous = ContiguousStrides(shape);
    if (!std::equal(strides.begin(), strides.end(), contiguous.begin(), contiguous.end()))
      return InvalidArgumentError("sub-byte dtype " + std::string(DTypeName(dtype)) +
                                  " must be contiguous");
    return static_cast<uint64_t>((static_cast<u128>(count) * bits + 7) / 8);
  }
  u128 extent = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    extent += static_cast<u128>(shape[i] - 1) * static_cast<uint64_t>(strides[i]);
    if (extent >= (static_cast<u128>(1) << 62))
      return ResourceExhaustedError("view extent overflows");
  }
  return static_cast<uint64_t>(extent * (bits / 8));
}

namespace {

bool KnownVersion(uint32_t v) { return v >= kOldestFormatVersion && v <= kFormatVersion; }

std::string VersionsRead() {
  return "this build reads versions " + Num(kOldestFormatVersion) + " to " + Num(kFormatVersion);
}

}  // namespace

std::string EncodeHeader(uint32_t version) {
  ByteWriter w;
  w.Bytes(std::string_view(kHeaderMagic, 8));
  w.U32(version);
  w.U32(kHeaderSize);
  w.U64(0);  // flags
  std::string h = w.Take();
  uint64_t sum = Xxh3(h.data(), h.size());
  ByteWriter w2;
  w2.Bytes(h);
  w2.U64(sum);
  w2.Zeros(kHeaderSize - kHeaderChecked - 8);
  return w2.Take();
}

StatusOr<uint32_t> DecodeHeader(std::string_view b) {
  if (b.size() < kHeaderSize) return OutOfRangeError("truncated: header needs 4096 bytes");
  if (std::memcmp(b.data(), kHeaderMagic, 8) != 0)
    return InvalidArgumentError("not a stasis image: bad header magic");
  uint32_t version = LoadU32(b.data() + 8);
  if (!KnownVersion(version))
    return UnimplementedError("unsupported image format version " + Num(version) + " (" +
                              VersionsRead() + ")");
  if (Xxh3(b.data(), kHeaderChecked) != LoadU64(b.data() + 24))
    return DataLossError("header checksum mismatch");
  if (LoadU32(b.data() + 12) != kHeaderSize)
    return DataLossError("header: header_size is not 4096");
  if (LoadU64(b.data() + 16) != 0) return DataLossError("header: unknown flags set");
  if (!AllZero(b.substr(32, kHeaderSize - 32))) return DataLossError("header: padding is not zero");
  return version;
}

std::string EncodeFooter(const Footer& f) {
  ByteWriter w;
  w.U64(f.manifest_offset);
  w.U64(f.manifest_size);
  w.U64(f.manifest_xxh3);
  w.U64(f.file_size);
  w.U32(f.format_version);
  w.U32(0);
  if (f.format_version >= 2) {
    w.U32(static_cast<uint32_t>(f.manifest_codec));
    w.U32(f.manifest_raw_size);
  } else {
    w.U64(0);
  }
  std::string s = w.Take();
  uint64_t sum = Xxh3(s.data(), s.size());
  ByteWriter w2;
  w2.Bytes(s);
  w2.U64(sum);
  w2.Bytes(std::string_view(kFooterMagic, 8));
  return w2.Take();
}

StatusOr<Footer> DecodeFooter(std::string_view b) {
  if (b.size() < kFooterSize) return OutOfRangeError("truncated: footer needs 64 bytes");
  if (std::memcmp(b.data() + 56, kFooterMagic, 8) != 0)
    return InvalidArgumentError("not a stasis image: bad footer magic (truncated or not an image)");
  uint32_t version = LoadU32(b.data() + 32);
  if (!KnownVersion(version))
    return UnimplementedError("unsupported image format version " + Num(version) + " in footer (" +
                              VersionsRead() + ")");
  if (Xxh3(b.data(), kFooterChecked) != LoadU64(b.data() + 48))
    return DataLossError("footer checksum mismatch");
  if (LoadU32(b.data() + 36) != 0) return DataLossError("footer: unknown flags set");
  Footer f;
  f.manifest_offset = LoadU64(b.data());
  f.manifest_size = LoadU64(b.data() + 8);
  f.manifest_xxh3 = LoadU64(b.data() + 16);
  f.file_size = LoadU64(b.data() + 24);
  f.format_version = version;
  if (version == 1) {
    if (LoadU64(b.data() + 40) != 0) return DataLossError("footer: reserved field is not zero");
  } else {
    const uint32_t codec = LoadU32(b.data() + 40);
    if (codec > static_cast<uint32_t>(Codec::kZstd))
      return DataLossError("footer: unknown manifest codec " + Num(codec));
    f.manifest_codec = static_cast<Codec>(codec);
    f.manifest_raw_size = LoadU32(b.data() + 44);
    if (f.manifest_raw_size > kMaxManifestSize)
      return ResourceExhaustedError("footer: manifest_raw_size " + Num(f.manifest_raw_size) +
                                    " exceeds the limit of " + Num(kMaxManifestSize));
    if (f.manifest_raw_size < kManifestHeaderSize)
      return DataLossError("footer: manifest_raw_size " + Num(f.manifest_raw_size) +
                           " is too small");
    if (f.manifest_codec == Codec::kRaw && f.manifest_raw_size != f.manifest_size)
      return DataLossError("footer: a raw manifest's manifest_raw_size differs from its size");
  }
  if (f.manifest_offset < kHeaderSize || f.manifest_offset % kBlockAlign != 0)
    return DataLossError("footer: manifest_offset " + Num(f.manifest_offset) + " is misaligned");
  if (f.manifest_size > kMaxManifestSize)
    return ResourceExhaustedError("footer: manifest_size " + Num(f.manifest_size) +
                                  " exceeds the limit of " + Num(kMaxManifestSize));
  if (f.manifest_size < (version == 1 ? kManifestHeaderSize : 1))
    return DataLossError("footer: manifest_size " + Num(f.manifest_size) + " is too small");
  if (f.file_size != f.manifest_offset + f.manifest_size + kFooterSize)
    return DataLossError("footer: file_size does not match manifest_offset + manifest_size + 64");
  return f;
}

namespace {

void EncodeHeadRegionsChunks(const Manifest& m, ByteWriter& w) {
  w.U32(static_cast<uint32_t>(m.regions.size()));
  w.U32(static_cast<uint32_t>(m.tensors.size()));
  w.U32(static_cast<uint32_t>(m.sections.size()));
  w.U32(static_cast<uint32_t>(m.metadata.size()));
  w.U64(m.chunks.size());
  w.U64(0);
  for (const auto& r : m.regions) {
    w.U64(r.size);
    w.U64(r.alignment);
    w.U64(r.va_hint);
    w.U32(static_cast<uint32_t>(r.device_kind));
    w.U32(static_cast<uint32_t>(r.device_ordinal));
    w.Zeros(16);
  }
  for (const auto& c : m.chunks) {
    w.U64(c.file_offset);
    w.U64(c.stored_size);
    w.U64(c.raw_size);
    w.U64(c.dst_offset);
    w.U32(c.region_id);
    w.U8(static_cast<uint8_t>(c.codec));
    w.U8(c.element_size);
    w.U16(0);
    w.U64(c.stored_xxh3);
    w.U64(c.raw_xxh3);
    w.U64(0);
  }
}

void EncodeSectionsMetadata(const Manifest& m, ByteWriter& w) {
  for (const auto& s : m.sections) {
    w.U16(static_cast<uint16_t>(s.name.size()));
    w.Zeros(6);
    w.U64(s.file_offset);
    w.U64(s.size);
    w.U64(s.xxh3);
    w.Bytes(s.name);
  }
  for (const auto& [k, v] : m.metadata) {
    w.U16(static_cast<uint16_t>(k.size()));
    w.U16(0);
    w.U32(static_cast<uint32_t>(v.size()));
    w.Bytes(k);
    w.Bytes(v);
  }
}

bool IsRowMajor(std::span<const int64_t> shape, std::span<const int64_t> strides) {
  if (shape.size() != strides.size()) return false;
  uint64_t s = 1;  // unsigned: see ContiguousStrides
  for (size_t i = shape.size(); i-- > 0;) {
    if (strides[i] != static_cast<int64_t>(s)) return false;
    s *= shape[i] > 0 ? static_cast<uint64_t>(shape[i]) : 1;
  }
  return true;
}

}  // namespace

std::string EncodeManifest(const Manifest& m) {
  ByteWriter w;
  EncodeHeadRegionsChunks(m, w);
  for (const auto& t : m.tensors) {
    w.U16(static_cast<uint16_t>(t.name.size()));
    w.U8(static_cast<uint8_t>(t.dtype));
    w.U8(static_cast<uint8_t>(t.shape.size()));
    w.U32(t.region_id);
    w.U64(t.byte_offset);
    w.U64(t.byte_size);
    w.U64(0);
    w.Bytes(t.name);
    for (int64_t d : t.shape) w.I64(d);
    for (int64_t s : t.strides) w.I64(s);
  }
  EncodeSectionsMetadata(m, w);
  return w.Take();
}

std::string EncodeManifestV2(const Manifest& m) {
  ByteWriter w;
  EncodeHeadRegionsChunks(m, w);
  std::string_view prev;
  for (const auto& t : m.tensors) {
    const std::string_view name = t.name;
    // At least one byte of suffix: names are unique, so a reader that finds an empty suffix
    // or an equal name has found damage.
    size_t shared = 0;
    while (shared < prev.size() && shared + 1 < name.size() && prev[shared] == name[shared])
      ++shared;
    w.Varint(shared);
    w.Varint(name.size() - shared);
    w.Bytes(name.substr(shared));
    w.U8(static_cast<uint8_t>(t.dtype));
    const bool row_major = IsRowMajor(t.shape, t.strides);
    w.U8(static_cast<uint8_t>(t.shape.size() | (row_major ? 0 : kStridesPresent)));
    w.Varint(t.region_id);
    w.Varint(t.byte_offset);
    for (int64_t d : t.shape) w.Varint(static_cast<uint64_t>(d));
    if (!row_major)
      for (int64_t s : t.strides) w.Varint(static_cast<uint64_t>(s));
    prev = name;
  }
  EncodeSectionsMetadata(m, w);
  return w.Take();
}

void SortTensorsByName(std::vector<TensorInfo>* tensors) {
  std::sort(tensors->begin(), tensors->end(), [](const TensorInfo& a, const TensorInfo& b) {
    return std::string_view(a.name) < std::string_view(b.name);
  });
}

StatusOr<std::string> EncodeStoredManifest(const Manifest& m, uint32_t version, int zstd_level,
                                           Footer* footer) {
  if (!KnownVersion(version))
    return InvalidArgumentError("cannot write image format version " + Num(version) + " (" +
                                VersionsRead() + ")");
  footer->format_version = version;
  footer->manifest_codec = Codec::kRaw;
  footer->manifest_raw_size = 0;
  if (version == 1) return EncodeManifest(m);
  std::string raw = EncodeManifestV2(m);
  if (raw.size() > kMaxManifestSize) return ResourceExhaustedError("manifest exceeds 256 MiB");
  footer->manifest_raw_size = static_cast<uint32_t>(raw.size());
  std::string packed(ZSTD_compressBound(raw.size()), '\0');
  // A 128 KiB window: a reader decodes the frame piecewise (ParseStoredManifest), and zstd's
  // history buffer is the window, so the reader touches 128 KiB instead of the whole decoded
  // manifest. Measured on 100,000 tensors' records: 116 KB stored against 119 KB with the
  // level's own 2 MiB window (manifests repeat themselves locally).
  std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> cctx(ZSTD_createCCtx(), ZSTD_freeCCtx);
  if (!cctx) return ResourceExhaustedError("manifest: cannot make a zstd context");
  size_t n = ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, zstd_level);
  if (!ZSTD_isError(n))
    n = ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_windowLog, kManifestWindowLog);
  if (!ZSTD_isError(n))
    n = ZSTD_compress2(cctx.get(), packed.data(), packed.size(), raw.data(), raw.size());
  // As for chunks: stored raw unless compression saves at least 5%.
  if (ZSTD_isError(n) || n > raw.size() - raw.size() / 20) return raw;
  packed.resize(n);
  footer->manifest_codec = Codec::kZstd;
  return packed;
}

namespace {

// A stored manifest that is not raw must be exactly one zstd frame declaring exactly the
// size the footer promised (bounded there), so nothing is allocated on a hostile frame's
// word.
Status CheckManifestFrame(std::string_view stored, const Footer& f) {
  if (f.manifest_codec != Codec::kZstd)
    return DataLossError("manifest: unknown codec " + Num(static_cast<int>(f.manifest_codec)));
  const unsigned long long content = ZSTD_getFrameContentSize(stored.data(), stored.size());
  if (content == ZSTD_CONTENTSIZE_ERROR || content == ZSTD_CONTENTSIZE_UNKNOWN ||
      content != f.manifest_raw_size)
    return DataLossError("manifest: the zstd frame does not declare the footer's size of " +
                         Num(f.manifest_raw_size) + " bytes");
  const size_t frame = ZSTD_findFrameCompressedSize(stored.data(), stored.size());
  if (ZSTD_isError(frame) || frame != stored.size())
    return DataLossError("manifest: not exactly one zstd frame");
  return OkStatus();
}

}  // namespace

StatusOr<std::string_view> DecodeStoredManifest(std::string_view stored, const Footer& f,
                                                std::string* scratch) {
  if (f.format_version == 1 || f.manifest_codec == Codec::kRaw) return stored;
  STASIS_RETURN_IF_ERROR(CheckManifestFrame(stored, f));
  scratch->resize(f.manifest_raw_size);
  const size_t n = ZSTD_decompress(scratch->data(), scratch->size(), stored.data(), stored.size());
  if (ZSTD_isError(n) || n != f.manifest_raw_size)
    return DataLossError("manifest: the zstd frame does not decode to " + Num(f.manifest_raw_size) +
                         " bytes");
  return std::string_view(*scratch);
}

namespace {

// "tensor 12 'name': " for messages, built only when one is needed.
std::string TensorWhere(size_t i, std::string_view name) {
  return "tensor " + Num(i) + " '" + std::string(name) + "'";
}

// Version 2 tensor records (docs/image-format.md, "Tensor record, v2"), each checked as it
// is parsed: the order of names (hence uniqueness), dtype, rank, region, view size and
// bounds. Messages are built only on failure: no work per tensor beyond its record.
Status DecodeTensorsV2(ByteCursor& c, uint64_t count, Manifest* m) {
  auto bad = [&](uint64_t i, std::string_view what) {
    return DataLossError("tensor " + Num(i) + ": " + std::string(what));
  };
  TensorTable& table = m->tensors;
  // Names are front-coded, so their decoded size is unknown until the end. Room for 48
  // bytes a name costs only address space until it is written, and spares a copy of every
  // name made so far when the buffer grows (it doubles past that).
  table.Reserve(count, std::min<uint64_t>(kMaxTensorNameBytes, 48 * count), 2 * count);
  int64_t shape[kMaxRank], strides[kMaxRank];
  std::string_view prev;
  for (uint64_t i = 0; i < count; ++i) {
    // The record's worst case in the window, so its varints and name read it alone.
    STASIS_RETURN_IF_ERROR(c.Fill(kMaxTensorRecordV2));
    uint64_t shared = 0, suffix_len = 0;
    if (!c.Varint(&shared) || !c.Varint(&suffix_len))
      return bad(i, "name lengths are truncated or not a varint");
    if (shared > prev.size())
      return bad(i, "shares " + Num(shared) + " bytes with a previous name of " + Num(prev.size()));
    if (suffix_len == 0 || suffix_len > kMaxTensorNameLen ||
        shared + suffix_len > kMaxTensorNameLen)
      return bad(i, "name length out of range");
    // Front coding lets a 7-byte record name 4 KiB: the names together are bounded, as
    // the manifest is, so a small manifest never expands into gigabytes of names.
    if (table.name_bytes() + shared + suffix_len > kMaxTensorNameBytes)
      return ResourceExhaustedError("tensor " + Num(i) + ": the tensor names exceed " +
                                    Num(kMaxTensorNameBytes) + " bytes together");
    STASIS_RETURN_IF_ERROR(c.Need(suffix_len + 2, "tensor", i, " name and dims"));
    const std::string_view suffix = c.Bytes(suffix_len);
    if (std::memchr(suffix.data(), 0, suffix.size()) != nullptr) return bad(i, "name contains NUL");
    const uint8_t dtype = c.U8();
    const uint8_t rank_flags = c.U8();
    auto dt = DTypeFromId(dtype);
    if (!dt) return bad(i, "unknown dtype id " + Num(dtype));
    if (rank_flags & 0x80) return bad(i, "reserved bit of rank_flags is set");
    const size_t rank = rank_flags & kRankMask;
    if (rank > kMaxRank) return bad(i, "rank " + Num(rank) + " exceeds 32");
    uint64_t region = 0, byte_offset = 0;
    if (!c.Varint(&region) || !c.Varint(&byte_offset))
      return bad(i, "region or offset is truncated or not a varint");
    if (region >= m->regions.size()) return bad(i, "region id " + Num(region) + " out of range");
    for (size_t d = 0; d < rank; ++d) {
      uint64_t v = 0;
      if (!c.Varint(&v) || v >= (1ull << 63)) return bad(i, "bad dimension");
      shape[d] = static_cast<int64_t>(v);
    }
    const std::span<const int64_t> shape_view(shape, rank), strides_view(strides, rank);
    uint64_t size = 0;
    Status size_error;  // set only when the view is bad
    if (rank_flags & kStridesPresent) {
      for (size_t d = 0; d < rank; ++d) {
        uint64_t v = 0;
        if (!c.Varint(&v) || v >= (1ull << 63)) return bad(i, "bad stride");
        strides[d] = static_cast<int64_t>(v);
      }
      StatusOr<uint64_t> extent = ViewByteSize(*dt, shape_view, strides_view);
      if (extent.ok())
        size = *extent;
      else
        size_error = extent.status();
    } else {
      // Row-major strides; the extent is the element count (the sub-byte rule holds by
      // construction).
      uint64_t stride = 1;  // unsigned: wraps only past 2^63 elements, refused below
      for (size_t d = rank; d-- > 0;) {
        strides[d] = static_cast<int64_t>(stride);
        stride *= static_cast<uint64_t>(shape[d] > 0 ? shape[d] : 1);
      }
      // ElementCount's rule inline (no StatusOr per tensor on the way that succeeds).
      u128 elements = 1;
      for (size_t d = 0; d < rank && elements < (static_cast<u128>(1) << 62); ++d)
        elements *= static_cast<uint64_t>(shape[d]);
      if (elements < (static_cast<u128>(1) << 62))
        size = static_cast<uint64_t>((elements * static_cast<unsigned>(DTypeBits(*dt)) + 7) / 8);
      else
        size_error = ElementCount(shape_view).status();
    }
    auto name = [&] { return std::string(prev.substr(0, shared)) + std::string(suffix); };
    if (!size_error.ok())
      return DataLossError(TensorWhere(i, name()) + ": " + std::string(size_error.message()));
    const RegionInfo& r = m->regions[region];
    if (byte_offset > r.size || size > r.size - byte_offset)
      return DataLossError(TensorWhere(i, name()) + ": runs past the end of region " + Num(region));
    const std::string_view name_now =
        table.AppendFrontCoded(shared, suffix, *dt, shape_view, strides_view,
                               static_cast<uint32_t>(region), byte_offset, size);
    // Strictly increasing names, hence unique.
    if (!table.sorted_by_name()) {
      const std::string_view before = table[i - 1].name;  // `prev` may have moved
      if (name_now == before) return bad(i, "duplicate name '" + std::string(name_now) + "'");
      return bad(i, "name '" + std::string(name_now) + "' is not after '" + std::string(before) +
                        "' (tensors are sorted by name)");
    }
    prev = name_now;
  }
  return OkStatus();
}

Status DecodeTensorsV1(ByteCursor& c, uint64_t count, Manifest* m) {
  int64_t shape[kMaxRank], strides[kMaxRank];
  m->tensors.Reserve(count, 0, 0);
  for (uint64_t i = 0; i < count; ++i) {
    STASIS_RETURN_IF_ERROR(c.Need(kTensorRecordFixed, "tensor", i));
    TensorRef t;
    size_t name_len = c.U16();
    uint8_t dtype = c.U8();
    size_t rank = c.U8();
    t.region_id = c.U32();
    t.byte_offset = c.U64();
    t.byte_size = c.U64();
    if (c.U64() != 0) return DataLossError("tensor " + Num(i) + ": reserved bytes are not zero");
    if (name_len == 0 || name_len > kMaxTensorNameLen)
      return DataLossError("tensor " + Num(i) + ": name length " + Num(name_len) + " out of range");
    if (rank > kMaxRank)
      return DataLossError("tensor " + Num(i) + ": rank " + Num(rank) + " exceeds 32");
    auto dt = DTypeFromId(dtype);
    if (!dt) return DataLossError("tensor " + Num(i) + ": unknown dtype id " + Num(dtype));
    t.dtype = *dt;
    STASIS_RETURN_IF_ERROR(c.Need(name_len + 16 * rank, "tensor", i, " name and dims"));
    t.name = c.Bytes(name_len);
    for (size_t d = 0; d < rank; ++d) shape[d] = c.I64();
    for (size_t d = 0; d < rank; ++d) strides[d] = c.I64();
    t.shape = {shape, rank};
    t.strides = {strides, rank};
    m->tensors.Append(t);
  }
  return OkStatus();
}

Status ValidateCounts(const Manifest& m) {
  if (m.regions.size() > kMaxRegions || m.chunks.size() > kMaxChunks ||
      m.tensors.size() > kMaxTensors || m.sections.size() > kMaxSections ||
      m.metadata.size() > kMaxMetadata)
    return ResourceExhaustedError("manifest: a record count exceeds its limit");
  return OkStatus();
}
Status ValidateAllButTensors(const Manifest& m, uint64_t manifest_offset);
Status ValidateTensors(const Manifest& m);

// The records of a decoded manifest, from `c` (all of its bytes, or a frame decoded as read).
StatusOr<Manifest> DecodeManifestFrom(ByteCursor& c, uint64_t manifest_offset, uint32_t version) {
  if (!KnownVersion(version))
    return UnimplementedError("unsupported image format version " + Num(version));
  if (c.remaining() > kMaxManifestSize) return ResourceExhaustedError("manifest exceeds 256 MiB");
  STASIS_RETURN_IF_ERROR(c.Need(kManifestHeaderSize, "manifest header"));
  uint64_t region_count = c.U32();
  uint64_t tensor_count = c.U32();
  uint64_t section_count = c.U32();
  uint64_t metadata_count = c.U32();
  uint64_t chunk_count = c.U64();
  if (c.U64() != 0) return DataLossError("manifest header: reserved field is not zero");

  auto limit = [](uint64_t n, uint64_t max, const char* what) -> Status {
    if (n > max)
      return ResourceExhaustedError(std::string(what) + " count " + Num(n) +
                                    " exceeds the limit of " + Num(max));
    return OkStatus();
  };
  STASIS_RETURN_IF_ERROR(limit(region_count, kMaxRegions, "region"));
  STASIS_RETURN_IF_ERROR(limit(chunk_count, kMaxChunks, "chunk"));
  STASIS_RETURN_IF_ERROR(limit(tensor_count, kMaxTensors, "tensor"));
  STASIS_RETURN_IF_ERROR(limit(section_count, kMaxSections, "section"));
  STASIS_RETURN_IF_ERROR(limit(metadata_count, kMaxMetadata, "metadata"));
  // Every record has a minimum size: a count the remaining bytes cannot hold is corrupt,
  // and checking it first keeps every reservation below a multiple of the manifest size.
  const size_t tensor_min = version == 1 ? kTensorRecordFixed + 1 : kTensorRecordMinV2;
  u128 min_bytes = static_cast<u128>(region_count) * kRegionRecordSize +
                   static_cast<u128>(chunk_count) * kChunkRecordSize +
                   static_cast<u128>(tensor_count) * tensor_min +
                   static_cast<u128>(section_count) * (kSectionRecordFixed + 1) +
                   static_cast<u128>(metadata_count) * (kMetadataRecordFixed + 1);
  if (min_bytes > c.remaining())
    return DataLossError("manifest: record counts need at least " +
                         Num(static_cast<uint64_t>(min_bytes)) + " bytes, manifest has " +
                         Num(c.remaining()));

  Manifest m;
  m.regions.reserve(region_count);
  for (uint64_t i = 0; i < region_count; ++i) {
    STASIS_RETURN_IF_ERROR(c.Need(kRegionRecordSize, "region", i));
    RegionInfo r;
    r.size = c.U64();
    r.alignment = c.U64();
    r.va_hint = c.U64();
    uint32_t kind = c.U32();
    r.device_ordinal = static_cast<int32_t>(c.U32());
    if (!AllZero(c.Bytes(16)))
      return DataLossError("region " + Num(i) + ": reserved bytes are not zero");
    if (kind > 1) return DataLossError("region " + Num(i) + ": unknown device kind " + Num(kind));
    r.device_kind = static_cast<DeviceKind>(kind);
    m.regions.push_back(r);
  }
  m.chunks.reserve(chunk_count);
  for (uint64_t i = 0; i < chunk_count; ++i) {
    STASIS_RETURN_IF_ERROR(c.Need(kChunkRecordSize, "chunk", i));
    ChunkInfo ch;
    ch.file_offset = c.U64();
    ch.stored_size = c.U64();
    ch.raw_size = c.U64();
    ch.dst_offset = c.U64();
    ch.region_id = c.U32();
    uint8_t codec = c.U8();
    ch.element_size = c.U8();
    uint16_t reserved16 = c.U16();
    ch.stored_xxh3 = c.U64();
    ch.raw_xxh3 = c.U64();
    uint64_t reserved64 = c.U64();
    if (reserved16 != 0 || reserved64 != 0)
      return DataLossError("chunk " + Num(i) + ": reserved bytes are not zero");
    if (codec > 2) return DataLossError("chunk " + Num(i) + ": unknown codec " + Num(codec));
    ch.codec = static_cast<Codec>(codec);
    m.chunks.push_back(ch);
  }
  STASIS_RETURN_IF_ERROR(version == 1 ? DecodeTensorsV1(c, tensor_count, &m)
                                      : DecodeTensorsV2(c, tensor_count, &m));
  m.sections.reserve(section_count);
  for (uint64_t i = 0; i < section_count; ++i) {
    STASIS_RETURN_IF_ERROR(c.Need(kSectionRecordFixed, "section", i));
    SectionInfo s;
    size_t name_len = c.U16();
    if (!AllZero(c.Bytes(6)))
      return DataLossError("section " + Num(i) + ": reserved bytes are not zero");
    s.file_offset = c.U64();
    s.size = c.U64();
    s.xxh3 = c.U64();
    if (name_len == 0 || name_len > kMaxSectionNameLen)
      return DataLossError("section " + Num(i) + ": name length " + Num(name_len) +
                           " out of range");
    STASIS_RETURN_IF_ERROR(c.Need(name_len, "section", i, " name"));
    s.name = std::string(c.Bytes(name_len));
    m.sections.push_back(std::move(s));
  }
  m.metadata.reserve(metadata_count);
  for (uint64_t i = 0; i < metadata_count; ++i) {
    STASIS_RETURN_IF_ERROR(c.Need(kMetadataRecordFixed, "metadata", i));
    size_t key_len = c.U16();
    if (c.U16() != 0) return DataLossError("metadata " + Num(i) + ": reserved bytes are not zero");
    size_t value_len = c.U32();
    if (key_len == 0 || key_len > kMaxMetadataKeyLen)
      return DataLossError("metadata " + Num(i) + ": key length " + Num(key_len) + " out of range");
    if (value_len > kMaxMetadataValueLen)
      return ResourceExhaustedError("metadata " + Num(i) + ": value length " + Num(value_len) +
                                    " exceeds 1 MiB");
    STASIS_RETURN_IF_ERROR(c.Need(key_len + value_len, "metadata", i, " key and value"));
    std::string key(c.Bytes(key_len));
    std::string value(c.Bytes(value_len));
    m.metadata.emplace_back(std::move(key), std::move(value));
  }
  if (c.remaining() != 0)
    return DataLossError("manifest: " + Num(c.remaining()) +
                         " unexpected bytes after the last record");
  STASIS_RETURN_IF_ERROR(c.FinishFrame());
  STASIS_RETURN_IF_ERROR(ValidateCounts(m));
  STASIS_RETURN_IF_ERROR(ValidateAllButTensors(m, manifest_offset));
  // v2 tensors were checked record by record; v1 tensors are checked here.
  if (version == 1) STASIS_RETURN_IF_ERROR(ValidateTensors(m));
  return m;
}

}  // namespace

StatusOr<Manifest> DecodeManifest(std::string_view bytes, uint64_t manifest_offset,
                                  uint32_t version) {
  ByteCursor c(bytes);
  return DecodeManifestFrom(c, manifest_offset, version);
}

StatusOr<Manifest> ParseStoredManifest(std::string_view stored, const Footer& f) {
  if (f.format_version == 1 || f.manifest_codec == Codec::kRaw)
    return DecodeManifest(stored, f.manifest_offset, f.format_version);
  STASIS_RETURN_IF_ERROR(CheckManifestFrame(stored, f));
  std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> dctx(ZSTD_createDCtx(), ZSTD_freeDCtx);
  if (!dctx) return ResourceExhaustedError("manifest: cannot make a zstd context");
  ByteCursor c(stored, f.manifest_raw_size, dctx.get());
  return DecodeManifestFrom(c, f.manifest_offset, f.format_version);
}

Status ValidateManifest(const Manifest& m, uint64_t manifest_offset) {
  STASIS_RETURN_IF_ERROR(ValidateCounts(m));
  STASIS_RETURN_IF_ERROR(ValidateAllButTensors(m, manifest_offset));
  return ValidateTensors(m);
}

namespace {

Status ValidateAllButTensors(const Manifest& m, uint64_t manifest_offset) {
  for (size_t i = 0; i < m.regions.size(); ++i) {
    const RegionInfo& r = m.regions[i];
    auto where = [&] { return "region " + Num(i) + ": "; };
    if (r.size > kMaxRegionSize) return ResourceExhaustedError(where() + "size exceeds 2^48");
    if (!IsPowerOfTwo(r.alignment) || r.alignment > kMaxRegionAlignment)
      return DataLossError(where() + "alignment " + Num(r.alignment) +
                           " is not a power of two <= 2^30");
    if (r.va_hint % r.alignment != 0) return DataLossError(where() + "va_hint is not aligned");
    if (r.device_kind == DeviceKind::kCpu ? r.device_ordinal != -1 : r.device_ordinal < 0)
      return DataLossError(where() + "device ordinal " + std::to_string(r.device_ordinal) +
                           " does not fit the device kind");
  }

  // Blocks (chunk and section payloads) in file order must not overlap and must lie between
  // the header and the manifest.
  auto check_block = [&](uint64_t off, uint64_t size, const char* kind, size_t i) -> Status {
    if (off % kBlockAlign != 0 || off < kHeaderSize)
      return DataLossError(kind + Num(i) + ": file offset " + Num(off) +
                           " is not a block boundary after the header");
    if (size > manifest_offset || off > manifest_offset - size)
      return DataLossError(kind + Num(i) + ": payload runs past the manifest offset " +
                           Num(manifest_offset));
    return OkStatus();
  };
  std::vector<std::pair<uint64_t, uint64_t>> extents;  // (offset, end)
  extents.reserve(m.chunks.size() + m.sections.size());

  for (size_t i = 0; i < m.chunks.size(); ++i) {
    const ChunkInfo& c = m.chunks[i];
    auto where = [&] { return "chunk " + Num(i); };
    if (c.region_id >= m.regions.size())
      return DataLossError(where() + ": region id " + Num(c.region_id) + " out of range");
    if (c.raw_size == 0 || c.raw_size > kMaxChunkRawSize)
      return DataLossError(where() + ": raw size " + Num(c.raw_size) + " out of range");
    if (c.stored_size == 0) return DataLossError(where() + ": stored size is zero");
    const RegionInfo& r = m.regions[c.region_id];
    if (c.dst_offset > r.size || c.raw_size > r.size - c.dst_offset)
      return DataLossError(where() + ": destination runs past the end of region " +
                           Num(c.region_id));
    switch (c.codec) {
      case Codec::kRaw:
        if (c.element_size != 0 || c.stored_size != c.raw_size || c.stored_xxh3 != c.raw_xxh3)
          return DataLossError(where() + ": inconsistent raw chunk");
        break;
      case Codec::kZstd:
        if (c.element_size != 0)
          return DataLossError(where() + ": element size set on a zstd chunk");
        [[fallthrough]];
      case Codec::kGrouped:
        if (c.stored_size > c.raw_size + c.raw_size / 8 + 4096)
          return DataLossError(where() + ": stored size " + Num(c.stored_size) +
                               " exceeds the bound");
        if (c.codec == Codec::kGrouped) {
          if (c.element_size != 2 && c.element_size != 4)
            return DataLossError(where() + ": element size " + Num(c.element_size) +
                                 " is not 2 or 4");
          if (c.raw_size % c.element_size != 0)
            return DataLossError(where() + ": raw size is not a multiple of the element size");
          if (c.stored_size < 8u * c.element_size)
            return DataLossError(where() + ": stored size too small for the plane table");
        }
        break;
      default:
        return DataLossError(where() + ": unknown codec " + Num(static_cast<int>(c.codec)));
    }
    STASIS_RETURN_IF_ERROR(check_block(c.file_offset, c.stored_size, "chunk ", i));
    extents.emplace_back(c.file_offset, c.file_offset + c.stored_size);
  }

  std::unordered_set<std::string_view> names;
  for (size_t i = 0; i < m.sections.size(); ++i) {
    const SectionInfo& s = m.sections[i];
    auto where = [&] { return "section " + Num(i); };
    if (s.name.empty() || s.name.size() > kMaxSectionNameLen)
      return DataLossError(where() + ": name length out of range");
    if (!names.insert(s.name).second)
      return DataLossError(where() + ": duplicate name '" + s.name + "'");
    if (s.size > kMaxSectionSize) return ResourceExhaustedError(where() + ": size exceeds 1 GiB");
    if (s.size == 0) {
      if (s.file_offset != 0) return DataLossError(where() + ": empty section with a file offset");
      continue;
    }
    STASIS_RETURN_IF_ERROR(check_block(s.file_offset, s.size, "section ", i));
    extents.emplace_back(s.file_offset, s.file_offset + s.size);
  }
  std::sort(extents.begin(), extents.end());
  for (size_t i = 1; i < extents.size(); ++i)
    if (extents[i].first < extents[i - 1].second)
      return DataLossError("blocks overlap at file offset " + Num(extents[i].first));

  // Chunks of one region must not overlap.
  std::vector<size_t> order(m.chunks.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const auto &x = m.chunks[a], &y = m.chunks[b];
    return x.region_id != y.region_id ? x.region_id < y.region_id : x.dst_offset < y.dst_offset;
  });
  for (size_t k = 1; k < order.size(); ++k) {
    const auto &prev = m.chunks[order[k - 1]], &cur = m.chunks[order[k]];
    if (prev.region_id == cur.region_id && cur.dst_offset < prev.dst_offset + prev.raw_size)
      return DataLossError("chunk " + Num(order[k]) + " overlaps chunk " + Num(order[k - 1]) +
                           " in region " + Num(cur.region_id));
  }

  names.clear();
  for (size_t i = 0; i < m.metadata.size(); ++i) {
    const auto& [k, v] = m.metadata[i];
    if (k.empty() || k.size() > kMaxMetadataKeyLen)
      return DataLossError("metadata " + Num(i) + ": key length out of range");
    if (v.size() > kMaxMetadataValueLen)
      return ResourceExhaustedError("metadata " + Num(i) + ": value exceeds 1 MiB");
    if (!names.insert(k).second)
      return DataLossError("metadata " + Num(i) + ": duplicate key '" + k + "'");
  }
  return OkStatus();
}

Status ValidateTensors(const Manifest& m) {
  // The reader's bound on every name together (front coding makes it reachable with a
  // small manifest): a writer must not publish an image no reader opens.
  if (m.tensors.name_bytes() > kMaxTensorNameBytes)
    return ResourceExhaustedError("the tensor names take " + Num(m.tensors.name_bytes()) +
                                  " bytes together, over the limit of " + Num(kMaxTensorNameBytes));
  std::unordered_set<std::string_view> names;
  names.reserve(m.tensors.size());
  for (size_t i = 0; i < m.tensors.size(); ++i) {
    const TensorRef t = m.tensors[i];
    auto where = [&] { return "tensor " + Num(i); };
    if (t.name.empty() || t.name.size() > kMaxTensorNameLen)
      return DataLossError(where() + ": name length out of range");
    if (t.name.find('\0') != std::string_view::npos)
      return DataLossError(where() + ": name contains NUL");
    if (!names.insert(t.name).second)
      return DataLossError(where() + ": duplicate name '" + std::string(t.name) + "'");
    if (t.shape.size() > kMaxRank || t.shape.size() != t.strides.size())
      return DataLossError(where() + ": bad rank");
    if (!DTypeFromId(static_cast<uint8_t>(t.dtype)))
      return DataLossError(where() + ": unknown dtype id " + Num(static_cast<int>(t.dtype)));
    if (t.region_id >= m.regions.size())
      return DataLossError(where() + ": region id " + Num(t.region_id) + " out of range");
    auto size = ViewByteSize(t.dtype, t.shape, t.strides);
    if (!size.ok())
      return DataLossError(where() + " '" + std::string(t.name) +
                           "': " + std::string(size.status().message()));
    if (*size != t.byte_size)
      return DataLossError(where() + " '" + std::string(t.name) + "': byte_size " +
                           Num(t.byte_size) + " does not match its view (" + Num(*size) + ")");
    const RegionInfo& r = m.regions[t.region_id];
    if (t.byte_offset > r.size || t.byte_size > r.size - t.byte_offset)
      return DataLossError(where() + " '" + std::string(t.name) +
                           "': runs past the end of region " + Num(t.region_id));
  }
  return OkStatus();
}

}  // namespace

}  // namespace stasis::format
