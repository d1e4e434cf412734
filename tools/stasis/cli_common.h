// File: tools/cli_common.h
//
// What the stasis subcommands share: Status → exit code mapping (the only place errors
// become exit codes), size parsing, JSON output, a progress bar for TTYs, and
// human-readable numbers.
#ifndef STASIS_TOOLS_CLI_COMMON_H_
#define STASIS_TOOLS_CLI_COMMON_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "stasis/status.h"

namespace stasis::cli {

// Exit codes (README.md, "Exit codes").
inline constexpr int kExitOk = 0;
inline constexpr int kExitUsage = 1;
inline constexpr int kExitInvalidInput = 2;
inline constexpr int kExitCorrupt = 3;
inline constexpr int kExitIo = 4;
inline constexpr int kExitUnsupported = 5;
inline constexpr int kExitInternal = 70;

// The bound on every --threads flag: far above what helps (each command is bound by I/O
// or memory bandwidth long before), far below where starting threads fails (100000
// threads abort in std::thread). Out-of-range numeric flags are usage errors (exit 1).
inline constexpr int kMaxThreadsFlag = 1024;

int ExitCodeFor(const Status& s);
// Prints "stasis: error: <CODE>: <message>" to stderr and returns ExitCodeFor(s).
int ReportError(const Status& s);

// JSON text of `j` (indented by `indent`; -1: one line) for stdout and report files. Every
// command dumps through this: strings from images and the command line (tensor names,
// metadata, paths) need not be UTF-8, and nlohmann's default dump throws on them (an abort
// in a command). Invalid bytes become U+FFFD here; the text output shows them as they are.
template <typename JsonT>
std::string DumpJson(const JsonT& j, int indent = 2) {
  return j.dump(indent, ' ', /*ensure_ascii=*/false, JsonT::error_handler_t::replace);
}

// Parses "4194304", "4M", "4MiB", "512k", "1G" (binary units).
StatusOr<uint64_t> ParseSize(std::string_view text);
std::string HumanBytes(uint64_t n);
// 16 lower-case hex digits (digests and checksums in reports).
std::string Hex64(uint64_t v);

// A one-line progress bar on stderr, drawn only when stderr is a TTY. Update() may be
// called from any thread; it redraws at most every 100 ms.
class ProgressBar {
 public:
  ProgressBar(std::string label, uint64_t total, bool enabled);
  ~ProgressBar();
  void Update(uint64_t done);
  void Done();

 private:
  std::string label_;
  uint64_t total_;
  bool enabled_;
  std::mutex mu_;
  std::chrono::steady_clock::time_point start_, last_;
  bool finished_ = false;
};

bool StderrIsTty();

}  // namespace stasis::cli

#endif  // STASIS_TOOLS_CLI_COMMON_H_
