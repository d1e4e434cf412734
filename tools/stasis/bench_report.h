// File: tools/stasis/bench_report.h
//
// What `stasis bench` collects: per cache state (hot, cold) and path (baseline, stasis),
// the JSON report of every cold-start child and their medians.
#ifndef STASIS_TOOLS_STASIS_BENCH_REPORT_H_
#define STASIS_TOOLS_STASIS_BENCH_REPORT_H_

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace stasis::cli {

using Json = nlohmann::ordered_json;

struct ChildResult {
  Json report;
  double max_rss_mb = 0;
};

struct PathSummary {
  std::vector<ChildResult> runs;
  double ready = 0, first_result = 0, max_rss_mb = 0;
  Json phases = Json::array();  // median start/end per phase, in first-run order
};

struct CacheResult {
  std::string cache;  // "hot" | "cold"
  std::string note;   // how the cache was dropped, when it was not fully
  PathSummary baseline, stasis;
};

// Fills the medians of p->runs: ready, first result, peak RSS, and each phase's start and
// end (in the first run's phase order).
void Summarise(PathSummary* p);

// The medians and every run, as bench.json holds them.
Json PathJson(const PathSummary& p);

}  // namespace stasis::cli

#endif  // STASIS_TOOLS_STASIS_BENCH_REPORT_H_
