#include "restore/host_loader.h"

#include <algorithm>
#include <atomic>
#include <mutex>

#include "common/thread_pool.h"

namespace stasis {

StatusOr<std::unique_ptr<HostImage>> LoadImageToHost(const ImageReader& reader,
                                                     const HostLoadOptions& options) {
  const format::Manifest& m = reader.manifest();
  auto image = std::unique_ptr<HostImage>(new HostImage());
  image->regions_.resize(m.regions.size());
  for (size_t i = 0; i < m.regions.size(); ++i) image->regions_[i].resize(m.regions[i].size);

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
          uint8_t* dst = image->regions_[c.region_id].data() + c.dst_offset;
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
