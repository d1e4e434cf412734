// File: snapshot/image_reader.h
//
// ImageReader opens a stasis image (docs/image-format.md) and treats it as hostile: the
// header, footer and manifest are checked (magic, version, checksums, limits, every
// semantic rule) before Open() returns, and every chunk is checked when it is read.
// Memory use is bounded by the manifest limit (256 MiB) plus what callers ask for.
//
// Thread safety: after Open(), all const methods are safe to call concurrently, provided
// each thread passes its own ChunkDecoder and buffer.
#ifndef STASIS_SNAPSHOT_IMAGE_READER_H_
#define STASIS_SNAPSHOT_IMAGE_READER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/file_system.h"
#include "common/status.h"
#include "snapshot/codec.h"
#include "snapshot/format.h"

namespace stasis {

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
  // checksum is always verified; the raw bytes' too when `verify_raw`. `stored_buf` is
  // scratch reused across calls. Mismatches are kDataLoss naming the chunk.
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

}  // namespace stasis

#endif  // STASIS_SNAPSHOT_IMAGE_READER_H_
