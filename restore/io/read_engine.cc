#include "restore/io/read_engine.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "restore/io/pread_read_engine.h"
#ifdef STASIS_HAVE_URING
#include "restore/io/uring_read_engine.h"
#endif

namespace stasis {

// IOPRIO_WHO_PROCESS with who = 0: the calling thread (I/O priorities are per task).
bool SetThreadIoPriority(uint16_t priority) {
  return ::syscall(SYS_ioprio_set, 1, 0, static_cast<int>(priority)) == 0;
}

int GetThreadIoPriority() { return static_cast<int>(::syscall(SYS_ioprio_get, 1, 0)); }
namespace {

using internal::ReadTarget;

// Above this many pages residency is sampled, not measured: mincore over every page of a
// 1 GiB file took 15 ms (11% of a hot restore), and 1024 evenly spread pages decide a
// 50% threshold just as well.
constexpr uint64_t kMincoreAllPages = 1024;
constexpr uint64_t kSampleWindows = 64;
constexpr uint64_t kSampleWindowPages = 16;

// The fraction of the file's pages in the page cache, from mincore on a PROT_READ mapping
// (nothing is faulted in: no MAP_POPULATE, and mincore does not touch pages).
StatusOr<double> ResidentFraction(int fd, uint64_t size, std::string* how) {
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  void* base = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) return ErrnoToStatus(errno, "mmap for mincore");
  const uint64_t pages = (size + page - 1) / page;
  uint64_t counted = 0, resident = 0;
  Status status;
  auto count = [&](uint64_t first, uint64_t n) {
    std::vector<unsigned char> vec(n);
    if (::mincore(static_cast<uint8_t*>(base) + first * page,
                  std::min(n * page, size - first * page), vec.data()) != 0) {
      status = ErrnoToStatus(errno, "mincore");
      return;
    }
    for (unsigned char v : vec) resident += v & 1;
    counted += n;
  };
  if (pages <= kMincoreAllPages) {
    count(0, pages);
    *how = "";
  } else {
    // Evenly spaced windows: a restore reads the whole file, so any large cached or cold
    // stretch shows up in proportion.
    const uint64_t stride = pages / kSampleWindows;
    for (uint64_t w = 0; w < kSampleWindows && status.ok(); ++w)
      count(w * stride, std::min(kSampleWindowPages, pages - w * stride));
    *how = " (sampled " + std::to_string(kSampleWindows) + " windows)";
  }
  ::munmap(base, size);
  if (!status.ok()) return status;
  return counted == 0 ? 1.0 : static_cast<double>(resident) / static_cast<double>(counted);
}

// mincore only reports page-cache pages of a file the caller owns or may write (else just
// the pages mapped in its own page tables: none), so elsewhere it would always say "cold".
bool MincoreSeesPageCache(const std::string& path, const struct stat& st) {
  return ::geteuid() == 0 || st.st_uid == ::geteuid() ||
         ::faccessat(AT_FDCWD, path.c_str(), W_OK, AT_EACCESS) == 0;
}

// The direct I/O alignment of `fd`: 0 when the file system says it cannot do direct I/O.
uint32_t DirectAlignment(int fd, std::string* how) {
#ifdef STATX_DIOALIGN
  struct statx sx;
  std::memset(&sx, 0, sizeof(sx));
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN)) {
    if (sx.stx_dio_offset_align == 0) return 0;
    *how = "statx";
    return std::max<uint32_t>({sx.stx_dio_offset_align, sx.stx_dio_mem_align, 512});
  }
#endif
  // Before 6.1 (or on file systems that do not report it): the usual logical block size of
  // NVMe and 4Kn disks, which is also a multiple of 512e disks'.
  *how = "default; statx has no STATX_DIOALIGN";
  return 4096;
}

std::string Percent(double f) { return std::to_string(static_cast<int>(f * 100 + 0.5)) + "%"; }

// Opens `path` once and decides buffered or direct I/O (see ReadEngineOptions::Direct).
StatusOr<std::shared_ptr<const ReadTarget>> OpenTarget(const std::string& path,
                                                       ReadEngineOptions::Direct mode,
                                                       ReadEngineReport* report) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, "open '" + path + "'");
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    Status s = ErrnoToStatus(errno, "stat '" + path + "'");
    ::close(fd);
    return s;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgumentError("'" + path + "' is not a regular file");
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);

  bool want_direct = false;
  std::string why;
  switch (mode) {
    case ReadEngineOptions::Direct::kOff:
      why = "direct I/O off";
      break;
    case ReadEngineOptions::Direct::kOn:
      want_direct = true;
      why = "direct I/O on";
      break;
    case ReadEngineOptions::Direct::kAuto: {
      if (size == 0) {
        why = "empty file";
        break;
      }
      if (!MincoreSeesPageCache(path, st)) {
        // Guessing cold costs a hot restore disk bandwidth; guessing hot costs a cold one
        // a copy per byte and the page cache's readahead limits. Cold is the common case
        // this cannot see (an image written by another user).
        want_direct = true;
        why =
            "page-cache residency unknown (mincore cannot see the page cache of a file this "
            "user neither owns nor may write); assuming cold";
        break;
      }
      std::string how;
      StatusOr<double> f = ResidentFraction(fd, size, &how);
      if (!f.ok()) {
        why = "page-cache residency unknown (" + f.status().ToString() + ")";
        break;
      }
      want_direct = *f < 0.5;
      report->resident_fraction = *f;
      why = Percent(*f) + " of the file is in the page cache" + how;
      break;
    }
  }

  uint32_t alignment = 1;
  bool direct = false;
  if (want_direct) {
    std::string how;
    const uint32_t a = DirectAlignment(fd, &how);
    if (a == 0) {
      why += "; but the file system does not support direct I/O for this file: buffered";
    } else if (::fcntl(fd, F_SETFL, O_DIRECT) != 0) {
      // Same check as open(O_DIRECT) (tmpfs and some overlay/FUSE set-ups refuse), on the
      // descriptor already open: the file is opened once.
      why += "; but the file system refuses O_DIRECT (" + std::string(std::strerror(errno)) +
             "): buffered";
    } else {
      direct = true;
      alignment = a;
      why += ": direct, alignment " + std::to_string(a) + " (" + how + ")";
    }
  } else {
    why += ": buffered";
  }
  report->direct = direct;
  report->direct_reason = std::move(why);
  report->alignment = alignment;
  return std::shared_ptr<const ReadTarget>(
      std::make_shared<ReadTarget>(fd, path, size, direct, alignment));
}

StatusOr<std::unique_ptr<ReadEngine>> TryUring(std::shared_ptr<const ReadTarget> target,
                                               const ReadEngineOptions& options,
                                               ReadEngineReport report) {
#ifdef STASIS_HAVE_URING
  report.backend = IoBackend::kUring;
  return NewUringReadEngine(std::move(target), options, std::move(report));
#else
  return UnimplementedError("io_uring: this stasis was built without liburing");
#endif
}

}  // namespace

std::string_view IoBackendName(IoBackend b) {
  switch (b) {
    case IoBackend::kAuto:
      return "auto";
    case IoBackend::kUring:
      return "uring";
    case IoBackend::kPread:
      return "pread";
    case IoBackend::kHttp:
      return "http";
  }
  return "unknown";
}

StatusOr<IoBackend> ParseIoBackend(std::string_view name) {
  for (IoBackend b : {IoBackend::kAuto, IoBackend::kUring, IoBackend::kPread})
    if (name == IoBackendName(b)) return b;
  return InvalidArgumentError("unknown I/O backend '" + std::string(name) +
                              "' (expected auto, uring or pread)");
}

StatusOr<DirectIo> ParseDirectIo(std::string_view name) {
  if (name == "auto") return DirectIo::kAuto;
  if (name == "on") return DirectIo::kOn;
  if (name == "off") return DirectIo::kOff;
  return InvalidArgumentError("direct I/O must be auto, on or off, not '" + std::string(name) +
                              "'");
}

StatusOr<std::unique_ptr<ReadEngine>> OpenReadEngine(const std::string& path,
                                                     const ReadEngineOptions& options) {
  if (options.queue_depth < 1 || options.queue_depth > 4096)
    return InvalidArgumentError("queue depth must be in 1..4096, not " +
                                std::to_string(options.queue_depth));
  for (const auto& [base, size] : options.fixed_buffers)
    if (base == nullptr || size == 0) return InvalidArgumentError("empty fixed buffer");

  ReadEngineReport report;
  STASIS_ASSIGN_OR_RETURN(std::shared_ptr<const ReadTarget> target,
                          OpenTarget(path, options.direct, &report));

  std::unique_ptr<ReadEngine> engine;
  switch (options.backend) {
    case IoBackend::kUring: {
      report.reason = "io_uring requested; probe read succeeded";
      STASIS_ASSIGN_OR_RETURN(engine, TryUring(target, options, report));
      break;
    }
    case IoBackend::kPread:
      report.backend = IoBackend::kPread;
      report.reason = "pread pool requested";
      engine = NewPreadReadEngine(target, options, report);
      break;
    case IoBackend::kHttp:
      return InvalidArgumentError("the http reader is chosen by the location, not asked for");
    case IoBackend::kAuto: {
      report.reason = "io_uring probe read succeeded";
      StatusOr<std::unique_ptr<ReadEngine>> uring = TryUring(target, options, report);
      if (uring.ok()) {
        engine = std::move(uring).value();
        break;
      }
      report.backend = IoBackend::kPread;
      report.reason = "io_uring unavailable (" + std::string(uring.status().message()) +
                      "); using the pread pool";
      engine = NewPreadReadEngine(target, options, report);
      break;
    }
  }
  const ReadEngineReport& r = engine->report();
  spdlog::info("read engine for '{}': {} ({}); {}", path, IoBackendName(r.backend), r.reason,
               r.direct_reason);
  return engine;
}

}  // namespace stasis
