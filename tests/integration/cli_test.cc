// The stasis CLI end to end, as a user runs it: real files, the real binaries, exit codes.
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "snapshot/safetensors.h"
#include "stasis/file_system.h"
#include "tests/testutil/test_util.h"

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

}  // namespace
}  // namespace stasis
