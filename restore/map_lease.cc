#include "restore/map_lease.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <system_error>
#include <thread>

#include "common/numbers.h"

namespace stasis::internal {

int LeaseSeam::TakeReadLease(int fd, int signal) {
  // F_SETSIG first: with a non-zero signal the break carries si_fd and queues.
  if (::fcntl(fd, F_SETSIG, signal) != 0) return -errno;
  if (::fcntl(fd, F_SETLEASE, F_RDLCK) != 0) return -errno;
  return 0;
}

int LeaseSeam::GetLease(int fd) {
  const int t = ::fcntl(fd, F_GETLEASE);
  return t < 0 ? -errno : t;
}

int LeaseSeam::ReleaseLease(int fd) { return ::fcntl(fd, F_SETLEASE, F_UNLCK) == 0 ? 0 : -errno; }

int LeaseSeam::LeaseBreakSeconds() {
  std::ifstream in("/proc/sys/fs/lease-break-time");
  int s = -1;
  if (!(in >> s)) return -1;
  return s;
}

LeaseSeam* RealLeaseSeam() {
  static LeaseSeam real;
  return &real;
}

int MapLeaseSignal() { return SIGRTMIN + 7; }

namespace {

// The process's watcher: one eventfd the signal handler writes, one thread that reads it,
// and every lease by the descriptor that holds it. Never destroyed: the detached watcher
// uses it until the process ends.
struct Registry {
  std::mutex mu;
  std::map<int, std::weak_ptr<MapLease>> leases;
  bool started = false;
};

Registry& Reg() {
  static Registry* r = new Registry;
  return *r;
}

// Read by the signal handler: a lock-free atomic is async-signal-safe, a mutex is not.
std::atomic<int> g_event_fd{-1};
static_assert(std::atomic<int>::is_always_lock_free);

void Wake() {
  const int fd = g_event_fd.load(std::memory_order_relaxed);
  const uint64_t one = 1;
  if (fd >= 0) (void)!::write(fd, &one, sizeof(one));
}

// Async-signal-safe only: write(2) on an eventfd, errno saved. The work is the watcher's.
void OnLeaseSignal(int, siginfo_t*, void*) {
  const int saved = errno;
  Wake();
  errno = saved;
}

void Watch() {
  // Delivered to this thread even where every other thread blocks the signal.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, MapLeaseSignal());
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  for (;;) {
    bool any;
    {
      std::lock_guard<std::mutex> l(Reg().mu);
      any = !Reg().leases.empty();
    }
    pollfd p{g_event_fd.load(), POLLIN, 0};
    // While leases exist, a check every second as well: a lost signal must not cost the
    // guarantee (the kernel waits lease-break-time, 45 s by default, before it gives up).
    if (::poll(&p, 1, any ? 1000 : -1) > 0) {
      uint64_t n;
      (void)!::read(p.fd, &n, sizeof(n));
    }
    MapLease::HandleBreaks();
  }
}

bool IsOurHandler(const struct sigaction& a) {
  return (a.sa_flags & SA_SIGINFO) != 0 && a.sa_sigaction == OnLeaseSignal;
}

// Under Reg().mu: the watcher runs and the handler is ours, or why not.
Status EnsureWatcherLocked(Registry& r) {
  const int sig = MapLeaseSignal();
  struct sigaction cur;
  if (::sigaction(sig, nullptr, &cur) != 0) return ErrnoToStatus(errno, "sigaction");
  const bool ours = IsOurHandler(cur);
  // sa_handler and sa_sigaction share storage: any non-null pointer is a handler (or
  // SIG_IGN), which the process installed for itself and which stasis must not replace.
  if (!ours &&
      (cur.sa_flags & SA_SIGINFO ? cur.sa_sigaction != nullptr : cur.sa_handler != SIG_DFL))
    return FailedPreconditionError(
        "the lease-break signal (SIGRTMIN+7) has a handler of the "
        "process's own");
  if (!r.started) {
    const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd < 0) return ErrnoToStatus(errno, "eventfd for the lease watcher");
    g_event_fd.store(efd);
    try {
      std::thread(Watch).detach();
    } catch (const std::system_error& e) {
      g_event_fd.store(-1);
      ::close(efd);
      return ResourceExhaustedError(std::string("no lease watcher thread: ") + e.what());
    }
    r.started = true;
  }
  if (!ours) {
    struct sigaction a;
    std::memset(&a, 0, sizeof(a));
    a.sa_sigaction = OnLeaseSignal;
    a.sa_flags = SA_SIGINFO | SA_RESTART;  // a writer's open in this process restarts
    sigemptyset(&a.sa_mask);
    if (::sigaction(sig, &a, nullptr) != 0) return ErrnoToStatus(errno, "sigaction");
  }
  return OkStatus();
}

Status Refused(const std::string& why) { return FailedPreconditionError("no read lease: " + why); }

}  // namespace

StatusOr<std::shared_ptr<MapLease>> MapLease::Acquire(int fd, uint64_t bytes, LeaseSeam* seam) {
  if (seam == nullptr) seam = RealLeaseSeam();
  if (fd < 0) return Refused("the image has no descriptor");
  const int break_s = seam->LeaseBreakSeconds();
  if (break_s < 0) return Refused("/proc/sys/fs/lease-break-time is unreadable");
  if (break_s < kMinBreakSeconds)
    return Refused("/proc/sys/fs/lease-break-time is " + Num(break_s) + " s (under " +
                   Num(kMinBreakSeconds) + " s a copy-out cannot be relied on)");
  if (bytes > static_cast<uint64_t>(break_s) * kCopyOutBytesPerSecond / 2)
    return Refused(Num(bytes) + " bytes might not be copied out within the " + Num(break_s) +
                   " s of /proc/sys/fs/lease-break-time");
  // A duplicate shares the open file description (which is what holds a lease) and lives
  // as long as the lease, whatever becomes of the reader's descriptor.
  const int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return Refused(std::string("dup: ") + std::strerror(errno));
  std::shared_ptr<MapLease> lease(new MapLease(dup, seam));
  {
    // Registered before the lease exists, so that no break can find it missing.
    Registry& r = Reg();
    std::lock_guard<std::mutex> l(r.mu);
    Status s = EnsureWatcherLocked(r);
    if (!s.ok()) return Refused(std::string(s.message()));
    r.leases[dup] = lease;
  }
  const int rc = seam->TakeReadLease(dup, MapLeaseSignal());
  if (rc != 0) {
    std::string why = std::strerror(-rc);
    if (rc == -EAGAIN) why += " (the image is open for writing)";
    if (rc == -EACCES || rc == -EPERM) why += " (the image is not this user's, and no CAP_LEASE)";
    if (rc == -EINVAL) why += " (the file system has no leases)";
    return Refused("F_SETLEASE: " + why);
  }
  {
    // Held from now on. Not before: the watcher would take a lease not yet taken for a
    // broken one. A break that came in between is found by the next once-a-second check.
    std::lock_guard<std::mutex> l(lease->mu_);
    lease->held_ = true;
  }
  Wake();  // the watcher now polls once a second
  return lease;
}

MapLease::~MapLease() {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (held_) (void)ReleaseLocked();
  }
  {
    // Before the close, so the number cannot be reused by another lease in between.
    Registry& r = Reg();
    std::lock_guard<std::mutex> l(r.mu);
    auto it = r.leases.find(fd_);
    if (it != r.leases.end() && it->second.expired()) r.leases.erase(it);
  }
  ::close(fd_);
}

bool MapLease::held() const {
  std::lock_guard<std::mutex> l(mu_);
  return held_;
}

uint64_t MapLease::mapped_bytes() const {
  std::lock_guard<std::mutex> l(mu_);
  return mapped_bytes_;
}

StatusOr<bool> MapLease::Map(uint8_t* dst, uint64_t length, uint64_t offset) {
  std::lock_guard<std::mutex> l(mu_);
  // A break may be pending before the watcher ran: then copy, do not add to the copy-out.
  if (!held_ || seam_->GetLease(fd_) != F_RDLCK) return false;
  void* got = ::mmap(dst, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd_,
                     static_cast<off_t>(offset));
  if (got == MAP_FAILED) return ErrnoToStatus(errno, "map the image");
  ranges_.emplace_back(dst, length);
  mapped_bytes_ += length;
  return true;
}

Status MapLease::CopyOutAndRelease() {
  std::lock_guard<std::mutex> l(mu_);
  if (!held_) return OkStatus();
  // Adjacent ranges (chunks of one region) are copied as one: fewer calls, same memory.
  std::sort(ranges_.begin(), ranges_.end());
  std::vector<std::pair<uint8_t*, uint64_t>> merged;
  for (const auto& r : ranges_) {
    if (!merged.empty() && merged.back().first + merged.back().second == r.first)
      merged.back().second += r.second;
    else
      merged.push_back(r);
  }
  std::vector<std::pair<uint8_t*, uint64_t>> left;
  Status first;
  for (const auto& [addr, len] : merged) {
    // Populated up front: faulting fresh pages one by one during the memcpy took a third
    // longer (472 MiB: 0.40-0.49 s against 0.28-0.34 s), time the writer waits.
    void* scratch = ::mmap(nullptr, len, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (scratch == MAP_FAILED) {
      if (first.ok()) first = ErrnoToStatus(errno, "memory to copy " + Num(len) + " bytes out");
      left.emplace_back(addr, len);
      continue;
    }
    // The file cannot change while the lease is held, so this reads the checked bytes.
    std::memcpy(scratch, addr, len);
    // Atomic for concurrent readers: they see the file's page or its identical copy.
    if (::mremap(scratch, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, addr) == MAP_FAILED) {
      if (first.ok()) first = ErrnoToStatus(errno, "mremap the copy into place");
      ::munmap(scratch, len);
      left.emplace_back(addr, len);
    }
  }
  ranges_ = std::move(left);
  if (!ranges_.empty()) {
    // Keep the lease: the watcher retries each second until the kernel's break time ends.
    return first.WithContext("copy-out on a lease break (" + Num(ranges_.size()) +
                             " ranges still map the image)");
  }
  return ReleaseLocked();
}

Status MapLease::DropAndRelease() {
  std::lock_guard<std::mutex> l(mu_);
  while (!ranges_.empty()) {
    auto [addr, len] = ranges_.back();
    if (::mmap(addr, len, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED)
      return ErrnoToStatus(errno, "replace a mapped range with anonymous memory");
    ranges_.pop_back();
  }
  if (!held_) return OkStatus();
  return ReleaseLocked();
}

Status MapLease::ReleaseLocked() {
  held_ = false;
  const int rc = seam_->ReleaseLease(fd_);
  // Nothing depends on the file any more; a failure only delays the writer (the kernel
  // ends the lease by itself after the break time).
  if (rc != 0) spdlog::warn("releasing a read lease on an image: {}", std::strerror(-rc));
  return OkStatus();
}

void MapLease::HandleBreaks() {
  std::vector<std::shared_ptr<MapLease>> all;
  {
    Registry& r = Reg();
    std::lock_guard<std::mutex> l(r.mu);
    for (const auto& [fd, weak] : r.leases)
      if (auto p = weak.lock()) all.push_back(std::move(p));
  }
  for (const auto& p : all) {
    if (!p->held() || p->seam_->GetLease(p->fd_) == F_RDLCK) continue;
    Status s = p->CopyOutAndRelease();
    if (!s.ok())
      spdlog::error("a writer opened a restored image: {}; retrying in a second", s.ToString());
    else
      spdlog::info("a writer opened a restored image: {} mapped bytes copied out, lease released",
                   p->mapped_bytes());
  }
}

size_t MapLease::RegisteredForTest() {
  std::lock_guard<std::mutex> l(Reg().mu);
  return Reg().leases.size();
}

}  // namespace stasis::internal
