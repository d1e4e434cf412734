// File: python/src/interruptible.h
//
// Long operations (a restore, a snapshot) run on a thread of their own while the calling
// thread waits without the GIL, waking every 100 ms to run Python's signal handlers and to
// draw progress. Ctrl-C sets the operation's cancel flag, waits for it to stop (it releases
// what it made, as on any failure) and raises KeyboardInterrupt: a cancelled restore or
// snapshot leaves nothing behind and never kills the interpreter.
#ifndef STASIS_PYTHON_SRC_INTERRUPTIBLE_H_
#define STASIS_PYTHON_SRC_INTERRUPTIBLE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "stasis/status.h"

namespace stasis::python {

struct Progress {
  std::string label;                      // e.g. "restoring model.stasis"
  uint64_t total_bytes = 0;               // 0: unknown (no percentage)
  std::atomic<uint64_t>* done = nullptr;  // advanced by the operation; may be null
};

// Runs `work` on a new thread and waits for it. REQUIRES: the GIL held; `work` touches no
// Python object. `cancel` is what `work` checks to stop early. A progress line goes to
// standard error when it is a terminal and the operation has run for a second. Returns
// work's status; raises KeyboardInterrupt (or whatever the signal handler raised) after
// `work` stopped when a signal handler raised.
Status RunInterruptible(const std::function<Status()>& work, std::atomic<bool>* cancel,
                        const Progress& progress);

}  // namespace stasis::python

#endif  // STASIS_PYTHON_SRC_INTERRUPTIBLE_H_
