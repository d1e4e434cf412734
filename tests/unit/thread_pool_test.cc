// ThreadPool when threads cannot be started: Create() reports kResourceExhausted and
// leaves nothing running; the constructor degrades to the workers it got, or to running
// tasks on the submitting thread, and never throws.
#include "common/thread_pool.h"

#include <atomic>
#include <system_error>

#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using ::testing::HasSubstr;

// A starter that starts real threads until `allowed` have started, then fails as
// pthread_create does under RLIMIT_NPROC.
struct FailingStarter {
  int allowed = 0;
  std::atomic<int> started{0};
  ThreadPool::ThreadStarter starter() {
    return [this](std::function<void()> body) {
      if (started.load() >= allowed)
        throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again),
                                "thread constructor failed");
      ++started;
      return std::thread(std::move(body));
    };
  }
};

// Runs `n` tasks on `pool` and waits for them.
int RunTasks(ThreadPool& pool, int n) {
  std::atomic<int> done{0};
  std::mutex mu;
  std::condition_variable cv;
  for (int i = 0; i < n; ++i) {
    pool.Submit([&] {
      std::lock_guard<std::mutex> lock(mu);
      ++done;
      cv.notify_all();
    });
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done.load() == n; });
  return done.load();
}

TEST(ThreadPoolTest, CreateStartsEveryWorker) {
  auto pool = ThreadPool::Create(3);
  ASSERT_OK(pool.status());
  EXPECT_EQ((*pool)->size(), 3);
  EXPECT_EQ(RunTasks(**pool, 100), 100);
}

TEST(ThreadPoolTest, CreateFailsWithResourceExhaustedAndJoinsTheStartedWorkers) {
  FailingStarter f;
  f.allowed = 2;
  auto pool = ThreadPool::Create(5, f.starter());
  // Had the two started workers not been joined, destroying them would have terminated.
  EXPECT_THAT(pool.status(),
              StatusIs(StatusCode::kResourceExhausted, HasSubstr("worker thread 3 of 5")));
  EXPECT_EQ(f.started.load(), 2);
}

TEST(ThreadPoolTest, ConstructorKeepsTheWorkersItCouldStart) {
  FailingStarter f;
  f.allowed = 2;
  ThreadPool pool(8, f.starter());
  EXPECT_EQ(pool.size(), 2);
  EXPECT_EQ(RunTasks(pool, 50), 50);
}

TEST(ThreadPoolTest, ConstructorWithNoWorkerRunsTasksOnTheSubmittingThread) {
  FailingStarter f;
  f.allowed = 0;
  ThreadPool pool(4, f.starter());
  EXPECT_EQ(pool.size(), 0);
  std::thread::id ran_on;
  pool.Submit([&] { ran_on = std::this_thread::get_id(); });
  EXPECT_EQ(ran_on, std::this_thread::get_id());
  EXPECT_EQ(RunTasks(pool, 10), 10);
}

}  // namespace
}  // namespace stasis
