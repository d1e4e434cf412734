#include "restore/restored_model.h"

#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "common/hash.h"
#include "restore/file_read_engine.h"
#include "restore/restore_plan.h"
#include "snapshot/codec.h"
#include "snapshot/image_reader.h"

namespace stasis {
namespace {

// The reader and the engine open the path separately. A rename between the two (`stasis
// snapshot --force` replaces images that way) would pair one image's manifest with another
// file's bytes: wrong bytes without checksums, SIGBUS where chunks are mapped past its end.
Status CheckSameFile(const std::string& image, const RandomAccessFile& manifest_file,
                     const ReadEngine& engine) {
  bool same = engine.file_size() == manifest_file.Size();
  struct stat a, b;
  if (same && manifest_file.fd() >= 0 && engine.MappableFd() >= 0 &&
      ::fstat(manifest_file.fd(), &a) == 0 && ::fstat(engine.MappableFd(), &b) == 0)
    same = a.st_dev == b.st_dev && a.st_ino == b.st_ino;
  if (same) return OkStatus();
  return Status(StatusCode::kAborted,
                image + " was replaced while it was being opened; restore it again");
}

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string Num(uint64_t v) { return std::to_string(v); }

// Per-worker phase accounting, summed after the pipeline.
struct WorkerTimes {
  double read = 0, verify = 0, decompress = 0, copy = 0;
  uint64_t in_place = 0;
  uint64_t mapped = 0;
};

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22  // Linux 5.14
#endif

}  // namespace

struct RestoredModel::State {
  std::string image;
  RestoreOptions options;
  std::unique_ptr<ImageReader> reader;
  std::unique_ptr<ReadEngine> engine;
  // A worker's queue kept reads it could not reap: the kernel may still write into the
  // staging and the regions, so neither is ever freed (see ~RestoredModel).
  bool abandoned_reads = false;
};

// One worker of the pipeline: runs its share of the plan with its own read queue, staging
// slots and decoder. Stops early when another worker failed.
class PipelineWorker {
 public:
  PipelineWorker(const format::Manifest& m, const RestorePlan& plan, const WorkerPlan& work,
                 int index, ReadEngine* engine, DeviceBackend* backend,
                 const std::vector<MappedRegion>& regions, uint8_t* staging, bool verify_raw,
                 bool verify_stored, std::atomic<bool>* cancel)
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
        cancel_(cancel) {}

  Status Run(WorkerTimes* times) {
    times_ = times;
    STASIS_ASSIGN_OR_RETURN(queue_, engine_->NewQueue());
    for (int s = 0; s < plan_.slots_per_worker; ++s) free_slots_.push_back(s);
    slot_has_copy_.assign(plan_.slots_per_worker, false);
    Status status = Loop();
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
    int out_slot = -1;  // a staged decode's output, taken with its read slot
    int ops = 0;        // reads outstanding
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
      auto t = Clock::now();
      STASIS_RETURN_IF_ERROR(backend_->WaitCopies(GlobalSlot(s)));
      times_->copy += Since(t);
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

  // Reads a task submits at once.
  size_t ReadsOf(const ChunkTask& t) const {
    if (t.route == ChunkRoute::kMapInPlace) return 0;
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
      uint8_t* dst = regions_[c.region_id].host_view + c.dst_offset;
      auto start = Clock::now();
      void* got = ::mmap(dst, c.stored_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED,
                         engine_->MappableFd(), static_cast<off_t>(c.file_offset));
      if (got == MAP_FAILED)
        return ErrnoToStatus(errno, "chunk " + Num(t.chunk) + ": map the image");
      if (!verify_stored_) {
        const volatile uint8_t* bytes = dst;
        uint8_t sink = 0;
        for (uint64_t off = 0; off < c.stored_size; off += kFaultStride) sink ^= bytes[off];
        touched_ ^= sink;
      }
      times_->read += Since(start);
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

  void Release(int s) {
    if (s >= 0) free_slots_.push_back(s);
  }

  // All reads of task `ti` are done: verify, decode and copy it.
  Status Complete(size_t ti) {
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
      auto start = Clock::now();
      bool ok = Xxh3(bytes, n) == expect;
      times_->verify += Since(start);
      if (!ok) return DataLossError(what + ": checksum mismatch in " + kind + " bytes");
      return OkStatus();
    };
    // The stored bytes' check, unless the caller turned it off (verify_stored).
    auto verify_stored = [&](const void* bytes) -> Status {
      return verify_stored_ ? verify(bytes, c.stored_size, c.stored_xxh3, "stored") : OkStatus();
    };
    switch (t.route) {
      case ChunkRoute::kMapInPlace: {
        times_->mapped++;
        return verify_stored(region.host_view + c.dst_offset);
      }
      case ChunkRoute::kReadInPlace: {
        uint8_t* dst = region.host_view + c.dst_offset;
        if (p.read_slot >= 0)
          std::memcpy(dst + t.in_place_bytes, Slot(p.read_slot), c.stored_size - t.in_place_bytes);
        Release(p.read_slot);
        times_->in_place++;
        return verify_stored(dst);
      }
      case ChunkRoute::kStagedCopy: {
        const uint8_t* src = Slot(p.read_slot) + head;
        s = verify_stored(src);
        if (s.ok()) {
          auto start = Clock::now();
          s = backend_->Copy(region.address + c.dst_offset, src, c.raw_size,
                             GlobalSlot(p.read_slot));
          times_->copy += Since(start);
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
          auto start = Clock::now();
          s = decoder_.Decode(c, t.chunk, src, out);
          times_->decompress += Since(start);
        }
        Release(p.read_slot);
        if (s.ok() && verify_raw_) s = verify(out, c.raw_size, c.raw_xxh3, "decoded");
        if (s.ok() && out_slot >= 0) {
          auto start = Clock::now();
          s = backend_->Copy(region.address + c.dst_offset, out, c.raw_size, GlobalSlot(out_slot));
          times_->copy += Since(start);
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
      auto start = Clock::now();
      STASIS_RETURN_IF_ERROR(queue_->Wait(1, &done));
      times_->read += Since(start);
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
  WorkerTimes* times_ = nullptr;
  std::unique_ptr<ReadQueue> queue_;
  std::vector<int> free_slots_;
  std::vector<bool> slot_has_copy_;
  std::map<size_t, Pending> pending_;
  bool abandoned_reads_ = false;
  ChunkDecoder decoder_;
};

StatusOr<std::unique_ptr<RestoredModel>> RestoredModel::Restore(const std::string& image,
                                                                const RestoreOptions& options) {
  auto start = Clock::now();
  std::unique_ptr<RestoredModel> model(new RestoredModel());
  model->state_ = std::make_unique<State>();
  State& st = *model->state_;
  st.image = image;
  st.options = options;
  RestoreReport& report = model->report_;
  report.image = image;
  report.device = options.device;

  if (options.queue_depth < 2 || options.queue_depth > 4096)
    return InvalidArgumentError(
        "restore: queue depth must be 2..4096 (a chunk read in place "
        "can need two reads at once), not " +
        std::to_string(options.queue_depth));
  // Open: footer, manifest (validated), and the read engine.
  auto t = Clock::now();
  STASIS_ASSIGN_OR_RETURN(st.reader, ImageReader::Open(image, options.fs));
  if (options.fs != nullptr) {
    STASIS_ASSIGN_OR_RETURN(
        st.engine,
        NewFileSystemReadEngine(options.fs, image, options.queue_depth, options.fault_hook));
  } else {
    ReadEngineOptions ro;
    ro.backend = options.io;
    ro.direct = options.direct;
    ro.queue_depth = options.queue_depth;
    ro.fault_hook = options.fault_hook;
    ro.yield_io = options.yield_io;
    STASIS_ASSIGN_OR_RETURN(st.engine, OpenReadEngine(image, ro));
  }
  report.io = st.engine->report();
  STASIS_RETURN_IF_ERROR(CheckSameFile(image, st.reader->file(), *st.engine));
  report.phases.open = Since(t);

  // The device backend, then every region mapped (at its recorded address when free).
  t = Clock::now();
  if (options.backend_factory) {
    STASIS_ASSIGN_OR_RETURN(model->backend_, options.backend_factory(options.device));
  } else if (options.device.kind == format::DeviceKind::kCpu) {
    model->backend_ = NewHostBackend(options.huge_pages);
  } else {
    return UnimplementedError("no backend for device " + DeviceSpecString(options.device) +
                              " (pass RestoreOptions::backend_factory)");
  }
  const format::Manifest& m = st.reader->manifest();
  for (const auto& r : m.regions) {
    auto mapped = model->backend_->MapRegion(r);
    if (!mapped.ok())
      return mapped.status().WithContext("map region " + Num(model->regions_.size()));
    model->regions_.push_back(*mapped);
    report.regions_with_hint += r.va_hint != 0;
    report.regions_at_hint += mapped->at_hint;
  }
  report.regions = m.regions.size();
  model->loaded_ = true;
  report.phases.map = Since(t);

  for (const auto& ti : m.tensors) {
    RestoredTensor rt;
    rt.name = ti.name;
    rt.dtype = ti.dtype;
    rt.shape = ti.shape;
    rt.strides = ti.strides;
    rt.region = ti.region_id;
    rt.address = model->regions_[ti.region_id].address + ti.byte_offset;
    rt.byte_size = ti.byte_size;
    rt.device = options.device;
    model->tensors_.push_back(std::move(rt));
  }
  STASIS_RETURN_IF_ERROR(model->RunPipeline());
  report.phases.total = Since(start);
  spdlog::debug("restored {}: {} bytes in {:.3f} s via {}", image, report.raw_bytes,
                report.phases.total, IoBackendName(report.io.backend));
  return model;
}

Status RestoredModel::RunPipeline() {
  State& st = *state_;
  RestoreReport& report = report_;
  const format::Manifest& m = st.reader->manifest();
  auto t = Clock::now();
  PlanOptions po;
  // Default workers: one per core; twice that for direct (cold) reads, so that one
  // worker's decode overlaps another's wait on the device (measured on a 1 GiB bf16 image,
  // 2 cores, cold: 1.64-1.98 GB/s with 2 workers, 1.98-2.51 with 4).
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  po.workers =
      st.options.threads > 0 ? st.options.threads : cores * (st.engine->report().direct ? 2 : 1);
  po.staging_bytes = st.options.staging_bytes;
  po.alignment = std::max<uint32_t>(1, st.engine->report().alignment);
  po.destination_host_visible =
      !regions_.empty() && std::all_of(regions_.begin(), regions_.end(), [](const MappedRegion& r) {
        return r.host_view != nullptr || r.size == 0;
      });
  if (po.destination_host_visible)
    for (const auto& r : regions_) po.region_addresses.push_back(r.address);
  // Mapping beats reading only when the pages are already in the page cache; a cold image
  // streams faster through (direct) reads than through page faults.
  const ReadEngineReport& io = st.engine->report();
  const bool can_map = po.destination_host_visible && st.engine->MappableFd() >= 0 &&
                       std::all_of(regions_.begin(), regions_.end(), [](const MappedRegion& r) {
                         return r.host_view_mappable || r.size == 0;
                       });
  po.map_raw_chunks = can_map && (st.options.map_file == RestoreOptions::MapFile::kOn ||
                                  (st.options.map_file == RestoreOptions::MapFile::kAuto &&
                                   !io.direct && io.resident_fraction >= 0.9));
  po.page_size = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  // Slots are addressed by global index in the backend, which tracks kMaxSlots.
  const int slots_cap = po.max_slots_per_worker;
  auto cap_slots = [&] {
    po.max_slots_per_worker =
        std::max(2, std::min(slots_cap, DeviceBackend::kMaxSlots / std::max(po.workers, 1)));
  };
  cap_slots();
  StatusOr<RestorePlan> planned = PlanRestore(m, po);
  // The default worker count follows the cores; with many cores and large chunks it can ask
  // for more slots than the staging memory holds. Fewer workers then, not an error (an
  // explicit --threads keeps its error).
  while (!planned.ok() && st.options.threads <= 0 && po.workers > 1 &&
         planned.status().code() == StatusCode::kInvalidArgument) {
    po.workers = std::max(1, po.workers / 2);
    cap_slots();
    planned = PlanRestore(m, po);
  }
  STASIS_RETURN_IF_ERROR(planned.status());
  RestorePlan plan = std::move(planned).value();
  report.phases.plan = Since(t);
  report.workers = static_cast<int>(plan.workers.size());
  report.staging_bytes = plan.staging_bytes;
  report.verified_raw = st.options.verify;
  report.verified_stored = st.options.verify_stored;
  report.chunks = m.chunks.size();
  report.stored_bytes = m.StoredBytes();
  report.raw_bytes = m.RawBytes();
  if (static_cast<uint64_t>(plan.slots_per_worker) * plan.workers.size() > DeviceBackend::kMaxSlots)
    return InternalError("plan uses more staging slots than the backend tracks");

  t = Clock::now();
  uint8_t* staging = nullptr;
  if (plan.staging_bytes > 0) {
    STASIS_ASSIGN_OR_RETURN(staging, backend_->AllocateStaging(plan.staging_bytes));
    st.engine->SetFixedBuffers({{staging, plan.staging_bytes}});
  }
  std::atomic<bool> cancel{false}, abandoned{false};
  std::vector<WorkerTimes> times(plan.workers.size());
  std::vector<Status> results(plan.workers.size());
  {
    std::vector<std::thread> threads;
    for (size_t w = 0; w < plan.workers.size(); ++w) {
      threads.emplace_back([&, w] {
        uint8_t* mine = staging ? staging + w * plan.slot_size * plan.slots_per_worker : nullptr;
        PipelineWorker worker(m, plan, plan.workers[w], static_cast<int>(w), st.engine.get(),
                              backend_.get(), regions_, mine, st.options.verify,
                              st.options.verify_stored, &cancel);
        results[w] = worker.Run(&times[w]);
        if (!results[w].ok()) cancel = true;
        if (worker.abandoned_reads()) abandoned = true;
      });
    }
    for (auto& th : threads) th.join();
  }
  if (abandoned) {
    // Never hand memory the kernel may still write back to the allocator.
    st.abandoned_reads = true;
    spdlog::error(
        "restore of {}: reads that could not be reaped are still in flight; "
        "leaking the staging memory and the regions",
        st.image);
    for (const Status& r : results)
      if (!r.ok()) return r.WithContext("reads could not be reaped");
    return InternalError("restore of " + st.image + ": reads could not be reaped");
  }
  if (staging) backend_->FreeStaging(staging);
  report.phases.pipeline_wall = Since(t);
  report.io = st.engine->report();  // now says whether the queues registered the staging
  report.phases.read = report.phases.verify = report.phases.decompress = report.phases.copy = 0;
  report.chunks_read_in_place = 0;
  report.chunks_mapped = 0;
  for (const auto& wt : times) {
    report.phases.read += wt.read;
    report.phases.verify += wt.verify;
    report.phases.decompress += wt.decompress;
    report.phases.copy += wt.copy;
    report.chunks_read_in_place += wt.in_place;
    report.chunks_mapped += wt.mapped;
  }
  // The root cause, not a worker that merely stopped because another failed.
  for (const Status& s : results)
    if (!s.ok() && s.code() != StatusCode::kCancelled)
      return s.WithContext("restore '" + st.image + "'");
  for (const Status& s : results)
    if (!s.ok()) return s;
  return OkStatus();
}

RestoredModel::~RestoredModel() {
  if (!backend_) return;
  if (state_ && state_->abandoned_reads) {
    (void)backend_.release();  // its staging and regions may still be written by the kernel
    return;
  }
  for (const auto& r : regions_) {
    Status s = backend_->UnmapRegion(r);
    if (!s.ok()) spdlog::warn("unmapping a region failed: {}", s.ToString());
  }
}

const format::Manifest& RestoredModel::manifest() const { return state_->reader->manifest(); }

StatusOr<std::string> RestoredModel::ReadSection(std::string_view name) const {
  return state_->reader->ReadSection(name);
}

const RestoredTensor* RestoredModel::FindTensor(std::string_view name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

uint64_t RestoredModel::device_bytes() const {
  if (!loaded_) return 0;
  uint64_t n = 0;
  for (const auto& r : regions_) n += r.reserved;
  return n;
}

Status RestoredModel::Unload() {
  if (!loaded_) return OkStatus();
  STASIS_RETURN_IF_ERROR(backend_->Synchronize());
  for (const auto& r : regions_) STASIS_RETURN_IF_ERROR(backend_->Unload(r));
  loaded_ = false;
  return OkStatus();
}

Status RestoredModel::Reload() {
  if (loaded_) return OkStatus();
  auto start = Clock::now();
  auto t = Clock::now();
  for (const auto& r : regions_) STASIS_RETURN_IF_ERROR(backend_->Reload(r));
  report_.phases = RestorePhases{};
  report_.phases.map = Since(t);
  loaded_ = true;
  Status s = RunPipeline();
  if (!s.ok()) {
    // Half-restored memory is worse than none: release it, stay unloaded.
    Unload().IgnoreError();
    return s;
  }
  report_.phases.total = Since(start);
  return OkStatus();
}

}  // namespace stasis
