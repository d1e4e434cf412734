#include "runtime/lifecycle.h"

#include <malloc.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <utility>

namespace stasis::runtime {

std::string_view ModelStateName(ModelState s) {
  switch (s) {
    case ModelState::kCold:
      return "cold";
    case ModelState::kRestoring:
      return "restoring";
    case ModelState::kWarm:
      return "warm";
    case ModelState::kUnloading:
      return "unloading";
    case ModelState::kFailed:
      return "failed";
  }
  return "unknown";
}

namespace {

// One run of host->Load. Callers that arrive during RESTORING keep a reference to the
// attempt they wait for, so each gets that restore's outcome even when later restores
// (retries after a failure) have run by the time it wakes up.
struct RestoreAttempt {
  bool done = false;
  Status status;
};

// The timer thread's stop flag. Shared with the thread, so a thread that is told to stop
// from inside its own Tick() (an on_exit that destroys the Lifecycle) can still read it.
struct TimerState {
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
};

struct Transition {
  ModelState from, to;
};

}  // namespace

struct Lifecycle::Impl {
  Impl(ModelHost* host, Clock* clock, LifecycleOptions options, std::function<void()> on_exit,
       TransitionListener listener)
      : host(host),
        clock(clock),
        options(options),
        on_exit(std::move(on_exit)),
        listener(std::move(listener)) {}

  // Brings the model WARM, restoring it or waiting for a restore/unload in progress as
  // needed; with `enter`, counts the caller in flight before releasing `l`. `*cold` is set
  // when the caller ran or waited for a restore. REQUIRES: `l` holds `mu`.
  Status BecomeWarm(std::unique_lock<std::mutex>& l, bool enter, bool* cold);
  // Runs host->Load with `mu` released; the state goes WARM or FAILED.
  // REQUIRES: `l` holds `mu`; state COLD or FAILED.
  Status Restore(std::unique_lock<std::mutex>& l);
  // Runs host->Unload with `mu` released; the state goes COLD or FAILED.
  // REQUIRES: `l` holds `mu`; state WARM; nothing in flight.
  Status Unload(std::unique_lock<std::mutex>& l);
  // True when the idle timeout has passed. REQUIRES: `mu` held.
  bool IdleExpired() const;
  // Enters FAILED and schedules the automatic retry. REQUIRES: `mu` held.
  void Fail();
  // True when FAILED and the retry backoff has passed. REQUIRES: `mu` held.
  bool RetryDue() const;
  // Records a transition for the listener. REQUIRES: `mu` held.
  void SetState(ModelState to);
  // Delivers queued transitions to the listener in order, with `mu` released. When
  // another thread is delivering already, it delivers ours too (it loops until the queue
  // is empty), so listener calls never overlap and a listener may call back into the
  // Lifecycle. REQUIRES: `mu` not held.
  void Flush();

  ModelHost* const host;
  Clock* const clock;
  const LifecycleOptions options;
  const std::function<void()> on_exit;
  const TransitionListener listener;

  mutable std::mutex mu;
  std::condition_variable cv;  // state, in_flight or an attempt changed
  ModelState state = ModelState::kCold;
  int in_flight = 0;
  int waiting = 0;
  int64_t last_activity_ns = 0;  // completion of the last restore or request
  std::shared_ptr<RestoreAttempt> attempt;
  bool exit_called = false;
  uint64_t cold_starts = 0, failed_restores = 0, warm_requests = 0, cold_requests = 0, unloads = 0;
  bool has_last_restore = false;
  RestoreReport last_restore;
  std::string last_error;
  uint64_t consecutive_failures = 0;
  int64_t retry_at_ns = 0;          // FAILED: when Tick() restores again
  std::vector<Transition> pending;  // transitions not yet delivered
  bool delivering = false;          // a thread is inside Flush's delivery loop

  std::mutex timer_mu;  // guards `timer` and `timer_state` (Start/StopTimer)
  std::thread timer;
  std::shared_ptr<TimerState> timer_state;
};

// A failed restore is the server's trouble, not the caller's, whatever its cause (a
// corrupt image is kDataLoss, a missing one kNotFound): kUnavailable, so that callers
// retry (HTTP 503), with the cause's code in the message.
static Status RestoreFailed(const Status& s) {
  return Status(StatusCode::kUnavailable, "the model could not be restored (" +
                                              std::string(StatusCodeName(s.code())) +
                                              "): " + std::string(s.message()));
}

Status Lifecycle::Impl::BecomeWarm(std::unique_lock<std::mutex>& l, bool enter, bool* cold) {
  for (;;) {
    switch (state) {
      case ModelState::kWarm:
        if (enter) ++in_flight;
        return OkStatus();
      case ModelState::kRestoring: {
        *cold = true;
        std::shared_ptr<RestoreAttempt> a = attempt;
        ++waiting;
        cv.wait(l, [&] { return a->done; });
        --waiting;
        if (!a->status.ok()) return RestoreFailed(a->status);
        break;  // normally WARM now; anything else (an unload since) goes round again
      }
      case ModelState::kUnloading:
        ++waiting;
        cv.wait(l, [&] { return state != ModelState::kUnloading; });
        --waiting;
        break;
      case ModelState::kCold:
      case ModelState::kFailed: {
        *cold = true;
        Status s = Restore(l);
        if (!s.ok()) return RestoreFailed(s);
        break;
      }
    }
  }
}

Status Lifecycle::Impl::Restore(std::unique_lock<std::mutex>& l) {
  auto a = std::make_shared<RestoreAttempt>();
  attempt = a;
  SetState(ModelState::kRestoring);
  l.unlock();
  Flush();
  RestoreReport report;
  Status s = host->Load(&report);
  l.lock();
  a->done = true;
  a->status = s;
  if (s.ok()) {
    ++cold_starts;
    has_last_restore = true;
    last_restore = std::move(report);
    last_activity_ns = std::max(last_activity_ns, clock->NowNanos());
    consecutive_failures = 0;
    SetState(ModelState::kWarm);
  } else {
    ++failed_restores;
    last_error = s.ToString();
    spdlog::warn("restore of {} failed: {}", host->Describe(), last_error);
    Fail();
  }
  cv.notify_all();
  return s;
}

Status Lifecycle::Impl::Unload(std::unique_lock<std::mutex>& l) {
  SetState(ModelState::kUnloading);
  l.unlock();
  Flush();
  Status s = host->Unload();
  l.lock();
  if (s.ok()) {
    ++unloads;
    // Give the heap the model and its last requests used back to the system: a cold
    // server should be small (without this, RSS stays at its peak).
    ::malloc_trim(0);
    SetState(ModelState::kCold);
  } else {
    last_error = s.WithContext("unload").ToString();
    spdlog::error("unloading {} failed: {}", host->Describe(), last_error);
    Fail();
  }
  cv.notify_all();
  return s;
}

bool Lifecycle::Impl::IdleExpired() const {
  if (state != ModelState::kWarm || in_flight != 0 || options.idle_timeout_ns < 0) return false;
  return clock->NowNanos() - last_activity_ns >= options.idle_timeout_ns;
}

void Lifecycle::Impl::Fail() {
  ++consecutive_failures;
  if (options.retry_backoff_ns >= 0) {
    // backoff * 2^(failures - 1), capped; the shift is bounded so it cannot overflow.
    const int doublings = static_cast<int>(std::min<uint64_t>(consecutive_failures - 1, 40));
    int64_t backoff = options.retry_backoff_ns;
    for (int i = 0; i < doublings && backoff < options.retry_backoff_max_ns; ++i) backoff *= 2;
    backoff = std::min(backoff, std::max(options.retry_backoff_max_ns, options.retry_backoff_ns));
    retry_at_ns = clock->NowNanos() + backoff;
    spdlog::info("{}: retrying the restore in {:.3f} s unless a request comes first",
                 host->Describe(), static_cast<double>(backoff) / 1e9);
  }
  SetState(ModelState::kFailed);
}

bool Lifecycle::Impl::RetryDue() const {
  return state == ModelState::kFailed && options.retry_backoff_ns >= 0 &&
         clock->NowNanos() >= retry_at_ns;
}

void Lifecycle::Impl::SetState(ModelState to) {
  if (to == state) return;
  if (listener) pending.push_back({state, to});
  state = to;
}

void Lifecycle::Impl::Flush() {
  std::unique_lock l(mu);
  if (delivering) return;
  delivering = true;
  while (!pending.empty()) {
    std::vector<Transition> batch;
    batch.swap(pending);
    l.unlock();
    for (const Transition& t : batch) listener(t.from, t.to);
    l.lock();
  }
  delivering = false;
}

Lifecycle::Lifecycle(ModelHost* host, Clock* clock, LifecycleOptions options,
                     std::function<void()> on_exit, TransitionListener listener)
    : impl_(std::make_unique<Impl>(host, clock, options, std::move(on_exit), std::move(listener))) {
}

Lifecycle::~Lifecycle() { StopTimer(); }

StatusOr<std::vector<TensorData>> Lifecycle::Infer(const std::vector<TensorData>& inputs,
                                                   bool* cold) {
  Impl& m = *impl_;
  bool was_cold = false;
  Status s;
  {
    std::unique_lock l(m.mu);
    s = m.BecomeWarm(l, /*enter=*/true, &was_cold);
  }
  m.Flush();
  if (cold != nullptr) *cold = was_cold;
  if (!s.ok()) return s;

  // Leaves the model however the host's Infer ends: an exception escaping it would otherwise
  // keep in_flight up, and the model could never be unloaded again.
  struct Leave {
    Impl& m;
    bool was_cold;
    ~Leave() {
      {
        std::lock_guard l(m.mu);
        --m.in_flight;
        m.last_activity_ns = std::max(m.last_activity_ns, m.clock->NowNanos());
        ++(was_cold ? m.cold_requests : m.warm_requests);
      }
      m.cv.notify_all();  // UnloadNow waits for in_flight == 0
    }
  } leave{m, was_cold};
  return m.host->Infer(inputs);
}

Status Lifecycle::Warmup() {
  Impl& m = *impl_;
  bool cold = false;
  Status s;
  {
    std::unique_lock l(m.mu);
    s = m.BecomeWarm(l, /*enter=*/false, &cold);
  }
  m.Flush();
  return s;
}

Status Lifecycle::UnloadNow() {
  Impl& m = *impl_;
  Status s;
  {
    std::unique_lock l(m.mu);
    m.cv.wait(l, [&] {
      return m.state != ModelState::kRestoring && m.state != ModelState::kUnloading &&
             m.in_flight == 0;
    });
    if (m.state == ModelState::kWarm) s = m.Unload(l);
  }
  m.Flush();
  return s;
}

void Lifecycle::Tick() {
  Impl& m = *impl_;
  std::unique_lock l(m.mu);
  if (m.RetryDue()) {
    spdlog::info("{}: retrying the failed restore (failure {} in a row)", m.host->Describe(),
                 m.consecutive_failures);
    m.Restore(l).IgnoreError();  // logged, recorded, and rescheduled by Fail() on error
    l.unlock();
    m.Flush();
    return;
  }
  if (!m.IdleExpired()) return;
  if (m.options.on_idle == OnIdle::kExit) {
    if (m.exit_called) return;
    m.exit_called = true;
    spdlog::info("{} idle for {:.3f} s: exiting", m.host->Describe(),
                 static_cast<double>(m.options.idle_timeout_ns) / 1e9);
    // A copy: on_exit may end this object's life, so nothing below touches it.
    std::function<void()> on_exit = m.on_exit;
    l.unlock();
    if (on_exit) on_exit();
    return;
  }
  spdlog::info("{} idle for {:.3f} s: unloading", m.host->Describe(),
               static_cast<double>(m.options.idle_timeout_ns) / 1e9);
  m.Unload(l).IgnoreError();  // logged, and recorded as last_error
  l.unlock();
  m.Flush();
}

void Lifecycle::StartTimer(int64_t period_ns) {
  StopTimer();
  Impl& m = *impl_;
  std::lock_guard g(m.timer_mu);
  if (m.timer.joinable()) return;  // started concurrently by another caller
  auto ts = std::make_shared<TimerState>();
  m.timer_state = ts;
  const auto period = std::chrono::nanoseconds(std::max<int64_t>(period_ns, 1'000'000));
  m.timer = std::thread([this, ts, period] {
    std::unique_lock l(ts->mu);
    while (!ts->stop) {
      if (ts->cv.wait_for(l, period, [&] { return ts->stop; })) break;
      l.unlock();
      Tick();
      l.lock();
    }
  });
}

void Lifecycle::StopTimer() {
  Impl& m = *impl_;
  std::thread t;
  std::shared_ptr<TimerState> ts;
  {
    std::lock_guard g(m.timer_mu);
    t = std::move(m.timer);
    ts = std::move(m.timer_state);
  }
  if (!ts) return;
  {
    std::lock_guard g(ts->mu);
    ts->stop = true;
  }
  ts->cv.notify_all();
  if (!t.joinable()) return;
  // Stopped from inside its own Tick (on_exit): the thread sees `stop` when Tick returns
  // and ends without touching the Lifecycle.
  if (t.get_id() == std::this_thread::get_id()) {
    t.detach();
  } else {
    t.join();
  }
}

LifecycleStatus Lifecycle::status() const {
  const Impl& m = *impl_;
  LifecycleStatus st;
  {
    std::lock_guard l(m.mu);
    st.state = m.state;
    st.in_flight = m.in_flight;
    st.waiting = m.waiting;
    if (m.state == ModelState::kWarm && m.in_flight == 0) {
      st.idle_seconds =
          static_cast<double>(std::max<int64_t>(m.clock->NowNanos() - m.last_activity_ns, 0)) / 1e9;
    }
    st.cold_starts = m.cold_starts;
    st.failed_restores = m.failed_restores;
    st.warm_requests = m.warm_requests;
    st.cold_requests = m.cold_requests;
    st.unloads = m.unloads;
    st.has_last_restore = m.has_last_restore;
    st.last_restore = m.last_restore;
    st.last_error = m.last_error;
    st.consecutive_failures = m.consecutive_failures;
    if (m.state == ModelState::kFailed && m.options.retry_backoff_ns >= 0) {
      st.retry_in_seconds =
          static_cast<double>(std::max<int64_t>(m.retry_at_ns - m.clock->NowNanos(), 0)) / 1e9;
    }
  }
  st.device_bytes = m.host->DeviceBytes();
  return st;
}

ModelState Lifecycle::state() const {
  std::lock_guard l(impl_->mu);
  return impl_->state;
}

}  // namespace stasis::runtime
