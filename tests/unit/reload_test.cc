// Reload() reopens the image by its path (M1 of issue 16): after an image damaged in place
// made a reload fail, a good image renamed onto the path is what the next reload restores;
// a file of the same layout is restored (image_replaced), one of another layout is a clear
// kFailedPrecondition that leaves the model unloaded. And the runtime's FAILED state,
// which retries the restore by itself, recovers once the good image is there.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "common/clock.h"
#include "runtime/lifecycle.h"
#include "runtime/model_host.h"
#include "stasis/image.h"
#include "stasis/restore.h"
#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using ::testing::HasSubstr;
using testing::RandomBytes;
using testing::TempDir;
using testing::TestSeed;

constexpr int64_t kSecond = 1'000'000'000;

class ReloadTest : public ::testing::TestWithParam<RestoreOptions::MapFile> {
 protected:
  void SetUp() override {
    a_ = RandomBytes(256 << 10, TestSeed());
    b_ = RandomBytes(100000, TestSeed() + 1);
    ASSERT_OK(Write(image(), a_, b_));
  }

  // An image of two tensors (the layout every image here shares unless `extra`).
  static Status Write(const std::string& path, const std::vector<uint8_t>& a,
                      const std::vector<uint8_t>& b, bool extra = false) {
    std::vector<HostTensor> t = {
        {"a", DType::kU8, {static_cast<int64_t>(a.size())}, {}, a.data(), a.size(), 0},
        {"b", DType::kU8, {static_cast<int64_t>(b.size())}, {}, b.data(), b.size(), 0},
    };
    if (extra) t.push_back({"c", DType::kU8, {16}, {}, a.data(), a.size(), 0});
    WriterOptions wo;
    wo.codec = CodecChoice::kRaw;
    wo.chunk_size = 64 << 10;
    return SnapshotHostTensors(t, {}, path, wo);
  }

  // Writes `path` elsewhere, then renames it onto the image (how images are replaced).
  void RenameOnto(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b,
                  bool extra = false) {
    const std::string tmp = dir_.File("next.stasis");
    ASSERT_OK(Write(tmp, a, b, extra));
    ASSERT_EQ(std::rename(tmp.c_str(), image().c_str()), 0);
  }

  // Flips one bit of the first chunk, in place (bit rot, or a cp while unloaded).
  void DamageInPlace() {
    const int fd = ::open(image().c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    uint8_t byte = 0;
    ASSERT_EQ(::pread(fd, &byte, 1, 4096 + 100), 1);
    byte ^= 0x40;
    ASSERT_EQ(::pwrite(fd, &byte, 1, 4096 + 100), 1);
    ::close(fd);
  }

  RestoreOptions Options() const {
    RestoreOptions o;
    o.map_file = GetParam();
    return o;
  }

  static void ExpectBytes(const RestoredModel& m, const std::vector<uint8_t>& a,
                          const std::vector<uint8_t>& b) {
    std::optional<RestoredTensor> ta = m.FindTensor("a");
    std::optional<RestoredTensor> tb = m.FindTensor("b");
    ASSERT_TRUE(ta && tb);
    EXPECT_EQ(0, std::memcmp(reinterpret_cast<const void*>(ta->address), a.data(), a.size()));
    EXPECT_EQ(0, std::memcmp(reinterpret_cast<const void*>(tb->address), b.data(), b.size()));
  }

  std::string image() const { return dir_.File("model.stasis"); }
  TempDir dir_;
  std::vector<uint8_t> a_, b_;
};

TEST_P(ReloadTest, AGoodImageRenamedOntoThePathRecoversAFailedReload) {
  auto model = RestoredModel::Restore(image(), Options());
  ASSERT_OK(model.status());
  const uint64_t address = (*model)->FindTensor("a")->address;
  ASSERT_OK((*model)->Unload());
  DamageInPlace();
  EXPECT_THAT((*model)->Reload(), StatusIs(StatusCode::kDataLoss, HasSubstr("checksum")));
  EXPECT_FALSE((*model)->loaded());
  // Still damaged: still failing (the same file is reopened, not a stale descriptor).
  EXPECT_THAT((*model)->Reload(), StatusIs(StatusCode::kDataLoss, HasSubstr("checksum")));
  RenameOnto(a_, b_);
  ASSERT_OK((*model)->Reload());
  EXPECT_TRUE((*model)->loaded());
  EXPECT_TRUE((*model)->report().image_replaced);
  EXPECT_EQ((*model)->FindTensor("a")->address, address) << "addresses handed out stay";
  ExpectBytes(**model, a_, b_);
  // The next reload of the same file is no replacement.
  ASSERT_OK((*model)->Unload());
  ASSERT_OK((*model)->Reload());
  EXPECT_FALSE((*model)->report().image_replaced);
  ExpectBytes(**model, a_, b_);
}

TEST_P(ReloadTest, AnImageRepairedInPlaceIsReadAgain) {
  auto model = RestoredModel::Restore(image(), Options());
  ASSERT_OK(model.status());
  const std::string good = testing::ReadFile(image());
  ASSERT_OK((*model)->Unload());
  DamageInPlace();
  EXPECT_THAT((*model)->Reload(), StatusIs(StatusCode::kDataLoss, HasSubstr("checksum")));
  testing::WriteFile(image(), good);  // in place: same inode
  ASSERT_OK((*model)->Reload());
  EXPECT_FALSE((*model)->report().image_replaced);
  ExpectBytes(**model, a_, b_);
}

TEST_P(ReloadTest, ANewSnapshotOfTheSameLayoutIsRestoredAtTheSameAddresses) {
  auto model = RestoredModel::Restore(image(), Options());
  ASSERT_OK(model.status());
  std::vector<uint64_t> addresses;
  for (const auto& t : (*model)->tensors()) addresses.push_back(t.address);
  ASSERT_OK((*model)->Unload());
  // New weights in the same storages: SnapshotHostTensors places storages by address, so
  // the same storages give the same layout.
  const auto a2 = RandomBytes(a_.size(), TestSeed() + 5), b2 = RandomBytes(b_.size(), 9);
  std::copy(a2.begin(), a2.end(), a_.begin());
  std::copy(b2.begin(), b2.end(), b_.begin());
  RenameOnto(a_, b_);
  ASSERT_OK((*model)->Reload());
  EXPECT_TRUE((*model)->report().image_replaced);
  for (size_t i = 0; i < addresses.size(); ++i)
    EXPECT_EQ((*model)->tensors()[i].address, addresses[i]);
  ExpectBytes(**model, a2, b2);
}

TEST_P(ReloadTest, AnotherLayoutIsAClearErrorAndLeavesTheModelUnloaded) {
  auto model = RestoredModel::Restore(image(), Options());
  ASSERT_OK(model.status());
  ASSERT_OK((*model)->Unload());
  RenameOnto(a_, b_, /*extra=*/true);
  EXPECT_THAT((*model)->Reload(),
              StatusIs(StatusCode::kFailedPrecondition, HasSubstr("another layout")));
  EXPECT_FALSE((*model)->loaded());
  EXPECT_EQ((*model)->manifest().tensors.size(), 2u) << "the previous manifest stays";
  // A shorter tensor is another layout too.
  RenameOnto(a_, std::vector<uint8_t>(b_.begin(), b_.end() - 8));
  EXPECT_THAT((*model)->Reload(),
              StatusIs(StatusCode::kFailedPrecondition, HasSubstr("another layout")));
  RenameOnto(a_, b_);
  ASSERT_OK((*model)->Reload());
  ExpectBytes(**model, a_, b_);
}

TEST_P(ReloadTest, AMissingImageIsNotFoundUntilItIsBack) {
  auto model = RestoredModel::Restore(image(), Options());
  ASSERT_OK(model.status());
  ASSERT_OK((*model)->Unload());
  const std::string aside = dir_.File("aside.stasis");
  ASSERT_EQ(std::rename(image().c_str(), aside.c_str()), 0);
  EXPECT_THAT((*model)->Reload(), StatusIs(StatusCode::kNotFound, HasSubstr("model.stasis")));
  ASSERT_EQ(std::rename(aside.c_str(), image().c_str()), 0);
  ASSERT_OK((*model)->Reload());
  EXPECT_FALSE((*model)->report().image_replaced) << "the same file came back";
  ExpectBytes(**model, a_, b_);
}

// A ModelHost over a RestoredModel (what `stasis serve`'s TorchScript host does, minus the
// framework): first Load restores, later ones Reload.
class RestoredModelHost final : public runtime::ModelHost {
 public:
  RestoredModelHost(std::string image, RestoreOptions o) : image_(std::move(image)), o_(o) {}
  Status Load(RestoreReport* report) override {
    if (!model_) {
      STASIS_ASSIGN_OR_RETURN(model_, RestoredModel::Restore(image_, o_));
    } else {
      STASIS_RETURN_IF_ERROR(model_->Reload());
    }
    *report = model_->report();
    return OkStatus();
  }
  Status Unload() override { return model_ ? model_->Unload() : OkStatus(); }
  StatusOr<std::vector<TensorData>> Infer(const std::vector<TensorData>& in) override { return in; }
  uint64_t DeviceBytes() const override { return model_ ? model_->device_bytes() : 0; }
  std::string Describe() const override { return image_; }
  RestoredModel* model() { return model_.get(); }

 private:
  std::string image_;
  RestoreOptions o_;
  std::unique_ptr<RestoredModel> model_;
};

TEST_P(ReloadTest, TheLifecycleRetryRecoversOnceAGoodImageIsRenamedOntoThePath) {
  RestoredModelHost host(image(), Options());
  ManualClock clock;
  runtime::LifecycleOptions lo;
  lo.idle_timeout_ns = -1;
  lo.retry_backoff_ns = kSecond;
  lo.retry_backoff_max_ns = 4 * kSecond;
  runtime::Lifecycle lc(&host, &clock, lo);
  ASSERT_OK(lc.Warmup());
  ASSERT_OK(lc.UnloadNow());
  DamageInPlace();
  // The lifecycle reports a failed restore as kUnavailable naming the cause (issue 16, M3).
  EXPECT_THAT(lc.Warmup(), StatusIs(StatusCode::kUnavailable, HasSubstr("DATA_LOSS")));
  EXPECT_EQ(lc.state(), runtime::ModelState::kFailed);
  // The retry timer keeps failing while the image is damaged.
  clock.Advance(kSecond);
  lc.Tick();
  EXPECT_EQ(lc.state(), runtime::ModelState::kFailed);
  EXPECT_EQ(lc.status().consecutive_failures, 2u);
  // The operator renames a good image onto the path: the next retry, by itself, recovers.
  RenameOnto(a_, b_);
  clock.Advance(2 * kSecond);
  lc.Tick();
  const runtime::LifecycleStatus st = lc.status();
  EXPECT_EQ(st.state, runtime::ModelState::kWarm) << st.last_error;
  EXPECT_EQ(st.consecutive_failures, 0u);
  EXPECT_TRUE(st.last_restore.image_replaced);
  ExpectBytes(*host.model(), a_, b_);
}

INSTANTIATE_TEST_SUITE_P(MapOnOff, ReloadTest,
                         ::testing::Values(RestoreOptions::MapFile::kOn,
                                           RestoreOptions::MapFile::kOff),
                         [](const auto& info) {
                           return info.param == RestoreOptions::MapFile::kOn ? "Mapped" : "Copied";
                         });

}  // namespace
}  // namespace stasis
