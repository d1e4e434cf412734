#include "restore/device/cuda_backend.h"

#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <map>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include "restore/device/aligned_mapping.h"
#include "restore/device/cuda_driver.h"
#include "snapshot/format.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older kernels answer EINVAL
#endif

namespace stasis {
namespace {

constexpr uint64_t kStagingAlign = 2ull << 20;  // huge-page aligned staging
// Waiting on an event sleeps instead of spinning (a spinning waiter takes a core from the
// workers that decode and hash); timing is not needed.
constexpr unsigned kEventFlags = CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING;
// Limits that keep every size computation below free of overflow; far above any device.
constexpr uint64_t kMaxHandleSize = 1ull << 46;

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "0x%" PRIx64, v);
  return buf;
}

bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

class CudaBackend final : public DeviceBackend {
 public:
  CudaBackend(const CudaDriverApi* api, int ordinal, const CudaBackendOptions& options)
      : api_(api), ordinal_(ordinal), options_(options), events_(kMaxSlots, nullptr) {}
  ~CudaBackend() override;

  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  // Initialises the driver and the device; on failure the destructor releases what was
  // acquired.
  Status Init();

  DeviceSpec device() const override { return {format::DeviceKind::kCuda, ordinal_}; }
  StatusOr<MappedRegion> MapRegion(const format::RegionInfo& region) override;
  Status UnmapRegion(const MappedRegion& region) override;
  Status Unload(const MappedRegion& region) override;
  Status Reload(const MappedRegion& region) override;
  StatusOr<uint8_t*> AllocateStaging(size_t bytes) override;
  void FreeStaging(uint8_t* staging) override;
  Status Copy(uint64_t dst, const void* src, size_t n, int slot) override;
  Status WaitCopies(int slot) override;
  Status Synchronize() override;

 private:
  struct Handle {
    CUmemGenericAllocationHandle handle = 0;
    uint64_t offset = 0;  // from the region's base
    uint64_t size = 0;
    bool mapped = false;
  };
  // A reservation and the memory behind it. `handles` holds what is created and not yet
  // released; after a failed teardown step the leftovers stay here so that a later call
  // (or the destructor) retries them instead of leaking them.
  struct Region {
    CUdeviceptr base = 0;
    uint64_t size = 0;
    uint64_t reserved = 0;
    bool loaded = false;  // backed and accessible: copies allowed
    std::vector<Handle> handles;
  };

  Status Cu(CUresult r, std::string_view what) const { return CuStatus(*api_, r, what); }
  // Makes the backend's context current on the calling thread for the guard's lifetime and
  // then puts back whatever was current before: the CUDA runtime (and so PyTorch) reads the
  // current context as the current device, so a restore onto cuda:1 must not leave cuda:1
  // current on its caller's thread.
  class CurrentContext {
   public:
    explicit CurrentContext(const CudaBackend& b);
    ~CurrentContext();
    CurrentContext(const CurrentContext&) = delete;
    CurrentContext& operator=(const CurrentContext&) = delete;
    const Status& status() const { return status_; }

   private:
    const CudaDriverApi* api_;
    CUcontext previous_ = nullptr;
    bool put_back_ = false;
    Status status_;
  };
  // Waits for every copy issued on the stream so far, sleeping rather than spinning (see
  // kEventFlags). The context must be current.
  Status SyncStream(std::string_view why);
  // Creates, maps and grants access to memory for the whole of `r`, which must have no
  // handles. On failure undoes its own work (leftovers, if undoing fails, stay in
  // r->handles).
  Status Back(Region* r);
  // Unmaps and releases r->handles; keeps any that failed. Does not synchronise.
  Status ReleaseMemory(Region* r);
  // Refuses further copies into `r`, then waits for those already issued (the context must
  // be current). On failure `r` stays loaded.
  Status StopCopiesAndSync(Region* r, std::string_view why);
  // Finds the region at `address`, which must be the base of one.
  StatusOr<Region*> FindRegion(uint64_t address, std::string_view op);
  // Unregisters and unmaps one staging buffer; false (buffer kept) when unregistering
  // failed, since unmapping memory the driver still has pinned is unsafe.
  bool DestroyStaging(uint8_t* p, size_t len);

  const CudaDriverApi* const api_;
  const int ordinal_;
  const CudaBackendOptions options_;
  CUdevice device_ = 0;
  CUcontext ctx_ = nullptr;  // the retained primary context; null until retained
  CUstream stream_ = nullptr;
  CUevent sync_event_ = nullptr;  // for SyncStream
  CUmemAllocationProp prop_ = {};
  uint64_t granularity_ = 0;
  uint64_t handle_size_ = 0;  // options_.handle_size rounded to the granularity

  // One per slot, created on the slot's first copy. An element is only touched by the
  // thread currently using that slot (the interface serialises calls per slot), so no lock.
  std::vector<CUevent> events_;

  // Guards the maps below. Copy takes it shared to validate its destination; the map,
  // unmap, unload and reload paths take it exclusively only to change bookkeeping, never
  // across driver calls. Region::handles is touched only by the (single) thread running
  // those paths, so it is read and written outside the lock.
  mutable std::shared_mutex mu_;
  std::map<uint64_t, Region> regions_;  // by base address
  std::map<uint8_t*, size_t> staging_;  // base -> mapped length
};

CudaBackend::CurrentContext::CurrentContext(const CudaBackend& b) : api_(b.api_) {
  const CUresult got = api_->cuCtxGetCurrent(&previous_);
  if (got == CUDA_SUCCESS && previous_ == b.ctx_) return;
  status_ = b.Cu(api_->cuCtxSetCurrent(b.ctx_), "cuCtxSetCurrent(primary context of CUDA device " +
                                                    std::to_string(b.ordinal_) + ")");
  // Not knowing the caller's context is no reason to fail the call; it just stays switched.
  if (got != CUDA_SUCCESS)
    spdlog::warn("cuda backend: cuCtxGetCurrent: {}; the caller's context is not put back",
                 CuErrorName(*api_, got));
  put_back_ = status_.ok() && got == CUDA_SUCCESS;
}

CudaBackend::CurrentContext::~CurrentContext() {
  if (!put_back_) return;
  const CUresult r = api_->cuCtxSetCurrent(previous_);
  if (r != CUDA_SUCCESS)
    spdlog::warn("cuda backend: putting the caller's context back: {}", CuErrorName(*api_, r));
}

Status CudaBackend::SyncStream(std::string_view why) {
  // cuStreamSynchronize follows the context's scheduling policy, which spins when there are
  // fewer contexts than cores; an event with CU_EVENT_BLOCKING_SYNC sleeps. The context is
  // the primary one, shared with PyTorch, so its flags are left alone. Threads may record
  // the one event concurrently: a wait then covers at least the caller's own copies.
  STASIS_RETURN_IF_ERROR(Cu(api_->cuEventRecord(sync_event_, stream_), "cuEventRecord"));
  return Cu(api_->cuEventSynchronize(sync_event_), "cuEventSynchronize (" + std::string(why) + ")");
}

Status CudaBackend::Init() {
  CUresult r = api_->cuInit(0);
  if (r == CUDA_ERROR_NO_DEVICE)
    return NotFoundError("no CUDA device " + std::to_string(ordinal_) +
                         " (0 devices present; cuInit: " + CuErrorName(*api_, r) + ")");
  STASIS_RETURN_IF_ERROR(Cu(r, "cuInit"));
  int count = 0;
  STASIS_RETURN_IF_ERROR(Cu(api_->cuDeviceGetCount(&count), "cuDeviceGetCount"));
  if (ordinal_ < 0 || ordinal_ >= count)
    return NotFoundError("no CUDA device " + std::to_string(ordinal_) + " (" +
                         std::to_string(count) + " devices present)");
  STASIS_RETURN_IF_ERROR(Cu(api_->cuDeviceGet(&device_, ordinal_), "cuDeviceGet"));
  int vmm = 0;
  STASIS_RETURN_IF_ERROR(
      Cu(api_->cuDeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
                                    device_),
         "cuDeviceGetAttribute(VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED)"));
  if (vmm == 0)
    return FailedPreconditionError("CUDA device " + std::to_string(ordinal_) +
                                   " does not support virtual memory management");
  CUcontext ctx = nullptr;
  STASIS_RETURN_IF_ERROR(
      Cu(api_->cuDevicePrimaryCtxRetain(&ctx, device_), "cuDevicePrimaryCtxRetain"));
  ctx_ = ctx;
  CurrentContext current(*this);
  STASIS_RETURN_IF_ERROR(current.status());

  prop_ = {};
  prop_.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop_.requestedHandleTypes = CU_MEM_HANDLE_TYPE_NONE;
  prop_.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop_.location.id = ordinal_;
  prop_.allocFlags.compressionType = CU_MEM_ALLOCATION_COMP_NONE;
  size_t min_gran = 0, rec_gran = 0;
  STASIS_RETURN_IF_ERROR(
      Cu(api_->cuMemGetAllocationGranularity(&min_gran, &prop_, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
         "cuMemGetAllocationGranularity(MINIMUM)"));
  STASIS_RETURN_IF_ERROR(Cu(
      api_->cuMemGetAllocationGranularity(&rec_gran, &prop_, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED),
      "cuMemGetAllocationGranularity(RECOMMENDED)"));
  if (!IsPowerOfTwo(min_gran) || min_gran > kMaxHandleSize)
    return InternalError("cuMemGetAllocationGranularity: unusable minimum granularity " +
                         std::to_string(min_gran));
  // Reservations, hints and mappings need only the minimum granularity (a larger
  // recommended one would turn away hints the model's allocator placed 2 MiB apart); the
  // recommendation sizes the physical handles.
  granularity_ = min_gran;
  uint64_t handle_granularity = min_gran;
  if (IsPowerOfTwo(rec_gran) && rec_gran > min_gran && rec_gran % min_gran == 0 &&
      rec_gran <= kMaxHandleSize)
    handle_granularity = rec_gran;
  handle_size_ =
      format::AlignUp(std::min(std::max(options_.handle_size, handle_granularity), kMaxHandleSize),
                      handle_granularity);

  CUstream stream = nullptr;
  STASIS_RETURN_IF_ERROR(
      Cu(api_->cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate"));
  stream_ = stream;
  CUevent event = nullptr;
  STASIS_RETURN_IF_ERROR(Cu(api_->cuEventCreate(&event, kEventFlags), "cuEventCreate"));
  sync_event_ = event;
  return OkStatus();
}

CudaBackend::~CudaBackend() {
  if (ctx_ == nullptr) return;  // Init failed before anything was acquired
  auto log = [](const Status& s) {
    if (!s.ok()) spdlog::warn("cuda backend teardown: {}", s.ToString());
  };
  {
    // Without the context every call below fails: a failed switch is tried once more.
    std::optional<CurrentContext> current;
    for (int attempt = 0; attempt < 2; ++attempt) {
      current.emplace(*this);
      log(current->status());
      if (current->status().ok()) break;
      current.reset();
    }
    log(Cu(api_->cuCtxSynchronize(), "cuCtxSynchronize"));
    for (auto& [base, region] : regions_) {
      Status s = ReleaseMemory(&region);
      log(s);
      if (!s.ok()) {
        spdlog::warn("cuda backend teardown: keeping the address range at {} reserved", Hex(base));
        continue;
      }
      log(Cu(api_->cuMemAddressFree(region.base, region.reserved),
             "cuMemAddressFree(" + Hex(base) + ")"));
    }
    regions_.clear();
    for (auto& [p, len] : staging_) {
      if (!DestroyStaging(p, len))
        spdlog::warn("cuda backend teardown: leaking staging buffer at {}",
                     Hex(reinterpret_cast<uintptr_t>(p)));
    }
    staging_.clear();
    for (CUevent& e : events_) {
      if (e != nullptr) log(Cu(api_->cuEventDestroy(e), "cuEventDestroy"));
      e = nullptr;
    }
    if (sync_event_ != nullptr) log(Cu(api_->cuEventDestroy(sync_event_), "cuEventDestroy"));
    sync_event_ = nullptr;
    if (stream_ != nullptr) log(Cu(api_->cuStreamDestroy(stream_), "cuStreamDestroy"));
    stream_ = nullptr;
  }
  log(Cu(api_->cuDevicePrimaryCtxRelease(device_), "cuDevicePrimaryCtxRelease"));
  ctx_ = nullptr;
}

Status CudaBackend::Back(Region* r) {
  const uint64_t count = (r->reserved + handle_size_ - 1) / handle_size_;
  r->handles.reserve(count);
  Status s;
  // All handles first, then all mappings: running out of memory, the likely failure,
  // then happens before any (synchronous) mapping work.
  for (uint64_t off = 0; off < r->reserved && s.ok(); off += handle_size_) {
    const uint64_t n = std::min(handle_size_, r->reserved - off);
    CUmemGenericAllocationHandle h = 0;
    s = Cu(api_->cuMemCreate(&h, n, &prop_, 0),
           "cuMemCreate(" + std::to_string(n) + " bytes) for the region at " + Hex(r->base));
    if (s.ok()) r->handles.push_back({h, off, n, false});
  }
  for (size_t i = 0; i < r->handles.size() && s.ok(); ++i) {
    Handle& h = r->handles[i];
    s = Cu(api_->cuMemMap(r->base + h.offset, h.size, 0, h.handle, 0),
           "cuMemMap(" + Hex(r->base + h.offset) + ", " + std::to_string(h.size) + " bytes)");
    if (s.ok()) h.mapped = true;
  }
  if (s.ok()) {
    CUmemAccessDesc access = {};
    access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = ordinal_;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    s = Cu(api_->cuMemSetAccess(r->base, r->reserved, &access, 1),
           "cuMemSetAccess(" + Hex(r->base) + ", " + std::to_string(r->reserved) + " bytes)");
  }
  if (!s.ok()) {
    Status undo = ReleaseMemory(r);
    if (!undo.ok()) spdlog::warn("cuda backend: undoing a failed map: {}", undo.ToString());
  }
  return s;
}

Status CudaBackend::ReleaseMemory(Region* r) {
  Status first;
  for (Handle& h : r->handles) {
    if (!h.mapped) continue;
    Status s = Cu(api_->cuMemUnmap(r->base + h.offset, h.size),
                  "cuMemUnmap(" + Hex(r->base + h.offset) + ")");
    if (s.ok()) {
      h.mapped = false;
    } else if (first.ok()) {
      first = s;
    }
  }
  // A handle whose unmap failed is kept, mapped, for a retry: releasing it would leave a
  // mapping nobody can name.
  std::vector<Handle> kept;
  for (Handle& h : r->handles) {
    if (!h.mapped) {
      Status s = Cu(api_->cuMemRelease(h.handle), "cuMemRelease");
      if (s.ok()) continue;
      if (first.ok()) first = s;
    }
    kept.push_back(h);
  }
  r->handles = std::move(kept);
  return first;
}

StatusOr<CudaBackend::Region*> CudaBackend::FindRegion(uint64_t address, std::string_view op) {
  std::shared_lock lock(mu_);
  auto it = regions_.find(address);
  if (it == regions_.end())
    return InvalidArgumentError(std::string(op) + ": no region mapped at " + Hex(address));
  return &it->second;
}

StatusOr<MappedRegion> CudaBackend::MapRegion(const format::RegionInfo& region) {
  MappedRegion out;
  if (region.size == 0) return out;  // nothing to back; address 0
  if (region.size > format::kMaxRegionSize)
    return InvalidArgumentError("MapRegion: region size " + std::to_string(region.size) +
                                " exceeds the format limit");
  const uint64_t alignment = std::max<uint64_t>(region.alignment, 1);
  if (!IsPowerOfTwo(alignment) || alignment > format::kMaxRegionAlignment)
    return InvalidArgumentError("MapRegion: region alignment " + std::to_string(alignment) +
                                " is not a power of two up to 1 GiB");
  CurrentContext current(*this);
  STASIS_RETURN_IF_ERROR(current.status());

  Region r;
  r.size = region.size;
  r.reserved = format::AlignUp(region.size, granularity_);
  const uint64_t align = std::max(granularity_, alignment);
  // A hint that breaks the alignment cannot be honoured; asking for it anyway would
  // only invite an error or a misaligned reservation.
  const CUdeviceptr hint = region.va_hint % align == 0 ? region.va_hint : 0;
  if (hint != region.va_hint)
    spdlog::debug("cuda backend: va_hint {} is not {}-aligned; relocating", Hex(region.va_hint),
                  align);
  CUdeviceptr base = 0;
  CUresult res = api_->cuMemAddressReserve(&base, r.reserved, align, hint, 0);
  if (res != CUDA_SUCCESS && hint != 0) {
    // The address is documented as a hint, yet a driver may refuse it rather than ignore
    // it. Once more, anywhere; the pointer of a failed call is not ours to free.
    spdlog::debug("cuda backend: reserving at {} failed ({}); relocating", Hex(hint),
                  CuErrorName(*api_, res));
    base = 0;
    res = api_->cuMemAddressReserve(&base, r.reserved, align, 0, 0);
  }
  STASIS_RETURN_IF_ERROR(Cu(res, "cuMemAddressReserve(" + std::to_string(r.reserved) +
                                     " bytes, hint " + Hex(hint) + ")"));
  if (base % align != 0) {
    Status f = Cu(api_->cuMemAddressFree(base, r.reserved), "cuMemAddressFree(" + Hex(base) + ")");
    if (!f.ok()) spdlog::warn("cuda backend: {}", f.ToString());
    return InternalError("cuMemAddressReserve returned " + Hex(base) + ", not " +
                         std::to_string(align) + "-aligned");
  }
  r.base = base;

  Status s = Back(&r);
  if (!s.ok()) {
    if (r.handles.empty()) {
      Status f =
          Cu(api_->cuMemAddressFree(r.base, r.reserved), "cuMemAddressFree(" + Hex(r.base) + ")");
      if (f.ok()) return s;
      spdlog::warn("cuda backend: undoing a failed map: {}", f.ToString());
    }
    // Undoing failed: keep the leftovers where the destructor retries them.
    std::unique_lock lock(mu_);
    regions_.emplace(r.base, std::move(r));
    return s;
  }
  r.loaded = true;
  out.address = r.base;
  out.size = r.size;
  out.reserved = r.reserved;
  out.at_hint = region.va_hint != 0 && r.base == region.va_hint;
  if (region.va_hint != 0 && !out.at_hint)
    spdlog::info("cuda backend: region relocated from {} to {}", Hex(region.va_hint), Hex(r.base));
  std::unique_lock lock(mu_);
  regions_.emplace(r.base, std::move(r));
  return out;
}

Status CudaBackend::UnmapRegion(const MappedRegion& region) {
  if (region.address == 0 && region.size == 0) return OkStatus();  // a size-0 region
  STASIS_ASSIGN_OR_RETURN(Region * r, FindRegion(region.address, "UnmapRegion"));
  CurrentContext current(*this);
  STASIS_RETURN_IF_ERROR(current.status());
  STASIS_RETURN_IF_ERROR(StopCopiesAndSync(r, "unmapping"));
  STASIS_RETURN_IF_ERROR(ReleaseMemory(r));
  STASIS_RETURN_IF_ERROR(
      Cu(api_->cuMemAddressFree(r->base, r->reserved), "cuMemAddressFree(" + Hex(r->base) + ")"));
  std::unique_lock lock(mu_);
  regions_.erase(region.address);
  return OkStatus();
}

Status CudaBackend::Unload(const MappedRegion& region) {
  if (region.address == 0 && region.size == 0) return OkStatus();
  STASIS_ASSIGN_OR_RETURN(Region * r, FindRegion(region.address, "Unload"));
  if (!r->loaded && r->handles.empty()) return OkStatus();  // already unloaded
  CurrentContext current(*this);
  STASIS_RETURN_IF_ERROR(current.status());
  STASIS_RETURN_IF_ERROR(StopCopiesAndSync(r, "unloading"));
  return ReleaseMemory(r);
}

Status CudaBackend::Reload(const MappedRegion& region) {
  if (region.address == 0 && region.size == 0) return OkStatus();
  STASIS_ASSIGN_OR_RETURN(Region * r, FindRegion(region.address, "Reload"));
  if (r->loaded) return OkStatus();
  CurrentContext current(*this);
  STASIS_RETURN_IF_ERROR(current.status());
  // Leftovers of a failed Unload are released first: Back needs an empty range.
  STASIS_RETURN_IF_ERROR(ReleaseMemory(r));
  STASIS_RETURN_IF_ERROR(Back(r));
  std::unique_lock lock(mu_);
  r->loaded = true;
  return OkStatus();
}

bool CudaBackend::DestroyStaging(uint8_t* p, size_t len) {
  Status s = Cu(api_->cuMemHostUnregister(p), "cuMemHostUnregister");
  if (!s.ok()) {
    spdlog::warn("cuda backend: {}", s.ToString());
    return false;
  }
  ::munmap(p, len);
  return true;
}

StatusOr<uint8_t*> CudaBackend::AllocateStaging(size_t bytes) {
  if (bytes == 0) return InvalidArgumentError("AllocateStaging: 0 bytes");
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  if (bytes > (1ull << 46)) return ResourceExhaustedError("AllocateStaging: too large");
  const size_t len = format::AlignUp(bytes, page);
  STASIS_ASSIGN_OR_RETURN(uint8_t * p, MapAlignedAnonymous(len, kStagingAlign));
  // Huge pages make both the pinning and the DMA descriptors cheaper; best effort.
  ::madvise(p, len, MADV_HUGEPAGE);
  // Fault the pages in before registering: the driver pins under a global lock, which is
  // then held for less time (PyTorch's reason for pre-faulting).
  if (::madvise(p, len, MADV_POPULATE_WRITE) != 0) {
    for (size_t off = 0; off < len; off += page) p[off] = 0;
  }
  CurrentContext current(*this);
  Status s = current.status();
  if (s.ok())
    s = Cu(api_->cuMemHostRegister(p, len, 0),
           "cuMemHostRegister(" + std::to_string(len) + " bytes)");
  if (!s.ok()) {
    ::munmap(p, len);
    return s;
  }
  std::unique_lock lock(mu_);
  staging_.emplace(p, len);
  return p;
}

void CudaBackend::FreeStaging(uint8_t* staging) {
  if (staging == nullptr) return;
  size_t len = 0;
  {
    std::shared_lock lock(mu_);
    auto it = staging_.find(staging);
    if (it == staging_.end()) {
      spdlog::error("cuda backend: FreeStaging of unknown buffer {}",
                    Hex(reinterpret_cast<uintptr_t>(staging)));
      return;
    }
    len = it->second;
  }
  CurrentContext current(*this);
  Status s = current.status();
  // Copies from the buffer may still be in flight; the DMA must finish before the pages
  // are unpinned and unmapped.
  if (s.ok()) s = SyncStream("freeing staging");
  if (!s.ok() || !DestroyStaging(staging, len)) {
    // Kept (registered) for the destructor to retry.
    if (!s.ok()) spdlog::warn("cuda backend: FreeStaging: {}", s.ToString());
    return;
  }
  std::unique_lock lock(mu_);
  staging_.erase(staging);
}

Status CudaBackend::Copy(uint64_t dst, const void* src, size_t n, int slot) {
  if (slot < 0 || slot >= kMaxSlots)
    return InvalidArgumentError("Copy: slot " + std::to_string(slot) + " out of range");
  if (n == 0) return OkStatus();
  // Held until the copy is enqueued: Unload and UnmapRegion take the lock exclusively to
  // stop copies, so every copy that passed the check is on the stream before their
  // synchronisation, and none reaches memory they unmap.
  std::shared_lock lock(mu_);
  auto it = regions_.upper_bound(dst);
  const Region* r = it == regions_.begin() ? nullptr : &std::prev(it)->second;
  if (r == nullptr || dst - r->base >= r->size || n > r->size - (dst - r->base))
    return InvalidArgumentError("Copy: [" + Hex(dst) + ", +" + std::to_string(n) +
                                ") is not inside a mapped region");
  if (!r->loaded)
    return FailedPreconditionError("Copy: the region at " + Hex(r->base) + " is not loaded");
  CurrentContext current(*this);
  STASIS_RETURN_IF_ERROR(current.status());
  // The event exists before the copy is issued, so no issued copy goes unrecorded.
  if (events_[slot] == nullptr) {
    CUevent e = nullptr;
    STASIS_RETURN_IF_ERROR(Cu(api_->cuEventCreate(&e, kEventFlags), "cuEventCreate"));
    events_[slot] = e;
  }
  STASIS_RETURN_IF_ERROR(
      Cu(api_->cuMemcpyHtoDAsync(dst, src, n, stream_),
         "cuMemcpyHtoDAsync(" + std::to_string(n) + " bytes to " + Hex(dst) + ")"));
  return Cu(api_->cuEventRecord(events_[slot], stream_),
            "cuEventRecord(slot " + std::to_string(slot) + ")");
}

Status CudaBackend::WaitCopies(int slot) {
  if (slot < 0 || slot >= kMaxSlots)
    return InvalidArgumentError("WaitCopies: slot " + std::to_string(slot) + " out of range");
  if (events_[slot] == nullptr) return OkStatus();  // nothing ever issued on the slot
  CurrentContext current(*this);
  STASIS_RETURN_IF_ERROR(current.status());
  return Cu(api_->cuEventSynchronize(events_[slot]),
            "cuEventSynchronize(slot " + std::to_string(slot) + ")");
}

Status CudaBackend::Synchronize() {
  CurrentContext current(*this);
  STASIS_RETURN_IF_ERROR(current.status());
  return SyncStream("Synchronize");
}

Status CudaBackend::StopCopiesAndSync(Region* r, std::string_view why) {
  {
    std::unique_lock lock(mu_);  // waits for copies being enqueued (see Copy)
    r->loaded = false;
  }
  Status s = Cu(api_->cuCtxSynchronize(),
                "cuCtxSynchronize before " + std::string(why) + " " + Hex(r->base));
  if (!s.ok()) {
    // Still mapped: copies may go on.
    std::unique_lock lock(mu_);
    r->loaded = true;
  }
  return s;
}

}  // namespace

StatusOr<std::unique_ptr<DeviceBackend>> NewCudaBackend(const CudaDriverApi* api, int ordinal,
                                                        const CudaBackendOptions& options) {
  if (api == nullptr) return InvalidArgumentError("NewCudaBackend: no driver table");
  if (options.handle_size == 0) return InvalidArgumentError("NewCudaBackend: handle_size is 0");
  auto backend = std::make_unique<CudaBackend>(api, ordinal, options);
  STASIS_RETURN_IF_ERROR(backend->Init());
  return std::unique_ptr<DeviceBackend>(std::move(backend));
}

StatusOr<std::unique_ptr<DeviceBackend>> OpenCudaBackend(int ordinal,
                                                         const CudaBackendOptions& options) {
  STASIS_ASSIGN_OR_RETURN(const CudaDriverApi* api, LoadCudaDriver());
  return NewCudaBackend(api, ordinal, options);
}

}  // namespace stasis
