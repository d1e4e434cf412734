// File: stasis/restore.h
//
// Restoring an image onto a device. RestoredModel::Restore(image, options) runs the
// pipeline: open (header, footer, manifest, the reader: io_uring or a pread pool, O_DIRECT
// when the image is not cached) → plan → map every region (at its recorded address when
// free) → read → verify → decompress → copy, with every phase timed in the report. It
// picks the device backend for options.device itself: anonymous host memory for cpu, the
// CUDA driver's VMM API for cuda (the driver is loaded at run time; kFailedPrecondition
// where there is none, kUnimplemented in a build without the CUDA toolkit).
// docs/restore-pipeline.md describes the pipeline and the report.
//
//   auto restored = stasis::RestoredModel::Restore("model.stasis", {});
//   if (!restored.ok()) ...;
//   std::optional<stasis::RestoredTensor> wte = (*restored)->FindTensor("wte.weight");
//
// Lifetime: tensor addresses are valid while the RestoredModel lives and is loaded;
// Unload() releases the device memory but keeps every address reserved, and Reload()
// restores the bytes again at the same addresses, so pointers handed out stay valid
// across an unload/reload cycle (only their contents are undefined while unloaded).
//
// The guarantee: restored memory holds the checked bytes and never changes after Restore
// or Reload returned, whatever happens to the image file afterwards (rewritten in place
// by cp, rsync --inplace or dd, truncated, deleted, replaced by rename); only the caller's
// own writes change it. Raw chunks of a page-cache-hot image are mapped from the file
// (RestoreOptions::map_file) only while stasis holds a read lease on it (fcntl
// F_SETLEASE): a writer's open or truncate then waits while the mapped bytes are copied
// into anonymous memory at the same addresses, and proceeds once nothing depends on the
// file. Where no lease can be had (the image is not this user's and there is no
// CAP_LEASE, a file system without leases, the image open for writing, the lease-break
// signal SIGRTMIN+7 handled by the process itself, a lease-break-time too short for the
// copy) the chunks are copied instead; report().map_reason says which. Limits: the copy
// must finish within /proc/sys/fs/lease-break-time (refused up front when the mapped bytes
// could not be copied at 1 GiB/s in half of it; if memory for the copy cannot be had it is
// retried each second, and past the break time the kernel lets the writer in); writes the
// caller makes into mapped memory while a copy-out runs may be lost; a fork()ed child
// shares nothing of this (its mappings stay file-backed); writes that bypass the file
// system (the block device) are not seen. Reading the file through other descriptors is
// never affected.
//
// Reload() reopens the image by its path, so a good image renamed onto the path after a
// failure is what the next Reload restores. The file there may be another one (another
// device/inode, or rewritten in place): Reload restores it when its layout is the recorded
// one (the same regions by size and alignment, the same tensors by name, dtype, shape,
// strides and place), since every address handed out stays right, and reports
// image_replaced; any other layout is kFailedPrecondition and the model stays unloaded
// with the previous image's manifest (restore it anew with Restore).
//
// Thread safety: const accessors may be called concurrently. Unload/Reload must not run
// concurrently with each other or with readers of tensor memory (the runtime serialises
// them).
#ifndef STASIS_RESTORE_H_
#define STASIS_RESTORE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "stasis/device_backend.h"
#include "stasis/dims.h"
#include "stasis/file_system.h"
#include "stasis/image.h"
#include "stasis/image_cache.h"
#include "stasis/remote.h"
#include "stasis/status.h"
#include "stasis/tensor.h"

namespace stasis {

namespace internal {
class LeaseSeam;  // restore/map_lease.h
}  // namespace internal

// ---- How the image is read ----

// kHttp is what a remote image (stasis/remote.h) is read with; it cannot be asked for.
enum class IoBackend { kAuto, kUring, kPread, kHttp };
// "auto", "uring", "pread", "http".
std::string_view IoBackendName(IoBackend b);
// The inverse of IoBackendName; anything else is kInvalidArgument.
StatusOr<IoBackend> ParseIoBackend(std::string_view name);

// Direct I/O (O_DIRECT): kAuto uses it when most of the file is not in the page cache
// (mincore on a sample), since reading a cached file directly would go to the disk. kOn
// falls back to buffered reads, with a reason, when the file system refuses O_DIRECT.
enum class DirectIo { kAuto, kOn, kOff };
// "auto", "on", "off"; anything else is kInvalidArgument.
StatusOr<DirectIo> ParseDirectIo(std::string_view name);

// What the reader chose and why, for logs and reports.
struct ReadEngineReport {
  IoBackend backend = IoBackend::kPread;
  // e.g. "io_uring unavailable (io_uring_setup: Operation not permitted (blocked by seccomp
  // or kernel.io_uring_disabled)); using the pread pool"
  std::string reason;
  bool direct = false;
  std::string direct_reason;      // e.g. "12% of the file is in the page cache"
  double resident_fraction = -1;  // of the file in the page cache (sampled); -1: not measured
  uint32_t alignment = 1;         // required alignment of offset/length/dst
  std::string ring_flags;         // io_uring setup flags in use, "" for pread
  bool buffers_registered = false;
  bool file_registered = false;
};

// ---- Restoring ----

struct RestoreOptions {
  DeviceSpec device;  // default cpu
  IoBackend io = IoBackend::kAuto;
  DirectIo direct = DirectIo::kAuto;
  int threads = 0;       // workers; <= 0: one per hardware thread, two per thread for direct reads
  int queue_depth = 32;  // reads in flight per worker, 2..4096
  uint64_t staging_bytes = 256ull << 20;  // bound on staging memory, whatever the model size
  bool huge_pages = false;                // host backend: see NewHostBackend
  bool verify = true;                     // false: skip the raw-bytes checksums (reported)
  // false: skip the stored-bytes checksums too, so nothing is checked (reported). For
  // side-by-side comparisons with loaders that check nothing, and for images already
  // checked with `stasis verify` on storage that is trusted; mapped chunks are then
  // still faulted in (one read per page), so every byte is resident when Restore returns.
  bool verify_stored = true;
  // Raw chunks of a page-cache-hot image on the host backend: map the file's pages into
  // place (private, copy-on-write) instead of copying them, under a read lease on the
  // image (see "The guarantee" above; without a lease they are copied). kAuto maps when
  // the engine found >= 90% of the image cached and reads buffered.
  enum class MapFile { kAuto, kOn, kOff };
  MapFile map_file = MapFile::kAuto;
  // "auto", "on", "off"; anything else is kInvalidArgument.
  static StatusOr<MapFile> ParseMapFile(std::string_view name);
  // While *yield_io is true the restore's reads go at the idle I/O priority class, behind
  // this process's other I/O, which the mq-deadline and bfq schedulers serve first. Cold
  // starts set it while the framework loads. Must outlive the RestoredModel (Reload reads
  // again).
  const std::atomic<bool>* yield_io = nullptr;
  // Checked before each chunk: once *cancel is true the restore stops with kCancelled and
  // releases what it mapped, as on any failure (Ctrl-C in the Python binding sets it).
  const std::atomic<bool>* cancel = nullptr;
  // Raw bytes restored so far: each worker adds a chunk's bytes once it is in place, so a
  // caller can draw progress from another thread. Reset to 0 by neither Restore nor Reload.
  std::atomic<uint64_t>* progress = nullptr;
  // `cancel` and `progress` must outlive the RestoredModel when set (Reload uses them again).
  // A remote image (s3://, http://, https://; stasis/remote.h): how it is fetched. Ignored
  // for local paths. `io`, `direct` and `map_file` do not apply to remote images.
  RemoteOptions remote;
  // The node's cache tier (stasis/image_cache.h): remote images and local ones with
  // compressed chunks are restored from an entry when there is one, and fill one when
  // not. Empty dir: none.
  CacheOptions cache;
  // Seams. `fs`: read through the FileSystem seam (pread semantics, no io_uring/direct),
  // e.g. a fault-injecting or in-memory file system. `backend_factory`: a device backend of
  // the caller's instead of the one Restore picks for `device` (e.g. the CUDA backend over
  // a fake driver). `fault_hook`: called with (offset, length, result) of every raw read,
  // it may replace the result with -EIO, -EAGAIN, -EINTR or a short count (tests).
  FileSystem* fs = nullptr;
  std::function<StatusOr<std::unique_ptr<DeviceBackend>>(const DeviceSpec&)> backend_factory;
  std::function<int64_t(uint64_t, uint64_t, int64_t)> fault_hook;
  // `lease_seam`: the OS calls behind the map route's read lease (restore/map_lease.h),
  // to refuse a lease or break it at a chosen moment; must outlive the RestoredModel.
  internal::LeaseSeam* lease_seam = nullptr;
};

// Seconds per phase. read/verify/decompress/copy are summed over workers (CPU-seconds
// spent in each; they overlap in wall time); the others are wall time.
struct RestorePhases {
  double open = 0, plan = 0, map = 0, read = 0, verify = 0, decompress = 0, copy = 0;
  double pipeline_wall = 0;  // wall time of the read→copy pipeline
  double total = 0;          // wall time of Restore()/Reload()
};

struct RestoreReport {
  std::string image;
  DeviceSpec device;
  RestorePhases phases;
  uint64_t stored_bytes = 0;
  uint64_t raw_bytes = 0;
  uint64_t chunks = 0;
  int workers = 0;
  uint64_t staging_bytes = 0;
  bool verified_raw = true;
  bool verified_stored = true;
  ReadEngineReport io;
  size_t regions = 0;
  size_t regions_at_hint = 0;    // regions mapped at their recorded address
  size_t regions_with_hint = 0;  // regions that recorded an address at all
  uint64_t chunks_read_in_place = 0;
  uint64_t chunks_mapped = 0;  // raw chunks mapped from the page cache (no copy)
  // Why raw chunks were mapped or not, e.g. "mapped under a read lease", "map off", "no
  // read lease: F_SETLEASE: Resource temporarily unavailable (the image is open for
  // writing); copied". Chunks whose lease broke before they were mapped count as read.
  std::string map_reason;
  // Reload() found another file at the image's path than the last restore (another device
  // or inode), of the same layout, and restored it.
  bool image_replaced = false;
  // The cache tier (RestoreOptions::cache): "" without one; "hit <entry>", "filled
  // <entry>", or why not ("another process is filling <entry>; read from the source",
  // "fill failed: ...", "not cached: a local raw image", ...).
  std::string cache;
  // Raw bytes restored per second of total wall time.
  double raw_gb_per_s() const { return phases.total > 0 ? raw_bytes / phases.total / 1e9 : 0; }
};

// A tensor of the image where the restore put it. Its name and dims are views of the
// model's tensor table: valid while the RestoredModel lives (Reload keeps the table; a
// reload only ever restores the same tensors).
struct RestoredTensor {
  std::string_view name;
  DType dtype = DType::kU8;
  std::span<const int64_t> shape;
  std::span<const int64_t> strides;  // elements
  uint64_t address = 0;              // device address of element 0 (a host pointer on cpu)
  uint64_t byte_size = 0;
  uint32_t region = 0;
  DeviceSpec device;
};

class RestoredModel;

// Every tensor of a RestoredModel, in the manifest's order, made on access from the
// manifest's compact table and where each region lies (no table of its own: a checkpoint
// of 10^5 tiny tensors would pay for one in page faults). Valid while the model lives.
class RestoredTensors {
 public:
  using iterator = format::IndexIterator<RestoredTensors>;
  using const_iterator = iterator;
  RestoredTensors() = default;  // empty
  size_t size() const;
  bool empty() const { return size() == 0; }
  // REQUIRES: i < size().
  RestoredTensor operator[](size_t i) const;
  iterator begin() const { return {this, 0}; }
  iterator end() const { return {this, size()}; }

 private:
  friend class RestoredModel;
  explicit RestoredTensors(const RestoredModel* model) : model_(model) {}
  const RestoredModel* model_ = nullptr;
};

class RestoredModel {
 public:
  // Restores `image` onto `options.device`. On failure everything mapped is released.
  // Errors: ImageReader::Open's; kInvalidArgument (bad options); kAborted (the image was
  // replaced while it was being opened); kDataLoss (a checksum or a chunk fails: nothing
  // unchecked is handed out unless options.verify_stored is false); the backend's:
  // kResourceExhausted (no memory), kFailedPrecondition (no CUDA driver or device),
  // kUnimplemented (cuda in a build without the CUDA toolkit); I/O errors as they come.
  static StatusOr<std::unique_ptr<RestoredModel>> Restore(const std::string& image,
                                                          const RestoreOptions& options);
  ~RestoredModel();
  RestoredModel(const RestoredModel&) = delete;
  RestoredModel& operator=(const RestoredModel&) = delete;

  const format::Manifest& manifest() const;
  RestoredTensors tensors() const { return RestoredTensors(this); }
  // By binary search in images that store names sorted (version 2), else by a scan.
  std::optional<RestoredTensor> FindTensor(std::string_view name) const;
  const std::vector<MappedRegion>& regions() const { return regions_; }
  const RestoreReport& report() const { return report_; }
  // Reads a section of the image the weights came from (checksum verified); kNotFound for
  // an unknown name.
  StatusOr<std::string> ReadSection(std::string_view name) const;
  DeviceBackend& backend() { return *backend_; }
  bool loaded() const { return loaded_; }
  // Device bytes held (0 while unloaded).
  uint64_t device_bytes() const;

  // Releases device memory, keeping addresses, and the read lease on the image (mapped
  // ranges become anonymous memory again). Idempotent.
  Status Unload();
  // Reopens the image by its path and restores it again into the same addresses; the
  // report is replaced. Errors: Restore's, and kFailedPrecondition when the path now holds
  // an image of another layout (see above). On any error the model stays unloaded.
  Status Reload();

 private:
  struct State;
  RestoredModel() = default;
  Status RunPipeline();

  std::unique_ptr<State> state_;
  std::unique_ptr<DeviceBackend> backend_;
  std::vector<MappedRegion> regions_;
  friend class RestoredTensors;
  RestoredTensor TensorAt(size_t i) const;

  // The first restore's manifest tensors (shared with its reader, kept across reloads, so
  // every RestoredTensor's views stay valid).
  format::TensorTable tensors_;
  RestoreReport report_;
  bool loaded_ = false;
};

}  // namespace stasis

#endif  // STASIS_RESTORE_H_
