#include "restore/io/read_progress.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace stasis {
namespace internal {

ReadTarget::ReadTarget(int fd, std::string path, uint64_t size, bool direct, uint32_t alignment)
    : fd_(fd), path_(std::move(path)), size_(size), direct_(direct), alignment_(alignment) {}

ReadTarget::~ReadTarget() {
  if (fd_ >= 0) ::close(fd_);
}

Status CheckReadOp(const ReadOp& op, const ReadTarget& target, size_t in_flight, size_t depth,
                   const std::vector<std::pair<void*, size_t>>& fixed_buffers) {
  if (in_flight >= depth)
    return FailedPreconditionError("read queue is full (depth " + std::to_string(depth) + ")");
  if (op.length == 0) return OkStatus();
  if (op.dst == nullptr) return InvalidArgumentError("read into a null buffer");
  if (op.offset + op.length < op.offset)
    return InvalidArgumentError("read range overflows: offset " + std::to_string(op.offset) +
                                " + length " + std::to_string(op.length));
  const uint64_t a = target.alignment();
  const auto addr = reinterpret_cast<uintptr_t>(op.dst);
  if (target.direct() && (op.offset % a != 0 || op.length % a != 0 || addr % a != 0)) {
    return InvalidArgumentError("direct I/O read of " + std::to_string(op.length) +
                                " bytes at offset " + std::to_string(op.offset) +
                                ": offset, length and buffer address must be multiples of " +
                                std::to_string(a));
  }
  if (op.fixed_buffer >= 0) {
    if (static_cast<size_t>(op.fixed_buffer) >= fixed_buffers.size())
      return InvalidArgumentError("fixed buffer " + std::to_string(op.fixed_buffer) +
                                  " does not exist (" + std::to_string(fixed_buffers.size()) +
                                  " registered)");
    const auto& [base, size] = fixed_buffers[op.fixed_buffer];
    const auto lo = reinterpret_cast<uintptr_t>(base);
    if (addr < lo || addr - lo > size || op.length > size - (addr - lo))
      return InvalidArgumentError("read of " + std::to_string(op.length) +
                                  " bytes does not lie inside fixed buffer " +
                                  std::to_string(op.fixed_buffer));
  }
  return OkStatus();
}

void ReadProgress::Start(const ReadOp& op) {
  op_ = op;
  done_ = 0;
  pos_ = 0;
  retries_ = 0;
  status_ = OkStatus();
}

bool ReadProgress::Finish(Status s) {
  status_ = std::move(s);
  return true;
}

std::string ReadProgress::Describe(const ReadTarget& target) const {
  return std::to_string(op_.length) + " bytes at offset " + std::to_string(op_.offset) + " of '" +
         target.path() + "'";
}

bool ReadProgress::Apply(int64_t result, const ReadTarget& target) {
  const uint64_t asked = length();
  if (result == -EAGAIN || result == -EINTR) {
    // Retried at once: for regular files both are transient (a signal, a momentarily
    // exhausted resource); the bound turns a livelock into an error.
    if (++retries_ > kMaxReadRetries) {
      return Finish(UnavailableError(std::string(result == -EAGAIN ? "EAGAIN" : "EINTR") +
                                     " storm: " + std::to_string(kMaxReadRetries) +
                                     " consecutive retries reading " + Describe(target)));
    }
    return false;
  }
  if (result < 0) {
    return Finish(ErrnoToStatus(static_cast<int>(-result), "read " + Describe(target)));
  }
  if (static_cast<uint64_t>(result) > asked) {
    return Finish(InternalError("read returned " + std::to_string(result) + " bytes, " +
                                std::to_string(asked) + " were asked for, reading " +
                                Describe(target)));
  }
  auto truncated = [&] {
    return OutOfRangeError("truncated: read " + std::to_string(done_) + " of " +
                           std::to_string(op_.length) + " bytes at offset " +
                           std::to_string(op_.offset) + " of '" + target.path() + "' (" +
                           std::to_string(target.size()) + " bytes)");
  };
  if (result == 0) return Finish(truncated());

  const uint64_t end = pos_ + static_cast<uint64_t>(result);
  const bool progressed = end > done_;
  done_ = std::max(done_, end);
  if (done_ == op_.length) return Finish(OkStatus());
  if (op_.offset + done_ >= target.size()) {
    // End of file. A direct read may end past it by less than one block: the caller
    // rounded the file's tail up to the alignment (read_engine.h).
    const uint64_t past = op_.offset + op_.length - target.size();
    if (target.direct() && op_.offset + done_ == target.size() && past < target.alignment()) {
      std::memset(static_cast<uint8_t*>(op_.dst) + done_, 0, op_.length - done_);
      return Finish(OkStatus());
    }
    return Finish(truncated());
  }
  // Short read: continue with the rest, from the aligned position below for direct I/O.
  pos_ = target.direct() ? done_ - done_ % target.alignment() : done_;
  if (progressed) {
    retries_ = 0;
  } else if (++retries_ > kMaxReadRetries) {
    return Finish(UnavailableError("no progress: " + std::to_string(kMaxReadRetries) +
                                   " consecutive short reads without new data reading " +
                                   Describe(target)));
  }
  return false;
}

}  // namespace internal

}  // namespace stasis
