#include "tools/stasis/bench_report.h"

#include <algorithm>
#include <map>
#include <utility>

namespace stasis::cli {
namespace {

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

void Summarise(PathSummary* p) {
  std::vector<double> ready, first, rss;
  std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> spans;
  std::vector<std::string> order;
  for (const auto& r : p->runs) {
    ready.push_back(r.report["ready"].get<double>());
    first.push_back(r.report["first_result"].get<double>());
    rss.push_back(r.max_rss_mb);
    for (const auto& ph : r.report["phases"]) {
      const std::string name = ph["name"].get<std::string>();
      if (!spans.count(name)) order.push_back(name);
      spans[name].first.push_back(ph["start"].get<double>());
      spans[name].second.push_back(ph["end"].get<double>());
    }
  }
  p->ready = Median(ready);
  p->first_result = Median(first);
  p->max_rss_mb = Median(rss);
  p->phases = Json::array();
  for (const auto& name : order) {
    p->phases.push_back({{"name", name},
                         {"start", Median(spans[name].first)},
                         {"end", Median(spans[name].second)}});
  }
}

Json PathJson(const PathSummary& p) {
  Json runs = Json::array();
  for (const auto& r : p.runs) {
    Json j = r.report;
    j["max_rss_mb"] = r.max_rss_mb;
    runs.push_back(std::move(j));
  }
  return {{"ready_s", p.ready},
          {"first_result_s", p.first_result},
          {"max_rss_mb", p.max_rss_mb},
          {"phases", p.phases},
          {"runs", runs}};
}

}  // namespace stasis::cli
