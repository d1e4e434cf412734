#include "torch_adapter/input_spec.h"

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "torch_adapter/exception_status.h"

namespace stasis::torch {
namespace {

using internal::ExceptionStatus;

// Deterministic N(0, 1) by Box-Muller on the generator's bits (std::normal_distribution
// differs between standard libraries).
class Normal {
 public:
  static constexpr double kTwoPi = 6.283185307179586476925286766559;
  explicit Normal(std::mt19937_64* rng) : rng_(rng) {}
  double Next() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = (static_cast<double>((*rng_)() >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
    const double u2 = static_cast<double>((*rng_)() >> 11) * 0x1.0p-53;          // [0, 1)
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(kTwoPi * u2);
    has_spare_ = true;
    return r * std::cos(kTwoPi * u2);
  }

 private:
  std::mt19937_64* rng_;
  double spare_ = 0;
  bool has_spare_ = false;
};

constexpr uint64_t kInputSeed = 0x5354415349530001ull;
constexpr int64_t kMaxInputElements = int64_t{1} << 28;

StatusOr<int64_t> ParsePositive(std::string_view s, std::string_view what, int64_t max) {
  if (s.empty() || s.size() > 19)
    return InvalidArgumentError(std::string(what) + " is empty or too long");
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9')
      return InvalidArgumentError(std::string(what) + " '" + std::string(s) + "' is not a number");
    v = v * 10 + (c - '0');
    if (v > max)
      return InvalidArgumentError(std::string(what) + " '" + std::string(s) + "' is too large");
  }
  if (v <= 0) return InvalidArgumentError(std::string(what) + " must be positive");
  return v;
}

StatusOr<InputSpec> ParseInputSpecImpl(std::string_view spec) {
  auto bad = [&](const std::string& why) {
    return InvalidArgumentError("bad input spec '" + std::string(spec) + "': " + why +
                                " (expected <dtype>:<d0>x<d1>...[:<high>], dtype i64, i32, f32, "
                                "bf16 or f16)");
  };
  std::vector<std::string_view> parts;
  for (size_t start = 0;;) {
    size_t colon = spec.find(':', start);
    parts.push_back(spec.substr(start, colon == std::string_view::npos ? colon : colon - start));
    if (colon == std::string_view::npos) break;
    start = colon + 1;
  }
  if (parts.size() < 2 || parts.size() > 3) return bad("wrong number of fields");
  InputSpec out;
  const std::string_view type = parts[0];
  bool integer = true;
  if (type == "i64") {
    out.type = at::kLong;
  } else if (type == "i32") {
    out.type = at::kInt;
  } else if (type == "f32" || type == "bf16" || type == "f16") {
    out.type = type == "f32" ? at::kFloat : type == "bf16" ? at::kBFloat16 : at::kHalf;
    integer = false;
  } else {
    return bad("unknown dtype '" + std::string(type) + "'");
  }
  int64_t elements = 1;
  for (size_t start = 0;;) {
    size_t x = parts[1].find('x', start);
    std::string_view dim = parts[1].substr(start, x == std::string_view::npos ? x : x - start);
    auto d = ParsePositive(dim, "dimension", kMaxInputElements);
    if (!d.ok()) return bad(std::string(d.status().message()));
    out.shape.push_back(*d);
    elements *= *d;
    if (elements > kMaxInputElements) return bad("more than 2^28 elements");
    if (out.shape.size() > 8) return bad("rank above 8");
    if (x == std::string_view::npos) break;
    start = x + 1;
  }
  if (parts.size() == 3) {
    if (!integer) return bad("<high> applies to integer dtypes only");
    auto h = ParsePositive(parts[2], "high", int64_t{1} << 62);
    if (!h.ok()) return bad(std::string(h.status().message()));
    out.high = *h;
  }
  return out;
}

}  // namespace

StatusOr<InputSpec> ParseInputSpec(std::string_view spec) {
  return internal::Guarded("parsing an input spec", [&] { return ParseInputSpecImpl(spec); });
}

StatusOr<at::Tensor> MakeInput(const InputSpec& spec, const c10::Device& device) {
  try {
    std::mt19937_64 rng(kInputSeed);
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    at::Tensor host;
    if (spec.type == at::kLong || spec.type == at::kInt) {
      host = at::empty(spec.shape, at::TensorOptions().dtype(spec.type));
      const unsigned __int128 high = static_cast<uint64_t>(spec.high);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t v = static_cast<int64_t>((rng() * high) >> 64);
        if (spec.type == at::kLong)
          host.data_ptr<int64_t>()[i] = v;
        else
          host.data_ptr<int32_t>()[i] = static_cast<int32_t>(v);
      }
    } else {
      host = at::empty(spec.shape, at::TensorOptions().dtype(at::kFloat));
      float* p = host.data_ptr<float>();
      Normal normal(&rng);
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(normal.Next());
      if (spec.type != at::kFloat) host = host.to(spec.type);  // IEEE round to nearest even
    }
    return device.is_cpu() ? host : host.to(device);
  } catch (...) {
    return ExceptionStatus(StatusCode::kInternal, "building the input", std::current_exception());
  }
}

}  // namespace stasis::torch
