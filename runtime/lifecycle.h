// File: runtime/lifecycle.h
//
// The warm/cold lifecycle of one served model, as an explicit state machine
// (docs/runtime.md has the diagram):
//
//   COLD ──request/warmup──► RESTORING ──ok──► WARM ──idle timeout──► UNLOADING ──► COLD
//                                 │                 (on_idle=unload)
//                                 └──error──► FAILED ──request/warmup/retry timer──► RESTORING
//   WARM ──idle timeout (on_idle=exit)──► the exit callback runs (the process ends cleanly)
//
// - A request in COLD (or FAILED) starts the restore and waits for it; requests arriving
//   during RESTORING wait for the same restore: exactly one restore runs however many
//   requests arrive.
// - The idle clock runs from the completion of the last request (or of the restore when
//   no request ran); requests in flight keep the model WARM.
// - A request arriving during UNLOADING waits for the unload to finish, then restores.
// - idle_timeout < 0 means never (the always-on replica).
// - FAILED is not a dead end: a request retries the restore at once, and Tick() retries it
//   by itself after a backoff (retry_backoff, doubling per consecutive failure up to
//   retry_backoff_max), so a replica that a load balancer stopped routing to (its /readyz
//   says 503 while FAILED) recovers without traffic. retry_backoff < 0 turns that off.
// - Time comes from an injected Clock; Tick() checks the idle timeout. Production runs
//   Tick() on a timer thread (StartTimer); tests call it after advancing a ManualClock.
//
// Thread safety: every method may be called from any thread.
#ifndef STASIS_RUNTIME_LIFECYCLE_H_
#define STASIS_RUNTIME_LIFECYCLE_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "runtime/model_host.h"
#include "stasis/status.h"

namespace stasis::runtime {

enum class ModelState { kCold, kRestoring, kWarm, kUnloading, kFailed };
std::string_view ModelStateName(ModelState s);  // "cold", "restoring", ...

enum class OnIdle { kUnload, kExit };

struct LifecycleOptions {
  int64_t idle_timeout_ns = 30'000'000'000;  // < 0: never
  OnIdle on_idle = OnIdle::kUnload;
  int64_t retry_backoff_ns = 1'000'000'000;       // first automatic retry; < 0: none
  int64_t retry_backoff_max_ns = 60'000'000'000;  // cap of the doubling backoff
};

struct LifecycleStatus {
  ModelState state = ModelState::kCold;
  double idle_seconds = 0;   // since the last request completed (0 while busy)
  int in_flight = 0;         // requests inside Infer
  int waiting = 0;           // Infer/Warmup callers waiting for a restore or an unload
  uint64_t cold_starts = 0;  // restores that succeeded
  uint64_t failed_restores = 0;
  uint64_t warm_requests = 0;  // requests served without a restore
  uint64_t cold_requests = 0;  // requests that waited for a restore
  uint64_t unloads = 0;
  uint64_t device_bytes = 0;
  bool has_last_restore = false;
  RestoreReport last_restore;         // phases of the last cold start
  std::string last_error;             // of the last failed restore
  uint64_t consecutive_failures = 0;  // failed restores/unloads since the last success
  double retry_in_seconds = -1;       // FAILED: until Tick() retries (0: due); else -1
};

// Called on every transition (from, to), for logs and metrics. Runs with no lock held.
using TransitionListener = std::function<void(ModelState from, ModelState to)>;

class Lifecycle {
 public:
  // `host` and `clock` must outlive the Lifecycle. `on_exit` runs (once, on the timer
  // thread or in Tick's caller) when on_idle is kExit and the idle timeout passes.
  Lifecycle(ModelHost* host, Clock* clock, LifecycleOptions options,
            std::function<void()> on_exit = nullptr, TransitionListener listener = nullptr);
  ~Lifecycle();  // stops the timer; does not unload

  // Runs one inference with the model warm, restoring it first when needed. `cold` is set
  // when this request waited for a restore. Errors: kUnavailable when the restore failed
  // (the state is then FAILED; the message names the cause's code and says what failed),
  // or the inference's Status.
  StatusOr<std::vector<TensorData>> Infer(const std::vector<TensorData>& inputs, bool* cold);

  // Restores now if not warm (the --warmup flag and POST /v1/warmup). Waits for it.
  // Errors as Infer's for a failed restore.
  Status Warmup();
  // Unloads now if warm, after in-flight requests finish (POST /v1/unload, and shutdown).
  Status UnloadNow();

  // Checks the idle timeout against the clock; unloads (or calls on_exit) when it passed.
  // In FAILED, restores again (on the caller's thread) once the retry backoff has passed.
  void Tick();
  // Runs Tick() every `period_ns` of real time on a thread until the destructor or
  // StopTimer().
  void StartTimer(int64_t period_ns = 100'000'000);
  void StopTimer();

  LifecycleStatus status() const;
  ModelState state() const;

 private:
  // Implementation: one mutex and condition variable guard the state, counters and
  // in-flight count; Load/Unload/Infer on the host run with the mutex released, the state
  // (RESTORING/UNLOADING, in_flight) keeping others out. The helper writes the rest.
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace stasis::runtime

#endif  // STASIS_RUNTIME_LIFECYCLE_H_
