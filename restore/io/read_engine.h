// File: restore/io/read_engine.h
//
// The readers of the restore engine behind one small interface: a ReadQueue accepts reads
// of file ranges into caller memory and reports their completions. Two engines implement
// it with identical semantics: io_uring (uring_read_engine.cc) and a pread thread pool
// (pread_read_engine.cc). `OpenReadEngine` picks one (IoBackend) and says why.
//
// Semantics shared by every engine:
//  - A completed read has filled exactly `length` bytes, or has failed: short reads are
//    resubmitted for the rest, EINTR and EAGAIN are retried (bounded: more than
//    kMaxReadRetries consecutive ones are kUnavailable, "EAGAIN storm"), EOF before
//    `length` is kOutOfRange ("truncated: read N of M bytes at offset X").
//  - Reads are never linked; completions may arrive in any order.
//  - With direct I/O, `offset`, `length` and `dst` must be multiples of
//    `alignment()` (the caller rounds; see restore/restore_plan.h). A read that ends past
//    end-of-file by less than one alignment block (the caller rounded up the file's tail)
//    succeeds: the bytes past end-of-file are zeroed. Anything further past is truncated.
//    `file_size()` is the size at open; images are immutable while restored.
//
// Thread safety: a ReadEngine is safe for concurrent use. A ReadQueue belongs to one
// thread (io_uring rings are single-issuer): the thread that first calls Submit or Wait
// must make every later call, including the destructor when reads are in flight. Make
// one queue per worker. A queue may outlive its engine.
#ifndef STASIS_RESTORE_IO_READ_ENGINE_H_
#define STASIS_RESTORE_IO_READ_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "stasis/restore.h"
#include "stasis/status.h"

namespace stasis {

// Consecutive EAGAIN/EINTR results (or short reads without progress) tolerated for one
// read; the next one fails it with kUnavailable ("EAGAIN storm"). Shared by every engine.
inline constexpr int kMaxReadRetries = 1000;

struct ReadEngineOptions {
  IoBackend backend = IoBackend::kAuto;
  // Direct I/O (O_DIRECT): see DirectIo in stasis/restore.h.
  using Direct = DirectIo;
  Direct direct = Direct::kAuto;
  int queue_depth = 32;  // reads in flight per queue (io_uring SQ size), 1..4096
  // Buffers the caller will read into, registered with the kernel when possible (io_uring
  // fixed buffers). Registration failure is not an error; the report says so. They must
  // stay valid while any engine or queue opened with them exists.
  std::vector<std::pair<void*, size_t>> fixed_buffers;
  // Test seam: called with the range and raw result (bytes read, or -errno) of each I/O
  // call before the engine acts on it, and may replace the result: -EIO, -EAGAIN, -EINTR,
  // or fewer bytes (a short read). A resubmitted remainder is a new call with its own
  // range. Both engines call it at the same point, so fault tests run against each. It
  // may be called concurrently from several threads (the pread pool's workers).
  std::function<int64_t(uint64_t offset, uint64_t length, int64_t result)> fault_hook;
  // While *yield_io is true, reads are issued at the idle I/O priority class
  // (kIdleIoPriority: an io_uring SQE's ioprio; ioprio_set on a pread worker), which the
  // mq-deadline and bfq schedulers serve only when no other I/O is queued. A cold start sets
  // it while libtorch loads, so the loader's page faults are not queued behind a deep
  // restore. Checked per read, so clearing it takes effect at the next read; null: never.
  // The flag must outlive every engine and queue opened with it.
  const std::atomic<bool>* yield_io = nullptr;
};

// IOPRIO_PRIO_VALUE(IOPRIO_CLASS_IDLE, 0); 0 is "none" (the thread's own priority).
inline constexpr uint16_t kIdleIoPriority = 3 << 13;

// Whether a read issued now yields (ReadEngineOptions::yield_io, which may be null).
inline bool YieldingIo(const std::atomic<bool>* yield_io) {
  return yield_io != nullptr && yield_io->load(std::memory_order_relaxed);
}

// Sets the calling thread's I/O priority (ioprio_set(IOPRIO_WHO_PROCESS, 0, priority)).
// Returns false (errno set) where the kernel refuses.
bool SetThreadIoPriority(uint16_t priority);
// The calling thread's I/O priority, or -1 (errno set).
int GetThreadIoPriority();

struct ReadOp {
  uint64_t offset = 0;
  uint64_t length = 0;
  void* dst = nullptr;
  uint64_t user_data = 0;
  // Index into fixed_buffers when [dst, dst + length) lies inside that buffer (Submit
  // checks), else -1. Only a hint: engines without registered buffers ignore it.
  int fixed_buffer = -1;
};

struct ReadCompletion {
  uint64_t user_data = 0;
  Status status;  // OK: all `length` bytes are in dst
};

class ReadQueue {
 public:
  // Waits for every read the kernel or a worker may still be writing (never returns
  // while caller memory may still be written); their results are dropped.
  virtual ~ReadQueue() = default;
  // Queues a read. The read may start before Wait(). Errors (nothing is queued):
  // kFailedPrecondition when in_flight() == depth(), kInvalidArgument for a null dst, a
  // misaligned direct read or a bad fixed_buffer. A zero-length read completes OK.
  virtual Status Submit(const ReadOp& op) = 0;
  // Waits until at least `min_completions` reads (bounded by in_flight()) have completed
  // and appends every completed read to `out`. A non-OK return means the queue itself
  // failed (ring error); per-read failures are in the completions.
  virtual Status Wait(size_t min_completions, std::vector<ReadCompletion>* out) = 0;
  // Asks reads still running to stop: they complete (in a later Wait) with kCancelled, or
  // as they were if they had finished. The caller stops submitting. For the kernel's
  // engines a read ends soon anyway, so this does nothing; the remote engine's GETs can
  // take a retry schedule (remote.h), which a failed or cancelled restore must not wait
  // out.
  virtual void Cancel() {}
  // Reads submitted and not yet returned by Wait().
  virtual size_t in_flight() const = 0;
  virtual size_t depth() const = 0;
};

class ReadEngine {
 public:
  virtual ~ReadEngine() = default;
  virtual StatusOr<std::unique_ptr<ReadQueue>> NewQueue() = 0;
  // Replaces ReadEngineOptions::fixed_buffers for queues created afterwards (the restore
  // pipeline allocates its staging memory after the engine is open, since the plan needs
  // the engine's alignment). Registration stays best effort: report().buffers_registered
  // says whether the last queue got them.
  virtual void SetFixedBuffers(std::vector<std::pair<void*, size_t>> buffers) = 0;
  virtual const ReadEngineReport& report() const = 0;
  virtual uint64_t file_size() const = 0;
  // A descriptor of the image that may be mmap'ed (restore maps raw chunks of a page-cache-
  // hot image instead of copying them), or -1 when the engine has none (FileSystem seam).
  // Owned by the engine.
  virtual int MappableFd() const { return -1; }
};

// Opens `path` for restore with the backend the options ask for. kAuto tries io_uring
// (a real read of the first block is the probe) and falls back to pread, recording why.
// kUring fails when io_uring does not work here (e.g. kPermissionDenied "io_uring_setup:
// Operation not permitted (...)"), kUnimplemented when built without liburing.
StatusOr<std::unique_ptr<ReadEngine>> OpenReadEngine(const std::string& path,
                                                     const ReadEngineOptions& options);

}  // namespace stasis

#endif  // STASIS_RESTORE_IO_READ_ENGINE_H_
