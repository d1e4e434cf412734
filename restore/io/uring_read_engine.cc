#include "restore/io/uring_read_engine.h"

#include <liburing.h>
#include <spdlog/spdlog.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

// The kernel rejects unknown setup flags with EINVAL, so defining the newer ones here is
// safe with older headers: the probe simply moves on to the next choice.
#ifndef IORING_SETUP_R_DISABLED
#define IORING_SETUP_R_DISABLED (1U << 6)
#endif
#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN (1U << 8)
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

namespace stasis {
namespace {

using internal::FaultHook;
using internal::ReadProgress;
using internal::ReadTarget;

struct RingChoice {
  unsigned flags;
  const char* name;
};
constexpr RingChoice kRingChoices[] = {
    {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, "SINGLE_ISSUER|DEFER_TASKRUN"},
    {IORING_SETUP_COOP_TASKRUN, "COOP_TASKRUN"},
    {0, "none"},
};
constexpr int kRingChoiceCount = sizeof(kRingChoices) / sizeof(kRingChoices[0]);
// The first choice worth trying: choices this kernel refused with EINVAL are skipped by
// later rings. Only EINVAL lowers it; EPERM and friends may be temporary (a sysctl).
std::atomic<int> first_ring_choice{0};

// Why io_uring may fail with `err`, for error messages and the fallback log line.
const char* UringErrnoHint(int err) {
  switch (err) {
    case EPERM:
      return "blocked by seccomp or kernel.io_uring_disabled";
    case ENOSYS:
      return "not supported by this kernel, or blocked by seccomp or gVisor";
    case ENOMEM:
      return "RLIMIT_MEMLOCK too low?";
    case EINVAL:
      return "flags or opcodes not supported, e.g. under gVisor";
    case EEXIST:
      return "ring used from a thread other than its owner";
    default:
      return nullptr;
  }
}

Status UringError(int err, const std::string& what) {
  Status s = ErrnoToStatus(err, what);
  const char* hint = UringErrnoHint(err);
  if (hint == nullptr) return s;
  return Status(s.code(), std::string(s.message()) + " (" + hint + ")");
}

// Sets up a ring with the best flags the kernel takes. Returns 0 or -errno.
int InitRing(unsigned entries, io_uring* ring, int* choice) {
  for (int i = first_ring_choice.load(std::memory_order_relaxed); i < kRingChoiceCount; ++i) {
    io_uring_params p;
    std::memset(&p, 0, sizeof(p));
    p.flags = kRingChoices[i].flags;
    if (p.flags & IORING_SETUP_SINGLE_ISSUER) p.flags |= IORING_SETUP_R_DISABLED;
    const int ret = io_uring_queue_init_params(entries, ring, &p);
    if (ret == 0) {
      *choice = i;
      return 0;
    }
    if (ret != -EINVAL) return ret;
    int seen = i;
    while (seen < i + 1 && !first_ring_choice.compare_exchange_weak(seen, i + 1)) {
    }
  }
  return -EINVAL;
}

// What a queue may use, decided once per engine by the probe.
struct RingConfig {
  size_t depth = 32;
  bool use_fixed_buffers = true;  // READ_FIXED is supported
  std::vector<std::pair<void*, size_t>> fixed_buffers;
  const std::atomic<bool>* yield_io = nullptr;  // ReadEngineOptions::yield_io
};

class UringReadQueue final : public ReadQueue {
 public:
  // `hook` may hold an empty function. Registration failures are recorded, not returned.
  static StatusOr<std::unique_ptr<UringReadQueue>> Create(
      std::shared_ptr<const ReadTarget> target, std::shared_ptr<const FaultHook> hook,
      std::shared_ptr<const RingConfig> config) {
    auto q = std::unique_ptr<UringReadQueue>(
        new UringReadQueue(std::move(target), std::move(hook), std::move(config)));
    STASIS_RETURN_IF_ERROR(q->Init());
    return q;
  }

  ~UringReadQueue() override {
    if (!initialised_) return;
    if (!Drain()) {
      // The kernel may still write into caller memory; an unusable ring and a few
      // kilobytes are leaked rather than risking that after the caller frees it.
      spdlog::error(
          "io_uring read queue destroyed with {} reads in flight that cannot be reaped "
          "(destroyed off its thread?); leaking the ring",
          in_kernel_);
      return;
    }
    io_uring_queue_exit(&ring_);
  }

  Status Submit(const ReadOp& op) override {
    STASIS_RETURN_IF_ERROR(Enable());
    STASIS_RETURN_IF_ERROR(
        internal::CheckReadOp(op, *target_, in_flight_, config_->depth, config_->fixed_buffers));
    if (op.length == 0) {
      ready_.push_back({op.user_data, OkStatus()});
      ++in_flight_;
      return OkStatus();
    }
    const uint32_t slot = free_slots_.back();
    Slot& s = slots_[slot];
    s.progress.Start(op);
    STASIS_RETURN_IF_ERROR(Prepare(&s));
    free_slots_.pop_back();
    ++in_flight_;
    ++in_kernel_;
    // Start the read now. A failure here leaves the SQE in the ring for the next
    // io_uring_enter (Wait), which reports it if it persists.
    io_uring_submit(&ring_);
    return OkStatus();
  }

  Status Wait(size_t min_completions, std::vector<ReadCompletion>* out) override {
    STASIS_RETURN_IF_ERROR(Enable());
    const size_t target = std::min(min_completions, in_flight_);
    // Submits resubmissions and, with DEFER_TASKRUN, runs the completion work that only
    // this thread's io_uring_enter delivers; then takes whatever is there.
    int ret = io_uring_submit_and_get_events(&ring_);
    if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
      return UringError(-ret, "io_uring_enter");
    Reap();
    int errors = 0;
    while (ready_.size() < target) {
      ret = io_uring_submit_and_wait(&ring_, 1);
      if (ret < 0 && ret != -EINTR) {
        // EAGAIN/EBUSY: the kernel is short of resources or the CQ is full; reaping
        // frees both. Anything else, or a storm of these, is a broken ring.
        if ((ret != -EAGAIN && ret != -EBUSY) || ++errors > kMaxReadRetries)
          return UringError(-ret, "io_uring_enter");
        std::this_thread::yield();
      } else if (ret >= 0) {
        errors = 0;
      }
      Reap();
    }
    // Resubmissions queued by Reap must not wait for the next call.
    if (io_uring_sq_ready(&ring_) > 0) io_uring_submit(&ring_);
    in_flight_ -= ready_.size();
    for (ReadCompletion& c : ready_) out->push_back(std::move(c));
    ready_.clear();
    return OkStatus();
  }

  size_t in_flight() const override { return in_flight_; }
  size_t depth() const override { return config_->depth; }

  const char* ring_flags() const { return kRingChoices[choice_].name; }
  bool file_registered() const { return file_registered_; }
  bool buffers_registered() const { return buffers_registered_; }
  const std::string& buffers_error() const { return buffers_error_; }
  io_uring* ring() { return &ring_; }

 private:
  // One read in the ring. Slots never move (the vector is sized once), so their address
  // is the SQE's user data.
  struct Slot {
    ReadProgress progress;
  };

  UringReadQueue(std::shared_ptr<const ReadTarget> target, std::shared_ptr<const FaultHook> hook,
                 std::shared_ptr<const RingConfig> config)
      : target_(std::move(target)), hook_(std::move(hook)), config_(std::move(config)) {}

  Status Init() {
    std::memset(&ring_, 0, sizeof(ring_));
    const int ret = InitRing(static_cast<unsigned>(config_->depth), &ring_, &choice_);
    if (ret < 0) return UringError(-ret, "io_uring_setup");
    initialised_ = true;
    enabled_ = !(kRingChoices[choice_].flags & IORING_SETUP_SINGLE_ISSUER);
    slots_.resize(config_->depth);
    free_slots_.reserve(config_->depth);
    for (size_t i = config_->depth; i > 0; --i) free_slots_.push_back(static_cast<uint32_t>(i - 1));

    // Both registrations are optimisations: without them each read does an fdget and
    // pins its pages, which for multi-MiB reads is noise.
    const int fd = target_->fd();
    file_registered_ = io_uring_register_files(&ring_, &fd, 1) == 0;
    if (!config_->fixed_buffers.empty()) {
      if (!config_->use_fixed_buffers) {
        buffers_error_ = "IORING_OP_READ_FIXED not supported";
      } else {
        std::vector<iovec> iov;
        for (const auto& [base, size] : config_->fixed_buffers) iov.push_back({base, size});
        const int r =
            io_uring_register_buffers(&ring_, iov.data(), static_cast<unsigned>(iov.size()));
        buffers_registered_ = r == 0;
        if (r < 0) buffers_error_ = UringError(-r, "io_uring_register_buffers").ToString();
      }
    }
    return OkStatus();
  }

  // Enables a single-issuer ring on the calling thread, which becomes its issuer.
  // liburing 2.3 declares io_uring_enable_rings but does not export it, hence the syscall.
  Status Enable() {
    if (enabled_) return OkStatus();
    if (::syscall(__NR_io_uring_register, ring_.ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0) <
        0)
      return UringError(errno, "io_uring_register(ENABLE_RINGS)");
    enabled_ = true;
    return OkStatus();
  }

  // Queues an SQE for the slot's next I/O call.
  Status Prepare(Slot* s) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {
      // Cannot happen (one SQE per slot, at least `depth` entries), but a full SQ only
      // needs flushing.
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
      if (sqe == nullptr) return UnavailableError("io_uring submission queue is full");
    }
    const ReadProgress& p = s->progress;
    const int fd = file_registered_ ? 0 : target_->fd();
    const auto len = static_cast<unsigned>(p.length());
    if (buffers_registered_ && p.op().fixed_buffer >= 0) {
      // The remainder of a short read stays inside the same registered buffer.
      io_uring_prep_read_fixed(sqe, fd, p.dst(), len, p.offset(), p.op().fixed_buffer);
    } else {
      io_uring_prep_read(sqe, fd, p.dst(), len, p.offset());
    }
    if (file_registered_) sqe->flags |= IOSQE_FIXED_FILE;
    if (YieldingIo(config_->yield_io)) sqe->ioprio = kIdleIoPriority;
    io_uring_sqe_set_data(sqe, s);
    return OkStatus();
  }

  // Handles every CQE available now.
  void Reap() {
    io_uring_cqe* cqe;
    unsigned head;
    unsigned seen = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++seen;
      Handle(static_cast<Slot*>(io_uring_cqe_get_data(cqe)), cqe->res);
    }
    io_uring_cq_advance(&ring_, seen);
  }

  void Handle(Slot* s, int64_t result) {
    ReadProgress& p = s->progress;
    if (draining_) {
      Release(s);
      return;
    }
    if (*hook_) result = (*hook_)(p.offset(), p.length(), result);
    if (!p.Apply(result, *target_)) {
      Status st = Prepare(s);
      if (st.ok()) return;
      ready_.push_back({p.op().user_data, std::move(st)});
      Release(s);
      return;
    }
    ready_.push_back({p.op().user_data, p.status()});
    Release(s);
  }

  void Release(Slot* s) {
    free_slots_.push_back(static_cast<uint32_t>(s - slots_.data()));
    --in_kernel_;
  }

  // Waits until the kernel holds no read of ours. False when it cannot.
  bool Drain() {
    draining_ = true;
    int errors = 0;
    while (in_kernel_ > 0) {
      const int ret = io_uring_submit_and_wait(&ring_, 1);
      if (ret < 0 && ret != -EINTR) {
        if ((ret != -EAGAIN && ret != -EBUSY) || ++errors > kMaxReadRetries) return false;
        std::this_thread::yield();
      }
      Reap();
    }
    return true;
  }

  const std::shared_ptr<const ReadTarget> target_;
  const std::shared_ptr<const FaultHook> hook_;
  const std::shared_ptr<const RingConfig> config_;
  io_uring ring_;
  bool initialised_ = false;
  bool enabled_ = false;
  bool draining_ = false;
  int choice_ = 0;
  bool file_registered_ = false;
  bool buffers_registered_ = false;
  std::string buffers_error_;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_slots_;
  std::vector<ReadCompletion> ready_;  // completed, not yet returned by Wait
  size_t in_flight_ = 0;               // submitted, not yet returned by Wait
  size_t in_kernel_ = 0;               // slots whose CQE is still to come
};

class UringReadEngine final : public ReadEngine {
 public:
  UringReadEngine(std::shared_ptr<const ReadTarget> target, const ReadEngineOptions& options,
                  ReadEngineReport report)
      : target_(std::move(target)),
        hook_(std::make_shared<const FaultHook>(options.fault_hook)),
        report_(std::move(report)) {
    auto config = std::make_shared<RingConfig>();
    config->depth = static_cast<size_t>(options.queue_depth);
    config->fixed_buffers = options.fixed_buffers;
    config->yield_io = options.yield_io;
    config_ = std::move(config);
  }

  // Proves the engine with one real read through a ring set up like the queues', and
  // fills in the report.
  Status Probe() {
    auto no_hook = std::make_shared<const FaultHook>();
    STASIS_ASSIGN_OR_RETURN(std::unique_ptr<UringReadQueue> q,
                            UringReadQueue::Create(target_, no_hook, config_));
    STASIS_RETURN_IF_ERROR(CheckOpcodes(q->ring()));
    if (!config_->use_fixed_buffers && !config_->fixed_buffers.empty()) {
      // Set up again without the buffers the kernel cannot read into.
      q.reset();
      STASIS_ASSIGN_OR_RETURN(q, UringReadQueue::Create(target_, no_hook, config_));
    }
    report_.ring_flags = q->ring_flags();
    report_.file_registered = q->file_registered();
    report_.buffers_registered = q->buffers_registered();
    if (!config_->fixed_buffers.empty() && !q->buffers_registered()) {
      // Not an error: each read then pins its pages itself.
      report_.reason += "; fixed buffers not registered (" + q->buffers_error() + ")";
    }

    // The first block, as the restore will read it (aligned when direct).
    const uint64_t a = target_->alignment();
    const uint64_t length = std::min((4096 + a - 1) / a * a, (target_->size() + a - 1) / a * a);
    if (length == 0) return OkStatus();  // an empty file: the ring itself is the probe
    const size_t mem_align = std::max<uint64_t>(a, 64);
    void* buf = std::aligned_alloc(mem_align, (length + mem_align - 1) / mem_align * mem_align);
    if (buf == nullptr) return ResourceExhaustedError("io_uring probe: out of memory");
    std::vector<ReadCompletion> done;
    Status s = q->Submit({0, length, buf, 0, -1});
    if (s.ok()) s = q->Wait(1, &done);
    if (s.ok() && !done.empty()) s = done[0].status;
    q.reset();  // drains before the buffer goes
    std::free(buf);
    if (s.ok()) return OkStatus();
    std::string msg(s.message());
    // gVisor fails IORING_OP_READ in the CQE, not at setup.
    if (msg.find("Invalid argument") != std::string::npos) msg += " (IORING_OP_READ unsupported?)";
    return Status(s.code(), "io_uring probe read: " + msg);
  }

  void SetFixedBuffers(std::vector<std::pair<void*, size_t>> buffers) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto config = std::make_shared<RingConfig>(*config_);
    config->fixed_buffers = std::move(buffers);
    config_ = std::move(config);
  }

  StatusOr<std::unique_ptr<ReadQueue>> NewQueue() override {
    std::shared_ptr<const RingConfig> config;
    {
      std::lock_guard<std::mutex> lock(mu_);
      config = config_;
    }
    STASIS_ASSIGN_OR_RETURN(std::unique_ptr<UringReadQueue> q,
                            UringReadQueue::Create(target_, hook_, config));
    if (!config->fixed_buffers.empty()) {
      std::lock_guard<std::mutex> lock(mu_);
      report_.buffers_registered = q->buffers_registered();
      if (!q->buffers_registered())
        spdlog::debug("io_uring: fixed buffers not registered for a queue: {}", q->buffers_error());
    }
    return std::unique_ptr<ReadQueue>(std::move(q));
  }
  const ReadEngineReport& report() const override { return report_; }
  uint64_t file_size() const override { return target_->size(); }
  int MappableFd() const override { return target_->fd(); }

 private:
  std::mutex mu_;  // config_ and report_ after construction (queues are made concurrently)
  // IORING_OP_READ is required (gVisor has only READV); READ_FIXED is optional.
  Status CheckOpcodes(io_uring* ring) {
    io_uring_probe* probe = io_uring_get_probe_ring(ring);
    if (probe == nullptr) return OkStatus();  // no IORING_REGISTER_PROBE: the read decides
    const bool read = io_uring_opcode_supported(probe, IORING_OP_READ);
    const bool read_fixed = io_uring_opcode_supported(probe, IORING_OP_READ_FIXED);
    io_uring_free_probe(probe);
    if (!read) return UnimplementedError("io_uring: IORING_OP_READ not supported (gVisor?)");
    if (!read_fixed) {
      auto config = std::make_shared<RingConfig>(*config_);
      config->use_fixed_buffers = false;
      config_ = std::move(config);
    }
    return OkStatus();
  }

  const std::shared_ptr<const ReadTarget> target_;
  const std::shared_ptr<const FaultHook> hook_;
  std::shared_ptr<const RingConfig> config_;  // set before any queue exists, then fixed
  ReadEngineReport report_;
};

}  // namespace

StatusOr<std::unique_ptr<ReadEngine>> NewUringReadEngine(std::shared_ptr<const ReadTarget> target,
                                                         const ReadEngineOptions& options,
                                                         ReadEngineReport report) {
  auto engine = std::make_unique<UringReadEngine>(std::move(target), options, std::move(report));
  STASIS_RETURN_IF_ERROR(engine->Probe());
  return std::unique_ptr<ReadEngine>(std::move(engine));
}

}  // namespace stasis
