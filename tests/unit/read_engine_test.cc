// The read engines against one contract (restore/read_engine.h), run for each of
// {pread, io_uring} x {buffered, direct}: exact bytes for random reads, the queue depth,
// many queues on many threads, and every fault the hook can inject (EIO at one read,
// short reads everywhere, EAGAIN/EINTR storms, EOF). Cases skip, saying why, when io_uring
// or O_DIRECT is unavailable here. Direct cases need a file system that takes O_DIRECT:
// point TMPDIR at a disk-backed directory if /tmp is an old tmpfs.
#include "restore/io/read_engine.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;
using testing::RandomBytes;
using ::testing::StartsWith;
using testing::TempDir;
using testing::TestSeed;

// 8 MiB and a ragged tail, so that the last block is partial.
constexpr uint64_t kFileSize = (8u << 20) + 12345;

struct Req {
  uint64_t offset;
  uint64_t length;
};

// Memory aligned for any direct I/O alignment the engines report.
class AlignedBuffer {
 public:
  AlignedBuffer(size_t size, size_t alignment)
      : size_((size + alignment - 1) / alignment * alignment) {
    data_ = static_cast<uint8_t*>(std::aligned_alloc(alignment, size_));
    std::memset(data_, 0xAB, size_);
  }
  ~AlignedBuffer() { std::free(data_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  size_t size_;
  uint8_t* data_;
};

// Why io_uring cannot be tested here, or "" when it can.
std::string UringUnavailableReason() {
  io_uring_params p;
  std::memset(&p, 0, sizeof(p));
  const long fd = ::syscall(__NR_io_uring_setup, 4, &p);
  if (fd < 0) return std::string("io_uring_setup: ") + std::strerror(errno);
  ::close(static_cast<int>(fd));
  return "";
}

int CountFds() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  while (dirent* e = ::readdir(d))
    if (e->d_name[0] != '.') ++n;
  ::closedir(d);
  return n;
}

// Threads of this process, without io_uring's kernel workers (iou-wrk-*, iou-sqp-*): the
// kernel owns and retires those (they idle out after seconds), the engines cannot.
int CountThreads() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/task");
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream comm(std::string("/proc/self/task/") + e->d_name + "/comm");
    std::string name;
    std::getline(comm, name);
    if (name.rfind("iou-", 0) != 0) ++n;
  }
  ::closedir(d);
  return n;
}

struct EngineParam {
  IoBackend backend;
  bool direct;
};

std::string ParamName(const ::testing::TestParamInfo<EngineParam>& info) {
  return std::string(IoBackendName(info.param.backend)) +
         (info.param.direct ? "_direct" : "_buffered");
}

class ReadEngineTest : public ::testing::TestWithParam<EngineParam> {
 protected:
  void SetUp() override {
    path_ = dir_.File("data.bin");
    data_ = RandomBytes(kFileSize, TestSeed());
    testing::WriteFile(path_, std::string(data_.begin(), data_.end()));
    if (GetParam().backend == IoBackend::kUring) {
      std::string why = UringUnavailableReason();
      if (!why.empty()) GTEST_SKIP() << "io_uring unavailable here: " << why;
    }
  }

  // Opens the engine under test into `*out`, or skips the test when this machine cannot
  // run the combination (see OPEN_OR_RETURN).
  void Open(ReadEngineOptions options, std::unique_ptr<ReadEngine>* out) {
    options.backend = GetParam().backend;
    options.direct =
        GetParam().direct ? ReadEngineOptions::Direct::kOn : ReadEngineOptions::Direct::kOff;
    StatusOr<std::unique_ptr<ReadEngine>> e = OpenReadEngine(path_, options);
    if (!e.ok() && e.status().code() == StatusCode::kUnimplemented &&
        e.status().message().find("without liburing") != std::string_view::npos) {
      GTEST_SKIP() << e.status();
    }
    ASSERT_OK(e);
    const ReadEngineReport& r = (*e)->report();
    if (GetParam().direct && !r.direct) GTEST_SKIP() << "no O_DIRECT here: " << r.direct_reason;
    EXPECT_EQ(r.backend, GetParam().backend);
    EXPECT_EQ(r.direct, GetParam().direct);
    EXPECT_EQ((*e)->file_size(), kFileSize);
    align_ = r.alignment;
    *out = std::move(e).value();
  }

  // Random reads inside the file, aligned when direct, at most `max_len` bytes each.
  std::vector<Req> RandomReqs(size_t n, uint64_t max_len, uint64_t seed) const {
    std::mt19937_64 rng(seed);
    std::vector<Req> reqs;
    while (reqs.size() < n) {
      uint64_t len = 1 + rng() % max_len;
      len = (len + align_ - 1) / align_ * align_;
      if (len > kFileSize) continue;
      uint64_t off = rng() % (kFileSize - len + 1);
      off -= off % align_;
      reqs.push_back({off, len});
    }
    return reqs;
  }

  // The file in `piece`-byte reads; the last one rounded up to the alignment.
  std::vector<Req> SequentialReqs(uint64_t piece) const {
    std::vector<Req> reqs;
    for (uint64_t off = 0; off < kFileSize; off += piece) {
      uint64_t len = std::min(piece, kFileSize - off);
      reqs.push_back({off, (len + align_ - 1) / align_ * align_});
    }
    return reqs;
  }

  // Runs `reqs` through `q` with up to depth() in flight, each into its own slot of
  // `arena`, and calls `done` for each completion.
  void Drive(ReadQueue* q, const std::vector<Req>& reqs, const AlignedBuffer& arena, uint64_t slot,
             int fixed_buffer,
             const std::function<void(size_t, const Status&, const uint8_t*)>& done) {
    const size_t depth = q->depth();
    ASSERT_LE(depth * slot, arena.size());
    std::vector<size_t> free_slots;
    for (size_t s = 0; s < depth; ++s) free_slots.push_back(s);
    std::vector<size_t> slot_of(reqs.size());
    size_t next = 0, completed = 0;
    std::vector<ReadCompletion> out;
    while (completed < reqs.size()) {
      while (next < reqs.size() && !free_slots.empty()) {
        ASSERT_LE(reqs[next].length, slot);
        slot_of[next] = free_slots.back();
        free_slots.pop_back();
        uint8_t* dst = arena.data() + slot_of[next] * slot;
        ASSERT_OK(q->Submit({reqs[next].offset, reqs[next].length, dst, next, fixed_buffer}));
        ++next;
        ASSERT_LE(q->in_flight(), depth);
      }
      out.clear();
      ASSERT_OK(q->Wait(1, &out));
      ASSERT_FALSE(out.empty());
      for (const ReadCompletion& c : out) {
        ASSERT_LT(c.user_data, reqs.size());
        done(c.user_data, c.status, arena.data() + slot_of[c.user_data] * slot);
        free_slots.push_back(slot_of[c.user_data]);
        ++completed;
      }
    }
    EXPECT_EQ(q->in_flight(), 0u);
  }

  // Expects `dst` to hold the file's bytes [offset, offset + length), zeros past its end.
  void ExpectFileBytes(const uint8_t* dst, const Req& r) const {
    const uint64_t in_file = r.offset >= kFileSize ? 0 : std::min(r.length, kFileSize - r.offset);
    if (std::memcmp(dst, data_.data() + r.offset, in_file) != 0) {
      uint64_t i = 0;
      while (dst[i] == data_[r.offset + i]) ++i;
      ADD_FAILURE() << "read of " << r.length << " bytes at " << r.offset << " differs at byte "
                    << i;
      return;
    }
    for (uint64_t i = in_file; i < r.length; ++i) {
      if (dst[i] != 0) {
        ADD_FAILURE() << "byte " << i << " past end-of-file is not zero";
        return;
      }
    }
  }

  // Runs `reqs` and expects every one to succeed with the file's bytes.
  void ReadAndVerify(ReadQueue* q, const std::vector<Req>& reqs, uint64_t slot) {
    AlignedBuffer arena(q->depth() * slot, 4096);
    Drive(q, reqs, arena, slot, -1, [&](size_t i, const Status& s, const uint8_t* dst) {
      EXPECT_OK(s) << "read " << i;
      if (s.ok()) ExpectFileBytes(dst, reqs[i]);
    });
  }

  TempDir dir_;
  std::string path_;
  std::vector<uint8_t> data_;
  uint64_t align_ = 1;
};

// Declares `engine` opened with `options`; returns from the test when skipped or failed.
#define OPEN_OR_RETURN(engine, options) \
  std::unique_ptr<ReadEngine> engine;   \
  Open(options, &engine);               \
  if (IsSkipped() || engine == nullptr) return

TEST_P(ReadEngineTest, RandomReadsAreExact) {
  ReadEngineOptions o;
  o.queue_depth = 8;
  OPEN_OR_RETURN(engine, o);
  auto q = engine->NewQueue();
  ASSERT_OK(q);
  ReadAndVerify(q->get(), RandomReqs(300, 2u << 20, TestSeed() + 1), 2u << 20);
}

// yield_io: reads go at the idle I/O priority class while the flag is set and at the
// thread's own priority after; the bytes are exact either way (the kernel accepts the
// priority: io_uring would fail a read with a priority it rejects). The pread pool's
// workers are seen switching (the fault hook runs on them); io_uring sets it per SQE.
TEST_P(ReadEngineTest, YieldIoReadsAtIdlePriorityOnlyWhileSet) {
  std::atomic<bool> yield{true};
  std::mutex mu;
  std::vector<int> priorities;  // pread: each read's worker priority
  ReadEngineOptions o;
  o.queue_depth = 4;
  o.yield_io = &yield;
  o.fault_hook = [&](uint64_t, uint64_t, int64_t result) {
    std::lock_guard<std::mutex> lock(mu);
    priorities.push_back(GetThreadIoPriority());
    return result;
  };
  const int own = GetThreadIoPriority();
  ASSERT_GE(own, 0) << std::strerror(errno);
  OPEN_OR_RETURN(engine, o);
  auto q = engine->NewQueue();
  ASSERT_OK(q);
  ReadAndVerify(q->get(), RandomReqs(40, 1u << 20, TestSeed() + 7), 1u << 20);
  const bool pread = GetParam().backend == IoBackend::kPread;
  {
    std::lock_guard<std::mutex> lock(mu);
    ASSERT_FALSE(priorities.empty());
    if (pread) {
      for (int p : priorities) EXPECT_EQ(p, kIdleIoPriority);
    }
    priorities.clear();
  }
  yield = false;
  ReadAndVerify(q->get(), RandomReqs(40, 1u << 20, TestSeed() + 8), 1u << 20);
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_FALSE(priorities.empty());
  if (pread) {
    for (int p : priorities) EXPECT_EQ(p, own);
  }
  EXPECT_EQ(GetThreadIoPriority(), own) << "the caller's own priority is never changed";
}

TEST_P(ReadEngineTest, WholeFileIn1MiBReadsIncludingRoundedTail) {
  OPEN_OR_RETURN(engine, ReadEngineOptions());
  auto q = engine->NewQueue();
  ASSERT_OK(q);
  // Direct: the last read ends past end-of-file by less than one block and succeeds.
  ReadAndVerify(q->get(), SequentialReqs(1u << 20), 1u << 20);
}

TEST_P(ReadEngineTest, LargeReadsOf8MiB) {
  ReadEngineOptions o;
  o.queue_depth = 2;
  OPEN_OR_RETURN(engine, o);
  auto q = engine->NewQueue();
  ASSERT_OK(q);
  ReadAndVerify(q->get(), SequentialReqs(8u << 20), 8u << 20);
}

TEST_P(ReadEngineTest, QueueDepthIsEnforced) {
  ReadEngineOptions o;
  o.queue_depth = 3;
  std::atomic<int> inside{0}, most{0};
  // Hooks run where the I/O completes (pread workers, or the ring's thread): counting
  // the overlap bounds the reads actually in progress.
  o.fault_hook = [&](uint64_t, uint64_t, int64_t r) {
    int now = ++inside;
    int seen = most.load();
    while (now > seen && !most.compare_exchange_weak(seen, now)) {
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    --inside;
    return r;
  };
  OPEN_OR_RETURN(engine, o);
  auto q = engine->NewQueue();
  ASSERT_OK(q);
  ReadQueue& queue = **q;
  EXPECT_EQ(queue.depth(), 3u);
  AlignedBuffer buf(4 * 65536, 4096);
  for (int i = 0; i < 3; ++i)
    ASSERT_OK(queue.Submit({uint64_t(i) * 65536, 65536, buf.data() + i * 65536, uint64_t(i)}));
  EXPECT_EQ(queue.in_flight(), 3u);
  EXPECT_THAT(queue.Submit({0, 65536, buf.data() + 3 * 65536, 3}),
              StatusIs(StatusCode::kFailedPrecondition, HasSubstr("full")));
  std::vector<ReadCompletion> out;
  ASSERT_OK(queue.Wait(10, &out));  // bounded by in_flight()
  EXPECT_EQ(out.size(), 3u);
  EXPECT_EQ(queue.in_flight(), 0u);
  for (const auto& c : out) EXPECT_OK(c.status);
  // Completed reads count against the depth until Wait returns them.
  ReadAndVerify(&queue, RandomReqs(40, 65536, 7), 65536);
  EXPECT_LE(most.load(), 3);
  EXPECT_GE(most.load(), 1);
}

TEST_P(ReadEngineTest, ManyQueuesOnManyThreads) {
  ReadEngineOptions o;
  o.queue_depth = 8;
  OPEN_OR_RETURN(engine, o);
  constexpr int kQueues = 4;
  // Queues are made here and used (and destroyed) by the workers: single-issuer rings
  // must bind to the thread that uses them, not the one that made them.
  std::vector<std::unique_ptr<ReadQueue>> queues;
  for (int i = 0; i < kQueues; ++i) {
    auto q = engine->NewQueue();
    ASSERT_OK(q);
    queues.push_back(std::move(q).value());
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < kQueues; ++i) {
    threads.emplace_back([&, i, q = std::move(queues[i])]() mutable {
      ReadAndVerify(q.get(), RandomReqs(1000, 64 << 10, TestSeed() + 100 + i), 64 << 10);
      q.reset();
    });
  }
  for (auto& t : threads) t.join();
}

TEST_P(ReadEngineTest, EioAtOneReadFailsOnlyThatRead) {
  constexpr size_t kBad = 17;
  const uint64_t piece = 64 << 10;
  std::atomic<int> injected{0};
  ReadEngineOptions o;
  o.queue_depth = 8;
  o.fault_hook = [&](uint64_t off, uint64_t, int64_t r) -> int64_t {
    if (off == kBad * piece && injected++ == 0) return -EIO;
    return r;
  };
  OPEN_OR_RETURN(engine, o);
  auto q = engine->NewQueue();
  ASSERT_OK(q);
  std::vector<Req> reqs;
  for (size_t i = 0; i < 64; ++i) reqs.push_back({i * piece, piece});
  AlignedBuffer arena(8 * piece, 4096);
  int failures = 0;
  Drive(q->get(), reqs, arena, piece, -1, [&](size_t i, const Status& s, const uint8_t* dst) {
    if (i == kBad) {
      ++failures;
      EXPECT_EQ(s, ErrnoToStatus(EIO, "read 65536 bytes at offset " + std::to_string(kBad * piece) +
                                          " of '" + path_ + "'"));
      EXPECT_THAT(s, StatusIs(StatusCode::kUnavailable, HasSubstr("Input/output error")));
    } else {
      EXPECT_OK(s) << "read " << i;
      ExpectFileBytes(dst, reqs[i]);
    }
  });
  EXPECT_EQ(failures, 1);
  EXPECT_EQ(injected.load(), 1);
}

TEST_P(ReadEngineTest, ShortReadsEverywhereStillExact) {
  std::atomic<int> calls{0};
  std::atomic<uint32_t> align{1};
  ReadEngineOptions o;
  o.queue_depth = 4;
  // A third of what the kernel gave, kept on the alignment grid for direct I/O (a real
  // kernel's short direct reads are whole blocks).
  o.fault_hook = [&](uint64_t, uint64_t, int64_t r) -> int64_t {
    ++calls;
    const int64_t a = align.load();
    if (r <= a) return r;
    int64_t s = r / 3;
    return std::max<int64_t>(s - s % a, a);
  };
  OPEN_OR_RETURN(engine, o);
  align = engine->report().alignment;
  auto q = engine->NewQueue();
  ASSERT_OK(q);
  auto reqs = RandomReqs(100, 1 << 20, TestSeed() + 2);
  ReadAndVerify(q->get(), reqs, 1 << 20);
  EXPECT_GT(calls.load(), 200);  // every read took several calls
}

TEST_P(ReadEngineTest, ShortReadOffTheAlignmentGridIsContinued) {
  const uint64_t piece = 256 << 10;
  ReadEngineOptions o;
  o.queue_depth = 4;
  std::atomic<int> shortened{0};
  // Each read's first call comes back 100 bytes short: off the grid for direct I/O, so
  // the engine must re-read from the block below.
  o.fault_hook = [&](uint64_t off, uint64_t len, int64_t r) -> int64_t {
    if (len == piece && off % piece == 0 && r > 100) {
      ++shortened;
      return r - 100;
    }
    return r;
  };
  OPEN_OR_RETURN(engine, o);
  auto q = engine->NewQueue();
  ASSERT_OK(q);
  std::vector<Req> reqs;
  for (uint64_t off = 0; off + piece <= kFileSize; off += piece) reqs.push_back({off, piece});
  ReadAndVerify(q->get(), reqs, piece);
  EXPECT_EQ(shortened.load(), static_cast<int>(reqs.size()));
}

TEST_P(ReadEngineTest, EagainAndEintrStormsThenSuccess) {
  for (int err : {EAGAIN, EINTR}) {
    SCOPED_TRACE(std::strerror(err));
    std::mutex mu;
    std::map<uint64_t, int> seen;
    ReadEngineOptions o;
    o.queue_depth = 4;
    o.fault_hook = [&](uint64_t off, uint64_t, int64_t r) -> int64_t {
      std::lock_guard<std::mutex> lock(mu);
      return seen[off]++ < 20 ? -err : r;
    };
    OPEN_OR_RETURN(engine, o);
    auto q = engine->NewQueue();
    ASSERT_OK(q);
    std::vector<Req> reqs;
    for (uint64_t i = 0; i < 16; ++i) reqs.push_back({i * (128 << 10), 128 << 10});
    ReadAndVerify(q->get(), reqs, 128 << 10);
    for (const Req& r : reqs) EXPECT_EQ(seen[r.offset], 21);
  }
}

TEST_P(ReadEngineTest, EndlessEagainIsAnEagainStorm) {
  std::atomic<int> calls{0};
  ReadEngineOptions o;
  o.fault_hook = [&](uint64_t off, uint64_t, int64_t r) -> int64_t {
    if (off != 0) return r;
    ++calls;
    return -EAGAIN;
  };
  OPEN_OR_RETURN(engine, o);
  auto q = engine->NewQueue();
  ASSERT_OK(q);
  AlignedBuffer buf(2 * 65536, 4096);
  ASSERT_OK((*q)->Submit({0, 65536, buf.data(), 1}));
  ASSERT_OK((*q)->Submit({65536, 65536, buf.data() + 65536, 2}));
  std::vector<ReadCompletion> out;
  ASSERT_OK((*q)->Wait(2, &out));
  ASSERT_EQ(out.size(), 2u);
  for (const auto& c : out) {
    if (c.user_data == 1) {
      EXPECT_THAT(c.status, StatusIs(StatusCode::kUnavailable, StartsWith("EAGAIN storm")));
      EXPECT_THAT(c.status, StatusIs(StatusCode::kUnavailable, HasSubstr("at offset 0 of")));
    } else {
      EXPECT_OK(c.status);
      ExpectFileBytes(buf.data() + 65536, {65536, 65536});
    }
  }
  EXPECT_EQ(calls.load(), 1001);  // 1000 retries, then the error
}

TEST_P(ReadEngineTest, ReadsPastEndOfFileAreTruncated) {
  OPEN_OR_RETURN(engine, ReadEngineOptions());
  auto q = engine->NewQueue();
  ASSERT_OK(q);
  const uint64_t a = align_;
  const uint64_t last_block = kFileSize / a * a;
  // Straddling the end by at least a whole block (direct) or a byte (buffered); and
  // starting past it.
  const Req straddle = GetParam().direct ? Req{last_block - a, 3 * a} : Req{kFileSize - 100, 101};
  const Req beyond = {(kFileSize + a) / a * a, a};
  AlignedBuffer buf(8 * a + 4096, std::max<uint64_t>(a, 4096));
  ASSERT_OK((*q)->Submit({straddle.offset, straddle.length, buf.data(), 1}));
  ASSERT_OK((*q)->Submit({beyond.offset, beyond.length, buf.data() + 4 * a, 2}));
  std::vector<ReadCompletion> out;
  ASSERT_OK((*q)->Wait(2, &out));
  ASSERT_EQ(out.size(), 2u);
  for (const auto& c : out) {
    const Req& r = c.user_data == 1 ? straddle : beyond;
    const uint64_t got = c.user_data == 1 ? kFileSize - straddle.offset : 0;
    EXPECT_THAT(c.status, StatusIs(StatusCode::kOutOfRange,
                                   StartsWith("truncated: read " + std::to_string(got) + " of " +
                                              std::to_string(r.length) + " bytes at offset " +
                                              std::to_string(r.offset))));
  }
}

TEST_P(ReadEngineTest, SubmitRejectsBadReads) {
  AlignedBuffer buf(1 << 20, 4096);
  ReadEngineOptions o;
  o.fixed_buffers = {{buf.data(), 1 << 19}};
  OPEN_OR_RETURN(engine, o);
  auto q = engine->NewQueue();
  ASSERT_OK(q);
  ReadQueue& queue = **q;
  EXPECT_THAT(queue.Submit({0, 4096, nullptr, 0}),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("null")));
  EXPECT_THAT(queue.Submit({0, 4096, buf.data(), 0, 1}),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("fixed buffer 1")));
  EXPECT_THAT(queue.Submit({0, 4096, buf.data() + (1 << 19) - 2048, 0, 0}),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("inside fixed buffer 0")));
  if (GetParam().direct) {
    EXPECT_THAT(queue.Submit({1, align_, buf.data(), 0}),
                StatusIs(StatusCode::kInvalidArgument, HasSubstr("multiples of")));
    EXPECT_THAT(queue.Submit({0, align_ + 1, buf.data(), 0}),
                StatusIs(StatusCode::kInvalidArgument, HasSubstr("multiples of")));
    EXPECT_THAT(queue.Submit({0, align_, buf.data() + 1, 0}),
                StatusIs(StatusCode::kInvalidArgument, HasSubstr("multiples of")));
  }
  EXPECT_EQ(queue.in_flight(), 0u);
  // A zero-length read completes at once; Wait(0) does not block.
  ASSERT_OK(queue.Submit({0, 0, nullptr, 42}));
  std::vector<ReadCompletion> out;
  ASSERT_OK(queue.Wait(0, &out));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].user_data, 42u);
  EXPECT_OK(out[0].status);
  out.clear();
  ASSERT_OK(queue.Wait(5, &out));  // nothing in flight: returns at once
  EXPECT_TRUE(out.empty());
}

TEST_P(ReadEngineTest, FixedBuffersWithShortReads) {
  const uint64_t piece = 512 << 10;
  AlignedBuffer arena(4 * piece, 4096);
  std::atomic<uint32_t> align{1};
  ReadEngineOptions o;
  o.queue_depth = 4;
  o.fixed_buffers = {{arena.data(), arena.size()}};
  // Halve every first call, on the grid: the remainder reads into the same registered
  // buffer at an adjusted address.
  o.fault_hook = [&](uint64_t off, uint64_t len, int64_t r) -> int64_t {
    const int64_t a = align.load();
    if (len != piece || r < 2 * a) return r;
    return r / 2 / a * a;
  };
  OPEN_OR_RETURN(engine, o);
  align = engine->report().alignment;
  if (GetParam().backend == IoBackend::kUring && !engine->report().buffers_registered)
    std::printf("note: fixed buffers were not registered here (plain reads used)\n");
  if (GetParam().backend == IoBackend::kPread) {
    EXPECT_FALSE(engine->report().buffers_registered);
  }
  auto q = engine->NewQueue();
  ASSERT_OK(q);
  std::vector<Req> reqs;
  for (uint64_t off = 0; off + piece <= kFileSize; off += piece) reqs.push_back({off, piece});
  Drive(q->get(), reqs, arena, piece, 0, [&](size_t i, const Status& s, const uint8_t* dst) {
    EXPECT_OK(s);
    ExpectFileBytes(dst, reqs[i]);
  });
}

TEST_P(ReadEngineTest, UnregistrableBuffersAreNotFatal) {
  // The kernel refuses to register a buffer over 1 GiB; reads must still work. Nothing
  // is touched beyond the first few MiB, so the mapping costs no memory.
  const size_t big = (size_t{1} << 30) + (2u << 20);
  void* p = ::mmap(nullptr, big, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  ReadEngineOptions o;
  o.queue_depth = 4;
  o.fixed_buffers = {{p, big}};
  {
    std::unique_ptr<ReadEngine> engine;
    Open(o, &engine);
    if (!IsSkipped() && engine != nullptr) {
      if (GetParam().backend == IoBackend::kUring) {
        EXPECT_FALSE(engine->report().buffers_registered);
        EXPECT_FALSE(engine->report().ring_flags.empty());
      }
      auto q = engine->NewQueue();
      ASSERT_OK(q);
      std::vector<Req> reqs;
      for (uint64_t off = 0; off + (1 << 20) <= kFileSize; off += 1 << 20)
        reqs.push_back({off, 1 << 20});
      const uint64_t piece = 1 << 20;
      std::vector<uint8_t*> dsts;
      std::vector<ReadCompletion> out;
      for (size_t i = 0; i < reqs.size(); ++i) {
        uint8_t* dst = static_cast<uint8_t*>(p) + (i % 4) * piece;
        ASSERT_OK((*q)->Submit({reqs[i].offset, piece, dst, i, 0}));
        out.clear();
        ASSERT_OK((*q)->Wait(1, &out));
        ASSERT_EQ(out.size(), 1u);
        EXPECT_OK(out[0].status);
        ExpectFileBytes(dst, reqs[i]);
      }
    }
  }
  ::munmap(p, big);
}

TEST_P(ReadEngineTest, QueueMayOutliveItsEngine) {
  OPEN_OR_RETURN(engine, ReadEngineOptions());
  auto q = engine->NewQueue();
  ASSERT_OK(q);
  engine.reset();
  ReadAndVerify(q->get(), SequentialReqs(1u << 20), 1u << 20);
}

TEST_P(ReadEngineTest, NoFdOrThreadLeaks) {
  // Warm up whatever a first use allocates for good (spdlog's logger, TLS).
  { OPEN_OR_RETURN(engine, ReadEngineOptions()); }
  const int fds = CountFds();
  const int threads = CountThreads();
  for (int round = 0; round < 3; ++round) {
    ReadEngineOptions o;
    o.queue_depth = 16;
    // Round 1 fails some reads (EIO, an EAGAIN storm, truncation by a zero-byte read) so
    // the error paths are checked for leaks too.
    constexpr uint64_t kPiece = 64 << 10;
    if (round == 1) {
      o.fault_hook = [](uint64_t off, uint64_t, int64_t r) -> int64_t {
        const uint64_t index = off / kPiece;
        if (index == 2) return -EAGAIN;
        if (index % 4 == 1) return -EIO;
        if (index % 4 == 3) return 0;
        return r;
      };
    }
    std::unique_ptr<ReadEngine> engine;
    Open(o, &engine);
    ASSERT_NE(engine, nullptr);
    AlignedBuffer arena(4 * 16 * kPiece, 4096);
    std::vector<std::unique_ptr<ReadQueue>> queues;
    for (int i = 0; i < 4; ++i) {
      auto q = engine->NewQueue();
      ASSERT_OK(q);
      queues.push_back(std::move(q).value());
    }
    // Some reads completed, some still in flight when everything is destroyed.
    for (int i = 0; i < 4; ++i) {
      for (int k = 0; k < 16; ++k) {
        const uint64_t index = i * 16 + k;
        ASSERT_OK(
            queues[i]->Submit({index * kPiece, kPiece, arena.data() + index * kPiece, index}));
      }
      std::vector<ReadCompletion> out;
      ASSERT_OK(queues[i]->Wait(i * 4, &out));
    }
    EXPECT_GT(CountFds(), fds);  // the file, and rings when io_uring
    queues.clear();
    engine.reset();
  }
  EXPECT_EQ(CountFds(), fds);
  EXPECT_EQ(CountThreads(), threads);
}

INSTANTIATE_TEST_SUITE_P(Engines, ReadEngineTest,
                         ::testing::Values(EngineParam{IoBackend::kPread, false},
                                           EngineParam{IoBackend::kPread, true},
                                           EngineParam{IoBackend::kUring, false},
                                           EngineParam{IoBackend::kUring, true}),
                         ParamName);

// Engine selection and the direct I/O decision, backend-independent.
class OpenReadEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.File("data.bin");
    auto bytes = RandomBytes(4 << 20, TestSeed());
    testing::WriteFile(path_, std::string(bytes.begin(), bytes.end()));
  }
  TempDir dir_;
  std::string path_;
};

TEST_F(OpenReadEngineTest, BackendNamesRoundTrip) {
  for (IoBackend b : {IoBackend::kAuto, IoBackend::kUring, IoBackend::kPread}) {
    auto parsed = ParseIoBackend(IoBackendName(b));
    ASSERT_OK(parsed);
    EXPECT_EQ(*parsed, b);
  }
  EXPECT_THAT(ParseIoBackend("aio"), StatusIs(StatusCode::kInvalidArgument, HasSubstr("'aio'")));
}

TEST_F(OpenReadEngineTest, BadArgumentsAndMissingFiles) {
  ReadEngineOptions o;
  EXPECT_THAT(OpenReadEngine(dir_.File("missing"), o),
              StatusIs(StatusCode::kNotFound, HasSubstr("missing")));
  EXPECT_THAT(OpenReadEngine(dir_.path(), o),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("not a regular file")));
  o.queue_depth = 0;
  EXPECT_THAT(OpenReadEngine(path_, o),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("queue depth")));
}

TEST_F(OpenReadEngineTest, PreadIsPreadAndAutoPrefersUring) {
  ReadEngineOptions o;
  o.backend = IoBackend::kPread;
  auto p = OpenReadEngine(path_, o);
  ASSERT_OK(p);
  EXPECT_EQ((*p)->report().backend, IoBackend::kPread);
  EXPECT_THAT((*p)->report().reason, HasSubstr("requested"));
  EXPECT_EQ((*p)->report().ring_flags, "");

  o.backend = IoBackend::kAuto;
  auto a = OpenReadEngine(path_, o);
  ASSERT_OK(a);
  o.backend = IoBackend::kUring;
  auto u = OpenReadEngine(path_, o);
  if (u.ok()) {
    EXPECT_EQ((*a)->report().backend, IoBackend::kUring);
    EXPECT_THAT((*u)->report().ring_flags,
                AnyOf("SINGLE_ISSUER|DEFER_TASKRUN", "COOP_TASKRUN", "none"));
    EXPECT_TRUE((*u)->report().file_registered);
    std::printf("io_uring here: flags %s, file registered %d\n", (*u)->report().ring_flags.c_str(),
                (*u)->report().file_registered);
  } else {
    std::printf("io_uring unavailable here: %s\n", u.status().ToString().c_str());
    EXPECT_THAT(u.status().message(), HasSubstr("io_uring"));
    EXPECT_EQ((*a)->report().backend, IoBackend::kPread);
    EXPECT_THAT((*a)->report().reason, HasSubstr("io_uring"));
  }
}

TEST_F(OpenReadEngineTest, DirectAutoFollowsThePageCache) {
  ReadEngineOptions o;
  o.backend = IoBackend::kPread;
  o.direct = ReadEngineOptions::Direct::kAuto;
  // Just written: in the page cache.
  auto hot = OpenReadEngine(path_, o);
  ASSERT_OK(hot);
  EXPECT_FALSE((*hot)->report().direct);
  EXPECT_THAT((*hot)->report().direct_reason, HasSubstr("100% of the file is in the page cache"));
  EXPECT_EQ((*hot)->report().alignment, 1u);

  // Evicted (clean pages go at once): direct, unless the file system refuses it.
  int fd = ::open(path_.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::fdatasync(fd), 0);
  ASSERT_EQ(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
  ::close(fd);
  auto cold = OpenReadEngine(path_, o);
  ASSERT_OK(cold);
  const ReadEngineReport& r = (*cold)->report();
  EXPECT_THAT(r.direct_reason, HasSubstr("0% of the file is in the page cache"));
  if (r.direct) {
    EXPECT_GE(r.alignment, 512u);
    EXPECT_EQ(r.alignment & (r.alignment - 1), 0u);
    EXPECT_THAT(r.direct_reason, HasSubstr("direct, alignment"));
  } else {
    EXPECT_THAT(r.direct_reason, HasSubstr("buffered"));
  }
}

TEST_F(OpenReadEngineTest, DirectRefusedByTheFileSystemFallsBackToBuffered) {
  // procfs refuses O_DIRECT like tmpfs did before Linux 6.6.
  ReadEngineOptions o;
  o.backend = IoBackend::kPread;
  o.direct = ReadEngineOptions::Direct::kOn;
  auto e = OpenReadEngine("/proc/version", o);
  ASSERT_OK(e);
  EXPECT_FALSE((*e)->report().direct);
  EXPECT_EQ((*e)->report().alignment, 1u);
  EXPECT_THAT((*e)->report().direct_reason,
              HasSubstr("the file system refuses O_DIRECT (Invalid argument): buffered"));
}

TEST_F(OpenReadEngineTest, DirectOnTmpfsReadsCorrectly) {
  // tmpfs takes O_DIRECT since Linux 6.6 (and has no STATX_DIOALIGN), before it refused:
  // either way the engine reads correctly and says what it did.
  if (::access("/dev/shm", W_OK) != 0) GTEST_SKIP() << "no writable /dev/shm";
  std::string path = "/dev/shm/stasis-read-engine-" + std::to_string(::getpid());
  auto bytes = RandomBytes(1 << 20, TestSeed());
  testing::WriteFile(path, std::string(bytes.begin(), bytes.end()));
  ReadEngineOptions o;
  o.backend = IoBackend::kPread;
  o.direct = ReadEngineOptions::Direct::kOn;
  auto e = OpenReadEngine(path, o);
  ASSERT_OK(e);
  std::printf("tmpfs: %s\n", (*e)->report().direct_reason.c_str());
  if (!(*e)->report().direct) {
    EXPECT_THAT((*e)->report().direct_reason, HasSubstr("buffered"));
  }
  auto q = (*e)->NewQueue();
  ASSERT_OK(q);
  AlignedBuffer buf(1 << 20, 4096);
  ASSERT_OK((*q)->Submit({0, 1 << 20, buf.data(), 0}));
  std::vector<ReadCompletion> out;
  ASSERT_OK((*q)->Wait(1, &out));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_OK(out[0].status);
  EXPECT_EQ(std::memcmp(buf.data(), bytes.data(), bytes.size()), 0);
  ::unlink(path.c_str());
}

}  // namespace
}  // namespace stasis
