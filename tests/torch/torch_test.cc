// The libtorch adapter end to end: a seeded GPT-2-shaped TorchScript module (mixed dtypes,
// tied weights, a transposed parameter, an int64 buffer) is snapshot, restored without
// deserialising a weight, and must compute bit for bit what the ordinary torch::jit::load
// path computes; images from safetensors come back as tensors; every failure is a Status.
#include "stasis/torch.h"

#include <ATen/detail/CUDAHooksInterface.h>
#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "snapshot/safetensors.h"
#include "stasis/file_system.h"
#include "stasis/image.h"
#include "stasis/restore.h"
#include "stasis/torch_plugin.h"
#include "tests/testutil/test_util.h"
#include "tools/genmodel/gpt2_presets.h"
#include "torch_adapter/archive.h"
#include "torch_adapter/forward.h"
#include "torch_adapter/input_spec.h"
#include "torch_adapter/module_tensors.h"

namespace {

using ::stasis::DefaultFileSystem;
using ::stasis::DType;
using ::stasis::ImageReader;
using ::stasis::ImageWriter;
using ::stasis::RestoredModel;
using ::stasis::RestoreOptions;
using ::stasis::StatusCode;
using ::stasis::testing::RandomBytes;
using ::stasis::testing::ReadFile;
using ::stasis::testing::TempDir;
using ::stasis::testing::TestSeed;
using ::stasis::testing::WriteFile;
using ::testing::HasSubstr;
namespace st = ::stasis::torch;

std::map<std::string, at::Tensor> Tensors(const torch::jit::Module& m) {
  std::map<std::string, at::Tensor> out;
  for (const auto& p : m.named_parameters(true)) out.emplace(p.name, p.value);
  for (const auto& b : m.named_buffers(true)) out.emplace(b.name, b.value);
  return out;
}

// RestoreAndBind's framework: this process's plugin (the test links libstasis_torch.so).
stasis::StatusOr<st::TorchPlugin*> ThisPlugin(const stasis::DeviceSpec&) {
  return stasis_torch_plugin();
}

// The demo's smallest GPT-2 preset.
const ::stasis::Gpt2Preset& Tiny() { return *::stasis::FindGpt2Preset("tiny").value(); }

at::Tensor Forward(torch::jit::Module& m, const std::string& spec) {
  auto parsed = st::ParseInputSpec(spec);
  EXPECT_OK(parsed);
  auto input = st::MakeInput(*parsed, st::ModuleDevice(m));
  EXPECT_OK(input);
  torch::NoGradGuard no_grad;
  return m.forward({*input}).toTensor();
}

// One model and its snapshot for the whole suite (generating and snapshotting take a
// moment; the tests only read them).
class TorchTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    plugin_ = stasis_torch_plugin();
    ASSERT_NE(plugin_, nullptr);
    model_ = dir_->File("gpt2-tiny-mixed.pt");
    image_ = dir_->File("gpt2-tiny-mixed.stasis");
    ASSERT_OK(plugin_->GenerateGpt2(model_, Tiny().shape(), TestSeed(), /*mixed=*/true));
    spec_ = ::stasis::Gpt2InputSpec(Tiny());
    st::TorchSnapshotOptions o;
    o.warmup_input = spec_;
    report_ = new st::TorchSnapshotReport();
    ASSERT_OK(plugin_->SnapshotModule(model_, image_, o, report_));
  }
  static void TearDownTestSuite() {
    delete report_;
    delete dir_;
  }
  void SetUp() override {
    ASSERT_NE(report_, nullptr);
    ASSERT_GT(report_->skeleton_bytes, 0u) << "the suite's snapshot failed";
  }

  static TempDir* dir_;
  static st::TorchPlugin* plugin_;
  static std::string model_, image_, spec_;
  static st::TorchSnapshotReport* report_;
};
TempDir* TorchTest::dir_ = nullptr;
st::TorchPlugin* TorchTest::plugin_ = nullptr;
std::string TorchTest::model_, TorchTest::image_, TorchTest::spec_;
st::TorchSnapshotReport* TorchTest::report_ = nullptr;

TEST_F(TorchTest, PluginEntryPoints) {
  EXPECT_EQ(stasis_torch_plugin_abi(), st::kTorchPluginAbi);
  EXPECT_EQ(stasis_torch_plugin(), plugin_) << "a process-lifetime singleton";
  EXPECT_FALSE(plugin_->TorchVersion().empty());
  EXPECT_EQ(report_->torch_version, plugin_->TorchVersion());
  (void)plugin_->CudaAvailable();  // must not throw, whatever the machine
  EXPECT_TRUE(plugin_->IsTorchScript(model_));
  EXPECT_FALSE(plugin_->IsTorchScript(image_));
  EXPECT_FALSE(plugin_->IsTorchScript(dir_->File("missing.pt")));
}

TEST_F(TorchTest, SnapshotReportAndMetadata) {
  const st::TorchSnapshotReport& r = *report_;
  // tiny: wte, wpe, 2 x (ln_1 2, c_attn 2, c_proj 2, ln_2 2, c_fc 2, mlp.c_proj 2), ln_f 2,
  // lm_head (the alias of wte, listed under its own name).
  EXPECT_EQ(r.parameters, 2u + 2 * 12 + 2 + 1);
  EXPECT_EQ(r.buffers, 1u);
  EXPECT_EQ(r.storages, r.parameters + r.buffers - 1) << "the tied weight is one storage";
  EXPECT_LT(r.stored_bytes, r.tensor_bytes) << "aliases are stored once";
  EXPECT_EQ(r.tensor_bytes - r.stored_bytes, 1000u * 64 * 4) << "exactly lm_head's bytes";
  EXPECT_GT(r.writer.file_size, r.stored_bytes / 4);

  auto reader = ImageReader::Open(image_);
  ASSERT_OK(reader);
  const auto& m = (*reader)->manifest();
  ASSERT_NE(m.FindMetadata(st::kModelKindKey), nullptr);
  EXPECT_EQ(*m.FindMetadata(st::kModelKindKey), "torchscript");
  ASSERT_NE(m.FindMetadata(st::kTorchVersionKey), nullptr);
  EXPECT_EQ(*m.FindMetadata(st::kTorchVersionKey), plugin_->TorchVersion());
  ASSERT_NE(m.FindMetadata(st::kTorchDeviceKey), nullptr);
  EXPECT_EQ(*m.FindMetadata(st::kTorchDeviceKey), "cpu");
  ASSERT_NE(m.FindMetadata(st::kTorchInputSpecKey), nullptr);
  EXPECT_EQ(*m.FindMetadata(st::kTorchInputSpecKey), spec_);
  ASSERT_NE(m.FindMetadata("torch.module_path"), nullptr);
  EXPECT_EQ(*m.FindMetadata("torch.module_path"), "gpt2-tiny-mixed.pt");
  const auto* section = m.FindSection(st::kSkeletonSection);
  ASSERT_NE(section, nullptr);
  EXPECT_EQ(section->size, r.skeleton_bytes);
  EXPECT_EQ(m.RawBytes(), r.writer.raw_bytes);
  EXPECT_EQ(m.tensors.size(), r.parameters + r.buffers);
}

TEST_F(TorchTest, RestoredModuleComputesExactlyWhatTheOrdinaryLoadComputes) {
  auto ordinary = plugin_->LoadModule(model_);
  ASSERT_OK(ordinary);
  auto expected = (*ordinary)->Run(spec_);
  ASSERT_OK(expected);
  EXPECT_EQ(expected->dtype, "F32");
  EXPECT_EQ(expected->shape, (std::vector<int64_t>{1, 32, 1000}));

  auto restored = st::RestoreModule(image_);
  ASSERT_OK(restored);
  auto got = st::RunModule(restored->module, spec_);
  ASSERT_OK(got);
  EXPECT_EQ(got->xxh3, expected->xxh3);
  EXPECT_EQ(got->dtype, expected->dtype);
  EXPECT_EQ(got->shape, expected->shape);

  auto loaded = st::LoadTorchScript(model_);
  ASSERT_OK(loaded);
  at::Tensor a = Forward(*loaded, spec_);
  at::Tensor b = Forward(restored->module, spec_);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_GT(a.abs().sum().item<double>(), 0.0);
}

TEST_F(TorchTest, RestoredWeightsKeepAliasingStridesAndDtypes) {
  auto restored = st::RestoreModule(image_);
  ASSERT_OK(restored);
  auto loaded = st::LoadTorchScript(model_);
  ASSERT_OK(loaded);
  auto want = Tensors(*loaded);
  auto got = Tensors(restored->module);
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, w] : want) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(got.count(name));
    const at::Tensor& g = got.at(name);
    EXPECT_EQ(g.scalar_type(), w.scalar_type());
    EXPECT_EQ(g.sizes(), w.sizes());
    EXPECT_EQ(g.strides(), w.strides());
    EXPECT_EQ(g.is_contiguous(), w.is_contiguous());
    EXPECT_TRUE(torch::equal(g, w));
  }
  // Tied weights: one storage, same address.
  EXPECT_EQ(got.at("lm_head.weight").data_ptr(), got.at("wte.weight").data_ptr());
  EXPECT_TRUE(got.at("lm_head.weight").is_alias_of(got.at("wte.weight")));
  // The transposed parameter: still a transpose.
  const at::Tensor& t = got.at("h0.attn.c_attn.weight");
  EXPECT_FALSE(t.is_contiguous());
  EXPECT_EQ(t.sizes(), (at::IntArrayRef{64, 192}));
  EXPECT_EQ(t.strides(), (at::IntArrayRef{1, 64}));
  // Mixed dtypes and the int64 buffer.
  EXPECT_EQ(got.at("wpe.weight").scalar_type(), at::kBFloat16);
  EXPECT_EQ(got.at("h0.ln_1.weight").scalar_type(), at::kHalf);
  EXPECT_EQ(got.at("wte.weight").scalar_type(), at::kFloat);
  EXPECT_EQ(got.at("position_ids").scalar_type(), at::kLong);
  EXPECT_TRUE(torch::equal(got.at("position_ids"), torch::arange(64, torch::kLong)));
  // Every weight is a view of restored memory.
  const auto& regions = restored->restored->regions();
  ASSERT_EQ(regions.size(), 1u);
  for (const auto& [name, g] : got) {
    const auto p = reinterpret_cast<uintptr_t>(g.data_ptr());
    EXPECT_GE(p, regions[0].address) << name;
    EXPECT_LT(p, regions[0].address + regions[0].size) << name;
  }
}

TEST_F(TorchTest, BindReportShowsNoWeightWasDeserialised) {
  auto restored = st::RestoreModule(image_);
  ASSERT_OK(restored);
  const st::BindReport& b = restored->bind;
  EXPECT_EQ(b.nonempty_before_binding, 0u);
  EXPECT_EQ(b.parameters_bound, report_->parameters);
  EXPECT_EQ(b.buffers_bound, report_->buffers);
  EXPECT_GT(b.skeleton_load_seconds, 0.0);
  EXPECT_GE(b.bind_seconds, 0.0);
}

TEST_F(TorchTest, RestoreReadsEveryStoredByteOnce) {
  auto restored = st::RestoreModule(image_);
  ASSERT_OK(restored);
  const auto& m = restored->restored->manifest();
  const auto& r = restored->restored->report();
  EXPECT_EQ(r.chunks, m.chunks.size());
  EXPECT_EQ(r.stored_bytes, m.StoredBytes());
  EXPECT_EQ(r.raw_bytes, m.RawBytes());
}

// Records every read, to prove that a restore reads each stored byte exactly once.
class CountingFileSystem final : public stasis::FileSystemWrapper {
 public:
  struct Read {
    uint64_t offset, n;
  };
  CountingFileSystem() : FileSystemWrapper(DefaultFileSystem()) {}
  stasis::StatusOr<std::unique_ptr<stasis::RandomAccessFile>> OpenRandomAccess(
      const std::string& p) override {
    auto f = target()->OpenRandomAccess(p);
    if (!f.ok()) return f.status();
    return std::unique_ptr<stasis::RandomAccessFile>(new File(std::move(*f), this));
  }
  std::vector<Read> reads() {
    std::lock_guard<std::mutex> l(mu_);
    return reads_;
  }

 private:
  class File final : public stasis::RandomAccessFile {
   public:
    File(std::unique_ptr<stasis::RandomAccessFile> f, CountingFileSystem* fs)
        : f_(std::move(f)), fs_(fs) {}
    stasis::StatusOr<size_t> ReadAt(uint64_t offset, size_t n, void* dst) const override {
      auto r = f_->ReadAt(offset, n, dst);
      if (r.ok()) {
        std::lock_guard<std::mutex> l(fs_->mu_);
        fs_->reads_.push_back({offset, *r});
      }
      return r;
    }
    uint64_t Size() const override { return f_->Size(); }

   private:
    std::unique_ptr<stasis::RandomAccessFile> f_;
    CountingFileSystem* fs_;
  };
  std::mutex mu_;
  std::vector<Read> reads_;
};

TEST_F(TorchTest, RestoreModuleReadsEachStoredByteExactlyOnce) {
  CountingFileSystem fs;
  RestoreOptions o;
  o.fs = &fs;
  auto restored = st::RestoreModule(image_, o);
  ASSERT_OK(restored);
  const auto& m = restored->restored->manifest();
  uint64_t chunk_bytes_read = 0;
  for (const auto& r : fs.reads()) {
    for (const auto& c : m.chunks) {
      const uint64_t b = std::max(r.offset, c.file_offset);
      const uint64_t e = std::min(r.offset + r.n, c.file_offset + c.stored_size);
      if (b < e) chunk_bytes_read += e - b;
    }
  }
  EXPECT_EQ(chunk_bytes_read, m.StoredBytes());
  auto got = st::RunModule(restored->module, spec_);
  ASSERT_OK(got);
}

TEST_F(TorchTest, MemoryOutlivesTheBoundModuleHandle) {
  auto restored = st::RestoreModule(image_);
  ASSERT_OK(restored);
  auto before = st::RunModule(restored->module, spec_);
  ASSERT_OK(before);
  torch::jit::Module module = restored->module;
  std::weak_ptr<RestoredModel> weak = restored->restored;
  restored->restored.reset();
  EXPECT_FALSE(weak.expired()) << "the bound storages keep the restored memory alive";
  auto after = st::RunModule(module, spec_);
  ASSERT_OK(after);
  EXPECT_EQ(after->xxh3, before->xxh3);
}

TEST_F(TorchTest, UnloadReloadKeepsBoundTensorsValid) {
  auto restored = st::RestoreModule(image_);
  ASSERT_OK(restored);
  auto before = st::RunModule(restored->module, spec_);
  ASSERT_OK(before);
  ASSERT_OK(restored->restored->Unload());
  ASSERT_OK(restored->restored->Reload());
  auto after = st::RunModule(restored->module, spec_);
  ASSERT_OK(after);
  EXPECT_EQ(after->xxh3, before->xxh3);
}

TEST_F(TorchTest, RestoreAndBindThroughThePluginMatchesLoadModule) {
  auto cold = st::RestoreAndBind(image_, {}, ThisPlugin);
  ASSERT_OK(cold);
  EXPECT_EQ(cold->plugin, plugin_);
  EXPECT_EQ(cold->bind.nonempty_before_binding, 0u);
  EXPECT_EQ(cold->bind.parameters_bound, report_->parameters);
  EXPECT_LE(cold->started_ns, cold->framework_loaded_ns);
  EXPECT_LE(cold->started_ns, cold->restored_ns);
  EXPECT_LE(std::max(cold->framework_loaded_ns, cold->restored_ns), cold->bound_ns);

  auto ordinary = plugin_->LoadModule(model_);
  ASSERT_OK(ordinary);
  auto want = (*ordinary)->Run(spec_);
  auto got = cold->module->Run(spec_);
  ASSERT_OK(want);
  ASSERT_OK(got);
  EXPECT_EQ(got->xxh3, want->xxh3);
  // The bytes the weights span, the same on both paths (not the region, which may include
  // alignment gaps: none here, since small storages are packed at their natural alignment).
  EXPECT_EQ(cold->module->WeightBytes(), (*ordinary)->WeightBytes());
  EXPECT_LE(cold->module->WeightBytes(), cold->restored->regions()[0].size);
  EXPECT_EQ((*ordinary)->WeightBytes(), report_->stored_bytes);
  EXPECT_OK(cold->module->ToDevice("cpu"));
  EXPECT_OK((*ordinary)->ToDevice("cpu"));
}

// Opens `image` the first time it is asked for, `other` every time after: an image
// replaced by a rename between two opens.
class ReplacingFileSystem final : public ::stasis::FileSystemWrapper {
 public:
  ReplacingFileSystem(std::string image, std::string other)
      : FileSystemWrapper(DefaultFileSystem()),
        image_(std::move(image)),
        other_(std::move(other)) {}
  ::stasis::StatusOr<std::unique_ptr<::stasis::RandomAccessFile>> OpenRandomAccess(
      const std::string& p) override {
    const bool replaced = p == image_ && opens_++ > 0;
    return FileSystemWrapper::OpenRandomAccess(replaced ? other_ : p);
  }

 private:
  std::string image_, other_;
  int opens_ = 0;
};

TEST_F(TorchTest, RestoreAndBindRefusesAnImageReplacedMeanwhile) {
  // Another module (f32 only): its skeleton differs from the suite's mixed one.
  const std::string model = dir_->File("replacement.pt");
  const std::string other = dir_->File("replacement.stasis");
  ASSERT_OK(plugin_->GenerateGpt2(model, Tiny().shape(), TestSeed() + 2, /*mixed=*/false));
  ASSERT_OK(plugin_->SnapshotModule(model, other, {}, nullptr));
  ReplacingFileSystem fs(image_, other);
  st::ColdStartOptions o;
  o.restore.fs = &fs;
  EXPECT_THAT(st::RestoreAndBind(image_, o, ThisPlugin),
              StatusIs(StatusCode::kAborted, HasSubstr("replaced while it was being restored")));
}

TEST_F(TorchTest, RestoreAndBindReportsTheFrameworkFailingAndWaitsForTheRestore) {
  std::atomic<bool> restore_started{false};
  auto failing = [&](const ::stasis::DeviceSpec&) -> ::stasis::StatusOr<st::TorchPlugin*> {
    return ::stasis::FailedPreconditionError("no framework here");
  };
  EXPECT_THAT(st::RestoreAndBind(image_, {}, failing),
              StatusIs(StatusCode::kFailedPrecondition, HasSubstr("no framework here")));
  EXPECT_THAT(st::RestoreWhileLoading(image_, {}, failing),
              StatusIs(StatusCode::kFailedPrecondition, HasSubstr("no framework here")));
  // A loader that throws while the restore's thread runs: a Status, not std::terminate.
  auto throwing = [](const ::stasis::DeviceSpec&) -> ::stasis::StatusOr<st::TorchPlugin*> {
    throw std::runtime_error("no framework at all");
  };
  EXPECT_THAT(st::RestoreAndBind(image_, {}, throwing),
              StatusIs(StatusCode::kInternal, HasSubstr("threw: no framework at all")));
  // framework_first: a framework that fails means no restore at all.
  st::ColdStartOptions first;
  first.framework_first = true;
  first.restore.fault_hook = [&](uint64_t, uint64_t, int64_t result) {
    restore_started = true;
    return result;
  };
  first.restore.fs = DefaultFileSystem();  // reads through the seam, where the hook sees them
  EXPECT_FALSE(st::RestoreWhileLoading(image_, first, failing).ok());
  EXPECT_FALSE(restore_started.load());
}

TEST_F(TorchTest, RestoreAndBindYieldsIoOnlyWhileTheFrameworkLoads) {
  std::atomic<bool> loading{false};
  bool seen_while_loading = false;
  auto load = [&](const ::stasis::DeviceSpec&) -> ::stasis::StatusOr<st::TorchPlugin*> {
    seen_while_loading = loading.load();
    return plugin_;
  };
  st::ColdStartOptions o;
  o.loading_framework = &loading;
  auto cold = st::RestoreAndBind(image_, o, load);
  ASSERT_OK(cold);
  EXPECT_TRUE(seen_while_loading) << "the restore's reads yield while the framework loads";
  EXPECT_FALSE(loading.load()) << "and not after";
  // framework_first: loaded before the restore, nothing to yield to.
  o.framework_first = true;
  seen_while_loading = true;
  ASSERT_OK(st::RestoreAndBind(image_, o, load));
  EXPECT_FALSE(seen_while_loading);
}

TEST_F(TorchTest, PlainF32ModelRoundTrips) {
  const std::string model = dir_->File("plain.pt"), image = dir_->File("plain.stasis");
  ASSERT_OK(plugin_->GenerateGpt2(model, Tiny().shape(), TestSeed() + 1, /*mixed=*/false));
  st::TorchSnapshotReport r;
  ASSERT_OK(plugin_->SnapshotModule(model, image, {}, &r));  // no warmup
  auto reader = ImageReader::Open(image);
  ASSERT_OK(reader);
  EXPECT_EQ((*reader)->manifest().FindMetadata(st::kTorchInputSpecKey), nullptr);
  auto ordinary = plugin_->LoadModule(model);
  ASSERT_OK(ordinary);
  auto want = (*ordinary)->Run(spec_);
  ASSERT_OK(want);
  auto restored = st::RestoreModule(image);
  ASSERT_OK(restored);
  auto got = st::RunModule(restored->module, spec_);
  ASSERT_OK(got);
  EXPECT_EQ(got->xxh3, want->xxh3);
  for (const auto& [name, t] : Tensors(restored->module))
    if (t.is_floating_point()) {
      EXPECT_EQ(t.scalar_type(), at::kFloat) << name;
    }
}

// Modules built here: a storage offset, bool/f64/scalar/zero-size tensors, no weights at
// all; and a dtype the image format cannot hold.
TEST_F(TorchTest, EdgeModulesRoundTrip) {
  auto round_trip = [&](const std::string& name, torch::jit::Module m) {
    SCOPED_TRACE(name);
    const std::string model = dir_->File(name + ".pt"), image = dir_->File(name + ".stasis");
    m.save(model);
    st::TorchSnapshotOptions o;
    o.warmup_input = "f32:2x3";
    st::TorchSnapshotReport r;
    ASSERT_OK(plugin_->SnapshotModule(model, image, o, &r));
    auto restored = st::RestoreModule(image);
    ASSERT_OK(restored);
    auto ordinary = st::LoadTorchScript(model);
    ASSERT_OK(ordinary);
    EXPECT_EQ(restored->bind.parameters_bound, r.parameters);
    EXPECT_EQ(restored->bind.buffers_bound, r.buffers);
    auto want = Tensors(*ordinary);
    auto got = Tensors(restored->module);
    ASSERT_EQ(got.size(), want.size());
    for (const auto& [n, w] : want) {
      ASSERT_TRUE(got.count(n)) << n;
      EXPECT_EQ(got.at(n).scalar_type(), w.scalar_type()) << n;
      EXPECT_EQ(got.at(n).strides(), w.strides()) << n;
      EXPECT_TRUE(torch::equal(got.at(n), w)) << n;
    }
    at::Tensor a = Forward(*ordinary, "f32:2x3"), b = Forward(restored->module, "f32:2x3");
    EXPECT_TRUE(torch::equal(a, b));
  };
  {
    torch::jit::Module m("NoWeights");
    m.define("def forward(self, x):\n  return x * 2\n");
    round_trip("noweights", m);
  }
  {
    torch::jit::Module m("Edge");
    m.register_parameter("empty", torch::zeros({0}), false);
    m.register_parameter("d", torch::arange(6, torch::kDouble).reshape({2, 3}), false);
    m.register_buffer("mask", torch::arange(6).reshape({2, 3}).remainder(2).to(torch::kBool));
    m.register_buffer("scalar", torch::tensor(3.0f));
    // A view at storage offset 3 of a larger storage.
    m.register_parameter("slice", torch::arange(20, torch::kFloat).narrow(0, 3, 6).reshape({2, 3}),
                         false);
    m.define(
        "def forward(self, x):\n"
        "  return (x.double() + self.d).float() * self.mask.float() + self.scalar + self.slice"
        " + self.empty.sum()\n");
    round_trip("edge", m);
  }
  {
    torch::jit::Module m("Complex128");
    m.register_parameter("c", torch::zeros({2}, torch::kComplexDouble), false);
    m.define("def forward(self, x):\n  return x\n");
    const std::string model = dir_->File("c128.pt");
    m.save(model);
    st::TorchSnapshotReport r;
    EXPECT_THAT(plugin_->SnapshotModule(model, dir_->File("c128.stasis"), {}, &r),
                StatusIs(StatusCode::kInvalidArgument, HasSubstr("tensor 'c'")));
    EXPECT_FALSE(DefaultFileSystem()->Exists(dir_->File("c128.stasis")));
  }
}

// Weights that no parameter or buffer reaches would stay in the skeleton and be
// deserialised on every cold start: the snapshot refuses them, and writes nothing.
TEST_F(TorchTest, WeightsOutsideParametersAndBuffersAreRefused) {
  auto expect_refused = [&](const std::string& name, torch::jit::Module m, const std::string& why) {
    SCOPED_TRACE(name);
    const std::string model = dir_->File(name + ".pt"), image = dir_->File(name + ".stasis");
    m.save(model);
    st::TorchSnapshotReport r;
    EXPECT_THAT(plugin_->SnapshotModule(model, image, {}, &r),
                StatusIs(StatusCode::kFailedPrecondition, HasSubstr(why)));
    EXPECT_FALSE(DefaultFileSystem()->Exists(image));
  };
  const at::Tensor big = torch::ones({1 << 19});  // 2 MiB of f32
  {
    torch::jit::Module m("Attribute");
    m.register_parameter("w", torch::ones({4}), false);
    m.register_attribute("table", c10::TensorType::get(), big);
    m.define("def forward(self, x):\n  return x * self.w.sum() + self.table.sum()\n");
    expect_refused("attr", m, "table");
  }
  {
    torch::jit::Module m("Frozen");
    m.register_parameter("w", big, false);
    m.define("def forward(self, x):\n  return x + self.w\n");  // nothing to fold away
    m.eval();
    expect_refused("frozen", torch::jit::freeze(m), "freeze");
  }
}

TEST_F(TorchTest, RestoreTensorsOfASafetensorsImage) {
  const uint64_t seed = TestSeed();
  struct Item {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    at::ScalarType type;
    std::vector<uint8_t> bytes;
  };
  std::vector<Item> items = {
    {"a.f32", DType::kF32, {17, 5}, at::kFloat, {}},
    {"b.bf16", DType::kBF16, {3, 7, 2}, at::kBFloat16, {}},
    {"c.f16", DType::kF16, {9}, at::kHalf, {}},
    {"d.i64", DType::kI64, {4, 4}, at::kLong, {}},
    {"e.u8", DType::kU8, {13}, at::kByte, {}},
    {"f.scalar", DType::kF64, {}, at::kDouble, {}},
    {"g.empty", DType::kI32, {0, 3}, at::kInt, {}},
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 7)
    // Types libtorch 1.13 lacks (compared by bytes: torch::equal has no float8 kernel).
    {"h.f8e4m3", DType::kF8E4M3, {6}, at::ScalarType::Float8_e4m3fn, {}},
    {"i.f8e5m2", DType::kF8E5M2, {2, 3}, at::ScalarType::Float8_e5m2, {}},
    {"j.u16", DType::kU16, {5}, at::ScalarType::UInt16, {}},
#endif
  };
  std::vector<stasis::SafetensorsTensorOut> out;
  for (size_t i = 0; i < items.size(); ++i) {
    Item& it = items[i];
    int64_t n = 1;
    for (int64_t d : it.shape) n *= d;
    it.bytes = RandomBytes(n * stasis::DTypeBits(it.dtype) / 8, seed + i);
    if (it.dtype == DType::kF32 || it.dtype == DType::kF64 || it.dtype == DType::kBF16 ||
        it.dtype == DType::kF16) {
      // Random bits may be NaN, and NaN != NaN in torch::equal: clear the exponent's top bit.
      const size_t w = stasis::DTypeBits(it.dtype) / 8;
      for (size_t k = w - 1; k < it.bytes.size(); k += w) it.bytes[k] &= 0x3f;
    }
    out.push_back({it.name, it.dtype, it.shape, it.bytes.data(), it.bytes.size()});
  }
  const std::string st_path = dir_->File("t.safetensors"), image = dir_->File("t.stasis");
  ASSERT_OK(stasis::WriteSafetensors(DefaultFileSystem(), st_path, out, {}, false));
  {
    auto w = ImageWriter::Create(image, {});
    ASSERT_OK(w);
    ASSERT_OK(stasis::ImportSafetensors(DefaultFileSystem(), st_path, w->get()));
    ASSERT_OK((*w)->Finish());
  }
  auto tensors = st::RestoreTensors(image);
  ASSERT_OK(tensors);
  ASSERT_EQ(tensors->size(), items.size());
  std::map<std::string, at::Tensor> by_name(tensors->begin(), tensors->end());
  for (Item& it : items) {
    SCOPED_TRACE(it.name);
    ASSERT_TRUE(by_name.count(it.name));
    const at::Tensor& t = by_name.at(it.name);
    EXPECT_EQ(t.scalar_type(), it.type);
    EXPECT_EQ(t.sizes(), at::IntArrayRef(it.shape));
    EXPECT_TRUE(t.is_contiguous());
    ASSERT_EQ(t.nbytes(), it.bytes.size());
    if (!it.bytes.empty()) {
      EXPECT_EQ(std::memcmp(t.data_ptr(), it.bytes.data(), it.bytes.size()), 0);
    }
    if (it.dtype == DType::kF8E4M3 || it.dtype == DType::kF8E5M2 || it.dtype == DType::kU16)
      continue;
    at::Tensor want = torch::from_blob(it.bytes.data(), it.shape, at::TensorOptions(it.type));
    EXPECT_TRUE(torch::equal(t, want));
  }
  // All views of one storage over the region, which they keep alive.
  EXPECT_TRUE(by_name.at("a.f32").is_alias_of(by_name.at("d.i64")));
  tensors->clear();
  EXPECT_TRUE(torch::equal(by_name.at("a.f32"),
                           torch::from_blob(items[0].bytes.data(), {17, 5}, at::kFloat)));

  // A safetensors image has no skeleton: RestoreModule says so.
  auto module = st::RestoreModule(image);
  EXPECT_THAT(module, StatusIs(StatusCode::kFailedPrecondition, HasSubstr("skeleton")));

  // A skeleton bound to memory that lacks its weights: the missing name is reported.
  auto memory = RestoredModel::Restore(image, RestoreOptions{});
  ASSERT_OK(memory);
  std::shared_ptr<RestoredModel> shared(std::move(*memory));
  auto reader = ImageReader::Open(image_);
  ASSERT_OK(reader);
  auto skeleton = (*reader)->ReadSection(st::kSkeletonSection);
  ASSERT_OK(skeleton);
  st::BindReport bind;
  EXPECT_THAT(plugin_->BindModule(*skeleton, *shared, shared, &bind),
              StatusIs(StatusCode::kFailedPrecondition, HasSubstr("is not in the image")));
}

TEST_F(TorchTest, RestoreTensorsOfATorchScriptImageKeepsViews) {
  auto tensors = st::RestoreTensors(image_);
  ASSERT_OK(tensors);
  std::map<std::string, at::Tensor> got(tensors->begin(), tensors->end());
  auto loaded = st::LoadTorchScript(model_);
  ASSERT_OK(loaded);
  auto want = Tensors(*loaded);
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, w] : want) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(got.count(name));
    EXPECT_EQ(got.at(name).strides(), w.strides());
    EXPECT_TRUE(torch::equal(got.at(name), w));
  }
  EXPECT_EQ(got.at("lm_head.weight").data_ptr(), got.at("wte.weight").data_ptr());
}

TEST_F(TorchTest, HostTensorImageWithViewsRestoresAsViews) {
  // SnapshotHostTensors: a storage with a slice and a transposed view of it.
  at::Tensor base = torch::arange(48, torch::kFloat).reshape({6, 8});
  at::Tensor slice = base.narrow(0, 2, 3);
  at::Tensor transposed = base.t();
  auto host = [](const std::string& name, const at::Tensor& t) {
    stasis::HostTensor h;
    h.name = name;
    h.dtype = DType::kF32;
    h.shape.assign(t.sizes().begin(), t.sizes().end());
    h.strides.assign(t.strides().begin(), t.strides().end());
    h.storage = t.storage().data();
    h.storage_bytes = t.storage().nbytes();
    h.byte_offset = t.storage_offset() * t.element_size();
    return h;
  };
  const std::string image = dir_->File("views.stasis");
  ASSERT_OK(stasis::SnapshotHostTensors(
      {host("base", base), host("slice", slice), host("transposed", transposed)}, {}, image, {}));
  auto tensors = st::RestoreTensors(image);
  ASSERT_OK(tensors);
  std::map<std::string, at::Tensor> got(tensors->begin(), tensors->end());
  EXPECT_TRUE(torch::equal(got.at("base"), base));
  EXPECT_TRUE(torch::equal(got.at("slice"), slice));
  EXPECT_TRUE(torch::equal(got.at("transposed"), transposed));
  EXPECT_EQ(got.at("slice").storage_offset(), 16);
  EXPECT_EQ(got.at("transposed").strides(), (at::IntArrayRef{1, 8}));
  EXPECT_EQ(got.at("slice").data_ptr<float>(), got.at("base").data_ptr<float>() + 16);
  // Writes through one view show through the others: one memory.
  got.at("base")[3][0] = -1.0f;
  EXPECT_EQ(got.at("slice")[1][0].item<float>(), -1.0f);
  EXPECT_EQ(got.at("transposed")[0][3].item<float>(), -1.0f);
}

TEST_F(TorchTest, NotTorchScriptIsInvalidArgument) {
  const std::string text = dir_->File("notes.txt");
  WriteFile(text, "not a model at all\n");
  st::TorchSnapshotReport r;
  EXPECT_THAT(plugin_->SnapshotModule(text, dir_->File("x.stasis"), {}, &r),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("is not a TorchScript archive")));
  EXPECT_THAT(plugin_->LoadModule(text),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("is not a TorchScript archive")));
  EXPECT_FALSE(plugin_->IsTorchScript(text));
  // A zip header with garbage after it: no central directory.
  const std::string fake_zip = dir_->File("fake.pt");
  std::string bytes = "PK\x03\x04";
  for (uint8_t b : RandomBytes(4096, TestSeed())) bytes.push_back(static_cast<char>(b));
  WriteFile(fake_zip, bytes);
  EXPECT_THAT(plugin_->LoadModule(fake_zip),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("is not a TorchScript archive")));
  // A stasis image is not a module either.
  EXPECT_THAT(plugin_->LoadModule(image_), StatusIs(StatusCode::kInvalidArgument, HasSubstr("")));
  // A missing file.
  EXPECT_THAT(plugin_->SnapshotModule(dir_->File("missing.pt"), dir_->File("y.stasis"), {}, &r),
              StatusIs(StatusCode::kNotFound, HasSubstr("")));
  EXPECT_THAT(plugin_->LoadModule(dir_->File("missing.pt")),
              StatusIs(StatusCode::kNotFound, HasSubstr("")));
  EXPECT_FALSE(DefaultFileSystem()->Exists(dir_->File("x.stasis")));
  EXPECT_FALSE(DefaultFileSystem()->Exists(dir_->File("y.stasis")));
}

TEST_F(TorchTest, UnavailableDeviceIsAStatus) {
  const bool cuda7 = plugin_->CudaAvailable() && torch::cuda::device_count() > 7;
  if (cuda7) GTEST_SKIP() << "this machine has a cuda:7";
  auto ordinary = plugin_->LoadModule(model_);
  ASSERT_OK(ordinary);
  EXPECT_FALSE((*ordinary)->ToDevice("cuda:7").ok());
  EXPECT_THAT((*ordinary)->ToDevice("tpu"),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("tpu")));
  auto still = (*ordinary)->Run(spec_);
  EXPECT_OK(still) << "a failed move leaves the module usable";

  st::TorchSnapshotOptions o;
  o.device = "cuda:7";
  st::TorchSnapshotReport r;
  EXPECT_FALSE(plugin_->SnapshotModule(model_, dir_->File("cuda7.stasis"), o, &r).ok());
  EXPECT_FALSE(DefaultFileSystem()->Exists(dir_->File("cuda7.stasis")));

  RestoreOptions ro;
  auto device = stasis::ParseDeviceSpec("cuda:7");
  ASSERT_OK(device);
  ro.device = *device;
  EXPECT_FALSE(st::RestoreModule(image_, ro).ok());
  EXPECT_FALSE(st::RestoreTensors(image_, ro).ok());
}

constexpr char kCudaChildEnv[] = "STASIS_TORCH_CUDA_CHILD";  // "model.pt|image.stasis|spec"

bool LibtorchCudaMapped() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line))
    if (line.find("libtorch_cuda") != std::string::npos) return true;
  return false;
}

// Run only as a child of CpuWorkNeverLoadsLibtorchCuda, in a fresh process: everything a
// CPU cold start does (ordinary load and run, restore and bind and run), then the CUDA
// part, which must still take effect (ATen caches its CUDA hooks on first use).
TEST(TorchCudaChild, CpuWorkThenCudaSupport) {
  const char* env = ::getenv(kCudaChildEnv);
  if (env == nullptr) GTEST_SKIP() << "runs only as a child of CpuWorkNeverLoadsLibtorchCuda";
  const std::string args = env;
  const size_t a = args.find('|'), b = args.rfind('|');
  ASSERT_TRUE(a != std::string::npos && b > a) << args;
  const std::string model = args.substr(0, a), image = args.substr(a + 1, b - a - 1),
                    spec = args.substr(b + 1);
  st::TorchPlugin* plugin = stasis_torch_plugin();
  ASSERT_OK(plugin->LoadDeviceSupport("cpu"));
  auto ordinary = plugin->LoadModule(model);
  ASSERT_OK(ordinary);
  ASSERT_OK((*ordinary)->ToDevice("cpu"));
  ASSERT_OK((*ordinary)->Run(spec));
  auto restored = st::RestoreModule(image, RestoreOptions{});
  ASSERT_OK(restored);
  ASSERT_OK(st::RunModule(restored->module, spec));
  std::printf("STASIS_CHILD cpu_work_mapped_libtorch_cuda=%d\n", LibtorchCudaMapped() ? 1 : 0);

  const stasis::Status cuda = st::LoadCudaSupport();
  if (!cuda.ok()) {
    std::printf("STASIS_CHILD no_cuda_part (%s)\n", cuda.ToString().c_str());
  } else {
    std::printf("STASIS_CHILD cuda_part mapped=%d hooks=%d\n", LibtorchCudaMapped() ? 1 : 0,
                at::detail::getCUDAHooks().hasCUDART() ? 1 : 0);
  }
  std::fflush(stdout);
}

TEST_F(TorchTest, CpuWorkNeverLoadsLibtorchCuda) {
  const stasis::testing::CommandResult child = stasis::testing::RunThisTestBinary(
      std::string(kCudaChildEnv) + "='" + model_ + "|" + image_ + "|" + spec_ + "'",
      "TorchCudaChild.CpuWorkThenCudaSupport");
  const std::string& output = child.out;
  ASSERT_EQ(child.exit_code, 0) << output;
  EXPECT_THAT(output, HasSubstr("STASIS_CHILD cpu_work_mapped_libtorch_cuda=0")) << output;
  if (output.find("STASIS_CHILD no_cuda_part") != std::string::npos)
    GTEST_SKIP() << "this libtorch has no CUDA part (the CPU half of the test passed)";
  // Loaded late, it still registered its hooks: CUDA works in this process.
  EXPECT_THAT(output, HasSubstr("STASIS_CHILD cuda_part mapped=1 hooks=1")) << output;
}

TEST_F(TorchTest, CorruptedSkeletonIsDataLoss) {
  std::string bytes = ReadFile(image_);
  auto reader = ImageReader::Open(image_);
  ASSERT_OK(reader);
  const auto* section = (*reader)->manifest().FindSection(st::kSkeletonSection);
  ASSERT_NE(section, nullptr);
  ASSERT_LE(section->file_offset + section->size, bytes.size());
  bytes[section->file_offset + section->size / 2] ^= 0x20;
  const std::string bad = dir_->File("flipped.stasis");
  WriteFile(bad, bytes);
  EXPECT_THAT(st::RestoreModule(bad), StatusIs(StatusCode::kDataLoss, HasSubstr("")));
}

TEST_F(TorchTest, BadSkeletonsAreRejected) {
  RestoreOptions o;
  auto memory = RestoredModel::Restore(image_, o);
  ASSERT_OK(memory);
  std::shared_ptr<RestoredModel> shared(std::move(*memory));
  st::BindReport bind;
  // Not an archive at all.
  EXPECT_THAT(plugin_->BindModule("garbage", *shared, shared, &bind),
              StatusIs(StatusCode::kDataLoss, HasSubstr("skeleton section does not load")));
  // A module that still holds its weights is no skeleton.
  const std::string full = ReadFile(model_);
  EXPECT_THAT(plugin_->BindModule(full, *shared, shared, &bind),
              StatusIs(StatusCode::kFailedPrecondition, HasSubstr("must hold no weights")));
  EXPECT_EQ(bind.nonempty_before_binding, report_->parameters + report_->buffers);
}

TEST_F(TorchTest, BadInputSpecsAndForwardErrorsAreStatuses) {
  auto ordinary = plugin_->LoadModule(model_);
  ASSERT_OK(ordinary);
  for (const char* spec : {"", "i64", "i64:", "x:1x2", "i64:1x0", "i64:1xx2", "i64:1x2:0",
                           "f32:1x2:5", "i64:1x2:3:4", "i64:1x99999999999"}) {
    EXPECT_THAT((*ordinary)->Run(spec), StatusIs(StatusCode::kInvalidArgument, HasSubstr("")))
        << spec;
  }
  // Parses, but the model rejects it (longer than its context; floats for token ids).
  EXPECT_THAT((*ordinary)->Run("i64:1x100:1000"),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("forward()")));
  EXPECT_THAT((*ordinary)->Run("f32:1x8"), StatusIs(StatusCode::kInvalidArgument, HasSubstr("")));
  st::TorchSnapshotOptions o;
  o.warmup_input = "i64:1x100:1000";
  st::TorchSnapshotReport r;
  EXPECT_THAT(plugin_->SnapshotModule(model_, dir_->File("w.stasis"), o, &r),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("warmup")));
  EXPECT_FALSE(DefaultFileSystem()->Exists(dir_->File("w.stasis")));
}

TEST_F(TorchTest, InputSpecIsDeterministic) {
  auto spec = st::ParseInputSpec("i64:2x3:7");
  ASSERT_OK(spec);
  EXPECT_EQ(spec->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(spec->high, 7);
  auto a = st::MakeInput(*spec, c10::Device(at::kCPU));
  auto b = st::MakeInput(*spec, c10::Device(at::kCPU));
  ASSERT_OK(a);
  ASSERT_OK(b);
  EXPECT_TRUE(torch::equal(*a, *b));
  EXPECT_GE(a->min().item<int64_t>(), 0);
  EXPECT_LT(a->max().item<int64_t>(), 7);
  for (const char* s : {"f32:4x5", "bf16:3", "f16:2x2", "i32:9:2"}) {
    auto p = st::ParseInputSpec(s);
    ASSERT_OK(p) << s;
    auto x = st::MakeInput(*p, c10::Device(at::kCPU));
    ASSERT_OK(x) << s;
    EXPECT_TRUE(torch::equal(*x, *st::MakeInput(*p, c10::Device(at::kCPU)))) << s;
  }
  auto f = st::MakeInput(*st::ParseInputSpec("f32:4096"), c10::Device(at::kCPU));
  ASSERT_OK(f);
  EXPECT_NEAR(f->mean().item<double>(), 0.0, 0.1);
  EXPECT_NEAR(f->std().item<double>(), 1.0, 0.1);
}

TEST_F(TorchTest, ExistingImageIsNotOverwritten) {
  st::TorchSnapshotReport r;
  EXPECT_THAT(plugin_->SnapshotModule(model_, image_, {}, &r),
              StatusIs(StatusCode::kAlreadyExists, HasSubstr("")));
  auto restored = st::RestoreModule(image_);
  EXPECT_OK(restored);
}

}  // namespace
