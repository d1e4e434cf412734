// The warm/cold lifecycle state machine over a fake ModelHost and a ManualClock: every
// transition, exactly one restore for concurrent cold requests, requests racing an unload,
// restore failures reaching every waiter, the idle timer and the transition listener.
#include "runtime/lifecycle.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/testutil/gate.h"
#include "tests/testutil/test_util.h"

namespace stasis::runtime {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

constexpr int64_t kSecond = 1'000'000'000;

using testing::Gate;

// Counts calls, echoes inputs, can hold Load/Unload/Infer at a gate and fail the k-th
// Load. Records any overlap of Load/Unload with each other or with Infer, and any call
// made in the wrong state, as a violation.
class FakeModelHost final : public ModelHost {
 public:
  static constexpr uint64_t kBytes = 4096;

  Status Load(RestoreReport* report) override {
    const int n = ++loads;
    EnterExclusive();
    if (loaded_) ++violations;
    load_gate.Pass();
    Status s;
    if (n == fail_load_number.load() || n <= fail_loads_through.load()) {
      s = UnavailableError("load " + std::to_string(n) + " failed");
    } else {
      report->image = "fake.stasis";
      report->raw_bytes = 1000 * static_cast<uint64_t>(n);
      loaded_ = true;
    }
    exclusive_.fetch_sub(1);
    return s;
  }

  Status Unload() override {
    ++unloads;
    EnterExclusive();
    if (!loaded_) ++violations;
    unload_gate.Pass();
    loaded_ = false;
    exclusive_.fetch_sub(1);
    return OkStatus();
  }

  StatusOr<std::vector<TensorData>> Infer(const std::vector<TensorData>& inputs) override {
    ++infers;
    inferring_.fetch_add(1);
    if (exclusive_.load() != 0 || !loaded_) ++violations;
    infer_gate.Pass();
    inferring_.fetch_sub(1);
    if (!inputs.empty() && inputs[0].name == "fail") {
      return StatusOr<std::vector<TensorData>>(InvalidArgumentError("bad input"));
    }
    if (!inputs.empty() && inputs[0].name == "throw") throw std::runtime_error("host threw");
    return inputs;
  }

  uint64_t DeviceBytes() const override { return loaded_ ? kBytes : 0; }
  std::string Describe() const override { return "fake model"; }

  Gate load_gate, unload_gate, infer_gate;
  std::atomic<int> fail_load_number{0};    // 1-based; 0: every Load succeeds
  std::atomic<int> fail_loads_through{0};  // Loads 1..n fail
  std::atomic<int> loads{0}, unloads{0}, infers{0}, violations{0};

 private:
  void EnterExclusive() {
    if (exclusive_.fetch_add(1) != 0 || inferring_.load() != 0) ++violations;
  }

  std::atomic<int> exclusive_{0};  // inside Load or Unload
  std::atomic<int> inferring_{0};
  std::atomic<bool> loaded_{false};
};

std::vector<TensorData> Inputs(const std::string& tag) {
  TensorData t;
  t.name = "input." + tag;
  t.dtype = DType::kU8;
  t.shape = {static_cast<int64_t>(tag.size())};
  t.bytes = tag;
  return {t};
}

void ExpectEcho(const StatusOr<std::vector<TensorData>>& out, const std::vector<TensorData>& in) {
  ASSERT_OK(out);
  ASSERT_EQ(out->size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ((*out)[i].name, in[i].name);
    EXPECT_EQ((*out)[i].dtype, in[i].dtype);
    EXPECT_EQ((*out)[i].shape, in[i].shape);
    EXPECT_EQ((*out)[i].bytes, in[i].bytes);
  }
}

// Polls `pred` until it holds or a generous deadline passes.
template <typename Pred>
bool Eventually(Pred pred, std::chrono::milliseconds deadline = 10s) {
  const auto end = std::chrono::steady_clock::now() + deadline;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

LifecycleOptions Options(int64_t idle_timeout_ns, OnIdle on_idle = OnIdle::kUnload) {
  LifecycleOptions o;
  o.idle_timeout_ns = idle_timeout_ns;
  o.on_idle = on_idle;
  return o;
}

class LifecycleTest : public ::testing::Test {
 protected:
  void TearDown() override { EXPECT_EQ(host_.violations.load(), 0); }

  FakeModelHost host_;
  ManualClock clock_;
};

TEST(ModelStateNameTest, Names) {
  EXPECT_EQ(ModelStateName(ModelState::kCold), "cold");
  EXPECT_EQ(ModelStateName(ModelState::kRestoring), "restoring");
  EXPECT_EQ(ModelStateName(ModelState::kWarm), "warm");
  EXPECT_EQ(ModelStateName(ModelState::kUnloading), "unloading");
  EXPECT_EQ(ModelStateName(ModelState::kFailed), "failed");
}

TEST_F(LifecycleTest, ColdWarmIdleUnloadColdAgain) {
  Lifecycle lc(&host_, &clock_, Options(10 * kSecond));
  EXPECT_EQ(lc.state(), ModelState::kCold);
  EXPECT_EQ(lc.status().device_bytes, 0u);
  EXPECT_FALSE(lc.status().has_last_restore);

  bool cold = false;
  ExpectEcho(lc.Infer(Inputs("a"), &cold), Inputs("a"));
  EXPECT_TRUE(cold);
  LifecycleStatus st = lc.status();
  EXPECT_EQ(st.state, ModelState::kWarm);
  EXPECT_EQ(st.cold_starts, 1u);
  EXPECT_EQ(st.cold_requests, 1u);
  EXPECT_EQ(st.warm_requests, 0u);
  EXPECT_EQ(st.device_bytes, FakeModelHost::kBytes);
  EXPECT_TRUE(st.has_last_restore);
  EXPECT_EQ(st.last_restore.raw_bytes, 1000u);
  EXPECT_EQ(st.in_flight, 0);

  ExpectEcho(lc.Infer(Inputs("bb"), &cold), Inputs("bb"));
  EXPECT_FALSE(cold);
  EXPECT_EQ(lc.status().warm_requests, 1u);

  // Just before the timeout: nothing happens.
  clock_.Advance(10 * kSecond - 1);
  lc.Tick();
  st = lc.status();
  EXPECT_EQ(st.state, ModelState::kWarm);
  EXPECT_NEAR(st.idle_seconds, 10.0, 1e-6);
  EXPECT_EQ(host_.unloads.load(), 0);

  clock_.Advance(1);
  lc.Tick();
  st = lc.status();
  EXPECT_EQ(st.state, ModelState::kCold);
  EXPECT_EQ(st.unloads, 1u);
  EXPECT_EQ(st.idle_seconds, 0);
  EXPECT_EQ(st.device_bytes, 0u);
  EXPECT_EQ(host_.unloads.load(), 1);
  lc.Tick();  // cold: nothing to do
  EXPECT_EQ(host_.unloads.load(), 1);

  ExpectEcho(lc.Infer(Inputs("ccc"), &cold), Inputs("ccc"));
  EXPECT_TRUE(cold);
  st = lc.status();
  EXPECT_EQ(st.state, ModelState::kWarm);
  EXPECT_EQ(st.cold_starts, 2u);
  EXPECT_EQ(st.cold_requests, 2u);
  EXPECT_EQ(st.warm_requests, 1u);
  EXPECT_EQ(st.unloads, 1u);
  EXPECT_EQ(st.last_restore.raw_bytes, 2000u);
  EXPECT_EQ(host_.loads.load(), 2);
  EXPECT_EQ(host_.infers.load(), 3);
}

TEST_F(LifecycleTest, ConcurrentColdRequestsShareOneRestore) {
  constexpr int kThreads = 16;
  Lifecycle lc(&host_, &clock_, Options(10 * kSecond));
  host_.load_gate.Close();

  std::vector<StatusOr<std::vector<TensorData>>> results(kThreads, InternalError("not run"));
  std::unique_ptr<bool[]> cold(new bool[kThreads]());
  std::vector<std::thread> threads;
  auto request = [&](int i) { results[i] = lc.Infer(Inputs("t" + std::to_string(i)), &cold[i]); };
  threads.emplace_back(request, 0);
  ASSERT_TRUE(host_.load_gate.WaitArrived(1));
  EXPECT_EQ(lc.state(), ModelState::kRestoring);
  for (int i = 1; i < kThreads; ++i) threads.emplace_back(request, i);
  ASSERT_TRUE(Eventually([&] { return lc.status().waiting == kThreads - 1; }));
  EXPECT_EQ(lc.state(), ModelState::kRestoring);
  host_.load_gate.Open();
  for (auto& t : threads) t.join();

  for (int i = 0; i < kThreads; ++i) {
    ExpectEcho(results[i], Inputs("t" + std::to_string(i)));
    EXPECT_TRUE(cold[i]) << i;
  }
  const LifecycleStatus st = lc.status();
  EXPECT_EQ(host_.loads.load(), 1);
  EXPECT_EQ(st.cold_starts, 1u);
  EXPECT_EQ(st.cold_requests, static_cast<uint64_t>(kThreads));
  EXPECT_EQ(st.warm_requests, 0u);
  EXPECT_EQ(st.waiting, 0);
  EXPECT_EQ(st.in_flight, 0);
  EXPECT_EQ(st.state, ModelState::kWarm);
}

TEST_F(LifecycleTest, RequestDuringUnloadWaitsThenRestores) {
  Lifecycle lc(&host_, &clock_, Options(10 * kSecond));
  ASSERT_OK(lc.Warmup());
  host_.unload_gate.Close();
  clock_.Advance(10 * kSecond);
  std::thread ticker([&] { lc.Tick(); });
  ASSERT_TRUE(host_.unload_gate.WaitArrived(1));
  EXPECT_EQ(lc.state(), ModelState::kUnloading);

  StatusOr<std::vector<TensorData>> result = InternalError("not run");
  bool cold = false;
  std::thread request([&] { result = lc.Infer(Inputs("late"), &cold); });
  ASSERT_TRUE(Eventually([&] { return lc.status().waiting == 1; }));
  EXPECT_EQ(host_.loads.load(), 1);  // it waits for the unload, no restore yet
  EXPECT_EQ(host_.infers.load(), 0);
  host_.unload_gate.Open();
  ticker.join();
  request.join();

  ExpectEcho(result, Inputs("late"));
  EXPECT_TRUE(cold);
  const LifecycleStatus st = lc.status();
  EXPECT_EQ(st.state, ModelState::kWarm);
  EXPECT_EQ(st.unloads, 1u);
  EXPECT_EQ(st.cold_starts, 2u);
  EXPECT_EQ(st.cold_requests, 1u);
  EXPECT_EQ(host_.loads.load(), 2);
  EXPECT_EQ(host_.unloads.load(), 1);
}

// A host whose Infer throws must not leave the request counted in flight: the idle
// timeout and UnloadNow wait for in_flight == 0.
TEST_F(LifecycleTest, AThrowingInferLeavesNothingInFlight) {
  Lifecycle lc(&host_, &clock_, Options(10 * kSecond));
  std::vector<TensorData> in = Inputs("x");
  in[0].name = "throw";
  EXPECT_THROW((void)lc.Infer(in, nullptr), std::runtime_error);
  EXPECT_EQ(lc.status().in_flight, 0);
  clock_.Advance(10 * kSecond);
  lc.Tick();
  EXPECT_EQ(lc.state(), ModelState::kCold) << "the idle unload never came";
  ASSERT_OK(lc.Infer(Inputs("y"), nullptr));
  EXPECT_OK(lc.UnloadNow());  // would wait forever on a leaked in_flight
  EXPECT_EQ(host_.unloads.load(), 2);
}

TEST_F(LifecycleTest, NegativeIdleTimeoutNeverUnloads) {
  Lifecycle lc(&host_, &clock_, Options(-1));
  ASSERT_OK(lc.Infer(Inputs("x"), nullptr));
  for (int i = 0; i < 5; ++i) {
    clock_.Advance(1'000'000 * kSecond);
    lc.Tick();
    EXPECT_EQ(lc.state(), ModelState::kWarm);
  }
  EXPECT_NEAR(lc.status().idle_seconds, 5e6, 1e-3);
  EXPECT_EQ(host_.unloads.load(), 0);
}

TEST_F(LifecycleTest, OnIdleExitCallsOnExitOnceAfterTheTimeout) {
  std::atomic<int> exits{0};
  Lifecycle lc(&host_, &clock_, Options(10 * kSecond, OnIdle::kExit), [&] { ++exits; });
  lc.Tick();  // cold: no exit
  ASSERT_OK(lc.Infer(Inputs("x"), nullptr));
  clock_.Advance(9 * kSecond);
  lc.Tick();
  EXPECT_EQ(exits.load(), 0);
  clock_.Advance(1 * kSecond);
  lc.Tick();
  EXPECT_EQ(exits.load(), 1);
  clock_.Advance(100 * kSecond);
  lc.Tick();
  lc.Tick();
  EXPECT_EQ(exits.load(), 1);
  EXPECT_EQ(lc.state(), ModelState::kWarm);  // exiting is the process's business
  EXPECT_EQ(host_.unloads.load(), 0);
}

TEST_F(LifecycleTest, LoadFailureReachesEveryWaiterThenTheNextRequestRetries) {
  constexpr int kThreads = 4;
  Lifecycle lc(&host_, &clock_, Options(10 * kSecond));
  host_.fail_load_number = 1;
  host_.load_gate.Close();

  std::vector<StatusOr<std::vector<TensorData>>> results(kThreads, InternalError("not run"));
  std::unique_ptr<bool[]> cold(new bool[kThreads]());
  std::vector<std::thread> threads;
  auto request = [&](int i) { results[i] = lc.Infer(Inputs("f"), &cold[i]); };
  threads.emplace_back(request, 0);
  ASSERT_TRUE(host_.load_gate.WaitArrived(1));
  for (int i = 1; i < kThreads; ++i) threads.emplace_back(request, i);
  ASSERT_TRUE(Eventually([&] { return lc.status().waiting == kThreads - 1; }));
  host_.load_gate.Open();
  for (auto& t : threads) t.join();

  for (int i = 0; i < kThreads; ++i) {
    EXPECT_THAT(results[i], StatusIs(StatusCode::kUnavailable, HasSubstr("load 1 failed"))) << i;
    EXPECT_TRUE(cold[i]) << i;
  }
  LifecycleStatus st = lc.status();
  EXPECT_EQ(st.state, ModelState::kFailed);
  EXPECT_EQ(st.failed_restores, 1u);
  EXPECT_EQ(st.cold_starts, 0u);
  EXPECT_EQ(st.cold_requests, 0u);
  EXPECT_THAT(st.last_error, HasSubstr("load 1 failed"));
  EXPECT_FALSE(st.has_last_restore);
  EXPECT_EQ(host_.loads.load(), 1);
  EXPECT_EQ(host_.infers.load(), 0);

  // Failed is not sticky: a new request restores again.
  bool retry_cold = false;
  ExpectEcho(lc.Infer(Inputs("again"), &retry_cold), Inputs("again"));
  EXPECT_TRUE(retry_cold);
  st = lc.status();
  EXPECT_EQ(st.state, ModelState::kWarm);
  EXPECT_EQ(st.cold_starts, 1u);
  EXPECT_EQ(st.failed_restores, 1u);
  EXPECT_EQ(st.cold_requests, 1u);
  EXPECT_EQ(host_.loads.load(), 2);
}

TEST_F(LifecycleTest, FailedRetriesByItselfWithADoublingCappedBackoff) {
  LifecycleOptions o = Options(100 * kSecond);
  o.retry_backoff_ns = 1 * kSecond;
  o.retry_backoff_max_ns = 4 * kSecond;
  std::vector<std::pair<ModelState, ModelState>> seen;
  Lifecycle lc(&host_, &clock_, o, nullptr,
               [&](ModelState from, ModelState to) { seen.emplace_back(from, to); });
  host_.fail_loads_through = 4;

  EXPECT_THAT(lc.Warmup(), StatusIs(StatusCode::kUnavailable, HasSubstr("load 1 failed")));
  LifecycleStatus st = lc.status();
  EXPECT_EQ(st.state, ModelState::kFailed);
  EXPECT_EQ(st.consecutive_failures, 1u);
  EXPECT_DOUBLE_EQ(st.retry_in_seconds, 1.0);

  // Not before the backoff: Tick leaves FAILED alone.
  clock_.Advance(kSecond / 2);
  lc.Tick();
  EXPECT_EQ(host_.loads.load(), 1);
  EXPECT_DOUBLE_EQ(lc.status().retry_in_seconds, 0.5);

  // Each failed retry doubles the wait: 1 s, 2 s, then 4 s (the cap), and 4 s again.
  const int64_t waits[] = {kSecond / 2, 2 * kSecond, 4 * kSecond};
  const double next[] = {2.0, 4.0, 4.0};
  for (int i = 0; i < 3; ++i) {
    clock_.Advance(waits[i] - 1);
    lc.Tick();
    EXPECT_EQ(host_.loads.load(), 1 + i) << i;  // 1 ns early: nothing
    clock_.Advance(1);
    lc.Tick();
    EXPECT_EQ(host_.loads.load(), 2 + i) << i;
    st = lc.status();
    EXPECT_EQ(st.state, ModelState::kFailed) << i;
    EXPECT_EQ(st.consecutive_failures, 2u + i) << i;
    EXPECT_DOUBLE_EQ(st.retry_in_seconds, next[i]) << i;
    EXPECT_THAT(st.last_error, HasSubstr("load " + std::to_string(2 + i) + " failed"));
  }

  // The fifth attempt, with no request anywhere, brings the model back.
  clock_.Advance(4 * kSecond);
  lc.Tick();
  st = lc.status();
  EXPECT_EQ(st.state, ModelState::kWarm);
  EXPECT_EQ(st.consecutive_failures, 0u);
  EXPECT_EQ(st.retry_in_seconds, -1);
  EXPECT_EQ(st.cold_starts, 1u);
  EXPECT_EQ(st.failed_restores, 4u);
  EXPECT_EQ(host_.loads.load(), 5);
  ASSERT_EQ(seen.size(), 10u);
  for (size_t i = 0; i + 2 < seen.size(); i += 2) {
    EXPECT_EQ(seen[i].second, ModelState::kRestoring) << i;
    EXPECT_EQ(seen[i + 1].second, ModelState::kFailed) << i;
  }
  EXPECT_EQ(seen.back(), std::make_pair(ModelState::kRestoring, ModelState::kWarm));

  // A later failure starts the backoff from the beginning again.
  ASSERT_OK(lc.UnloadNow());
  host_.fail_load_number = 6;
  EXPECT_FALSE(lc.Warmup().ok());
  EXPECT_EQ(lc.status().consecutive_failures, 1u);
  EXPECT_DOUBLE_EQ(lc.status().retry_in_seconds, 1.0);
}

TEST_F(LifecycleTest, NegativeBackoffLeavesTheRetryToRequests) {
  LifecycleOptions o = Options(100 * kSecond);
  o.retry_backoff_ns = -1;
  Lifecycle lc(&host_, &clock_, o);
  host_.fail_load_number = 1;
  EXPECT_FALSE(lc.Warmup().ok());
  EXPECT_EQ(lc.status().retry_in_seconds, -1);
  clock_.Advance(3600 * kSecond);
  lc.Tick();
  EXPECT_EQ(lc.state(), ModelState::kFailed);
  EXPECT_EQ(host_.loads.load(), 1);
  bool cold = false;
  ExpectEcho(lc.Infer(Inputs("r"), &cold), Inputs("r"));
  EXPECT_TRUE(cold);
  EXPECT_EQ(host_.loads.load(), 2);
}

TEST_F(LifecycleTest, InFlightRequestsKeepTheModelWarm) {
  Lifecycle lc(&host_, &clock_, Options(10 * kSecond));
  ASSERT_OK(lc.Warmup());
  host_.infer_gate.Close();
  StatusOr<std::vector<TensorData>> result = InternalError("not run");
  std::thread request([&] { result = lc.Infer(Inputs("slow"), nullptr); });
  ASSERT_TRUE(host_.infer_gate.WaitArrived(1));

  clock_.Advance(20 * kSecond);
  lc.Tick();
  LifecycleStatus st = lc.status();
  EXPECT_EQ(st.state, ModelState::kWarm);
  EXPECT_EQ(st.in_flight, 1);
  EXPECT_EQ(st.idle_seconds, 0);  // busy
  EXPECT_EQ(host_.unloads.load(), 0);

  host_.infer_gate.Open();
  request.join();
  ExpectEcho(result, Inputs("slow"));
  EXPECT_EQ(lc.status().warm_requests, 1u);

  // The idle clock starts at the request's completion, not at the restore.
  lc.Tick();
  EXPECT_EQ(lc.state(), ModelState::kWarm);
  clock_.Advance(10 * kSecond - 1);
  lc.Tick();
  EXPECT_EQ(lc.state(), ModelState::kWarm);
  clock_.Advance(1);
  lc.Tick();
  EXPECT_EQ(lc.state(), ModelState::kCold);
  EXPECT_EQ(host_.unloads.load(), 1);
}

TEST_F(LifecycleTest, InferErrorLeavesTheModelWarm) {
  Lifecycle lc(&host_, &clock_, Options(10 * kSecond));
  ASSERT_OK(lc.Warmup());
  std::vector<TensorData> bad = Inputs("x");
  bad[0].name = "fail";  // the fake host rejects it
  bool cold = true;
  EXPECT_THAT(lc.Infer(bad, &cold), StatusIs(StatusCode::kInvalidArgument, "bad input"));
  EXPECT_FALSE(cold);
  ExpectEcho(lc.Infer(Inputs("ok"), &cold), Inputs("ok"));
  const LifecycleStatus st = lc.status();
  EXPECT_EQ(st.state, ModelState::kWarm);
  EXPECT_EQ(st.in_flight, 0);
  EXPECT_EQ(st.failed_restores, 0u);
  EXPECT_EQ(st.cold_requests + st.warm_requests, 2u);
}

TEST_F(LifecycleTest, UnloadNowWarmupAndTheListenerSeeEveryTransition) {
  std::mutex mu;
  std::vector<std::pair<ModelState, ModelState>> seen;
  Lifecycle* self = nullptr;
  auto listener = [&](ModelState from, ModelState to) {
    (void)self->state();  // no lock is held: calling back does not deadlock
    std::lock_guard l(mu);
    seen.emplace_back(from, to);
  };
  Lifecycle lc(&host_, &clock_, Options(-1), nullptr, listener);
  self = &lc;

  ASSERT_OK(lc.UnloadNow());  // cold: nothing to do
  ASSERT_OK(lc.Warmup());
  ASSERT_OK(lc.Warmup());  // warm: nothing to do
  EXPECT_EQ(host_.loads.load(), 1);
  ASSERT_OK(lc.UnloadNow());
  EXPECT_EQ(lc.state(), ModelState::kCold);
  EXPECT_EQ(host_.unloads.load(), 1);

  host_.fail_load_number = 2;
  EXPECT_THAT(lc.Warmup(), StatusIs(StatusCode::kUnavailable, HasSubstr("load 2 failed")));
  EXPECT_EQ(lc.state(), ModelState::kFailed);
  ASSERT_OK(lc.UnloadNow());  // failed: nothing to unload
  bool cold = false;
  ExpectEcho(lc.Infer(Inputs("y"), &cold), Inputs("y"));
  EXPECT_TRUE(cold);

  // UnloadNow waits for the request in flight.
  host_.infer_gate.Close();
  std::thread request([&] { ASSERT_OK(lc.Infer(Inputs("z"), nullptr)); });
  ASSERT_TRUE(host_.infer_gate.WaitArrived(1));
  Status unload_status = InternalError("not run");
  std::thread unloader([&] { unload_status = lc.UnloadNow(); });
  std::this_thread::sleep_for(20ms);  // a chance to misbehave
  EXPECT_EQ(host_.unloads.load(), 1);
  EXPECT_EQ(lc.state(), ModelState::kWarm);
  host_.infer_gate.Open();
  request.join();
  unloader.join();
  EXPECT_OK(unload_status);
  EXPECT_EQ(lc.state(), ModelState::kCold);

  const LifecycleStatus st = lc.status();
  EXPECT_EQ(st.unloads, 2u);
  EXPECT_EQ(st.cold_starts, 2u);
  EXPECT_EQ(st.failed_restores, 1u);
  EXPECT_EQ(st.cold_requests + st.warm_requests, 2u);  // warmups are not requests

  using S = ModelState;
  std::lock_guard l(mu);
  EXPECT_THAT(seen,
              ElementsAre(std::pair(S::kCold, S::kRestoring), std::pair(S::kRestoring, S::kWarm),
                          std::pair(S::kWarm, S::kUnloading), std::pair(S::kUnloading, S::kCold),
                          std::pair(S::kCold, S::kRestoring), std::pair(S::kRestoring, S::kFailed),
                          std::pair(S::kFailed, S::kRestoring), std::pair(S::kRestoring, S::kWarm),
                          std::pair(S::kWarm, S::kUnloading), std::pair(S::kUnloading, S::kCold)));
}

TEST_F(LifecycleTest, ListenerOrderHoldsUnderConcurrency) {
  std::mutex mu;
  std::vector<std::pair<ModelState, ModelState>> seen;
  Lifecycle lc(&host_, RealClock(), Options(-1), nullptr, [&](ModelState from, ModelState to) {
    std::lock_guard l(mu);
    seen.emplace_back(from, to);
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        if (i % 5 == 0) {
          EXPECT_OK(lc.UnloadNow());
        } else {
          EXPECT_OK(lc.Infer(Inputs("c"), nullptr));
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  std::lock_guard l(mu);
  // A chain: each transition starts where the previous one ended.
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.front().first, ModelState::kCold);
  for (size_t i = 1; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i].first, seen[i - 1].second) << i;
  }
  EXPECT_EQ(seen.back().second, lc.state());
}

TEST_F(LifecycleTest, TimerUnloadsAfterTheTimeoutInRealTime) {
  Lifecycle lc(&host_, RealClock(), Options(50'000'000));  // 50 ms
  lc.StartTimer(5'000'000);
  ASSERT_OK(lc.Infer(Inputs("x"), nullptr));
  EXPECT_TRUE(Eventually([&] { return lc.state() == ModelState::kCold; }, 5s));
  EXPECT_EQ(host_.unloads.load(), 1);

  // Stopped, the timer unloads nothing more.
  lc.StopTimer();
  ASSERT_OK(lc.Infer(Inputs("x"), nullptr));
  std::this_thread::sleep_for(150ms);
  EXPECT_EQ(lc.state(), ModelState::kWarm);
  EXPECT_EQ(host_.unloads.load(), 1);
}

TEST_F(LifecycleTest, StopTimerWakesTheTimerAtOnce) {
  Lifecycle lc(&host_, RealClock(), Options(50'000'000));
  lc.StartTimer(3600 * kSecond);
  const auto start = std::chrono::steady_clock::now();
  lc.StopTimer();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  lc.StartTimer(3600 * kSecond);  // and again; the destructor stops this one
}

TEST_F(LifecycleTest, OnExitMayDestroyTheLifecycleFromTheTimerThread) {
  std::atomic<bool> exited{false};
  std::unique_ptr<Lifecycle> lc;
  lc = std::make_unique<Lifecycle>(&host_, RealClock(), Options(10'000'000, OnIdle::kExit), [&] {
    lc.reset();
    exited = true;
  });
  ASSERT_OK(lc->Warmup());
  lc->StartTimer(2'000'000);
  EXPECT_TRUE(Eventually([&] { return exited.load(); }, 5s));
  EXPECT_EQ(host_.unloads.load(), 0);
}

}  // namespace
}  // namespace stasis::runtime
