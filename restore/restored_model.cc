#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <thread>

#include "common/numbers.h"
#include "common/stopwatch.h"
#include "restore/device/open_backend.h"
#include "restore/image_cache.h"
#include "restore/io/file_read_engine.h"
#include "restore/io/http_read_engine.h"
#include "restore/io/read_engine.h"
#include "restore/io/remote_image.h"
#include "restore/map_lease.h"
#include "restore/pipeline_worker.h"
#include "restore/restore_plan.h"
#include "stasis/image.h"
#include "stasis/restore.h"

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

// Which file a restore read: device and inode (unknown through the FileSystem seam).
struct FileId {
  bool known = false;
  dev_t dev = 0;
  ino_t ino = 0;
  bool operator==(const FileId& o) const {
    return known == o.known && dev == o.dev && ino == o.ino;
  }
};

FileId IdentityOf(const ReadEngine& engine) {
  FileId id;
  struct stat st;
  if (engine.MappableFd() >= 0 && ::fstat(engine.MappableFd(), &st) == 0) {
    id.known = true;
    id.dev = st.st_dev;
    id.ino = st.st_ino;
  }
  return id;
}

// Open: footer, manifest (validated), and the read engine, checked to be the same file.
// `etag`: a remote object's ETag ("" for files).
Status OpenSource(const std::string& image, const RestoreOptions& options,
                  std::unique_ptr<ImageReader>* reader, std::unique_ptr<ReadEngine>* engine,
                  std::string* etag) {
  if (options.fs == nullptr && IsRemoteLocation(image)) {
    // One pinned object serves both: the manifest and the chunks come from the same ETag.
    STASIS_ASSIGN_OR_RETURN(std::shared_ptr<const RemoteObject> object,
                            RemoteObject::Open(image, options.remote));
    STASIS_ASSIGN_OR_RETURN(*reader, OpenRemoteImageReader(object));
    STASIS_ASSIGN_OR_RETURN(*engine, NewHttpReadEngine(object, options.queue_depth));
    *etag = object->etag();
    return OkStatus();
  }
  STASIS_ASSIGN_OR_RETURN(*reader, ImageReader::Open(image, options.fs));
  if (options.fs != nullptr) {
    STASIS_ASSIGN_OR_RETURN(*engine, NewFileSystemReadEngine(options.fs, image, options.queue_depth,
                                                             options.fault_hook));
  } else {
    ReadEngineOptions ro;
    ro.backend = options.io;
    ro.direct = options.direct;
    ro.queue_depth = options.queue_depth;
    ro.fault_hook = options.fault_hook;
    ro.yield_io = options.yield_io;
    STASIS_ASSIGN_OR_RETURN(*engine, OpenReadEngine(image, ro));
  }
  return CheckSameFile(image, (*reader)->file(), **engine);
}

// What OpenImage opened: the reader and engine the pipeline reads (the image's, or its
// cache entry's), and the cache tier's part in it.
struct Opened {
  std::unique_ptr<ImageReader> reader;
  std::unique_ptr<ReadEngine> engine;
  FileId source;  // the image's own file (unknown for remote ones), whatever is read
  std::unique_ptr<CacheFill> fill;  // set when this restore fills an entry
  std::string cache_report;         // RestoreReport::cache
  std::string hit_entry, key;       // the entry read (a hit), and the image's key
};

// OpenSource, through the cache tier when options.cache asks for one: an entry of the
// image, when there is one that matches it, is what is read; else this process fills one
// when it can. An entry that fails to open or differs from the image is removed.
Status OpenImage(const std::string& image, const RestoreOptions& options, Opened* out) {
  std::string etag;
  STASIS_RETURN_IF_ERROR(OpenSource(image, options, &out->reader, &out->engine, &etag));
  out->source = IdentityOf(*out->engine);
  const CacheOptions& cache = options.cache;
  if (cache.dir.empty() || options.fs != nullptr) return OkStatus();
  const format::Manifest& m = out->reader->manifest();
  const bool compressed = std::any_of(m.chunks.begin(), m.chunks.end(),
                                      [](const auto& c) { return c.codec != format::Codec::kRaw; });
  if (!IsRemoteLocation(image) && !compressed) {
    out->cache_report = "not cached: a local raw image is read as it is";
    return OkStatus();
  }
  out->key = CacheKey(out->reader->footer(), etag);
  std::string unusable;
  if (std::optional<std::string> entry = FindCacheEntry(cache.dir, out->key)) {
    std::unique_ptr<ImageReader> r;
    std::unique_ptr<ReadEngine> e;
    std::string unused;
    Status s = OpenSource(*entry, options, &r, &e, &unused);
    const std::string difference = s.ok() ? EntryDifference(m, r->manifest()) : "";
    if (s.ok() && difference.empty()) {
      TouchCacheEntry(*entry);
      out->reader = std::move(r);
      out->engine = std::move(e);
      out->hit_entry = *entry;
      out->cache_report = "hit " + *entry;
      return OkStatus();
    }
    // Stale, damaged or planted: it goes, and this restore fills it again.
    unusable = "entry " + *entry + " unusable (" +
               (s.ok() ? difference : std::string(s.message())) + "); ";
    Status removed = RemoveCacheEntry(cache.dir, out->key);
    spdlog::warn("cache: {}{}", unusable,
                 removed.ok() ? std::string("removed") : std::string(removed.message()));
  }
  if (!options.verify || !options.verify_stored) {
    out->cache_report =
        unusable + "not filled: an entry holds only checked bytes, and checksums are off";
    return OkStatus();
  }
  StatusOr<std::unique_ptr<CacheFill>> begun = CacheFill::Begin(cache.dir, out->key, *out->reader);
  if (!begun.ok()) {
    out->cache_report = unusable + "not filled: " + std::string(begun.status().message());
    spdlog::warn("cache: {}", out->cache_report);
    return OkStatus();
  }
  if (*begun == nullptr) {
    out->cache_report = unusable + "another process is filling " + cache.dir + "/" + out->key +
                        ".stasis; read from the source";
    return OkStatus();
  }
  out->fill = std::move(begun).value();
  out->cache_report = unusable + "filling " + out->fill->entry_path();
  return OkStatus();
}

// A restore from a cache entry failed in a way the entry may be to blame for (a checksum,
// a short file, an I/O error): the entry goes, so the next open reads the image itself.
bool DropEntryAfter(const Status& failure, const std::string& hit_entry, const std::string& key,
                    const CacheOptions& cache) {
  if (hit_entry.empty()) return false;
  const StatusCode c = failure.code();
  if (c != StatusCode::kDataLoss && c != StatusCode::kOutOfRange && c != StatusCode::kUnavailable)
    return false;
  Status removed = RemoveCacheEntry(cache.dir, key);
  spdlog::warn("cache: restoring from {} failed ({}); {}", hit_entry, failure.ToString(),
               removed.ok() ? std::string("removed it") : std::string(removed.message()));
  return true;
}

// "" when `now` lays its tensors out as `was` does, in regions that fit where `was`'s were
// placed (so every address handed out stays right), else the first difference. Chunks,
// codecs, address hints, sections and metadata may differ.
std::string LayoutDifference(const format::Manifest& was, const format::Manifest& now,
                             const std::vector<MappedRegion>& placed) {
  if (was.regions.size() != now.regions.size())
    return Num(now.regions.size()) + " regions, not " + Num(was.regions.size());
  for (size_t i = 0; i < was.regions.size(); ++i) {
    const format::RegionInfo &a = was.regions[i], &b = now.regions[i];
    if (a.size != b.size || a.device_kind != b.device_kind)
      return "region " + Num(i) + " differs in size or device";
    if (b.alignment > 1 && placed[i].address % b.alignment != 0)
      return "region " + Num(i) + " asks for an alignment of " + Num(b.alignment) +
             " its address does not have";
  }
  if (was.tensors.size() != now.tensors.size())
    return Num(now.tensors.size()) + " tensors, not " + Num(was.tensors.size());
  for (size_t i = 0; i < was.tensors.size(); ++i) {
    const format::TensorRef a = was.tensors[i];
    if (!format::SameTensor(a, now.tensors[i]))
      return "tensor " + Num(i) + " ('" + std::string(a.name) + "') differs";
  }
  return "";
}

// The restore succeeded: the entry it filled goes live, then the cache is trimmed to its
// budget. Failures are reported, never returned: the restore itself is done.
void PublishCacheEntry(CacheFill* fill, const CacheOptions& cache, std::string* report) {
  Stopwatch t;
  Status s = fill->Publish();
  // "filling X" becomes the outcome; what came before it (an entry removed) stays.
  const size_t filling = report->rfind("filling ");
  const std::string before = filling == std::string::npos ? "" : report->substr(0, filling);
  if (!s.ok()) {
    *report = before + "fill failed: " + std::string(s.message());
    spdlog::warn("cache: {}", *report);
    return;
  }
  *report = before + "filled " + fill->entry_path();
  spdlog::info("cache: published {} in {:.3f} s", fill->entry_path(), t.Seconds());
  if (cache.max_bytes == 0) return;
  StatusOr<std::vector<CacheEntry>> removed =
      PruneCache(cache.dir, cache.max_bytes, fill->entry_path());
  if (!removed.ok())
    spdlog::warn("cache: pruning {}: {}", cache.dir, removed.status().ToString());
  else
    for (const CacheEntry& e : *removed) spdlog::info("cache: evicted {}", e.path);
}

}  // namespace

struct RestoredModel::State {
  std::string image;
  std::string shown;  // `image` as messages show it (a presigned URL's query cut off)
  RestoreOptions options;
  std::unique_ptr<ImageReader> reader;
  std::unique_ptr<ReadEngine> engine;
  FileId file;  // what `engine` reads
  // The read lease the map route's chunks are mapped under (null when nothing is mapped).
  // Dropped by Unload (the ranges become anonymous again), copied out on a break.
  std::shared_ptr<internal::MapLease> lease;
  // The cache entry this restore fills, until RunPipeline publishes or drops it.
  std::unique_ptr<CacheFill> fill;
  std::string hit_entry, key;  // the cache entry read, if any, and the image's key

  // Takes what OpenImage opened.
  void Take(Opened&& o, std::string* cache_report) {
    reader = std::move(o.reader);
    engine = std::move(o.engine);
    file = o.source;
    fill = std::move(o.fill);
    hit_entry = std::move(o.hit_entry);
    key = std::move(o.key);
    *cache_report = std::move(o.cache_report);
  }
  // A worker's queue kept reads it could not reap: the kernel may still write into the
  // staging and the regions, so neither is ever freed (see ~RestoredModel).
  bool abandoned_reads = false;
};

StatusOr<std::unique_ptr<RestoredModel>> RestoredModel::Restore(const std::string& image,
                                                                const RestoreOptions& options) {
  Stopwatch start;
  std::unique_ptr<RestoredModel> model(new RestoredModel());
  model->state_ = std::make_unique<State>();
  State& st = *model->state_;
  st.image = image;
  st.shown = IsRemoteLocation(image) ? RedactLocation(image) : image;
  st.options = options;
  RestoreReport& report = model->report_;
  report.image = st.shown;
  report.device = options.device;

  if (options.queue_depth < 2 || options.queue_depth > 4096)
    return InvalidArgumentError(
        "restore: queue depth must be 2..4096 (a chunk read in place "
        "can need two reads at once), not " +
        std::to_string(options.queue_depth));
  Stopwatch t;
  Opened opened;
  STASIS_RETURN_IF_ERROR(OpenImage(image, options, &opened));
  st.Take(std::move(opened), &report.cache);
  report.io = st.engine->report();
  report.phases.open = t.Seconds();

  // The device backend, then every region mapped (at its recorded address when free).
  t.Restart();
  if (options.backend_factory) {
    STASIS_ASSIGN_OR_RETURN(model->backend_, options.backend_factory(options.device));
  } else {
    STASIS_ASSIGN_OR_RETURN(model->backend_, OpenDeviceBackend(options.device, options.huge_pages));
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
  report.phases.map = t.Seconds();

  model->tensors_ = m.tensors;  // shared, not copied
  Status s = model->RunPipeline();
  if (!s.ok() && DropEntryAfter(s, st.hit_entry, st.key, options.cache)) {
    // The entry failed and is gone: once more, from the image itself (which fills it again).
    const std::string failed = st.hit_entry;
    Opened again;
    STASIS_RETURN_IF_ERROR(OpenImage(image, options, &again));
    if (const std::string d = LayoutDifference(m, again.reader->manifest(), model->regions_);
        !d.empty())
      return s;  // cannot happen: the entry matched the image (EntryDifference)
    std::string cache_report;
    st.Take(std::move(again), &cache_report);  // regions stay: the layout is the same
    model->tensors_ = st.reader->manifest().tensors;
    report.cache =
        "entry " + failed + " failed (" + std::string(s.message()) + "), removed; " + cache_report;
    s = model->RunPipeline();
  }
  STASIS_RETURN_IF_ERROR(s);
  report.phases.total = start.Seconds();
  spdlog::debug("restored {}: {} bytes in {:.3f} s via {}", st.shown, report.raw_bytes,
                report.phases.total, IoBackendName(report.io.backend));
  return model;
}

StatusOr<RestoreOptions::MapFile> RestoreOptions::ParseMapFile(std::string_view name) {
  if (name == "auto") return MapFile::kAuto;
  if (name == "on") return MapFile::kOn;
  if (name == "off") return MapFile::kOff;
  return InvalidArgumentError("map_file must be auto, on or off, not '" + std::string(name) + "'");
}

Status RestoredModel::RunPipeline() {
  State& st = *state_;
  RestoreReport& report = report_;
  // Dropped (its partial file removed) on every way out but a published entry.
  std::unique_ptr<CacheFill> fill = std::move(st.fill);
  const format::Manifest& m = st.reader->manifest();
  Stopwatch t;
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
  const int initial_workers = po.workers;
  auto make_plan = [&]() -> StatusOr<RestorePlan> {
    cap_slots();
    StatusOr<RestorePlan> planned = PlanRestore(m, po);
    // The default worker count follows the cores; with many cores and large chunks it can
    // ask for more slots than the staging memory holds. Fewer workers then, not an error
    // (an explicit --threads keeps its error).
    while (!planned.ok() && st.options.threads <= 0 && po.workers > 1 &&
           planned.status().code() == StatusCode::kInvalidArgument) {
      po.workers = std::max(1, po.workers / 2);
      cap_slots();
      planned = PlanRestore(m, po);
    }
    return planned;
  };
  STASIS_ASSIGN_OR_RETURN(RestorePlan plan, make_plan());
  // Never map without a read lease: without one a writer could change (or truncate) the
  // file under memory already checked. The lease is asked for only when the plan maps.
  st.lease.reset();
  uint64_t map_bytes = 0;
  for (const auto& w : plan.workers)
    for (const auto& task : w.tasks)
      if (task.route == ChunkRoute::kMapInPlace) map_bytes += m.chunks[task.chunk].stored_size;
  if (st.options.map_file == RestoreOptions::MapFile::kOff) {
    report.map_reason = "map off";
  } else if (!can_map) {
    report.map_reason = "the destination or the reader cannot map";
  } else if (!po.map_raw_chunks) {
    report.map_reason = "the image is not page-cache hot, or is read directly";
  } else if (map_bytes == 0) {
    report.map_reason = "no chunk is raw whole pages";
  } else {
    StatusOr<std::shared_ptr<internal::MapLease>> lease =
        internal::MapLease::Acquire(st.engine->MappableFd(), map_bytes, st.options.lease_seam);
    if (lease.ok()) {
      st.lease = std::move(lease).value();
      report.map_reason = "mapped under a read lease";
    } else {
      report.map_reason = std::string(lease.status().message()) + "; copied";
      spdlog::info("restore of {}: {}", st.shown, report.map_reason);
      po.map_raw_chunks = false;
      po.workers = initial_workers;
      STASIS_ASSIGN_OR_RETURN(plan, make_plan());
    }
  }
  report.phases.plan = t.Seconds();
  report.workers = static_cast<int>(plan.workers.size());
  report.staging_bytes = plan.staging_bytes;
  report.verified_raw = st.options.verify;
  report.verified_stored = st.options.verify_stored;
  report.chunks = m.chunks.size();
  report.stored_bytes = m.StoredBytes();
  report.raw_bytes = m.RawBytes();
  if (static_cast<uint64_t>(plan.slots_per_worker) * plan.workers.size() > DeviceBackend::kMaxSlots)
    return InternalError("plan uses more staging slots than the backend tracks");

  t.Restart();
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
    threads.reserve(plan.workers.size());
    for (size_t w = 0; w < plan.workers.size(); ++w) {
      auto work = [&, w] {
        uint8_t* mine = staging ? staging + w * plan.slot_size * plan.slots_per_worker : nullptr;
        PipelineWorkerArgs args;
        args.manifest = &m;
        args.plan = &plan;
        args.index = static_cast<int>(w);
        args.engine = st.engine.get();
        args.backend = backend_.get();
        args.regions = &regions_;
        args.staging = mine;
        args.verify_raw = st.options.verify;
        args.verify_stored = st.options.verify_stored;
        args.cancel = &cancel;
        args.stop = st.options.cancel;
        args.progress = st.options.progress;
        args.lease = st.lease.get();
        args.sink = fill.get();
        bool abandoned_reads = false;
        results[w] = RunPipelineWorker(args, &times[w], &abandoned_reads);
        if (!results[w].ok()) cancel = true;
        if (abandoned_reads) abandoned = true;
      };
      try {
        threads.emplace_back(std::move(work));
      } catch (const std::exception& e) {  // std::system_error, or bad_alloc for its state
        // No thread left in this process: the workers started stop at their next chunk.
        cancel = true;
        for (auto& th : threads) th.join();
        if (abandoned) {  // as below: never hand memory the kernel may still write to
          st.abandoned_reads = true;
          return InternalError("restore of " + st.shown +
                               ": reads could not be reaped after a thread failed to start");
        }
        if (staging) backend_->FreeStaging(staging);
        return ResourceExhaustedError("cannot start restore worker " + Num(w) + " of " +
                                      Num(plan.workers.size()) + ": " + e.what());
      }
    }
    for (auto& th : threads) th.join();
  }
  if (abandoned) {
    // Never hand memory the kernel may still write back to the allocator.
    st.abandoned_reads = true;
    spdlog::error(
        "restore of {}: reads that could not be reaped are still in flight; "
        "leaking the staging memory and the regions",
        st.shown);
    for (const Status& r : results)
      if (!r.ok()) return r.WithContext("reads could not be reaped");
    return InternalError("restore of " + st.shown + ": reads could not be reaped");
  }
  if (staging) backend_->FreeStaging(staging);
  report.phases.pipeline_wall = t.Seconds();
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
      return s.WithContext("restore '" + st.shown + "'");
  if (st.options.cancel && st.options.cancel->load())
    for (const Status& s : results)
      if (!s.ok()) return CancelledError("restore '" + st.shown + "' cancelled by the caller");
  for (const Status& s : results)
    if (!s.ok()) return s;
  if (fill) PublishCacheEntry(fill.get(), st.options.cache, &report.cache);
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

size_t RestoredTensors::size() const { return model_ ? model_->tensors_.size() : 0; }

RestoredTensor RestoredTensors::operator[](size_t i) const { return model_->TensorAt(i); }

RestoredTensor RestoredModel::TensorAt(size_t i) const {
  const format::TensorRef t = tensors_[i];
  RestoredTensor rt;
  rt.name = t.name;
  rt.dtype = t.dtype;
  rt.shape = t.shape;
  rt.strides = t.strides;
  rt.region = t.region_id;
  rt.address = regions_[t.region_id].address + t.byte_offset;
  rt.byte_size = t.byte_size;
  rt.device = report_.device;
  return rt;
}

std::optional<RestoredTensor> RestoredModel::FindTensor(std::string_view name) const {
  const std::optional<size_t> i = tensors_.Find(name);
  if (!i) return std::nullopt;
  return TensorAt(*i);
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
  // Mapped ranges become anonymous memory first (MADV_DONTNEED would leave them mapping
  // the file), then the lease goes: nothing depends on the file any more.
  if (state_->lease) {
    STASIS_RETURN_IF_ERROR(state_->lease->DropAndRelease());
    state_->lease.reset();
  }
  for (const auto& r : regions_) STASIS_RETURN_IF_ERROR(backend_->Unload(r));
  loaded_ = false;
  return OkStatus();
}

Status RestoredModel::Reload() {
  if (loaded_) return OkStatus();
  Stopwatch start;
  Stopwatch t;
  // Reopen by path: after a failure, what is there now (a good image renamed onto the
  // path) is what must be restored, not the file the first restore opened.
  State& st = *state_;
  Opened opened;
  STASIS_RETURN_IF_ERROR(OpenImage(st.image, st.options, &opened));
  const std::string difference =
      LayoutDifference(st.reader->manifest(), opened.reader->manifest(), regions_);
  if (!difference.empty())
    return FailedPreconditionError(st.shown + " now holds an image of another layout (" +
                                   difference + "); restore it anew");
  const FileId file = opened.source;
  report_.image_replaced = st.file.known && file.known && !(file == st.file);
  if (report_.image_replaced)
    spdlog::warn(
        "reload of {}: the path names another file than the last restore; same layout, "
        "restoring it",
        st.shown);
  st.Take(std::move(opened), &report_.cache);
  report_.io = st.engine->report();
  report_.phases = RestorePhases{};
  report_.phases.open = t.Seconds();
  t.Restart();
  for (const auto& r : regions_) STASIS_RETURN_IF_ERROR(backend_->Reload(r));
  report_.phases.map = t.Seconds();
  loaded_ = true;
  Status s = RunPipeline();
  if (!s.ok()) {
    // An entry to blame goes, so the next Reload reads the image itself.
    DropEntryAfter(s, st.hit_entry, st.key, st.options.cache);
    // Half-restored memory is worse than none: release it, stay unloaded.
    Unload().IgnoreError();
    return s;
  }
  report_.phases.total = start.Seconds();
  return OkStatus();
}

}  // namespace stasis
