// File: restore/io/http_read_engine.h
//
// A ReadEngine over a pinned remote object (restore/io/remote_object.h): every read is a
// range GET (a RangeTransfer), run by one transfer thread per engine that drives a libcurl
// multi handle, so up to RemoteOptions::concurrency GETs are in flight over reused
// connections whatever the number of queues, and workers decoding a chunk never hold a
// transfer back. Semantics are the engines' (restore/io/read_engine.h): a completion has
// all `length` bytes or a failure; a failure is the transfer's Status (kUnavailable once
// retries are spent, kAborted for a replaced object, kDeadlineExceeded, ...). Alignment 1;
// nothing to map (MappableFd() is -1); fixed buffers are ignored.
//
// Thread safety: as ReadEngine. Cancel() stops a queue's transfers (each completes with
// kCancelled at the next Wait), so a failed restore does not wait out retry schedules; the
// destructor cancels too and returns once no transfer can write into the queue's memory.
#ifndef STASIS_RESTORE_IO_HTTP_READ_ENGINE_H_
#define STASIS_RESTORE_IO_HTTP_READ_ENGINE_H_

#include <memory>

#include "restore/io/read_engine.h"
#include "restore/io/remote_object.h"

namespace stasis {

StatusOr<std::unique_ptr<ReadEngine>> NewHttpReadEngine(std::shared_ptr<const RemoteObject> object,
                                                        int queue_depth);

}  // namespace stasis

#endif  // STASIS_RESTORE_IO_HTTP_READ_ENGINE_H_
