#include "restore/file_read_engine.h"

#include <cerrno>
#include <deque>

namespace stasis {
namespace {

class FileSystemReadQueue final : public ReadQueue {
 public:
  FileSystemReadQueue(const RandomAccessFile* file, size_t depth,
                      const std::function<int64_t(uint64_t, uint64_t, int64_t)>* hook)
      : file_(file), depth_(depth), hook_(hook) {}

  Status Submit(const ReadOp& op) override {
    if (pending_.size() >= depth_) return FailedPreconditionError("read queue is full");
    pending_.push_back(op);
    return OkStatus();
  }

  Status Wait(size_t min_completions, std::vector<ReadCompletion>* out) override {
    // Reads run here, in submission order: the seam is synchronous.
    while (!pending_.empty()) {
      ReadOp op = pending_.front();
      pending_.pop_front();
      out->push_back({op.user_data, ReadFully(op)});
    }
    return OkStatus();
  }

  size_t in_flight() const override { return pending_.size(); }
  size_t depth() const override { return depth_; }

 private:
  Status ReadFully(const ReadOp& op) {
    uint64_t done = 0;
    int retries = 0;
    char* dst = static_cast<char*>(op.dst);
    while (done < op.length) {
      const uint64_t off = op.offset + done, want = op.length - done;
      int64_t res;
      auto got = file_->ReadAt(off, want, dst + done);
      res = got.ok() ? static_cast<int64_t>(*got) : -EIO;
      if (*hook_) res = (*hook_)(off, want, res);
      if (!got.ok() && res == -EIO) return got.status();
      if (res == -EINTR || res == -EAGAIN) {
        if (++retries > kMaxReadRetries)
          return UnavailableError("EAGAIN storm: read at offset " + std::to_string(off) +
                                  " retried " + std::to_string(kMaxReadRetries) + " times");
        continue;
      }
      if (res < 0)
        return ErrnoToStatus(static_cast<int>(-res), "read at offset " + std::to_string(off));
      if (res == 0)
        return OutOfRangeError("truncated: read " + std::to_string(done) + " of " +
                               std::to_string(op.length) + " bytes at offset " +
                               std::to_string(op.offset));
      retries = 0;
      done += static_cast<uint64_t>(std::min<int64_t>(res, static_cast<int64_t>(want)));
    }
    return OkStatus();
  }

  const RandomAccessFile* file_;
  size_t depth_;
  const std::function<int64_t(uint64_t, uint64_t, int64_t)>* hook_;
  std::deque<ReadOp> pending_;
};

class FileSystemReadEngine final : public ReadEngine {
 public:
  FileSystemReadEngine(std::unique_ptr<RandomAccessFile> file, int depth,
                       std::function<int64_t(uint64_t, uint64_t, int64_t)> hook)
      : file_(std::move(file)), depth_(depth), hook_(std::move(hook)) {
    report_.backend = IoBackend::kPread;
    report_.reason = "file-system seam";
    report_.alignment = 1;
  }
  StatusOr<std::unique_ptr<ReadQueue>> NewQueue() override {
    return std::unique_ptr<ReadQueue>(
        new FileSystemReadQueue(file_.get(), static_cast<size_t>(depth_), &hook_));
  }
  const ReadEngineReport& report() const override { return report_; }
  uint64_t file_size() const override { return file_->Size(); }

 private:
  std::unique_ptr<RandomAccessFile> file_;
  int depth_;
  std::function<int64_t(uint64_t, uint64_t, int64_t)> hook_;
  ReadEngineReport report_;
};

}  // namespace

StatusOr<std::unique_ptr<ReadEngine>> NewFileSystemReadEngine(
    FileSystem* fs, const std::string& path, int queue_depth,
    std::function<int64_t(uint64_t, uint64_t, int64_t)> fault_hook) {
  if (queue_depth < 1) return InvalidArgumentError("queue depth must be at least 1");
  STASIS_ASSIGN_OR_RETURN(auto file, fs->OpenRandomAccess(path));
  return std::unique_ptr<ReadEngine>(
      new FileSystemReadEngine(std::move(file), queue_depth, std::move(fault_hook)));
}

}  // namespace stasis
