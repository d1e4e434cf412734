#include "torch_adapter/gpt2_module.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/qualified_name.h>
#include <c10/util/Exception.h>
#include <fcntl.h>
#include <torch/csrc/jit/api/compilation_unit.h>
#include <torch/csrc/jit/api/module.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <exception>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/hash.h"

namespace stasis::torch {
namespace {

// Inside namespace stasis::torch, `torch::` would name this namespace.
using JitModule = ::torch::jit::Module;
using ::torch::jit::CompilationUnit;

using Preset = Gpt2Shape;

std::string FloatLiteral(double v) {  // a float literal for TorchScript source, exact round trip
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  std::string s = buf;
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

// Builds the modules. Types are shared between instances of the same kind (as
// torch.jit.script does for identical submodules), all in one compilation unit, so the
// archive holds one class per kind and each forward is compiled once.
class Builder {
 public:
  Builder(const Preset& p, uint64_t seed, bool mixed) : p_(p), seed_(seed), mixed_(mixed) {}

  JitModule Build() {
    const int64_t d = p_.n_embd;
    const float kStd = 0.02f;
    const float residual_std = kStd / std::sqrt(2.0f * static_cast<float>(p_.n_layer));

    JitModule root = New("GPT2LMHeadModel");
    JitModule wte = New("Embedding");
    const at::Tensor wte_weight = Normal("wte.weight", {p_.vocab, d}, kStd);
    wte.register_parameter("weight", wte_weight, /*is_buffer=*/false);
    root.register_module("wte", wte);
    JitModule wpe = New("Embedding");
    at::Tensor wpe_weight = Normal("wpe.weight", {p_.n_ctx, d}, kStd);
    if (mixed_) wpe_weight = wpe_weight.to(at::kBFloat16);
    wpe.register_parameter("weight", wpe_weight, false);
    root.register_module("wpe", wpe);
    root.register_buffer("position_ids", at::arange(p_.n_ctx, at::TensorOptions(at::kLong)));

    for (int i = 0; i < p_.n_layer; ++i) {
      const std::string h = "h." + std::to_string(i) + ".";
      JitModule block = New("Block");
      block.register_module("ln_1", LayerNorm(h + "ln_1", mixed_));
      JitModule attn = New("Attention");
      at::Tensor c_attn_weight;
      if (mixed_ && i == 0) {
        // Drawn as [3D, D] and registered transposed: a non-contiguous parameter.
        c_attn_weight = Normal(h + "attn.c_attn.weight.T", {3 * d, d}, kStd).t();
      } else {
        c_attn_weight = Normal(h + "attn.c_attn.weight", {d, 3 * d}, kStd);
      }
      attn.register_module("c_attn", Conv1D(c_attn_weight, 3 * d));
      attn.register_module("c_proj",
                           Conv1D(Normal(h + "attn.c_proj.weight", {d, d}, residual_std), d));
      block.register_module("attn", attn);
      block.register_module("ln_2", LayerNorm(h + "ln_2", mixed_));
      JitModule mlp = New("MLP");
      mlp.register_module("c_fc", Conv1D(Normal(h + "mlp.c_fc.weight", {d, 4 * d}, kStd), 4 * d));
      mlp.register_module("c_proj",
                          Conv1D(Normal(h + "mlp.c_proj.weight", {4 * d, d}, residual_std), d));
      block.register_module("mlp", mlp);
      if (i == 0) {  // the types are shared: one definition serves every block
        attn.define(AttentionSource());
        mlp.define(MlpSource());
        block.define(BlockSource());
      }
      root.register_module("h" + std::to_string(i), block);
    }
    root.register_module("ln_f", LayerNorm("ln_f", false));
    JitModule lm_head = New("Linear");
    lm_head.register_parameter("weight", wte_weight, false);  // tied: the very same tensor
    root.register_module("lm_head", lm_head);
    root.define(RootSource());
    return root;
  }

 private:
  // A new module of kind `kind`; its type is created on first use.
  JitModule New(const std::string& kind) {
    auto it = types_.find(kind);
    JitModule m;
    if (it == types_.end()) {
      m = JitModule(c10::QualifiedName("__torch__.stasis_gpt2." + kind), cu_);
      types_.emplace(kind, m.type());
    } else {
      m = JitModule(cu_, it->second);
    }
    // Module::train() and torch.jit.script modules expect it; the fixture is in eval mode.
    m.register_attribute("training", c10::BoolType::get(), false);
    return m;
  }

  // Every tensor from its own generator, seeded by (seed, name): values do not depend on
  // the order of generation or on the other tensors.
  at::Tensor Normal(const std::string& name, std::vector<int64_t> shape, float stddev) {
    at::Generator gen = at::detail::createCPUGenerator(Mix64(seed_ ^ NameHash(name)));
    at::Tensor t = at::empty(shape, at::TensorOptions(at::kFloat));
    t.normal_(0.0, stddev, gen);
    return t;
  }

  JitModule LayerNorm(const std::string& name, bool half_weight) {
    JitModule m = New("LayerNorm");
    at::Tensor w = at::ones({p_.n_embd}, at::TensorOptions(half_weight ? at::kHalf : at::kFloat));
    m.register_parameter("weight", w, false);
    m.register_parameter("bias", at::zeros({p_.n_embd}, at::TensorOptions(at::kFloat)), false);
    return m;
  }

  JitModule Conv1D(const at::Tensor& weight, int64_t out) {
    JitModule m = New("Conv1D");
    m.register_parameter("weight", weight, false);
    m.register_parameter("bias", at::zeros({out}, at::TensorOptions(at::kFloat)), false);
    return m;
  }

  std::string LayerNormCall(const std::string& input, const std::string& ln) const {
    return "torch.layer_norm(" + input + ", [" + std::to_string(p_.n_embd) + "], self." + ln +
           ".weight.float(), self." + ln + ".bias.float(), 1e-05)";
  }

  std::string AttentionSource() const {
    const int64_t d = p_.n_embd;
    const int64_t hd = d / p_.n_head;
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    return "def forward(self, x: Tensor) -> Tensor:\n"
           "    b = x.size(0)\n"
           "    t = x.size(1)\n"
           "    qkv = torch.matmul(x, self.c_attn.weight.float()) + self.c_attn.bias.float()\n"
           "    qkv = qkv.reshape([b, t, 3, " +
           std::to_string(p_.n_head) + ", " + std::to_string(hd) +
           "]).permute([2, 0, 3, 1, 4])\n"
           "    q = qkv[0]\n"
           "    k = qkv[1]\n"
           "    v = qkv[2]\n"
           "    att = torch.matmul(q, k.transpose(-2, -1)) * " +
           FloatLiteral(scale) +
           "\n"
           "    causal = torch.ones([t, t], device=x.device).tril()\n"
           "    att = att.masked_fill(causal == 0, float(\"-inf\"))\n"
           "    att = torch.softmax(att, -1)\n"
           "    y = torch.matmul(att, v).transpose(1, 2).reshape([b, t, " +
           std::to_string(d) +
           "])\n"
           "    return torch.matmul(y, self.c_proj.weight.float()) + self.c_proj.bias.float()\n";
  }

  std::string MlpSource() const {
    return "def forward(self, x: Tensor) -> Tensor:\n"
           "    h = torch.matmul(x, self.c_fc.weight.float()) + self.c_fc.bias.float()\n"
           "    h = torch.gelu(h, approximate=\"tanh\")\n"
           "    return torch.matmul(h, self.c_proj.weight.float()) + self.c_proj.bias.float()\n";
  }

  std::string BlockSource() const {
    return "def forward(self, x: Tensor) -> Tensor:\n"
           "    x = x + self.attn.forward(" +
           LayerNormCall("x", "ln_1") +
           ")\n"
           "    return x + self.mlp.forward(" +
           LayerNormCall("x", "ln_2") + ")\n";
  }

  std::string RootSource() const {
    std::string s =
        "def forward(self, input_ids: Tensor) -> Tensor:\n"
        "    t = input_ids.size(1)\n"
        "    pos = self.position_ids[:t]\n"
        "    x = torch.embedding(self.wte.weight, input_ids).float()\n"
        "    x = x + torch.embedding(self.wpe.weight, pos).float()\n";
    for (int i = 0; i < p_.n_layer; ++i)
      s += "    x = self.h" + std::to_string(i) + ".forward(x)\n";
    s += "    x = " + LayerNormCall("x", "ln_f") + "\n";
    s += "    return torch.matmul(x, self.lm_head.weight.float().t())\n";
    return s;
  }

  const Preset& p_;
  const uint64_t seed_;
  const bool mixed_;
  std::shared_ptr<CompilationUnit> cu_ = std::make_shared<CompilationUnit>();
  std::map<std::string, c10::ClassTypePtr> types_;
};

std::string ExceptionMessage(const std::exception& e) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e))
    return c10_error->what_without_backtrace();
  return e.what();
}

std::string Describe(const Gpt2Shape& s) {
  return "a GPT-2 module of " + std::to_string(s.n_layer) + " layers, width " +
         std::to_string(s.n_embd);
}

Status Generate(const std::string& path, const Preset& preset, uint64_t seed, bool mixed) {
  JitModule module;
  try {
    module = Builder(preset, seed, mixed).Build();
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError("out of memory building " + Describe(preset));
  } catch (const std::exception& e) {
    return InternalError("building " + Describe(preset) + ": " + ExceptionMessage(e));
  }

  // Created here first so that the common failures (missing directory, permissions) get
  // their errno; libtorch's writer reopens and truncates it.
  const std::string temp = path + ".tmp";
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoToStatus(errno, "create '" + temp + "'");
  ::close(fd);
  Status status;
  try {
    module.save(temp);
  } catch (const std::exception& e) {
    status = UnavailableError("write '" + temp + "': " + ExceptionMessage(e));
  }
  if (status.ok() && std::rename(temp.c_str(), path.c_str()) != 0)
    status = ErrnoToStatus(errno, "rename '" + temp + "' to '" + path + "'");
  if (!status.ok()) ::unlink(temp.c_str());
  return status;
}

}  // namespace

Status GenerateGpt2Module(const std::string& path, const Gpt2Shape& shape, uint64_t seed,
                          bool mixed) {
  if (shape.n_layer < 1 || shape.n_head < 1 || shape.n_embd < 1 ||
      shape.n_embd % shape.n_head != 0 || shape.vocab < 1 || shape.n_ctx < 1)
    return InvalidArgumentError(
        "GPT-2 shape: layers, heads, vocab and context must be positive "
        "and the width a multiple of the heads");
  try {
    return Generate(path, shape, seed, mixed);
  } catch (const std::exception& e) {  // bad_alloc from the strings; nothing escapes
    return InternalError(std::string("GenerateGpt2Module: ") + e.what());
  }
}

}  // namespace stasis::torch
