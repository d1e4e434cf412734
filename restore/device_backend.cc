// Device specs in text form ("cpu", "cuda", "cuda:N"), and the aligned mapping the backends share.
#include "restore/device_backend.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace stasis {

StatusOr<DeviceSpec> ParseDeviceSpec(std::string_view text) {
  if (text == "cpu") return DeviceSpec{format::DeviceKind::kCpu, -1};
  if (text == "cuda") return DeviceSpec{format::DeviceKind::kCuda, 0};
  if (text.substr(0, 5) == "cuda:" && text.size() > 5 && text.size() <= 8) {
    int n = 0;
    for (char ch : text.substr(5)) {
      if (ch < '0' || ch > '9')
        return InvalidArgumentError("bad device '" + std::string(text) + "'");
      n = n * 10 + (ch - '0');
    }
    return DeviceSpec{format::DeviceKind::kCuda, n};
  }
  return InvalidArgumentError("bad device '" + std::string(text) +
                              "' (expected cpu, cuda or cuda:N)");
}

std::string DeviceSpecString(const DeviceSpec& d) {
  return d.kind == format::DeviceKind::kCpu ? "cpu" : "cuda:" + std::to_string(d.ordinal);
}

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
