// File: restore/io/uring_read_engine.h
//
// The io_uring engine (built only with liburing: STASIS_HAVE_URING). One ring per
// ReadQueue, so that page-cache-hot reads, which io_uring serves inline with a memcpy in
// the submitting thread, spread over as many cores as there are workers.
//
// Each ring is set up with the best flags the kernel accepts, probed once per process:
// SINGLE_ISSUER|DEFER_TASKRUN (6.1), else COOP_TASKRUN (5.19), else none. Single-issuer
// rings start disabled (IORING_SETUP_R_DISABLED) and are enabled by the first Submit or
// Wait, because the kernel binds such a ring to the thread that enables it, and a queue
// is usually made by one thread and used by a worker. The file and the caller's fixed
// buffers are registered per ring when the kernel allows (RLIMIT_MEMLOCK, gVisor may
// refuse); failure only costs the per-I/O fdget and page pinning.
//
// Reads are never linked (a short read would cancel the rest of a chain): each read is an
// independent SQE carrying its ReadProgress, and a short read, -EAGAIN or -EINTR
// resubmits the remainder.
//
// Thread safety: see restore/read_engine.h.
#ifndef STASIS_RESTORE_IO_URING_READ_ENGINE_H_
#define STASIS_RESTORE_IO_URING_READ_ENGINE_H_

#include <memory>

#include "restore/io/read_engine.h"
#include "restore/io/read_progress.h"
#include "stasis/status.h"

namespace stasis {

// The io_uring engine over `target`, proven with one real read of the file's first block
// through a ring set up exactly as the queues will be (the fault hook does not see it).
// Errors name io_uring and the likely cause, e.g. kPermissionDenied "io_uring_setup:
// Operation not permitted (blocked by seccomp or kernel.io_uring_disabled)"; OpenReadEngine
// falls back to pread on any of them under IoBackend::kAuto. `report` is completed with the
// ring flags and registration results.
StatusOr<std::unique_ptr<ReadEngine>> NewUringReadEngine(
    std::shared_ptr<const internal::ReadTarget> target, const ReadEngineOptions& options,
    ReadEngineReport report);

}  // namespace stasis

#endif  // STASIS_RESTORE_IO_URING_READ_ENGINE_H_
