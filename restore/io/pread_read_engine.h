// File: restore/io/pread_read_engine.h
//
// The pread engine: each queue owns a small pool of worker threads, min(depth,
// kMaxPreadThreadsPerQueue), started lazily as reads arrive. A worker runs one read to
// completion with pread loops and posts it to the queue's completion list (mutex +
// condvar). Per-queue rather than engine-wide threads keep destruction simple (a queue
// joins exactly its own workers) and keep one worker's 8 MiB reads from delaying another
// worker's queue.
//
// Thread safety: the engine is immutable after construction. Queues: see
// restore/io/read_engine.h.
#ifndef STASIS_RESTORE_IO_PREAD_READ_ENGINE_H_
#define STASIS_RESTORE_IO_PREAD_READ_ENGINE_H_

#include <memory>

#include "restore/io/read_engine.h"
#include "restore/io/read_progress.h"

namespace stasis {

// The pread engine over `target`. `report` is what OpenReadEngine decided (direct I/O,
// alignment, why pread); it is returned by report() as is.
std::unique_ptr<ReadEngine> NewPreadReadEngine(std::shared_ptr<const internal::ReadTarget> target,
                                               const ReadEngineOptions& options,
                                               ReadEngineReport report);

}  // namespace stasis

#endif  // STASIS_RESTORE_IO_PREAD_READ_ENGINE_H_
