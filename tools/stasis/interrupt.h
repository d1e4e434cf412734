// File: tools/stasis/interrupt.h
//
// What SIGINT, SIGTERM and SIGHUP do to a command that writes a file (`snapshot`,
// `export`): remove this process's temporary file for the output (temp_files.h), then end
// with the conventional status 128 + signal (130, 143, 129). Without it the signal kills
// the process the default way and a temporary file as large as the output stays behind.
// SIGKILL cannot be caught: the next command writing the same output removes what it left.
// Not for `serve`, which drains in-flight requests on SIGTERM itself.
#ifndef STASIS_TOOLS_STASIS_INTERRUPT_H_
#define STASIS_TOOLS_STASIS_INTERRUPT_H_

#include <signal.h>

#include <functional>
#include <string>

#include "stasis/status.h"

namespace stasis::cli {

// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread, so that every thread started
// after this inherits the mask and the signals wait for a thread of their own, which
// removes the temporary files of `output` and _exit()s. A signal never interrupts
// whatever another thread is doing; the output is either published whole (the signal came
// after the rename) or absent. A writer that creates its temporary file in the instant
// between the cleanup's directory scan and the exit leaves it to the next run.
//
// Call once per process, from main's thread, before any other thread starts (a thread
// started earlier could still take a signal and die the default way). When the waiting
// thread cannot be started the mask is restored and the error returned: the command still
// runs, with the default dispositions.
Status CleanUpOnInterrupt(const std::string& output);

// The pieces, for a command with its own handling (`push` cancels an upload first):
// SIGINT, SIGTERM and SIGHUP; "SIGINT", "SIGTERM" or "SIGHUP"; and blocking them in the
// calling thread, then running `waiter` on a thread of its own (it sigwait()s them). The
// same calling rules as CleanUpOnInterrupt.
sigset_t InterruptSignals();
const char* InterruptSignalName(int sig);
Status StartInterruptThread(std::function<void()> waiter);

}  // namespace stasis::cli

#endif  // STASIS_TOOLS_STASIS_INTERRUPT_H_
