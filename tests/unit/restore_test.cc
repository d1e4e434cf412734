// The restore pipeline on the host backend: byte-identical restores through every route,
// reader and codec, and every failure path returning a clear Status without leaks.
#include "stasis/restore.h"

#include <dirent.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>

#include "common/fault_injection_file_system.h"
#include "stasis/image.h"
#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using ::testing::HasSubstr;
using testing::NormalBF16Bytes;
using testing::NormalF32Bytes;
using testing::RandomBytes;
using testing::TempDir;
using testing::TestSeed;

size_t CountEntries(const char* dir) {
  size_t n = 0;
  if (DIR* d = ::opendir(dir)) {
    while (::readdir(d)) ++n;
    ::closedir(d);
  }
  return n;
}
// Open fds and threads: what a failed restore must not leak. (Mappings are counted by
// the backend wrapper below: /proc/self/maps lines merge and split as the C library and
// the kernel please, so counting them is not a reliable leak check.)
struct Resources {
  size_t fds = CountEntries("/proc/self/fd");
  size_t threads = CountEntries("/proc/self/task");
};

// A backend that fails at its k-th call of MapRegion or AllocateStaging.
class FailingBackend final : public DeviceBackend {
 public:
  FailingBackend(std::unique_ptr<DeviceBackend> base, int fail_at, int* calls)
      : base_(std::move(base)), fail_at_(fail_at), calls_(calls) {}
  DeviceSpec device() const override { return base_->device(); }
  StatusOr<MappedRegion> MapRegion(const format::RegionInfo& r) override {
    if (++*calls_ == fail_at_) return ResourceExhaustedError("injected: out of device memory");
    auto m = base_->MapRegion(r);
    if (m.ok()) mapped_.push_back(*m);
    return m;
  }
  Status UnmapRegion(const MappedRegion& r) override {
    ++unmapped_;
    return base_->UnmapRegion(r);
  }
  ~FailingBackend() override {
    EXPECT_EQ(unmapped_, mapped_.size()) << "every mapped region is unmapped";
    EXPECT_EQ(staging_, 0) << "staging memory is freed";
  }
  Status Unload(const MappedRegion& r) override { return base_->Unload(r); }
  Status Reload(const MappedRegion& r) override { return base_->Reload(r); }
  StatusOr<uint8_t*> AllocateStaging(size_t n) override {
    if (++*calls_ == fail_at_) return ResourceExhaustedError("injected: no pinned memory");
    auto p = base_->AllocateStaging(n);
    staging_ += p.ok();
    return p;
  }
  void FreeStaging(uint8_t* p) override {
    --staging_;
    base_->FreeStaging(p);
  }
  Status Copy(uint64_t d, const void* s, size_t n, int slot) override {
    return base_->Copy(d, s, n, slot);
  }
  Status WaitCopies(int slot) override { return base_->WaitCopies(slot); }
  Status Synchronize() override { return base_->Synchronize(); }

 private:
  std::unique_ptr<DeviceBackend> base_;
  int fail_at_;
  int* calls_;
  std::vector<MappedRegion> mapped_;
  size_t unmapped_ = 0;
  int staging_ = 0;
};

// Host memory presented as a device: regions have no host view, so every chunk goes
// through staging slots and Copy, as on a GPU.
class DeviceLikeBackend final : public DeviceBackend {
 public:
  DeviceLikeBackend() : base_(NewHostBackend()) {}
  DeviceSpec device() const override { return base_->device(); }
  StatusOr<MappedRegion> MapRegion(const format::RegionInfo& r) override {
    STASIS_ASSIGN_OR_RETURN(MappedRegion m, base_->MapRegion(r));
    m.host_view = nullptr;
    m.host_view_mappable = false;
    return m;
  }
  Status UnmapRegion(const MappedRegion& r) override { return base_->UnmapRegion(r); }
  Status Unload(const MappedRegion& r) override { return base_->Unload(r); }
  Status Reload(const MappedRegion& r) override { return base_->Reload(r); }
  StatusOr<uint8_t*> AllocateStaging(size_t n) override { return base_->AllocateStaging(n); }
  void FreeStaging(uint8_t* p) override { base_->FreeStaging(p); }
  Status Copy(uint64_t d, const void* s, size_t n, int) override {
    std::memcpy(reinterpret_cast<void*>(d), s, n);
    return OkStatus();
  }
  Status WaitCopies(int) override { return OkStatus(); }
  Status Synchronize() override { return OkStatus(); }

 private:
  std::unique_ptr<DeviceBackend> base_;
};

// Host backend that checks, when destroyed, that everything it mapped was released.
std::function<StatusOr<std::unique_ptr<DeviceBackend>>(const DeviceSpec&)> CheckedHostBackend() {
  return [](const DeviceSpec&) -> StatusOr<std::unique_ptr<DeviceBackend>> {
    static int calls = 0;
    return std::unique_ptr<DeviceBackend>(new FailingBackend(NewHostBackend(), -1, &calls));
  };
}

class RestoreTest : public ::testing::TestWithParam<CodecChoice> {
 protected:
  void SetUp() override {
    f32_ = NormalF32Bytes(300000, TestSeed());
    bf16_ = NormalBF16Bytes(500000, TestSeed() + 1);
    noise_ = RandomBytes(70001, TestSeed() + 2);
    tensors_ = {
        {"f32", DType::kF32, {300, 1000}, {}, f32_.data(), f32_.size(), 0},
        {"f32.t", DType::kF32, {1000, 300}, {1, 1000}, f32_.data(), f32_.size(), 0},
        {"bf16", DType::kBF16, {500000}, {}, bf16_.data(), bf16_.size(), 0},
        {"noise", DType::kU8, {70001}, {}, noise_.data(), noise_.size(), 0},
        {"tail", DType::kI8, {7}, {}, noise_.data(), noise_.size(), 100},
    };
    WriterOptions opt;
    opt.codec = GetParam();
    opt.chunk_size = 64 << 10;  // many chunks: many routes and workers
    ASSERT_OK(SnapshotHostTensors(tensors_, {}, image(), opt));
  }
  std::string image() const { return dir_.File("model.stasis"); }

  void ExpectIdentical(const RestoredModel& model) {
    for (const auto& t : tensors_) {
      std::optional<RestoredTensor> r = model.FindTensor(t.name);
      ASSERT_TRUE(r.has_value()) << t.name;
      ASSERT_EQ(r->device.kind, format::DeviceKind::kCpu);
      const uint8_t* got = reinterpret_cast<const uint8_t*>(r->address);
      const uint8_t* want = static_cast<const uint8_t*>(t.storage) + t.byte_offset;
      ASSERT_EQ(0, std::memcmp(got, want, r->byte_size)) << t.name;
    }
  }

  TempDir dir_;
  std::vector<uint8_t> f32_, bf16_, noise_;
  std::vector<HostTensor> tensors_;
};

TEST_P(RestoreTest, ByteIdenticalForEveryWorkerCountAndStagingSize) {
  for (int threads : {1, 2, 5}) {
    for (uint64_t staging : {1ull << 20, 256ull << 20}) {
      RestoreOptions o;
      o.threads = threads;
      o.staging_bytes = staging;
      o.fs = DefaultFileSystem();
      auto model = RestoredModel::Restore(image(), o);
      ASSERT_OK(model.status()) << threads << " threads, " << staging << " staging";
      ExpectIdentical(**model);
      const RestoreReport& r = (*model)->report();
      EXPECT_LE(r.staging_bytes, staging);
      EXPECT_LE(r.raw_bytes, (*model)->manifest().regions[0].size);  // alignment gaps stay zero
      EXPECT_GE(r.raw_bytes, f32_.size() + bf16_.size() + noise_.size());
      EXPECT_TRUE(r.verified_raw);
    }
  }
}

// tensors() is made on access from the manifest's table: every tensor, in the manifest's
// (sorted) order, each the same as FindTensor's; an iterator outlives the temporary range.
TEST_P(RestoreTest, TensorsAreTheManifestsWhereTheRestorePutThem) {
  auto model = RestoredModel::Restore(image(), {});
  ASSERT_OK(model.status());
  const RestoredModel& m = **model;
  ASSERT_EQ(m.tensors().size(), tensors_.size());
  auto it = m.tensors().begin();  // the range it came from is gone at the semicolon
  EXPECT_EQ(it->name, "bf16");
  std::vector<std::string> names;
  for (const RestoredTensor& t : m.tensors()) {
    names.emplace_back(t.name);
    std::optional<RestoredTensor> found = m.FindTensor(t.name);
    ASSERT_TRUE(found.has_value()) << t.name;
    EXPECT_EQ(found->address, t.address);
    EXPECT_EQ(found->byte_size, t.byte_size);
    EXPECT_EQ(found->shape.data(), t.shape.data());
    const format::TensorRef rec = *m.manifest().FindTensor(t.name);
    EXPECT_EQ(t.address, m.regions()[rec.region_id].address + rec.byte_offset);
  }
  EXPECT_THAT(names, ::testing::ElementsAre("bf16", "f32", "f32.t", "noise", "tail"));
  EXPECT_THAT(m.FindTensor("f32.t")->strides, ::testing::ElementsAre(1, 1000));
  EXPECT_FALSE(m.FindTensor("f3").has_value());
  EXPECT_FALSE(m.FindTensor("zzz").has_value());
}

TEST_P(RestoreTest, QueueDepthBelowTwoIsRefused) {
  RestoreOptions o;
  o.fs = DefaultFileSystem();
  o.queue_depth = 1;  // a chunk read in place can need two reads at once
  EXPECT_THAT(RestoredModel::Restore(image(), o).status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("queue depth")));
}

// The default worker count follows the cores; when the staging memory cannot give each of
// them two slots, fewer workers run. An explicit thread count keeps its error.
TEST_P(RestoreTest, DefaultWorkersShrinkToFitTheStaging) {
  RestoreOptions o;
  o.fs = DefaultFileSystem();
  o.threads = 64;
  o.staging_bytes = 200 << 10;            // two 64 KiB slots for one worker, not for two
  if (GetParam() != CodecChoice::kRaw) {  // raw chunks are read in place, without slots
    EXPECT_THAT(RestoredModel::Restore(image(), o).status(),
                StatusIs(StatusCode::kInvalidArgument, HasSubstr("too small")));
  }
  o.threads = 0;
  auto model = RestoredModel::Restore(image(), o);
  ASSERT_OK(model.status());
  ExpectIdentical(**model);
  EXPECT_LE((*model)->report().workers, 2);
}

// On a device, a compressed chunk needs a slot for its stored bytes and one for its decoded
// bytes; raw chunks submitted meanwhile must not take the second (they did: "ran out of
// staging slots").
TEST(RestoreStagingTest, MixedChunksOnADeviceNeverRunOutOfSlots) {
  TempDir dir;
  std::vector<uint8_t> bytes;
  for (int i = 0; i < 40; ++i) {
    auto part =
        i % 2 ? RandomBytes(64 << 10, TestSeed() + i) : NormalBF16Bytes(32 << 10, TestSeed() + i);
    bytes.insert(bytes.end(), part.begin(), part.end());
  }
  std::vector<HostTensor> tensors = {{"mixed",
                                      DType::kBF16,
                                      {static_cast<int64_t>(bytes.size() / 2)},
                                      {},
                                      bytes.data(),
                                      bytes.size(),
                                      0}};
  WriterOptions wo;
  wo.codec = CodecChoice::kAuto;
  wo.chunk_size = 64 << 10;
  const std::string image = dir.File("mixed.stasis");
  ASSERT_OK(SnapshotHostTensors(tensors, {}, image, wo));
  RestoreOptions o;
  o.fs = DefaultFileSystem();
  o.threads = 1;
  o.backend_factory = [](const DeviceSpec&) -> StatusOr<std::unique_ptr<DeviceBackend>> {
    return std::unique_ptr<DeviceBackend>(new DeviceLikeBackend());
  };
  auto model = RestoredModel::Restore(image, o);
  ASSERT_OK(model.status());
  std::optional<RestoredTensor> t = (*model)->FindTensor("mixed");
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(0, std::memcmp(reinterpret_cast<const void*>(t->address), bytes.data(), bytes.size()));
}

// The reader and the read engine open the image separately; if the path names another file
// by the time the engine opens it, the restore stops instead of mixing the two.
TEST_P(RestoreTest, ImageReplacedBetweenOpensIsAborted) {
  // A file system whose second open of the image yields another file.
  class SwappingFileSystem final : public FileSystemWrapper {
   public:
    SwappingFileSystem(std::string image, std::string other)
        : FileSystemWrapper(DefaultFileSystem()),
          image_(std::move(image)),
          other_(std::move(other)) {}
    StatusOr<std::unique_ptr<RandomAccessFile>> OpenRandomAccess(const std::string& p) override {
      const bool swap = p == image_ && ++opens_ == 2;
      return FileSystemWrapper::OpenRandomAccess(swap ? other_ : p);
    }

   private:
    std::string image_, other_;
    int opens_ = 0;
  };
  std::vector<HostTensor> other_tensors = {tensors_[3]};  // a different, smaller image
  const std::string other = dir_.File("other.stasis");
  ASSERT_OK(SnapshotHostTensors(other_tensors, {}, other, WriterOptions{}));
  SwappingFileSystem fs(image(), other);
  RestoreOptions o;
  o.fs = &fs;
  EXPECT_THAT(RestoredModel::Restore(image(), o).status(),
              StatusIs(StatusCode::kAborted, HasSubstr("replaced")));
}

TEST_P(RestoreTest, ShortReadsAndEagainStormsStillRestore) {
  RestoreOptions o;
  o.fs = DefaultFileSystem();
  o.threads = 2;
  std::atomic<int> calls{0};
  o.fault_hook = [&](uint64_t, uint64_t length, int64_t result) -> int64_t {
    int k = calls++;
    if (k % 7 == 3) return -EAGAIN;
    if (k % 11 == 5) return -EINTR;
    return result > 3 ? result / 3 : result;  // a short read every time
  };
  auto model = RestoredModel::Restore(image(), o);
  ASSERT_OK(model.status());
  ExpectIdentical(**model);
}

TEST_P(RestoreTest, FailuresAreClearAndLeakNothing) {
  {
    // Warm up the C library's caches of thread stacks and arenas (see Resources).
    RestoreOptions o;
    o.fs = DefaultFileSystem();
    o.threads = 2;
    ASSERT_OK(RestoredModel::Restore(image(), o).status());
  }
  Resources before;
  {
    // EIO at the k-th read.
    for (int k : {0, 1, 5, 20}) {
      RestoreOptions o;
      o.fs = DefaultFileSystem();
      o.threads = 2;
      o.backend_factory = CheckedHostBackend();
      std::atomic<int> calls{0};
      o.fault_hook = [&](uint64_t, uint64_t, int64_t result) -> int64_t {
        return calls++ == k ? -EIO : result;
      };
      EXPECT_THAT(RestoredModel::Restore(image(), o).status(),
                  StatusIs(StatusCode::kUnavailable, HasSubstr("chunk")))
          << "EIO at read " << k;
    }
    // An endless EAGAIN storm.
    RestoreOptions o;
    o.fs = DefaultFileSystem();
    o.backend_factory = CheckedHostBackend();
    o.fault_hook = [](uint64_t, uint64_t, int64_t) -> int64_t { return -EAGAIN; };
    EXPECT_THAT(RestoredModel::Restore(image(), o).status(),
                StatusIs(StatusCode::kUnavailable, HasSubstr("EAGAIN storm")));
    // EOF: the file seen as shorter than it is.
    o.fault_hook = [](uint64_t off, uint64_t, int64_t result) -> int64_t {
      return off > 300000 ? 0 : result;
    };
    EXPECT_THAT(RestoredModel::Restore(image(), o).status(),
                StatusIs(StatusCode::kOutOfRange, HasSubstr("truncated")));
    // EIO through the file-system seam itself.
    FaultInjectionFileSystem fs(DefaultFileSystem());
    fs.set_plan(FaultPlan{.fail_read_at = 6});
    o = RestoreOptions{};
    o.fs = &fs;
    o.threads = 1;
    EXPECT_THAT(RestoredModel::Restore(image(), o).status(),
                StatusIs(StatusCode::kUnavailable, HasSubstr("injected")));
  }
  Resources after;
  EXPECT_EQ(after.fds, before.fds);
  EXPECT_EQ(after.threads, before.threads);
}

// RestoreOptions::progress counts every raw byte once; RestoreOptions::cancel stops a
// restore at its next chunk with kCancelled, releasing everything it mapped.
TEST_P(RestoreTest, ProgressCountsEveryByteAndCancelStopsCleanly) {
  std::atomic<uint64_t> progress{0};
  std::atomic<bool> cancel{false};
  RestoreOptions o;
  o.fs = DefaultFileSystem();
  o.threads = 2;
  o.progress = &progress;
  o.cancel = &cancel;
  auto model = RestoredModel::Restore(image(), o);
  ASSERT_OK(model.status());
  EXPECT_EQ(progress.load(), (*model)->manifest().RawBytes());
  model->reset();

  Resources before;
  for (int k : {0, 3}) {  // cancelled before the first chunk, and after a few
    cancel = false;
    progress = 0;
    std::atomic<int> reads{0};
    o.backend_factory = CheckedHostBackend();
    o.fault_hook = [&](uint64_t, uint64_t, int64_t result) -> int64_t {
      if (reads++ == k) cancel = true;
      return result;
    };
    EXPECT_THAT(RestoredModel::Restore(image(), o).status(),
                StatusIs(StatusCode::kCancelled, HasSubstr("cancelled by the caller")))
        << "cancelled at read " << k;
    EXPECT_LT(progress.load(), o.staging_bytes);
  }
  Resources after;
  EXPECT_EQ(after.fds, before.fds);
  EXPECT_EQ(after.threads, before.threads);
}

TEST_P(RestoreTest, ChecksumMismatchIsDataLossNamingTheChunk) {
  std::string bytes = testing::ReadFile(image());
  bytes[4096 + 10] ^= 0x40;  // inside chunk 0's payload
  testing::WriteFile(image(), bytes);
  RestoreOptions o;
  o.fs = DefaultFileSystem();
  EXPECT_THAT(RestoredModel::Restore(image(), o).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("chunk 0: checksum")));
}

TEST_P(RestoreTest, UnloadAndReloadKeepAddresses) {
  RestoreOptions o;
  o.fs = DefaultFileSystem();
  auto model = RestoredModel::Restore(image(), o);
  ASSERT_OK(model.status());
  std::vector<uint64_t> addresses;
  for (const auto& t : (*model)->tensors()) addresses.push_back(t.address);
  EXPECT_GT((*model)->device_bytes(), 0u);
  ASSERT_OK((*model)->Unload());
  EXPECT_FALSE((*model)->loaded());
  EXPECT_EQ((*model)->device_bytes(), 0u);
  ASSERT_OK((*model)->Unload());  // idempotent
  ASSERT_OK((*model)->Reload());
  EXPECT_TRUE((*model)->loaded());
  for (size_t i = 0; i < addresses.size(); ++i)
    EXPECT_EQ((*model)->tensors()[i].address, addresses[i]);
  ExpectIdentical(**model);
}

TEST_P(RestoreTest, MappedChunksAreByteIdenticalPrivateAndSurviveUnload) {
  const std::string before = testing::ReadFile(image());
  RestoreOptions o;  // the real engine (mapping needs a file descriptor)
  o.map_file = RestoreOptions::MapFile::kOn;
  o.threads = 2;
  auto model = RestoredModel::Restore(image(), o);
  ASSERT_OK(model.status());
  const RestoreReport& r = (*model)->report();
  if (GetParam() == CodecChoice::kRaw) {
    EXPECT_GT(r.chunks_mapped, r.chunks / 2) << "64 KiB raw chunks are whole pages";
  }
  ExpectIdentical(**model);
  // Copy-on-write: writing restored memory never reaches the image.
  std::optional<RestoredTensor> t = (*model)->FindTensor("f32");
  ASSERT_TRUE(t.has_value());
  std::memset(reinterpret_cast<void*>(t->address), 0xAB, t->byte_size);
  EXPECT_EQ(testing::ReadFile(image()), before);
  ASSERT_OK((*model)->Unload());
  ASSERT_OK((*model)->Reload());
  ExpectIdentical(**model);
  // Mapping off: nothing mapped, same bytes.
  o.map_file = RestoreOptions::MapFile::kOff;
  auto copied = RestoredModel::Restore(image(), o);
  ASSERT_OK(copied.status());
  EXPECT_EQ((*copied)->report().chunks_mapped, 0u);
  ExpectIdentical(**copied);
}

TEST_P(RestoreTest, CorruptMappedChunkIsDataLossAndLeaksNoDescriptor) {
  {
    // The first lease of the process starts its watcher (an eventfd and a thread that
    // live as long as the process, restore/map_lease.h): not a leak, so not counted.
    RestoreOptions o;
    o.map_file = RestoreOptions::MapFile::kOn;
    ASSERT_OK(RestoredModel::Restore(image(), o).status());
  }
  std::string bytes = testing::ReadFile(image());
  bytes[4096 + 10] ^= 0x40;  // inside chunk 0's payload
  testing::WriteFile(image(), bytes);
  Resources before;
  RestoreOptions o;
  o.map_file = RestoreOptions::MapFile::kOn;
  EXPECT_THAT(RestoredModel::Restore(image(), o).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("chunk 0: checksum")));
  Resources after;
  EXPECT_EQ(after.fds, before.fds);
}

// Options that check nothing (stasis restore --no-checksums), mapping or copying.
RestoreOptions Unchecked(RestoreOptions::MapFile map) {
  RestoreOptions o;
  o.map_file = map;
  o.verify = false;
  o.verify_stored = false;
  return o;
}

TEST_P(RestoreTest, WithoutChecksumsEveryByteIsStillRestoredAndTheReportSaysSo) {
  for (auto map : {RestoreOptions::MapFile::kOn, RestoreOptions::MapFile::kOff}) {
    auto model = RestoredModel::Restore(image(), Unchecked(map));
    ASSERT_OK(model.status());
    EXPECT_FALSE((*model)->report().verified_stored);
    EXPECT_FALSE((*model)->report().verified_raw);
    EXPECT_EQ((*model)->report().phases.verify, 0.0);
    ExpectIdentical(**model);
  }
}

TEST_P(RestoreTest, WithoutChecksumsACorruptRawChunkIsRestoredAsStored) {
  std::string bytes = testing::ReadFile(image());
  bytes[4096 + 10] ^= 0x40;  // inside chunk 0's payload
  testing::WriteFile(image(), bytes);
  for (auto map : {RestoreOptions::MapFile::kOn, RestoreOptions::MapFile::kOff}) {
    RestoreOptions o = Unchecked(map);
    auto model = RestoredModel::Restore(image(), o);
    if (GetParam() != CodecChoice::kRaw) {
      // A corrupt frame may still fail to decode; it must never crash or pass as checked.
      if (model.ok())
        EXPECT_FALSE((*model)->report().verified_stored);
      else
        EXPECT_EQ(model.status().code(), StatusCode::kDataLoss) << model.status();
      continue;
    }
    ASSERT_OK(model.status());
    // The bytes at the start of region 0 (v2 lists tensors by name, not by offset).
    const auto* restored = reinterpret_cast<const uint8_t*>((*model)->regions()[0].address);
    EXPECT_EQ(restored[10], static_cast<uint8_t>(bytes[4096 + 10]))
        << "the file's byte, unchecked, not the original one";
    // The default still refuses the same image.
    o.verify = o.verify_stored = true;
    EXPECT_THAT(RestoredModel::Restore(image(), o).status(),
                StatusIs(StatusCode::kDataLoss, HasSubstr("chunk 0: checksum")));
  }
}

INSTANTIATE_TEST_SUITE_P(Codecs, RestoreTest,
                         ::testing::Values(CodecChoice::kAuto, CodecChoice::kZstd,
                                           CodecChoice::kRaw));

TEST(RestoreFailureTest, DeviceAllocationFailingAtEveryStep) {
  TempDir dir;
  auto a = RandomBytes(100000, 1), b = NormalBF16Bytes(100000, 2);
  WriterOptions wo;
  wo.chunk_size = 16 << 10;
  auto w = ImageWriter::Create(dir.File("img"), wo);
  ASSERT_OK(w.status());
  for (int r = 0; r < 3; ++r)
    ASSERT_OK((*w)->AddRegion({200000, 4096, 0, format::DeviceKind::kCpu, -1}).status());
  ASSERT_OK((*w)->AddRegionData(0, 0, a.data(), a.size(), 0));
  ASSERT_OK((*w)->AddRegionData(2, 0, b.data(), b.size(), 2));
  ASSERT_OK((*w)->Finish());
  // Warm up: thread stacks and malloc arenas are cached by the C library and would look
  // like leaked mappings otherwise.
  RestoreOptions warm;
  warm.fs = DefaultFileSystem();
  ASSERT_OK(RestoredModel::Restore(dir.File("img"), warm).status());
  Resources before;
  for (int k = 1;; ++k) {
    int calls = 0;
    RestoreOptions o;
    o.fs = DefaultFileSystem();
    o.backend_factory = [&](const DeviceSpec&) -> StatusOr<std::unique_ptr<DeviceBackend>> {
      return std::unique_ptr<DeviceBackend>(new FailingBackend(NewHostBackend(), k, &calls));
    };
    auto model = RestoredModel::Restore(dir.File("img"), o);
    if (model.ok()) {
      EXPECT_GT(k, 3) << "three regions and the staging must all have been allocated";
      break;
    }
    EXPECT_THAT(model.status(), StatusIs(StatusCode::kResourceExhausted, HasSubstr("injected")))
        << "step " << k;
  }
  Resources after;
  EXPECT_EQ(after.fds, before.fds);
  EXPECT_EQ(after.threads, before.threads);
}

// Staging is 2 MiB aligned (the DeviceBackend contract), so slots cut from it satisfy any
// direct-I/O memory alignment, and all of it is usable.
TEST(HostBackendTest, StagingIsAlignedAndWritable) {
  auto b = NewHostBackend();
  for (size_t bytes : {size_t{1}, size_t{4097}, size_t{3} << 20, (size_t{8} << 20) + 5}) {
    auto p = b->AllocateStaging(bytes);
    ASSERT_OK(p.status());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(*p) % (2u << 20), 0u) << bytes;
    std::memset(*p, 0x5A, bytes);
    EXPECT_EQ((*p)[bytes - 1], 0x5A);
    b->FreeStaging(*p);
  }
  EXPECT_THAT(b->AllocateStaging(0).status(), StatusIs(StatusCode::kInvalidArgument, ::testing::_));
}

TEST(HostBackendTest, HintHonouredWhenFreeRelocatedWhenTaken) {
  auto backend = NewHostBackend();
  format::RegionInfo r{1 << 20, 4096, 0, format::DeviceKind::kCpu, -1};
  auto first = backend->MapRegion(r);
  ASSERT_OK(first.status());
  EXPECT_FALSE(first->at_hint);
  const uint64_t addr = first->address;
  // Taken: relocated, not an error.
  r.va_hint = addr;
  auto second = backend->MapRegion(r);
  ASSERT_OK(second.status());
  EXPECT_FALSE(second->at_hint);
  EXPECT_NE(second->address, addr);
  ASSERT_OK(backend->UnmapRegion(*second));
  // Free again: honoured.
  ASSERT_OK(backend->UnmapRegion(*first));
  auto third = backend->MapRegion(r);
  ASSERT_OK(third.status());
  EXPECT_TRUE(third->at_hint);
  EXPECT_EQ(third->address, addr);
  ASSERT_OK(backend->UnmapRegion(*third));
  // Large alignments are honoured when relocating.
  r.va_hint = 0;
  r.alignment = 2 << 20;
  auto aligned = backend->MapRegion(r);
  ASSERT_OK(aligned.status());
  EXPECT_EQ(aligned->address % (2 << 20), 0u);
  ASSERT_OK(backend->UnmapRegion(*aligned));
}

TEST(DeviceSpecTest, Parse) {
  EXPECT_EQ(ParseDeviceSpec("cpu")->kind, format::DeviceKind::kCpu);
  EXPECT_EQ(ParseDeviceSpec("cuda")->ordinal, 0);
  EXPECT_EQ(ParseDeviceSpec("cuda:3")->ordinal, 3);
  EXPECT_THAT(ParseDeviceSpec("tpu").status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("cuda:N")));
  EXPECT_THAT(ParseDeviceSpec("cuda:x").status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("bad device")));
  EXPECT_EQ(DeviceSpecString(*ParseDeviceSpec("cuda:1")), "cuda:1");
}

}  // namespace
}  // namespace stasis
