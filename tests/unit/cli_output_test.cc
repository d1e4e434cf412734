// The CLI's guards on the files it writes: the temporary-file name it cleans up after
// (checked against both writers that make such files), which of them it removes, and the
// refusal of an output that is the input.
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

#include "snapshot/safetensors.h"
#include "stasis/file_system.h"
#include "stasis/image.h"
#include "tests/testutil/test_util.h"
#include "tools/stasis/same_file.h"
#include "tools/stasis/temp_files.h"

namespace stasis {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;
using ::testing::UnorderedElementsAre;

std::string FileName(const std::string& path) {
  return std::filesystem::path(path).filename().string();
}

// A pid no process has: a child's, after it was reaped.
pid_t DeadPid() {
  pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  ::waitpid(pid, nullptr, 0);
  return pid;
}

// A child that has exited and is not reaped yet (a zombie); ReapZombie() ends it.
pid_t ZombiePid() {
  pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  siginfo_t info;
  ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT);  // exited, still there
  return pid;
}
void ReapZombie(pid_t pid) { ::waitpid(pid, nullptr, 0); }

// Records the files a writer creates.
class RecordingFileSystem : public FileSystemWrapper {
 public:
  using FileSystemWrapper::FileSystemWrapper;
  StatusOr<std::unique_ptr<WritableFile>> CreateExclusive(const std::string& p) override {
    created.push_back(p);
    return FileSystemWrapper::CreateExclusive(p);
  }
  std::vector<std::string> created;
};

TEST(CliTempFilesTest, ParsesOnlyTheWritersName) {
  pid_t pid = 0;
  EXPECT_TRUE(cli::ParseTempFileName("m.stasis", "m.stasis.stasis-tmp.1234.0", &pid));
  EXPECT_EQ(pid, 1234);
  EXPECT_TRUE(cli::ParseTempFileName("m.stasis", "m.stasis.stasis-tmp.7.42", &pid));
  EXPECT_EQ(pid, 7);
  for (const char* other :
       {"m.stasis", "m.stasis.stasis-tmp.", "m.stasis.stasis-tmp.1234", "m.stasis.stasis-tmp.1234.",
        "m.stasis.stasis-tmp..0", "m.stasis.stasis-tmp.12a.0", "m.stasis.stasis-tmp.12.0x",
        "m.stasis.stasis-tmp.0.0", "m.stasis.stasis-tmp.-5.0", "xm.stasis.stasis-tmp.12.0",
        "m.stasis.stasis-tmp.99999999999999999999.0", "m.stasisx.stasis-tmp.12.0",
        "n.stasis.stasis-tmp.12.0"}) {
    EXPECT_FALSE(cli::ParseTempFileName("m.stasis", other, &pid)) << other;
  }
}

TEST(CliTempFilesTest, TheImageWriterUsesTheName) {
  TempDir dir;
  const std::string out = dir.File("m.stasis");
  auto writer = ImageWriter::Create(out, WriterOptions{});
  ASSERT_OK(writer.status());
  pid_t pid = 0;
  EXPECT_TRUE(cli::ParseTempFileName("m.stasis", FileName((*writer)->temp_path()), &pid))
      << (*writer)->temp_path();
  EXPECT_EQ(pid, ::getpid());
  EXPECT_EQ(std::filesystem::path((*writer)->temp_path()).parent_path(),
            std::filesystem::path(out).parent_path());
  (*writer)->Abandon();
}

TEST(CliTempFilesTest, TheSafetensorsWriterUsesTheName) {
  TempDir dir;
  RecordingFileSystem fs(DefaultFileSystem());
  const std::string out = dir.File("m.safetensors");
  const float x = 1.0f;
  ASSERT_OK(WriteSafetensors(&fs, out, {{"x", DType::kF32, {1}, &x, sizeof(x)}}, {}, false));
  ASSERT_EQ(fs.created.size(), 1u);
  pid_t pid = 0;
  EXPECT_TRUE(cli::ParseTempFileName("m.safetensors", FileName(fs.created[0]), &pid))
      << fs.created[0];
  EXPECT_EQ(pid, ::getpid());
}

TEST(CliTempFilesTest, RemovesStaleOrOwnFilesOfThatOutputOnly) {
  TempDir dir;
  const std::string out = dir.File("m.stasis");
  const pid_t dead = DeadPid();
  const std::string self = std::to_string(::getpid());
  const pid_t zombie = ZombiePid();
  const std::string stale = out + ".stasis-tmp." + std::to_string(dead) + ".0";
  const std::string zombies = out + ".stasis-tmp." + std::to_string(zombie) + ".1";
  const std::string own = out + ".stasis-tmp." + self + ".3";
  const std::string live = out + ".stasis-tmp.1.0";  // init: alive
  const std::string other_output = dir.File("n.stasis.stasis-tmp." + std::to_string(dead) + ".0");
  const std::string look_alike = out + ".stasis-tmp." + std::to_string(dead);
  for (const auto& p : {stale, zombies, own, live, other_output, look_alike, out})
    testing::WriteFile(p, "x");

  EXPECT_THAT(cli::RemoveTempFiles(out, cli::TempFiles::kStale),
              UnorderedElementsAre(stale, zombies));
  ReapZombie(zombie);
  EXPECT_THAT(dir.List(),
              UnorderedElementsAre(FileName(own), FileName(live), FileName(other_output),
                                   FileName(look_alike), FileName(out)));
  EXPECT_THAT(cli::RemoveTempFiles(out, cli::TempFiles::kOwn), UnorderedElementsAre(own));
  EXPECT_THAT(dir.List(), UnorderedElementsAre(FileName(live), FileName(other_output),
                                               FileName(look_alike), FileName(out)));
  EXPECT_TRUE(cli::RemoveTempFiles(dir.File("missing/m.stasis"), cli::TempFiles::kStale).empty());
}

TEST(CliSameFileTest, RefusesTheInputByAnyName) {
  TempDir dir;
  const std::string in = dir.File("m.safetensors");
  testing::WriteFile(in, "model");
  const std::string link = dir.File("link.stasis"), hard = dir.File("hard.stasis");
  ASSERT_EQ(::symlink(in.c_str(), link.c_str()), 0);
  ASSERT_EQ(::link(in.c_str(), hard.c_str()), 0);
  EXPECT_THAT(cli::CheckOutputIsNotAnInput({in}, in),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("is the input")));
  EXPECT_THAT(cli::CheckOutputIsNotAnInput({in}, link),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("same file as the input")));
  EXPECT_THAT(cli::CheckOutputIsNotAnInput({dir.File("other"), in}, hard),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr(in)));
  // Through a directory symlink too: the path differs, the file does not.
  const std::string dir_link = dir.File("again");
  ASSERT_EQ(::symlink(dir.path().c_str(), dir_link.c_str()), 0);
  EXPECT_THAT(cli::CheckOutputIsNotAnInput({in}, dir_link + "/m.safetensors"),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("same file")));

  testing::WriteFile(dir.File("other.stasis"), "model");  // same bytes, another file
  EXPECT_OK(cli::CheckOutputIsNotAnInput({in}, dir.File("other.stasis")));
  EXPECT_OK(cli::CheckOutputIsNotAnInput({in}, dir.File("new.stasis")));  // not there yet
  EXPECT_OK(cli::CheckOutputIsNotAnInput({dir.File("missing")}, dir.File("other.stasis")));
}

}  // namespace
}  // namespace stasis
