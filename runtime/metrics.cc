#include "runtime/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>

namespace stasis::runtime {
namespace {

constexpr ModelState kAllStates[] = {ModelState::kCold, ModelState::kRestoring, ModelState::kWarm,
                                     ModelState::kUnloading, ModelState::kFailed};

// Go's ParseFloat accepts the shortest round-trip form; infinities are "+Inf"/"-Inf".
std::string FormatNumber(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  if (ec != std::errc()) return "NaN";
  return std::string(buf, end);
}

std::string EscapeLabelValue(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string EscapeHelp(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// `{a="x",b="y"}` (with `extra` appended, for histogram buckets); empty when no labels.
std::string RenderLabels(const MetricLabels& labels,
                         const std::pair<std::string, std::string>* extra = nullptr) {
  if (labels.empty() && extra == nullptr) return "";
  std::string out = "{";
  bool first = true;
  auto add = [&](const std::pair<std::string, std::string>& kv) {
    if (!first) out += ',';
    first = false;
    out += kv.first;
    out += "=\"";
    out += EscapeLabelValue(kv.second);
    out += '"';
  };
  for (const auto& kv : labels) add(kv);
  if (extra != nullptr) add(*extra);
  out += '}';
  return out;
}

}  // namespace

std::vector<double> RequestSecondsBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

std::vector<double> RestoreSecondsBuckets() {
  return {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
}

Metrics::Metrics() {
  DefineCounter("stasis_cold_starts_total", "Restores of the model that succeeded.");
  DefineCounter("stasis_failed_restores_total", "Restores of the model that failed.");
  DefineCounter("stasis_unloads_total", "Unloads of the model (idle timeout or /v1/unload).");
  DefineCounter("stasis_warm_requests_total", "Inference requests served without a restore.");
  DefineCounter("stasis_cold_requests_total", "Inference requests that waited for a restore.");
  DefineHistogram("stasis_restore_seconds", "Wall time of each cold start's restore.",
                  RestoreSecondsBuckets());
  DefineHistogram("stasis_request_seconds", "Latency of POST /v1/infer, by outcome.",
                  RequestSecondsBuckets());
  DefineGauge("stasis_state", "Lifecycle state of the model: 1 for the current state.");
  DefineGauge("stasis_device_bytes", "Device memory held by the model, in bytes.");
  DefineGauge("stasis_in_flight", "Inference requests running in the model.");
  DefineGauge("stasis_queued", "Inference requests waiting for a concurrency slot.");
  for (const char* outcome : {"ok", "client_error", "server_error", "rejected"}) {
    std::lock_guard l(mu_);
    GetSeries(Find("stasis_request_seconds", Type::kHistogram), {{"outcome", outcome}});
  }
  for (const char* c :
       {"stasis_cold_starts_total", "stasis_failed_restores_total", "stasis_unloads_total",
        "stasis_warm_requests_total", "stasis_cold_requests_total"}) {
    Add(c, 0);
  }
  {
    std::lock_guard l(mu_);
    GetSeries(Find("stasis_restore_seconds", Type::kHistogram), {});
  }
  Set("stasis_device_bytes", 0);
  Set("stasis_in_flight", 0);
  Set("stasis_queued", 0);
  SetState(ModelState::kCold);
}

void Metrics::Define(std::string_view name, std::string_view help, Type type,
                     std::vector<double> bounds) {
  std::lock_guard l(mu_);
  if (index_.find(name) != index_.end()) return;
  Family f;
  f.name = std::string(name);
  f.help = std::string(help);
  f.type = type;
  std::sort(bounds.begin(), bounds.end());
  bounds.erase(std::unique(bounds.begin(), bounds.end()), bounds.end());
  f.bounds = std::move(bounds);
  index_.emplace(f.name, families_.size());
  families_.push_back(std::move(f));
}

void Metrics::DefineCounter(std::string_view name, std::string_view help) {
  Define(name, help, Type::kCounter, {});
}
void Metrics::DefineGauge(std::string_view name, std::string_view help) {
  Define(name, help, Type::kGauge, {});
}
void Metrics::DefineHistogram(std::string_view name, std::string_view help,
                              std::vector<double> buckets) {
  Define(name, help, Type::kHistogram, std::move(buckets));
}

Metrics::Family* Metrics::Find(std::string_view name, Type type) {
  auto it = index_.find(name);
  if (it == index_.end()) return nullptr;
  Family* f = &families_[it->second];
  return f->type == type ? f : nullptr;
}

const Metrics::Family* Metrics::FindAny(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &families_[it->second];
}

Metrics::Series* Metrics::GetSeries(Family* f, const MetricLabels& labels) {
  if (f == nullptr) return nullptr;
  for (Series& s : f->series) {
    if (s.labels == labels) return &s;
  }
  Series s;
  s.labels = labels;
  if (f->type == Type::kHistogram) s.buckets.assign(f->bounds.size() + 1, 0);
  f->series.push_back(std::move(s));
  return &f->series.back();
}

const Metrics::Series* Metrics::FindSeries(const Family* f, const MetricLabels& labels) {
  if (f == nullptr) return nullptr;
  for (const Series& s : f->series) {
    if (s.labels == labels) return &s;
  }
  return nullptr;
}

void Metrics::Add(std::string_view counter, double v, const MetricLabels& labels) {
  if (!(v >= 0)) return;  // counters only go up (also rejects NaN)
  std::lock_guard l(mu_);
  if (Series* s = GetSeries(Find(counter, Type::kCounter), labels)) s->value += v;
}

void Metrics::SetCounter(std::string_view counter, double v, const MetricLabels& labels) {
  std::lock_guard l(mu_);
  if (Series* s = GetSeries(Find(counter, Type::kCounter), labels)) {
    s->value = std::max(s->value, v);
  }
}

void Metrics::Set(std::string_view gauge, double v, const MetricLabels& labels) {
  std::lock_guard l(mu_);
  if (Series* s = GetSeries(Find(gauge, Type::kGauge), labels)) s->value = v;
}

void Metrics::Observe(std::string_view histogram, double v, const MetricLabels& labels) {
  std::lock_guard l(mu_);
  Family* f = Find(histogram, Type::kHistogram);
  Series* s = GetSeries(f, labels);
  if (s == nullptr) return;
  size_t i = std::lower_bound(f->bounds.begin(), f->bounds.end(), v) - f->bounds.begin();
  ++s->buckets[i];  // bounds are inclusive upper bounds (le); NaN lands in +Inf
  s->sum += v;
  ++s->count;
}

double Metrics::Value(std::string_view name, const MetricLabels& labels) const {
  std::lock_guard l(mu_);
  const Series* s = FindSeries(FindAny(name), labels);
  return s == nullptr ? 0 : s->value;
}

uint64_t Metrics::HistogramCount(std::string_view name, const MetricLabels& labels) const {
  std::lock_guard l(mu_);
  const Series* s = FindSeries(FindAny(name), labels);
  return s == nullptr ? 0 : s->count;
}

double Metrics::HistogramSum(std::string_view name, const MetricLabels& labels) const {
  std::lock_guard l(mu_);
  const Series* s = FindSeries(FindAny(name), labels);
  return s == nullptr ? 0 : s->sum;
}

std::string Metrics::Render() const {
  std::lock_guard l(mu_);
  std::string out;
  for (const Family& f : families_) {
    out += "# HELP " + f.name + " " + EscapeHelp(f.help) + "\n";
    out += "# TYPE " + f.name + " ";
    out += f.type == Type::kCounter ? "counter" : f.type == Type::kGauge ? "gauge" : "histogram";
    out += "\n";
    for (const Series& s : f.series) {
      if (f.type != Type::kHistogram) {
        out += f.name + RenderLabels(s.labels) + " " + FormatNumber(s.value) + "\n";
        continue;
      }
      uint64_t cumulative = 0;
      for (size_t i = 0; i <= f.bounds.size(); ++i) {
        cumulative += s.buckets[i];
        std::pair<std::string, std::string> le{
            "le", i < f.bounds.size() ? FormatNumber(f.bounds[i]) : "+Inf"};
        out += f.name + "_bucket" + RenderLabels(s.labels, &le) + " " + std::to_string(cumulative) +
               "\n";
      }
      out += f.name + "_sum" + RenderLabels(s.labels) + " " + FormatNumber(s.sum) + "\n";
      out += f.name + "_count" + RenderLabels(s.labels) + " " + std::to_string(s.count) + "\n";
    }
  }
  return out;
}

void Metrics::SetState(ModelState state) {
  std::lock_guard l(mu_);
  Family* f = Find("stasis_state", Type::kGauge);
  for (ModelState s : kAllStates) {
    if (Series* series = GetSeries(f, {{"state", std::string(ModelStateName(s))}})) {
      series->value = s == state ? 1 : 0;
    }
  }
}

void Metrics::SyncLifecycle(const LifecycleStatus& st) {
  SetCounter("stasis_cold_starts_total", static_cast<double>(st.cold_starts));
  SetCounter("stasis_failed_restores_total", static_cast<double>(st.failed_restores));
  SetCounter("stasis_unloads_total", static_cast<double>(st.unloads));
  SetCounter("stasis_warm_requests_total", static_cast<double>(st.warm_requests));
  SetCounter("stasis_cold_requests_total", static_cast<double>(st.cold_requests));
  Set("stasis_device_bytes", static_cast<double>(st.device_bytes));
  Set("stasis_in_flight", st.in_flight);
  SetState(st.state);
  uint64_t new_restores = 0;
  {
    std::lock_guard l(mu_);
    if (st.cold_starts > synced_cold_starts_) {
      new_restores = st.cold_starts - synced_cold_starts_;
      synced_cold_starts_ = st.cold_starts;
    }
  }
  if (st.has_last_restore) {
    for (uint64_t i = 0; i < new_restores; ++i) {
      Observe("stasis_restore_seconds", st.last_restore.phases.total);
    }
  }
}

void Metrics::ObserveRequest(std::string_view outcome, double seconds) {
  Observe("stasis_request_seconds", seconds, {{"outcome", std::string(outcome)}});
}

TransitionListener NewStateListener(Metrics* metrics) {
  return [metrics](ModelState /*from*/, ModelState to) { metrics->SetState(to); };
}

}  // namespace stasis::runtime
