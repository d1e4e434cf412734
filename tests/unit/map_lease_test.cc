// The map route's guarantee (restore/map_lease.h): chunks mapped from an image never change
// after they were checked, whatever happens to the file. A writer's open(O_TRUNC), a
// truncate and `cp` onto the image wait while the mapped chunks are copied out; without a
// lease nothing is mapped; a lease that breaks during the restore (before a chunk is
// mapped, or between its map and its checksum) still restores exactly the checked bytes;
// Unload releases the lease and Reload takes a new one.
#include "restore/map_lease.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "stasis/image.h"
#include "stasis/restore.h"
#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using internal::MapLease;
using ::testing::HasSubstr;
using testing::RandomBytes;
using testing::TempDir;
using testing::TestSeed;

// Whether any mapping of this process is of the file with inode `ino` (column 5 of
// /proc/self/maps): after a copy-out or an unload none may be.
bool ProcessMapsInode(ino_t ino) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    std::istringstream in(line);
    std::string range, perms, offset, dev;
    unsigned long long inode = 0;
    in >> range >> perms >> offset >> dev >> inode;
    if (inode == static_cast<unsigned long long>(ino)) return true;
  }
  return false;
}

ino_t InodeOf(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_ino;
}

// Writes `bytes` over the file in place: open(O_WRONLY | O_TRUNC), as cp does. The open
// waits for every read lease on the file to be released.
void OverwriteInPlace(const std::string& path, const std::string& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_TRUNC);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  ASSERT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

// A seam over the real OS that can make the lease look broken (F_GETLEASE says F_UNLCK)
// from a chosen chunk on, then runs the watcher's work at once: the break lands exactly
// there. `after_break` runs right after the copy-out.
class BreakingSeam final : public internal::LeaseSeam {
 public:
  int GetLease(int fd) override { return broken_ ? F_UNLCK : LeaseSeam::GetLease(fd); }
  void BeforeMap(uint64_t chunk) override {
    if (break_before_ == static_cast<int64_t>(chunk)) Break(chunk);
  }
  void AfterMap(uint64_t chunk) override {
    if (break_after_ == static_cast<int64_t>(chunk)) Break(chunk);
  }
  int64_t break_before_ = -1, break_after_ = -1;
  std::function<void(uint64_t)> after_break;

 private:
  void Break(uint64_t chunk) {
    broken_ = true;
    MapLease::HandleBreaks();
    if (after_break) after_break(chunk);
  }
  std::atomic<bool> broken_{false};
};

// Refuses every lease with one errno.
class RefusingSeam final : public internal::LeaseSeam {
 public:
  explicit RefusingSeam(int err) : err_(err) {}
  int TakeReadLease(int, int) override { return -err_; }

 private:
  int err_;
};

class BreakTimeSeam final : public internal::LeaseSeam {
 public:
  explicit BreakTimeSeam(int s) : s_(s) {}
  int LeaseBreakSeconds() override { return s_; }

 private:
  int s_;
};

class MapLeaseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    a_ = RandomBytes(1 << 20, TestSeed());
    b_ = RandomBytes(600 << 10, TestSeed() + 1);
    tensors_ = {
        {"a", DType::kU8, {static_cast<int64_t>(a_.size())}, {}, a_.data(), a_.size(), 0},
        {"b", DType::kU8, {static_cast<int64_t>(b_.size())}, {}, b_.data(), b_.size(), 0},
    };
    WriterOptions wo;
    wo.codec = CodecChoice::kRaw;
    wo.chunk_size = 64 << 10;  // whole pages: every chunk can be mapped
    ASSERT_OK(SnapshotHostTensors(tensors_, {}, image(), wo));
    original_ = testing::ReadFile(image());
    ino_ = InodeOf(image());
  }
  std::string image() const { return dir_.File("model.stasis"); }

  static RestoreOptions Mapped(int threads = 2) {
    RestoreOptions o;
    o.map_file = RestoreOptions::MapFile::kOn;
    o.threads = threads;
    return o;
  }

  void ExpectOriginal(const RestoredModel& model) {
    for (const auto& t : tensors_) {
      std::optional<RestoredTensor> r = model.FindTensor(t.name);
      ASSERT_TRUE(r.has_value()) << t.name;
      ASSERT_EQ(r->byte_size, t.storage_bytes);
      EXPECT_EQ(0, std::memcmp(reinterpret_cast<const void*>(r->address), t.storage, r->byte_size))
          << t.name << ": restored bytes changed";
    }
  }

  // Another image of the same size and layout, different bytes: what `cp` writes over it.
  std::string OtherImage() {
    std::vector<uint8_t> a = RandomBytes(a_.size(), TestSeed() + 7);
    std::vector<uint8_t> b = RandomBytes(b_.size(), TestSeed() + 8);
    std::vector<HostTensor> t = tensors_;
    t[0].storage = a.data();
    t[1].storage = b.data();
    WriterOptions wo;
    wo.codec = CodecChoice::kRaw;
    wo.chunk_size = 64 << 10;
    const std::string path = dir_.File("other.stasis");
    EXPECT_OK(SnapshotHostTensors(t, {}, path, wo));
    return path;
  }

  TempDir dir_;
  std::vector<uint8_t> a_, b_;
  std::vector<HostTensor> tensors_;
  std::string original_;
  ino_t ino_ = 0;
};

TEST_F(MapLeaseTest, AWriterThatTruncatesWaitsForTheCopyOutAndTheBytesNeverChange) {
  auto model = RestoredModel::Restore(image(), Mapped());
  ASSERT_OK(model.status());
  const RestoreReport& r = (*model)->report();
  EXPECT_EQ(r.chunks_mapped, r.chunks) << r.map_reason;
  EXPECT_EQ(r.map_reason, "mapped under a read lease");
  EXPECT_TRUE(ProcessMapsInode(ino_));
  ExpectOriginal(**model);

  // The writer blocks in open() until the lease is released: on a thread of its own.
  const std::string garbage(original_.size(), '\x5a');
  std::thread writer([&] { OverwriteInPlace(image(), garbage); });
  writer.join();
  EXPECT_EQ(testing::ReadFile(image()), garbage) << "the writer got through";
  EXPECT_FALSE(ProcessMapsInode(ino_)) << "mapped ranges still depend on the file";
  ExpectOriginal(**model);
  // And a truncation now is harmless (no SIGBUS on reading every byte).
  ASSERT_EQ(::truncate(image().c_str(), 0), 0);
  ExpectOriginal(**model);
}

TEST_F(MapLeaseTest, TruncateWaitsForTheCopyOutAndNothingFaults) {
  auto model = RestoredModel::Restore(image(), Mapped());
  ASSERT_OK(model.status());
  ASSERT_GT((*model)->report().chunks_mapped, 0u);
  std::thread t([&] { EXPECT_EQ(::truncate(image().c_str(), 4096), 0) << std::strerror(errno); });
  t.join();
  EXPECT_FALSE(ProcessMapsInode(ino_));
  ExpectOriginal(**model);  // would be SIGBUS past the new end of file
}

TEST_F(MapLeaseTest, CpFromAnotherProcessOntoTheImageLeavesTheBytesAlone) {
  const std::string other = OtherImage();
  auto model = RestoredModel::Restore(image(), Mapped());
  ASSERT_OK(model.status());
  ASSERT_GT((*model)->report().chunks_mapped, 0u);
  // The red-team reproduction: cp writes in place (open O_WRONLY|O_TRUNC, then write).
  auto cp = testing::RunCommand("cp " + other + " " + image(), dir_);
  ASSERT_EQ(cp.exit_code, 0) << cp.err;
  EXPECT_EQ(testing::ReadFile(image()), testing::ReadFile(other));
  ExpectOriginal(**model);
  auto again = testing::RunCommand("truncate -s 4096 " + image(), dir_);
  ASSERT_EQ(again.exit_code, 0) << again.err;
  ExpectOriginal(**model);
}

TEST_F(MapLeaseTest, TwoModelsOnOneFileAreBothCopiedOut) {
  auto first = RestoredModel::Restore(image(), Mapped());
  auto second = RestoredModel::Restore(image(), Mapped(1));
  ASSERT_OK(first.status());
  ASSERT_OK(second.status());
  EXPECT_GT((*first)->report().chunks_mapped, 0u);
  EXPECT_GT((*second)->report().chunks_mapped, 0u);
  std::thread writer([&] { OverwriteInPlace(image(), std::string(100, 'x')); });
  writer.join();
  EXPECT_FALSE(ProcessMapsInode(ino_));
  ExpectOriginal(**first);
  ExpectOriginal(**second);
}

TEST_F(MapLeaseTest, ANonBlockingWriterBreaksTheLeaseAndGetsInAfterTheCopyOut) {
  auto model = RestoredModel::Restore(image(), Mapped());
  ASSERT_OK(model.status());
  // O_NONBLOCK: the kernel starts the break and answers EWOULDBLOCK instead of waiting.
  const int fd = ::open(image().c_str(), O_WRONLY | O_NONBLOCK);
  EXPECT_LT(fd, 0);
  EXPECT_EQ(errno, EWOULDBLOCK);
  // The watcher copies out and releases; the next open gets in at once.
  int again = -1;
  for (int i = 0; i < 500 && again < 0; ++i) {
    again = ::open(image().c_str(), O_WRONLY | O_NONBLOCK);
    if (again < 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_GE(again, 0) << std::strerror(errno);
  ASSERT_EQ(::pwrite(again, "garbage!", 8, 4096 + 100), 8);
  ::close(again);
  EXPECT_FALSE(ProcessMapsInode(ino_));
  ExpectOriginal(**model);
}

TEST_F(MapLeaseTest, UnloadReleasesTheLeaseAndReloadTakesANewOne) {
  auto model = RestoredModel::Restore(image(), Mapped());
  ASSERT_OK(model.status());
  ASSERT_GT((*model)->report().chunks_mapped, 0u);
  ASSERT_OK((*model)->Unload());
  EXPECT_FALSE(ProcessMapsInode(ino_)) << "unloaded ranges still map the file";
  // No lease any more: a writer gets in at once.
  const int fd = ::open(image().c_str(), O_WRONLY | O_NONBLOCK);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  ::close(fd);
  ASSERT_OK((*model)->Reload());
  EXPECT_GT((*model)->report().chunks_mapped, 0u);
  EXPECT_EQ((*model)->report().map_reason, "mapped under a read lease");
  ExpectOriginal(**model);
  std::thread writer([&] { OverwriteInPlace(image(), std::string(10, 'y')); });
  writer.join();
  ExpectOriginal(**model);
  EXPECT_FALSE(ProcessMapsInode(ino_));
}

TEST_F(MapLeaseTest, NoLeaseWhileTheImageIsOpenForWritingSoNothingIsMapped) {
  // A writer already there: F_SETLEASE refuses (EAGAIN), and the chunks are copied.
  const int w = ::open(image().c_str(), O_RDWR);
  ASSERT_GE(w, 0);
  auto model = RestoredModel::Restore(image(), Mapped());
  ASSERT_OK(model.status());
  const RestoreReport& r = (*model)->report();
  EXPECT_EQ(r.chunks_mapped, 0u);
  EXPECT_EQ(r.chunks_read_in_place, r.chunks);
  EXPECT_THAT(r.map_reason, HasSubstr("open for writing"));
  EXPECT_THAT(r.map_reason, HasSubstr("copied"));
  EXPECT_FALSE(ProcessMapsInode(ino_));
  // That writer now changes the file: the copy is the restore's own.
  const std::string junk(8192, '\x11');
  ASSERT_EQ(::pwrite(w, junk.data(), junk.size(), 4096), static_cast<ssize_t>(junk.size()));
  ASSERT_EQ(::ftruncate(w, 4096), 0);
  ::close(w);
  ExpectOriginal(**model);
}

TEST_F(MapLeaseTest, EveryRefusalMeansCopiedWithTheReason) {
  struct Case {
    std::unique_ptr<internal::LeaseSeam> seam;
    std::string reason;
  };
  std::vector<Case> cases;
  cases.push_back({std::make_unique<RefusingSeam>(EACCES), "not this user's"});
  cases.push_back({std::make_unique<RefusingSeam>(EINVAL), "has no leases"});
  cases.push_back({std::make_unique<BreakTimeSeam>(1), "lease-break-time is 1 s"});
  cases.push_back({std::make_unique<BreakTimeSeam>(-1), "unreadable"});
  for (auto& c : cases) {
    RestoreOptions o = Mapped();
    o.lease_seam = c.seam.get();
    auto model = RestoredModel::Restore(image(), o);
    ASSERT_OK(model.status());
    EXPECT_EQ((*model)->report().chunks_mapped, 0u) << c.reason;
    EXPECT_THAT((*model)->report().map_reason, HasSubstr(c.reason));
    ExpectOriginal(**model);
  }
  EXPECT_FALSE(ProcessMapsInode(ino_));
}

TEST_F(MapLeaseTest, TooManyBytesForTheBreakTimeAreNotLeased) {
  // 2 s of break time allow 1 GiB of copy-out; more is refused before any lease is taken.
  BreakTimeSeam seam(2);
  EXPECT_THAT(MapLease::Acquire(-1, 0, &seam).status(),
              StatusIs(StatusCode::kFailedPrecondition, HasSubstr("no descriptor")));
  const int fd = ::open(image().c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  EXPECT_THAT(MapLease::Acquire(fd, 2ull << 30, &seam).status(),
              StatusIs(StatusCode::kFailedPrecondition, HasSubstr("might not be copied out")));
  auto ok = MapLease::Acquire(fd, 1ull << 20, &seam);
  ASSERT_OK(ok.status());
  EXPECT_TRUE((*ok)->held());
  ok->reset();
  ::close(fd);
}

TEST_F(MapLeaseTest, AProcessHandlerForTheSignalIsNeverReplacedAndMeansCopied) {
  // Take one lease first, so that the handler installed is stasis's.
  {
    auto warm = RestoredModel::Restore(image(), Mapped());
    ASSERT_OK(warm.status());
  }
  struct sigaction mine, saved;
  std::memset(&mine, 0, sizeof(mine));
  mine.sa_handler = [](int) {};
  sigemptyset(&mine.sa_mask);
  ASSERT_EQ(::sigaction(internal::MapLeaseSignal(), &mine, &saved), 0);
  auto model = RestoredModel::Restore(image(), Mapped());
  struct sigaction now;
  ::sigaction(internal::MapLeaseSignal(), &saved, &now);
  EXPECT_EQ(now.sa_handler, mine.sa_handler) << "the process's handler was replaced";
  ASSERT_OK(model.status());
  EXPECT_EQ((*model)->report().chunks_mapped, 0u);
  EXPECT_THAT((*model)->report().map_reason, HasSubstr("handler of the process's own"));
  ExpectOriginal(**model);
}

TEST_F(MapLeaseTest, ALostSignalIsCaughtByTheWatchersOnceASecondCheck) {
  auto model = RestoredModel::Restore(image(), Mapped());
  ASSERT_OK(model.status());
  ASSERT_GT((*model)->report().chunks_mapped, 0u);
  // The process ignores the signal from now on: the break's signal is lost.
  struct sigaction ignore, saved;
  std::memset(&ignore, 0, sizeof(ignore));
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  ASSERT_EQ(::sigaction(internal::MapLeaseSignal(), &ignore, &saved), 0);
  const auto start = std::chrono::steady_clock::now();
  std::thread writer([&] { OverwriteInPlace(image(), std::string(64, 'z')); });
  writer.join();
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(::sigaction(internal::MapLeaseSignal(), &saved, nullptr), 0);
  EXPECT_LT(waited, 10.0) << "the kernel's break time ran out instead (45 s by default)";
  EXPECT_FALSE(ProcessMapsInode(ino_));
  ExpectOriginal(**model);
}

TEST_F(MapLeaseTest, ABreakBeforeAChunkIsMappedReadsItInstead) {
  auto m = ImageReader::Open(image());
  ASSERT_OK(m.status());
  const uint64_t chunks = (*m)->manifest().chunks.size();
  ASSERT_GT(chunks, 10u);
  for (int64_t k : {int64_t{0}, int64_t{5}}) {
    BreakingSeam seam;
    seam.break_before_ = k;
    RestoreOptions o = Mapped(1);  // one worker: chunks come in file order
    o.lease_seam = &seam;
    auto model = RestoredModel::Restore(image(), o);
    ASSERT_OK(model.status());
    const RestoreReport& r = (*model)->report();
    EXPECT_EQ(r.chunks_mapped, static_cast<uint64_t>(k)) << "mapped before the break";
    EXPECT_EQ(r.chunks_read_in_place, chunks - k) << "read after it";
    EXPECT_FALSE(ProcessMapsInode(ino_)) << "the chunks mapped before the break were copied out";
    ExpectOriginal(**model);
  }
}

TEST_F(MapLeaseTest, ABreakBetweenMapAndChecksumChecksTheCopy) {
  auto m = ImageReader::Open(image());
  ASSERT_OK(m.status());
  const format::ChunkInfo c3 = (*m)->manifest().chunks[3];
  BreakingSeam seam;
  seam.break_after_ = 3;
  // Once the lease is released the file may change: chunk 3's bytes in the file become
  // garbage before its checksum runs. The checksum must see (and the model keep) the
  // bytes that were there while the lease was held.
  seam.after_break = [&](uint64_t) {
    const int fd = ::open(image().c_str(), O_WRONLY);
    ASSERT_GE(fd, 0) << "the lease is released: no wait";
    const std::string junk(c3.stored_size, '\x77');
    ASSERT_EQ(::pwrite(fd, junk.data(), junk.size(), static_cast<off_t>(c3.file_offset)),
              static_cast<ssize_t>(junk.size()));
    ::close(fd);
  };
  RestoreOptions o = Mapped(1);
  o.lease_seam = &seam;
  auto model = RestoredModel::Restore(image(), o);
  ASSERT_OK(model.status());
  EXPECT_EQ((*model)->report().chunks_mapped, 4u);  // 0..3
  EXPECT_FALSE(ProcessMapsInode(ino_));
  ExpectOriginal(**model);
}

TEST_F(MapLeaseTest, AWriterRacingTheRestoreNeverYieldsChangedBytes) {
  // However the writer and the restore interleave: the restore fails (the checksums saw
  // the new bytes), or it succeeds with exactly the original ones, which stay.
  // The garbage covers the chunks only (the manifest stays intact).
  auto m = ImageReader::Open(image());
  ASSERT_OK(m.status());
  uint64_t begin = UINT64_MAX, end = 0;
  for (const auto& c : (*m)->manifest().chunks) {
    begin = std::min(begin, c.file_offset);
    end = std::max(end, c.file_offset + c.stored_size);
  }
  m->reset();
  const std::string garbage(end - begin, '\x33');
  int succeeded = 0, failed = 0;
  for (int round = 0; round < 12; ++round) {
    testing::WriteFile(image(), original_);
    std::atomic<bool> go{false};
    std::thread writer([&] {
      while (!go.load()) std::this_thread::yield();
      std::this_thread::sleep_for(std::chrono::microseconds(200 * round));
      const int fd = ::open(image().c_str(), O_WRONLY);
      ASSERT_GE(fd, 0);
      ASSERT_EQ(::pwrite(fd, garbage.data(), garbage.size(), static_cast<off_t>(begin)),
                static_cast<ssize_t>(garbage.size()));
      ::close(fd);
    });
    go = true;
    auto model = RestoredModel::Restore(image(), Mapped());
    writer.join();
    EXPECT_FALSE(ProcessMapsInode(InodeOf(image()))) << "round " << round;
    if (!model.ok()) {
      ++failed;
      EXPECT_THAT(model.status(), StatusIs(StatusCode::kDataLoss, HasSubstr("checksum")));
      continue;
    }
    ++succeeded;
    ExpectOriginal(**model);
  }
  std::printf("racing writer: %d restores succeeded, %d failed\n", succeeded, failed);
}

TEST_F(MapLeaseTest, TheWatcherIsOneForTheProcessAndForgetsReleasedLeases) {
  const size_t before = MapLease::RegisteredForTest();
  {
    auto a = RestoredModel::Restore(image(), Mapped());
    auto b = RestoredModel::Restore(image(), Mapped());
    ASSERT_OK(a.status());
    ASSERT_OK(b.status());
    EXPECT_EQ(MapLease::RegisteredForTest(), before + 2);
    ASSERT_OK((*a)->Unload());
    EXPECT_EQ(MapLease::RegisteredForTest(), before + 1);
  }
  EXPECT_EQ(MapLease::RegisteredForTest(), before);
  EXPECT_FALSE(ProcessMapsInode(ino_));
}

}  // namespace
}  // namespace stasis
