// File: tools/stasis/bench_svg.h
//
// The picture `stasis bench` draws (bench.svg, the ones in docs/img/): per cache state,
// the baseline's phases above stasis's, one bar per phase on a shared time axis, with time
// to ready and time to first result marked.
#ifndef STASIS_TOOLS_STASIS_BENCH_SVG_H_
#define STASIS_TOOLS_STASIS_BENCH_SVG_H_

#include <string>
#include <vector>

#include "tools/stasis/bench_report.h"

namespace stasis::cli {

std::string WaterfallSvg(const std::string& title, const std::vector<CacheResult>& results);

}  // namespace stasis::cli

#endif  // STASIS_TOOLS_STASIS_BENCH_SVG_H_
