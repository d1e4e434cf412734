// File: stasis/device_backend.h
//
// Where restored regions live. The restore pipeline talks to memory only through this
// interface, so the whole pipeline runs and is tested with the host backend (regions in
// anonymous mappings), and the CUDA backend (regions mapped with the driver's VMM API) is
// a drop-in replacement with a fake driver for tests.
//
// Lifecycle of a region: Map (reserve the address range, asking for the image's hint, and
// back it with memory) → copies → optional Unload (release the memory, keep the address
// range) / Reload (back it again at the same addresses) → Unmap.
//
// RestoredModel::Restore picks the backend for the device it is asked for; a caller passes
// one of its own only through RestoreOptions::backend_factory.
//
// Thread safety: MapRegion/UnmapRegion/Unload/Reload are called by one thread at a time.
// Copy and WaitCopies may be called concurrently for distinct staging slots.
#ifndef STASIS_DEVICE_BACKEND_H_
#define STASIS_DEVICE_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "stasis/image.h"
#include "stasis/status.h"

namespace stasis {

struct DeviceSpec {
  format::DeviceKind kind = format::DeviceKind::kCpu;
  int ordinal = -1;  // -1 for cpu
};
// Parses "cpu", "cuda", "cuda:N".
StatusOr<DeviceSpec> ParseDeviceSpec(std::string_view text);
std::string DeviceSpecString(const DeviceSpec& d);
// OK when this build can restore onto `device`'s kind; kUnimplemented for cuda in a build
// without the CUDA toolkit. Loads no driver: whether a device is there is Restore's to find.
Status CheckBackendBuilt(const DeviceSpec& device);

struct MappedRegion {
  uint64_t address = 0;   // device virtual address of byte 0 (a host pointer for cpu)
  uint64_t size = 0;      // bytes usable (the region's size)
  uint64_t reserved = 0;  // bytes reserved (size rounded up to the granularity)
  bool at_hint = false;   // true when address == the image's va_hint
  // Set when the pipeline may write the region directly with the CPU (host backend):
  // reads and decompression then go straight to the destination, with no staging copy.
  uint8_t* host_view = nullptr;
  // Set when [host_view, host_view + reserved) is a private mapping of the backend's own
  // that the pipeline may replace, page by page, with MAP_FIXED private mappings of the
  // image file (zero-copy restore of raw chunks from the page cache). UnmapRegion, Unload
  // and Reload must then work whatever is mapped there (munmap / MADV_DONTNEED do).
  bool host_view_mappable = false;
};

class DeviceBackend {
 public:
  virtual ~DeviceBackend() = default;
  virtual DeviceSpec device() const = 0;

  // Reserves and backs a region, asking for `region.va_hint` when it is non-zero; when the
  // hint cannot be had the region is relocated (at_hint = false), never an error.
  // Errors: kResourceExhausted (no memory), kUnavailable/kInternal (driver failures).
  // On failure nothing stays reserved or allocated.
  virtual StatusOr<MappedRegion> MapRegion(const format::RegionInfo& region) = 0;
  // Releases memory and address range. REQUIRES: no copy into the region is in flight.
  virtual Status UnmapRegion(const MappedRegion& region) = 0;
  // Releases the memory behind a region but keeps its address range reserved.
  virtual Status Unload(const MappedRegion& region) = 0;
  // Backs an unloaded region again, at the same addresses (its contents are undefined
  // until restored again).
  virtual Status Reload(const MappedRegion& region) = 0;

  // Staging memory for copies: `bytes` of host memory the backend can copy from at full
  // speed (pinned and registered for CUDA), split by the caller into slots, aligned to
  // 2 MiB (so to any direct-I/O alignment). Owned by the backend, freed by FreeStaging or
  // the destructor.
  virtual StatusOr<uint8_t*> AllocateStaging(size_t bytes) = 0;
  virtual void FreeStaging(uint8_t* staging) = 0;

  // Copies `n` bytes from host `src` to device address `dst`, asynchronously; the copy is
  // tracked under `slot` (0 <= slot < kMaxSlots). `src` must stay untouched until
  // WaitCopies(slot) returns.
  virtual Status Copy(uint64_t dst, const void* src, size_t n, int slot) = 0;
  // Waits for every copy issued under `slot`.
  virtual Status WaitCopies(int slot) = 0;
  // Waits for every copy.
  virtual Status Synchronize() = 0;

  static constexpr int kMaxSlots = 1024;
};

// The host backend: anonymous private mappings, MAP_FIXED_NOREPLACE at the hint.
// `huge_pages`: regions of 2 MiB and more are advised MADV_HUGEPAGE. Off by default: on a
// host that runs anything else, compaction made restores slower, not faster
// (docs/benchmarks.md, "Huge pages").
std::unique_ptr<DeviceBackend> NewHostBackend(bool huge_pages = false);

}  // namespace stasis

#endif  // STASIS_DEVICE_BACKEND_H_
