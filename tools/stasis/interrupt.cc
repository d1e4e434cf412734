#include "tools/stasis/interrupt.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <exception>
#include <thread>

#include "tools/stasis/temp_files.h"

namespace stasis::cli {

sigset_t InterruptSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  return set;
}

const char* InterruptSignalName(int sig) {
  switch (sig) {
    case SIGINT:
      return "SIGINT";
    case SIGTERM:
      return "SIGTERM";
    default:
      return "SIGHUP";
  }
}

Status StartInterruptThread(std::function<void()> waiter) {
  const sigset_t set = InterruptSignals();
  sigset_t previous;
  if (int rc = pthread_sigmask(SIG_BLOCK, &set, &previous); rc != 0)
    return ErrnoToStatus(rc, "blocking SIGINT/SIGTERM/SIGHUP");
  try {
    std::thread(std::move(waiter)).detach();
  } catch (const std::exception& e) {
    pthread_sigmask(SIG_SETMASK, &previous, nullptr);
    return ResourceExhaustedError(std::string("cannot start the thread that handles "
                                              "SIGINT/SIGTERM: ") +
                                  e.what());
  }
  return OkStatus();
}

namespace {

[[noreturn]] void WaitForInterrupt(const std::string& output) {
  const sigset_t set = InterruptSignals();
  int sig = 0;
  while (sigwait(&set, &sig) != 0) {
  }
  const std::vector<std::string> removed = RemoveTempFiles(output, TempFiles::kOwn);
  // An ordinary thread, not a handler: stdio is safe here. The progress bar may own the
  // line; start a fresh one.
  std::fprintf(stderr, "\nstasis: interrupted by %s", InterruptSignalName(sig));
  for (const std::string& path : removed) std::fprintf(stderr, "; removed %s", path.c_str());
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  // _exit, not exit: the other threads are still running, and static destructors must not
  // run under them. Nothing buffered on stdout is worth flushing from a command cut short.
  ::_exit(128 + sig);
}

}  // namespace

Status CleanUpOnInterrupt(const std::string& output) {
  return StartInterruptThread([output] { WaitForInterrupt(output); });
}

}  // namespace stasis::cli
