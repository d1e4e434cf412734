// File: runtime/admission.h
//
// The admission queue of POST /v1/infer: at most `max` requests hold a slot (run inside the
// model) at once, and up to `capacity` more wait for one, first come first served. A waiter
// gives up after `timeout_ns`, measured on the injected Clock, which it polls (every 20 ms
// at most) so that a ManualClock's advances are seen too. Only the wait is bounded: a slot,
// once held, is kept until Release().
//
// Internal to runtime/: the server owns one (ServerOptions::max_concurrency, queue,
// request_timeout_ns).
//
// Thread safety: every method may be called from any thread.
#ifndef STASIS_RUNTIME_ADMISSION_H_
#define STASIS_RUNTIME_ADMISSION_H_

#include <condition_variable>
#include <cstdint>
#include <list>
#include <mutex>

#include "common/clock.h"

namespace stasis::runtime::internal {

// Waits for one of `max` slots, FIFO, with at most `capacity` waiting.
class Admission {
 public:
  enum class Result { kAdmitted, kQueueFull, kTimeout };

  // `clock` must outlive the Admission.
  Admission(int max, int capacity, int64_t timeout_ns, Clock* clock)
      : max_(max), capacity_(capacity), timeout_ns_(timeout_ns), clock_(clock) {}

  // kAdmitted: the caller holds a slot and must Release() it. kQueueFull: `capacity`
  // callers are waiting already. kTimeout: no slot came within timeout_ns.
  Result Acquire();
  void Release();

  int queued() const;   // callers waiting in Acquire
  int running() const;  // slots held

 private:
  const int max_, capacity_;
  const int64_t timeout_ns_;
  Clock* const clock_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int running_ = 0;
  std::list<uint64_t> waiters_;
  uint64_t next_ticket_ = 0;
};

}  // namespace stasis::runtime::internal

#endif  // STASIS_RUNTIME_ADMISSION_H_
