#include "restore/pipeline_worker.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <string>

#include "common/hash.h"
#include "common/numbers.h"
#include "common/stopwatch.h"
#include "snapshot/codec.h"

namespace stasis {
namespace {

// One worker of the pipeline: runs its share of the plan with its own read queue, staging
// slots and decoder. Stops early when another worker failed.
class PipelineWorker {
 public:
  PipelineWorker(const format::Manifest& m, const RestorePlan& plan, const WorkerPlan& work,
                 int index, ReadEngine* engine, DeviceBackend* backend,
                 const std::vector<MappedRegion>& regions, uint8_t* staging, bool verify_raw,
                 bool verify_stored, std::atomic<bool>* cancel, const std::atomic<bool>* stop,
                 std::atomic<uint64_t>* progress, internal::MapLease* lease, ChunkSink* sink)
      : m_(m),
        plan_(plan),
        work_(work),
        index_(index),
        engine_(engine),
        backend_(backend),
        regions_(regions),
        staging_(staging),
        verify_raw_(verify_raw),
        verify_stored_(verify_stored),
        cancel_(cancel),
        stop_(stop),
        progress_(progress),
        lease_(lease),
        sink_(sink) {}

  Status Run(WorkerTimes* times) {
    times_ = times;
    STASIS_ASSIGN_OR_RETURN(queue_, engine_->NewQueue());
    for (int s = 0; s < plan_.slots_per_worker; ++s) free_slots_.push_back(s);
    slot_has_copy_.assign(plan_.slots_per_worker, false);
    Status status = Loop();
    // Failed or cancelled: reads still in flight are of no use; stop those that can stop.
    if (!status.ok() && queue_->in_flight() > 0) queue_->Cancel();
    // Never free staging the kernel may still write: drain every read in flight.
    std::vector<ReadCompletion> done;
    while (queue_->in_flight() > 0) {
      done.clear();
      if (!queue_->Wait(queue_->in_flight(), &done).ok()) break;
    }
    abandoned_reads_ = queue_->in_flight() > 0;
    Status sync = backend_->Synchronize();
    if (status.ok()) status = sync;
    return status;
  }

  // Whether Run ended with reads the queue could not reap (the kernel may still write).
  bool abandoned_reads() const { return abandoned_reads_; }

 private:
  struct Pending {
    size_t task = 0;
    int read_slot = -1;
    int out_slot = -1;             // a staged decode's output, taken with its read slot
    int ops = 0;                   // reads outstanding
    bool read_not_mapped = false;  // a map-route chunk read instead (its lease was gone)
    Status status;
  };

  int GlobalSlot(int s) const { return index_ * plan_.slots_per_worker + s; }
  uint8_t* Slot(int s) const { return staging_ + static_cast<uint64_t>(s) * plan_.slot_size; }

  StatusOr<int> TakeSlot() {
    // Submission takes every slot a task needs (SlotsNeeded), so this cannot run dry.
    if (free_slots_.empty()) return InternalError("restore pipeline ran out of staging slots");
    int s = free_slots_.back();
    free_slots_.pop_back();
    if (slot_has_copy_[s]) {
      // The device may still be copying out of this slot.
      Stopwatch t;
      STASIS_RETURN_IF_ERROR(backend_->WaitCopies(GlobalSlot(s)));
      times_->copy += t.Seconds();
      slot_has_copy_[s] = false;
    }
    return s;
  }

  int SlotsNeeded(const ChunkTask& t) const {
    switch (t.route) {
      case ChunkRoute::kReadInPlace:
        return t.in_place_bytes == m_.chunks[t.chunk].stored_size ? 0 : 1;
      case ChunkRoute::kDecodeStaged:
        return 2;
      case ChunkRoute::kMapInPlace:
        return 0;
      default:
        return 1;
    }
  }

  // Reads a task submits at once (at most: a map-route chunk is read only when its lease
  // is gone).
  size_t ReadsOf(const ChunkTask& t) const {
    if (t.route == ChunkRoute::kMapInPlace) return 1;
    if (t.route != ChunkRoute::kReadInPlace) return 1;
    const uint64_t stored = m_.chunks[t.chunk].stored_size;
    return (t.in_place_bytes > 0 ? 1 : 0) + (t.in_place_bytes < stored ? 1 : 0);
  }

  Status SubmitTask(size_t ti) {
    const ChunkTask& t = work_.tasks[ti];
    const format::ChunkInfo& c = m_.chunks[t.chunk];
    Pending& p = pending_[ti];
    p.task = ti;
    const uint64_t tag = ti;
    if (t.route == ChunkRoute::kMapInPlace) {
      // No read at all: the page cache's pages become the destination's (copy-on-write).
      // The checksum pass faults them in; without it, one read per page does, so every
      // byte is resident on return either way. Faults beat MADV_POPULATE_READ here: they
      // map a large page-cache folio at once (2.6 GB: 0.14 s against 0.18-0.23 s).
      // Only under the lease, which keeps the file from changing until the range is
      // copied out (restore/map_lease.h): the checksum below then checks for good.
      uint8_t* dst = regions_[c.region_id].host_view + c.dst_offset;
      if (lease_ == nullptr) return InternalError("a chunk on the map route without a lease");
      Stopwatch start;
      lease_->seam()->BeforeMap(t.chunk);
      StatusOr<bool> mapped = lease_->Map(dst, c.stored_size, c.file_offset);
      lease_->seam()->AfterMap(t.chunk);
      STASIS_RETURN_IF_ERROR(mapped.status().WithContext("chunk " + Num(t.chunk)));
      if (!*mapped) {
        // The lease broke first (a writer is waiting): read the chunk into place, checked
        // as any read is. Offset, destination and size are whole pages, so any direct-I/O
        // alignment up to a page holds.
        times_->read += start.Seconds();
        p.read_not_mapped = true;
        STASIS_RETURN_IF_ERROR(queue_->Submit({c.file_offset, c.stored_size, dst, tag, -1}));
        ++p.ops;
        return OkStatus();
      }
      if (!verify_stored_) {
        const volatile uint8_t* bytes = dst;
        uint8_t sink = 0;
        for (uint64_t off = 0; off < c.stored_size; off += kFaultStride) sink ^= bytes[off];
        touched_ ^= sink;
      }
      times_->read += start.Seconds();
      return Complete(ti);
    }
    if (t.route == ChunkRoute::kReadInPlace) {
      uint8_t* dst = regions_[c.region_id].host_view + c.dst_offset;
      if (t.in_place_bytes > 0) {
        STASIS_RETURN_IF_ERROR(queue_->Submit({t.read_offset, t.in_place_bytes, dst, tag, -1}));
        ++p.ops;
      }
      if (t.in_place_bytes < c.stored_size) {
        STASIS_ASSIGN_OR_RETURN(p.read_slot, TakeSlot());
        const uint64_t tail = engine_->report().alignment;
        STASIS_RETURN_IF_ERROR(
            queue_->Submit({t.read_offset + t.in_place_bytes, std::max<uint64_t>(tail, 1),
                            Slot(p.read_slot), tag, 0}));
        ++p.ops;
      }
      if (p.ops == 0) return Complete(ti);  // cannot happen: stored_size > 0
      return OkStatus();
    }
    STASIS_ASSIGN_OR_RETURN(p.read_slot, TakeSlot());
    // A staged decode's output slot is taken now, not when its read completes: tasks
    // submitted meanwhile could otherwise take it, leaving the decode none.
    if (t.route == ChunkRoute::kDecodeStaged) {
      STASIS_ASSIGN_OR_RETURN(p.out_slot, TakeSlot());
    }
    // Slots lie in the staging area: fixed buffer 0 where the kernel registered it.
    STASIS_RETURN_IF_ERROR(
        queue_->Submit({t.read_offset, t.read_length, Slot(p.read_slot), tag, 0}));
    ++p.ops;
    return OkStatus();
  }

  // Hands a checked chunk to the sink (the cache fill), if any.
  Status Sink(uint32_t chunk, const uint8_t* raw) {
    return sink_ != nullptr ? sink_->Put(chunk, raw) : OkStatus();
  }

  void Release(int s) {
    if (s >= 0) free_slots_.push_back(s);
  }

  // All reads of task `ti` are done: verify, decode and copy it, then count its bytes.
  Status Complete(size_t ti) {
    const uint64_t raw = m_.chunks[work_.tasks[ti].chunk].raw_size;
    Status s = CompleteTask(ti);
    if (s.ok() && progress_) progress_->fetch_add(raw, std::memory_order_relaxed);
    return s;
  }

  Status CompleteTask(size_t ti) {
    Pending p = std::move(pending_[ti]);
    pending_.erase(ti);
    STASIS_RETURN_IF_ERROR(p.status.WithContext("chunk " + Num(work_.tasks[ti].chunk)));
    const ChunkTask& t = work_.tasks[ti];
    const format::ChunkInfo& c = m_.chunks[t.chunk];
    const std::string what = "chunk " + Num(t.chunk);
    const MappedRegion& region = regions_[c.region_id];
    const uint64_t head = c.file_offset - t.read_offset;
    Status s;
    auto verify = [&](const void* bytes, uint64_t n, uint64_t expect, const char* kind) -> Status {
      Stopwatch start;
      bool ok = Xxh3(bytes, n) == expect;
      times_->verify += start.Seconds();
      if (!ok) return DataLossError(what + ": checksum mismatch in " + kind + " bytes");
      return OkStatus();
    };
    // The stored bytes' check, unless the caller turned it off (verify_stored).
    auto verify_stored = [&](const void* bytes) -> Status {
      return verify_stored_ ? verify(bytes, c.stored_size, c.stored_xxh3, "stored") : OkStatus();
    };
    switch (t.route) {
      case ChunkRoute::kMapInPlace: {
        if (p.read_not_mapped)
          times_->in_place++;
        else
          times_->mapped++;
        s = verify_stored(region.host_view + c.dst_offset);
        return s.ok() ? Sink(t.chunk, region.host_view + c.dst_offset) : s;
      }
      case ChunkRoute::kReadInPlace: {
        uint8_t* dst = region.host_view + c.dst_offset;
        if (p.read_slot >= 0)
          std::memcpy(dst + t.in_place_bytes, Slot(p.read_slot), c.stored_size - t.in_place_bytes);
        Release(p.read_slot);
        times_->in_place++;
        s = verify_stored(dst);
        return s.ok() ? Sink(t.chunk, dst) : s;
      }
      case ChunkRoute::kStagedCopy: {
        const uint8_t* src = Slot(p.read_slot) + head;
        s = verify_stored(src);
        if (s.ok()) s = Sink(t.chunk, src);
        if (s.ok()) {
          Stopwatch start;
          s = backend_->Copy(region.address + c.dst_offset, src, c.raw_size,
                             GlobalSlot(p.read_slot));
          times_->copy += start.Seconds();
          slot_has_copy_[p.read_slot] = true;
        }
        Release(p.read_slot);
        return s;
      }
      case ChunkRoute::kDecodeInPlace:
      case ChunkRoute::kDecodeStaged: {
        const uint8_t* src = Slot(p.read_slot) + head;
        s = verify_stored(src);
        const int out_slot = p.out_slot;
        uint8_t* out = t.route == ChunkRoute::kDecodeInPlace ? region.host_view + c.dst_offset
                                                             : Slot(out_slot);
        if (s.ok()) {
          Stopwatch start;
          s = decoder_.Decode(c, t.chunk, src, out);
          times_->decompress += start.Seconds();
        }
        Release(p.read_slot);
        if (s.ok() && verify_raw_) s = verify(out, c.raw_size, c.raw_xxh3, "decoded");
        if (s.ok()) s = Sink(t.chunk, out);
        if (s.ok() && out_slot >= 0) {
          Stopwatch start;
          s = backend_->Copy(region.address + c.dst_offset, out, c.raw_size, GlobalSlot(out_slot));
          times_->copy += start.Seconds();
          slot_has_copy_[out_slot] = true;
        }
        Release(out_slot);
        return s;
      }
    }
    return InternalError("unknown route");
  }

  Status Loop() {
    size_t next = 0;
    std::vector<ReadCompletion> done;
    const size_t n = work_.tasks.size();
    while (next < n || !pending_.empty()) {
      if (cancel_->load(std::memory_order_relaxed)) return CancelledError("another worker failed");
      if (stop_ && stop_->load(std::memory_order_relaxed)) {
        cancel_->store(true, std::memory_order_relaxed);
        return CancelledError("restore cancelled by the caller");
      }
      // Fill the queue while slots and queue depth allow.
      while (next < n) {
        const ChunkTask& t = work_.tasks[next];
        const int need = SlotsNeeded(t);
        const size_t ops = ReadsOf(t);
        if (static_cast<int>(free_slots_.size()) < need) break;
        if (queue_->in_flight() + ops > queue_->depth()) break;
        STASIS_RETURN_IF_ERROR(SubmitTask(next));
        ++next;
      }
      if (pending_.empty()) {
        if (next == n) continue;  // the last tasks completed on submission (mapped)
        // Nothing in flight and the next task still does not fit: it never will.
        return InternalError("restore pipeline stalled: chunk " + Num(work_.tasks[next].chunk) +
                             " needs " + Num(SlotsNeeded(work_.tasks[next])) + " slots and " +
                             Num(ReadsOf(work_.tasks[next])) + " reads; the worker has " +
                             Num(free_slots_.size()) + " slots and queue depth " +
                             Num(queue_->depth()));
      }
      done.clear();
      Stopwatch start;
      STASIS_RETURN_IF_ERROR(queue_->Wait(1, &done));
      times_->read += start.Seconds();
      for (const ReadCompletion& r : done) {
        auto it = pending_.find(r.user_data);
        if (it == pending_.end()) return InternalError("completion for an unknown read");
        if (!r.status.ok() && it->second.status.ok()) it->second.status = r.status;
        if (--it->second.ops == 0) STASIS_RETURN_IF_ERROR(Complete(r.user_data));
      }
    }
    return OkStatus();
  }

  const format::Manifest& m_;
  const RestorePlan& plan_;
  const WorkerPlan& work_;
  int index_;
  ReadEngine* engine_;
  DeviceBackend* backend_;
  const std::vector<MappedRegion>& regions_;
  uint8_t* staging_;
  bool verify_raw_;
  bool verify_stored_;
  static constexpr uint64_t kFaultStride = 4096;
  uint8_t touched_ = 0;  // keeps the fault-in reads
  std::atomic<bool>* cancel_;
  const std::atomic<bool>* stop_;
  std::atomic<uint64_t>* progress_;
  internal::MapLease* lease_;
  ChunkSink* sink_;
  WorkerTimes* times_ = nullptr;
  std::unique_ptr<ReadQueue> queue_;
  std::vector<int> free_slots_;
  std::vector<bool> slot_has_copy_;
  std::map<size_t, Pending> pending_;
  bool abandoned_reads_ = false;
  ChunkDecoder decoder_;
};

}  // namespace

Status RunPipelineWorker(const PipelineWorkerArgs& args, WorkerTimes* times,
                         bool* abandoned_reads) {
  PipelineWorker worker(*args.manifest, *args.plan, args.plan->workers[args.index], args.index,
                        args.engine, args.backend, *args.regions, args.staging, args.verify_raw,
                        args.verify_stored, args.cancel, args.stop, args.progress, args.lease,
                        args.sink);
  Status s = worker.Run(times);
  *abandoned_reads = worker.abandoned_reads();
  return s;
}

}  // namespace stasis
