// TorchScript end to end through the real binaries: generate a module, snapshot it, and
// compare a cold start of the ordinary path with a cold start of the stasis path, each in
// its own process. Also: the commands that need no framework never load libtorch.
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing::TempDir;
using Json = nlohmann::json;

const std::string kStasis = STASIS_BIN;
const std::string kGen = STASIS_GENMODEL_BIN;

testing::CommandResult Sh(const std::string& cmd, const TempDir& dir) {
  return testing::RunCommand(cmd, dir);
}

class TorchCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    model_ = dir_->File("gpt2-tiny-mixed.pt");
    image_ = dir_->File("gpt2-tiny-mixed.stasis");
    auto gen =
        Sh(kGen + " --format torchscript --preset tiny --mixed --seed 7 -o " + model_, *dir_);
    ASSERT_EQ(gen.exit_code, 0) << gen.err;
    ASSERT_THAT(gen.out, HasSubstr("input spec for this model: "));
    spec_ = gen.out.substr(gen.out.find("input spec for this model: ") + 27);
    spec_ = spec_.substr(0, spec_.find('\n'));
    auto snap = Sh(
        kStasis + " snapshot " + model_ + " -o " + image_ + " --warmup-input " + spec_ + " --json",
        *dir_);
    ASSERT_EQ(snap.exit_code, 0) << snap.err;
    snapshot_report_ = new Json(Json::parse(snap.out));
  }
  static void TearDownTestSuite() {
    delete snapshot_report_;
    delete dir_;
  }

  static Json ColdStart(const std::string& mode, const std::string& path,
                        const std::string& extra = "") {
    auto r =
        Sh(kStasis + " coldstart --mode " + mode + " " + path + " --input " + spec_ + extra, *dir_);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    Json j = Json::parse(r.out, nullptr, false);
    EXPECT_TRUE(j.is_object()) << r.out;
    return j;
  }

  static TempDir* dir_;
  static std::string model_, image_, spec_;
  static Json* snapshot_report_;
};

TempDir* TorchCliTest::dir_ = nullptr;
std::string TorchCliTest::model_, TorchCliTest::image_, TorchCliTest::spec_;
Json* TorchCliTest::snapshot_report_ = nullptr;

TEST_F(TorchCliTest, SnapshotStoresAliasedWeightsOnce) {
  const Json& r = *snapshot_report_;
  EXPECT_GT(r["parameters"].get<int>(), 20);
  EXPECT_GE(r["buffers"].get<int>(), 1);  // position_ids
  // The tied head shares the embedding's storage: fewer storages than tensors, and fewer
  // bytes stored than the tensors span when each is counted on its own.
  EXPECT_LT(r["storages"].get<int>(), r["parameters"].get<int>() + r["buffers"].get<int>());
  EXPECT_LT(r["stored_bytes"].get<uint64_t>(), r["tensor_bytes"].get<uint64_t>());
  EXPECT_GT(r["skeleton_bytes"].get<uint64_t>(), 0u);

  auto inspect = Sh(kStasis + " inspect " + image_ + " --json", *dir_);
  ASSERT_EQ(inspect.exit_code, 0) << inspect.err;
  EXPECT_THAT(inspect.out, HasSubstr("torch.skeleton"));
  EXPECT_THAT(inspect.out, HasSubstr("torchscript"));
  EXPECT_THAT(inspect.out, HasSubstr(spec_));
  auto verify = Sh(kStasis + " verify " + image_, *dir_);
  EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
}

TEST_F(TorchCliTest, RestoredModuleGivesBitwiseTheSameOutputInAnotherProcess) {
  Json base = ColdStart("baseline", model_);
  Json fast = ColdStart("stasis", image_);
  ASSERT_TRUE(base.contains("output") && fast.contains("output"));
  EXPECT_EQ(base["output"]["xxh3"], fast["output"]["xxh3"]);
  EXPECT_EQ(base["output"]["shape"], fast["output"]["shape"]);
  EXPECT_EQ(base["output"]["dtype"], "F32");
  // Restoring at idle I/O priority while libtorch loads computes the same.
  Json yielding = ColdStart("stasis", image_, " --yield-io");
  EXPECT_EQ(yielding["output"]["xxh3"], base["output"]["xxh3"]);
  // The same weights on both paths (counted by the bytes the tensors span, not by storages,
  // which on the stasis path are whole regions).
  EXPECT_EQ(fast["weight_bytes"].get<uint64_t>(), base["weight_bytes"].get<uint64_t>());
  // No weight came from the framework: the skeleton held none, every one was bound.
  EXPECT_EQ(fast["bind"]["nonempty_before_binding"].get<int>(), 0);
  EXPECT_EQ(
      fast["bind"]["parameters_bound"].get<int>() + fast["bind"]["buffers_bound"].get<int>(),
      (*snapshot_report_)["parameters"].get<int>() + (*snapshot_report_)["buffers"].get<int>());
  // Each stored byte was read once.
  auto inspect = Json::parse(Sh(kStasis + " inspect " + image_ + " --json", *dir_).out);
  EXPECT_EQ(fast["restore"]["stored_bytes"], inspect["stored_bytes"]);
  // The restore report has the keys of `stasis restore --json` (restore/report_json.h).
  auto restored = Json::parse(Sh(kStasis + " restore " + image_ + " --json", *dir_).out);
  for (const auto& [key, value] : restored.items()) {
    if (key == "digest") continue;  // --digest only
    EXPECT_TRUE(fast["restore"].contains(key)) << key;
  }
  EXPECT_EQ(fast["restore"]["io"].size(), restored["io"].size());
  // Phases are ordered in time and the process is ready before its first result.
  for (const Json* j : {&base, &fast}) {
    for (const auto& ph : (*j)["phases"]) EXPECT_LE(ph["start"], ph["end"]) << ph.dump();
    EXPECT_LT((*j)["ready"].get<double>(), (*j)["first_result"].get<double>());
  }
}

TEST_F(TorchCliTest, BenchComparesBothPathsAndDrawsThem) {
  const std::string out = dir_->File("bench");
  auto r =
      Sh(kStasis + " bench " + model_ + " --image " + image_ + " --runs 1 --out " + out, *dir_);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("time to ready:"));
  EXPECT_THAT(r.out, HasSubstr("outputs identical across paths and runs: yes"));
  Json j = Json::parse(testing::ReadFile(out + "/bench.json"));
  EXPECT_TRUE(j["outputs_identical"].get<bool>());
  const Json& hot = j["results"]["hot"];
  EXPECT_GT(hot["ready_speedup"].get<double>(), 0);
  EXPECT_GT(hot["baseline"]["max_rss_mb"].get<double>(), 1);
  EXPECT_EQ(hot["baseline"]["runs"].size(), 1u);
  EXPECT_EQ(hot["stasis"]["runs"].size(), 1u);
  std::string svg = testing::ReadFile(out + "/bench.svg");
  EXPECT_THAT(svg, HasSubstr("<svg"));
  EXPECT_THAT(svg, HasSubstr("first inference"));
  EXPECT_THAT(svg, HasSubstr("skeleton load"));

  // A missing image is snapshotted first, in a child process of its own (its device memory
  // must not stay with the parent while the cold starts run).
  const std::string fresh = dir_->File("fresh.stasis");
  r = Sh(kStasis + " bench " + model_ + " --image " + fresh + " --input " + spec_ +
             " --runs 1 --out " + out + "2",
         *dir_);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.err, HasSubstr("bench: snapshotting"));
  EXPECT_TRUE(std::filesystem::exists(fresh));
  EXPECT_THAT(r.out, HasSubstr("outputs identical across paths and runs: yes"));
}

TEST_F(TorchCliTest, BenchOfASafetensorsCheckpointComparesTensorLoads) {
  const std::string st = dir_->File("bench-tiny.safetensors");
  auto gen = Sh(kGen + " --preset tiny --dtype bf16 -o " + st, *dir_);
  ASSERT_EQ(gen.exit_code, 0) << gen.err;
  const std::string out = dir_->File("bench-st");
  auto r = Sh(kStasis + " bench " + st + " --runs 1 --out " + out, *dir_);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("outputs identical across paths and runs: yes"));
  EXPECT_THAT(r.out, HasSubstr("first result (checksum)"));
  Json j = Json::parse(testing::ReadFile(out + "/bench.json"));
  EXPECT_TRUE(j["outputs_identical"].get<bool>());
  const Json& stasis_run = j["results"]["hot"]["stasis"]["runs"][0];
  EXPECT_EQ(stasis_run["weight_bytes"], j["results"]["hot"]["baseline"]["runs"][0]["weight_bytes"]);
}

TEST_F(TorchCliTest, CommandsWithoutAFrameworkNeverLoadLibtorch) {
  // LD_DEBUG=files makes the dynamic linker name every object it loads.
  auto restore = Sh("LD_DEBUG=files " + kStasis + " restore " + image_, *dir_);
  ASSERT_EQ(restore.exit_code, 0) << restore.err;
  EXPECT_THAT(restore.err, Not(HasSubstr("libtorch")));
  auto version = Sh("LD_DEBUG=files " + kStasis + " --version", *dir_);
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_THAT(version.err, Not(HasSubstr("libtorch")));
  // The control: a command that needs it does load it.
  auto base =
      Sh("LD_DEBUG=files " + kStasis + " coldstart --mode baseline " + model_ + " --input " + spec_,
         *dir_);
  EXPECT_EQ(base.exit_code, 0);
  EXPECT_THAT(base.err, HasSubstr("libtorch"));
}

TEST_F(TorchCliTest, BadInputsGetClearErrors) {
  // A zip that is not TorchScript.
  const std::string zip = dir_->File("not-a-module.pt");
  testing::WriteFile(zip, std::string("PK\x03\x04", 4) + std::string(200, 'x'));
  auto r = Sh(kStasis + " snapshot " + zip + " -o " + dir_->File("x.stasis"), *dir_);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("not a TorchScript"));
  EXPECT_FALSE(std::ifstream(dir_->File("x.stasis")).good());

  // An image without a skeleton (made from safetensors) on the TorchScript path.
  const std::string st = dir_->File("plain.safetensors");
  auto gen = Sh(kGen + " --preset tiny -o " + st, *dir_);
  ASSERT_EQ(gen.exit_code, 0) << gen.err;
  const std::string plain = dir_->File("plain.stasis");
  ASSERT_EQ(Sh(kStasis + " snapshot " + st + " -o " + plain, *dir_).exit_code, 0);
  r = Sh(kStasis + " coldstart --mode stasis " + plain + " --input " + spec_, *dir_);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("skeleton"));

  // bench refuses what is neither TorchScript nor safetensors.
  const std::string junk = dir_->File("junk.bin");
  testing::WriteFile(junk, std::string(100, 'j'));
  r = Sh(kStasis + " bench " + junk + " --runs 1 --out " + dir_->File("b2"), *dir_);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("neither a TorchScript archive nor a safetensors file"));

  // --device on a safetensors input.
  r = Sh(kStasis + " snapshot " + st + " -o " + dir_->File("y.stasis") + " --device cuda", *dir_);
  EXPECT_EQ(r.exit_code, 2) << r.err;

  // A device that does not exist.
  r = Sh(kStasis + " snapshot " + model_ + " -o " + dir_->File("z.stasis") + " --device cuda:7",
         *dir_);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("cuda"));
  EXPECT_FALSE(std::ifstream(dir_->File("z.stasis")).good());

  // A corrupted skeleton section: its checksum catches it.
  std::string bytes = testing::ReadFile(image_);
  Json inspect = Json::parse(Sh(kStasis + " inspect " + image_ + " --json", *dir_).out);
  uint64_t offset = 0;
  for (const auto& s : inspect["sections"])
    if (s["name"] == "torch.skeleton") offset = s["file_offset"].get<uint64_t>();
  ASSERT_GT(offset, 0u) << inspect.dump();
  bytes[offset + 100] ^= 0x40;
  const std::string bad = dir_->File("bad-skeleton.stasis");
  testing::WriteFile(bad, bytes);
  r = Sh(kStasis + " coldstart --mode stasis " + bad + " --input " + spec_, *dir_);
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_THAT(r.err, HasSubstr("torch.skeleton"));
}

}  // namespace
}  // namespace stasis
