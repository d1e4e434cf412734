// H1 and M1 of issue 16 end to end: `stasis serve` on a real TorchScript image whose raw
// chunks are mapped from the page cache, while the image file changes under it. The
// red-team reproduction: `cp` another image over it in place must never change a 200
// answer (the same bytes, or a clear 5xx), and `truncate -s 4096` must not kill the server
// (it was SIGBUS). Then, unloaded and failing on the truncated image, the server recovers
// once a good image is renamed onto the path (Reload reopens the path).
#include <fcntl.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "tests/testutil/serve_process.h"
#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using Json = nlohmann::json;
using testing::TempDir;

const std::string kStasis = STASIS_BIN;
const std::string kGen = STASIS_GENMODEL_BIN;

using testing::ServeProcess;  // tests/testutil/serve_process.h

class ServeImageChangeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Two models of one architecture, different weights; raw chunks of whole pages (the
    // map route; the tiny preset in one 4 MiB chunk would not be whole pages).
    for (int seed : {5, 6}) {
      const std::string pt = dir_.File("m" + std::to_string(seed) + ".pt");
      auto gen = testing::RunCommand(
          kGen + " --format torchscript --preset tiny --seed " + std::to_string(seed) + " -o " + pt,
          dir_);
      if (gen.exit_code != 0 && gen.err.find("torch") != std::string::npos)
        GTEST_SKIP() << "no libtorch here: " << gen.err;
      ASSERT_EQ(gen.exit_code, 0) << gen.err;
      auto snap = testing::RunCommand(
          kStasis + " snapshot " + pt + " -o " + Image(seed) + " --codec raw --chunk-size 64KiB",
          dir_);
      ASSERT_EQ(snap.exit_code, 0) << snap.err;
    }
  }
  std::string Image(int seed) const { return dir_.File("m" + std::to_string(seed) + ".stasis"); }
  std::string Live() const { return dir_.File("live.stasis"); }

  static httplib::Result Infer(httplib::Client& client) {
    std::vector<int64_t> tokens(16);
    for (int i = 0; i < 16; ++i) tokens[i] = i;
    Json body = {
        {"inputs",
         {{{"name", "input_ids"}, {"dtype", "I64"}, {"shape", {1, 16}}, {"data", tokens}}}}};
    return client.Post("/v1/infer", body.dump(), "application/json");
  }

  // The outputs of a 200 answer, or null for any other.
  static Json Outputs(const httplib::Result& res) {
    if (!res || res->status != 200) return nullptr;
    Json j = Json::parse(res->body, nullptr, false);
    return j.is_object() && j.contains("outputs") ? j["outputs"] : Json();
  }

  // A changed 200 is the one answer that must never come; any 5xx is acceptable.
  static void ExpectSameOrServerError(const httplib::Result& res, const Json& expected,
                                      const std::string& when) {
    ASSERT_TRUE(res) << when << ": no answer (the server died?)";
    if (res->status == 200) {
      EXPECT_EQ(Outputs(res), expected) << when << ": a 200 answer with changed outputs";
    } else {
      EXPECT_GE(res->status, 500) << when << ": " << res->body;
    }
  }

  TempDir dir_;
};

TEST_F(ServeImageChangeTest, InPlaceCopyAndTruncationNeverChangeAnAnswerOrKillTheServer) {
  auto cp = testing::RunCommand(
      "cp " + Image(5) + " " + Live() + " && cat " + Live() + " >/dev/null", dir_);
  ASSERT_EQ(cp.exit_code, 0) << cp.err;
  ServeProcess serve(kStasis, {Live(), "--port", "0"}, dir_.File("serve.log"));
  const int port = serve.WaitForPort();
  ASSERT_GT(port, 0) << serve.log();
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(60, 0);

  httplib::Result first = Infer(client);
  ASSERT_TRUE(first);
  ASSERT_EQ(first->status, 200) << first->body;
  const Json a = Outputs(first);
  ASSERT_TRUE(a.is_array()) << first->body;
  auto status = client.Get("/v1/status");
  ASSERT_TRUE(status && status->status == 200);
  const Json st = Json::parse(status->body);
  ASSERT_GT(st["last_restore"]["chunks_mapped"].get<int>(), 0)
      << "the map route was not taken, so this tests nothing: " << st["last_restore"].dump();
  EXPECT_EQ(st["last_restore"]["map_reason"], "mapped under a read lease");

  // The other model's image, written in place (cp opens with O_TRUNC): cp waits while the
  // server copies the mapped chunks out, then writes.
  auto over = testing::RunCommand("cp " + Image(6) + " " + Live(), dir_);
  ASSERT_EQ(over.exit_code, 0) << over.err;
  ASSERT_EQ(testing::ReadFile(Live()), testing::ReadFile(Image(6)));
  ExpectSameOrServerError(Infer(client), a, "after cp");
  ExpectSameOrServerError(Infer(client), a, "after cp, again");

  auto cut = testing::RunCommand("truncate -s 4096 " + Live(), dir_);
  ASSERT_EQ(cut.exit_code, 0) << cut.err;
  ExpectSameOrServerError(Infer(client), a, "after truncate");
  EXPECT_FALSE(serve.HasExited()) << "killed by signal " << serve.term_signal() << "\n"
                                  << serve.log();

  // Unloaded, the truncated image cannot be restored: errors, never a crash or a 200.
  auto unload = client.Post("/v1/unload", "", "application/json");
  ASSERT_TRUE(unload) << serve.log();
  httplib::Result broken = Infer(client);
  ASSERT_TRUE(broken) << serve.log();
  EXPECT_NE(broken->status, 200) << broken->body;
  EXPECT_FALSE(serve.HasExited()) << serve.log();

  // A good image renamed onto the path: the next request restores it (Reload reopens).
  auto mv = testing::RunCommand(
      "cp " + Image(5) + " " + Live() + ".new && mv " + Live() + ".new " + Live(), dir_);
  ASSERT_EQ(mv.exit_code, 0) << mv.err;
  httplib::Result back = Infer(client);
  ASSERT_TRUE(back) << serve.log();
  EXPECT_EQ(back->status, 200) << back->body;
  EXPECT_EQ(Outputs(back), a) << "the original model's answers again";
  EXPECT_FALSE(serve.HasExited()) << serve.log();
}

}  // namespace
}  // namespace stasis
