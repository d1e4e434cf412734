#include "runtime/admission.h"

#include <algorithm>
#include <chrono>

namespace stasis::runtime::internal {

Admission::Result Admission::Acquire() {
  std::unique_lock l(mu_);
  if (running_ < max_ && waiters_.empty()) {
    ++running_;
    return Result::kAdmitted;
  }
  if (static_cast<int>(waiters_.size()) >= capacity_) return Result::kQueueFull;
  auto me = waiters_.insert(waiters_.end(), next_ticket_++);
  const int64_t start = clock_->NowNanos();
  for (;;) {
    if (waiters_.begin() == me && running_ < max_) {
      waiters_.erase(me);
      ++running_;
      cv_.notify_all();  // the next in line may fit too
      return Result::kAdmitted;
    }
    const int64_t remaining = timeout_ns_ - (clock_->NowNanos() - start);
    if (remaining <= 0) {
      waiters_.erase(me);
      cv_.notify_all();
      return Result::kTimeout;
    }
    // Polls so that an injected (manual) clock's advances are seen too.
    cv_.wait_for(l, std::chrono::nanoseconds(std::min<int64_t>(remaining, 20'000'000)));
  }
}

void Admission::Release() {
  {
    std::lock_guard l(mu_);
    --running_;
  }
  cv_.notify_all();
}

int Admission::queued() const {
  std::lock_guard l(mu_);
  return static_cast<int>(waiters_.size());
}

int Admission::running() const {
  std::lock_guard l(mu_);
  return running_;
}

}  // namespace stasis::runtime::internal
