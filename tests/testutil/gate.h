// File: tests/testutil/gate.h
//
// A gate for holding a fake's call where a test wants it: Pass() blocks while the gate is
// closed and counts the callers that reached it, so a test can wait until a call is
// provably inside (WaitArrived) before it acts, then release it (Open). No sleeps.
//
// Thread safety: every method may be called from any thread.
#ifndef STASIS_TESTS_TESTUTIL_GATE_H_
#define STASIS_TESTS_TESTUTIL_GATE_H_

#include <chrono>
#include <condition_variable>
#include <mutex>

namespace stasis::testing {

class Gate {
 public:
  // Closes the gate and restarts the count of arrivals, so a caller that passed while it
  // was open is not mistaken for one held now.
  void Close() {
    std::lock_guard l(mu_);
    open_ = false;
    arrived_ = 0;
  }
  void Open() {
    {
      std::lock_guard l(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  void Pass() {
    std::unique_lock l(mu_);
    ++arrived_;
    cv_.notify_all();
    cv_.wait(l, [&] { return open_; });
  }
  // Waits (real time, at most 20 s) until `n` callers reached the gate since it was last
  // closed.
  bool WaitArrived(int n) {
    std::unique_lock l(mu_);
    return cv_.wait_for(l, std::chrono::seconds(20), [&] { return arrived_ >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true;
  int arrived_ = 0;
};

}  // namespace stasis::testing

#endif  // STASIS_TESTS_TESTUTIL_GATE_H_
