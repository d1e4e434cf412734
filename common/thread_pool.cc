#include "common/thread_pool.h"

#include <spdlog/spdlog.h>

#include <exception>
#include <string>

namespace stasis {

int ThreadPool::ResolveThreadCount(int threads) {
  if (threads > 0) return threads;
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

StatusOr<std::unique_ptr<ThreadPool>> ThreadPool::Create(int threads, const ThreadStarter& start) {
  std::unique_ptr<ThreadPool> pool(new ThreadPool());
  // On failure the destructor stops and joins the workers that did start.
  STASIS_RETURN_IF_ERROR(pool->StartWorkers(ResolveThreadCount(threads), start));
  return pool;
}

ThreadPool::ThreadPool(int threads, const ThreadStarter& start) {
  const int n = ResolveThreadCount(threads);
  Status s = StartWorkers(n, start);
  if (!s.ok()) {
    spdlog::warn("{}; running with {} of {} workers{}", s.message(), workers_.size(), n,
                 workers_.empty() ? " (tasks run on the submitting thread)" : "");
  }
}

Status ThreadPool::StartWorkers(int n, const ThreadStarter& start) {
  // std::thread reports a failed pthread_create as std::system_error, and the vector can
  // throw std::bad_alloc; neither may leave the pool (or reach std::terminate). Reserving
  // first means a started thread is never dropped by a failing push_back.
  try {
    workers_.reserve(static_cast<size_t>(n));
  } catch (const std::exception& e) {
    return ResourceExhaustedError("cannot make room for " + std::to_string(n) +
                                  " worker threads: " + e.what());
  }
  for (int i = 0; i < n; ++i) {
    try {
      workers_.push_back(start ? start([this] { WorkerLoop(); })
                               : std::thread([this] { WorkerLoop(); }));
    } catch (const std::exception& e) {
      return ResourceExhaustedError("cannot start worker thread " + std::to_string(i + 1) + " of " +
                                    std::to_string(n) + ": " + e.what());
    }
  }
  return OkStatus();
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::Submit(std::function<void()> task) {
  if (workers_.empty()) {
    // No worker could be started (see the constructor).
    task();
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    tasks_.push_back(std::move(task));
  }
  cv_.notify_one();
}

void ThreadPool::WorkerLoop() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
      if (tasks_.empty()) return;  // stopping and drained
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task();
  }
}

}  // namespace stasis
