// File: restore/io/read_progress.h
//
// The pieces every ReadEngine implementation shares: the opened file (ReadTarget),
// Submit's argument checks (CheckReadOp) and the state machine that turns raw I/O results
// into the semantics of restore/io/read_engine.h (ReadProgress). Both the pread pool and
// the io_uring engine drive ReadProgress, so short reads, EINTR, EAGAIN storms and EOF
// behave identically whichever backend runs.
//
// Thread safety: ReadTarget is immutable after construction. A ReadProgress is used by
// one thread at a time.
#ifndef STASIS_RESTORE_IO_READ_PROGRESS_H_
#define STASIS_RESTORE_IO_READ_PROGRESS_H_

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "restore/io/read_engine.h"
#include "stasis/status.h"

namespace stasis {
namespace internal {

// Largest single I/O call: pread caps one call at 2 GiB - 4 KiB and an SQE's length is 32
// bits, so longer reads are issued as several calls. A power of two, hence a multiple of
// every direct I/O alignment.
inline constexpr uint64_t kMaxIoBytes = uint64_t{1} << 30;
inline constexpr int kMaxPreadThreadsPerQueue = 8;

using FaultHook = std::function<int64_t(uint64_t offset, uint64_t length, int64_t result)>;

// The file an engine reads, opened once by OpenReadEngine. Owns the descriptor; engines
// and their queues share it (a queue may outlive its engine).
class ReadTarget {
 public:
  // Takes ownership of `fd` (-1 for a target read through the FileSystem seam, which
  // has no descriptor). `alignment` is 1 unless `direct`.
  ReadTarget(int fd, std::string path, uint64_t size, bool direct, uint32_t alignment);
  ~ReadTarget();
  ReadTarget(const ReadTarget&) = delete;
  ReadTarget& operator=(const ReadTarget&) = delete;

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  bool direct() const { return direct_; }
  uint32_t alignment() const { return alignment_; }

 private:
  const int fd_;
  const std::string path_;
  const uint64_t size_;
  const bool direct_;
  const uint32_t alignment_;
};

// The checks every Submit makes before queueing anything (see ReadQueue::Submit).
Status CheckReadOp(const ReadOp& op, const ReadTarget& target, size_t in_flight, size_t depth,
                   const std::vector<std::pair<void*, size_t>>& fixed_buffers);

// One read's progress through its I/O calls. Start() it, issue a call for
// offset()/dst()/length(), feed the (fault-hooked) result to Apply(), and repeat until
// Apply() returns true; status() is then the read's outcome.
//
// With direct I/O a short read may end off the alignment grid (only at end-of-file on a
// real kernel, anywhere under a fault hook); the next call then restarts at the aligned
// position below, re-reading a few bytes, so that every call stays aligned.
class ReadProgress {
 public:
  void Start(const ReadOp& op);

  uint64_t offset() const { return op_.offset + pos_; }
  uint8_t* dst() const { return static_cast<uint8_t*>(op_.dst) + pos_; }
  uint64_t length() const { return std::min(op_.length - pos_, kMaxIoBytes); }
  const ReadOp& op() const { return op_; }

  // `result`: bytes read by the call, or -errno.
  bool Apply(int64_t result, const ReadTarget& target);
  const Status& status() const { return status_; }

 private:
  bool Finish(Status s);
  std::string Describe(const ReadTarget& target) const;

  ReadOp op_;
  uint64_t done_ = 0;  // bytes of op_ known to be in dst, from its start
  uint64_t pos_ = 0;   // where the next call starts, relative to op_.offset
  int retries_ = 0;    // consecutive calls without progress
  Status status_;
};

}  // namespace internal

}  // namespace stasis

#endif  // STASIS_RESTORE_IO_READ_PROGRESS_H_
