// File: common/thread_pool.h
//
// A fixed-size pool of worker threads with a FIFO task queue. Tasks must not throw.
// Backpressure is the caller's job (the writer bounds its in-flight chunks), so the
// queue itself is unbounded.
//
// Thread safety: Submit may be called from any thread, including from a task. The
// destructor drains the queue and joins all workers; it must not run on a worker.
#ifndef STASIS_COMMON_THREAD_POOL_H_
#define STASIS_COMMON_THREAD_POOL_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace stasis {

class ThreadPool {
 public:
  // `threads` <= 0 means one per hardware thread.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Submit(std::function<void()> task);
  int size() const { return static_cast<int>(workers_.size()); }

  // Resolves <= 0 to the number of hardware threads (at least 1).
  static int ResolveThreadCount(int threads);

 private:
  void WorkerLoop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace stasis

#endif  // STASIS_COMMON_THREAD_POOL_H_
