// File: runtime/metrics.h
//
// The runtime's Prometheus metrics: a small registry of counters, gauges and histograms
// (fixed buckets) rendered in the text exposition format (version 0.0.4) for GET /metrics.
//
// A Metrics object is created with the stasis families already defined:
//   stasis_cold_starts_total            counter    restores that succeeded
//   stasis_failed_restores_total        counter
//   stasis_unloads_total                counter
//   stasis_warm_requests_total          counter    inferences served without a restore
//   stasis_cold_requests_total          counter    inferences that waited for a restore
//   stasis_restore_seconds              histogram  RestoreReport total of each cold start
//   stasis_request_seconds{outcome}     histogram  POST /v1/infer latency, outcome one of
//                                                  ok|client_error|server_error|rejected
//   stasis_state{state}                 gauge      1 for the current state, 0 for the others
//   stasis_device_bytes                 gauge
//   stasis_in_flight                    gauge      requests inside the model
//   stasis_queued                       gauge      requests waiting for a concurrency slot
// The lifecycle counters are copied from LifecycleStatus (SyncLifecycle, called by the
// server after every request and before every render), so they are exact whoever drives
// the Lifecycle; stasis_state follows transitions as they happen when the listener from
// NewStateListener is given to the Lifecycle.
//
// Thread safety: every method may be called from any thread.
#ifndef STASIS_RUNTIME_METRICS_H_
#define STASIS_RUNTIME_METRICS_H_

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runtime/lifecycle.h"

namespace stasis::runtime {

// Label pairs in rendering order, e.g. {{"outcome", "ok"}}.
using MetricLabels = std::vector<std::pair<std::string, std::string>>;

// Default buckets (seconds) of the stasis histograms.
std::vector<double> RequestSecondsBuckets();  // 1 ms .. 60 s
std::vector<double> RestoreSecondsBuckets();  // 10 ms .. 120 s

class Metrics {
 public:
  Metrics();  // defines the stasis families listed above
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Defining a family again with the same type is a no-op. Names must match
  // [a-zA-Z_:][a-zA-Z0-9_:]* (not checked: callers are code, not users).
  void DefineCounter(std::string_view name, std::string_view help);
  void DefineGauge(std::string_view name, std::string_view help);
  // `buckets`: upper bounds, sorted ascending (+Inf is implicit).
  void DefineHistogram(std::string_view name, std::string_view help, std::vector<double> buckets);

  // Operations on an undefined family, or on one of another type, are ignored.
  void Add(std::string_view counter, double v = 1, const MetricLabels& labels = {});
  // Sets a counter to an absolute value (counters copied from another source; never lowers).
  void SetCounter(std::string_view counter, double v, const MetricLabels& labels = {});
  void Set(std::string_view gauge, double v, const MetricLabels& labels = {});
  void Observe(std::string_view histogram, double v, const MetricLabels& labels = {});

  // Reading back (tests, /v1/status). 0 for a series that does not exist.
  double Value(std::string_view name, const MetricLabels& labels = {}) const;
  uint64_t HistogramCount(std::string_view name, const MetricLabels& labels = {}) const;
  double HistogramSum(std::string_view name, const MetricLabels& labels = {}) const;

  // The text exposition format: per family "# HELP", "# TYPE", then its series (in the
  // order they were first touched); histograms as _bucket{le=...}, _sum and _count.
  std::string Render() const;

  // stasis helpers.
  void SetState(ModelState state);  // stasis_state: 1 for `state`, 0 for the others
  // Copies the lifecycle's counters, state and device bytes; observes
  // stasis_restore_seconds once for each cold start seen since the last call (with the
  // last restore's total: restores between two calls other than the last are observed with
  // that value too).
  void SyncLifecycle(const LifecycleStatus& status);
  // stasis_request_seconds{outcome=...}.
  void ObserveRequest(std::string_view outcome, double seconds);

 private:
  enum class Type { kCounter, kGauge, kHistogram };
  struct Series {
    MetricLabels labels;
    double value = 0;               // counter, gauge
    std::vector<uint64_t> buckets;  // histogram: non-cumulative counts per bucket, +Inf last
    double sum = 0;
    uint64_t count = 0;
  };
  struct Family {
    std::string name, help;
    Type type = Type::kCounter;
    std::vector<double> bounds;  // histogram
    std::vector<Series> series;
  };
  void Define(std::string_view name, std::string_view help, Type type, std::vector<double> bounds);
  // REQUIRES: mu_ held. Null when the family is missing or of another type.
  Family* Find(std::string_view name, Type type);
  const Family* FindAny(std::string_view name) const;
  static Series* GetSeries(Family* f, const MetricLabels& labels);
  static const Series* FindSeries(const Family* f, const MetricLabels& labels);

  mutable std::mutex mu_;
  std::vector<Family> families_;  // in definition order
  std::map<std::string, size_t, std::less<>> index_;
  uint64_t synced_cold_starts_ = 0;
};

// A TransitionListener (for the Lifecycle's constructor) that keeps stasis_state current.
// `metrics` must outlive the Lifecycle.
TransitionListener NewStateListener(Metrics* metrics);

}  // namespace stasis::runtime

#endif  // STASIS_RUNTIME_METRICS_H_
