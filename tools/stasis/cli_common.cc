#include "tools/stasis/cli_common.h"

#include <unistd.h>

#include <cctype>
#include <cstdio>

namespace stasis::cli {

int ExitCodeFor(const Status& s) {
  switch (s.code()) {
    case StatusCode::kOk:
      return kExitOk;
    case StatusCode::kInvalidArgument:
    case StatusCode::kNotFound:
    case StatusCode::kAlreadyExists:
    case StatusCode::kFailedPrecondition:
      return kExitInvalidInput;
    case StatusCode::kDataLoss:
    case StatusCode::kOutOfRange:
      return kExitCorrupt;
    case StatusCode::kUnimplemented:
      return kExitUnsupported;
    case StatusCode::kInternal:
      return kExitInternal;
    default:
      return kExitIo;
  }
}

int ReportError(const Status& s) {
  std::fprintf(stderr, "stasis: error: %s\n", s.ToString().c_str());
  return ExitCodeFor(s);
}

StatusOr<uint64_t> ParseSize(std::string_view text) {
  size_t i = 0;
  uint64_t v = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
    uint64_t d = static_cast<uint64_t>(text[i] - '0');
    if (v > (UINT64_MAX - d) / 10)
      return InvalidArgumentError("size overflows: " + std::string(text));
    v = v * 10 + d;
    ++i;
  }
  if (i == 0) return InvalidArgumentError("not a size: '" + std::string(text) + "'");
  std::string unit;
  for (; i < text.size(); ++i)
    unit += static_cast<char>(std::tolower(static_cast<unsigned char>(text[i])));
  int shift = 0;
  if (unit.empty() || unit == "b")
    shift = 0;
  else if (unit == "k" || unit == "kb" || unit == "kib")
    shift = 10;
  else if (unit == "m" || unit == "mb" || unit == "mib")
    shift = 20;
  else if (unit == "g" || unit == "gb" || unit == "gib")
    shift = 30;
  else
    return InvalidArgumentError("unknown size unit in '" + std::string(text) + "'");
  if (shift > 0 && v > (UINT64_MAX >> shift))
    return InvalidArgumentError("size overflows: " + std::string(text));
  return v << shift;
}

std::string Hex64(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string HumanBytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.2f %s", v, units[u]);
  return buf;
}

bool StderrIsTty() { return ::isatty(STDERR_FILENO) == 1; }

ProgressBar::ProgressBar(std::string label, uint64_t total, bool enabled)
    : label_(std::move(label)), total_(total), enabled_(enabled && StderrIsTty()) {
  start_ = last_ = std::chrono::steady_clock::now();
}

ProgressBar::~ProgressBar() { Done(); }

void ProgressBar::Update(uint64_t done) {
  if (!enabled_) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto now = std::chrono::steady_clock::now();
  if (finished_ || now - last_ < std::chrono::milliseconds(100)) return;
  last_ = now;
  double frac = total_ ? static_cast<double>(done) / static_cast<double>(total_) : 1.0;
  if (frac > 1) frac = 1;
  int filled = static_cast<int>(frac * 30);
  double secs = std::chrono::duration<double>(now - start_).count();
  std::fprintf(stderr, "\r%s [%-30s] %5.1f%% %s %.0f MB/s", label_.c_str(),
               std::string(filled, '#').c_str(), frac * 100, HumanBytes(done).c_str(),
               secs > 0 ? static_cast<double>(done) / secs / 1e6 : 0.0);
}

void ProgressBar::Done() {
  if (!enabled_) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return;
  finished_ = true;
  std::fprintf(stderr, "\r\033[K");
}

}  // namespace stasis::cli
