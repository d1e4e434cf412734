#include "tools/stasis/bench_svg.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

namespace stasis::cli {
namespace {

std::string PhaseColor(const std::string& name) {
  if (name == "process start") return "#9e9e9e";
  if (name == "library load") return "#8d6e63";
  if (name == "framework load + weight I/O") return "#e53935";
  if (name == "copy to device") return "#fb8c00";
  if (name == "weight I/O + copy (restore)") return "#1e88e5";
  if (name == "skeleton load") return "#8e24aa";
  if (name == "bind weights") return "#00acc1";
  if (name == "first inference") return "#43a047";
  return "#607d8b";
}

std::string XmlEscape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '<':
        o += "&lt;";
        break;
      case '>':
        o += "&gt;";
        break;
      case '&':
        o += "&amp;";
        break;
      case '"':
        o += "&quot;";
        break;
      default:
        o += c;
    }
  }
  return o;
}

}  // namespace

// A phase waterfall: per cache state, the baseline's phases above stasis's, one bar per
// phase on a shared time axis, with time-to-ready and time-to-first-result marked.
std::string WaterfallSvg(const std::string& title, const std::vector<CacheResult>& results) {
  const double kLeft = 250, kWidth = 640, kRow = 22, kRight = 40;
  double tmax = 0;
  for (const auto& c : results)
    tmax = std::max({tmax, c.baseline.first_result, c.stasis.first_result});
  tmax = tmax > 0 ? tmax * 1.05 : 1;
  auto x = [&](double t) { return kLeft + t / tmax * kWidth; };
  std::ostringstream body;
  double y = 40;
  char buf[512];
  for (const auto& c : results) {
    const double ready_x = c.stasis.ready > 0 ? c.baseline.ready / c.stasis.ready : 0;
    const double first_x =
        c.stasis.first_result > 0 ? c.baseline.first_result / c.stasis.first_result : 0;
    std::snprintf(buf, sizeof(buf),
                  "<text x=\"10\" y=\"%.0f\" font-weight=\"bold\">page cache %s: time to ready "
                  "%.2fx faster, time to first result %.2fx faster</text>\n",
                  y, c.cache.c_str(), ready_x, first_x);
    body << buf;
    y += 10;
    for (const auto* path : {&c.baseline, &c.stasis}) {
      const bool base = path == &c.baseline;
      y += 8;
      std::snprintf(buf, sizeof(buf),
                    "<text x=\"10\" y=\"%.0f\" font-style=\"italic\">%s: ready %.3f s, first "
                    "result %.3f s, peak RSS %.0f MB</text>\n",
                    y + 12, base ? "baseline (torch::jit::load)" : "stasis (restore + bind)",
                    path->ready, path->first_result, path->max_rss_mb);
      body << buf;
      y += kRow;
      const double top = y;
      for (const auto& ph : path->phases) {
        const std::string name = ph["name"].get<std::string>();
        const double s = ph["start"].get<double>(), e = ph["end"].get<double>();
        std::snprintf(buf, sizeof(buf),
                      "<text x=\"20\" y=\"%.0f\">%s</text><rect x=\"%.1f\" y=\"%.0f\" "
                      "width=\"%.1f\" height=\"%.0f\" fill=\"%s\"/><text x=\"%.1f\" y=\"%.0f\" "
                      "font-size=\"11\">%.3f s</text>\n",
                      y + 15, XmlEscape(name).c_str(), x(s), y + 3, std::max(1.0, x(e) - x(s)),
                      kRow - 6, PhaseColor(name).c_str(), x(e) + 4, y + 15, e - s);
        body << buf;
        y += kRow;
      }
      std::snprintf(buf, sizeof(buf),
                    "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"black\" "
                    "stroke-dasharray=\"4 3\"/><text x=\"%.1f\" y=\"%.0f\" "
                    "font-size=\"11\">ready</text>\n",
                    x(path->ready), top, x(path->ready), y, x(path->ready) + 3, y + 11);
      body << buf;
      y += 14;
    }
    y += 26;
  }
  // Time axis.
  std::ostringstream axis;
  const double step = tmax > 4 ? 1.0 : tmax > 2 ? 0.5 : tmax > 0.8 ? 0.2 : 0.1;
  for (double t = 0; t <= tmax; t += step) {
    std::snprintf(buf, sizeof(buf),
                  "<line x1=\"%.1f\" y1=\"30\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#e0e0e0\"/>"
                  "<text x=\"%.1f\" y=\"%.0f\" font-size=\"11\" text-anchor=\"middle\">%.1f "
                  "s</text>\n",
                  x(t), x(t), y, x(t), y + 14, t);
    axis << buf;
  }
  std::ostringstream svg;
  const double height = y + 30;
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kLeft + kWidth + kRight
      << "\" height=\"" << height << "\" font-family=\"sans-serif\" font-size=\"13\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"10\" y=\"20\" font-size=\"15\" font-weight=\"bold\">" << XmlEscape(title)
      << "</text>\n"
      << axis.str() << body.str() << "</svg>\n";
  return svg.str();
}

}  // namespace stasis::cli
