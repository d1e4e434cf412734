#include "common/clock.h"

#include <time.h>

namespace stasis {
namespace {

class MonotonicClock final : public Clock {
 public:
  int64_t NowNanos() const override {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
  }
};

}  // namespace

Clock* RealClock() {
  static MonotonicClock* clock = new MonotonicClock();  // never destroyed
  return clock;
}

}  // namespace stasis
