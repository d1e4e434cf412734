#include "restore/device/aligned_mapping.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "snapshot/format.h"

namespace stasis {

StatusOr<uint8_t*> MapAlignedAnonymous(uint64_t length, uint64_t align) {
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t span = length + (align > page ? align : 0);
  void* p = ::mmap(nullptr, span, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return ErrnoToStatus(errno, "map " + std::to_string(length) + " bytes");
  const uint64_t base = reinterpret_cast<uint64_t>(p);
  const uint64_t aligned = format::AlignUp(base, align);
  if (aligned > base) ::munmap(p, aligned - base);
  const uint64_t end = base + span, used_end = aligned + length;
  if (end > used_end) ::munmap(reinterpret_cast<void*>(used_end), end - used_end);
  return reinterpret_cast<uint8_t*>(aligned);
}

}  // namespace stasis
