#include "restore/host_loader.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <mutex>

#include "common/thread_pool.h"

namespace stasis {

HostImage::~HostImage() {
  for (const Region& r : regions_)
    if (r.data != nullptr) ::munmap(r.data, r.size);
}

StatusOr<std::unique_ptr<HostImage>> LoadImageToHost(const ImageReader& reader,
                                                     const HostLoadOptions& options) {
  const format::Manifest& m = reader.manifest();
  auto image = std::unique_ptr<HostImage>(new HostImage());
  image->regions_.reserve(m.regions.size());
  for (size_t i = 0; i < m.regions.size(); ++i) {
    uint64_t size = m.regions[i].size;
    if (size == 0) {
      image->regions_.push_back({});
      continue;
    }
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
      return ErrnoToStatus(
          errno, "map region " + std::to_string(i) + " (" + std::to_string(size) + " bytes)");
    image->regions_.push_back({static_cast<uint8_t*>(p), size});
  }

  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::atomic<uint64_t> loaded{0};
  std::mutex mu;
  size_t first_bad = SIZE_MAX;
  Status first_error;
  const size_t n = m.chunks.size();
  {
    int threads = std::min<int>(ThreadPool::ResolveThreadCount(options.threads),
                                static_cast<int>(std::max<size_t>(n, 1)));
    ThreadPool pool(threads);
    for (int t = 0; t < threads; ++t) {
      pool.Submit([&] {
        ChunkDecoder decoder;
        std::vector<uint8_t> stored;
        for (size_t i = next++; i < n && !failed.load(); i = next++) {
          const format::ChunkInfo& c = m.chunks[i];
          uint8_t* dst = image->regions_[c.region_id].data + c.dst_offset;
          Status s = reader.ReadChunk(i, dst, &decoder, &stored, options.verify_raw);
          if (!s.ok()) {
            std::lock_guard<std::mutex> lock(mu);
            failed = true;
            if (i < first_bad) {
              first_bad = i;
              first_error = std::move(s);
            }
            return;
          }
          uint64_t total = loaded += c.raw_size;
          if (options.progress) options.progress(total);
        }
      });
    }
  }
  if (!first_error.ok()) return first_error;
  return image;
}

}  // namespace stasis
