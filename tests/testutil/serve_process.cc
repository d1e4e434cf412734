#include "tests/testutil/serve_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "tests/testutil/test_util.h"

namespace stasis::testing {

ServeProcess::ServeProcess(const std::string& stasis_bin, const std::vector<std::string>& args,
                           const std::string& log)
    : log_(log) {
  // Everything the child needs is made before fork: between fork and exec it may only make
  // async-signal-safe calls (another thread could hold the allocator's lock).
  std::vector<std::string> full = {stasis_bin, "serve"};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  // Truncated here, so a port announced in an older log of this name is never read.
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  pid_ = ::fork();
  if (pid_ == 0) {
    if (fd >= 0) ::dup2(fd, STDERR_FILENO);
    ::execv(argv[0], argv.data());
    _exit(127);
  }
  if (fd >= 0) ::close(fd);
  if (pid_ < 0) exited_ = true;  // no child: nothing to wait for (exit_code -1)
}

ServeProcess::~ServeProcess() {
  if (pid_ > 0 && !exited_) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
}

int ServeProcess::WaitForPort(double seconds) {
  static constexpr char kMarker[] = "on http://127.0.0.1:";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    const std::string text = ReadFile(log_);
    const size_t at = text.find(kMarker);
    if (at != std::string::npos) return std::atoi(text.c_str() + at + std::strlen(kMarker));
    if (HasExited()) return 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return 0;
}

bool ServeProcess::HasExited() {
  if (exited_) return true;
  int status = 0;
  if (pid_ > 0 && ::waitpid(pid_, &status, WNOHANG) == pid_) {
    exited_ = true;
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    term_signal_ = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  }
  return exited_;
}

int ServeProcess::WaitForExit(double seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (HasExited()) return exit_code_;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -2;
}

void ServeProcess::Signal(int sig) {
  if (pid_ > 0 && !exited_) ::kill(pid_, sig);
}

std::string ServeProcess::log() const { return ReadFile(log_); }

}  // namespace stasis::testing
