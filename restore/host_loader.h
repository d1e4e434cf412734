// File: restore/host_loader.h
//
// Loads every region of an image into host memory: chunks are read and decoded in
// parallel straight into their destination (raw chunks are read in place, compressed
// ones decompressed in place). This is the host path `stasis export` uses; the streaming
// restore engine with io_uring and device backends builds on the same reader.
//
// Thread safety: LoadImageToHost may run concurrently on distinct readers or on one
// reader. A HostImage is immutable after loading.
#ifndef STASIS_RESTORE_HOST_LOADER_H_
#define STASIS_RESTORE_HOST_LOADER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "common/status.h"
#include "snapshot/image_reader.h"

namespace stasis {

struct HostLoadOptions {
  int threads = 0;         // <= 0: one per hardware thread
  bool verify_raw = true;  // also check the decoded bytes' checksums
  // Called from worker threads with the raw bytes loaded so far (monotonic).
  std::function<void(uint64_t)> progress;
};

// Regions live in anonymous private mappings: pages a sparse region never touches cost
// no memory, and a hostile region size fails cleanly (kResourceExhausted) at mmap.
class HostImage {
 public:
  ~HostImage();
  HostImage(const HostImage&) = delete;
  HostImage& operator=(const HostImage&) = delete;

  size_t region_count() const { return regions_.size(); }
  const uint8_t* region(size_t i) const { return regions_[i].data; }
  uint64_t region_size(size_t i) const { return regions_[i].size; }
  // The bytes a tensor's view spans (byte_size bytes from its offset).
  const uint8_t* TensorData(const format::TensorInfo& t) const {
    return regions_[t.region_id].data + t.byte_offset;
  }

 private:
  struct Region {
    uint8_t* data = nullptr;
    uint64_t size = 0;
  };
  HostImage() = default;
  friend StatusOr<std::unique_ptr<HostImage>> LoadImageToHost(const ImageReader&,
                                                              const HostLoadOptions&);
  std::vector<Region> regions_;
};

// Loads all regions. Fails with the first chunk error (kDataLoss naming the chunk for
// corruption, I/O errors as they come); nothing is returned on failure.
StatusOr<std::unique_ptr<HostImage>> LoadImageToHost(const ImageReader& reader,
                                                     const HostLoadOptions& options);

}  // namespace stasis

#endif  // STASIS_RESTORE_HOST_LOADER_H_
