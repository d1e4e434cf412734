// File: common/clock.h
//
// Time as a seam. Code that measures durations or waits for timeouts (the runtime's idle
// timer, request latencies) reads an injected Clock, so tests drive time by hand with a
// ManualClock and run in milliseconds instead of sleeping.
//
// Thread safety: every method of both implementations may be called from any thread.
#ifndef STASIS_COMMON_CLOCK_H_
#define STASIS_COMMON_CLOCK_H_

#include <atomic>
#include <cstdint>

namespace stasis {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic nanoseconds since an arbitrary origin.
  virtual int64_t NowNanos() const = 0;
  double NowSeconds() const { return static_cast<double>(NowNanos()) / 1e9; }
};

// CLOCK_MONOTONIC. Process lifetime; never null.
Clock* RealClock();

// Starts at `start_ns` and moves only when told to.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(int64_t start_ns = 1'000'000'000) : now_(start_ns) {}
  int64_t NowNanos() const override { return now_.load(std::memory_order_acquire); }
  void Advance(int64_t ns) { now_.fetch_add(ns, std::memory_order_acq_rel); }
  void AdvanceSeconds(double s) { Advance(static_cast<int64_t>(s * 1e9)); }

 private:
  std::atomic<int64_t> now_;
};

}  // namespace stasis

#endif  // STASIS_COMMON_CLOCK_H_
