// File: tests/testutil/serve_process.h
//
// ServeProcess: a `stasis serve` child for the integration tests. Its stderr goes to a file,
// where the server announces its port; the destructor kills it (SIGKILL) unless it exited.
//
// Thread safety: one thread at a time.
#ifndef STASIS_TESTS_TESTUTIL_SERVE_PROCESS_H_
#define STASIS_TESTS_TESTUTIL_SERVE_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

namespace stasis::testing {

class ServeProcess {
 public:
  // Runs `stasis_bin serve <args...>` with stderr to `log`.
  ServeProcess(const std::string& stasis_bin, const std::vector<std::string>& args,
               const std::string& log);
  ~ServeProcess();
  ServeProcess(const ServeProcess&) = delete;
  ServeProcess& operator=(const ServeProcess&) = delete;

  // The port from "serving ... on http://127.0.0.1:PORT", or 0 after `seconds` or when the
  // process ended first.
  int WaitForPort(double seconds = 60);
  // Whether the process ended (reaped here; exit_code and term_signal say how).
  bool HasExited();
  // The exit code, -1 when a signal ended it, or -2 when it did not end within `seconds`.
  int WaitForExit(double seconds);
  void Signal(int sig);
  int exit_code() const { return exit_code_; }
  int term_signal() const { return term_signal_; }  // 0: none
  std::string log() const;

 private:
  std::string log_;
  pid_t pid_ = -1;
  bool exited_ = false;
  int exit_code_ = -1;
  int term_signal_ = 0;
};

}  // namespace stasis::testing

#endif  // STASIS_TESTS_TESTUTIL_SERVE_PROCESS_H_
