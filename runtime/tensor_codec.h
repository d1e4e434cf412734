// File: runtime/tensor_codec.h
//
// The tensor wire codec of POST /v1/infer (the formats are in runtime/server.h):
//  - JSON: {"inputs":[{"name","dtype","shape","data"}...]} into TensorData, element by
//    element with range checks (BOOL, U8..U64, I8..I64, F16, BF16, F32, F64; F16 and BF16
//    through common/float16.h, round to nearest even), and outputs back into
//    [{"name","dtype","shape","data"}...] (floats in their shortest form, 0.1 not
//    0.10000000149011612). An input given by reference ({"url": ...}) is handed to the
//    caller's UrlInputReader (runtime/input_fetch.h), so the codec does no I/O;
//  - safetensors bodies: request tensors in header order, then OrderPositionalInputs; the
//    answer with the outputs in the model's order and string metadata.
// Malformed input is a 400 (HttpError) naming the offending element, e.g.
// "inputs[0].data[3]: integer out of range [0, 255] for U8".
//
// Internal to runtime/: not part of the server's interface.
//
// Thread safety: pure functions (ParseJsonInputs calls `read_url` on the caller's thread).
#ifndef STASIS_RUNTIME_TENSOR_CODEC_H_
#define STASIS_RUNTIME_TENSOR_CODEC_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runtime/http_common.h"
#include "stasis/status.h"
#include "stasis/tensor.h"

namespace stasis::runtime::internal {

// The formats of a request body and of its answer (runtime/server.h).
struct WireFormats {
  bool safetensors_in = false;   // else JSON
  bool safetensors_out = false;  // else JSON
};

// Safetensors in when `content_type` starts with application/octet-stream or
// application/x-safetensors (any case); the answer in the format `accept` names
// (application/json first), else in the request's.
WireFormats NegotiateWireFormats(std::string_view content_type, std::string_view accept);

// The tensors of a safetensors file held in memory, in header order. Errors: those of
// ParseSafetensorsFileBytes (snapshot/safetensors.h).
StatusOr<std::vector<TensorData>> ParseSafetensorsBytes(std::string_view bytes);

// The model's positional inputs from a safetensors body: header order, unless every name is
// "<prefix>.<i>" or "<i>" with the indices exactly 0..n-1, then index order (server.h).
void OrderPositionalInputs(std::vector<TensorData>* tensors);

// The inputs of a safetensors request body: ParseSafetensorsBytes, then
// OrderPositionalInputs. Errors: 400 with the parser's message.
std::optional<HttpError> ParseSafetensorsInputs(std::string_view body,
                                                std::vector<TensorData>* out);

// A safetensors file holding `tensors` in this order, with `metadata` (key, value) pairs.
StatusOr<std::string> EncodeSafetensors(
    const std::vector<TensorData>& tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata);

// Reads the input `spec` (inputs[index], an object with a "url") into `out`, whose name is
// already set and must be kept; charges the bytes read to `*budget`.
using UrlInputReader = std::function<std::optional<HttpError>(
    const nlohmann::json& spec, size_t index, uint64_t* budget, TensorData* out)>;

// Appends the inputs of a JSON request `body` to `out`, in the request's order. Inputs
// without a name are called "input.<i>". The bytes url inputs may fetch, all together, are
// max_body_bytes less the body's size.
std::optional<HttpError> ParseJsonInputs(const std::string& body, uint64_t max_body_bytes,
                                         const UrlInputReader& read_url,
                                         std::vector<TensorData>* out);

// Requests nested deeper are refused before parsing (a body of '[' would otherwise cost
// ~90 bytes of memory per byte).
inline constexpr int kMaxJsonDepth = 64;
// The largest dimension an input shape may have.
inline constexpr uint32_t kMaxDimension = 0x7fffffff;

// False when brackets in `text` (outside strings) nest deeper than `max_depth`.
bool JsonDepthWithin(std::string_view text, int max_depth);

// An upper bound of the bytes an answer carrying `outputs` takes: as JSON (`json_answer`)
// or as safetensors. Cheap: it looks at sizes only.
uint64_t EstimateOutputBytes(const std::vector<TensorData>& outputs, bool json_answer);

// The "outputs" array of a JSON answer. Errors (500): an output whose byte size does not
// match its shape, or whose dtype JSON does not carry (code "unimplemented").
std::optional<HttpError> OutputsToJson(const std::vector<TensorData>& outputs, nlohmann::json* out);

}  // namespace stasis::runtime::internal

#endif  // STASIS_RUNTIME_TENSOR_CODEC_H_
