#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <mutex>
#include <optional>
#include <vector>

#include "common/hash.h"
#include "common/thread_pool.h"
#include "snapshot/codec.h"
#include "snapshot/format.h"
#include "stasis/image.h"

namespace stasis {
namespace {

constexpr uint64_t kMinChunkSize = 4096;
// Adjacent data separated by less than this is packed into one chunk (the gap is zeros).
constexpr uint64_t kMaxPackGap = 4096;

std::string NowRfc3339() {
  std::time_t t = std::time(nullptr);
  std::tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string TempPathFor(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  return path + ".stasis-tmp." + std::to_string(::getpid()) + "." +
         std::to_string(counter.fetch_add(1));
}

}  // namespace

// A chunk on its way through the pool: raw bytes in, encoded payload out.
struct ChunkJob {
  format::ChunkInfo info;
  int element_size = 0;
  std::vector<uint8_t> raw;
  ChunkEncoder::Result encoded;
  Status status;
  bool done = false;
};

struct ImageWriter::Impl {
  std::string path;
  std::string temp;
  WriterOptions options;
  FileSystem* fs = nullptr;
  std::unique_ptr<WritableFile> file;
  std::unique_ptr<ThreadPool> pool;
  int max_inflight = 0;

  format::Manifest manifest;
  // Tensors as added; Finish() sorts them (version 2) and moves them into manifest.tensors.
  std::vector<format::TensorInfo> tensors;
  WriterStats stats;
  Status status;
  bool finished = false;
  bool abandoned = false;

  // The chunk being filled (packed from adjacent AddRegionData calls).
  std::unique_ptr<ChunkJob> pending;

  // Jobs in submission order; the front is written first.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::unique_ptr<ChunkJob>> inflight;
  std::vector<std::vector<uint8_t>> free_buffers;
  std::vector<std::unique_ptr<ChunkEncoder>> free_encoders;

  Status Fail(Status s) {
    if (status.ok()) status = std::move(s);
    return status;
  }

  std::unique_ptr<ChunkEncoder> TakeEncoder() {
    std::lock_guard<std::mutex> lock(mu);
    if (free_encoders.empty()) return std::make_unique<ChunkEncoder>(options.zstd_level);
    auto e = std::move(free_encoders.back());
    free_encoders.pop_back();
    return e;
  }

  void RunJob(ChunkJob* job) {
    auto encoder = TakeEncoder();
    job->status = encoder->Encode(job->raw.data(), job->raw.size(), options.codec,
                                  job->element_size, &job->encoded);
    // Checksums are computed here, on the pool, not on the writing thread.
    format::ChunkInfo& c = job->info;
    c.raw_size = job->raw.size();
    c.raw_xxh3 = Xxh3(job->raw.data(), job->raw.size());
    c.codec = job->encoded.codec;
    c.element_size = job->encoded.element_size;
    if (c.codec == format::Codec::kRaw) {
      c.stored_size = c.raw_size;
      c.stored_xxh3 = c.raw_xxh3;
    } else {
      c.stored_size = job->encoded.stored.size();
      c.stored_xxh3 = Xxh3(job->encoded.stored.data(), job->encoded.stored.size());
    }
    std::lock_guard<std::mutex> lock(mu);
    free_encoders.push_back(std::move(encoder));
    job->done = true;
    cv.notify_all();
  }

  // Pads the file with zeros to the next block boundary; returns that offset. With
  // `phase_of` (a raw chunk's dst_offset), pads on to the next offset congruent to it
  // modulo kMapPhase (format.h).
  StatusOr<uint64_t> AlignFile(std::optional<uint64_t> phase_of = std::nullopt) {
    uint64_t off = file->Offset();
    uint64_t aligned = format::AlignUp(off, format::kBlockAlign);
    if (phase_of && *phase_of % format::kBlockAlign == 0) {
      const uint64_t want = *phase_of % format::kMapPhase;
      aligned = format::AlignDown(aligned, format::kMapPhase) + want;
      if (aligned < off) aligned += format::kMapPhase;
    }
    static const std::vector<char> zeros(format::kBlockAlign, 0);
    while (off < aligned) {
      const uint64_t n = std::min<uint64_t>(aligned - off, zeros.size());
      STASIS_RETURN_IF_ERROR(file->Append(zeros.data(), n));
      off += n;
    }
    return aligned;
  }

  Status WriteJob(ChunkJob* job) {
    STASIS_RETURN_IF_ERROR(job->status);
    format::ChunkInfo& c = job->info;
    const uint8_t* payload =
        c.codec == format::Codec::kRaw ? job->raw.data() : job->encoded.stored.data();
    const bool mappable = c.codec == format::Codec::kRaw && c.raw_size >= format::kMapPhase;
    STASIS_ASSIGN_OR_RETURN(
        c.file_offset, AlignFile(mappable ? std::optional<uint64_t>(c.dst_offset) : std::nullopt));
    STASIS_RETURN_IF_ERROR(file->Append(payload, c.stored_size));
    manifest.chunks.push_back(c);
    stats.raw_bytes += c.raw_size;
    stats.stored_bytes += c.stored_size;
    stats.chunks_by_codec[static_cast<int>(c.codec)]++;
    if (options.progress) options.progress(stats.raw_bytes);
    return OkStatus();
  }

  // Writes finished jobs from the front; with `wait`, blocks until at most `keep` remain.
  Status Drain(size_t keep) {
    for (;;) {
      std::unique_ptr<ChunkJob> job;
      {
        std::unique_lock<std::mutex> lock(mu);
        if (inflight.size() <= keep) return OkStatus();
        cv.wait(lock, [&] { return inflight.front()->done; });
        job = std::move(inflight.front());
        inflight.pop_front();
      }
      Status s = WriteJob(job.get());
      {
        std::lock_guard<std::mutex> lock(mu);
        job->raw.clear();
        free_buffers.push_back(std::move(job->raw));
      }
      if (!s.ok()) return s;
    }
  }

  Status SubmitPending() {
    if (!pending) return OkStatus();
    STASIS_RETURN_IF_ERROR(Drain(static_cast<size_t>(max_inflight) - 1));
    ChunkJob* job = pending.get();
    {
      std::lock_guard<std::mutex> lock(mu);
      inflight.push_back(std::move(pending));
    }
    pool->Submit([this, job] { RunJob(job); });
    return OkStatus();
  }

  std::unique_ptr<ChunkJob> NewJob(uint32_t region, uint64_t offset, int element_size) {
    auto job = std::make_unique<ChunkJob>();
    job->info.region_id = region;
    job->info.dst_offset = offset;
    job->element_size = element_size;
    std::lock_guard<std::mutex> lock(mu);
    if (!free_buffers.empty()) {
      job->raw = std::move(free_buffers.back());
      free_buffers.pop_back();
    }
    job->raw.reserve(options.chunk_size);
    return job;
  }

  // Waits for every in-flight job without writing (used when abandoning).
  void WaitAll() {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] {
      for (auto& j : inflight)
        if (!j->done) return false;
      return true;
    });
    inflight.clear();
  }

  void RemoveTemp() {
    if (file) {
      file->Close().IgnoreError();
      file.reset();
      Status s = fs->Remove(temp);
      if (!s.ok()) spdlog::warn("could not remove temporary file: {}", s.ToString());
    }
  }
};

ImageWriter::ImageWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ImageWriter::~ImageWriter() {
  if (!impl_->finished && !impl_->abandoned) {
    // No I/O here (see the header): wait for the pool, report the leak.
    impl_->WaitAll();
    spdlog::error("ImageWriter destroyed without Finish() or Abandon(); '{}' left behind",
                  impl_->temp);
  }
}

StatusOr<std::unique_ptr<ImageWriter>> ImageWriter::Create(const std::string& path,
                                                           const WriterOptions& options) {
  if (options.chunk_size < kMinChunkSize || options.chunk_size > format::kMaxChunkRawSize)
    return InvalidArgumentError("chunk size must be between 4 KiB and 64 MiB");
  if (options.chunk_size % 4 != 0)
    return InvalidArgumentError("chunk size must be a multiple of 4");
  if (options.zstd_level < -7 || options.zstd_level > 22)
    return InvalidArgumentError("zstd level must be between -7 and 22");
  if (options.format_version < format::kOldestFormatVersion ||
      options.format_version > format::kFormatVersion)
    return InvalidArgumentError("image format version must be " +
                                std::to_string(format::kOldestFormatVersion) + " to " +
                                std::to_string(format::kFormatVersion));
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->options = options;
  impl->fs = options.fs ? options.fs : DefaultFileSystem();
  if (!options.overwrite && impl->fs->Exists(path))
    return AlreadyExistsError("'" + path + "' exists (use --force to replace it)");
  const int threads = ThreadPool::ResolveThreadCount(options.threads);
  if (options.threads > 0) {
    // A count the caller chose: all of those threads or none (kResourceExhausted), before
    // any file exists.
    STASIS_ASSIGN_OR_RETURN(impl->pool, ThreadPool::Create(threads));
  } else {
    // The default (one per core): as many as the system allows, as before.
    impl->pool = std::make_unique<ThreadPool>(threads);
  }
  impl->temp = TempPathFor(path);
  STASIS_ASSIGN_OR_RETURN(impl->file, impl->fs->CreateExclusive(impl->temp));
  impl->max_inflight = options.max_inflight_chunks > 0 ? options.max_inflight_chunks : 2 * threads;
  std::unique_ptr<ImageWriter> writer(new ImageWriter(std::move(impl)));
  std::string header = format::EncodeHeader(options.format_version);
  Status s = writer->impl_->file->Append(header.data(), header.size());
  if (!s.ok()) {
    writer->Abandon();
    return s;
  }
  return writer;
}

StatusOr<uint32_t> ImageWriter::AddRegion(const format::RegionInfo& region) {
  STASIS_RETURN_IF_ERROR(impl_->status);
  if (impl_->manifest.regions.size() >= format::kMaxRegions)
    return impl_->Fail(ResourceExhaustedError("too many regions"));
  impl_->manifest.regions.push_back(region);
  return static_cast<uint32_t>(impl_->manifest.regions.size() - 1);
}

Status ImageWriter::AddRegionData(uint32_t region, uint64_t dst_offset, const void* data, size_t n,
                                  int element_size) {
  Impl& w = *impl_;
  STASIS_RETURN_IF_ERROR(w.status);
  if (region >= w.manifest.regions.size())
    return w.Fail(InvalidArgumentError("AddRegionData: unknown region " + std::to_string(region)));
  const uint64_t region_size = w.manifest.regions[region].size;
  if (dst_offset > region_size || n > region_size - dst_offset)
    return w.Fail(InvalidArgumentError("AddRegionData: bytes run past the end of region " +
                                       std::to_string(region)));
  if (element_size != 0 && element_size != 2 && element_size != 4)
    return w.Fail(InvalidArgumentError("AddRegionData: element size must be 0, 2 or 4"));
  const uint8_t* src = static_cast<const uint8_t*>(data);
  while (n > 0) {
    if (w.options.cancel && w.options.cancel->load(std::memory_order_relaxed))
      return w.Fail(CancelledError("snapshot cancelled by the caller"));
    if (w.pending) {
      ChunkJob& p = *w.pending;
      uint64_t end = p.info.dst_offset + p.raw.size();
      bool joinable = p.info.region_id == region && p.element_size == element_size &&
                      dst_offset >= end && dst_offset - end < kMaxPackGap &&
                      p.raw.size() + (dst_offset - end) < w.options.chunk_size;
      if (!joinable) {
        Status s = w.SubmitPending();
        if (!s.ok()) return w.Fail(s);
      } else {
        p.raw.resize(p.raw.size() + (dst_offset - end), 0);
      }
    }
    if (!w.pending) w.pending = w.NewJob(region, dst_offset, element_size);
    ChunkJob& p = *w.pending;
    size_t take = std::min<size_t>(n, w.options.chunk_size - p.raw.size());
    p.raw.insert(p.raw.end(), src, src + take);
    src += take;
    n -= take;
    dst_offset += take;
    if (p.raw.size() == w.options.chunk_size) {
      Status s = w.SubmitPending();
      if (!s.ok()) return w.Fail(s);
    }
  }
  return OkStatus();
}

Status ImageWriter::AddTensor(format::TensorInfo tensor) {
  STASIS_RETURN_IF_ERROR(impl_->status);
  if (impl_->tensors.size() >= format::kMaxTensors)
    return impl_->Fail(ResourceExhaustedError("too many tensors"));
  // What the manifest's table can hold; the rest is checked at Finish() with the reader's
  // rules.
  if (tensor.name.empty() || tensor.name.size() > format::kMaxTensorNameLen)
    return impl_->Fail(InvalidArgumentError("tensor name of " + std::to_string(tensor.name.size()) +
                                            " bytes: names are 1 to 4096 bytes"));
  if (tensor.shape.size() > format::kMaxRank || tensor.strides.size() != tensor.shape.size())
    return impl_->Fail(InvalidArgumentError(
        "tensor '" + tensor.name + "': rank " + std::to_string(tensor.shape.size()) + " with " +
        std::to_string(tensor.strides.size()) + " strides (ranks are 0 to 32, one stride each)"));
  impl_->tensors.push_back(std::move(tensor));
  return OkStatus();
}

Status ImageWriter::AddSection(std::string name, std::string_view bytes) {
  Impl& w = *impl_;
  STASIS_RETURN_IF_ERROR(w.status);
  if (bytes.size() > format::kMaxSectionSize)
    return w.Fail(ResourceExhaustedError("section '" + name + "' exceeds 1 GiB"));
  // Sections go into the same ordered stream as chunks: flush what is queued first.
  Status s = w.SubmitPending();
  if (s.ok()) s = w.Drain(0);
  format::SectionInfo info;
  info.name = std::move(name);
  info.size = bytes.size();
  info.xxh3 = Xxh3(bytes.data(), bytes.size());
  if (s.ok() && !bytes.empty()) {
    auto off = w.AlignFile();
    s = off.status();
    if (s.ok()) {
      info.file_offset = *off;
      s = w.file->Append(bytes.data(), bytes.size());
    }
  }
  if (!s.ok()) return w.Fail(s);
  w.manifest.sections.push_back(std::move(info));
  return OkStatus();
}

Status ImageWriter::SetMetadata(std::string key, std::string value) {
  STASIS_RETURN_IF_ERROR(impl_->status);
  for (auto& kv : impl_->manifest.metadata) {
    if (kv.first == key) {
      kv.second = std::move(value);
      return OkStatus();
    }
  }
  impl_->manifest.metadata.emplace_back(std::move(key), std::move(value));
  return OkStatus();
}

Status ImageWriter::Finish() {
  Impl& w = *impl_;
  if (w.finished || w.abandoned) return FailedPreconditionError("ImageWriter already finished");
  Status s = w.status;
  if (s.ok()) s = w.SubmitPending();
  if (s.ok()) s = w.Drain(0);
  if (s.ok()) {
    if (!w.manifest.FindMetadata("creator"))
      w.manifest.metadata.emplace_back("creator", "stasis " STASIS_VERSION_STRING);
    if (!w.manifest.FindMetadata("created"))
      w.manifest.metadata.emplace_back("created", NowRfc3339());
  }
  uint64_t manifest_offset = 0;
  if (s.ok()) {
    auto off = w.AlignFile();
    s = off.status();
    if (s.ok()) manifest_offset = *off;
  }
  // Version 2 stores tensors sorted by name (docs/image-format.md, "Tensor record, v2").
  if (s.ok() && w.options.format_version >= 2) format::SortTensorsByName(&w.tensors);
  if (s.ok()) w.manifest.tensors = format::MakeTensorTable(w.tensors);
  // Validate with the reader's own rules: the writer never publishes an image the reader
  // would reject (e.g. a tensor outside its region).
  if (s.ok()) s = format::ValidateManifest(w.manifest, manifest_offset);
  std::string manifest;
  format::Footer f;
  if (s.ok()) {
    // The manifest is read whole on every open: a better level than the chunks' costs
    // little here (100,000 tensors: a few ms once) and saves bytes on every open.
    auto stored = format::EncodeStoredManifest(w.manifest, w.options.format_version,
                                               std::max(3, w.options.zstd_level), &f);
    s = stored.status();
    if (s.ok()) manifest = std::move(stored).value();
    if (s.ok() && manifest.size() > format::kMaxManifestSize)
      s = ResourceExhaustedError("manifest exceeds 256 MiB");
  }
  if (s.ok()) s = w.file->Append(manifest.data(), manifest.size());
  if (s.ok()) {
    f.manifest_offset = manifest_offset;
    f.manifest_size = manifest.size();
    f.manifest_xxh3 = Xxh3(manifest.data(), manifest.size());
    f.file_size = manifest_offset + manifest.size() + format::kFooterSize;
    std::string footer = format::EncodeFooter(f);
    s = w.file->Append(footer.data(), footer.size());
    w.stats.file_size = f.file_size;
  }
  if (s.ok()) s = w.file->Sync();
  if (s.ok()) s = w.file->Close();
  // The last moment a cancel can still leave nothing behind.
  if (s.ok() && w.options.cancel && w.options.cancel->load())
    s = CancelledError("snapshot cancelled by the caller");
  if (s.ok()) s = w.fs->Rename(w.temp, w.path);
  if (!s.ok()) {
    w.Fail(s).IgnoreError();
    Abandon();
    return s;
  }
  w.file.reset();
  w.finished = true;
  Status dir = w.fs->SyncParentDir(w.path);
  if (!dir.ok()) {
    // The rename may not survive a crash: withdraw the image rather than report a
    // published file that could vanish.
    w.fs->Remove(w.path).IgnoreError();
    return w.Fail(dir);
  }
  return OkStatus();
}

void ImageWriter::Abandon() {
  Impl& w = *impl_;
  if (w.finished || w.abandoned) return;
  w.abandoned = true;
  w.pending.reset();
  w.WaitAll();
  w.RemoveTemp();
  w.Fail(CancelledError("snapshot abandoned")).IgnoreError();
}

Status ImageWriter::status() const { return impl_->status; }
const WriterStats& ImageWriter::stats() const { return impl_->stats; }
const std::string& ImageWriter::temp_path() const { return impl_->temp; }

}  // namespace stasis
