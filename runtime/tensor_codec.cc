#include "runtime/tensor_codec.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <system_error>
#include <type_traits>

#include "common/float16.h"
#include "snapshot/dtype.h"
#include "snapshot/format.h"
#include "snapshot/safetensors.h"

namespace stasis::runtime::internal {

using json = nlohmann::json;

namespace {

// ----- element conversions -----

// A float as the double whose shortest form is the float's shortest form, so that JSON
// shows 0.1 rather than 0.10000000149011612.
double FloatForJson(float f) {
  if (!std::isfinite(f)) return f;
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), f);
  if (ec != std::errc()) return f;
  *end = '\0';
  return std::strtod(buf, nullptr);
}

bool JsonCarries(DType t) {
  switch (t) {
    case DType::kBool:
    case DType::kU8:
    case DType::kI8:
    case DType::kI16:
    case DType::kU16:
    case DType::kI32:
    case DType::kU32:
    case DType::kI64:
    case DType::kU64:
    case DType::kF16:
    case DType::kBF16:
    case DType::kF32:
    case DType::kF64:
      return true;
    default:
      return false;
  }
}

template <typename T>
void Append(std::string* out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out->append(b, sizeof(T));
}

template <typename T>
T Load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <typename T>
std::optional<std::string> AppendInt(const json& v, std::string* out) {
  if (!v.is_number_integer()) return "expected an integer";
  bool ok;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    ok = u <= static_cast<uint64_t>(std::numeric_limits<T>::max());
    if (ok) Append<T>(out, static_cast<T>(u));
  } else {
    const int64_t s = v.get<int64_t>();
    if constexpr (std::is_signed_v<T>) {
      ok = s >= static_cast<int64_t>(std::numeric_limits<T>::min()) &&
           s <= static_cast<int64_t>(std::numeric_limits<T>::max());
    } else {
      ok = s >= 0 &&
           static_cast<uint64_t>(s) <= static_cast<uint64_t>(std::numeric_limits<T>::max());
    }
    if (ok) Append<T>(out, static_cast<T>(s));
  }
  if (!ok) {
    return "integer out of range [" + std::to_string(std::numeric_limits<T>::min()) + ", " +
           std::to_string(std::numeric_limits<T>::max()) + "]";
  }
  return std::nullopt;
}

// The message for a finite number too large for the float type `t` (F16, BF16 or F32).
std::string FloatRangeError(DType t) {
  const char* largest = t == DType::kF16    ? "65504"
                        : t == DType::kBF16 ? "3.3895314e38"
                                            : "3.4028235e38";
  return "number out of range for " + std::string(DTypeName(t)) + " (largest magnitude " + largest +
         ")";
}

// Appends one JSON element as `t`; an error message otherwise.
std::optional<std::string> AppendElement(DType t, const json& v, std::string* out) {
  switch (t) {
    case DType::kBool:
      if (v.is_boolean()) {
        out->push_back(v.get<bool>() ? 1 : 0);
        return std::nullopt;
      }
      if (v.is_number_integer() && (v.get<int64_t>() == 0 || v.get<int64_t>() == 1)) {
        out->push_back(static_cast<char>(v.get<int64_t>()));
        return std::nullopt;
      }
      return "expected true, false, 0 or 1";
    case DType::kU8:
      return AppendInt<uint8_t>(v, out);
    case DType::kI8:
      return AppendInt<int8_t>(v, out);
    case DType::kI16:
      return AppendInt<int16_t>(v, out);
    case DType::kU16:
      return AppendInt<uint16_t>(v, out);
    case DType::kI32:
      return AppendInt<int32_t>(v, out);
    case DType::kU32:
      return AppendInt<uint32_t>(v, out);
    case DType::kI64:
      return AppendInt<int64_t>(v, out);
    case DType::kU64:
      return AppendInt<uint64_t>(v, out);
    case DType::kF16:
    case DType::kBF16:
    case DType::kF32:
    case DType::kF64: {
      if (!v.is_number()) return "expected a number";
      const double d = v.get<double>();
      if (t == DType::kF64) {
        Append<double>(out, d);
        return std::nullopt;
      }
      // A finite number that the narrower type would round to infinity is a range error,
      // as for integers, not a silent inf. (The double-to-float cast itself is undefined
      // past FLT_MAX, so that is checked first.)
      if (std::fabs(d) > std::numeric_limits<float>::max()) return FloatRangeError(t);
      const float f = static_cast<float>(d);
      if (t == DType::kF32) {
        if (std::isinf(f)) return FloatRangeError(t);
        Append<float>(out, f);
      } else if (t == DType::kF16) {
        const uint16_t h = FloatToHalf(f);
        if ((h & 0x7fff) == 0x7c00) return FloatRangeError(t);
        Append<uint16_t>(out, h);
      } else {
        const uint16_t b = Float32ToBf16(f);
        if ((b & 0x7fff) == 0x7f80) return FloatRangeError(t);
        Append<uint16_t>(out, b);
      }
      return std::nullopt;
    }
    default:
      return "dtype not carried by JSON";
  }
}

json ElementToJson(DType t, const char* p) {
  switch (t) {
    case DType::kBool:
      return *p != 0;
    case DType::kU8:
      return Load<uint8_t>(p);
    case DType::kI8:
      return Load<int8_t>(p);
    case DType::kI16:
      return Load<int16_t>(p);
    case DType::kU16:
      return Load<uint16_t>(p);
    case DType::kI32:
      return Load<int32_t>(p);
    case DType::kU32:
      return Load<uint32_t>(p);
    case DType::kI64:
      return Load<int64_t>(p);
    case DType::kU64:
      return Load<uint64_t>(p);
    case DType::kF16:
      return FloatForJson(HalfToFloat(Load<uint16_t>(p)));
    case DType::kBF16:
      return FloatForJson(Bf16ToFloat(Load<uint16_t>(p)));
    case DType::kF32:
      return FloatForJson(Load<float>(p));
    case DType::kF64:
      return Load<double>(p);
    default:
      return nullptr;
  }
}

// Element count of `shape`, or nullopt on overflow past 2^62 / a negative dimension.
std::optional<uint64_t> ElementCount(const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (d != 0 && n > (uint64_t{1} << 62) / static_cast<uint64_t>(d)) return std::nullopt;
    n *= static_cast<uint64_t>(d);
  }
  return n;
}

std::optional<uint64_t> ByteSize(DType t, const std::vector<int64_t>& shape) {
  auto n = ElementCount(shape);
  if (!n) return std::nullopt;
  const uint64_t bits = *n * static_cast<uint64_t>(DTypeBits(t));
  if (bits % 8 != 0) return std::nullopt;
  return bits / 8;
}

// The index in "<prefix>.<i>" or "<i>", if the name has that form.
std::optional<size_t> TrailingIndex(std::string_view name) {
  const size_t dot = name.rfind('.');
  std::string_view digits = dot == std::string_view::npos ? name : name.substr(dot + 1);
  if (digits.empty() || digits.size() > 9) return std::nullopt;
  size_t v = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<size_t>(c - '0');
  }
  return v;
}

}  // namespace

WireFormats NegotiateWireFormats(std::string_view content_type, std::string_view accept) {
  WireFormats f;
  f.safetensors_in = IEqualsPrefix(content_type, kSafetensorsType) ||
                     IEqualsPrefix(content_type, "application/x-safetensors");
  f.safetensors_out = f.safetensors_in;
  if (accept.find("application/json") != std::string_view::npos) {
    f.safetensors_out = false;
  } else if (accept.find(kSafetensorsType) != std::string_view::npos ||
             accept.find("application/x-safetensors") != std::string_view::npos) {
    f.safetensors_out = true;
  }
  return f;
}

// ----- safetensors bodies -----

// The tensors of a safetensors file held in memory, in header order.
StatusOr<std::vector<TensorData>> ParseSafetensorsBytes(std::string_view bytes) {
  STASIS_ASSIGN_OR_RETURN(SafetensorsHeader header, ParseSafetensorsFileBytes(bytes));
  std::vector<TensorData> out;
  out.reserve(header.entries.size());
  for (const SafetensorsEntry& e : header.entries) {
    TensorData t;
    t.name = e.name;
    t.dtype = e.dtype;
    t.shape = e.shape;
    t.bytes.assign(bytes.substr(header.data_start + e.begin, e.end - e.begin));
    out.push_back(std::move(t));
  }
  return out;
}

// Header order, unless the names carry the indices 0..n-1 (see server.h).
void OrderPositionalInputs(std::vector<TensorData>* tensors) {
  const size_t n = tensors->size();
  std::vector<int> slot(n, -1);
  for (size_t i = 0; i < n; ++i) {
    auto idx = TrailingIndex((*tensors)[i].name);
    if (!idx || *idx >= n || slot[*idx] != -1) return;
    slot[*idx] = static_cast<int>(i);
  }
  std::vector<TensorData> ordered;
  ordered.reserve(n);
  for (size_t i = 0; i < n; ++i) ordered.push_back(std::move((*tensors)[slot[i]]));
  *tensors = std::move(ordered);
}

std::optional<HttpError> ParseSafetensorsInputs(std::string_view body,
                                                std::vector<TensorData>* out) {
  auto parsed = ParseSafetensorsBytes(body);
  if (!parsed.ok()) return BadRequest(std::string(parsed.status().message()));
  // The same bound as JSON inputs: a [2^40, 0] shape holds no bytes but no model takes it.
  for (const TensorData& t : *parsed) {
    for (size_t d = 0; d < t.shape.size(); ++d) {
      if (t.shape[d] > static_cast<int64_t>(kMaxDimension)) {
        return BadRequest("input '" + t.name + "': dimension " + std::to_string(d) + " is " +
                          std::to_string(t.shape[d]) + ", over the limit of " +
                          std::to_string(kMaxDimension));
      }
    }
  }
  *out = std::move(parsed).value();
  OrderPositionalInputs(out);
  return std::nullopt;
}

StatusOr<std::string> EncodeSafetensors(
    const std::vector<TensorData>& tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::vector<SafetensorsTensorOut> out;
  uint64_t total = 0;
  for (const TensorData& t : tensors) {
    SafetensorsTensorOut o;
    o.name = t.name;
    o.dtype = t.dtype;
    o.shape = t.shape;
    o.data = t.bytes.data();
    o.size = t.bytes.size();
    total += t.bytes.size();
    out.push_back(std::move(o));
  }
  STASIS_ASSIGN_OR_RETURN(std::string body, EncodeSafetensorsHeader(out, metadata));
  body.reserve(body.size() + total);
  for (const TensorData& t : tensors) body += t.bytes;
  return body;
}

// ----- JSON bodies -----

std::optional<HttpError> ParseJsonInputs(const std::string& body, uint64_t max_body_bytes,
                                         const UrlInputReader& read_url,
                                         std::vector<TensorData>* out) {
  if (!JsonDepthWithin(body, kMaxJsonDepth)) {
    return HttpError{400, "bad_json",
                     "JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels"};
  }
  json doc;
  try {
    doc = json::parse(body);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for 1e400
    return HttpError{400, "bad_json", std::string("malformed JSON: ") + e.what()};
  }
  if (!doc.is_object() || !doc.contains("inputs") || !doc["inputs"].is_array()) {
    return BadRequest("expected {\"inputs\": [...]}");
  }
  uint64_t budget = max_body_bytes > body.size() ? max_body_bytes - body.size() : 0;
  const json& list = doc["inputs"];
  for (size_t i = 0; i < list.size(); ++i) {
    const json& spec = list[i];
    const std::string where = "inputs[" + std::to_string(i) + "]";
    if (!spec.is_object()) return BadRequest(where + ": expected an object");
    TensorData t;
    if (spec.contains("name")) {
      if (!spec["name"].is_string()) return BadRequest(where + ".name: expected a string");
      t.name = spec["name"].get<std::string>();
    } else {
      t.name = "input." + std::to_string(i);
    }
    if (spec.contains("url")) {
      if (auto e = read_url(spec, i, &budget, &t)) return e;
      out->push_back(std::move(t));
      continue;
    }
    if (!spec.contains("dtype") || !spec["dtype"].is_string()) {
      return BadRequest(where + ".dtype: expected a dtype name such as \"F32\"");
    }
    const std::string dtype_name = spec["dtype"].get<std::string>();
    auto dtype = DTypeFromName(dtype_name);
    if (!dtype) return BadRequest(where + ".dtype: unknown dtype \"" + dtype_name + "\"");
    if (!JsonCarries(*dtype)) {
      return BadRequest(where + ".dtype: " + dtype_name +
                        " is not carried by JSON; send a safetensors body");
    }
    t.dtype = *dtype;
    if (!spec.contains("shape") || !spec["shape"].is_array()) {
      return BadRequest(where + ".shape: expected an array of integers");
    }
    if (spec["shape"].size() > format::kMaxRank) {
      return BadRequest(where + ".shape: rank above " + std::to_string(format::kMaxRank));
    }
    for (const json& d : spec["shape"]) {
      if (!d.is_number_integer() ||
          (d.is_number_integer() && !d.is_number_unsigned() && d.get<int64_t>() < 0)) {
        return BadRequest(where + ".shape: expected non-negative integers");
      }
      // No real tensor has a dimension of 2^31 or more; refusing them here keeps shapes
      // such as [2^62, 0] (zero elements, yet impossible) away from the model.
      if (d.get<uint64_t>() > uint64_t{kMaxDimension}) {
        return BadRequest(where + ".shape: dimension above " + std::to_string(kMaxDimension));
      }
      t.shape.push_back(d.get<int64_t>());
    }
    auto count = ElementCount(t.shape);
    if (!count) return BadRequest(where + ".shape: too many elements");
    if (!spec.contains("data") || !spec["data"].is_array()) {
      return BadRequest(where + ".data: expected a flat array of numbers");
    }
    const json& data = spec["data"];
    if (data.size() != *count) {
      return BadRequest(where + ": shape holds " + std::to_string(*count) +
                        " elements but data has " + std::to_string(data.size()));
    }
    t.bytes.reserve(*count * static_cast<uint64_t>(DTypeBits(t.dtype) / 8));
    for (size_t k = 0; k < data.size(); ++k) {
      if (auto e = AppendElement(t.dtype, data[k], &t.bytes)) {
        return BadRequest(where + ".data[" + std::to_string(k) + "]: " + *e + " for " + dtype_name);
      }
    }
    out->push_back(std::move(t));
  }
  return std::nullopt;
}

uint64_t EstimateOutputBytes(const std::vector<TensorData>& outputs, bool json_answer) {
  // JSON: the widest element a dtype prints ("-1.2345678901234567e-308," is 25 characters),
  // plus per tensor its name as escaped at worst ("\u0001" is 6 characters for 1), its
  // dimensions (20 digits and a comma each) and a little for the dtype; a safetensors header
  // escapes the name and prints the shape the same way. The fixed 512 covers what the
  // server puts around the outputs (cold, latency, request id; safetensors metadata).
  uint64_t total = 512;
  for (const TensorData& t : outputs) {
    total += 256 + 6 * t.name.size() + 21 * t.shape.size();
    if (!json_answer) {
      total += t.bytes.size();
      continue;
    }
    const uint64_t elem = std::max<uint64_t>(DTypeBits(t.dtype) / 8, 1);
    uint64_t per = 25;
    switch (t.dtype) {
      case DType::kBool:
        per = 6;
        break;
      case DType::kU8:
      case DType::kI8:
        per = 5;
        break;
      case DType::kU16:
      case DType::kI16:
        per = 7;
        break;
      case DType::kU32:
      case DType::kI32:
        per = 12;
        break;
      case DType::kF16:  // at most 65504: "-0.00012207031," or "-6.1035156e-05,"
        per = 16;
        break;
      case DType::kBF16:
      case DType::kF32:
        // nlohmann prints up to 15 integer digits in fixed form: "-100000000000000.0,"
        per = 19;
        break;
      default:
        break;
    }
    total += (t.bytes.size() / elem) * per;
  }
  return total;
}

bool JsonDepthWithin(std::string_view text, int max_depth) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

std::optional<HttpError> OutputsToJson(const std::vector<TensorData>& outputs, json* out) {
  *out = json::array();
  for (const TensorData& t : outputs) {
    auto size = ByteSize(t.dtype, t.shape);
    if (!size || *size != t.bytes.size()) {
      return HttpError{500, "internal", "output '" + t.name + "' has an inconsistent size"};
    }
    if (!JsonCarries(t.dtype)) {
      return HttpError{500, "unimplemented",
                       "output '" + t.name + "' has dtype " + std::string(DTypeName(t.dtype)) +
                           ", which JSON does not carry; ask for safetensors (Accept: " +
                           kSafetensorsType + ")"};
    }
    const size_t elem = static_cast<size_t>(DTypeBits(t.dtype) / 8);
    json data = json::array();
    data.get_ref<json::array_t&>().reserve(elem == 0 ? 0 : t.bytes.size() / elem);
    for (size_t off = 0; off + elem <= t.bytes.size(); off += elem) {
      data.push_back(ElementToJson(t.dtype, t.bytes.data() + off));
    }
    out->push_back(json{{"name", t.name},
                        {"dtype", DTypeName(t.dtype)},
                        {"shape", t.shape},
                        {"data", std::move(data)}});
  }
  return std::nullopt;
}

}  // namespace stasis::runtime::internal
