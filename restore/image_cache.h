// File: restore/image_cache.h
//
// The cache tier's parts (stasis/image_cache.h says what it does): the key of an image,
// the pure plan of an entry's raw layout, and CacheFill, which writes an entry while a
// restore runs (the pipeline hands it each chunk once decoded and checked) and publishes
// it atomically.
#ifndef STASIS_RESTORE_IMAGE_CACHE_H_
#define STASIS_RESTORE_IMAGE_CACHE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "restore/pipeline_worker.h"
#include "stasis/image.h"
#include "stasis/image_cache.h"
#include "stasis/status.h"

namespace stasis {

// 16 hex digits: XXH3 of the footer's manifest checksum and size and of `etag`.
std::string CacheKey(const format::Footer& footer, std::string_view etag);

// The entry of an image: every chunk raw (stored bytes = raw bytes, both checksums the raw
// one), placed as the writer places raw chunks (block-aligned; chunks of 2 MiB and more at
// their map phase), sections after the chunks, then the manifest. Pure.
struct RawLayout {
  format::Manifest manifest;
  uint64_t manifest_offset = 0;
};
StatusOr<RawLayout> PlanRawLayout(const format::Manifest& source);

// DIR/<key>.stasis when it exists; else nullopt.
std::optional<std::string> FindCacheEntry(const std::string& dir, const std::string& key);

// Marks an entry used now (its mtime: the LRU clock). Called once it proved usable.
void TouchCacheEntry(const std::string& path);

// "" when `entry` holds the image `source` describes (regions, every chunk's raw size,
// checksum and place, tensors, sections), else the first difference. The key already
// matched; this catches an entry that is stale, planted or damaged in its manifest.
std::string EntryDifference(const format::Manifest& source, const format::Manifest& entry);

// Removes DIR/<key>.stasis (an entry that failed), under the key's lock so that no fill of
// the same key races it. kUnavailable when a filler holds the lock.
Status RemoveCacheEntry(const std::string& dir, const std::string& key);

class CacheFill final : public ChunkSink {
 public:
  // Takes DIR/<key>.lock and creates DIR/<key>.stasis.partial sized for the entry.
  // nullptr (OK) when another process holds the lock: the caller streams through.
  static StatusOr<std::unique_ptr<CacheFill>> Begin(const std::string& dir, const std::string& key,
                                                    const ImageReader& source);
  ~CacheFill() override;  // removes the partial file unless published; drops the lock

  // Writes chunk `chunk`'s raw bytes at its place (thread-safe; called by the workers).
  // Always OK: a failed write spoils the entry (Publish reports it), never the restore.
  Status Put(uint32_t chunk, const uint8_t* raw) override;
  // Every chunk put: sections, manifest, footer, fsync, rename to DIR/<key>.stasis,
  // directory fsync. kFailedPrecondition when a chunk is missing.
  Status Publish();
  const std::string& entry_path() const { return entry_; }

 private:
  CacheFill() = default;
  const ImageReader* source_ = nullptr;
  RawLayout layout_;
  std::string entry_, partial_, lock_path_;
  int fd_ = -1, lock_fd_ = -1;
  std::vector<std::atomic<uint8_t>> put_;
  std::atomic<uint64_t> puts_{0};
  std::atomic<bool> failed_{false};
  std::mutex mu_;
  Status failure_;       // the first failed write
  bool locked_ = false;  // the partial file is ours to remove
  bool published_ = false;
};

}  // namespace stasis

#endif  // STASIS_RESTORE_IMAGE_CACHE_H_
