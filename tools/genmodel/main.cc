// stasis-genmodel: writes a GPT-2-shaped safetensors checkpoint with the weights of a
// freshly initialised model (HF GPT2PreTrainedModel._init_weights: N(0, 0.02) for
// embeddings and Conv1D weights, N(0, 0.02 / sqrt(2 * n_layer)) for the residual
// projections `c_proj.weight`, zero biases, LayerNorm weight 1 and bias 0), for demos,
// benchmarks and tests that need a realistic model without downloading one.
//
// Output is a pure function of (preset, dtype, seed): every tensor draws from generators
// seeded by (seed, tensor name, block index), so the bytes do not depend on the thread
// count or on --shards (a tensor's values are the same in any shard layout).
//
// Memory stays bounded for any preset: the header is computed from the shapes first, then
// data is generated block by block (1 Mi elements) on all cores and appended in order.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "common/float16.h"
#include "common/hash.h"
#include "common/stopwatch.h"
#include "snapshot/dtype.h"
#include "snapshot/safetensors.h"
#include "stasis/file_system.h"
#include "stasis/status.h"
#include "stasis/torch_plugin.h"
#include "tools/genmodel/gpt2_presets.h"

namespace stasis {
namespace {

constexpr uint64_t kBlockElements = 1 << 20;  // generation unit: 4 MiB of f32
constexpr size_t kWriteBuffer = 8 << 20;

enum class Init { kNormal, kOnes, kZeros };

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  Init init = Init::kNormal;
  float stddev = 0;
  uint64_t count = 0;
  uint64_t bytes = 0;
};

// The GPT2Model state dict (as in the HF `gpt2` checkpoints), in module order.
std::vector<TensorSpec> Gpt2Tensors(const Gpt2Preset& p, DType dtype) {
  const float kStd = 0.02f;
  const float kResidualStd = kStd / std::sqrt(2.0f * static_cast<float>(p.n_layer));
  const int64_t d = p.n_embd;
  std::vector<TensorSpec> specs;
  auto add = [&](std::string name, std::vector<int64_t> shape, Init init, float stddev = 0) {
    specs.push_back(TensorSpec{std::move(name), std::move(shape), init, stddev});
  };
  add("wte.weight", {p.vocab, d}, Init::kNormal, kStd);
  add("wpe.weight", {p.n_ctx, d}, Init::kNormal, kStd);
  for (int i = 0; i < p.n_layer; ++i) {
    const std::string h = "h." + std::to_string(i) + ".";
    add(h + "ln_1.weight", {d}, Init::kOnes);
    add(h + "ln_1.bias", {d}, Init::kZeros);
    add(h + "attn.c_attn.weight", {d, 3 * d}, Init::kNormal, kStd);
    add(h + "attn.c_attn.bias", {3 * d}, Init::kZeros);
    add(h + "attn.c_proj.weight", {d, d}, Init::kNormal, kResidualStd);
    add(h + "attn.c_proj.bias", {d}, Init::kZeros);
    add(h + "ln_2.weight", {d}, Init::kOnes);
    add(h + "ln_2.bias", {d}, Init::kZeros);
    add(h + "mlp.c_fc.weight", {d, 4 * d}, Init::kNormal, kStd);
    add(h + "mlp.c_fc.bias", {4 * d}, Init::kZeros);
    add(h + "mlp.c_proj.weight", {4 * d, d}, Init::kNormal, kResidualStd);
    add(h + "mlp.c_proj.bias", {d}, Init::kZeros);
  }
  add("ln_f.weight", {d}, Init::kOnes);
  add("ln_f.bias", {d}, Init::kZeros);
  for (TensorSpec& s : specs) {
    s.count = 1;
    for (int64_t dim : s.shape) s.count *= static_cast<uint64_t>(dim);
    s.bytes = s.count * static_cast<uint64_t>(DTypeBits(dtype)) / 8;
  }
  return specs;
}

void Store(float v, DType dtype, uint8_t* dst) {
  switch (dtype) {
    case DType::kF32: {
      uint32_t u = std::bit_cast<uint32_t>(v);
      std::memcpy(dst, &u, 4);  // little-endian host (as stasis assumes throughout)
      break;
    }
    case DType::kBF16: {
      uint16_t u = Float32ToBf16(v);
      std::memcpy(dst, &u, 2);
      break;
    }
    default: {
      uint16_t u = FloatToHalf(v);
      std::memcpy(dst, &u, 2);
      break;
    }
  }
}

// Fills `count` elements of block `block` of `spec` into `dst`.
void GenerateBlock(const TensorSpec& spec, uint64_t seed, uint64_t block, uint64_t count,
                   DType dtype, uint8_t* dst) {
  const size_t width = static_cast<size_t>(DTypeBits(dtype) / 8);
  if (spec.init != Init::kNormal) {
    const float v = spec.init == Init::kOnes ? 1.0f : 0.0f;
    for (uint64_t i = 0; i < count; ++i) Store(v, dtype, dst + i * width);
    return;
  }
  std::mt19937_64 rng(Mix64(Mix64(seed ^ NameHash(spec.name)) ^ block));
  constexpr float kTwoPi = 6.28318530717958647692f;
  constexpr float kInv24 = 1.0f / 16777216.0f;
  const float stddev = spec.stddev;
  // Box-Muller on 24-bit uniforms: one 64-bit draw gives two normals. u1 is in (0, 1], so
  // the log is finite; the tail is cut at ~5.8 sigma, irrelevant for initial weights.
  for (uint64_t i = 0; i < count; i += 2) {
    const uint64_t r = rng();
    const float u1 = static_cast<float>((r >> 40) + 1) * kInv24;
    const float u2 = static_cast<float>(r & 0xffffff) * kInv24;
    const float radius = std::sqrt(-2.0f * std::log(u1)) * stddev;
    const float theta = kTwoPi * u2;
    Store(radius * std::cos(theta), dtype, dst + i * width);
    if (i + 1 < count) Store(radius * std::sin(theta), dtype, dst + (i + 1) * width);
  }
}

// Appends through a fixed buffer, so the many small tensors (biases, norms) do not each
// cost a write(2).
class BufferedAppender {
 public:
  explicit BufferedAppender(WritableFile* file) : file_(file) { buf_.reserve(kWriteBuffer); }
  Status Append(const uint8_t* data, size_t n) {
    if (buf_.size() + n > kWriteBuffer) STASIS_RETURN_IF_ERROR(Flush());
    if (n >= kWriteBuffer) return file_->Append(data, n);
    buf_.insert(buf_.end(), data, data + n);
    return OkStatus();
  }
  Status Flush() {
    if (buf_.empty()) return OkStatus();
    Status s = file_->Append(buf_.data(), buf_.size());
    buf_.clear();
    return s;
  }

 private:
  WritableFile* file_;
  std::vector<uint8_t> buf_;
};

struct Job {
  const TensorSpec* spec;
  uint64_t block;
  uint64_t count;
};

// Generates the data of `tensors` (in order) and appends it: windows of jobs are filled in
// parallel, then written in order.
Status WriteData(const std::vector<const TensorSpec*>& tensors, uint64_t seed, DType dtype,
                 int threads, BufferedAppender* out) {
  std::vector<Job> jobs;
  for (const TensorSpec* t : tensors) {
    for (uint64_t b = 0; b * kBlockElements < t->count; ++b)
      jobs.push_back(Job{t, b, std::min(kBlockElements, t->count - b * kBlockElements)});
  }
  const size_t width = static_cast<size_t>(DTypeBits(dtype) / 8);
  const size_t window = static_cast<size_t>(threads) * 4;
  std::vector<std::vector<uint8_t>> buffers(window, std::vector<uint8_t>(kBlockElements * width));
  for (size_t start = 0; start < jobs.size(); start += window) {
    const size_t end = std::min(jobs.size(), start + window);
    std::atomic<size_t> next{start};
    auto work = [&] {
      for (size_t j; (j = next.fetch_add(1)) < end;) {
        GenerateBlock(*jobs[j].spec, seed, jobs[j].block, jobs[j].count, dtype,
                      buffers[j - start].data());
      }
    };
    std::vector<std::thread> pool;
    const size_t helpers = std::min<size_t>(static_cast<size_t>(threads), end - start) - 1;
    // Helpers only speed this up (`work` takes jobs until none is left): when the system
    // will not start another thread, the ones already running do the rest.
    for (size_t i = 0; i < helpers; ++i) {
      try {
        pool.emplace_back(work);
      } catch (const std::system_error&) {
        break;
      }
    }
    work();
    for (std::thread& t : pool) t.join();
    for (size_t j = start; j < end; ++j)
      STASIS_RETURN_IF_ERROR(out->Append(buffers[j - start].data(), jobs[j].count * width));
  }
  return OkStatus();
}

// Writes one safetensors file holding `tensors`, sorted by name as the reference writer
// does for a single dtype. Written to a temporary name and renamed, so an interrupted run
// never leaves a truncated model under the final name. Not fsynced: the output is a
// reproducible fixture, and syncing gigabytes would dominate the run time.
Status WriteModelFile(const std::string& path, std::vector<const TensorSpec*> tensors,
                      const std::vector<std::pair<std::string, std::string>>& metadata,
                      uint64_t seed, DType dtype, int threads) {
  std::sort(tensors.begin(), tensors.end(),
            [](const TensorSpec* a, const TensorSpec* b) { return a->name < b->name; });
  std::vector<SafetensorsTensorOut> layout;
  for (const TensorSpec* t : tensors)
    layout.push_back(SafetensorsTensorOut{t->name, dtype, t->shape, nullptr, t->bytes});
  STASIS_ASSIGN_OR_RETURN(std::string header, EncodeSafetensorsHeader(layout, metadata));

  FileSystem* fs = DefaultFileSystem();
  const std::string temp = path + ".stasis-tmp." + std::to_string(::getpid());
  STASIS_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> file, fs->CreateExclusive(temp));
  auto write = [&]() -> Status {
    BufferedAppender out(file.get());
    STASIS_RETURN_IF_ERROR(
        out.Append(reinterpret_cast<const uint8_t*>(header.data()), header.size()));
    STASIS_RETURN_IF_ERROR(WriteData(tensors, seed, dtype, threads, &out));
    STASIS_RETURN_IF_ERROR(out.Flush());
    return file->Close();
  };
  Status s = write();
  if (s.ok()) s = fs->Rename(temp, path);
  if (!s.ok()) fs->Remove(temp).IgnoreError();
  return s;
}

Status WriteIndex(const std::string& path, uint64_t total_size,
                  const std::vector<std::pair<std::string, std::string>>& weight_map) {
  // Names and file names are plain ASCII chosen here, so no JSON escaping is needed.
  std::string json = "{\n  \"metadata\": {\n    \"total_size\": " + std::to_string(total_size) +
                     "\n  },\n  \"weight_map\": {\n";
  for (size_t i = 0; i < weight_map.size(); ++i) {
    json += "    \"" + weight_map[i].first + "\": \"" + weight_map[i].second + "\"";
    json += i + 1 < weight_map.size() ? ",\n" : "\n";
  }
  json += "  }\n}\n";
  FileSystem* fs = DefaultFileSystem();
  const std::string temp = path + ".stasis-tmp." + std::to_string(::getpid());
  STASIS_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> file, fs->CreateExclusive(temp));
  Status s = file->Append(json.data(), json.size());
  if (s.ok()) s = file->Close();
  if (s.ok()) s = fs->Rename(temp, path);
  if (!s.ok()) fs->Remove(temp).IgnoreError();
  return s;
}

std::string ShardName(int k, int n) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "model-%05d-of-%05d.safetensors", k, n);
  return buf;
}

Status CreateParentDirs(const std::string& path, bool path_is_dir) {
  std::filesystem::path dir =
      path_is_dir ? std::filesystem::path(path) : std::filesystem::path(path).parent_path();
  if (dir.empty()) return OkStatus();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return ErrnoToStatus(ec.value(), "create directory '" + dir.string() + "'");
  return OkStatus();
}

struct Options {
  std::string preset = "tiny";
  std::string dtype = "f32";
  uint64_t seed = 0;
  int shards = 1;
  std::string output;
  std::string format = "safetensors";  // or "torchscript"
  bool mixed = false;
};

// A TorchScript module through the torch plugin (TorchPlugin::GenerateGpt2): the same
// architecture as the safetensors model, with a forward() and tied embedding/head weights.
Status RunTorchScript(const Options& o) {
  if (o.shards != 1) return InvalidArgumentError("--shards applies to safetensors output");
  if (o.dtype != "f32")
    return InvalidArgumentError("TorchScript models are f32 (use --mixed for bf16/f16 weights)");
  STASIS_ASSIGN_OR_RETURN(torch::TorchPlugin * plugin, torch::LoadTorchPlugin());
  STASIS_RETURN_IF_ERROR(CreateParentDirs(o.output, false));
  STASIS_ASSIGN_OR_RETURN(const Gpt2Preset* preset, FindGpt2Preset(o.preset));
  STASIS_RETURN_IF_ERROR(plugin->GenerateGpt2(o.output, preset->shape(), o.seed, o.mixed));
  std::printf("stasis-genmodel: input spec for this model: %s\n", Gpt2InputSpec(*preset).c_str());
  return OkStatus();
}

// Writes the model; reports its parameter count, data bytes and number of files written.
Status Run(const Options& o, uint64_t* params, uint64_t* bytes, int* files) {
  STASIS_ASSIGN_OR_RETURN(const Gpt2Preset* preset, FindGpt2Preset(o.preset));
  const DType dtype = o.dtype == "f32"    ? DType::kF32
                      : o.dtype == "bf16" ? DType::kBF16
                                          : DType::kF16;
  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  std::vector<TensorSpec> specs = Gpt2Tensors(*preset, dtype);
  uint64_t total = 0;
  *params = 0;
  for (const TensorSpec& s : specs) {
    *params += s.count;
    total += s.bytes;
  }
  *bytes = total;
  const std::vector<std::pair<std::string, std::string>> metadata = {
      {"format", "pt"},
      {"generator", "stasis-genmodel gpt2 preset=" + o.preset + " dtype=" + o.dtype +
                        " seed=" + std::to_string(o.seed)},
  };

  if (o.shards <= 1) {
    STASIS_RETURN_IF_ERROR(CreateParentDirs(o.output, false));
    std::vector<const TensorSpec*> all;
    for (const TensorSpec& s : specs) all.push_back(&s);
    *files = 1;
    return WriteModelFile(o.output, all, metadata, o.seed, dtype, threads);
  }

  const size_t n = static_cast<size_t>(o.shards);
  if (n > specs.size()) {
    return InvalidArgumentError("--shards " + std::to_string(n) + " exceeds the " +
                                std::to_string(specs.size()) + " tensors of the model");
  }
  // Consecutive tensors in module order (as transformers shards), cut where the running
  // size passes k/n of the total; every shard gets at least one tensor.
  std::vector<std::vector<const TensorSpec*>> shards(n);
  uint64_t running = 0;
  size_t cur = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    shards[cur].push_back(&specs[i]);
    running += specs[i].bytes;
    const size_t tensors_left = specs.size() - i - 1;
    const size_t shards_left = n - cur - 1;
    if (shards_left > 0 &&
        (tensors_left == shards_left || static_cast<unsigned __int128>(running) * n >=
                                            static_cast<unsigned __int128>(total) * (cur + 1))) {
      ++cur;
    }
  }
  STASIS_RETURN_IF_ERROR(CreateParentDirs(o.output, true));
  std::vector<std::pair<std::string, std::string>> weight_map;
  for (size_t k = 0; k < n; ++k) {
    const std::string name = ShardName(static_cast<int>(k + 1), static_cast<int>(n));
    STASIS_RETURN_IF_ERROR(
        WriteModelFile(o.output + "/" + name, shards[k], metadata, o.seed, dtype, threads));
    for (const TensorSpec* t : shards[k]) weight_map.emplace_back(t->name, name);
  }
  std::sort(weight_map.begin(), weight_map.end());
  *files = static_cast<int>(n) + 1;
  return WriteIndex(o.output + "/model.safetensors.index.json", total, weight_map);
}

}  // namespace
}  // namespace stasis

int main(int argc, char** argv) {
  stasis::Options o;
  CLI::App app{
      "Writes a GPT-2-shaped safetensors model with freshly initialised weights "
      "(deterministic for a given seed). An existing output is replaced."};
  std::vector<std::string> presets;
  for (const stasis::Gpt2Preset& p : stasis::kGpt2Presets) presets.push_back(p.name);
  app.add_option("--preset", o.preset, "model size")
      ->check(CLI::IsMember(presets))
      ->capture_default_str();
  app.add_option("--dtype", o.dtype, "element type")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}))
      ->capture_default_str();
  app.add_option("--seed", o.seed, "random seed")->capture_default_str();
  app.add_option("--shards", o.shards,
                 "number of files; above 1, -o names a directory that receives "
                 "model-0000k-of-0000N.safetensors and model.safetensors.index.json")
      ->check(CLI::Range(1, 99999))
      ->capture_default_str();
  app.add_option("-o,--output", o.output, "output file (or directory with --shards > 1)");
  bool print_input_spec = false;
  app.add_flag("--print-input-spec", print_input_spec,
               "print the input spec of the preset's TorchScript model and exit");
  app.add_option("--format", o.format,
                 "safetensors, or torchscript (a module with forward(), via libtorch)")
      ->check(CLI::IsMember({"safetensors", "torchscript"}))
      ->capture_default_str();
  app.add_flag("--mixed", o.mixed,
               "torchscript: bf16/f16 weights and a transposed parameter among the f32 ones");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 1;  // README: exit status 1 is a usage error
  }

  if (print_input_spec) {
    auto preset = stasis::FindGpt2Preset(o.preset);
    if (!preset.ok()) {
      std::fprintf(stderr, "stasis-genmodel: error: %s\n", preset.status().ToString().c_str());
      return 2;
    }
    std::printf("%s\n", stasis::Gpt2InputSpec(**preset).c_str());
    return 0;
  }
  if (o.output.empty()) {
    std::fprintf(stderr, "stasis-genmodel: -o/--output is required\n");
    return 1;
  }
  const stasis::Stopwatch start;
  uint64_t params = 0, bytes = 0;
  int files = 0;
  stasis::Status s = o.format == "torchscript" ? stasis::RunTorchScript(o)
                                               : stasis::Run(o, &params, &bytes, &files);
  if (!s.ok()) {
    std::fprintf(stderr, "stasis-genmodel: error: %s\n", s.ToString().c_str());
    switch (s.code()) {
      case stasis::StatusCode::kInvalidArgument:
      case stasis::StatusCode::kNotFound:
      case stasis::StatusCode::kAlreadyExists:
        return 2;
      case stasis::StatusCode::kInternal:
        return 70;
      default:
        return 4;
    }
  }
  const double seconds = start.Seconds();
  if (o.format == "torchscript") {
    std::printf("stasis-genmodel: gpt2 %s torchscript%s seed=%llu -> %s (%.1f s)\n",
                o.preset.c_str(), o.mixed ? " mixed" : "", static_cast<unsigned long long>(o.seed),
                o.output.c_str(), seconds);
    return 0;
  }
  std::printf(
      "stasis-genmodel: gpt2 %s %s seed=%llu: %llu params, %llu data bytes, %d file%s "
      "-> %s (%.1f s)\n",
      o.preset.c_str(), o.dtype.c_str(), static_cast<unsigned long long>(o.seed),
      static_cast<unsigned long long>(params), static_cast<unsigned long long>(bytes), files,
      files == 1 ? "" : "s", o.output.c_str(), seconds);
  return 0;
}
