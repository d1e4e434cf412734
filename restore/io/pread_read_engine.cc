#include "restore/io/pread_read_engine.h"

#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <system_error>
#include <thread>

namespace stasis {
namespace {

using internal::FaultHook;
using internal::ReadProgress;
using internal::ReadTarget;

// Runs one read to completion on the calling thread.
Status PreadFully(const ReadOp& op, const ReadTarget& target, const FaultHook& hook) {
  ReadProgress p;
  p.Start(op);
  for (;;) {
    const ssize_t n = ::pread(target.fd(), p.dst(), p.length(), static_cast<off_t>(p.offset()));
    int64_t result = n < 0 ? -static_cast<int64_t>(errno) : static_cast<int64_t>(n);
    if (hook) result = hook(p.offset(), p.length(), result);
    if (p.Apply(result, target)) return p.status();
    if (result == -EAGAIN) std::this_thread::yield();
  }
}

class PreadReadQueue final : public ReadQueue {
 public:
  PreadReadQueue(std::shared_ptr<const ReadTarget> target, std::shared_ptr<const FaultHook> hook,
                 size_t depth, std::vector<std::pair<void*, size_t>> fixed_buffers,
                 const std::atomic<bool>* yield_io)
      : target_(std::move(target)),
        hook_(std::move(hook)),
        depth_(depth),
        max_threads_(std::min<size_t>(depth, internal::kMaxPreadThreadsPerQueue)),
        fixed_buffers_(std::move(fixed_buffers)),
        yield_io_(yield_io) {}

  ~PreadReadQueue() override {
    {
      // Reads not yet started are dropped; the ones running finish before the join, so no
      // worker writes caller memory after this returns.
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      pending_.clear();
    }
    work_cv_.notify_all();
    for (std::thread& t : workers_) t.join();
  }

  Status Submit(const ReadOp& op) override {
    STASIS_RETURN_IF_ERROR(internal::CheckReadOp(op, *target_, in_flight_, depth_, fixed_buffers_));
    std::unique_lock<std::mutex> lock(mu_);
    if (op.length == 0) {
      done_.push_back({op.user_data, OkStatus()});
      ++in_flight_;
      return OkStatus();
    }
    if (pending_.size() >= idle_ && workers_.size() < max_threads_) {
      // Thread creation can fail (EAGAIN under RLIMIT_NPROC); with at least one worker the
      // read simply waits for it.
      try {
        workers_.emplace_back([this] { WorkerLoop(); });
      } catch (const std::system_error& e) {
        if (workers_.empty())
          return ResourceExhaustedError(std::string("cannot start a pread worker: ") + e.what());
      }
    }
    pending_.push_back(op);
    ++in_flight_;
    lock.unlock();
    work_cv_.notify_one();
    return OkStatus();
  }

  Status Wait(size_t min_completions, std::vector<ReadCompletion>* out) override {
    const size_t target = std::min(min_completions, in_flight_);
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return done_.size() >= target; });
    in_flight_ -= done_.size();
    for (ReadCompletion& c : done_) out->push_back(std::move(c));
    done_.clear();
    return OkStatus();
  }

  size_t in_flight() const override { return in_flight_; }
  size_t depth() const override { return depth_; }

 private:
  void WorkerLoop() {
    // The I/O priority is per thread: switch it when yield_io changes, back to the one the
    // worker started with.
    const int own_priority = GetThreadIoPriority();
    bool yielding = false;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      ++idle_;
      work_cv_.wait(lock, [&] { return stopping_ || !pending_.empty(); });
      --idle_;
      if (stopping_) return;
      ReadOp op = pending_.front();
      pending_.pop_front();
      lock.unlock();
      const bool yield = YieldingIo(yield_io_);
      if (yield != yielding) {
        SetThreadIoPriority(yield ? kIdleIoPriority
                                  : static_cast<uint16_t>(std::max(own_priority, 0)));
        yielding = yield;
      }
      Status s = PreadFully(op, *target_, *hook_);
      lock.lock();
      done_.push_back({op.user_data, std::move(s)});
      done_cv_.notify_one();
    }
  }

  const std::shared_ptr<const ReadTarget> target_;
  const std::shared_ptr<const FaultHook> hook_;
  const size_t depth_;
  const size_t max_threads_;
  const std::vector<std::pair<void*, size_t>> fixed_buffers_;
  const std::atomic<bool>* const yield_io_;
  size_t in_flight_ = 0;  // owner thread only

  std::mutex mu_;
  std::condition_variable work_cv_;   // pending_ or stopping_ changed
  std::condition_variable done_cv_;   // done_ grew
  std::deque<ReadOp> pending_;        // guarded by mu_
  std::vector<ReadCompletion> done_;  // guarded by mu_
  size_t idle_ = 0;                   // workers waiting for work; guarded by mu_
  bool stopping_ = false;             // guarded by mu_
  std::vector<std::thread> workers_;  // changed by the owner thread only, under mu_
};

class PreadReadEngine final : public ReadEngine {
 public:
  PreadReadEngine(std::shared_ptr<const ReadTarget> target, const ReadEngineOptions& options,
                  ReadEngineReport report)
      : target_(std::move(target)),
        hook_(std::make_shared<const FaultHook>(options.fault_hook)),
        depth_(static_cast<size_t>(options.queue_depth)),
        fixed_buffers_(options.fixed_buffers),
        yield_io_(options.yield_io),
        report_(std::move(report)) {}

  StatusOr<std::unique_ptr<ReadQueue>> NewQueue() override {
    std::lock_guard<std::mutex> lock(mu_);
    return std::unique_ptr<ReadQueue>(
        new PreadReadQueue(target_, hook_, depth_, fixed_buffers_, yield_io_));
  }
  void SetFixedBuffers(std::vector<std::pair<void*, size_t>> buffers) override {
    std::lock_guard<std::mutex> lock(mu_);
    fixed_buffers_ = std::move(buffers);  // pread only checks reads against them
  }
  const ReadEngineReport& report() const override { return report_; }
  uint64_t file_size() const override { return target_->size(); }
  int MappableFd() const override { return target_->fd(); }

 private:
  const std::shared_ptr<const ReadTarget> target_;
  const std::shared_ptr<const FaultHook> hook_;
  const size_t depth_;
  std::mutex mu_;
  std::vector<std::pair<void*, size_t>> fixed_buffers_;
  const std::atomic<bool>* const yield_io_;
  const ReadEngineReport report_;
};

}  // namespace

std::unique_ptr<ReadEngine> NewPreadReadEngine(std::shared_ptr<const internal::ReadTarget> target,
                                               const ReadEngineOptions& options,
                                               ReadEngineReport report) {
  return std::make_unique<PreadReadEngine>(std::move(target), options, std::move(report));
}

}  // namespace stasis
