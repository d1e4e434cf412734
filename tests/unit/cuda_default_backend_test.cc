// RestoredModel::Restore picks the device backend itself: a program that links only the
// restore library and asks for `cuda` restores onto the GPU when a driver is present, with
// no backend_factory. Here the driver is the fake (fake_cuda_driver.h) behind a library
// that exports the driver's symbols (fake_libcuda.cc), named by STASIS_CUDA_DRIVER, so the
// whole way down runs as on a real machine: Restore → OpenDeviceBackend → LoadCudaDriver
// (dlopen, dlsym of every entry) → the CUDA VMM backend.
#include <dlfcn.h>
#include <stdlib.h>

#include <cstring>
#include <string>
#include <vector>

#include "stasis/image.h"
#include "stasis/restore.h"
#include "tests/testutil/fake_cuda_driver.h"
#include "tests/testutil/restore_util.h"
#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using ::testing::Contains;
using testing::FakeCudaDriver;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using testing::TempDir;

class CudaDefaultBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The process's driver is loaded once (LoadCudaDriver caches it): every test of this
    // binary installs its fake into the same library before the first restore.
    void* lib = ::dlopen(STASIS_FAKE_LIBCUDA, RTLD_NOW | RTLD_LOCAL);
    ASSERT_NE(lib, nullptr) << ::dlerror();
    auto install = reinterpret_cast<void (*)(const CudaDriverApi*)>(
        ::dlsym(lib, "stasis_fake_libcuda_install"));
    ASSERT_NE(install, nullptr);
    install(fake_.api());
    uninstall_ = install;
    ASSERT_EQ(::setenv("STASIS_CUDA_DRIVER", STASIS_FAKE_LIBCUDA, 1), 0);

    f32_ = testing::NormalF32Bytes(300000, testing::TestSeed());
    noise_ = testing::RandomBytes(70001, testing::TestSeed() + 1);
    std::vector<HostTensor> tensors = {
        {"f32", DType::kF32, {300, 1000}, {}, f32_.data(), f32_.size(), 0},
        {"f32.t", DType::kF32, {1000, 300}, {1, 1000}, f32_.data(), f32_.size(), 0},
        {"noise", DType::kU8, {70001}, {}, noise_.data(), noise_.size(), 0},
    };
    WriterOptions opt;
    opt.chunk_size = 256 << 10;
    ASSERT_OK(SnapshotHostTensors(tensors, {}, dir_.File("img"), opt));
  }
  void TearDown() override {
    if (uninstall_ != nullptr) uninstall_(nullptr);
  }

  // Only what any caller would set: the device. No fs, no factory.
  static RestoreOptions CudaOptions(int ordinal) {
    RestoreOptions o;
    o.device = DeviceSpec{format::DeviceKind::kCuda, ordinal};
    o.staging_bytes = 8 << 20;
    return o;
  }

  FakeCudaDriver fake_;
  void (*uninstall_)(const CudaDriverApi*) = nullptr;
  TempDir dir_;
  std::vector<uint8_t> f32_, noise_;
};

TEST_F(CudaDefaultBackendTest, RestoresOntoCudaWithoutAFactory) {
  {
    auto restored = RestoredModel::Restore(dir_.File("img"), CudaOptions(0));
    ASSERT_OK(restored.status());
    const RestoredModel& m = **restored;
    EXPECT_EQ(m.report().device.kind, format::DeviceKind::kCuda);
    EXPECT_EQ((*restored)->backend().device().kind, format::DeviceKind::kCuda);
    EXPECT_THAT(fake_.calls(), Contains("cuMemAddressReserve"));
    EXPECT_THAT(fake_.calls(), Contains("cuMemcpyHtoDAsync"));
    ASSERT_EQ(m.regions().size(), 1u);
    EXPECT_EQ(m.regions()[0].host_view, nullptr) << "device memory is not host memory";

    auto host = testing::RestoreToHost(dir_.File("img"));
    ASSERT_OK(host.status());
    for (const RestoredTensor& t : m.tensors()) {
      EXPECT_EQ(t.device.kind, format::DeviceKind::kCuda) << t.name;
      std::vector<uint8_t> device(t.byte_size);
      ASSERT_TRUE(fake_.ReadDevice(t.address, device.data(), device.size())) << t.name;
      EXPECT_EQ(0, std::memcmp(device.data(), testing::TensorBytes(**host, t.name), t.byte_size))
          << t.name;
    }
    // Unload/Reload through the same backend, addresses kept.
    const uint64_t address = m.tensors()[0].address;
    ASSERT_OK((*restored)->Unload());
    ASSERT_OK((*restored)->Reload());
    EXPECT_EQ((*restored)->tensors()[0].address, address);
    std::vector<uint8_t> again(f32_.size());
    ASSERT_TRUE(fake_.ReadDevice(address, again.data(), again.size()));
    EXPECT_EQ(again, f32_);
    EXPECT_THAT(fake_.violations(), IsEmpty());
  }
  EXPECT_EQ(fake_.LeakReport(), "") << "the restore released everything it mapped";
}

TEST_F(CudaDefaultBackendTest, AMissingDeviceIsNotFound) {
  // The fake has one device.
  EXPECT_THAT(RestoredModel::Restore(dir_.File("img"), CudaOptions(3)).status(),
              StatusIs(StatusCode::kNotFound, HasSubstr("no CUDA device 3")));
  EXPECT_EQ(fake_.LeakReport(), "");
}

}  // namespace
}  // namespace stasis
