// The host device backend: regions are anonymous private mappings, asked for at the
// image's address with MAP_FIXED_NOREPLACE and relocated when that address is taken.
#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include "restore/device/aligned_mapping.h"
#include "snapshot/format.h"
#include "stasis/device_backend.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000  // Linux >= 4.17; older kernels treat it as a hint
#endif

namespace stasis {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kHugePage = 2ull << 20;

using format::AlignUp;

class HostBackend final : public DeviceBackend {
 public:
  explicit HostBackend(bool huge_pages) : huge_pages_(huge_pages) {}
  DeviceSpec device() const override { return DeviceSpec{}; }

  StatusOr<MappedRegion> MapRegion(const format::RegionInfo& region) override {
    MappedRegion out;
    out.size = region.size;
    if (region.size == 0) return out;
    // Large regions start on a 2 MiB boundary: with transparent huge pages (when asked
    // for) 2 MiB faults cost 512x fewer traps, and chunks mapped from the image land at
    // the phase the writer gave them (format::kMapPhase), so large page-cache folios map
    // whole. Alignment of address space costs nothing.
    const uint64_t align =
        std::max<uint64_t>(region.alignment, region.size >= kHugePage ? kHugePage : kPage);
    out.reserved = AlignUp(region.size, kPage);
    const int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    if (region.va_hint != 0) {
      void* p = ::mmap(reinterpret_cast<void*>(region.va_hint), out.reserved,
                       PROT_READ | PROT_WRITE, flags | MAP_FIXED_NOREPLACE, -1, 0);
      if (p != MAP_FAILED && reinterpret_cast<uint64_t>(p) == region.va_hint) {
        out.address = region.va_hint;
        out.at_hint = true;
      } else if (p != MAP_FAILED) {
        ::munmap(p, out.reserved);  // an old kernel placed it elsewhere: relocate properly
      }
    }
    if (!out.at_hint) {
      auto p = MapAlignedAnonymous(out.reserved, align);
      if (!p.ok())
        return p.status().WithContext("host region of " + std::to_string(region.size) + " bytes");
      out.address = reinterpret_cast<uint64_t>(*p);
    }
    out.host_view = reinterpret_cast<uint8_t*>(out.address);
    out.host_view_mappable = true;
    if (huge_pages_ && region.size >= kHugePage) {
      // Advice only: a kernel without THP (or with it off) just ignores it.
      ::madvise(out.host_view, out.reserved, MADV_HUGEPAGE);
    }
    return out;
  }

  Status UnmapRegion(const MappedRegion& region) override {
    if (region.reserved == 0) return OkStatus();
    if (::munmap(reinterpret_cast<void*>(region.address), region.reserved) != 0)
      return ErrnoToStatus(errno, "unmap host region");
    return OkStatus();
  }

  Status Unload(const MappedRegion& region) override {
    // MADV_DONTNEED on private anonymous memory frees the pages now and keeps the range:
    // the next touch gets zero pages at the same addresses.
    if (region.reserved != 0 &&
        ::madvise(reinterpret_cast<void*>(region.address), region.reserved, MADV_DONTNEED) != 0)
      return ErrnoToStatus(errno, "release host region memory");
    return OkStatus();
  }

  Status Reload(const MappedRegion&) override { return OkStatus(); }

  StatusOr<uint8_t*> AllocateStaging(size_t bytes) override {
    // 2 MiB aligned (DeviceBackend's contract): every direct-I/O memory alignment a file
    // system can ask for divides it, so staged O_DIRECT reads never fail on the buffer.
    if (bytes == 0 || bytes > (1ull << 46))
      return InvalidArgumentError("staging of " + std::to_string(bytes) + " bytes");
    const size_t len = AlignUp(bytes, kPage);
    auto p = MapAlignedAnonymous(len, kHugePage);
    if (!p.ok()) return p.status().WithContext("staging");
    std::lock_guard<std::mutex> lock(mu_);
    staging_.push_back({*p, len});
    return *p;
  }

  void FreeStaging(uint8_t* staging) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < staging_.size(); ++i) {
      if (staging_[i].first == staging) {
        ::munmap(staging, staging_[i].second);
        staging_.erase(staging_.begin() + static_cast<long>(i));
        return;
      }
    }
  }

  Status Copy(uint64_t dst, const void* src, size_t n, int slot) override {
    std::memcpy(reinterpret_cast<void*>(dst), src, n);
    return OkStatus();
  }
  Status WaitCopies(int) override { return OkStatus(); }
  Status Synchronize() override { return OkStatus(); }

  ~HostBackend() override {
    for (auto& [p, n] : staging_) ::munmap(p, n);
  }

 private:
  const bool huge_pages_;
  std::mutex mu_;
  std::vector<std::pair<uint8_t*, size_t>> staging_;
};

}  // namespace

std::unique_ptr<DeviceBackend> NewHostBackend(bool huge_pages) {
  return std::make_unique<HostBackend>(huge_pages);
}

}  // namespace stasis
