// `--io auto` where io_uring is blocked: it must still restore, through the pread pool,
// and say why; `--io uring` must fail with a Status naming io_uring. Each case runs in a
// forked child that blocks io_uring the way production environments do:
//  - a seccomp filter returning EPERM for io_uring_setup/enter/register, as Docker's and
//    containerd's default profiles do since 2023 (and ENOSYS, as gVisor and older
//    profiles do);
//  - kernel.io_uring_disabled=2 (opt-in: STASIS_TEST_SYSCTL=1 as root, since the sysctl
//    is system-wide; it is restored in every case);
//  - a tiny RLIMIT_MEMLOCK without CAP_IPC_LOCK, which refuses fixed buffers: io_uring
//    still works, unregistered.
// The child reports through its exit code (0 pass, 77 skip, 1 fail) and a pipe.
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/io_uring.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "restore/io/read_engine.h"
#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using ::testing::HasSubstr;
using testing::RandomBytes;
using testing::TempDir;
using testing::TestSeed;

constexpr int kSkip = 77;

#if defined(__x86_64__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_AARCH64;
#else
constexpr uint32_t kAuditArch = 0;  // no filter: the seccomp cases skip
#endif

// Makes io_uring_setup, io_uring_enter and io_uring_register fail with `err` in this
// process from now on. Returns false (errno set) when the filter cannot be installed.
bool BlockIoUring(int err) {
  if (kAuditArch == 0) {
    errno = ENOSYS;
    return false;
  }
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kAuditArch, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),  // another ABI: numbers differ
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 2, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_enter, 1, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_register, 0, 1),
      BPF_STMT(BPF_RET | BPF_K,
               SECCOMP_RET_ERRNO | (static_cast<uint32_t>(err) & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog prog = {static_cast<unsigned short>(sizeof(filter) / sizeof(filter[0])), filter};
  // NO_NEW_PRIVS lets an unprivileged process install a filter.
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return false;
  return ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

bool UringWorksHere() {
  io_uring_params p;
  std::memset(&p, 0, sizeof(p));
  const long fd = ::syscall(__NR_io_uring_setup, 4, &p);
  if (fd < 0) return false;
  ::close(static_cast<int>(fd));
  return true;
}

struct ChildResult {
  int exit_code = -1;
  std::string output;
};

// Runs `body` in a forked child; `body` writes diagnostics to its stream and returns the
// exit code. The child never returns into gtest.
ChildResult RunInChild(const std::function<int(std::ostream&)>& body) {
  int fds[2];
  if (::pipe(fds) != 0) return {-1, std::string("pipe: ") + std::strerror(errno)};
  const pid_t pid = ::fork();
  if (pid < 0) return {-1, std::string("fork: ") + std::strerror(errno)};
  if (pid == 0) {
    ::close(fds[0]);
    std::ostringstream out;
    const int code = body(out);
    const std::string s = out.str();
    size_t done = 0;
    while (done < s.size()) {
      const ssize_t w = ::write(fds[1], s.data() + done, s.size() - done);
      if (w <= 0) break;
      done += static_cast<size_t>(w);
    }
    ::_exit(code);
  }
  ::close(fds[1]);
  ChildResult r;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR))
    if (n > 0) r.output.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// Reads the whole file through `engine` (1 MiB reads, rounded to the alignment) and
// compares it with `expected`. Returns "" or what went wrong.
std::string ReadAllAndCompare(ReadEngine* engine, const std::vector<uint8_t>& expected) {
  auto q = engine->NewQueue();
  if (!q.ok()) return q.status().ToString();
  const uint64_t a = engine->report().alignment;
  const uint64_t piece = 1 << 20;
  const uint64_t size = expected.size();
  const uint64_t padded = (size + a - 1) / a * a;
  void* mem = std::aligned_alloc(std::max<uint64_t>(a, 4096), (padded + 4095) / 4096 * 4096);
  auto* dst = static_cast<uint8_t*>(mem);
  std::string error;
  uint64_t next = 0;
  std::vector<ReadCompletion> out;
  while (error.empty() && (next < size || (*q)->in_flight() > 0)) {
    while (next < size && (*q)->in_flight() < (*q)->depth()) {
      const uint64_t len = std::min(piece, padded - next);
      Status s = (*q)->Submit({next, len, dst + next, next});
      if (!s.ok()) {
        error = s.ToString();
        break;
      }
      next += len;
    }
    out.clear();
    Status s = (*q)->Wait(1, &out);
    if (!s.ok()) error = s.ToString();
    for (const auto& c : out)
      if (!c.status.ok() && error.empty()) error = c.status.ToString();
  }
  q->reset();  // drained before the memory goes
  if (error.empty() && std::memcmp(dst, expected.data(), size) != 0) error = "bytes differ";
  std::free(mem);
  return error;
}

class UringDisabledTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.File("image.bin");
    data_ = RandomBytes((3u << 20) + 777, TestSeed());
    testing::WriteFile(path_, std::string(data_.begin(), data_.end()));
  }

  // The checks every blocked environment must pass, run inside the child. `uring_codes`:
  // the codes --io uring may fail with there.
  int CheckFallback(std::ostream& out, std::vector<StatusCode> uring_codes,
                    const std::string& reason_part) {
    for (auto direct : {ReadEngineOptions::Direct::kOff, ReadEngineOptions::Direct::kAuto}) {
      ReadEngineOptions o;
      o.backend = IoBackend::kAuto;
      o.direct = direct;
      auto e = OpenReadEngine(path_, o);
      if (!e.ok()) {
        out << "--io auto failed: " << e.status();
        return 1;
      }
      const ReadEngineReport& r = (*e)->report();
      if (r.backend != IoBackend::kPread || r.reason.find("io_uring") == std::string::npos ||
          r.reason.find(reason_part) == std::string::npos) {
        out << "--io auto chose " << IoBackendName(r.backend) << " because: " << r.reason;
        return 1;
      }
      out << "auto: " << r.reason << "\n";
      std::string err = ReadAllAndCompare(e->get(), data_);
      if (!err.empty()) {
        out << "reads through the fallback failed: " << err;
        return 1;
      }
    }
    ReadEngineOptions o;
    o.backend = IoBackend::kUring;
    auto u = OpenReadEngine(path_, o);
    if (u.ok()) {
      out << "--io uring succeeded although io_uring is blocked";
      return 1;
    }
    out << "uring: " << u.status() << "\n";
    if (std::find(uring_codes.begin(), uring_codes.end(), u.status().code()) == uring_codes.end() ||
        u.status().message().find("io_uring") == std::string_view::npos ||
        u.status().message().find(reason_part) == std::string_view::npos) {
      out << "unexpected --io uring error";
      return 1;
    }
    return 0;
  }

  static void ExpectChild(const ChildResult& r) {
    if (r.exit_code == kSkip) GTEST_SKIP() << r.output;
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::printf("%s", r.output.c_str());
  }

  TempDir dir_;
  std::string path_;
  std::vector<uint8_t> data_;
};

TEST_F(UringDisabledTest, SeccompEpermLikeDocker) {
  ChildResult r = RunInChild([&](std::ostream& out) {
    if (!BlockIoUring(EPERM)) {
      out << "cannot install a seccomp filter: " << std::strerror(errno);
      return kSkip;
    }
    return CheckFallback(out, {StatusCode::kPermissionDenied, StatusCode::kUnavailable},
                         "io_uring_setup: Operation not permitted (blocked by seccomp or "
                         "kernel.io_uring_disabled)");
  });
  ExpectChild(r);
}

TEST_F(UringDisabledTest, SeccompEnosysLikeGvisor) {
  ChildResult r = RunInChild([&](std::ostream& out) {
    if (!BlockIoUring(ENOSYS)) {
      out << "cannot install a seccomp filter: " << std::strerror(errno);
      return kSkip;
    }
    return CheckFallback(out, {StatusCode::kUnimplemented},
                         "io_uring_setup: Function not implemented");
  });
  ExpectChild(r);
}

// Restores a sysctl file's value when destroyed, whatever happened in between.
class SysctlGuard {
 public:
  explicit SysctlGuard(std::string path) : path_(std::move(path)) {
    std::ifstream in(path_);
    std::getline(in, saved_);
  }
  ~SysctlGuard() {
    if (!saved_.empty()) Write(saved_);
  }
  bool Write(const std::string& value) {
    std::ofstream out(path_);
    out << value << "\n";
    out.flush();
    return static_cast<bool>(out);
  }
  const std::string& saved() const { return saved_; }

 private:
  std::string path_;
  std::string saved_;
};

TEST_F(UringDisabledTest, SysctlIoUringDisabled) {
  const char* sysctl = "/proc/sys/kernel/io_uring_disabled";
  if (::access(sysctl, F_OK) != 0) GTEST_SKIP() << "no " << sysctl << " (Linux < 6.6)";
  const char* opt_in = std::getenv("STASIS_TEST_SYSCTL");
  if (opt_in == nullptr || std::string(opt_in) != "1")
    GTEST_SKIP() << "changes a system-wide setting; set STASIS_TEST_SYSCTL=1 (as root) to run";
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to write " << sysctl;
  ChildResult r;
  std::string saved;
  {
    SysctlGuard guard(sysctl);
    saved = guard.saved();
    if (guard.saved().empty() || !guard.Write("2")) GTEST_SKIP() << "cannot write " << sysctl;
    r = RunInChild([&](std::ostream& out) {
      return CheckFallback(out, {StatusCode::kPermissionDenied},
                           "io_uring_setup: Operation not permitted (blocked by seccomp or "
                           "kernel.io_uring_disabled)");
    });
  }
  std::ifstream in(sysctl);
  std::string now;
  std::getline(in, now);
  EXPECT_EQ(now, saved) << sysctl << " not restored";
  ExpectChild(r);
}

// Drops CAP_IPC_LOCK (which exempts root from RLIMIT_MEMLOCK) from this process.
bool DropIpcLock() {
  __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2];
  if (::syscall(SYS_capget, &header, data) != 0) return false;
  const int word = CAP_IPC_LOCK / 32;
  const uint32_t bit = 1u << (CAP_IPC_LOCK % 32);
  data[word].effective &= ~bit;
  data[word].permitted &= ~bit;
  data[word].inheritable &= ~bit;
  return ::syscall(SYS_capset, &header, data) == 0;
}

TEST_F(UringDisabledTest, MemlockRefusingFixedBuffersIsNotFatal) {
  if (!UringWorksHere()) GTEST_SKIP() << "io_uring unavailable here: " << std::strerror(errno);
  ChildResult r = RunInChild([&](std::ostream& out) {
    if (!DropIpcLock()) {
      out << "cannot drop CAP_IPC_LOCK: " << std::strerror(errno);
      return kSkip;
    }
    rlimit lim = {64 << 10, 64 << 10};
    if (::setrlimit(RLIMIT_MEMLOCK, &lim) != 0) {
      out << "cannot lower RLIMIT_MEMLOCK: " << std::strerror(errno);
      return kSkip;
    }
    const size_t size = 16 << 20;
    void* buf = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ReadEngineOptions o;
    o.backend = IoBackend::kUring;
    o.direct = ReadEngineOptions::Direct::kOff;
    o.fixed_buffers = {{buf, size}};
    auto e = OpenReadEngine(path_, o);
    if (!e.ok()) {
      out << "--io uring failed under a small RLIMIT_MEMLOCK: " << e.status();
      return 1;
    }
    const ReadEngineReport& rep = (*e)->report();
    out << "ring flags " << rep.ring_flags << ", buffers registered " << rep.buffers_registered
        << ", file registered " << rep.file_registered << "\n";
    if (rep.buffers_registered) {
      out << "16 MiB of buffers registered under a 64 KiB RLIMIT_MEMLOCK";
      return 1;
    }
    // Reads that name the (unregistered) fixed buffer still land.
    auto q = (*e)->NewQueue();
    if (!q.ok()) {
      out << q.status();
      return 1;
    }
    std::vector<ReadCompletion> done;
    Status s = (*q)->Submit({0, 1 << 20, buf, 7, 0});
    if (s.ok()) s = (*q)->Wait(1, &done);
    if (s.ok() && done.size() == 1) s = done[0].status;
    if (!s.ok() || std::memcmp(buf, data_.data(), 1 << 20) != 0) {
      out << "read into the unregistered fixed buffer failed: " << s;
      return 1;
    }
    return 0;
  });
  ExpectChild(r);
}

}  // namespace
}  // namespace stasis
