// File: restore/pipeline_worker.h
//
// One worker of the restore pipeline (docs/restore-pipeline.md): it runs its share of the
// plan (restore/restore_plan.h) with its own read queue, staging slots and decoder, taking
// every chunk from the file to its destination (read → verify → decompress → copy).
// RestoredModel runs one per WorkerPlan, each on a thread of its own.
#ifndef STASIS_RESTORE_PIPELINE_WORKER_H_
#define STASIS_RESTORE_PIPELINE_WORKER_H_

#include <atomic>
#include <cstdint>
#include <vector>

#include "restore/io/read_engine.h"
#include "restore/map_lease.h"
#include "restore/restore_plan.h"
#include "stasis/device_backend.h"
#include "stasis/image.h"
#include "stasis/status.h"

namespace stasis {

// Per-worker phase accounting (seconds on this worker's thread), summed after the pipeline.
struct WorkerTimes {
  double read = 0, verify = 0, decompress = 0, copy = 0;
  uint64_t in_place = 0;
  uint64_t mapped = 0;
};

// Takes each chunk's raw bytes once they are in place and checked (the cache fill,
// restore/image_cache.h). Put is called concurrently by the workers; a failure fails the
// worker.
class ChunkSink {
 public:
  virtual ~ChunkSink() = default;
  virtual Status Put(uint32_t chunk, const uint8_t* raw) = 0;
};

struct PipelineWorkerArgs {
  const format::Manifest* manifest = nullptr;
  const RestorePlan* plan = nullptr;
  int index = 0;  // of the worker: plan->workers[index] is its work
  ReadEngine* engine = nullptr;
  DeviceBackend* backend = nullptr;
  const std::vector<MappedRegion>* regions = nullptr;
  // This worker's plan->slots_per_worker slots of plan->slot_size bytes (null when the plan
  // needs none).
  uint8_t* staging = nullptr;
  bool verify_raw = true;
  bool verify_stored = true;
  // Set by a worker that failed; the others stop at their next chunk (kCancelled).
  std::atomic<bool>* cancel = nullptr;
  // The caller's stop request (RestoreOptions::cancel) and progress counter; may be null.
  const std::atomic<bool>* stop = nullptr;
  std::atomic<uint64_t>* progress = nullptr;
  // The read lease chunks on the map route are mapped under (required when the plan has
  // any). A chunk whose lease is gone by the time it comes is read into place instead.
  internal::MapLease* lease = nullptr;
  // Gets every chunk's checked raw bytes; null: none. Needs verify_raw and verify_stored.
  ChunkSink* sink = nullptr;
};

// Runs worker `args.index` to the end of its work, or to its first error, then waits for
// every read still in flight and for the backend's copies. `*abandoned_reads` is set when
// reads could not be reaped: the kernel may still write into the staging and the regions,
// which the caller must then never free.
Status RunPipelineWorker(const PipelineWorkerArgs& args, WorkerTimes* times, bool* abandoned_reads);

}  // namespace stasis

#endif  // STASIS_RESTORE_PIPELINE_WORKER_H_
