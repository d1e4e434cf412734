// The HTTP server of `stasis serve` end to end: a real Server on a loopback ephemeral port,
// real httplib clients, a real Lifecycle over a fake model (output = input * 2 for F32 and
// I64, echo for the other dtypes) and a ManualClock, so latencies and timeouts are exact.
#include "runtime/server.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/logging.h"
#include "runtime/lifecycle.h"
#include "runtime/metrics.h"
#include "runtime/model_host.h"
#include "snapshot/safetensors.h"
#include "tests/testutil/gate.h"
#include "tests/testutil/test_util.h"

namespace stasis::runtime {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr int64_t kLoadNs = 2'000'000'000;  // the fake restore takes 2 s of manual time

using testing::Gate;

// Bounded polling for conditions the server reaches on its own threads.
template <typename F>
bool Eventually(F f) {
  for (int i = 0; i < 2000; ++i) {
    if (f()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

class FakeModelHost final : public ModelHost {
 public:
  explicit FakeModelHost(ManualClock* clock) : clock_(clock) {}

  Status Load(RestoreReport* report) override {
    ++loads;
    load_gate.Pass();
    if (fail_loads.load() > 0) {
      --fail_loads;
      return UnavailableError("fake device busy");
    }
    clock_->Advance(kLoadNs);
    report->image = "fake.stasis";
    report->phases.open = 0.01;
    report->phases.plan = 0.02;
    report->phases.map = 0.03;
    report->phases.read = 0.2;
    report->phases.verify = 0.05;
    report->phases.decompress = 0.1;
    report->phases.copy = 0.04;
    report->phases.total = 0.5;
    report->raw_bytes = 1ull << 30;
    report->stored_bytes = 1ull << 29;
    loaded_ = true;
    return OkStatus();
  }
  Status Unload() override {
    ++unloads;
    unload_gate.Pass();
    loaded_ = false;
    return OkStatus();
  }
  StatusOr<std::vector<TensorData>> Infer(const std::vector<TensorData>& inputs) override {
    ++infers;
    infer_gate.Pass();
    clock_->Advance(infer_ns.load());
    if (arity >= 0 && static_cast<int>(inputs.size()) != arity) {
      return InvalidArgumentError("forward() expected " + std::to_string(arity) +
                                  " input(s), got " + std::to_string(inputs.size()));
    }
    std::vector<TensorData> out;
    for (size_t i = 0; i < inputs.size(); ++i) {
      TensorData t = inputs[i];
      t.name = inputs.size() == 1 ? "output" : "output." + std::to_string(i);
      if (t.dtype == DType::kU64) return InvalidArgumentError("forward(): U64 is not supported");
      if (t.dtype == DType::kF32) {
        for (size_t k = 0; k + 4 <= t.bytes.size(); k += 4) {
          float f;
          std::memcpy(&f, t.bytes.data() + k, 4);
          f *= 2;
          std::memcpy(t.bytes.data() + k, &f, 4);
        }
      } else if (t.dtype == DType::kI64) {
        for (size_t k = 0; k + 8 <= t.bytes.size(); k += 8) {
          int64_t v;
          std::memcpy(&v, t.bytes.data() + k, 8);
          v *= 2;
          std::memcpy(t.bytes.data() + k, &v, 8);
        }
      }
      out.push_back(std::move(t));
    }
    return out;
  }
  uint64_t DeviceBytes() const override { return loaded_ ? 4096 : 0; }
  std::string Describe() const override { return "fake model"; }

  std::atomic<int> loads{0}, unloads{0}, infers{0}, fail_loads{0};
  std::atomic<int64_t> infer_ns{0};
  int arity = 1;  // -1: any
  Gate load_gate, infer_gate, unload_gate;

 private:
  ManualClock* clock_;
  std::atomic<bool> loaded_{false};
};

json F32Input(const std::string& name, const std::vector<float>& data,
              std::vector<int64_t> shape = {}) {
  if (shape.empty()) shape = {static_cast<int64_t>(data.size())};
  return json{{"name", name}, {"dtype", "F32"}, {"shape", shape}, {"data", data}};
}

std::string InferBody(std::vector<json> inputs) { return json{{"inputs", inputs}}.dump(); }

json BodyOf(const httplib::Result& r) {
  if (!r) return json();
  return json::parse(r->body, nullptr, /*allow_exceptions=*/false);
}

// A safetensors file from (name, dtype, shape, bytes).
std::string Safetensors(const std::vector<TensorData>& tensors,
                        const std::vector<std::pair<std::string, std::string>>& metadata = {}) {
  std::vector<SafetensorsTensorOut> out;
  for (const auto& t : tensors) {
    out.push_back({t.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size()});
  }
  auto header = EncodeSafetensorsHeader(out, metadata);
  EXPECT_OK(header);
  std::string s = header.ok() ? *header : "";
  for (const auto& t : tensors) s += t.bytes;
  return s;
}

template <typename T>
TensorData Tensor(const std::string& name, DType dtype, std::vector<int64_t> shape,
                  const std::vector<T>& values) {
  TensorData t;
  t.name = name;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.bytes.assign(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
  return t;
}

template <typename T>
std::vector<T> Values(const std::string& bytes) {
  std::vector<T> v(bytes.size() / sizeof(T));
  std::memcpy(v.data(), bytes.data(), v.size() * sizeof(T));
  return v;
}

std::vector<TensorData> ParseSafetensorsOrDie(const std::string& body,
                                              SafetensorsHeader* header_out = nullptr) {
  std::vector<TensorData> out;
  if (body.size() < 8) {
    ADD_FAILURE() << "short safetensors body";
    return out;
  }
  uint64_t n = 0;
  std::memcpy(&n, body.data(), 8);
  auto header = ParseSafetensorsHeader(std::string_view(body).substr(8, n), body.size());
  EXPECT_OK(header);
  if (!header.ok()) return out;
  for (const auto& e : header->entries) {
    TensorData t;
    t.name = e.name;
    t.dtype = e.dtype;
    t.shape = e.shape;
    t.bytes = body.substr(header->data_start + e.begin, e.end - e.begin);
    out.push_back(std::move(t));
  }
  if (header_out != nullptr) *header_out = *header;
  return out;
}

class ServerTest : public ::testing::Test {
 protected:
  void StartServer(ServerOptions options = {}) {
    host_ = std::make_unique<FakeModelHost>(&clock_);
    LifecycleOptions lo;
    lo.idle_timeout_ns = -1;
    lifecycle_ =
        std::make_unique<Lifecycle>(host_.get(), &clock_, lo, nullptr, NewStateListener(&metrics_));
    options.port = 0;
    options.model = "fake model";
    auto server = Server::Start(lifecycle_.get(), &metrics_, &clock_, options);
    ASSERT_OK(server);
    server_ = std::move(server).value();
    ASSERT_GT(server_->port(), 0);
    token_ = options.token;
  }

  void TearDown() override {
    if (host_) {
      host_->load_gate.Open();
      host_->infer_gate.Open();
      host_->unload_gate.Open();
    }
    server_.reset();
    lifecycle_.reset();
  }

  std::unique_ptr<httplib::Client> NewClient() const {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", server_->port());
    c->set_read_timeout(std::chrono::seconds(30));
    c->set_connection_timeout(std::chrono::seconds(5));
    return c;
  }
  httplib::Headers AuthHeaders() const {
    if (token_.empty()) return {};
    return {{"Authorization", "Bearer " + token_}};
  }
  httplib::Result Post(const std::string& path, const std::string& body,
                       const std::string& content_type = "application/json",
                       httplib::Headers extra = {}) const {
    httplib::Headers h = AuthHeaders();
    h.insert(extra.begin(), extra.end());
    return NewClient()->Post(path.c_str(), h, body, content_type.c_str());
  }
  httplib::Result Get(const std::string& path, httplib::Headers extra = {}) const {
    httplib::Headers h = AuthHeaders();
    h.insert(extra.begin(), extra.end());
    return NewClient()->Get(path.c_str(), h);
  }
  httplib::Result Infer(std::vector<json> inputs) const {
    return Post("/v1/infer", InferBody(std::move(inputs)));
  }
  json Status() const { return BodyOf(Get("/v1/status")); }

  // Expects a JSON error answer.
  static void ExpectError(const httplib::Result& r, int status, const std::string& code,
                          const std::string& what) {
    ASSERT_TRUE(r) << what << ": no response (" << httplib::to_string(r.error()) << ")";
    EXPECT_EQ(r->status, status) << what << ": " << r->body;
    EXPECT_THAT(r->get_header_value("Content-Type"), HasSubstr("application/json")) << what;
    json j = BodyOf(r);
    ASSERT_TRUE(j.is_object()) << what << ": body is not JSON: " << r->body;
    ASSERT_TRUE(j.contains("error")) << what << ": " << r->body;
    EXPECT_TRUE(j["error"]["message"].is_string()) << what;
    EXPECT_FALSE(j["error"]["message"].get<std::string>().empty()) << what;
    if (!code.empty()) {
      EXPECT_EQ(j["error"]["code"], code) << what << ": " << r->body;
    }
  }

  ManualClock clock_;
  Metrics metrics_;
  std::unique_ptr<FakeModelHost> host_;
  std::unique_ptr<Lifecycle> lifecycle_;
  std::unique_ptr<Server> server_;
  std::string token_;
};

TEST_F(ServerTest, ColdThenWarmThenUnloadThenColdAgain) {
  StartServer();
  auto r = Infer({F32Input("x", {1, 2, 3.5})});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json j = BodyOf(r);
  EXPECT_EQ(j["cold"], true);
  EXPECT_DOUBLE_EQ(j["latency_ms"].get<double>(), 2000.0);  // the fake restore's 2 s
  ASSERT_EQ(j["outputs"].size(), 1u);
  EXPECT_EQ(j["outputs"][0]["name"], "output");
  EXPECT_EQ(j["outputs"][0]["dtype"], "F32");
  EXPECT_EQ(j["outputs"][0]["shape"], json::array({3}));
  EXPECT_EQ(j["outputs"][0]["data"], json::array({2.0, 4.0, 7.0}));
  EXPECT_FALSE(r->get_header_value("X-Request-Id").empty());
  EXPECT_EQ(r->get_header_value("X-Stasis-Cold"), "true");

  r = Infer(
      {{{"name", "ids"}, {"dtype", "I64"}, {"shape", {2, 2}}, {"data", {1, -2, 3, 1ll << 40}}}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  j = BodyOf(r);
  EXPECT_EQ(j["cold"], false);
  EXPECT_DOUBLE_EQ(j["latency_ms"].get<double>(), 0.0);
  EXPECT_EQ(j["outputs"][0]["dtype"], "I64");
  EXPECT_EQ(j["outputs"][0]["shape"], json::array({2, 2}));
  EXPECT_EQ(j["outputs"][0]["data"], json::array({2, -4, 6, 1ll << 41}));

  r = Post("/v1/unload", "");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(BodyOf(r)["state"], "cold");
  EXPECT_EQ(BodyOf(r)["unloaded"], true);
  EXPECT_EQ(lifecycle_->state(), ModelState::kCold);

  r = Infer({F32Input("x", {0.1f})});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  j = BodyOf(r);
  EXPECT_EQ(j["cold"], true);
  EXPECT_EQ(j["outputs"][0]["data"], json::array({0.2}));  // shortest float form
  EXPECT_EQ(host_->loads, 2);
  EXPECT_EQ(host_->unloads, 1);
  EXPECT_EQ(host_->infers, 3);
}

TEST_F(ServerTest, ARequestRacingTheUnloadWaitsAndSucceeds) {
  StartServer();
  auto r = Infer({F32Input("x", {1})});
  ASSERT_TRUE(r && r->status == 200);
  host_->unload_gate.Close();
  int unload_status = 0;
  std::thread unloader([&] {
    auto res = Post("/v1/unload", "");
    unload_status = res ? res->status : -1;
  });
  ASSERT_TRUE(host_->unload_gate.WaitArrived(1));
  EXPECT_EQ(lifecycle_->state(), ModelState::kUnloading);
  int infer_status = 0;
  json j;
  std::thread request([&] {
    auto res = Infer({F32Input("x", {3})});
    infer_status = res ? res->status : -1;
    if (res) j = BodyOf(res);
  });
  // The request is inside the server, waiting for the unload to finish.
  EXPECT_TRUE(Eventually([&] { return lifecycle_->status().waiting == 1; }));
  EXPECT_EQ(host_->loads, 1);
  host_->unload_gate.Open();
  unloader.join();
  request.join();
  EXPECT_EQ(unload_status, 200);
  ASSERT_EQ(infer_status, 200) << j.dump();
  EXPECT_EQ(j["cold"], true);
  EXPECT_EQ(j["outputs"][0]["data"], json::array({6.0}));
  EXPECT_EQ(host_->loads, 2);
  EXPECT_EQ(host_->unloads, 1);
  EXPECT_EQ(lifecycle_->state(), ModelState::kWarm);
}

TEST_F(ServerTest, ParallelClientsDuringColdStartShareOneLoad) {
  ServerOptions o;
  o.max_concurrency = 8;
  o.queue = 8;
  StartServer(o);
  constexpr int kClients = 8;
  host_->load_gate.Close();
  std::vector<std::thread> threads;
  std::vector<int> statuses(kClients, 0);
  std::vector<json> bodies(kClients);
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      auto r = Infer({F32Input("x", {static_cast<float>(i)})});
      if (r) {
        statuses[i] = r->status;
        bodies[i] = BodyOf(r);
      }
    });
  }
  ASSERT_TRUE(host_->load_gate.WaitArrived(1));
  // Everyone else waits for that restore inside the lifecycle.
  ASSERT_TRUE(Eventually([&] { return lifecycle_->status().waiting == kClients - 1; }))
      << "waiting=" << lifecycle_->status().waiting;
  EXPECT_EQ(lifecycle_->state(), ModelState::kRestoring);
  host_->load_gate.Open();
  for (auto& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) {
    EXPECT_EQ(statuses[i], 200) << i;
    EXPECT_EQ(bodies[i]["cold"], true) << i;
    EXPECT_EQ(bodies[i]["outputs"][0]["data"], json::array({2.0 * i})) << i;
  }
  EXPECT_EQ(host_->loads, 1);
  EXPECT_EQ(lifecycle_->status().cold_requests, static_cast<uint64_t>(kClients));
}

TEST_F(ServerTest, TokenIsRequiredEverywhereButHealthz) {
  ServerOptions o;
  o.token = "s3cret-token";
  StartServer(o);
  auto c = NewClient();

  auto r = c->Get("/healthz");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);

  for (const char* path : {"/v1/status", "/readyz", "/metrics"}) {
    r = c->Get(path);
    ExpectError(r, 401, "unauthenticated", path);
    EXPECT_THAT(r->get_header_value("WWW-Authenticate"), HasSubstr("Bearer"));
  }
  r = c->Post("/v1/infer", InferBody({F32Input("x", {1})}), "application/json");
  ExpectError(r, 401, "unauthenticated", "infer without token");
  r = c->Post("/v1/infer", {{"Authorization", "Bearer s3cret-tokeN"}},
              InferBody({F32Input("x", {1})}), "application/json");
  ExpectError(r, 401, "unauthenticated", "infer with a wrong token");
  r = c->Post("/v1/infer", {{"Authorization", "Basic s3cret-token"}},
              InferBody({F32Input("x", {1})}), "application/json");
  ExpectError(r, 401, "unauthenticated", "infer with another scheme");
  r = c->Post("/v1/warmup", "", "application/json");
  ExpectError(r, 401, "unauthenticated", "warmup without token");
  EXPECT_EQ(host_->loads, 0);  // nothing reached the model

  // With the token (also on a keep-alive connection that saw a 401 first).
  auto ka = NewClient();
  ka->set_keep_alive(true);
  r = ka->Post("/v1/infer", InferBody({F32Input("x", {1})}), "application/json");
  ExpectError(r, 401, "unauthenticated", "keep-alive without token");
  r = ka->Post("/v1/infer", AuthHeaders(), InferBody({F32Input("x", {1})}), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  r = ka->Post("/v1/infer", AuthHeaders(), InferBody({F32Input("x", {2})}), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(BodyOf(r)["outputs"][0]["data"], json::array({4.0}));
  r = c->Get("/v1/status", {{"Authorization", "bearer s3cret-token"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_THAT(r->body, HasSubstr(R"(stasis_request_seconds_count{outcome="client_error"} 4)"));
}

TEST_F(ServerTest, MalformedRequestsGetJsonErrorsThenAValidOneSucceeds) {
  testing::TempDir root, outside;
  testing::WriteFile(root.File("not.safetensors"), "definitely not safetensors");
  ASSERT_EQ(::mkfifo(root.File("fifo.safetensors").c_str(), 0600), 0);  // must not block a reader
  testing::WriteFile(outside.File("w.safetensors"),
                     Safetensors({Tensor<float>("a", DType::kF32, {1}, {1})}));
  ServerOptions o;
  o.max_body_bytes = 64 << 10;
  o.file_root = root.path();
  o.http_input_hosts = {"127.0.0.1"};
  StartServer(o);

  struct Case {
    std::string what, body, content_type;
    int status;
    std::string code;
  };
  const json ok_input = F32Input("x", {1, 2});
  std::vector<Case> cases = {
      {"bad json", R"({"inputs": [)", "application/json", 400, "bad_json"},
      {"deeply nested json", std::string(30000, '[') + std::string(30000, ']'), "application/json",
       400, "bad_json"},
      {"deeply nested data",
       R"({"inputs":[{"dtype":"F32","shape":[1],"data":[)" + std::string(20000, '[') +
           std::string(20000, ']') + "]}]}",
       "application/json", 400, "bad_json"},
      {"invalid UTF-8 in JSON", "{\"inputs\": [{\"name\": \"\xff\"}]}", "application/json", 400,
       "bad_json"},
      {"invalid UTF-8 echoed in the message",
       InferBody({{{"name", "x"}, {"url", "file://" + root.path() + "/%ff.safetensors"}}}),
       "application/json", 404, "not_found"},
      {"not an object", "[1, 2]", "application/json", 400, "bad_request"},
      {"no inputs", R"({"x": 1})", "application/json", 400, "bad_request"},
      {"unknown dtype",
       InferBody({{{"name", "x"}, {"dtype", "F33"}, {"shape", {1}}, {"data", {1}}}}),
       "application/json", 400, "bad_request"},
      {"dtype JSON cannot carry",
       InferBody({{{"name", "x"}, {"dtype", "F8_E4M3"}, {"shape", {1}}, {"data", {1}}}}),
       "application/json", 400, "bad_request"},
      {"shape/data mismatch",
       InferBody({{{"name", "x"}, {"dtype", "F32"}, {"shape", {2, 2}}, {"data", {1, 2, 3}}}}),
       "application/json", 400, "bad_request"},
      {"negative dimension",
       InferBody({{{"name", "x"}, {"dtype", "F32"}, {"shape", {-1}}, {"data", json::array()}}}),
       "application/json", 400, "bad_request"},
      {"missing data", InferBody({{{"name", "x"}, {"dtype", "F32"}, {"shape", {1}}}}),
       "application/json", 400, "bad_request"},
      {"U8 out of range",
       InferBody({{{"name", "x"}, {"dtype", "U8"}, {"shape", {1}}, {"data", {300}}}}),
       "application/json", 400, "bad_request"},
      {"float for I64",
       InferBody({{{"name", "x"}, {"dtype", "I64"}, {"shape", {1}}, {"data", {1.5}}}}),
       "application/json", 400, "bad_request"},
      {"string element",
       InferBody({{{"name", "x"}, {"dtype", "F32"}, {"shape", {1}}, {"data", {"1"}}}}),
       "application/json", 400, "bad_request"},
      {"bad URL scheme", InferBody({{{"name", "x"}, {"url", "ftp://host/x.safetensors"}}}),
       "application/json", 400, "bad_request"},
      {"relative file URL", InferBody({{{"name", "x"}, {"url", "file://x.safetensors"}}}),
       "application/json", 400, "bad_request"},
      {"file outside the root",
       InferBody({{{"name", "x"}, {"url", "file://" + outside.File("w.safetensors")}}}),
       "application/json", 403, "forbidden"},
      {"file escaping the root with ..",
       InferBody({{{"name", "x"},
                   {"url", "file://" + root.path() + "/../" +
                               std::filesystem::path(outside.path()).filename().string() +
                               "/w.safetensors"}}}),
       "application/json", 403, "forbidden"},
      {"missing file outside the root", InferBody({{{"name", "x"}, {"url", "file:///etc/nope/x"}}}),
       "application/json", 403, "forbidden"},
      {"missing file under the root",
       InferBody({{{"name", "x"}, {"url", "file://" + root.File("missing.safetensors")}}}),
       "application/json", 404, "not_found"},
      {"file that is not safetensors",
       InferBody({{{"name", "x"}, {"url", "file://" + root.File("not.safetensors")}}}),
       "application/json", 400, "bad_request"},
      {"FIFO under the root",
       InferBody({{{"name", "x"}, {"url", "file://" + root.File("fifo.safetensors")}}}),
       "application/json", 400, "bad_request"},
      {"unreachable http input",
       InferBody({{{"name", "x"}, {"url", "http://127.0.0.1:1/x.safetensors"}}}),
       "application/json", 502, "bad_gateway"},
      {"garbage safetensors body", "garbage!", "application/octet-stream", 400, "bad_request"},
      {"oversized body", std::string(100 << 10, ' '), "application/json", 413, "payload_too_large"},
      {"wrong arity for the model", InferBody({}), "application/json", 422, "invalid_argument"},
      {"dtype the model rejects",
       InferBody({{{"name", "x"}, {"dtype", "U64"}, {"shape", {1}}, {"data", {1}}}}),
       "application/json", 422, "invalid_argument"},
  };
  host_->arity = 1;
  int client_errors = 0, server_errors = 0;
  for (const Case& c : cases) {
    auto r = Post("/v1/infer", c.body, c.content_type);
    ExpectError(r, c.status, c.code, c.what);
    (c.status >= 500 ? server_errors : client_errors)++;
  }
  ExpectError(Get("/v1/nope"), 404, "not_found", "unknown path");
  ExpectError(Get("/v1/infer"), 405, "method_not_allowed", "wrong method");

  auto r = Infer({ok_input});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(BodyOf(r)["outputs"][0]["data"], json::array({2.0, 4.0}));
  EXPECT_EQ(metrics_.HistogramCount("stasis_request_seconds", {{"outcome", "client_error"}}),
            static_cast<uint64_t>(client_errors));
  EXPECT_EQ(metrics_.HistogramCount("stasis_request_seconds", {{"outcome", "server_error"}}),
            static_cast<uint64_t>(server_errors));
  EXPECT_EQ(metrics_.HistogramCount("stasis_request_seconds", {{"outcome", "ok"}}), 1u);
}

TEST_F(ServerTest, JsonCarriesEveryPlainDtype) {
  StartServer();
  host_->arity = -1;
  std::vector<json> inputs = {
      {{"name", "b"}, {"dtype", "BOOL"}, {"shape", {3}}, {"data", {true, false, 1}}},
      {{"name", "u8"}, {"dtype", "U8"}, {"shape", {2}}, {"data", {0, 255}}},
      {{"name", "i8"}, {"dtype", "I8"}, {"shape", {2}}, {"data", {-128, 127}}},
      {{"name", "i16"}, {"dtype", "I16"}, {"shape", {2}}, {"data", {-32768, 32767}}},
      {{"name", "u16"}, {"dtype", "U16"}, {"shape", {1}}, {"data", {65535}}},
      {{"name", "i32"}, {"dtype", "I32"}, {"shape", {2}}, {"data", {-2147483648ll, 7}}},
      {{"name", "u32"}, {"dtype", "U32"}, {"shape", {1}}, {"data", {4294967295ull}}},
      {{"name", "f16"}, {"dtype", "F16"}, {"shape", {5}}, {"data", {0.5, -2, 65504, 0.1, 1e-7}}},
      {{"name", "bf16"}, {"dtype", "BF16"}, {"shape", {3}}, {"data", {1, -0.5, 3}}},
      {{"name", "f64"}, {"dtype", "F64"}, {"shape", {1, 1}}, {"data", {0.1}}},
      {{"name", "empty"}, {"dtype", "F32"}, {"shape", {0, 3}}, {"data", json::array()}},
  };
  auto r = Infer(inputs);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json out = BodyOf(r)["outputs"];
  ASSERT_EQ(out.size(), inputs.size());
  EXPECT_EQ(out[0]["data"], json::array({true, false, true}));
  EXPECT_EQ(out[1]["data"], json::array({0, 255}));
  EXPECT_EQ(out[2]["data"], json::array({-128, 127}));
  EXPECT_EQ(out[3]["data"], json::array({-32768, 32767}));
  EXPECT_EQ(out[4]["data"], json::array({65535}));
  EXPECT_EQ(out[5]["data"], json::array({-2147483648ll, 7}));
  EXPECT_EQ(out[6]["data"], json::array({4294967295ull}));
  // F16 rounds to nearest even: 0.1 → 0.0999755859375, 1e-7 → the subnormal 2^-24 * 2.
  EXPECT_EQ(out[7]["data"][0], 0.5);
  EXPECT_EQ(out[7]["data"][1], -2.0);
  EXPECT_EQ(out[7]["data"][2], 65504.0);
  EXPECT_NEAR(out[7]["data"][3].get<double>(), 0.0999755859375, 1e-9);
  EXPECT_NEAR(out[7]["data"][4].get<double>(), 2 * 5.960464477539063e-08, 1e-12);
  EXPECT_EQ(out[8]["data"], json::array({1.0, -0.5, 3.0}));
  EXPECT_EQ(out[9]["data"], json::array({0.1}));
  EXPECT_EQ(out[9]["shape"], json::array({1, 1}));
  EXPECT_EQ(out[10]["shape"], json::array({0, 3}));
  EXPECT_EQ(out[10]["data"], json::array());
  EXPECT_EQ(out[0]["name"], "output.0");
  EXPECT_EQ(out[7]["dtype"], "F16");
}

TEST_F(ServerTest, SafetensorsBodyInSafetensorsOut) {
  StartServer();
  host_->arity = 2;
  // Header order input.1, input.0: the indices decide the positions.
  std::string body = Safetensors({Tensor<int64_t>("input.1", DType::kI64, {3}, {5, 7, -9}),
                                  Tensor<float>("input.0", DType::kF32, {2, 2}, {1, 2, 3, 4})});
  auto r = Post("/v1/infer", body, "application/octet-stream");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->get_header_value("Content-Type"), "application/octet-stream");
  EXPECT_EQ(r->get_header_value("X-Stasis-Cold"), "true");
  SafetensorsHeader header;
  auto out = ParseSafetensorsOrDie(r->body, &header);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].name, "output.0");
  EXPECT_EQ(out[0].dtype, DType::kF32);
  EXPECT_EQ(out[0].shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(Values<float>(out[0].bytes), (std::vector<float>{2, 4, 6, 8}));
  EXPECT_EQ(out[1].name, "output.1");
  EXPECT_EQ(out[1].dtype, DType::kI64);
  EXPECT_EQ(Values<int64_t>(out[1].bytes), (std::vector<int64_t>{10, 14, -18}));
  EXPECT_THAT(header.metadata,
              ::testing::Contains(std::make_pair(std::string("cold"), std::string("true"))));

  // Names without indices: header order. Accept picks a JSON answer.
  body = Safetensors(
      {Tensor<float>("b", DType::kF32, {1}, {10}), Tensor<float>("a", DType::kF32, {1}, {20})});
  r = Post("/v1/infer", body, "application/octet-stream", {{"Accept", "application/json"}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json j = BodyOf(r);
  EXPECT_EQ(j["cold"], false);
  EXPECT_EQ(j["outputs"][0]["data"], json::array({20.0}));
  EXPECT_EQ(j["outputs"][1]["data"], json::array({40.0}));

  // And a JSON request can ask for safetensors.
  host_->arity = 1;
  r = Post("/v1/infer", InferBody({F32Input("x", {3})}), "application/json",
           {{"Accept", "application/octet-stream"}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  out = ParseSafetensorsOrDie(r->body);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].name, "output");
  EXPECT_EQ(Values<float>(out[0].bytes), (std::vector<float>{6}));
}

TEST_F(ServerTest, FileUrlInputUnderTheRoot) {
  testing::TempDir root, outside;
  std::filesystem::create_directories(root.path() + "/sub dir");
  testing::WriteFile(root.File("sub dir/w.safetensors"),
                     Safetensors({Tensor<float>("a", DType::kF32, {2}, {1, 2}),
                                  Tensor<float>("b", DType::kF32, {1}, {10})}));
  testing::WriteFile(outside.File("secret.safetensors"),
                     Safetensors({Tensor<float>("s", DType::kF32, {1}, {99})}));
  std::filesystem::create_symlink(outside.File("secret.safetensors"), root.File("link"));
  ServerOptions o;
  o.file_root = root.path();
  StartServer(o);

  auto r = Infer({{{"name", "x"}, {"url", "file://" + root.path() + "/sub%20dir/w.safetensors"}}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(BodyOf(r)["outputs"][0]["data"], json::array({2.0, 4.0}));

  r = Infer({{{"name", "x"},
              {"url", "file://" + root.path() + "/sub%20dir/./w.safetensors"},
              {"tensor", "b"}}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(BodyOf(r)["outputs"][0]["data"], json::array({20.0}));

  ExpectError(Infer({{{"name", "x"},
                      {"url", "file://" + root.path() + "/sub%20dir/w.safetensors"},
                      {"tensor", "zzz"}}}),
              400, "bad_request", "unknown tensor");
  ExpectError(Infer({{{"name", "x"}, {"url", "file://" + root.File("link")}}}), 403, "forbidden",
              "symlink out of the root");

  // Red-team L5: through a directory symlink that leaves the root, a file that exists
  // outside and one that does not get the same answer (no existence oracle).
  std::filesystem::create_symlink(outside.path(), root.File("outdir"));
  auto present =
      Infer({{{"name", "x"}, {"url", "file://" + root.File("outdir/secret.safetensors")}}});
  auto absent =
      Infer({{{"name", "x"}, {"url", "file://" + root.File("outdir/missing.safetensors")}}});
  ASSERT_TRUE(present && absent);
  EXPECT_EQ(present->status, 403) << present->body;
  EXPECT_EQ(absent->status, present->status) << absent->body;
  EXPECT_EQ(BodyOf(absent)["error"]["code"], BodyOf(present)["error"]["code"]);
}

TEST_F(ServerTest, FileUrlInputsRefusedWithoutRoot) {
  testing::TempDir dir;
  testing::WriteFile(dir.File("w.safetensors"),
                     Safetensors({Tensor<float>("a", DType::kF32, {1}, {1})}));
  StartServer();
  ExpectError(Infer({{{"name", "x"}, {"url", "file://" + dir.File("w.safetensors")}}}), 403,
              "forbidden", "no file root");
}

TEST_F(ServerTest, HttpUrlInputIsFetched) {
  const std::string weights = Safetensors({Tensor<float>("w", DType::kF32, {3}, {1, 2, 3})});
  httplib::Server upstream;
  upstream.Get("/w.safetensors", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(weights, "application/octet-stream");
  });
  upstream.Get("/big", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(std::string(200 << 10, 'x'), "application/octet-stream");
  });
  const int up_port = upstream.bind_to_any_port("127.0.0.1");
  ASSERT_GT(up_port, 0);
  std::thread up_thread([&] { upstream.listen_after_bind(); });
  ASSERT_TRUE(Eventually([&] { return upstream.is_running(); }));

  ServerOptions o;
  o.max_body_bytes = 100 << 10;
  o.http_input_hosts = {"127.0.0.1:" + std::to_string(up_port)};
  StartServer(o);
  const std::string base = "http://127.0.0.1:" + std::to_string(up_port);
  auto r = Infer({{{"name", "x"}, {"url", base + "/w.safetensors"}}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(BodyOf(r)["outputs"][0]["data"], json::array({2.0, 4.0, 6.0}));
  ExpectError(Infer({{{"name", "x"}, {"url", base + "/missing"}}}), 502, "bad_gateway",
              "upstream 404");
  ExpectError(Infer({{{"name", "x"}, {"url", base + "/big"}}}), 413, "payload_too_large",
              "upstream too big");
  ExpectError(Infer({{{"name", "x"}, {"url", "http://127.0.0.1:notaport/x"}}}), 400, "bad_request",
              "bad port");

  upstream.stop();
  up_thread.join();
}

// http:// inputs are refused unless their host is listed: a client must not be able to make
// the server fetch from hosts only the server can reach.
TEST_F(ServerTest, HttpUrlInputsOnlyFromAllowedHosts) {
  StartServer();  // the default: none allowed
  ExpectError(Infer({{{"name", "x"}, {"url", "http://127.0.0.1:1/x"}}}), 403, "forbidden",
              "http disabled by default");
  server_.reset();
  lifecycle_.reset();

  ServerOptions o;
  o.http_input_hosts = {"LOCALHOST", "127.0.0.1:1", "[::1]:0001"};
  StartServer(o);
  // Allowed: fetched, and port 1 refuses the connection (502, not 403).
  ExpectError(Infer({{{"name", "x"}, {"url", "http://127.0.0.1:1/x"}}}), 502, "bad_gateway",
              "allowed host and port");
  ExpectError(Infer({{{"name", "x"}, {"url", "http://localhost:1/x"}}}), 502, "bad_gateway",
              "host without port allows any port, case-insensitively");
  ExpectError(Infer({{{"name", "x"}, {"url", "http://[::1]:1/x"}}}), 502, "bad_gateway",
              "IPv6, port written differently");
  // Refused: another port of a host listed with one, other hosts, the metadata address.
  ExpectError(Infer({{{"name", "x"}, {"url", "http://127.0.0.1:2/x"}}}), 403, "forbidden",
              "other port");
  ExpectError(Infer({{{"name", "x"}, {"url", "http://127.0.0.1/x"}}}), 403, "forbidden",
              "no port where one is required");
  ExpectError(Infer({{{"name", "x"}, {"url", "http://169.254.169.254/latest/meta-data"}}}), 403,
              "forbidden", "unlisted host");
  ExpectError(Infer({{{"name", "x"}, {"url", "http://localhost.evil:1/x"}}}), 403, "forbidden",
              "prefix of a listed host");
  // Authorities that are not HOST[:PORT] are refused before any library parses them (a long
  // run of digits once overflowed the stack of httplib's URL regex; a huge port made it
  // throw).
  for (const std::string& bad : std::vector<std::string>{
           "http://localhost:" + std::string(200000, '1') + "]/x", "http://[::1]:99999999999/x",
           "http://[::1]:0/x", "http://localhost:/x", "http://user@localhost:1/x",
           "http://local%68ost:1/x", "http://localhost\\@evil:1/x", "http://[fe80::1%25eth0]:1/x",
           "http://[::1/x", "http://::1:1/x", "http://" + std::string(300, 'a') + "/x", "http:///x",
           "http://localhost:1]/x", "http://localhost:1#x"}) {
    ExpectError(Infer({{{"name", "x"}, {"url", bad}}}), 400, "bad_request", bad.substr(0, 80));
  }
  server_.reset();
  lifecycle_.reset();

  // IPv6 with hex digits (IPv4-mapped 127.0.0.1): allowed, fetched, refused on port 1.
  o.http_input_hosts = {"[::FFFF:7f00:1]:1"};
  StartServer(o);
  ExpectError(Infer({{{"name", "x"}, {"url", "http://[::ffff:7f00:1]:1/x"}}}), 502, "bad_gateway",
              "hex IPv6");
  server_.reset();
  lifecycle_.reset();

  // Malformed entries are refused when the server starts.
  o.http_input_hosts = {"host/path"};
  Lifecycle idle(host_.get(), &clock_, LifecycleOptions{});
  EXPECT_THAT(Server::Start(&idle, &metrics_, &clock_, o).status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("host/path")));

  o.http_input_hosts = {"*"};
  StartServer(o);
  ExpectError(Infer({{{"name", "x"}, {"url", "http://127.0.0.1:1/x"}}}), 502, "bad_gateway",
              "* allows any host");
}

TEST_F(ServerTest, FullQueueAnswers503WithRetryAfterAndQueuedRequestsTimeOut) {
  ServerOptions o;
  o.max_concurrency = 1;
  o.queue = 1;
  o.request_timeout_ns = 10'000'000'000;
  o.retry_after_s = 3;
  StartServer(o);
  ASSERT_EQ(Post("/v1/warmup", "")->status, 200);

  host_->infer_gate.Close();
  int a_status = 0, b_status = 0;
  json b_body;
  std::thread a([&] {
    auto r = Infer({F32Input("x", {1})});
    if (r) a_status = r->status;
  });
  ASSERT_TRUE(host_->infer_gate.WaitArrived(1));
  std::thread b([&] {
    auto r = Infer({F32Input("x", {2})});
    if (r) {
      b_status = r->status;
      b_body = BodyOf(r);
    }
  });
  ASSERT_TRUE(Eventually([&] { return Status()["queued"] == 1; }));

  auto c = Infer({F32Input("x", {3})});
  ExpectError(c, 503, "queue_full", "third request");
  EXPECT_EQ(c->get_header_value("Retry-After"), "3");

  // B has waited longer than the timeout (manual time): it gives up.
  clock_.AdvanceSeconds(11);
  b.join();
  EXPECT_EQ(b_status, 503);
  EXPECT_EQ(b_body["error"]["code"], "queue_timeout");

  host_->infer_gate.Open();
  a.join();
  EXPECT_EQ(a_status, 200);
  EXPECT_EQ(metrics_.HistogramCount("stasis_request_seconds", {{"outcome", "rejected"}}), 2u);
  EXPECT_EQ(host_->infers, 1);

  // The slot is free again.
  auto r = Infer({F32Input("x", {4})});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(ServerTest, QueuedRequestsRunInOrderWhenTheSlotFrees) {
  ServerOptions o;
  o.max_concurrency = 1;
  o.queue = 4;
  StartServer(o);
  ASSERT_EQ(Post("/v1/warmup", "")->status, 200);
  host_->infer_gate.Close();
  std::vector<std::thread> threads;
  std::vector<int> statuses(4, 0);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      auto r = Infer({F32Input("x", {static_cast<float>(i)})});
      if (r) statuses[i] = r->status;
    });
    if (i == 0) {
      EXPECT_TRUE(host_->infer_gate.WaitArrived(1));
    }
  }
  ASSERT_TRUE(Eventually([&] { return Status()["queued"] == 3; }));
  EXPECT_EQ(lifecycle_->status().in_flight, 1);  // one at a time inside the model
  host_->infer_gate.Open();
  for (auto& t : threads) t.join();
  for (int s : statuses) EXPECT_EQ(s, 200);
  EXPECT_EQ(host_->infers, 4);
}

TEST_F(ServerTest, MetricsExposition) {
  StartServer();
  ASSERT_EQ(Infer({F32Input("x", {1})})->status, 200);  // cold, 2 s
  ASSERT_EQ(Infer({F32Input("x", {1})})->status, 200);  // warm, 0 s
  host_->infer_ns = 30'000'000;                         // 30 ms
  ASSERT_EQ(Infer({F32Input("x", {1}), F32Input("y", {1})})->status, 422);

  auto r = Get("/metrics");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  EXPECT_THAT(r->get_header_value("Content-Type"), HasSubstr("text/plain; version=0.0.4"));
  const std::string& text = r->body;
  for (const char* line : {
           "# HELP stasis_cold_starts_total ",
           "# TYPE stasis_cold_starts_total counter\n",
           "\nstasis_cold_starts_total 1\n",
           "\nstasis_warm_requests_total 2\n",  // the 422 ran in the warm model too
           "\nstasis_cold_requests_total 1\n",
           "# TYPE stasis_restore_seconds histogram\n",
           "\nstasis_restore_seconds_bucket{le=\"0.25\"} 0\n",
           "\nstasis_restore_seconds_bucket{le=\"0.5\"} 1\n",
           "\nstasis_restore_seconds_sum 0.5\n",
           "\nstasis_restore_seconds_count 1\n",
           "# TYPE stasis_request_seconds histogram\n",
           "\nstasis_request_seconds_bucket{outcome=\"ok\",le=\"1\"} 1\n",
           "\nstasis_request_seconds_bucket{outcome=\"ok\",le=\"2.5\"} 2\n",
           "\nstasis_request_seconds_bucket{outcome=\"ok\",le=\"+Inf\"} 2\n",
           "\nstasis_request_seconds_sum{outcome=\"ok\"} 2\n",
           "\nstasis_request_seconds_count{outcome=\"ok\"} 2\n",
           "\nstasis_request_seconds_bucket{outcome=\"client_error\",le=\"0.025\"} 0\n",
           "\nstasis_request_seconds_bucket{outcome=\"client_error\",le=\"0.05\"} 1\n",
           "\nstasis_request_seconds_count{outcome=\"client_error\"} 1\n",
           "\nstasis_request_seconds_count{outcome=\"server_error\"} 0\n",
           "\nstasis_request_seconds_count{outcome=\"rejected\"} 0\n",
           "# TYPE stasis_state gauge\n",
           "\nstasis_state{state=\"warm\"} 1\n",
           "\nstasis_state{state=\"cold\"} 0\n",
           "\nstasis_state{state=\"restoring\"} 0\n",
           "\nstasis_device_bytes 4096\n",
       }) {
    EXPECT_THAT(text, HasSubstr(line)) << text;
  }
  // Every sample line is "name[{labels}] value".
  std::istringstream in(text);
  std::string l;
  while (std::getline(in, l)) {
    if (l.empty() || l[0] == '#') continue;
    EXPECT_THAT(l, ::testing::MatchesRegex(
                       R"([a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [-+0-9.eInf]+)"))
        << l;
  }

  ASSERT_EQ(Post("/v1/unload", "")->status, 200);
  r = Get("/metrics");
  EXPECT_THAT(r->body, HasSubstr("\nstasis_state{state=\"cold\"} 1\n"));
  EXPECT_THAT(r->body, HasSubstr("\nstasis_device_bytes 0\n"));
  EXPECT_THAT(r->body, HasSubstr("\nstasis_unloads_total 1\n"));
}

TEST(MetricsTest, RegistryBasics) {
  Metrics m;
  m.DefineCounter("c_total", "A counter.\nTwo lines \\ here");
  m.DefineHistogram("h_seconds", "A histogram.", {1, 0.5, 2});
  m.DefineGauge("g", "A gauge.");
  m.Add("c_total", 2, {{"k", "a\"b\\c\nd"}});
  m.Add("c_total", -1, {{"k", "a\"b\\c\nd"}});        // ignored: counters only go up
  m.SetCounter("c_total", 1, {{"k", "a\"b\\c\nd"}});  // never lowers
  m.Observe("h_seconds", 0.5);
  m.Observe("h_seconds", 0.7);
  m.Observe("h_seconds", 5);
  m.Set("g", -1.25);
  m.Add("nope_total");    // undefined: ignored
  m.Set("c_total", 100);  // wrong type: ignored
  EXPECT_EQ(m.Value("c_total", {{"k", "a\"b\\c\nd"}}), 2);
  EXPECT_EQ(m.HistogramCount("h_seconds"), 3u);
  EXPECT_DOUBLE_EQ(m.HistogramSum("h_seconds"), 6.2);
  const std::string text = m.Render();
  EXPECT_THAT(text, HasSubstr("# HELP c_total A counter.\\nTwo lines \\\\ here\n"));
  EXPECT_THAT(text, HasSubstr("c_total{k=\"a\\\"b\\\\c\\nd\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("h_seconds_bucket{le=\"0.5\"} 1\n"));  // le is inclusive
  EXPECT_THAT(text, HasSubstr("h_seconds_bucket{le=\"1\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("h_seconds_bucket{le=\"2\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("h_seconds_bucket{le=\"+Inf\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("h_seconds_count 3\n"));
  EXPECT_THAT(text, HasSubstr("\ng -1.25\n"));
  EXPECT_THAT(text, Not(HasSubstr("nope_total")));

  // The state listener.
  TransitionListener listener = NewStateListener(&m);
  listener(ModelState::kCold, ModelState::kRestoring);
  EXPECT_EQ(m.Value("stasis_state", {{"state", "restoring"}}), 1);
  EXPECT_EQ(m.Value("stasis_state", {{"state", "cold"}}), 0);
}

TEST_F(ServerTest, StatusReportsTheLastColdStart) {
  StartServer();
  json s = Status();
  EXPECT_EQ(s["state"], "cold");
  EXPECT_TRUE(s["last_restore"].is_null());
  EXPECT_EQ(s["ready"], true);

  ASSERT_EQ(Infer({F32Input("x", {1})})->status, 200);
  clock_.AdvanceSeconds(3);
  s = Status();
  EXPECT_EQ(s["state"], "warm");
  EXPECT_EQ(s["model"], "fake model");
  EXPECT_DOUBLE_EQ(s["idle_seconds"].get<double>(), 3.0);
  EXPECT_EQ(s["in_flight"], 0);
  EXPECT_EQ(s["queued"], 0);
  EXPECT_EQ(s["cold_starts"], 1);
  EXPECT_EQ(s["cold_requests"], 1);
  EXPECT_EQ(s["warm_requests"], 0);
  EXPECT_EQ(s["failed_restores"], 0);
  EXPECT_EQ(s["device_bytes"], 4096);
  EXPECT_EQ(s["draining"], false);
  const json& lr = s["last_restore"];
  ASSERT_TRUE(lr.is_object()) << s.dump();
  EXPECT_EQ(lr["image"], "fake.stasis");
  EXPECT_EQ(lr["device"], "cpu");
  // The same schema as `stasis restore --json` (restore/report_json.h).
  for (const char* phase :
       {"open", "plan", "map", "pipeline_wall", "read", "verify", "decompress", "copy"}) {
    EXPECT_TRUE(lr["phases"][phase].is_number()) << phase;
  }
  EXPECT_DOUBLE_EQ(lr["seconds"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(lr["phases"]["read"].get<double>(), 0.2);
  EXPECT_EQ(lr["raw_bytes"], 1ull << 30);
  EXPECT_NEAR(lr["raw_gb_per_s"].get<double>(), (1ull << 30) / 0.5 / 1e9, 1e-9);
  EXPECT_TRUE(lr["io"]["backend"].is_string());
  EXPECT_TRUE(lr["addresses_preserved"].is_boolean());
}

TEST_F(ServerTest, WarmupAndReadiness) {
  StartServer();
  auto r = Get("/readyz");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);  // cold is ready: the first request restores

  host_->fail_loads = 1;
  r = Infer({F32Input("x", {1})});
  ExpectError(r, 503, "unavailable", "failed restore");
  EXPECT_FALSE(r->get_header_value("Retry-After").empty());
  ExpectError(Get("/readyz"), 503, "failed", "readyz after a failed restore");
  // It says when the lifecycle retries by itself (LifecycleOptions' default backoff, 1 s).
  EXPECT_THAT(BodyOf(Get("/readyz"))["error"]["message"].get<std::string>(),
              HasSubstr("retrying by itself in 1.0 s"));
  json st = Status();
  EXPECT_EQ(st["failed_restores"], 1);
  EXPECT_EQ(st["consecutive_failures"], 1);
  EXPECT_DOUBLE_EQ(st["retry_in_seconds"].get<double>(), 1.0);

  r = Post("/v1/warmup", "");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(BodyOf(r)["state"], "warm");
  EXPECT_EQ(BodyOf(r)["cold"], true);
  r = Post("/v1/warmup", "");
  ASSERT_TRUE(r);
  EXPECT_EQ(BodyOf(r)["cold"], false);
  EXPECT_EQ(host_->loads, 2);  // the failed one and the warmup
  EXPECT_EQ(Get("/readyz")->status, 200);
  st = Status();
  EXPECT_EQ(st["consecutive_failures"], 0);
  EXPECT_TRUE(st["retry_in_seconds"].is_null());
  r = Infer({F32Input("x", {1})});
  ASSERT_TRUE(r);
  EXPECT_EQ(BodyOf(r)["cold"], false);
}

TEST_F(ServerTest, ShutdownDrainsInFlightRequestsAndRefusesNewOnes) {
  ServerOptions o;
  o.max_concurrency = 2;
  StartServer(o);
  ASSERT_EQ(Post("/v1/warmup", "")->status, 200);
  host_->infer_gate.Close();
  int a_status = 0;
  json a_body;
  std::thread a([&] {
    auto r = Infer({F32Input("x", {21})});
    if (r) {
      a_status = r->status;
      a_body = BodyOf(r);
    }
  });
  ASSERT_TRUE(host_->infer_gate.WaitArrived(1));
  std::atomic<bool> shut{false};
  std::thread s([&] {
    server_->Shutdown();
    shut = true;
  });
  ASSERT_TRUE(Eventually([&] { return server_->draining(); }));

  auto r = Infer({F32Input("x", {1})});
  ExpectError(r, 503, "shutting_down", "infer while draining");
  EXPECT_FALSE(r->get_header_value("Retry-After").empty());
  ExpectError(Get("/readyz"), 503, "shutting_down", "readyz while draining");
  ExpectError(Post("/v1/warmup", ""), 503, "shutting_down", "warmup while draining");
  r = Get("/healthz");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_FALSE(shut);

  host_->infer_gate.Open();
  a.join();
  EXPECT_EQ(a_status, 200);
  EXPECT_EQ(a_body["outputs"][0]["data"], json::array({42.0}));
  s.join();
  EXPECT_TRUE(shut);
  server_->Wait();  // returns: the listener has stopped
  r = NewClient()->Get("/healthz");
  EXPECT_FALSE(r) << "the listener still answers";
  EXPECT_EQ(host_->infers, 1);
}

TEST_F(ServerTest, ShutdownIsPromptWithAnIdleKeepAliveConnection) {
  ServerOptions o;
  o.keep_alive_timeout_s = 1;
  StartServer(o);
  auto idle = NewClient();
  idle->set_keep_alive(true);
  auto r = idle->Get("/healthz");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  const auto start = std::chrono::steady_clock::now();
  server_->Shutdown();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 2.0);
}

TEST_F(ServerTest, WaitReturnsAfterShutdownFromAnotherThread) {
  StartServer();
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    server_->Shutdown();
  });
  server_->Wait();
  t.join();
  server_->Shutdown();  // idempotent
}

TEST(ServerStartTest, RejectsBadOptions) {
  ManualClock clock;
  Metrics metrics;
  FakeModelHost host(&clock);
  Lifecycle lifecycle(&host, &clock, LifecycleOptions{});
  ServerOptions o;
  o.port = 0;
  o.max_concurrency = 0;
  EXPECT_THAT(Server::Start(&lifecycle, &metrics, &clock, o),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("max_concurrency")));
  o.max_concurrency = 1;
  o.file_root = "/nonexistent/stasis/root";
  EXPECT_THAT(Server::Start(&lifecycle, &metrics, &clock, o), Not(IsOk()));
  o.file_root = "";
  o.host = "203.0.113.77";  // not a local address
  EXPECT_THAT(Server::Start(&lifecycle, &metrics, &clock, o),
              StatusIs(StatusCode::kUnavailable, HasSubstr("bind")));
}

TEST(ServerHelpersTest, StatusMappingAndTokenCompare) {
  EXPECT_EQ(HttpStatusForCode(StatusCode::kInvalidArgument), 422);
  EXPECT_EQ(HttpStatusForCode(StatusCode::kFailedPrecondition), 409);
  EXPECT_EQ(HttpStatusForCode(StatusCode::kResourceExhausted), 503);
  EXPECT_EQ(HttpStatusForCode(StatusCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatusForCode(StatusCode::kNotFound), 404);
  EXPECT_EQ(HttpStatusForCode(StatusCode::kPermissionDenied), 403);
  EXPECT_EQ(HttpStatusForCode(StatusCode::kUnauthenticated), 401);
  EXPECT_EQ(HttpStatusForCode(StatusCode::kDeadlineExceeded), 504);
  EXPECT_EQ(HttpStatusForCode(StatusCode::kDataLoss), 500);
  EXPECT_EQ(HttpStatusForCode(StatusCode::kInternal), 500);
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abd", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("ab", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abcd", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("", "abc"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
}

// Redirects stderr (fd 2) to a file for the lifetime of the object.
class StderrCapture {
 public:
  explicit StderrCapture(const std::string& path) : path_(path) {
    std::fflush(stderr);
    saved_ = ::dup(2);
    FILE* f = std::fopen(path.c_str(), "w");
    ::dup2(::fileno(f), 2);
    std::fclose(f);
  }
  ~StderrCapture() { Restore(); }
  void Restore() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    ::dup2(saved_, 2);
    ::close(saved_);
    saved_ = -1;
  }
  std::string Text() const { return testing::ReadFile(path_); }

 private:
  std::string path_;
  int saved_ = -1;
};

TEST_F(ServerTest, JsonLogLinesAreValidJson) {
  testing::TempDir dir;
  auto previous = spdlog::default_logger();
  std::string text;
  {
    StderrCapture capture(dir.File("stderr.log"));
    spdlog::drop("stasis");
    InitLogging(LogFormat::kJson, "info");
    const std::string nasty = "quote \" backslash \\ newline \n tab \t ctl \x01 bad \xff end é";
    spdlog::info("{}", nasty);
    StartServer();
    ASSERT_EQ(Infer({F32Input("x", {1})})->status, 200);
    ASSERT_EQ(Get("/v1/a%22b%5Cc%0Ad")->status, 404);  // decoded: a"b\c<newline>d
    server_->Shutdown();  // the logger has run for every request once the workers stopped
    spdlog::default_logger()->flush();
    capture.Restore();
    text = capture.Text();

    std::istringstream in(text);
    std::string line;
    int lines = 0;
    bool saw_nasty = false, saw_infer = false, saw_404 = false;
    while (std::getline(in, line)) {
      ++lines;
      json j = json::parse(line, nullptr, false);
      ASSERT_FALSE(j.is_discarded()) << "not JSON: " << line;
      ASSERT_TRUE(j["msg"].is_string()) << line;
      ASSERT_TRUE(j["level"].is_string()) << line;
      ASSERT_TRUE(j["time"].is_string()) << line;
      const std::string msg = j["msg"].get<std::string>();
      if (msg == "quote \" backslash \\ newline \n tab \t ctl \x01 bad \xef\xbf\xbd end é") {
        saw_nasty = true;
      }
      if (msg.find("path=/v1/infer") != std::string::npos) {
        saw_infer = true;
        EXPECT_THAT(msg, HasSubstr("method=POST"));
        EXPECT_THAT(msg, HasSubstr("status=200"));
        EXPECT_THAT(msg, HasSubstr("cold=true"));
        EXPECT_THAT(msg, HasSubstr("latency_ms=2000.000"));
        EXPECT_THAT(msg, HasSubstr("state=warm"));
        EXPECT_THAT(msg, ::testing::ContainsRegex("id=r[0-9a-f]+"));
      }
      if (msg.find("status=404") != std::string::npos) {
        saw_404 = true;
        // The target as sent (the client percent-encodes), so nothing can forge a line.
        EXPECT_THAT(msg, HasSubstr("path=/v1/a%22b%5Cc%0Ad"));
      }
    }
    EXPECT_GE(lines, 3);
    EXPECT_TRUE(saw_nasty) << text;
    EXPECT_TRUE(saw_infer) << text;
    EXPECT_TRUE(saw_404) << text;
  }
  spdlog::drop("stasis");
  spdlog::set_default_logger(previous);
}

}  // namespace
}  // namespace stasis::runtime

namespace stasis::runtime {
namespace {

// ----- Hardening (issue 16: the red-team report's H2, H3, H4, M2, M3, L8) -----

namespace hardening {

// A raw connection, for what no well-behaved client library sends.
class RawConn {
 public:
  explicit RawConn(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok_ = fd_ >= 0 && ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    timeval tv{10, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~RawConn() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool ok() const { return ok_; }
  bool Send(std::string_view s) {
    while (!s.empty()) {
      const ssize_t n = ::send(fd_, s.data(), s.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      s.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  // Everything until the server closes (or 10 s of silence); `closed` says which.
  std::string ReadAll(bool* closed) {
    std::string out;
    char buf[65536];
    for (;;) {
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n > 0) {
        out.append(buf, static_cast<size_t>(n));
        continue;
      }
      *closed = n == 0 || errno == ECONNRESET;
      return out;
    }
  }

 private:
  int fd_ = -1;
  bool ok_ = false;
};

size_t CountResponses(const std::string& s) {
  size_t n = 0;
  for (size_t at = s.find("HTTP/1.1 "); at != std::string::npos; at = s.find("HTTP/1.1 ", at + 1))
    ++n;
  return n;
}

}  // namespace hardening

using hardening::CountResponses;
using hardening::RawConn;

TEST_F(ServerTest, ConflictingContentLengthsGetOne400AndAClosedConnection) {
  StartServer();
  const std::string inner = "GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n";
  RawConn c(server_->port());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c.Send("POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: " +
                     std::to_string(5 + inner.size()) + "\r\n\r\n{\"a\":" + inner));
  bool closed = false;
  const std::string got = c.ReadAll(&closed);
  EXPECT_EQ(CountResponses(got), 1u) << got;
  EXPECT_THAT(got, HasSubstr("HTTP/1.1 400")) << got;
  EXPECT_TRUE(closed);
}

TEST_F(ServerTest, ContentLengthWithTransferEncodingIsRefused) {
  StartServer();
  for (const char* te : {"chunked", "gzip, chunked", "gzip"}) {
    RawConn c(server_->port());
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE(c.Send(std::string("POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                                   "Transfer-Encoding: ") +
                       te + "\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
    bool closed = false;
    const std::string got = c.ReadAll(&closed);
    EXPECT_EQ(CountResponses(got), 1u) << te << ": " << got;
    EXPECT_TRUE(got.rfind("HTTP/1.1 400", 0) == 0 || got.rfind("HTTP/1.1 501", 0) == 0)
        << te << ": " << got;
    EXPECT_TRUE(closed) << te;
  }
}

TEST_F(ServerTest, AnUnauthorizedBodyIsNeverParsedAsARequest) {
  ServerOptions o;
  o.token = "s3cret";
  StartServer(o);
  const std::string inner = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
  RawConn c(server_->port());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c.Send("POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                     std::to_string(inner.size()) + "\r\n\r\n"));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  c.Send(inner);  // may fail: the server may have closed already
  bool closed = false;
  const std::string got = c.ReadAll(&closed);
  EXPECT_EQ(CountResponses(got), 1u) << got;
  EXPECT_THAT(got, HasSubstr("HTTP/1.1 401")) << got;
  EXPECT_TRUE(closed);
}

TEST_F(ServerTest, PipelinedRequestsAreAllAnsweredInOrder) {
  StartServer();
  RawConn c(server_->port());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(
      c.Send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
             "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
             "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  bool closed = false;
  const std::string got = c.ReadAll(&closed);
  ASSERT_EQ(CountResponses(got), 3u) << got;
  const size_t a = got.find("HTTP/1.1 200"), b = got.find("HTTP/1.1 404"),
               d = got.find("HTTP/1.1 200", b);
  EXPECT_TRUE(a < b && b < d && d != std::string::npos) << got;
  EXPECT_TRUE(closed);
}

TEST_F(ServerTest, HeadsAreBounded) {
  StartServer();
  RawConn c(server_->port());
  ASSERT_TRUE(c.ok());
  std::string head = "GET /healthz HTTP/1.1\r\nHost: x\r\n";
  for (int i = 0; i < 5000; ++i) head += "X-" + std::to_string(i) + ": y\r\n";
  c.Send(head + "\r\n");
  bool closed = false;
  const std::string got = c.ReadAll(&closed);
  EXPECT_THAT(got, HasSubstr("HTTP/1.1 431")) << got.substr(0, 200);
  EXPECT_TRUE(closed);
}

TEST_F(ServerTest, DecodedAndChunkedBodiesAreBoundedByMaxBody) {
  ServerOptions o;
  o.max_body_bytes = 1 << 20;
  StartServer(o);
  // 64 MiB of spaces, gzip'd to ~64 KiB: refused once inflation passes 1 MiB.
  std::string plain(64 << 20, ' ');
  uLongf packed_size = compressBound(plain.size());
  std::string packed(packed_size, '\0');
  z_stream zs{};
  ASSERT_EQ(deflateInit2(&zs, 9, Z_DEFLATED, 16 + MAX_WBITS, 9, Z_DEFAULT_STRATEGY), Z_OK);
  zs.next_in = reinterpret_cast<Bytef*>(plain.data());
  zs.avail_in = static_cast<uInt>(plain.size());
  zs.next_out = reinterpret_cast<Bytef*>(packed.data());
  zs.avail_out = static_cast<uInt>(packed.size());
  ASSERT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  packed.resize(zs.total_out);
  deflateEnd(&zs);
  ASSERT_LT(packed.size(), size_t{1} << 20);
  auto r = Post("/v1/infer", packed, "application/json", {{"Content-Encoding", "gzip"}});
  ExpectError(r, 413, "payload_too_large", "gzip bomb");

  // A small gzip body is inflated and served.
  const std::string body = InferBody({F32Input("x", {1, 2})});
  std::string small(compressBound(body.size()) + 32, '\0');
  z_stream zs2{};
  ASSERT_EQ(deflateInit2(&zs2, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
  zs2.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(body.data()));
  zs2.avail_in = static_cast<uInt>(body.size());
  zs2.next_out = reinterpret_cast<Bytef*>(small.data());
  zs2.avail_out = static_cast<uInt>(small.size());
  ASSERT_EQ(deflate(&zs2, Z_FINISH), Z_STREAM_END);
  small.resize(zs2.total_out);
  deflateEnd(&zs2);
  r = Post("/v1/infer", small, "application/json", {{"Content-Encoding", "gzip"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;

  // Chunked: 2 MiB in 64 KiB chunks against 1 MiB.
  RawConn c(server_->port());
  ASSERT_TRUE(c.ok());
  std::string req =
      "POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Transfer-Encoding: chunked\r\n\r\n";
  const std::string piece(64 << 10, '1');
  for (int i = 0; i < 32; ++i) req += "10000\r\n" + piece + "\r\n";
  req += "0\r\n\r\n";
  c.Send(req);
  bool closed = false;
  const std::string got = c.ReadAll(&closed);
  EXPECT_THAT(got, HasSubstr("HTTP/1.1 413")) << got.substr(0, 300);
  EXPECT_TRUE(closed);
}

TEST_F(ServerTest, OutputsAreBoundedByMaxOutput) {
  ServerOptions o;
  o.max_output_bytes = 16 << 10;
  StartServer(o);
  auto r = Infer({F32Input("x", std::vector<float>(4096, 1.5f))});
  ExpectError(r, 413, "output_too_large", "4096 floats against 16 KiB");
  r = Infer({F32Input("x", {1, 2})});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
}

TEST_F(ServerTest, RangeErrorsAndImpossibleShapesAre400) {
  StartServer();
  auto r = Post("/v1/infer", R"({"inputs":[{"dtype":"F32","shape":[1],"data":[1e400]}]})");
  ExpectError(r, 400, "bad_json", "1e400");
  r = Post("/v1/infer",
           R"({"inputs":[{"dtype":"I64","shape":[4611686018427387904,0],"data":[]}]})");
  ExpectError(r, 400, "bad_request", "[2^62, 0]");
  // A finite number the narrower float type would round to infinity.
  r = Post("/v1/infer", R"({"inputs":[{"dtype":"F16","shape":[2],"data":[65504, 70000]}]})");
  ExpectError(r, 400, "bad_request", "F16 70000");
  EXPECT_THAT(r->body, HasSubstr("inputs[0].data[1]: number out of range for F16"));
  r = Post("/v1/infer", R"({"inputs":[{"dtype":"F32","shape":[1],"data":[-1e39]}]})");
  ExpectError(r, 400, "bad_request", "F32 -1e39");
  r = Post("/v1/infer", R"({"inputs":[{"dtype":"BF16","shape":[1],"data":[3.4e38]}]})");
  ExpectError(r, 400, "bad_request", "BF16 3.4e38");
  // The largest finite value itself is accepted.
  r = Post("/v1/infer", R"({"inputs":[{"dtype":"F16","shape":[1],"data":[-65504]}]})");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  // The same bound for a safetensors body: [2^40, 0] holds no bytes, and is still refused.
  TensorData empty{"x", DType::kF32, {int64_t{1} << 40, 0}, ""};
  r = Post("/v1/infer", Safetensors({empty}), "application/octet-stream");
  ExpectError(r, 400, "bad_request", "safetensors [2^40, 0]");
  EXPECT_THAT(r->body, HasSubstr("over the limit"));
}

TEST_F(ServerTest, AdminPostsWithoutABodyWork) {
  StartServer();
  RawConn c(server_->port());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c.Send("POST /v1/unload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  bool closed = false;
  const std::string got = c.ReadAll(&closed);
  EXPECT_THAT(got, HasSubstr("HTTP/1.1 200")) << got;
}

TEST_F(ServerTest, ASecondServerOnATakenPortFailsToStart) {
  StartServer();
  ServerOptions o;
  o.port = server_->port();
  Lifecycle other(host_.get(), &clock_, LifecycleOptions{});
  auto second = Server::Start(&other, &metrics_, &clock_, o);
  EXPECT_THAT(second, StatusIs(StatusCode::kUnavailable, HasSubstr("bind")));
}

TEST_F(ServerTest, HealthzAnswersWhileAHundredSlowClientsTrickle) {
  StartServer();
  std::vector<std::unique_ptr<RawConn>> slow;
  for (int i = 0; i < 100; ++i) {
    slow.push_back(std::make_unique<RawConn>(server_->port()));
    ASSERT_TRUE(slow.back()->ok());
    slow.back()->Send("GET /healthz HTTP/1.1\r\nHost: x\r\n");
  }
  for (int round = 0; round < 3; ++round) {
    for (auto& s : slow) s->Send("X-Slow: y\r\n");
    auto c = NewClient();
    c->set_read_timeout(std::chrono::seconds(2));
    auto r = c->Get("/healthz");
    ASSERT_TRUE(r) << "round " << round << ": " << httplib::to_string(r.error());
    EXPECT_EQ(r->status, 200);
  }
}

TEST_F(ServerTest, ShutdownFinishesWhileAClientTrickles) {
  StartServer();
  RawConn c(server_->port());
  ASSERT_TRUE(c.ok());
  c.Send("POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{");
  std::atomic<bool> done{false};
  std::thread stopper([&] {
    server_->Shutdown();
    done = true;
  });
  // Not a timing of the server: a bound on a hang (the deadlines here are 10 s and more).
  for (int i = 0; i < 500 && !done; ++i) {
    c.Send(" ");
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(done.load()) << "Shutdown still waiting after 5 s of a trickling client";
  stopper.join();
}

}  // namespace
}  // namespace stasis::runtime
