// File: stasis/image_cache.h
//
// The node's local cache tier of images: compressed in object storage and on the wire, raw
// on the node's disk, mapped from the page cache. A restore with RestoreOptions::cache
// (`--cache DIR`, STASIS_CACHE_DIR) of a remote image, or of a local image with compressed
// chunks, looks for an entry first and restores from it when there is one. When there is
// none it writes one as it restores: every chunk, once decoded and checked, goes into the
// entry in raw form at its place (no second pass over the network or the data); the
// entry's manifest and footer follow, then fsync and an atomic rename. An entry is itself
// a valid image (`stasis verify` passes) whose chunks are raw: restored from it, a page-
// cache-hot entry is mapped and a cold one read with O_DIRECT, as any local raw image.
//
// Layout of DIR:
//   <key>.stasis           a complete entry, published by rename only once every chunk
//                          was written and checked
//   <key>.stasis.partial   an entry being filled (or left by a filler that died): never
//                          read; the next filler truncates it, PruneCache removes it
//   <key>.lock             flock(2)ed by the one process filling <key>
// The key is a digest of the image's identity: the footer's manifest checksum (the
// manifest holds every chunk's checksums, so it names the content) plus, for a remote
// image, its ETag.
//
// Sharing: processes on one node share DIR. One fills an entry (the lock); the others
// restore straight from the source meanwhile ("streamed through"), and use the entry once
// it is published. A process killed mid-fill leaves only a .partial file and a lock
// nobody holds. An entry that fails to open, differs from the image it stands for, or
// fails its checksums during a restore is removed, and that restore reads the image
// itself (and fills the entry again).
//
// Eviction: least recently used first (a restore from an entry touches its mtime), down to
// CacheOptions::max_bytes after each fill; the entry just used is kept.
//
// Errors: a restore never fails because of the cache: a fill that cannot be written or
// published is reported (RestoreReport::cache) and the restore goes on from the source.
//
// Thread safety: the functions here are safe to call concurrently, from any process.
#ifndef STASIS_IMAGE_CACHE_H_
#define STASIS_IMAGE_CACHE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "stasis/status.h"

namespace stasis {

struct CacheOptions {
  std::string dir;         // empty: no cache
  uint64_t max_bytes = 0;  // entries kept in all, least recently used evicted; 0: no bound
};

struct CacheEntry {
  std::string path;
  std::string key;
  uint64_t bytes = 0;
  int64_t last_used_unix = 0;  // seconds
  bool partial = false;        // a .partial file
  bool filling = false;        // partial, and its lock is held by a live process
};

// Every entry of `dir`, least recently used first. kNotFound when `dir` does not exist.
StatusOr<std::vector<CacheEntry>> ListCacheEntries(const std::string& dir);

// Removes partial entries nobody is filling (lock files stay: removing one a process is
// about to take would let two fill one key), then complete entries, least
// recently used first, until the complete ones take at most `max_bytes`. `keep` (a path) is
// never removed. Returns what was removed.
StatusOr<std::vector<CacheEntry>> PruneCache(const std::string& dir, uint64_t max_bytes,
                                             const std::string& keep = {});

}  // namespace stasis

#endif  // STASIS_IMAGE_CACHE_H_
