// The stasis CLI end to end, as a user runs it: real files, the real binaries, exit codes.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "snapshot/format.h"
#include "snapshot/safetensors.h"
#include "stasis/file_system.h"
#include "stasis/image.h"
#include "tests/testutil/test_util.h"

extern char** environ;

namespace stasis {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;
using testing::TestSeed;

using Result = testing::CommandResult;

Result RunCmd(const std::string& args, const TempDir& dir) {
  return testing::RunCommand(args, dir);
}

const std::string kStasis = STASIS_BIN;
const std::string kGen = STASIS_GENMODEL_BIN;

// Per-tensor bytes of a safetensors file, by name.
std::map<std::string, std::pair<std::string, std::string>> TensorsOf(const std::string& path) {
  std::map<std::string, std::pair<std::string, std::string>> out;  // name -> (dtype+shape, bytes)
  auto h = ReadSafetensorsHeader(DefaultFileSystem(), path);
  EXPECT_OK(h.status());
  if (!h.ok()) return out;
  std::string file = testing::ReadFile(path);
  for (const auto& e : h->entries) {
    std::string desc(DTypeName(e.dtype));
    for (int64_t d : e.shape) desc += "," + std::to_string(d);
    out[e.name] = {desc, file.substr(h->data_start + e.begin, e.end - e.begin)};
  }
  return out;
}

// A safetensors file with every dtype, a scalar, an empty tensor and metadata, written
// with an unpadded header so data offsets are unaligned.
std::string WriteEveryDtype(const TempDir& dir) {
  std::vector<std::vector<uint8_t>> keep;
  std::vector<SafetensorsTensorOut> tensors;
  for (uint8_t id = 1; id <= kMaxDTypeId; ++id) {
    DType t = *DTypeFromId(id);
    int bits = DTypeBits(t);
    std::vector<int64_t> shape = bits == 4   ? std::vector<int64_t>{4, 6}
                                 : bits == 6 ? std::vector<int64_t>{8, 3}
                                             : std::vector<int64_t>{33, 17};
    keep.push_back(testing::RandomBytes(shape[0] * shape[1] * bits / 8, TestSeed() + id));
    tensors.push_back(
        {"t_" + std::string(DTypeName(t)), t, shape, keep.back().data(), keep.back().size()});
  }
  keep.push_back(testing::RandomBytes(8, 9));
  tensors.push_back({"scalar", DType::kF64, {}, keep.back().data(), 8});
  tensors.push_back({"empty", DType::kF32, {3, 0}, nullptr, 0});
  keep.push_back(testing::NormalBF16Bytes(300000, TestSeed()));  // big enough to compress
  tensors.push_back({"big.bf16", DType::kBF16, {600, 500}, keep.back().data(), keep.back().size()});
  std::string path = dir.File("every.safetensors");
  EXPECT_OK(WriteSafetensors(DefaultFileSystem(), path, tensors, {{"format", "pt"}, {"note", "x"}},
                             false));
  return path;
}

TEST(CliTest, VersionAndUsage) {
  TempDir dir;
  Result v = RunCmd(kStasis + " --version", dir);
  EXPECT_EQ(v.exit_code, 0);
  EXPECT_THAT(v.out, HasSubstr("stasis "));
  EXPECT_EQ(RunCmd(kStasis + " snapshot", dir).exit_code, 1);
  EXPECT_EQ(RunCmd(kStasis + " frobnicate", dir).exit_code, 1);
  EXPECT_EQ(RunCmd(kStasis + " snapshot x -o y --codec lz4", dir).exit_code, 1);
}

class CliRoundTripTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CliRoundTripTest, SafetensorsToImageToSafetensorsIsByteIdentical) {
  TempDir dir;
  std::string src = WriteEveryDtype(dir);
  std::string img = dir.File("every.stasis");
  Result s = RunCmd(kStasis + " snapshot " + src + " -o " + img + " --codec " + GetParam() +
                        " --chunk-size 64k --json",
                    dir);
  ASSERT_EQ(s.exit_code, 0) << s.err;
  auto report = nlohmann::json::parse(s.out);
  EXPECT_GT(report["raw_bytes"].get<uint64_t>(), 600000u);
  if (GetParam() == "raw") {
    EXPECT_EQ(report["chunks"]["zstd"].get<int>() + report["chunks"]["grouped"].get<int>(), 0);
  } else {
    EXPECT_GT(report["ratio"].get<double>(), 1.05) << "the bf16 tensor must compress";
  }
  Result v = RunCmd(kStasis + " verify " + img, dir);
  EXPECT_EQ(v.exit_code, 0) << v.err;
  EXPECT_THAT(v.out, HasSubstr("intact"));
  std::string out = dir.File("out.safetensors");
  Result e = RunCmd(kStasis + " export " + img + " -o " + out, dir);
  ASSERT_EQ(e.exit_code, 0) << e.err;
  auto a = TensorsOf(src), b = TensorsOf(out);
  ASSERT_EQ(a.size(), 25u);
  EXPECT_TRUE(a == b) << "export must give back every tensor byte for byte";
  auto h = ReadSafetensorsHeader(DefaultFileSystem(), out);
  ASSERT_OK(h.status());
  EXPECT_EQ(h->metadata,
            (std::vector<std::pair<std::string, std::string>>{{"format", "pt"}, {"note", "x"}}));
}

INSTANTIATE_TEST_SUITE_P(Codecs, CliRoundTripTest, ::testing::Values("auto", "zstd", "raw"));

TEST(CliTest, GeneratedModelShardedRoundTripAndInspect) {
  TempDir dir;
  Result g = RunCmd(kGen + " --preset tiny --dtype bf16 --seed 7 --shards 3 -o " + dir.path(), dir);
  ASSERT_EQ(g.exit_code, 0) << g.err;
  std::string index = dir.File("model.safetensors.index.json");
  ASSERT_TRUE(DefaultFileSystem()->Exists(index)) << g.out;
  std::string img = dir.File("tiny.stasis");
  Result s = RunCmd(kStasis + " snapshot " + index + " -o " + img + " -q", dir);
  ASSERT_EQ(s.exit_code, 0) << s.err;
  Result i = RunCmd(kStasis + " inspect " + img + " --json", dir);
  ASSERT_EQ(i.exit_code, 0) << i.err;
  auto j = nlohmann::json::parse(i.out);
  EXPECT_EQ(j["metadata"]["source.format"], "safetensors");
  EXPECT_GT(j["tensors"].size(), 10u);
  EXPECT_EQ(j["regions"].size(), 1u);
  Result text = RunCmd(kStasis + " inspect " + img, dir);
  EXPECT_THAT(text.out, HasSubstr("wte.weight"));
  std::string out = dir.File("back.safetensors");
  ASSERT_EQ(RunCmd(kStasis + " export " + img + " -o " + out, dir).exit_code, 0);
  // Compare against the union of the shards.
  std::map<std::string, std::pair<std::string, std::string>> shards;
  for (const auto& name : dir.List()) {
    if (name.rfind("model-", 0) == 0) {
      auto t = TensorsOf(dir.File(name));
      shards.insert(t.begin(), t.end());
    }
  }
  EXPECT_EQ(shards.size(), j["tensors"].size());
  EXPECT_TRUE(TensorsOf(out) == shards);
}

TEST(CliTest, ErrorsGetClearMessagesAndExitCodes) {
  TempDir dir;
  testing::WriteFile(dir.File("junk.safetensors"), "this is not a model");
  Result r = RunCmd(
      kStasis + " snapshot " + dir.File("junk.safetensors") + " -o " + dir.File("x.stasis"), dir);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("INVALID_ARGUMENT"));
  EXPECT_FALSE(DefaultFileSystem()->Exists(dir.File("x.stasis")));

  r = RunCmd(kStasis + " inspect " + dir.File("missing.stasis"), dir);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("NOT_FOUND"));

  r = RunCmd(kStasis + " verify " + dir.File("junk.safetensors"), dir);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("not a stasis image"));

  // Corrupt one byte of a chunk: verify names the chunk and exits 3; export refuses.
  std::string src = WriteEveryDtype(dir);
  std::string img = dir.File("every.stasis");
  ASSERT_EQ(RunCmd(kStasis + " snapshot " + src + " -o " + img, dir).exit_code, 0);
  std::string bytes = testing::ReadFile(img);
  bytes[4096 + 100] ^= 0x10;
  testing::WriteFile(dir.File("bad.stasis"), bytes);
  r = RunCmd(kStasis + " verify " + dir.File("bad.stasis"), dir);
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_THAT(r.err, HasSubstr("chunk 0: checksum mismatch"));
  r = RunCmd(kStasis + " verify --json " + dir.File("bad.stasis"), dir);
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_FALSE(nlohmann::json::parse(r.out)["intact"].get<bool>());
  r = RunCmd(kStasis + " export " + dir.File("bad.stasis") + " -o " + dir.File("o.safetensors"),
             dir);
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_FALSE(DefaultFileSystem()->Exists(dir.File("o.safetensors")));

  // Existing outputs are kept unless --force.
  r = RunCmd(kStasis + " snapshot " + src + " -o " + img, dir);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--force"));
  EXPECT_EQ(RunCmd(kStasis + " snapshot " + src + " -o " + img + " --force", dir).exit_code, 0);
}

// ---- Outputs: never the input, no temporary file left behind --------------------------

// The temporary files of the writers in `dir` (tools/stasis/temp_files.h).
std::vector<std::string> TempFilesIn(const TempDir& dir) {
  std::vector<std::string> out;
  for (const auto& name : dir.List())
    if (name.find(".stasis-tmp.") != std::string::npos) out.push_back(name);
  return out;
}

// A safetensors file of one bf16 tensor of `count` elements: N(0, 0.02), so zstd works
// for its ratio.
std::string WriteBf16Model(const TempDir& dir, const std::string& name, size_t count) {
  std::vector<uint8_t> bytes = testing::NormalBF16Bytes(count, TestSeed());
  const std::string path = dir.File(name);
  EXPECT_OK(WriteSafetensors(
      DefaultFileSystem(), path,
      {{"w", DType::kBF16, {static_cast<int64_t>(count)}, bytes.data(), bytes.size()}}, {}, false));
  return path;
}

// Starts `stasis args...` with stdout and stderr in files of `logs`; returns its pid.
pid_t StartStasis(const std::vector<std::string>& args, const TempDir& logs) {
  std::vector<std::string> full = {kStasis};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  const std::string out = logs.File("child.out"), err = logs.File("child.err");
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  pid_t pid = -1;
  EXPECT_EQ(posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  return pid;
}

// The exit code of a waited-for child; 1000 + signal when a signal killed it.
int ExitCode(int status) {
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + WTERMSIG(status);
}

TEST(CliTest, AnOutputThatIsAnInputIsRefused) {
  TempDir dir;
  const std::string src = WriteEveryDtype(dir);
  const std::string src_bytes = testing::ReadFile(src);
  const std::string link = dir.File("link.stasis"), hard = dir.File("hard.stasis");
  ASSERT_EQ(::symlink(src.c_str(), link.c_str()), 0);
  ASSERT_EQ(::link(src.c_str(), hard.c_str()), 0);
  for (const std::string& out : {src, link, hard}) {
    Result r = RunCmd(kStasis + " snapshot " + src + " -o " + out + " --force", dir);
    EXPECT_EQ(r.exit_code, 2) << out;
    EXPECT_THAT(r.err, HasSubstr("INVALID_ARGUMENT: output '" + out + "'")) << out;
    EXPECT_THAT(r.err, HasSubstr("would replace the input"));
  }
  EXPECT_EQ(testing::ReadFile(src), src_bytes) << "the model must be untouched";
  EXPECT_TRUE(TempFilesIn(dir).empty());

  // A shard of a sharded checkpoint is an input too.
  Result g = RunCmd(kGen + " --preset tiny --seed 3 --shards 2 -o " + dir.path(), dir);
  ASSERT_EQ(g.exit_code, 0) << g.err;
  const std::string shard = dir.File("model-00002-of-00002.safetensors");
  const std::string shard_bytes = testing::ReadFile(shard);
  Result r = RunCmd(kStasis + " snapshot " + dir.File("model.safetensors.index.json") + " -o " +
                        shard + " --force",
                    dir);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("would replace the input"));
  EXPECT_EQ(testing::ReadFile(shard), shard_bytes);

  // export, whatever names the image.
  const std::string img = dir.File("every.stasis");
  ASSERT_EQ(RunCmd(kStasis + " snapshot " + src + " -o " + img, dir).exit_code, 0);
  const std::string img_bytes = testing::ReadFile(img);
  const std::string img_link = dir.File("img-link.safetensors");
  ASSERT_EQ(::symlink(img.c_str(), img_link.c_str()), 0);
  for (const std::string& out : {img, img_link}) {
    r = RunCmd(kStasis + " export " + img + " -o " + out + " --force", dir);
    EXPECT_EQ(r.exit_code, 2) << out;
    EXPECT_THAT(r.err, HasSubstr("would replace the input"));
  }
  EXPECT_EQ(testing::ReadFile(img), img_bytes) << "the image must be untouched";
  EXPECT_EQ(RunCmd(kStasis + " verify " + img, dir).exit_code, 0);

  // bench would rewrite a stale image: not when the image is the model (refused before
  // the framework is loaded).
  r = RunCmd(kStasis + " bench " + src + " --image " + link + " --resnapshot --runs 1", dir);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("would replace the input"));
  EXPECT_EQ(testing::ReadFile(src), src_bytes);

  // Outputs that do not exist yet, or are other files, still work.
  EXPECT_EQ(RunCmd(kStasis + " snapshot " + src + " -o " + dir.File("new.stasis"), dir).exit_code,
            0);
  EXPECT_EQ(
      RunCmd(kStasis + " export " + img + " -o " + dir.File("new.safetensors"), dir).exit_code, 0);
  EXPECT_EQ(RunCmd(kStasis + " snapshot " + src + " -o " + img + " --force", dir).exit_code, 0);
}

TEST(CliTest, TemporaryFilesOfDeadWritersAreRemovedByTheNextWrite) {
  TempDir dir;
  const std::string src = WriteEveryDtype(dir);
  // A SIGKILLed writer's pid: a child that has been reaped.
  pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  ASSERT_GT(dead, 0);
  ::waitpid(dead, nullptr, 0);
  const std::string tag = ".stasis-tmp." + std::to_string(dead) + ".0";
  const std::string live_tag = ".stasis-tmp." + std::to_string(::getpid()) + ".0";
  const std::string img = dir.File("m.stasis"), out = dir.File("m.safetensors");
  for (const std::string& p : {img + tag, img + live_tag, out + tag, dir.File("other") + tag})
    testing::WriteFile(p, std::string(4096, 'x'));

  Result r = RunCmd(kStasis + " snapshot " + src + " -o " + img, dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("removed " + img + tag));
  r = RunCmd(kStasis + " export " + img + " -o " + out, dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("removed " + out + tag));
  // A live writer's file (this test's pid) and another output's are not touched.
  EXPECT_THAT(TempFilesIn(dir),
              ::testing::UnorderedElementsAre("m.stasis" + live_tag, "other" + tag));
}

class CliInterruptTest : public ::testing::TestWithParam<int> {};

TEST_P(CliInterruptTest, InterruptedSnapshotRemovesItsTemporaryFile) {
  const int sig = GetParam();
  TempDir dir, logs;
  // 16 MiB at zstd level 19 on one thread: seconds of work once the temporary file exists.
  const std::string src = WriteBf16Model(dir, "m.safetensors", 8u << 20);
  const std::string img = dir.File("m.stasis");
  pid_t pid = StartStasis(
      {"snapshot", src, "-o", img, "--codec", "zstd", "--level", "19", "--threads", "1", "-q"},
      logs);
  ASSERT_GT(pid, 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (TempFilesIn(dir).empty() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ASSERT_EQ(TempFilesIn(dir).size(), 1u) << "the snapshot never started writing";
  ASSERT_EQ(::kill(pid, sig), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  const std::string err = testing::ReadFile(logs.File("child.err"));
  EXPECT_EQ(ExitCode(status), 128 + sig) << err;
  EXPECT_THAT(err, HasSubstr("interrupted by SIG"));
  EXPECT_THAT(err, HasSubstr("removed " + img + ".stasis-tmp."));
  EXPECT_TRUE(TempFilesIn(dir).empty());
  EXPECT_FALSE(DefaultFileSystem()->Exists(img));
}

// export writes its file in one quick pass: the child is run in short slices (SIGCONT,
// SIGSTOP) until its temporary file exists, then signalled while stopped.
TEST_P(CliInterruptTest, InterruptedExportRemovesItsTemporaryFile) {
  const int sig = GetParam();
  TempDir dir, logs;
  const std::string src = WriteBf16Model(dir, "m.safetensors", 32u << 20);  // 64 MiB
  const std::string img = dir.File("m.stasis");
  ASSERT_EQ(RunCmd(kStasis + " snapshot " + src + " -o " + img + " --codec raw -q", logs).exit_code,
            0);
  ASSERT_EQ(::unlink(src.c_str()), 0);
  const std::string out = dir.File("out.safetensors");
  pid_t pid = StartStasis({"export", img, "-o", out}, logs);
  ASSERT_GT(pid, 0);
  int status = 0;
  bool stopped_while_writing = false;
  for (int i = 0; i < 200000 && !stopped_while_writing; ++i) {
    ::kill(pid, SIGSTOP);
    ASSERT_EQ(::waitpid(pid, &status, WUNTRACED), pid);
    if (!WIFSTOPPED(status)) break;  // it finished first
    stopped_while_writing = !TempFilesIn(dir).empty();
    if (!stopped_while_writing) {
      ::kill(pid, SIGCONT);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  ASSERT_TRUE(stopped_while_writing) << "export finished before its file was seen";
  ASSERT_EQ(::kill(pid, sig), 0);
  ASSERT_EQ(::kill(pid, SIGCONT), 0);
  do {
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  } while (!WIFEXITED(status) && !WIFSIGNALED(status));
  const std::string err = testing::ReadFile(logs.File("child.err"));
  EXPECT_EQ(ExitCode(status), 128 + sig) << err;
  EXPECT_THAT(err, HasSubstr("removed " + out + ".stasis-tmp."));
  EXPECT_TRUE(TempFilesIn(dir).empty());
  EXPECT_FALSE(DefaultFileSystem()->Exists(out));
}

INSTANTIATE_TEST_SUITE_P(Signals, CliInterruptTest, ::testing::Values(SIGINT, SIGTERM),
                         [](const auto& info) { return info.param == SIGINT ? "Int" : "Term"; });

// ---- Hostile names, hostile flags ------------------------------------------------------

// A copy of `img` whose first tensor name starting with `name` has its first byte set to
// 0xB0 (not UTF-8), with the manifest and footer checksums made right again: an image
// `verify` calls intact.
// An image (current format, written by the library) holding a tensor whose name is not
// UTF-8: "\xB0" "calar". The format's names are strings of bytes.
std::string WriteNonUtf8NameImage(TempDir& dir) {
  const std::string path = dir.File("badname.stasis");
  const float value = 1.5f;
  auto w = ImageWriter::Create(path, WriterOptions{});
  EXPECT_OK(w.status());
  if (!w.ok()) return path;
  EXPECT_OK((*w)->AddRegion({sizeof(value), 256, 0, format::DeviceKind::kCpu, -1}).status());
  EXPECT_OK((*w)->AddRegionData(0, 0, &value, sizeof(value), 4));
  EXPECT_OK(
      (*w)->AddTensor({"\xB0"
                       "calar",
                       DType::kF32,
                       {},
                       {},
                       0,
                       0,
                       sizeof(value)}));
  EXPECT_OK((*w)->Finish());
  return path;
}

TEST(CliTest, InspectJsonSurvivesANonUtf8TensorName) {
  TempDir dir;
  const std::string bad = WriteNonUtf8NameImage(dir);
  Result v = RunCmd(kStasis + " verify " + bad, dir);
  ASSERT_EQ(v.exit_code, 0) << v.err;  // the name is a string of bytes; its checksum holds

  Result i = RunCmd(kStasis + " inspect " + bad + " --json", dir);
  ASSERT_EQ(i.exit_code, 0) << i.err;
  auto j = nlohmann::json::parse(i.out);  // valid UTF-8 JSON
  bool found = false;
  for (const auto& t : j["tensors"])
    found = found || t["name"] ==
                         "\xEF\xBF\xBD"
                         "calar";
  EXPECT_TRUE(found) << "the invalid byte becomes U+FFFD";
  // The text form shows the bytes as they are; the other JSON reports do not abort either.
  EXPECT_EQ(RunCmd(kStasis + " inspect " + bad, dir).exit_code, 0);
  Result vj = RunCmd(kStasis + " verify --json " + bad, dir);
  EXPECT_EQ(vj.exit_code, 0) << vj.err;
  Result rj = RunCmd(kStasis + " restore --json " + bad, dir);
  EXPECT_EQ(rj.exit_code, 0) << rj.err;
  EXPECT_TRUE(nlohmann::json::accept(rj.out));
  // A path that is not UTF-8 in a JSON report.
  const std::string odd = dir.File("\xB0.stasis");
  ASSERT_EQ(::rename(bad.c_str(), odd.c_str()), 0);
  Result pj = RunCmd(kStasis + " inspect --json '" + odd + "'", dir);
  EXPECT_EQ(pj.exit_code, 0) << pj.err;
  EXPECT_TRUE(nlohmann::json::accept(pj.out));
}

TEST(CliTest, NumericFlagsAreBounded) {
  TempDir dir;
  const std::string src = WriteEveryDtype(dir);
  const std::string img = dir.File("every.stasis");
  Result r = RunCmd(kStasis + " snapshot " + src + " -o " + img + " --threads 100000", dir);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("--threads: Value 100000 not in range 0 to 1024"));
  EXPECT_FALSE(DefaultFileSystem()->Exists(img));
  EXPECT_TRUE(TempFilesIn(dir).empty());
  ASSERT_EQ(RunCmd(kStasis + " snapshot " + src + " -o " + img + " --threads 3", dir).exit_code, 0);
  for (const std::string& cmd :
       {"verify " + img + " --threads 100000", "restore " + img + " --threads 100000",
        "export " + img + " -o " + dir.File("o.safetensors") + " --threads -1",
        "bench " + src + " --threads 5000", "serve " + img + " --threads 100000",
        "serve " + img + " --port 70000", "serve " + img + " --max-concurrency 100000",
        "coldstart --mode stasis " + img + " --threads 100000"}) {
    r = RunCmd(kStasis + " " + cmd, dir);
    EXPECT_EQ(r.exit_code, 1) << cmd << ": " << r.err;
    EXPECT_THAT(r.err, ::testing::AnyOf(HasSubstr("not in range"), HasSubstr("is above"))) << cmd;
  }
  EXPECT_FALSE(DefaultFileSystem()->Exists(dir.File("o.safetensors")));
}

}  // namespace
}  // namespace stasis
