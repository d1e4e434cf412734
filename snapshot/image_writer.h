// File: snapshot/image_writer.h
//
// ImageWriter streams a stasis image (docs/image-format.md) to disk: region bytes are cut
// into chunks, compressed on a bounded pool of threads, and written in order as they
// finish; the manifest and footer go last. Memory use is bounded by
// (max_inflight_chunks + 1) * chunk_size whatever the model size.
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
//
// Thread safety: not thread-safe; one thread drives a writer. Compression runs on the
// writer's own pool.
#ifndef STASIS_SNAPSHOT_IMAGE_WRITER_H_
#define STASIS_SNAPSHOT_IMAGE_WRITER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "common/file_system.h"
#include "common/status.h"
#include "snapshot/codec.h"
#include "snapshot/format.h"

namespace stasis {

struct WriterOptions {
  CodecChoice codec = CodecChoice::kAuto;
  int zstd_level = 1;
  uint64_t chunk_size = 4ull << 20;  // raw bytes per chunk; 4 KiB .. 64 MiB
  int threads = 0;                   // compression threads; <= 0: one per hardware thread
  int max_inflight_chunks = 0;       // <= 0: 2 * threads
  bool overwrite = false;            // replace an existing destination (atomically)
  FileSystem* fs = nullptr;          // null: DefaultFileSystem()
  // Called on the writer's thread after each chunk is written: (raw bytes written so far).
  std::function<void(uint64_t)> progress;
};

// Per-image totals, for reports.
struct WriterStats {
  uint64_t raw_bytes = 0;     // region bytes stored
  uint64_t stored_bytes = 0;  // chunk payload bytes on disk
  uint64_t file_size = 0;
  uint64_t chunks_by_codec[3] = {0, 0, 0};
};

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

  // Records a tensor view. Validated against its region when Finish() runs.
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

}  // namespace stasis

#endif  // STASIS_SNAPSHOT_IMAGE_WRITER_H_
