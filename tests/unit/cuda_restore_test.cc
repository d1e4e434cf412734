// The whole restore pipeline on the cuda backend, over the fake driver: the staged routes
// (read into pinned staging, decode into a second slot, cuMemcpyHtoDAsync) must give the
// same bytes as the host backend, leave nothing behind, and survive unload/reload and a
// driver failure at every step.
#include <cstring>

#include "restore/device/cuda_backend.h"
#include "stasis/image.h"
#include "stasis/restore.h"
#include "tests/testutil/fake_cuda_driver.h"
#include "tests/testutil/restore_util.h"
#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using testing::FakeCudaDriver;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using testing::TempDir;

class CudaRestoreTest : public ::testing::TestWithParam<CodecChoice> {
 protected:
  void SetUp() override {
    f32_ = testing::NormalF32Bytes(200000, testing::TestSeed());
    bf16_ = testing::NormalBF16Bytes(300000, testing::TestSeed() + 1);
    noise_ = testing::RandomBytes(50001, testing::TestSeed() + 2);
    std::vector<HostTensor> tensors = {
        {"f32", DType::kF32, {200, 1000}, {}, f32_.data(), f32_.size(), 0},
        {"f32.t", DType::kF32, {1000, 200}, {1, 1000}, f32_.data(), f32_.size(), 0},
        {"bf16", DType::kBF16, {300000}, {}, bf16_.data(), bf16_.size(), 0},
        {"noise", DType::kU8, {50001}, {}, noise_.data(), noise_.size(), 0},
    };
    WriterOptions opt;
    opt.codec = GetParam();
    opt.chunk_size = 64 << 10;
    ASSERT_OK(SnapshotHostTensors(tensors, {}, dir_.File("img"), opt));
  }

  RestoreOptions Options() {
    RestoreOptions o;
    o.fs = DefaultFileSystem();
    o.device = DeviceSpec{format::DeviceKind::kCuda, 0};
    o.threads = 2;
    o.staging_bytes = 4 << 20;
    o.backend_factory = [this](const DeviceSpec& d) {
      return NewCudaBackend(fake_.api(), d.ordinal);
    };
    return o;
  }

  // Every tensor's device bytes equal the host backend's restore of the same image.
  void ExpectSameAsHost(const RestoredModel& model) {
    auto host = testing::RestoreToHost(dir_.File("img"));
    ASSERT_OK(host.status());
    for (const auto& t : model.tensors()) {
      std::vector<uint8_t> device(t.byte_size);
      ASSERT_TRUE(fake_.ReadDevice(t.address, device.data(), device.size())) << t.name;
      ASSERT_EQ(0, std::memcmp(device.data(), testing::TensorBytes(**host, t.name), t.byte_size))
          << t.name;
    }
  }

  FakeCudaDriver fake_;
  TempDir dir_;
  std::vector<uint8_t> f32_, bf16_, noise_;
};

TEST_P(CudaRestoreTest, ByteIdenticalToTheHostBackend) {
  {
    auto model = RestoredModel::Restore(dir_.File("img"), Options());
    ASSERT_OK(model.status());
    EXPECT_EQ((*model)->report().chunks_read_in_place, 0u)
        << "device memory is never read in place";
    EXPECT_EQ((*model)->tensors()[0].device.kind, format::DeviceKind::kCuda);
    ExpectSameAsHost(**model);
    EXPECT_THAT(fake_.violations(), IsEmpty());
  }
  EXPECT_EQ(fake_.LeakReport(), "");
}

TEST_P(CudaRestoreTest, UnloadReloadKeepsAddressesAndBytes) {
  auto model = RestoredModel::Restore(dir_.File("img"), Options());
  ASSERT_OK(model.status());
  std::vector<uint64_t> addresses;
  for (const auto& t : (*model)->tensors()) addresses.push_back(t.address);
  ASSERT_OK((*model)->Unload());
  EXPECT_EQ(fake_.live_handles(), 0u) << "unload releases physical memory";
  EXPECT_GT(fake_.live_reservations(), 0u) << "and keeps the addresses";
  ASSERT_OK((*model)->Reload());
  for (size_t i = 0; i < addresses.size(); ++i)
    EXPECT_EQ((*model)->tensors()[i].address, addresses[i]);
  ExpectSameAsHost(**model);
  EXPECT_THAT(fake_.violations(), IsEmpty());
}

TEST_P(CudaRestoreTest, DriverFailureAtEveryCallLeaksNothing) {
  // Count the calls of a clean restore, then fail each one in turn.
  uint64_t calls = 0;
  {
    fake_.ClearCalls();
    auto model = RestoredModel::Restore(dir_.File("img"), Options());
    ASSERT_OK(model.status());
    calls = fake_.call_count();
  }
  ASSERT_EQ(fake_.LeakReport(), "");
  ASSERT_GT(calls, 20u);
  // Every call up to the end of the restore itself (teardown failures are the backend
  // test's business).
  fake_.set_defer_copies(true);  // also catches a slot reused before its copy ran
  for (uint64_t k = 1; k <= calls; ++k) {
    fake_.ClearCalls();
    fake_.set_fail_at_call(k);
    {
      auto model = RestoredModel::Restore(dir_.File("img"), Options());
      if (model.ok()) {
        ExpectSameAsHost(**model);  // the failed call was absorbed (e.g. a refused hint)
        continue;
      }
    }
    EXPECT_EQ(fake_.LeakReport(), "")
        << "failure at driver call " << k << " (" << fake_.injected_function() << ")";
    EXPECT_THAT(fake_.violations(), IsEmpty()) << "failure at driver call " << k;
  }
  fake_.set_fail_at_call(0);
}

INSTANTIATE_TEST_SUITE_P(Codecs, CudaRestoreTest,
                         ::testing::Values(CodecChoice::kAuto, CodecChoice::kZstd,
                                           CodecChoice::kRaw));

}  // namespace
}  // namespace stasis
