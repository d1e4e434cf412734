#include "restore/io/file_read_engine.h"

#include <cerrno>
#include <deque>

#include "restore/io/read_progress.h"

namespace stasis {
namespace {

class FileSystemReadQueue final : public ReadQueue {
 public:
  FileSystemReadQueue(const RandomAccessFile* file, const internal::ReadTarget* target,
                      size_t depth, const std::function<int64_t(uint64_t, uint64_t, int64_t)>* hook)
      : file_(file), target_(target), depth_(depth), hook_(hook) {}

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
  // The engines' own state machine (short reads, EINTR/EAGAIN, EOF) drives the seam too.
  Status ReadFully(const ReadOp& op) {
    internal::ReadProgress progress;
    progress.Start(op);
    for (;;) {
      auto got = file_->ReadAt(progress.offset(), progress.length(), progress.dst());
      int64_t res = got.ok() ? static_cast<int64_t>(*got) : -EIO;
      if (*hook_) res = (*hook_)(progress.offset(), progress.length(), res);
      if (!got.ok() && res == -EIO) return got.status();  // keep the seam's own message
      if (progress.Apply(res, *target_)) return progress.status();
    }
  }

  const RandomAccessFile* file_;
  const internal::ReadTarget* target_;
  size_t depth_;
  const std::function<int64_t(uint64_t, uint64_t, int64_t)>* hook_;
  std::deque<ReadOp> pending_;
};

class FileSystemReadEngine final : public ReadEngine {
 public:
  FileSystemReadEngine(std::unique_ptr<RandomAccessFile> file, const std::string& path, int depth,
                       std::function<int64_t(uint64_t, uint64_t, int64_t)> hook)
      : file_(std::move(file)),
        target_(-1, path, file_->Size(), /*direct=*/false, /*alignment=*/1),
        depth_(depth),
        hook_(std::move(hook)) {
    report_.backend = IoBackend::kPread;
    report_.reason = "file-system seam";
    report_.alignment = 1;
  }
  StatusOr<std::unique_ptr<ReadQueue>> NewQueue() override {
    return std::unique_ptr<ReadQueue>(
        new FileSystemReadQueue(file_.get(), &target_, static_cast<size_t>(depth_), &hook_));
  }
  void SetFixedBuffers(std::vector<std::pair<void*, size_t>>) override {}  // nothing to register
  const ReadEngineReport& report() const override { return report_; }
  uint64_t file_size() const override { return file_->Size(); }

 private:
  std::unique_ptr<RandomAccessFile> file_;
  internal::ReadTarget target_;
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
      new FileSystemReadEngine(std::move(file), path, queue_depth, std::move(fault_hook)));
}

}  // namespace stasis
