// File: restore/map_lease.h
//
// The map route's guarantee (docs/restore-pipeline.md, "Mapped chunks and the lease"):
// memory mapped from an image file never changes after it was checked, whatever happens
// to the file. A MapLease holds a read lease on the image (fcntl F_SETLEASE, F_RDLCK);
// while it is held, the kernel makes every open of the file for writing, and every
// truncate, wait. Chunks are mapped only through the lease (Map), which records each
// mapped range. When a writer comes, the kernel signals the lease holder and gives it
// /proc/sys/fs/lease-break-time seconds: the process's one watcher thread then copies
// every still-mapped range into anonymous memory at the same addresses (mmap a scratch,
// memcpy, mremap MREMAP_FIXED over the file-backed range: atomic for concurrent readers)
// and only then releases the lease, so the writer proceeds when the memory no longer
// depends on the file. Where no lease can be had, Acquire says why and the caller copies
// instead of mapping: nothing is mapped without a lease.
//
// Signals: the break is delivered as MapLeaseSignal() (a realtime signal, so it carries
// the descriptor and queues), whose handler only writes to an eventfd (async-signal-safe)
// that wakes the watcher. The handler is installed on the first Acquire, and only while
// the signal's disposition is the default or already ours: a process that has its own
// handler for it gets no leases (copies). The watcher unblocks the signal for itself, so
// it is delivered even where every other thread blocks it, and while any lease exists it
// also polls every lease (F_GETLEASE) once a second, so a lost signal (a handler replaced
// later, a full realtime queue) still gets its copy-out well within the break time.
//
// Limits, stated in stasis/restore.h: a copy-out must finish within the break time, so
// Acquire refuses when the break time is under kMinBreakSeconds or when `bytes` could not
// be copied at kCopyOutBytesPerSecond within it; if memory for a copy cannot be had the
// lease is kept and the copy retried each second until the kernel's break time runs out
// (logged as an error). Writes into restored memory that race a copy-out may be lost.
//
// Thread safety: every method may be called from any thread; Map, CopyOutAndRelease and
// DropAndRelease exclude each other (one mutex per lease).
#ifndef STASIS_RESTORE_MAP_LEASE_H_
#define STASIS_RESTORE_MAP_LEASE_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "stasis/status.h"

namespace stasis {
namespace internal {

// The OS calls behind a lease, so that the refusals and a break at a chosen moment are
// testable. The real one: RealLeaseSeam(). A seam passed to Acquire must outlive the lease.
class LeaseSeam {
 public:
  virtual ~LeaseSeam() = default;
  // fcntl(fd, F_SETSIG, signal) then fcntl(fd, F_SETLEASE, F_RDLCK): 0 or -errno
  // (EAGAIN: the file is open for writing; EACCES/EPERM: not the owner and no CAP_LEASE;
  // EINVAL: the file system has no leases).
  virtual int TakeReadLease(int fd, int signal);
  // fcntl(fd, F_GETLEASE): F_RDLCK while held; F_UNLCK once a break is pending (or the
  // lease is gone); -errno.
  virtual int GetLease(int fd);
  // fcntl(fd, F_SETLEASE, F_UNLCK): 0 or -errno.
  virtual int ReleaseLease(int fd);
  // /proc/sys/fs/lease-break-time in seconds; -1 when unreadable.
  virtual int LeaseBreakSeconds();
  // Called on the worker's thread right before and right after a chunk is mapped (or
  // found unmappable): tests break the lease there. No lock is held.
  virtual void BeforeMap(uint64_t chunk) { (void)chunk; }
  virtual void AfterMap(uint64_t chunk) { (void)chunk; }
};
LeaseSeam* RealLeaseSeam();

// The realtime signal lease breaks arrive as (SIGRTMIN + 7).
int MapLeaseSignal();

class MapLease {
 public:
  // Break times below this are refused: the copy-out could not be relied on.
  static constexpr int kMinBreakSeconds = 2;
  // A conservative copy-out rate (page cache into fresh, populated anonymous memory:
  // 472 MiB took 0.28-0.34 s on the 2-core reference VM, about 1.5 GB/s); with it `bytes`
  // must fit in half the break time.
  static constexpr uint64_t kCopyOutBytesPerSecond = 1ull << 30;

  // Takes a read lease on the open file description of `fd` (which must be O_RDONLY), by a
  // duplicate the lease keeps, and registers it with the process's watcher (started on
  // first use). `bytes`: at most how much will be mapped. `seam`: null for the real OS.
  // Errors (the caller copies instead; the message says why): kFailedPrecondition.
  static StatusOr<std::shared_ptr<MapLease>> Acquire(int fd, uint64_t bytes, LeaseSeam* seam);
  // Releases the lease (if still held) without touching the ranges: the caller has unmapped
  // them, or replaced them (DropAndRelease), or will never read them again.
  ~MapLease();
  MapLease(const MapLease&) = delete;
  MapLease& operator=(const MapLease&) = delete;

  // While the lease is held: maps [dst, dst + length) onto the file at `offset`
  // (MAP_PRIVATE | MAP_FIXED, read-write, copy-on-write), records the range and returns
  // true. Once the lease was broken or released: maps nothing and returns false (the
  // caller copies the bytes instead). Errors: mmap's (the range's old contents may be gone).
  // dst, length and offset must be page multiples.
  StatusOr<bool> Map(uint8_t* dst, uint64_t length, uint64_t offset);

  // What a break does: copies every mapped range into anonymous memory at the same
  // addresses, then releases the lease. Idempotent. On failure (no memory for a copy) the
  // lease stays held with the ranges not yet copied, for a later retry.
  Status CopyOutAndRelease();
  // What Unload does: replaces every mapped range with fresh anonymous (zero) memory and
  // releases the lease. Idempotent.
  Status DropAndRelease();

  bool held() const;
  uint64_t mapped_bytes() const;
  LeaseSeam* seam() const { return seam_; }

  // The watcher's work, run on every wake: every registered lease that is still held but
  // whose break is pending (GetLease != F_RDLCK) is copied out and released. Tests call it
  // to break a lease at a chosen moment.
  static void HandleBreaks();
  // Leases registered with the watcher now (tests).
  static size_t RegisteredForTest();

 private:
  MapLease(int fd, LeaseSeam* seam) : fd_(fd), seam_(seam) {}
  Status ReleaseLocked();

  const int fd_;  // the duplicate that holds the lease (closed by the destructor)
  LeaseSeam* const seam_;
  mutable std::mutex mu_;
  bool held_ = false;  // the lease was taken and is not released yet
  std::vector<std::pair<uint8_t*, uint64_t>> ranges_;  // file-backed, not yet copied out
  uint64_t mapped_bytes_ = 0;
};

}  // namespace internal
}  // namespace stasis

#endif  // STASIS_RESTORE_MAP_LEASE_H_
