// Fault injection through the file-system seam: EIO, ENOSPC and short writes at every
// write of a snapshot, and failures of sync, close, rename and the directory sync. None
// may leave a file at the destination or a temporary file behind.
#include <atomic>

#include "common/fault_injection_file_system.h"
#include "stasis/image.h"
#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using testing::NormalBF16Bytes;
using testing::TempDir;
using testing::TestSeed;

class WriterFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    weights_ = NormalBF16Bytes(40000, TestSeed());
    tensors_ = {{"a", DType::kBF16, {200, 100}, {}, weights_.data(), weights_.size(), 0},
                {"b", DType::kBF16, {100, 200}, {1, 100}, weights_.data(), weights_.size(), 0},
                {"c", DType::kBF16, {20000}, {}, weights_.data() + 40000, 40000, 0}};
  }
  Status Snapshot(FileSystem* fs, bool overwrite = false) {
    WriterOptions opt;
    opt.fs = fs;
    opt.chunk_size = 8192;
    opt.threads = 2;
    opt.overwrite = overwrite;
    return SnapshotHostTensors(tensors_, {{"section", "x"}}, dir_.File("model.stasis"), opt);
  }

  TempDir dir_;
  std::vector<uint8_t> weights_;
  std::vector<HostTensor> tensors_;
};

TEST_F(WriterFaultTest, EveryWriteFailureLeavesNothing) {
  FaultInjectionFileSystem fs(DefaultFileSystem());
  // Count the writes of a clean snapshot first.
  ASSERT_OK(Snapshot(&fs));
  const uint64_t writes = fs.append_calls();
  ASSERT_GT(writes, 10u);
  ASSERT_OK(DefaultFileSystem()->Remove(dir_.File("model.stasis")));

  for (WriteFault fault : {WriteFault::kEio, WriteFault::kNoSpace, WriteFault::kShortWrite}) {
    for (uint64_t k = 1; k <= writes; ++k) {
      SCOPED_TRACE("fault " + std::to_string(static_cast<int>(fault)) + " at write " +
                   std::to_string(k));
      fs.ResetCounters();
      fs.set_plan(FaultPlan{.fail_append_at = k, .append_fault = fault});
      Status s = Snapshot(&fs);
      EXPECT_FALSE(s.ok());
      if (fault == WriteFault::kEio)
        EXPECT_THAT(s, StatusIs(StatusCode::kUnavailable, HasSubstr("injected")));
      else
        EXPECT_THAT(s, StatusIs(StatusCode::kResourceExhausted, HasSubstr("injected")));
      EXPECT_THAT(dir_.List(), IsEmpty());
      EXPECT_THAT(fs.LiveCreatedFiles(), IsEmpty());
    }
  }
  fs.set_plan(FaultPlan{});
  ASSERT_OK(Snapshot(&fs));
  EXPECT_THAT(dir_.List(), ElementsAre("model.stasis"));
}

TEST_F(WriterFaultTest, SyncCloseRenameAndDirSyncFailuresLeaveNothing) {
  FaultInjectionFileSystem fs(DefaultFileSystem());
  FaultPlan plans[4];
  plans[0].fail_sync = true;
  plans[1].fail_close = true;
  plans[2].fail_rename = true;
  plans[3].fail_sync_dir = true;
  for (const auto& plan : plans) {
    fs.set_plan(plan);
    EXPECT_THAT(Snapshot(&fs), StatusIs(StatusCode::kUnavailable, HasSubstr("injected")));
    EXPECT_THAT(dir_.List(), IsEmpty());
  }
}

TEST_F(WriterFaultTest, FailureKeepsAnExistingDestination) {
  testing::WriteFile(dir_.File("model.stasis"), "the old image");
  FaultInjectionFileSystem fs(DefaultFileSystem());
  for (uint64_t k : {1, 2, 5, 9}) {
    fs.ResetCounters();
    fs.set_plan(FaultPlan{.fail_append_at = k, .append_fault = WriteFault::kNoSpace});
    EXPECT_FALSE(Snapshot(&fs, /*overwrite=*/true).ok());
    EXPECT_EQ(testing::ReadFile(dir_.File("model.stasis")), "the old image");
    EXPECT_THAT(dir_.List(), ElementsAre("model.stasis"));
  }
  fs.set_plan(FaultPlan{.fail_rename = true});
  EXPECT_FALSE(Snapshot(&fs, true).ok());
  EXPECT_EQ(testing::ReadFile(dir_.File("model.stasis")), "the old image");
  fs.set_plan(FaultPlan{});
  ASSERT_OK(Snapshot(&fs, true));
  EXPECT_OK(ImageReader::Open(dir_.File("model.stasis")).status());
}

TEST_F(WriterFaultTest, AbandonMidStreamRemovesTheTempFile) {
  WriterOptions opt;
  opt.chunk_size = 4096;
  auto w = ImageWriter::Create(dir_.File("model.stasis"), opt);
  ASSERT_OK(w.status());
  ASSERT_OK(AddHostTensors(tensors_, w->get()));
  EXPECT_THAT(dir_.List(), ElementsAre(::testing::StartsWith("model.stasis.stasis-tmp.")));
  (*w)->Abandon();
  (*w)->Abandon();  // idempotent
  EXPECT_THAT(dir_.List(), IsEmpty());
  EXPECT_THAT((*w)->Finish(), StatusIs(StatusCode::kFailedPrecondition, HasSubstr("already")));
}

// WriterOptions::cancel, set while chunks are being cut (from the progress callback, as
// another thread would), fails the snapshot with kCancelled; Abandon leaves nothing.
TEST_F(WriterFaultTest, CancelStopsAtTheNextChunkAndLeavesNothing) {
  std::atomic<bool> cancel{false};
  WriterOptions opt;
  opt.chunk_size = 4096;
  opt.cancel = &cancel;
  opt.progress = [&](uint64_t written) {
    if (written >= 3 * 4096) cancel = true;
  };
  opt.threads = 1;
  Status s = SnapshotHostTensors(tensors_, {}, dir_.File("model.stasis"), opt);
  EXPECT_THAT(s, StatusIs(StatusCode::kCancelled, HasSubstr("cancelled by the caller")));
  EXPECT_THAT(dir_.List(), IsEmpty());

  // Set once every byte is in, it still stops Finish before it publishes.
  cancel = false;
  opt.progress = nullptr;
  auto w = ImageWriter::Create(dir_.File("model.stasis"), opt);
  ASSERT_OK(w.status());
  ASSERT_OK(AddHostTensors(tensors_, w->get()));
  cancel = true;
  EXPECT_THAT((*w)->Finish(),
              StatusIs(StatusCode::kCancelled, HasSubstr("cancelled by the caller")));
  EXPECT_THAT(dir_.List(), IsEmpty());
}

}  // namespace
}  // namespace stasis
