// File: stasis/image.h
//
// Reading, writing and inspecting stasis images. The format is specified in
// docs/image-format.md; the records below mirror its manifest (regions of memory, the
// chunks that fill them, tensors as views of regions, named sections, metadata).
//
//   ImageReader  opens an image and treats it as hostile: header, footer and manifest are
//                checked before Open() returns, every chunk when it is read; Verify() checks
//                every byte.
//   ImageWriter  streams an image (regions cut into chunks, compressed on a bounded pool)
//                and publishes it atomically.
//   AddHostTensors / SnapshotHostTensors  an image from tensors held in host memory, with
//                storages that overlap (tied weights, views) stored once.
//
// Errors are Status values with the codes of stasis/status.h: kNotFound (no file),
// kInvalidArgument (not an image, bad options), kOutOfRange (truncated), kUnimplemented
// (format version or codec), kDataLoss (checksums, structure), kResourceExhausted (limits,
// ENOSPC).
//
// Thread safety: records are values. An opened ImageReader's const methods may be called
// concurrently (each thread with its own scratch); an ImageWriter is driven by one thread.
#ifndef STASIS_IMAGE_H_
#define STASIS_IMAGE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "stasis/dims.h"
#include "stasis/file_system.h"
#include "stasis/status.h"
#include "stasis/tensor.h"
#include "stasis/tensor_table.h"

namespace stasis {
namespace format {

// The version this build writes by default; it reads every version from
// kOldestFormatVersion to kFormatVersion (docs/image-format.md, "Version 2").
inline constexpr uint32_t kFormatVersion = 2;
inline constexpr uint32_t kOldestFormatVersion = 1;

// How a chunk's bytes are stored: as they are, zstd, or zstd after byte grouping.
enum class Codec : uint8_t { kRaw = 0, kZstd = 1, kGrouped = 2 };
// Where a region lived when the image was taken.
enum class DeviceKind : uint32_t { kCpu = 0, kCuda = 1 };

// "raw", "zstd", "grouped".
std::string_view CodecName(Codec c);

// A contiguous range of memory the image restores: its size, alignment and, when it was
// recorded, the address it lived at (a restore asks for that address first).
struct RegionInfo {
  uint64_t size = 0;
  uint64_t alignment = 1;
  uint64_t va_hint = 0;
  DeviceKind device_kind = DeviceKind::kCpu;
  int32_t device_ordinal = -1;
};

// A piece of one region as stored in the file, with the checksums of both forms.
struct ChunkInfo {
  uint64_t file_offset = 0;
  uint64_t stored_size = 0;
  uint64_t raw_size = 0;
  uint64_t dst_offset = 0;
  uint32_t region_id = 0;
  Codec codec = Codec::kRaw;
  uint8_t element_size = 0;
  uint64_t stored_xxh3 = 0;
  uint64_t raw_xxh3 = 0;
};

// An opaque named blob (e.g. a framework's module skeleton), stored raw and checksummed.
struct SectionInfo {
  std::string name;
  uint64_t file_offset = 0;
  uint64_t size = 0;
  uint64_t xxh3 = 0;
};

// Everything an image says about itself, validated by ImageReader::Open.
struct Manifest {
  std::vector<RegionInfo> regions;
  std::vector<ChunkInfo> chunks;
  TensorTable tensors;
  std::vector<SectionInfo> sections;
  std::vector<std::pair<std::string, std::string>> metadata;

  std::optional<TensorRef> FindTensor(std::string_view name) const;
  const SectionInfo* FindSection(std::string_view name) const;
  const std::string* FindMetadata(std::string_view key) const;
  // Totals over all chunks: bytes as stored in the file, and restored bytes.
  uint64_t StoredBytes() const;
  uint64_t RawBytes() const;
};

// Where the manifest lies, how it is stored, and the file size the image was written with.
struct Footer {
  uint64_t manifest_offset = 0;
  uint64_t manifest_size = 0;  // as stored
  uint64_t manifest_xxh3 = 0;  // of the stored bytes
  uint64_t file_size = 0;
  uint32_t format_version = kFormatVersion;
  // v2: how the manifest is stored (kRaw or kZstd) and its size decoded; v1: kRaw and 0.
  Codec manifest_codec = Codec::kRaw;
  uint32_t manifest_raw_size = 0;
};

}  // namespace format

// What the writer may choose for a chunk.
enum class CodecChoice {
  kAuto,  // grouped for float data (element size 2/4), zstd otherwise; raw if < 5% saved
  kZstd,  // plain zstd for everything; raw if < 5% saved
  kRaw,   // always raw
};
// Parses "auto", "zstd", "raw". kInvalidArgument otherwise.
StatusOr<CodecChoice> ParseCodecChoice(std::string_view text);

// ---- Reading ----

class ChunkDecoder;  // a reusable decoding context (stasis-internal: snapshot/codec.h)

struct VerifyOptions {
  int threads = 0;  // <= 0: one per hardware thread
  // Called from worker threads with the stored bytes checked so far (monotonic).
  std::function<void(uint64_t)> progress;
  size_t max_errors = 64;  // stop collecting after this many problems
};

struct VerifyReport {
  uint64_t chunks_checked = 0;
  uint64_t sections_checked = 0;
  uint64_t stored_bytes = 0;
  uint64_t raw_bytes = 0;
  // Every problem found, in file order of the structure; empty when the image is intact.
  std::vector<Status> errors;
  bool ok() const { return errors.empty(); }
};

// An opened image. Memory use is bounded by the manifest limit (256 MiB) plus what callers
// ask for.
class ImageReader {
 public:
  // Opens and validates header, footer and manifest. Errors: kNotFound (no file),
  // kInvalidArgument (not an image), kOutOfRange (truncated), kUnimplemented (version),
  // kDataLoss (checksum or structure), kResourceExhausted (limits).
  static StatusOr<std::unique_ptr<ImageReader>> Open(const std::string& path,
                                                     FileSystem* fs = nullptr);

  const format::Manifest& manifest() const { return manifest_; }
  const format::Footer& footer() const { return footer_; }
  const std::string& path() const { return path_; }
  const RandomAccessFile& file() const { return *file_; }

  // Reads chunk `index` and decodes it into `dst` (raw_size bytes). The stored bytes'
  // checksum is always verified; the raw bytes' too when `verify_raw`. `decoder` and
  // `stored_buf` are a decoding context and scratch memory to reuse across calls, or null
  // for ones made for this call. Mismatches are kDataLoss naming the chunk.
  Status ReadChunk(size_t index, void* dst, ChunkDecoder* decoder, std::vector<uint8_t>* stored_buf,
                   bool verify_raw = true) const;

  // Reads a section's payload, checksum verified. kNotFound for an unknown name.
  StatusOr<std::string> ReadSection(std::string_view name) const;

  // Checks every byte of the file: all chunks (both checksums and a full decode), all
  // sections, and that all padding is zero. Never fails on corruption: problems are in
  // the report. Fails only when it cannot run (e.g. allocation).
  StatusOr<VerifyReport> Verify(const VerifyOptions& options) const;

 private:
  ImageReader() = default;
  Status CheckPadding(std::vector<Status>* errors) const;

  std::string path_;
  std::unique_ptr<RandomAccessFile> file_;
  format::Footer footer_;
  format::Manifest manifest_;
};

// ---- Writing ----

struct WriterOptions {
  // The image format version to write: 2 (compact, sorted tensor records and a compressed
  // manifest), or 1 for readers that predate version 2. kInvalidArgument otherwise.
  uint32_t format_version = format::kFormatVersion;
  CodecChoice codec = CodecChoice::kAuto;
  int zstd_level = 1;
  uint64_t chunk_size = 4ull << 20;  // raw bytes per chunk; 4 KiB .. 64 MiB
  int threads = 0;                   // compression threads; <= 0: one per hardware thread
  int max_inflight_chunks = 0;       // <= 0: 2 * threads
  bool overwrite = false;            // replace an existing destination (atomically)
  FileSystem* fs = nullptr;          // null: DefaultFileSystem()
  // Called on the writer's thread after each chunk is written: (raw bytes written so far).
  std::function<void(uint64_t)> progress;
  // Checked as each chunk is cut and by Finish() before it publishes: once *cancel is true
  // the writer fails with kCancelled (sticky, like any error; the temporary file is
  // removed by Finish, or by Abandon()). Another thread may set it; it must outlive the
  // writer.
  const std::atomic<bool>* cancel = nullptr;
};

// Per-image totals, for reports.
struct WriterStats {
  uint64_t raw_bytes = 0;     // region bytes stored
  uint64_t stored_bytes = 0;  // chunk payload bytes on disk
  uint64_t file_size = 0;
  uint64_t chunks_by_codec[3] = {0, 0, 0};
};

// Streams an image: region bytes are cut into chunks, compressed on a bounded pool of
// threads, and written in order as they finish; the manifest and footer go last. Memory
// use is bounded by (max_inflight_chunks + 1) * chunk_size whatever the model size.
//
// Publication is atomic: the image is written to a temporary file beside the destination,
// synced, renamed over the destination and the directory synced. A failed or abandoned
// snapshot leaves no file at the destination and removes its temporary file (a process
// killed mid-write can leave only a "<dest>.stasis-tmp.*" file, never a partial image).
//
// Lifecycle: Create → Add…/SetMetadata (any order) → Finish() or Abandon(). Errors are
// sticky: after the first failure every call returns it, and only Abandon() remains useful.
// The destructor does no I/O. REQUIRES: Finish() or Abandon() was called before destruction
// (otherwise the temporary file is left behind and an error is logged).
class ImageWriter {
 public:
  // Starts an image at `path`. Fails with kAlreadyExists when `path` exists and
  // !options.overwrite, and with kInvalidArgument on bad options.
  static StatusOr<std::unique_ptr<ImageWriter>> Create(const std::string& path,
                                                       const WriterOptions& options);
  ~ImageWriter();
  ImageWriter(const ImageWriter&) = delete;
  ImageWriter& operator=(const ImageWriter&) = delete;

  // Declares a region; returns its id (0, 1, ...).
  StatusOr<uint32_t> AddRegion(const format::RegionInfo& region);

  // Stores `n` bytes at `dst_offset` of `region`. The bytes are copied before the call
  // returns. Calls for one region should come in increasing offset order: adjacent data
  // (gaps under 4 KiB are zero-filled) of the same element size is packed into shared
  // chunks. `element_size` (0, 2 or 4) tells the codec how the bytes group (2: f16/bf16,
  // 4: f32, 0: other). Blocks while max_inflight_chunks chunks are being compressed.
  Status AddRegionData(uint32_t region, uint64_t dst_offset, const void* data, size_t n,
                       int element_size);

  // Records a tensor view. Validated against its region when Finish() runs. A version 2
  // image stores tensors sorted by name, whatever the order they were added in.
  Status AddTensor(format::TensorInfo tensor);

  // Stores an opaque named blob (raw, checksummed).
  Status AddSection(std::string name, std::string_view bytes);

  // Sets a metadata entry (a later call with the same key replaces the value). `creator`
  // and `created` are filled in by Finish() unless set.
  Status SetMetadata(std::string key, std::string value);

  // Flushes every chunk, writes manifest and footer, and publishes the image atomically.
  // On failure the destination is untouched and the temporary file removed.
  Status Finish();

  // Stops, waits for in-flight work and removes the temporary file. Idempotent.
  void Abandon();

  Status status() const;
  const WriterStats& stats() const;
  const std::string& temp_path() const;

 private:
  struct Impl;
  explicit ImageWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// ---- Images from tensors held in host memory ----

struct HostTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;   // in elements; empty means contiguous
  const void* storage = nullptr;  // start of the storage the tensor views
  uint64_t storage_bytes = 0;     // size of that storage
  uint64_t byte_offset = 0;       // where element 0 lies in the storage
};

// Adds `tensors` to `writer` as one cpu region. Tensors whose storages overlap share
// bytes in the region. Storages of 256 bytes or more start at multiples of 256; smaller
// ones are packed at their natural alignment (their size rounded up to a power of two),
// so many tiny tensors cost their bytes, not 256 each. REQUIRES: every storage stays valid during
// the call. Errors: kInvalidArgument for a view that runs past its storage, bad shapes, duplicate
// names; writer errors as they come.
Status AddHostTensors(const std::vector<HostTensor>& tensors, ImageWriter* writer);

// Convenience: writes an image at `path` holding `tensors` and `metadata`.
Status SnapshotHostTensors(const std::vector<HostTensor>& tensors,
                           const std::vector<std::pair<std::string, std::string>>& metadata,
                           const std::string& path, const WriterOptions& options);

}  // namespace stasis

#endif  // STASIS_IMAGE_H_
