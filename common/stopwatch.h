// File: common/stopwatch.h
//
// Elapsed wall time on the monotonic clock, for the phase timings of reports. Code that
// waits for timeouts or must be driven by tests reads the injected Clock (common/clock.h)
// instead.
//
// Thread safety: a value; Seconds() may be called from any thread.
#ifndef STASIS_COMMON_STOPWATCH_H_
#define STASIS_COMMON_STOPWATCH_H_

#include <chrono>

namespace stasis {

class Stopwatch {
 public:
  Stopwatch() : start_(std::chrono::steady_clock::now()) {}
  // Seconds since construction or the last Restart().
  double Seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  void Restart() { start_ = std::chrono::steady_clock::now(); }

 private:
  std::chrono::steady_clock::time_point start_;
};

}  // namespace stasis

#endif  // STASIS_COMMON_STOPWATCH_H_
