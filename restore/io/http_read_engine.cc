#include "restore/io/http_read_engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "common/numbers.h"

namespace stasis {
namespace {

using Clock = std::chrono::steady_clock;

// What one queue shares with the transfer thread.
struct QueueState {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<ReadCompletion> done;
  size_t outstanding = 0;  // submitted, not yet returned by Wait
  size_t in_loop = 0;      // held by the transfer thread (it may write their memory)
  std::atomic<bool> cancelled{false};

  void Complete(uint64_t user_data, Status status) {
    std::lock_guard<std::mutex> lock(mu);
    done.push_back({user_data, std::move(status)});
    --in_loop;
    cv.notify_all();
  }
};

struct Task {
  ReadOp op;
  std::shared_ptr<QueueState> queue;
  std::unique_ptr<RangeTransfer> transfer;
  Clock::time_point not_before{};
};

Status Cancelled() { return CancelledError("read cancelled: the restore stopped"); }

// The thread that runs every transfer of one engine on a libcurl multi handle.
class TransferLoop {
 public:
  explicit TransferLoop(std::shared_ptr<const RemoteObject> object) : object_(std::move(object)) {}

  Status Start() {
    multi_ = curl_multi_init();
    if (multi_ == nullptr) return ResourceExhaustedError("curl_multi_init failed");
    // Connections kept open for reuse: one per transfer in flight.
    curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS,
                      static_cast<long>(object_->options().concurrency + 4));
    try {
      thread_ = std::thread([this] { Run(); });
    } catch (const std::exception& e) {  // std::system_error: no thread left in this process
      return ResourceExhaustedError(std::string("cannot start the transfer thread: ") + e.what());
    }
    return OkStatus();
  }

  ~TransferLoop() {
    if (thread_.joinable()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
      }
      curl_multi_wakeup(multi_);
      thread_.join();
    }
    for (CURL* h : idle_) curl_easy_cleanup(h);
    if (multi_ != nullptr) curl_multi_cleanup(multi_);
  }

  const RemoteObject& object() const { return *object_; }

  void Post(std::unique_ptr<Task> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      incoming_.push_back(std::move(task));
    }
    curl_multi_wakeup(multi_);
  }

  void Wake() { curl_multi_wakeup(multi_); }

 private:
  void Run() {
    std::deque<std::unique_ptr<Task>> waiting;
    std::unordered_map<CURL*, std::unique_ptr<Task>> active;
    const size_t limit = static_cast<size_t>(object_->options().concurrency);
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stop_) break;
        for (auto& t : incoming_) waiting.push_back(std::move(t));
        incoming_.clear();
      }
      // Cancelled queues: their transfers stop here, before they write another byte.
      for (auto it = active.begin(); it != active.end();) {
        if (it->second->queue->cancelled.load()) {
          curl_multi_remove_handle(multi_, it->first);
          idle_.push_back(it->first);
          it->second->queue->Complete(it->second->op.user_data, Cancelled());
          it = active.erase(it);
        } else {
          ++it;
        }
      }
      for (auto it = waiting.begin(); it != waiting.end();) {
        if ((*it)->queue->cancelled.load()) {
          (*it)->queue->Complete((*it)->op.user_data, Cancelled());
          it = waiting.erase(it);
        } else {
          ++it;
        }
      }
      // Start what may start.
      const Clock::time_point now = Clock::now();
      Clock::time_point next_due = now + std::chrono::milliseconds(200);
      for (auto it = waiting.begin(); it != waiting.end() && active.size() < limit;) {
        Task& t = **it;
        if (t.not_before > now) {
          next_due = std::min(next_due, t.not_before);
          ++it;
          continue;
        }
        CURL* h = idle_.empty() ? curl_easy_init() : idle_.back();
        if (!idle_.empty()) idle_.pop_back();
        Status armed =
            h == nullptr ? ResourceExhaustedError("curl_easy_init failed") : t.transfer->Arm(h);
        if (armed.ok() && curl_multi_add_handle(multi_, h) != CURLM_OK)
          armed = InternalError("curl_multi_add_handle failed");
        if (!armed.ok()) {
          if (h != nullptr) idle_.push_back(h);
          t.queue->Complete(t.op.user_data, armed);
          it = waiting.erase(it);
          continue;
        }
        active.emplace(h, std::move(*it));
        it = waiting.erase(it);
      }
      int running = 0;
      curl_multi_perform(multi_, &running);
      int left = 0;
      while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
        if (msg->msg != CURLMSG_DONE) continue;
        CURL* h = msg->easy_handle;
        const CURLcode code = msg->data.result;
        curl_multi_remove_handle(multi_, h);
        auto found = active.find(h);
        if (found == active.end()) {
          idle_.push_back(h);
          continue;
        }
        std::unique_ptr<Task> task = std::move(found->second);
        active.erase(found);
        idle_.push_back(h);
        Status status;
        switch (task->transfer->Finish(h, code, &status)) {
          case RangeTransfer::Next::kDone:
          case RangeTransfer::Next::kFail:
            task->queue->Complete(task->op.user_data, std::move(status));
            break;
          case RangeTransfer::Next::kRetry:
            task->not_before = Clock::now() + task->transfer->backoff();
            next_due = std::min(next_due, task->not_before);
            waiting.push_front(std::move(task));
            break;
        }
      }
      bool startable = false;
      for (const auto& t : waiting)
        if (t->not_before <= Clock::now() && active.size() < limit) startable = true;
      if (startable) continue;
      // Idle (a restored model keeps its engine for Reload): sleep until woken.
      const int64_t cap = active.empty() && waiting.empty() ? 600000 : 200;
      const int timeout_ms = static_cast<int>(std::clamp<int64_t>(
          std::chrono::duration_cast<std::chrono::milliseconds>(next_due - Clock::now()).count(), 0,
          cap));
      curl_multi_poll(multi_, nullptr, 0, timeout_ms, nullptr);
    }
    // Stopping: nothing may write into caller memory after this.
    for (auto& [h, task] : active) {
      curl_multi_remove_handle(multi_, h);
      idle_.push_back(h);
      task->queue->Complete(task->op.user_data, CancelledError("read engine stopped"));
    }
    for (auto& task : waiting)
      task->queue->Complete(task->op.user_data, CancelledError("read engine stopped"));
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& task : incoming_)
      task->queue->Complete(task->op.user_data, CancelledError("read engine stopped"));
    incoming_.clear();
  }

  std::shared_ptr<const RemoteObject> object_;
  CURLM* multi_ = nullptr;
  std::thread thread_;
  std::mutex mu_;
  bool stop_ = false;
  std::vector<std::unique_ptr<Task>> incoming_;
  std::vector<CURL*> idle_;  // the transfer thread's only
};

class HttpReadQueue final : public ReadQueue {
 public:
  HttpReadQueue(std::shared_ptr<TransferLoop> loop, size_t depth)
      : loop_(std::move(loop)), depth_(depth), state_(std::make_shared<QueueState>()) {}

  ~HttpReadQueue() override {
    Cancel();
    std::unique_lock<std::mutex> lock(state_->mu);
    state_->cv.wait(lock, [&] { return state_->in_loop == 0; });
  }

  void Cancel() override {
    state_->cancelled.store(true);
    loop_->Wake();
  }

  Status Submit(const ReadOp& op) override {
    if (op.dst == nullptr) return InvalidArgumentError("read into a null buffer");
    if (state_->cancelled.load()) return Cancelled();
    std::unique_lock<std::mutex> lock(state_->mu);
    if (state_->outstanding >= depth_) return FailedPreconditionError("read queue is full");
    ++state_->outstanding;
    const RemoteObject& o = loop_->object();
    if (op.length == 0) {
      state_->done.push_back({op.user_data, OkStatus()});
      return OkStatus();
    }
    if (op.offset > o.size() || op.length > o.size() - op.offset) {
      state_->done.push_back(
          {op.user_data, OutOfRangeError("truncated: " + o.display() + " holds " + Num(o.size()) +
                                         " bytes, a read of " + Num(op.length) + " at offset " +
                                         Num(op.offset) + " goes past its end")});
      return OkStatus();
    }
    auto task = std::make_unique<Task>();
    task->op = op;
    task->queue = state_;
    task->transfer = std::make_unique<RangeTransfer>(&o, op.offset, op.length, op.dst);
    ++state_->in_loop;
    lock.unlock();  // the loop's lock is never taken inside a queue's
    loop_->Post(std::move(task));
    return OkStatus();
  }

  Status Wait(size_t min_completions, std::vector<ReadCompletion>* out) override {
    std::unique_lock<std::mutex> lock(state_->mu);
    const size_t need = std::min(min_completions, state_->outstanding);
    state_->cv.wait(lock, [&] { return state_->done.size() >= need; });
    for (auto& c : state_->done) out->push_back(std::move(c));
    state_->outstanding -= state_->done.size();
    state_->done.clear();
    return OkStatus();
  }

  size_t in_flight() const override {
    std::lock_guard<std::mutex> lock(state_->mu);
    return state_->outstanding;
  }
  size_t depth() const override { return depth_; }

 private:
  std::shared_ptr<TransferLoop> loop_;
  size_t depth_;
  std::shared_ptr<QueueState> state_;
};

class HttpReadEngine final : public ReadEngine {
 public:
  HttpReadEngine(std::shared_ptr<TransferLoop> loop, int depth)
      : loop_(std::move(loop)), depth_(depth) {
    report_.backend = IoBackend::kHttp;
    report_.reason = "range GETs, " + std::to_string(loop_->object().options().concurrency) +
                     " in flight, from " + loop_->object().display();
    report_.direct_reason = "remote image";
    report_.alignment = 1;
  }
  StatusOr<std::unique_ptr<ReadQueue>> NewQueue() override {
    return std::unique_ptr<ReadQueue>(new HttpReadQueue(loop_, static_cast<size_t>(depth_)));
  }
  void SetFixedBuffers(std::vector<std::pair<void*, size_t>>) override {}
  const ReadEngineReport& report() const override { return report_; }
  uint64_t file_size() const override { return loop_->object().size(); }

 private:
  std::shared_ptr<TransferLoop> loop_;
  int depth_;
  ReadEngineReport report_;
};

}  // namespace

StatusOr<std::unique_ptr<ReadEngine>> NewHttpReadEngine(std::shared_ptr<const RemoteObject> object,
                                                        int queue_depth) {
  if (queue_depth < 1 || queue_depth > 4096)
    return InvalidArgumentError("queue depth must be in 1..4096, not " +
                                std::to_string(queue_depth));
  auto loop = std::make_shared<TransferLoop>(std::move(object));
  STASIS_RETURN_IF_ERROR(loop->Start());
  return std::unique_ptr<ReadEngine>(new HttpReadEngine(std::move(loop), queue_depth));
}

}  // namespace stasis
