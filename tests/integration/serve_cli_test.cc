// `stasis serve` end to end: the real binary serving a real TorchScript image on loopback,
// driven by a real HTTP client through cold → warm → idle unload → cold again, with every
// output compared bit for bit with the original module's (run through the torch plugin in
// this process). Also the two ways the process ends: SIGTERM drains, --on-idle exit.
#include <fcntl.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "stasis/torch_plugin.h"
#include "tests/testutil/serve_process.h"
#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using Json = nlohmann::json;
using ::testing::HasSubstr;
using testing::TempDir;

const std::string kStasis = STASIS_BIN;
const std::string kGen = STASIS_GENMODEL_BIN;

using testing::ServeProcess;  // tests/testutil/serve_process.h

class ServeCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    model_ = dir_->File("tiny.pt");
    image_ = dir_->File("tiny.stasis");
    auto gen = testing::RunCommand(
        kGen + " --format torchscript --preset tiny --seed 3 -o " + model_, *dir_);
    ASSERT_EQ(gen.exit_code, 0) << gen.err;
    auto snap = testing::RunCommand(kStasis + " snapshot " + model_ + " -o " + image_, *dir_);
    ASSERT_EQ(snap.exit_code, 0) << snap.err;
    // The expected output: the original module, loaded the ordinary way.
    ::setenv("STASIS_TORCH_PLUGIN", STASIS_TORCH_PLUGIN_PATH, /*overwrite=*/0);
    auto plugin = torch::LoadTorchPlugin();
    ASSERT_OK(plugin.status());
    auto module = (*plugin)->LoadModule(model_);
    ASSERT_OK(module.status());
    std::mt19937_64 rng(testing::TestSeed());
    input_ = {"input_ids", DType::kI64, {1, 32}, std::string(32 * 8, '\0')};
    tokens_ = new std::vector<int64_t>(32);
    for (int i = 0; i < 32; ++i) (*tokens_)[i] = static_cast<int64_t>(rng() % 1000);
    std::memcpy(input_.bytes.data(), tokens_->data(), 32 * 8);
    auto out = (*module)->Forward({input_});
    ASSERT_OK(out.status());
    ASSERT_EQ(out->size(), 1u);
    expected_ = (*out)[0];
  }
  static void TearDownTestSuite() {
    delete tokens_;
    delete dir_;
  }

  // POST /v1/infer with a JSON body; returns the response JSON and checks the output.
  static Json InferJson(httplib::Client& client) {
    Json body = {
        {"inputs",
         {{{"name", "input_ids"}, {"dtype", "I64"}, {"shape", {1, 32}}, {"data", *tokens_}}}}};
    auto res = client.Post("/v1/infer", body.dump(), "application/json");
    EXPECT_TRUE(res) << "no response";
    if (!res) return {};
    EXPECT_EQ(res->status, 200) << res->body;
    Json j = Json::parse(res->body, nullptr, false);
    EXPECT_TRUE(j.is_object()) << res->body;
    if (!j.is_object() || !j.contains("outputs")) return j;
    const Json& o = j["outputs"][0];
    EXPECT_EQ(o["dtype"], "F32");
    EXPECT_EQ(o["shape"], Json(expected_.shape));
    std::vector<float> got = o["data"].get<std::vector<float>>();
    EXPECT_EQ(got.size() * 4, expected_.bytes.size());
    if (got.size() * 4 == expected_.bytes.size()) {
      EXPECT_EQ(0, std::memcmp(got.data(), expected_.bytes.data(), expected_.bytes.size()))
          << "outputs differ from the original module's";
    }
    return j;
  }

  static Json Status(httplib::Client& client) {
    auto res = client.Get("/v1/status");
    EXPECT_TRUE(res && res->status == 200);
    return res ? Json::parse(res->body, nullptr, false) : Json();
  }

  static TempDir* dir_;
  static std::string model_, image_;
  static TensorData input_, expected_;
  static std::vector<int64_t>* tokens_;
};

TempDir* ServeCliTest::dir_ = nullptr;
std::string ServeCliTest::model_, ServeCliTest::image_;
TensorData ServeCliTest::input_, ServeCliTest::expected_;
std::vector<int64_t>* ServeCliTest::tokens_ = nullptr;

// Red-team L6: SIGHUP (a closed terminal) used to end the server at once (exit 129); it
// takes SIGTERM's path now: drain, release the model, exit 0.
TEST_F(ServeCliTest, SighupDrainsLikeSigterm) {
  ServeProcess serve(kStasis, {image_, "--port", "0"}, dir_->File("serve-hup.log"));
  const int port = serve.WaitForPort();
  ASSERT_GT(port, 0) << serve.log();
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(60, 0);
  EXPECT_EQ(InferJson(client)["cold"], true);
  serve.Signal(SIGHUP);
  EXPECT_EQ(serve.WaitForExit(20), 0) << serve.log();
  EXPECT_THAT(serve.log(), HasSubstr("Hangup: draining in-flight requests"));
}

TEST_F(ServeCliTest, ColdWarmIdleUnloadColdAgainThenSigtermDrains) {
  ServeProcess serve(kStasis,
                     {image_, "--port", "0", "--idle-timeout", "1s", "--log-format", "json"},
                     dir_->File("serve1.log"));
  const int port = serve.WaitForPort();
  ASSERT_GT(port, 0) << serve.log();
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(60, 0);
  EXPECT_EQ(Status(client)["state"], "cold");

  Json first = InferJson(client);
  EXPECT_EQ(first["cold"], true);
  Json second = InferJson(client);
  EXPECT_EQ(second["cold"], false);
  Json st = Status(client);
  EXPECT_EQ(st["state"], "warm");
  EXPECT_EQ(st["cold_starts"], 1);

  // The idle timeout unloads the model (polled, bounded).
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (Status(client)["state"] != "cold" && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  st = Status(client);
  EXPECT_EQ(st["state"], "cold");
  EXPECT_EQ(st["device_bytes"], 0);

  Json third = InferJson(client);
  EXPECT_EQ(third["cold"], true);
  EXPECT_EQ(Status(client)["cold_starts"], 2);

  auto metrics = client.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_THAT(metrics->body, HasSubstr("stasis_cold_starts_total 2"));

  serve.Signal(SIGTERM);
  EXPECT_EQ(serve.WaitForExit(20), 0) << serve.log();
  // JSON log lines: every line parses.
  std::string log = serve.log();
  size_t lines = 0;
  for (size_t start = 0; start < log.size();) {
    size_t end = log.find('\n', start);
    if (end == std::string::npos) end = log.size();
    std::string line = log.substr(start, end - start);
    if (!line.empty()) {
      ++lines;
      EXPECT_FALSE(Json::parse(line, nullptr, false).is_discarded()) << line;
    }
    start = end + 1;
  }
  EXPECT_GT(lines, 3u);
}

TEST_F(ServeCliTest, OnIdleExitEndsTheProcessCleanly) {
  ServeProcess serve(
      kStasis, {image_, "--port", "0", "--warmup", "--idle-timeout", "300ms", "--on-idle", "exit"},
      dir_->File("serve2.log"));
  ASSERT_GT(serve.WaitForPort(), 0) << serve.log();
  EXPECT_EQ(serve.WaitForExit(30), 0) << serve.log();
}

TEST_F(ServeCliTest, BadStartupArgumentsAreClearErrors) {
  auto r = testing::RunCommand(kStasis + " serve " + image_ + " --idle-timeout soon", *dir_);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("idle-timeout"));
  for (const char* backoff : {"0", "0s", "later"}) {
    r = testing::RunCommand(kStasis + " serve " + image_ + " --retry-backoff " + backoff, *dir_);
    EXPECT_EQ(r.exit_code, 2) << backoff;
    EXPECT_THAT(r.err, HasSubstr("--retry-backoff")) << backoff;
  }
  r = testing::RunCommand(kStasis + " serve " + dir_->File("missing.stasis"), *dir_);
  EXPECT_EQ(r.exit_code, 2);
  r = testing::RunCommand(kStasis + " serve " + image_ + " --token-file " + dir_->File("no-token"),
                          *dir_);
  EXPECT_EQ(r.exit_code, 2);
}

// Red-team H4: a second `stasis serve` on a taken port used to start (SO_REUSEPORT) and
// take half the traffic; it exits non-zero now, saying why, and the first keeps serving.
TEST_F(ServeCliTest, ASecondServerOnATakenPortExitsNonZero) {
  ServeProcess first(kStasis, {image_, "--port", "0"}, dir_->File("serve-first.log"));
  const int port = first.WaitForPort();
  ASSERT_GT(port, 0) << first.log();
  // Bounded: were the bug back, the second server would serve until killed.
  auto second = testing::RunCommand(
      "timeout -s KILL 30 " + kStasis + " serve " + image_ + " --port " + std::to_string(port),
      *dir_);
  EXPECT_NE(second.exit_code, 0);
  EXPECT_NE(second.exit_code, 137) << "the second server was still running after 30 s";
  EXPECT_THAT(second.err, HasSubstr(std::to_string(port)));
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(60, 0);
  EXPECT_EQ(InferJson(client)["cold"], true);
  EXPECT_FALSE(first.HasExited()) << first.log();
}

TEST_F(ServeCliTest, AnImageWithoutAModuleIsAClearErrorPerRequest) {
  // An image made from safetensors holds tensors, not a TorchScript module: the server
  // starts, and each request says what is wrong instead of serving or crashing.
  const std::string weights = dir_->File("weights.safetensors");
  const std::string image = dir_->File("weights.stasis");
  auto gen = testing::RunCommand(kGen + " --preset tiny --seed 5 -o " + weights, *dir_);
  ASSERT_EQ(gen.exit_code, 0) << gen.err;
  auto snap = testing::RunCommand(kStasis + " snapshot " + weights + " -o " + image, *dir_);
  ASSERT_EQ(snap.exit_code, 0) << snap.err;
  ServeProcess serve(kStasis, {image, "--port", "0"}, dir_->File("serve3.log"));
  const int port = serve.WaitForPort();
  ASSERT_GT(port, 0) << serve.log();
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(60, 0);
  Json body = {
      {"inputs",
       Json::array({{{"name", "input_ids"}, {"dtype", "I64"}, {"shape", {1, 1}}, {"data", {1}}}})}};
  auto res = client.Post("/v1/infer", body.dump(), "application/json");
  ASSERT_TRUE(res);
  // A restore that fails is the server's trouble (M3 of issue 16): 503, the cause named.
  EXPECT_EQ(res->status, 503) << res->body;
  EXPECT_THAT(res->body, HasSubstr("no TorchScript skeleton"));
  EXPECT_THAT(res->body, HasSubstr("model.pt"));
  serve.Signal(SIGTERM);
  EXPECT_EQ(serve.WaitForExit(20), 0) << serve.log();
}

}  // namespace
}  // namespace stasis
