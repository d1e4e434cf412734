// The host device backend: regions are anonymous private mappings, asked for at the
// image's address with MAP_FIXED_NOREPLACE and relocated when that address is taken.
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include "restore/device_backend.h"

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
      // Over-reserve so the region can start at its alignment, then trim both ends.
      const uint64_t span = out.reserved + (align > kPage ? align : 0);
      void* p = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, flags, -1, 0);
      if (p == MAP_FAILED)
        return ErrnoToStatus(errno,
                             "map a host region of " + std::to_string(region.size) + " bytes");
      uint64_t base = reinterpret_cast<uint64_t>(p);
      uint64_t aligned = AlignUp(base, align);
      if (aligned > base) ::munmap(p, aligned - base);
      uint64_t end = base + span, used_end = aligned + out.reserved;
      if (end > used_end) ::munmap(reinterpret_cast<void*>(used_end), end - used_end);
      out.address = aligned;
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
    constexpr uintptr_t kAlign = 2u << 20;
    if (bytes == 0 || bytes > (1ull << 46))
      return InvalidArgumentError("staging of " + std::to_string(bytes) + " bytes");
    void* raw = ::mmap(nullptr, bytes + kAlign, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED)
      return ErrnoToStatus(errno, "allocate " + std::to_string(bytes) + " bytes of staging");
    const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = (start + kAlign - 1) & ~(kAlign - 1);
    if (aligned > start) ::munmap(raw, aligned - start);
    const uintptr_t tail = aligned + bytes, end = start + bytes + kAlign;
    const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
    const uintptr_t tail_page = (tail + page - 1) & ~(page - 1);
    if (end > tail_page) ::munmap(reinterpret_cast<void*>(tail_page), end - tail_page);
    auto* p = reinterpret_cast<uint8_t*>(aligned);
    std::lock_guard<std::mutex> lock(mu_);
    staging_.push_back({p, static_cast<size_t>(tail_page - aligned)});
    return p;
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
