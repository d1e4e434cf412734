#include "python/src/interruptible.h"

#include <Python.h>
#include <nanobind/nanobind.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <new>
#include <string>
#include <thread>

namespace stasis::python {

namespace {

namespace nb = nanobind;
using Clock = std::chrono::steady_clock;

// One line on a terminal, redrawn in place: "stasis: restoring m.stasis  1.2/5.2 GB  23%".
class ProgressLine {
 public:
  explicit ProgressLine(const Progress& p) : p_(p), start_(Clock::now()), tty_(isatty(2)) {}

  void Update() {
    if (!tty_ || !p_.done) return;
    const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
    if (elapsed < 1.0) return;  // short operations draw nothing
    const double done = static_cast<double>(p_.done->load(std::memory_order_relaxed));
    char line[256];
    if (p_.total_bytes > 0) {
      std::snprintf(line, sizeof line, "\rstasis: %s  %.2f/%.2f GB  %3.0f%%  %.2f GB/s ",
                    p_.label.c_str(), done / 1e9, p_.total_bytes / 1e9,
                    100.0 * done / p_.total_bytes, done / elapsed / 1e9);
    } else {
      std::snprintf(line, sizeof line, "\rstasis: %s  %.2f GB ", p_.label.c_str(), done / 1e9);
    }
    std::fputs(line, stderr);
    std::fflush(stderr);
    drawn_ = true;
  }

  void Finish() {
    if (!drawn_) return;
    std::fputs("\r\033[K", stderr);  // clear the line: the result says the rest
    std::fflush(stderr);
  }

 private:
  const Progress& p_;
  Clock::time_point start_;
  bool tty_;
  bool drawn_ = false;
};

}  // namespace

Status RunInterruptible(const std::function<Status()>& work, std::atomic<bool>* cancel,
                        const Progress& progress) {
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;
  Status result;
  std::thread worker;
  try {
    worker = std::thread([&] {
      Status s;
      try {  // an exception must not end the process (std::terminate on a thread)
        s = work();
      } catch (const std::bad_alloc&) {
        s = ResourceExhaustedError("out of memory");
      } catch (const std::exception& e) {
        s = InternalError(std::string("unexpected exception: ") + e.what());
      }
      std::lock_guard<std::mutex> lock(mu);
      result = std::move(s);
      finished = true;
      cv.notify_all();
    });
  } catch (const std::system_error& e) {
    return ResourceExhaustedError(std::string("cannot start a thread: ") + e.what());
  }
  ProgressLine line(progress);
  bool interrupted = false;
  for (;;) {
    bool done;
    {
      nb::gil_scoped_release release;
      std::unique_lock<std::mutex> lock(mu);
      done = cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return finished; });
    }
    if (done) break;
    // Runs the handlers of signals that arrived (SIGINT's raises KeyboardInterrupt); the
    // exception stays set until we raise it once the work has stopped.
    if (!interrupted && PyErr_CheckSignals() != 0) {
      interrupted = true;
      cancel->store(true);
    }
    line.Update();
  }
  worker.join();
  line.Finish();
  if (interrupted) throw nb::python_error();
  return result;
}

}  // namespace stasis::python
