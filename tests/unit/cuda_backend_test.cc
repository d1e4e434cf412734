// The cuda backend against the fake driver (tests/testutil/fake_cuda_driver.h): the exact
// sequence of driver calls, the address hint and relocation, bytes landing where they
// should, Unload/Reload, every error path (a failure injected at every call of a whole
// scenario must give a clear Status and leave nothing behind), and driver loading on a
// machine without a GPU.
#include "restore/device/cuda_backend.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "restore/device/cuda_driver.h"
#include "snapshot/format.h"
#include "tests/testutil/fake_cuda_driver.h"
#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using ::testing::_;
using ::testing::AllOf;
using ::testing::Contains;
using ::testing::ElementsAre;
using testing::FakeCudaDriver;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using testing::RandomBytes;
using testing::TestSeed;

constexpr uint64_t kMiB = 1ull << 20;

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// The calls, without the context switching every method starts and ends with.
std::vector<std::string> DriverCalls(const FakeCudaDriver& fake) {
  std::vector<std::string> out;
  for (const std::string& c : fake.calls())
    if (c != "cuCtxSetCurrent" && c != "cuCtxGetCurrent") out.push_back(c);
  return out;
}

// A 2 MiB-aligned address range of `size` bytes that is free right now.
uint64_t FreeAddress(uint64_t size) {
  const uint64_t align = 2 * kMiB;
  void* p =
      ::mmap(nullptr, size + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  EXPECT_NE(p, MAP_FAILED);
  ::munmap(p, size + align);
  return format::AlignUp(reinterpret_cast<uint64_t>(p), align);
}

format::RegionInfo Region(uint64_t size, uint64_t va_hint = 0, uint64_t alignment = 4096) {
  return {size, alignment, va_hint, format::DeviceKind::kCuda, 0};
}

class CudaBackendTest : public ::testing::Test {
 protected:
  std::unique_ptr<DeviceBackend> Open(uint64_t handle_size = 4 * kMiB) {
    CudaBackendOptions options;
    options.handle_size = handle_size;
    auto b = NewCudaBackend(fake_.api(), 0, options);
    EXPECT_OK(b.status());
    return b.ok() ? std::move(*b) : nullptr;
  }

  // Copies `data` into the region at `address` through two staging slots of `slot_bytes`,
  // in pieces of `piece` bytes, waiting for a slot before refilling it.
  void CopyThroughStaging(DeviceBackend* b, uint64_t address, const std::vector<uint8_t>& data,
                          size_t slot_bytes = kMiB, size_t piece = 700 * 1024) {
    auto staging = b->AllocateStaging(2 * slot_bytes);
    ASSERT_OK(staging.status());
    size_t n_piece = std::min(piece, slot_bytes);
    for (size_t off = 0, i = 0; off < data.size(); off += n_piece, ++i) {
      const int slot = static_cast<int>(i % 2);
      ASSERT_OK(b->WaitCopies(slot));
      uint8_t* buf = *staging + slot * slot_bytes;
      const size_t n = std::min(n_piece, data.size() - off);
      std::memcpy(buf, data.data() + off, n);
      ASSERT_OK(b->Copy(address + off, buf, n, slot));
    }
    ASSERT_OK(b->WaitCopies(0));
    ASSERT_OK(b->WaitCopies(1));
    b->FreeStaging(*staging);
  }

  std::vector<uint8_t> ReadBack(uint64_t address, size_t n) {
    std::vector<uint8_t> out(n);
    EXPECT_TRUE(fake_.ReadDevice(address, out.data(), n)) << "not accessible: " << Hex(address);
    return out;
  }

  void ExpectClean() {
    EXPECT_EQ(fake_.LeakReport(), "");
    EXPECT_THAT(fake_.violations(), IsEmpty());
  }

  FakeCudaDriver fake_;
};

TEST_F(CudaBackendTest, ConstructionSequence) {
  auto b = Open();
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->device().kind, format::DeviceKind::kCuda);
  EXPECT_EQ(b->device().ordinal, 0);
  EXPECT_THAT(DriverCalls(fake_),
              ElementsAre("cuInit", "cuDeviceGetCount", "cuDeviceGet", "cuDeviceGetAttribute",
                          "cuDevicePrimaryCtxRetain", "cuMemGetAllocationGranularity",
                          "cuMemGetAllocationGranularity", "cuStreamCreate", "cuEventCreate"));
  EXPECT_EQ(fake_.last_stream_flags(), unsigned{CU_STREAM_NON_BLOCKING});
  fake_.ClearCalls();
  b.reset();
  // No copy was ever issued: nothing to destroy but the synchronisation event, the stream
  // and the context.
  EXPECT_THAT(DriverCalls(fake_), ElementsAre("cuCtxSynchronize", "cuEventDestroy",
                                              "cuStreamDestroy", "cuDevicePrimaryCtxRelease"));
  ExpectClean();
}

TEST_F(CudaBackendTest, CallSequenceForOneRegion) {
  auto b = Open(/*handle_size=*/4 * kMiB);
  ASSERT_NE(b, nullptr);
  const uint64_t hint = FreeAddress(16 * kMiB);
  fake_.ClearCalls();

  auto m = b->MapRegion(Region(9 * kMiB, hint));
  ASSERT_OK(m.status());
  EXPECT_TRUE(m->at_hint);
  EXPECT_EQ(m->address, hint);
  EXPECT_EQ(m->size, 9 * kMiB);
  EXPECT_EQ(m->reserved, 10 * kMiB);  // rounded up to the 2 MiB granularity
  EXPECT_EQ(m->host_view, nullptr);
  // The caller's context (none, on this thread) is saved, replaced, and put back.
  ASSERT_GE(fake_.calls().size(), 3u);
  EXPECT_EQ(fake_.calls()[0], "cuCtxGetCurrent");
  EXPECT_EQ(fake_.calls()[1], "cuCtxSetCurrent");
  EXPECT_EQ(fake_.calls().back(), "cuCtxSetCurrent");
  // One reservation at the hint, handles of at most handle_size (4 + 4 + 2 MiB), all
  // created before any is mapped, mapped at consecutive offsets, one access call.
  EXPECT_THAT(DriverCalls(fake_),
              ElementsAre("cuMemAddressReserve", "cuMemCreate", "cuMemCreate", "cuMemCreate",
                          "cuMemMap", "cuMemMap", "cuMemMap", "cuMemSetAccess"));
  const auto log = fake_.call_log();
  EXPECT_THAT(log, Contains("cuMemAddressReserve(size=0xa00000, align=0x200000, addr=" + Hex(hint) +
                            ", flags=0)"));
  EXPECT_THAT(log, Contains("cuMemCreate(size=0x400000, flags=0)"));
  EXPECT_THAT(log, Contains("cuMemCreate(size=0x200000, flags=0)"));
  EXPECT_THAT(log, Contains(HasSubstr("cuMemMap(ptr=" + Hex(hint) + ", size=0x400000")));
  EXPECT_THAT(log, Contains(HasSubstr("cuMemMap(ptr=" + Hex(hint + 4 * kMiB) + ", size=0x400000")));
  EXPECT_THAT(log, Contains(HasSubstr("cuMemMap(ptr=" + Hex(hint + 8 * kMiB) + ", size=0x200000")));
  EXPECT_THAT(log, Contains("cuMemSetAccess(ptr=" + Hex(hint) + ", size=0xa00000, count=1)"));
  EXPECT_EQ(fake_.live_handles(), 3u);
  EXPECT_TRUE(fake_.IsAccessible(hint, 10 * kMiB));

  fake_.ClearCalls();
  ASSERT_OK(b->UnmapRegion(*m));
  // Synchronise, then unmap, release, free the range.
  EXPECT_THAT(DriverCalls(fake_),
              ElementsAre("cuCtxSynchronize", "cuMemUnmap", "cuMemUnmap", "cuMemUnmap",
                          "cuMemRelease", "cuMemRelease", "cuMemRelease", "cuMemAddressFree"));
  EXPECT_THAT(fake_.call_log(), Contains("cuMemAddressFree(ptr=" + Hex(hint) + ", size=0xa00000)"));
  EXPECT_FALSE(fake_.IsReserved(hint, 1));
  b.reset();
  ExpectClean();
}

// The recommended granularity sizes the physical handles only: reservations and hints
// keep the minimum, so hints 2 MiB apart are still honoured.
TEST_F(CudaBackendTest, RecommendedGranularitySizesHandlesOnly) {
  fake_.set_granularity(2 * kMiB, 8 * kMiB);
  auto b = Open(/*handle_size=*/5 * kMiB);  // rounds up to 8 MiB
  ASSERT_NE(b, nullptr);
  fake_.ClearCalls();
  const uint64_t hint = FreeAddress(16 * kMiB) + 2 * kMiB;  // 2 MiB-, not 8 MiB-aligned
  auto m = b->MapRegion(Region(9 * kMiB, hint));
  ASSERT_OK(m.status());
  EXPECT_TRUE(m->at_hint);
  EXPECT_EQ(m->reserved, 10 * kMiB);
  EXPECT_THAT(fake_.call_log(), Contains("cuMemCreate(size=0x800000, flags=0)"));
  EXPECT_THAT(fake_.call_log(), Contains("cuMemCreate(size=0x200000, flags=0)"));
  EXPECT_EQ(fake_.live_handles(), 2u);
  ASSERT_OK(b->UnmapRegion(*m));

  // A recommendation that is not a multiple of the minimum is ignored.
  b.reset();
  fake_.set_granularity(2 * kMiB, 3 * kMiB);
  b = Open();
  ASSERT_NE(b, nullptr);
  m = b->MapRegion(Region(3 * kMiB));
  ASSERT_OK(m.status());
  EXPECT_EQ(m->reserved, 4 * kMiB);
  ASSERT_OK(b->UnmapRegion(*m));
  b.reset();
  ExpectClean();
}

TEST_F(CudaBackendTest, RegionAlignmentAboveGranularity) {
  auto b = Open();
  ASSERT_NE(b, nullptr);
  fake_.ClearCalls();
  auto m = b->MapRegion(Region(3 * kMiB, 0, /*alignment=*/64 * kMiB));
  ASSERT_OK(m.status());
  EXPECT_EQ(m->address % (64 * kMiB), 0u);
  EXPECT_THAT(fake_.call_log(),
              Contains("cuMemAddressReserve(size=0x400000, align=0x4000000, addr=0x0, flags=0)"));
  ASSERT_OK(b->UnmapRegion(*m));
}

TEST_F(CudaBackendTest, HintTakenByAHostMappingRelocates) {
  auto b = Open();
  ASSERT_NE(b, nullptr);
  const uint64_t hint = FreeAddress(8 * kMiB);
  // What happens in a fresh restore process: a host mapping already sits at the address.
  void* squatter = ::mmap(reinterpret_cast<void*>(hint), 2 * kMiB, PROT_NONE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  ASSERT_EQ(reinterpret_cast<uint64_t>(squatter), hint);

  auto m = b->MapRegion(Region(5 * kMiB, hint));
  ASSERT_OK(m.status());
  EXPECT_FALSE(m->at_hint);
  EXPECT_NE(m->address, hint);
  // One attempt only: the driver answered with another address, which is kept.
  const auto calls = fake_.calls();
  EXPECT_EQ(std::count(calls.begin(), calls.end(), "cuMemAddressReserve"), 1);

  const auto data = RandomBytes(5 * kMiB, TestSeed());
  CopyThroughStaging(b.get(), m->address, data);
  EXPECT_EQ(ReadBack(m->address, data.size()), data);
  ASSERT_OK(b->UnmapRegion(*m));
  ::munmap(squatter, 2 * kMiB);
  b.reset();
  ExpectClean();
}

TEST_F(CudaBackendTest, IgnoredHintRelocatesAndStillWorks) {
  fake_.set_ignore_hints(true);
  auto b = Open();
  ASSERT_NE(b, nullptr);
  const uint64_t hint = FreeAddress(4 * kMiB);
  auto m = b->MapRegion(Region(3 * kMiB + 17, hint));
  ASSERT_OK(m.status());
  EXPECT_FALSE(m->at_hint);
  EXPECT_NE(m->address, hint);
  const auto data = RandomBytes(3 * kMiB + 17, TestSeed() + 1);
  CopyThroughStaging(b.get(), m->address, data);
  EXPECT_EQ(ReadBack(m->address, data.size()), data);
  ASSERT_OK(b->UnmapRegion(*m));
  b.reset();
  ExpectClean();
}

TEST_F(CudaBackendTest, HintRefusedWithAnErrorRetriesOnceAnywhere) {
  fake_.set_ignore_hints(true);
  fake_.set_hint_taken_error(CUDA_ERROR_INVALID_VALUE);
  auto b = Open();
  ASSERT_NE(b, nullptr);
  const uint64_t hint = FreeAddress(4 * kMiB);
  fake_.ClearCalls();
  auto m = b->MapRegion(Region(2 * kMiB, hint));
  ASSERT_OK(m.status());
  EXPECT_FALSE(m->at_hint);
  const auto log = fake_.call_log();
  EXPECT_THAT(log, Contains(HasSubstr("addr=" + Hex(hint))));
  EXPECT_THAT(log,
              Contains(HasSubstr("cuMemAddressReserve(size=0x200000, align=0x200000, addr=0x0")));
  ASSERT_OK(b->UnmapRegion(*m));
  b.reset();
  ExpectClean();
}

TEST_F(CudaBackendTest, MisalignedHintIsNotAskedFor) {
  auto b = Open();
  ASSERT_NE(b, nullptr);
  fake_.ClearCalls();
  const uint64_t hint = FreeAddress(8 * kMiB) + 4096;
  auto m = b->MapRegion(Region(2 * kMiB, hint));
  ASSERT_OK(m.status());
  EXPECT_FALSE(m->at_hint);
  EXPECT_THAT(fake_.call_log(), Contains(HasSubstr("addr=0x0,")));
  ASSERT_OK(b->UnmapRegion(*m));
}

TEST_F(CudaBackendTest, CopiesLandAtTheRightAddresses) {
  fake_.set_defer_copies(true);  // copies run at synchronisation: a missing wait shows
  auto b = Open();
  ASSERT_NE(b, nullptr);
  const uint64_t size = 6 * kMiB + 100;
  auto m = b->MapRegion(Region(size, FreeAddress(8 * kMiB)));
  ASSERT_OK(m.status());
  const auto data = RandomBytes(size, TestSeed() + 2);
  CopyThroughStaging(b.get(), m->address, data);
  EXPECT_EQ(ReadBack(m->address, size), data);
  EXPECT_EQ(fake_.unpinned_copies(), 0u);  // every copy came from registered staging
  // Waits sleep rather than spin (they share the cores with the pipeline's workers).
  EXPECT_EQ(fake_.last_event_flags(), unsigned{CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING});

  // A copy into the middle, from a slot far from 0.
  const auto patch = RandomBytes(4097, TestSeed() + 3);
  auto staging = b->AllocateStaging(patch.size());
  ASSERT_OK(staging.status());
  std::memcpy(*staging, patch.data(), patch.size());
  ASSERT_OK(
      b->Copy(m->address + 3 * kMiB + 1, *staging, patch.size(), DeviceBackend::kMaxSlots - 1));
  ASSERT_OK(b->Synchronize());
  auto got = ReadBack(m->address + 3 * kMiB + 1, patch.size());
  EXPECT_EQ(got, patch);
  b->FreeStaging(*staging);
  ASSERT_OK(b->UnmapRegion(*m));
  b.reset();
  ExpectClean();
}

// The fake's deferred copies do catch a staging slot refilled before its copy finished,
// so CopiesLandAtTheRightAddresses would fail if the backend's events did not work.
TEST_F(CudaBackendTest, FakeCatchesAMissingWait) {
  fake_.set_defer_copies(true);
  auto b = Open();
  ASSERT_NE(b, nullptr);
  auto m = b->MapRegion(Region(2 * kMiB));
  ASSERT_OK(m.status());
  auto staging = b->AllocateStaging(4096);
  ASSERT_OK(staging.status());
  std::memset(*staging, 0xAA, 4096);
  ASSERT_OK(b->Copy(m->address, *staging, 4096, 0));
  std::memset(*staging, 0xBB, 4096);  // reused without WaitCopies(0)
  ASSERT_OK(b->WaitCopies(0));
  EXPECT_EQ(ReadBack(m->address, 1)[0], 0xBB);
  b->FreeStaging(*staging);
  ASSERT_OK(b->UnmapRegion(*m));
}

TEST_F(CudaBackendTest, UnloadKeepsTheAddressAndReloadMapsThereAgain) {
  fake_.set_defer_copies(true);
  auto b = Open(/*handle_size=*/4 * kMiB);
  ASSERT_NE(b, nullptr);
  const uint64_t hint = FreeAddress(16 * kMiB);
  auto m = b->MapRegion(Region(10 * kMiB, hint));
  ASSERT_OK(m.status());
  ASSERT_TRUE(m->at_hint);
  const auto data = RandomBytes(10 * kMiB, TestSeed() + 4);
  CopyThroughStaging(b.get(), m->address, data);

  fake_.ClearCalls();
  ASSERT_OK(b->Unload(*m));
  EXPECT_THAT(DriverCalls(fake_),
              ElementsAre("cuCtxSynchronize", "cuMemUnmap", "cuMemUnmap", "cuMemUnmap",
                          "cuMemRelease", "cuMemRelease", "cuMemRelease"));
  EXPECT_EQ(fake_.live_handles(), 0u);
  EXPECT_EQ(fake_.live_mappings(), 0u);
  EXPECT_EQ(fake_.device_memory_used(), 0u);
  EXPECT_EQ(fake_.live_reservations(), 1u);
  EXPECT_TRUE(fake_.IsReserved(hint, 10 * kMiB));
  EXPECT_FALSE(fake_.IsAccessible(hint, 1));
  uint8_t byte = 1;
  EXPECT_THAT(b->Copy(m->address, &byte, 1, 0),
              StatusIs(StatusCode::kFailedPrecondition, HasSubstr("not loaded")));

  fake_.ClearCalls();
  ASSERT_OK(b->Unload(*m));  // already unloaded: nothing to do
  EXPECT_THAT(fake_.calls(), IsEmpty());

  ASSERT_OK(b->Reload(*m));
  EXPECT_THAT(DriverCalls(fake_),
              ElementsAre("cuMemCreate", "cuMemCreate", "cuMemCreate", "cuMemMap", "cuMemMap",
                          "cuMemMap", "cuMemSetAccess"));
  EXPECT_THAT(fake_.call_log(), Contains(HasSubstr("cuMemMap(ptr=" + Hex(hint) + ",")));
  EXPECT_TRUE(fake_.IsAccessible(hint, 10 * kMiB));
  EXPECT_EQ(fake_.live_handles(), 3u);

  fake_.ClearCalls();
  ASSERT_OK(b->Reload(*m));  // already loaded
  EXPECT_THAT(fake_.calls(), IsEmpty());

  // Restored again, at the same addresses.
  const auto data2 = RandomBytes(10 * kMiB, TestSeed() + 5);
  CopyThroughStaging(b.get(), m->address, data2);
  EXPECT_EQ(ReadBack(hint, data2.size()), data2);

  // Unload with a copy still queued: Unload waits for it first.
  auto staging = b->AllocateStaging(4096);
  ASSERT_OK(staging.status());
  ASSERT_OK(b->Copy(m->address, *staging, 4096, 3));
  ASSERT_OK(b->Unload(*m));
  b->FreeStaging(*staging);
  ASSERT_OK(b->UnmapRegion(*m));  // from the unloaded state
  b.reset();
  ExpectClean();
}

TEST_F(CudaBackendTest, ZeroSizeRegion) {
  auto b = Open();
  ASSERT_NE(b, nullptr);
  fake_.ClearCalls();
  auto m = b->MapRegion(Region(0, 0x7f0000000000));
  ASSERT_OK(m.status());
  EXPECT_EQ(m->address, 0u);
  EXPECT_EQ(m->size, 0u);
  EXPECT_EQ(m->reserved, 0u);
  EXPECT_FALSE(m->at_hint);
  ASSERT_OK(b->Unload(*m));
  ASSERT_OK(b->Reload(*m));
  ASSERT_OK(b->UnmapRegion(*m));
  EXPECT_THAT(fake_.calls(), IsEmpty());
}

TEST_F(CudaBackendTest, OutOfDeviceMemoryLeavesNothingBehind) {
  fake_.set_device_memory(64 * kMiB);
  auto b = Open(/*handle_size=*/16 * kMiB);
  ASSERT_NE(b, nullptr);
  fake_.ClearCalls();
  auto m = b->MapRegion(Region(100 * kMiB, FreeAddress(128 * kMiB)));
  EXPECT_THAT(m.status(),
              StatusIs(StatusCode::kResourceExhausted,
                       AllOf(HasSubstr("cuMemCreate"), HasSubstr("CUDA_ERROR_OUT_OF_MEMORY"))));
  // The shortage shows before any mapping work.
  EXPECT_THAT(fake_.calls(), ::testing::Not(Contains("cuMemMap")));
  EXPECT_EQ(fake_.live_handles(), 0u);
  EXPECT_EQ(fake_.live_reservations(), 0u);
  EXPECT_EQ(fake_.device_memory_used(), 0u);
  // The next region that fits still maps.
  m = b->MapRegion(Region(64 * kMiB));
  ASSERT_OK(m.status());
  ASSERT_OK(b->UnmapRegion(*m));
  b.reset();
  ExpectClean();
}

TEST_F(CudaBackendTest, BadArguments) {
  auto b = Open();
  ASSERT_NE(b, nullptr);
  auto m = b->MapRegion(Region(2 * kMiB));
  ASSERT_OK(m.status());
  uint8_t byte = 0;
  fake_.ClearCalls();
  EXPECT_THAT(b->Copy(m->address, &byte, 1, -1),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("slot")));
  EXPECT_THAT(b->Copy(m->address, &byte, 1, DeviceBackend::kMaxSlots),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("slot")));
  EXPECT_THAT(b->WaitCopies(DeviceBackend::kMaxSlots), StatusIs(StatusCode::kInvalidArgument, _));
  EXPECT_THAT(b->Copy(m->address - 1, &byte, 1, 0),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("not inside a mapped region")));
  EXPECT_THAT(b->Copy(m->address + 2 * kMiB - 1, &byte, 2, 0),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("not inside a mapped region")));
  EXPECT_THAT(b->Copy(UINT64_MAX, &byte, 2, 0), StatusIs(StatusCode::kInvalidArgument, _));
  EXPECT_OK(b->Copy(m->address, &byte, 0, 0));  // empty: nothing to do
  EXPECT_OK(b->WaitCopies(7));                  // nothing ever issued on slot 7
  EXPECT_THAT(fake_.calls(), IsEmpty());        // all refused before the driver

  MappedRegion unknown = *m;
  unknown.address += 2 * kMiB;
  EXPECT_THAT(b->UnmapRegion(unknown),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("no region")));
  EXPECT_THAT(b->Unload(unknown), StatusIs(StatusCode::kInvalidArgument, _));
  EXPECT_THAT(b->Reload(unknown), StatusIs(StatusCode::kInvalidArgument, _));
  EXPECT_THAT(b->MapRegion(Region(kMiB, 0, /*alignment=*/3)).status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("alignment")));
  EXPECT_THAT(b->MapRegion(Region(format::kMaxRegionSize + 1)).status(),
              StatusIs(StatusCode::kInvalidArgument, _));
  EXPECT_THAT(b->AllocateStaging(0).status(), StatusIs(StatusCode::kInvalidArgument, _));
  b->FreeStaging(nullptr);
  ASSERT_OK(b->UnmapRegion(*m));
  b.reset();
  ExpectClean();
}

TEST_F(CudaBackendTest, StagingIsRegisteredOnce) {
  auto b = Open();
  ASSERT_NE(b, nullptr);
  fake_.ClearCalls();
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  auto s = b->AllocateStaging(3 * kMiB + 1);
  ASSERT_OK(s.status());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(*s) % (2 * kMiB), 0u);
  std::memset(*s, 0x5A, 3 * kMiB + 1);  // writable all the way
  EXPECT_THAT(DriverCalls(fake_), ElementsAre("cuMemHostRegister"));
  EXPECT_THAT(
      fake_.call_log(),
      Contains(HasSubstr("bytes=" + Hex(format::AlignUp(3 * kMiB + 1, page)) + ", flags=0")));
  EXPECT_EQ(fake_.live_registrations(), 1u);
  fake_.ClearCalls();
  b->FreeStaging(*s);
  // In-flight copies from the buffer are waited for before it is unpinned.
  // (on an event that sleeps: cuStreamSynchronize would spin under the default policy).
  EXPECT_THAT(DriverCalls(fake_),
              ElementsAre("cuEventRecord", "cuEventSynchronize", "cuMemHostUnregister"));
  EXPECT_EQ(fake_.live_registrations(), 0u);

  // Registration failing is reported, not papered over.
  fake_.set_fail_function("cuMemHostRegister", CUDA_ERROR_OUT_OF_MEMORY);
  EXPECT_THAT(b->AllocateStaging(kMiB).status(),
              StatusIs(StatusCode::kResourceExhausted, HasSubstr("cuMemHostRegister")));
  EXPECT_EQ(fake_.live_registrations(), 0u);
  b.reset();
  ExpectClean();
}

TEST_F(CudaBackendTest, DestructorTearsDownWhatIsLeft) {
  fake_.set_defer_copies(true);
  auto b = Open();
  ASSERT_NE(b, nullptr);
  auto m1 = b->MapRegion(Region(3 * kMiB, FreeAddress(4 * kMiB)));
  auto m2 = b->MapRegion(Region(5 * kMiB));
  ASSERT_OK(m1.status());
  ASSERT_OK(m2.status());
  ASSERT_OK(b->Unload(*m2));
  auto s = b->AllocateStaging(kMiB);
  ASSERT_OK(s.status());
  ASSERT_OK(b->Copy(m1->address, *s, kMiB, 0));  // still queued at destruction
  ASSERT_OK(b->Copy(m1->address + kMiB, *s, kMiB, 1));
  b.reset();
  ExpectClean();
}

TEST_F(CudaBackendTest, EveryMethodMakesTheContextCurrentOnItsThread) {
  fake_.set_defer_copies(true);
  auto b = Open();
  ASSERT_NE(b, nullptr);
  StatusOr<MappedRegion> m = InternalError("not run");
  // The fake refuses driver calls from a thread without a current context.
  std::thread([&] { m = b->MapRegion(Region(8 * kMiB)); }).join();
  ASSERT_OK(m.status());
  auto staging = b->AllocateStaging(4 * kMiB);
  ASSERT_OK(staging.status());
  const auto data = RandomBytes(8 * kMiB, TestSeed() + 6);
  // Four threads, four slots, concurrently.
  std::vector<std::thread> threads;
  std::vector<Status> results(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      uint8_t* buf = *staging + t * kMiB;
      for (uint64_t off = t * kMiB; off < data.size() && results[t].ok(); off += 4 * kMiB) {
        results[t] = b->WaitCopies(t);
        if (!results[t].ok()) break;
        std::memcpy(buf, data.data() + off, kMiB);
        results[t] = b->Copy(m->address + off, buf, kMiB, t);
      }
      if (results[t].ok()) results[t] = b->WaitCopies(t);
    });
  }
  for (auto& t : threads) t.join();
  for (const Status& s : results) EXPECT_OK(s);
  EXPECT_EQ(ReadBack(m->address, data.size()), data);
  std::thread([&] { b->FreeStaging(*staging); }).join();
  Status unmapped;
  std::thread([&] { unmapped = b->UnmapRegion(*m); }).join();
  EXPECT_OK(unmapped);
  std::thread([&] { b.reset(); }).join();
  ExpectClean();
}

// A restore onto one device must not move its caller to that device: the CUDA runtime (and
// PyTorch) reads the current context as the current device.
TEST_F(CudaBackendTest, TheCallersContextIsPutBack) {
  fake_.set_device_count(2);
  fake_.set_defer_copies(true);
  const CudaDriverApi* api = fake_.api();
  ASSERT_EQ(api->cuInit(0), CUDA_SUCCESS);
  CUcontext theirs = nullptr;
  ASSERT_EQ(api->cuDevicePrimaryCtxRetain(&theirs, 0), CUDA_SUCCESS);
  ASSERT_EQ(api->cuCtxSetCurrent(theirs), CUDA_SUCCESS);
  auto current = [&] {
    CUcontext c = nullptr;
    EXPECT_EQ(api->cuCtxGetCurrent(&c), CUDA_SUCCESS);
    return c;
  };
  {
    auto b = NewCudaBackend(api, 1);  // the other device
    ASSERT_OK(b.status());
    EXPECT_EQ(current(), theirs) << "after construction";
    auto m = (*b)->MapRegion(Region(4 * kMiB));
    ASSERT_OK(m.status());
    EXPECT_EQ(current(), theirs) << "after MapRegion";
    auto staging = (*b)->AllocateStaging(kMiB);
    ASSERT_OK(staging.status());
    EXPECT_OK((*b)->Copy(m->address, *staging, kMiB, 0));
    EXPECT_OK((*b)->WaitCopies(0));
    EXPECT_OK((*b)->Synchronize());
    EXPECT_OK((*b)->Unload(*m));
    EXPECT_OK((*b)->Reload(*m));
    EXPECT_EQ(current(), theirs) << "after copies, Unload and Reload";
    (*b)->FreeStaging(*staging);
    EXPECT_OK((*b)->UnmapRegion(*m));
    EXPECT_EQ(current(), theirs) << "after UnmapRegion";
  }
  EXPECT_EQ(current(), theirs) << "after destruction";
  ASSERT_EQ(api->cuCtxSetCurrent(nullptr), CUDA_SUCCESS);
  ASSERT_EQ(api->cuDevicePrimaryCtxRelease(0), CUDA_SUCCESS);
  ExpectClean();
}

TEST_F(CudaBackendTest, DeviceErrors) {
  fake_.set_device_count(2);
  auto b = NewCudaBackend(fake_.api(), 3);
  EXPECT_THAT(b.status(),
              StatusIs(StatusCode::kNotFound, HasSubstr("no CUDA device 3 (2 devices present)")));
  EXPECT_THAT(NewCudaBackend(fake_.api(), -1).status(), StatusIs(StatusCode::kNotFound, _));
  auto ok = NewCudaBackend(fake_.api(), 1);
  ASSERT_OK(ok.status());
  EXPECT_EQ((*ok)->device().ordinal, 1);
  ok->reset();

  fake_.set_vmm_supported(false);
  EXPECT_THAT(NewCudaBackend(fake_.api(), 0).status(),
              StatusIs(StatusCode::kFailedPrecondition, HasSubstr("virtual memory management")));
  fake_.set_vmm_supported(true);

  fake_.set_device_count(0);
  EXPECT_THAT(NewCudaBackend(fake_.api(), 0).status(),
              StatusIs(StatusCode::kNotFound, HasSubstr("no CUDA device 0 (0 devices present")));

  EXPECT_THAT(NewCudaBackend(nullptr, 0).status(), StatusIs(StatusCode::kInvalidArgument, _));
  CudaBackendOptions zero;
  zero.handle_size = 0;
  EXPECT_THAT(NewCudaBackend(fake_.api(), 0, zero).status(),
              StatusIs(StatusCode::kInvalidArgument, _));
  ExpectClean();
}

TEST_F(CudaBackendTest, CuStatusMapsCodes) {
  const CudaDriverApi& api = *fake_.api();
  EXPECT_OK(CuStatus(api, CUDA_SUCCESS, "x"));
  EXPECT_THAT(CuStatus(api, CUDA_ERROR_OUT_OF_MEMORY, "cuMemCreate"),
              StatusIs(StatusCode::kResourceExhausted,
                       ::testing::Eq("cuMemCreate: CUDA_ERROR_OUT_OF_MEMORY (out of memory)")));
  EXPECT_THAT(CuStatus(api, CUDA_ERROR_INVALID_DEVICE, "d"), StatusIs(StatusCode::kNotFound, _));
  EXPECT_THAT(CuStatus(api, CUDA_ERROR_NO_DEVICE, "d"),
              StatusIs(StatusCode::kFailedPrecondition, _));
  EXPECT_THAT(CuStatus(api, CUDA_ERROR_STUB_LIBRARY, "d"),
              StatusIs(StatusCode::kFailedPrecondition, _));
  EXPECT_THAT(CuStatus(api, CUDA_ERROR_NOT_INITIALIZED, "d"),
              StatusIs(StatusCode::kFailedPrecondition, _));
  EXPECT_THAT(CuStatus(api, CUDA_ERROR_NOT_SUPPORTED, "d"),
              StatusIs(StatusCode::kUnimplemented, _));
  EXPECT_THAT(CuStatus(api, CUDA_ERROR_NOT_PERMITTED, "d"),
              StatusIs(StatusCode::kPermissionDenied, _));
  EXPECT_THAT(CuStatus(api, CUDA_ERROR_DEVICE_UNAVAILABLE, "d"),
              StatusIs(StatusCode::kUnavailable, _));
  EXPECT_THAT(CuStatus(api, CUDA_ERROR_ILLEGAL_ADDRESS, "d"), StatusIs(StatusCode::kInternal, _));
  EXPECT_THAT(CuStatus(api, CUDA_ERROR_INVALID_VALUE, "d"), StatusIs(StatusCode::kInternal, _));
  EXPECT_THAT(CuStatus(api, static_cast<CUresult>(12345), "cuFoo"),
              StatusIs(StatusCode::kInternal, ::testing::Eq("cuFoo: CUresult 12345")));
}

// --- Failure injection: every call of a whole scenario fails once, in turn.

struct ScenarioResult {
  Status status;
  uint64_t calls_before_destruction = 0;
  uint64_t free_staging_begin = 0, free_staging_end = 0;  // call numbers (1-based, inclusive)
};

ScenarioResult RunScenario(FakeCudaDriver& fake, const std::vector<uint8_t>& data) {
  ScenarioResult out;
  CudaBackendOptions options;
  options.handle_size = 4 * kMiB;
  auto backend = NewCudaBackend(fake.api(), 0, options);
  if (!backend.ok()) {
    out.status = backend.status();
    out.calls_before_destruction = fake.call_count();
    return out;
  }
  DeviceBackend* b = backend->get();
  const uint64_t hint = FreeAddress(16 * kMiB);
  out.status = [&]() -> Status {
    STASIS_ASSIGN_OR_RETURN(MappedRegion m, b->MapRegion(Region(data.size(), hint)));
    STASIS_ASSIGN_OR_RETURN(uint8_t * staging, b->AllocateStaging(2 * kMiB));
    for (uint64_t off = 0, i = 0; off < data.size(); off += kMiB, ++i) {
      const int slot = static_cast<int>(i % 2);
      STASIS_RETURN_IF_ERROR(b->WaitCopies(slot));
      const size_t n = std::min<uint64_t>(kMiB, data.size() - off);
      std::memcpy(staging + slot * kMiB, data.data() + off, n);
      STASIS_RETURN_IF_ERROR(b->Copy(m.address + off, staging + slot * kMiB, n, slot));
    }
    STASIS_RETURN_IF_ERROR(b->WaitCopies(0));
    STASIS_RETURN_IF_ERROR(b->Synchronize());
    std::vector<uint8_t> got(data.size());
    if (!fake.ReadDevice(m.address, got.data(), got.size()) || got != data)
      return DataLossError("read back differs");
    STASIS_RETURN_IF_ERROR(b->Unload(m));
    STASIS_RETURN_IF_ERROR(b->Reload(m));
    STASIS_RETURN_IF_ERROR(b->Copy(m.address, staging, kMiB, 0));
    STASIS_RETURN_IF_ERROR(b->WaitCopies(0));
    out.free_staging_begin = fake.call_count() + 1;
    b->FreeStaging(staging);
    out.free_staging_end = fake.call_count();
    STASIS_RETURN_IF_ERROR(b->UnmapRegion(m));
    return OkStatus();
  }();
  out.calls_before_destruction = fake.call_count();
  backend->reset();
  return out;
}

TEST(CudaBackendFailureTest, FailureAtEveryCall) {
  // 6 MiB + 5 bytes: two handles, a short last copy, two slots.
  const std::vector<uint8_t> data = RandomBytes(6 * kMiB + 5, TestSeed());
  uint64_t total_calls = 0;
  for (uint64_t k = 1;; ++k) {
    ASSERT_LT(k, 1000u) << "the scenario never completes";
    FakeCudaDriver fake;
    fake.set_defer_copies(true);
    fake.set_fail_at_call(k, CUDA_ERROR_OUT_OF_MEMORY);
    ScenarioResult r = RunScenario(fake, data);
    SCOPED_TRACE("failure injected at call " + std::to_string(k) + " (" + fake.injected_function() +
                 "): " + r.status.ToString());
    if (!fake.failure_injected()) {
      ASSERT_OK(r.status);  // past the last call: the clean run
      EXPECT_EQ(fake.LeakReport(), "");
      EXPECT_THAT(fake.violations(), IsEmpty());
      total_calls = k - 1;
      break;
    }
    EXPECT_THAT(fake.violations(), IsEmpty());
    if (k > r.calls_before_destruction) {
      // In the destructor, which has no Status to return: it logs, skips the one object
      // whose destruction failed, and goes on with the rest.
      ASSERT_OK(r.status);
      const std::string leaks = fake.LeakReport();
      EXPECT_LE(std::count(leaks.begin(), leaks.end(), '\n'), 1) << leaks;
      continue;
    }
    if (r.status.ok()) {
      // Absorbed failures: a refused hint is retried elsewhere; FreeStaging returns
      // nothing and leaves the buffer for the destructor; putting the caller's context
      // back after a call that succeeded, or not being able to read it, is only logged
      // (switching to the backend's
      // context failing is an error, which the branch below checks).
      const bool in_free_staging = k >= r.free_staging_begin && k <= r.free_staging_end;
      EXPECT_TRUE(fake.injected_function() == "cuMemAddressReserve" ||
                  fake.injected_function() == "cuCtxSetCurrent" ||
                  fake.injected_function() == "cuCtxGetCurrent" || in_free_staging);
    } else {
      EXPECT_THAT(std::string(r.status.message()), HasSubstr(fake.injected_function()));
      EXPECT_NE(r.status.code(), StatusCode::kDataLoss);  // no silently wrong bytes
    }
    EXPECT_EQ(fake.LeakReport(), "");
  }
  EXPECT_GT(total_calls, 50u);
  ::testing::Test::RecordProperty("scenario_calls", std::to_string(total_calls));
}

// --- Loading the real driver.

TEST(CudaDriverTest, NoDriverOnThisMachine) {
  auto api = LoadCudaDriver();
  if (api.ok()) GTEST_SKIP() << "a libcuda.so.1 is loadable here";
  EXPECT_THAT(api.status(), StatusIs(StatusCode::kFailedPrecondition,
                                     HasSubstr("no CUDA driver (libcuda.so.1 not found)")));
  EXPECT_THAT(OpenCudaBackend(0).status(), StatusIs(StatusCode::kFailedPrecondition, _));
  // Cached: the same answer again.
  EXPECT_EQ(LoadCudaDriver().status(), api.status());
  EXPECT_THAT(LoadCudaDriverFrom("/nonexistent/libcuda.so.1").status(),
              StatusIs(StatusCode::kFailedPrecondition, HasSubstr("/nonexistent/libcuda.so.1")));
}

// The toolkit's stub libcuda exports every driver symbol (and fails every call): loading
// it checks the symbol names the loader asks for, versioned ones included.
// Runs after NoDriverOnThisMachine on purpose: the stub's soname is libcuda.so.1, so once
// it is loaded dlopen("libcuda.so.1") finds it.
TEST(CudaDriverTest, StubDriverResolvesEverySymbol) {
  std::string stub;
  for (const char* p :
       {"/usr/local/cuda/lib64/stubs/libcuda.so", "/usr/local/cuda/lib/stubs/libcuda.so",
        "/usr/local/cuda/targets/x86_64-linux/lib/stubs/libcuda.so"}) {
    if (::access(p, R_OK) == 0) {
      stub = p;
      break;
    }
  }
  if (stub.empty()) GTEST_SKIP() << "no stub libcuda.so in the CUDA toolkit";
  auto api = LoadCudaDriverFrom(stub);
  ASSERT_OK(api.status());
  EXPECT_NE(api->cuMemcpyHtoDAsync, nullptr);
  EXPECT_NE(api->cuDevicePrimaryCtxRelease, nullptr);
  // A stub is not a driver: the backend says so instead of crashing.
  EXPECT_THAT(NewCudaBackend(&*api, 0).status(),
              StatusIs(StatusCode::kFailedPrecondition, HasSubstr("cuInit")));
}

}  // namespace
}  // namespace stasis
