// File: common/thread_pool.h
//
// A fixed-size pool of worker threads with a FIFO task queue. Tasks must not throw.
// Backpressure is the caller's job (the writer bounds its in-flight chunks), so the
// queue itself is unbounded.
//
// Starting a thread can fail (EAGAIN under RLIMIT_NPROC, the kernel's thread or memory-map
// limits): Create() reports that as kResourceExhausted; the constructor, for callers with no
// way to return a Status, never throws and degrades instead (below).
//
// Thread safety: Submit may be called from any thread, including from a task. The
// destructor drains the queue and joins all workers; it must not run on a worker.
#ifndef STASIS_COMMON_THREAD_POOL_H_
#define STASIS_COMMON_THREAD_POOL_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "stasis/status.h"

namespace stasis {

class ThreadPool {
 public:
  // Starts one thread running `body`; may throw std::system_error like std::thread does.
  // The seam tests use to make thread creation fail; empty means std::thread.
  using ThreadStarter = std::function<std::thread(std::function<void()> body)>;

  // Starts `threads` workers (<= 0: one per hardware thread), all or none: when one cannot
  // be started, the ones already running are stopped and joined and the result is
  // kResourceExhausted.
  static StatusOr<std::unique_ptr<ThreadPool>> Create(int threads, const ThreadStarter& start = {});

  // Never throws. Starts as many of `threads` workers as the system allows (size() says how
  // many; a shortfall is logged) and, when none could be started, runs each task on the
  // thread that submits it: slower, but the caller's work still gets done. Prefer Create().
  explicit ThreadPool(int threads, const ThreadStarter& start = {});
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Submit(std::function<void()> task);
  int size() const { return static_cast<int>(workers_.size()); }

  // Resolves <= 0 to the number of hardware threads (at least 1).
  static int ResolveThreadCount(int threads);

 private:
  ThreadPool() = default;
  // Starts `n` workers; stops at the first that fails and returns why.
  Status StartWorkers(int n, const ThreadStarter& start);
  void WorkerLoop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;  // set while constructing only
};

}  // namespace stasis

#endif  // STASIS_COMMON_THREAD_POOL_H_
