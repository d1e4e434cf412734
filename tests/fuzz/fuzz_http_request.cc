// libFuzzer target for what `stasis serve` does to a request's bytes before a model sees
// them: Beast's parser with the transport's limits (runtime/http_request_parse.h), the head
// checks, Content-Encoding undone, then the body through the wire codec (JSON or
// safetensors inputs) and the outputs' size bound. The input is the raw byte stream of one
// connection; only its first request is taken.
//
// Beyond "never crash, never hang, never allocate without bound" it checks the transport's
// promises (runtime/http_server.h): a head over the limit is never accepted, a request with
// two different Content-Lengths or with Content-Length and Transfer-Encoding is never
// accepted, a decoded body never exceeds the limit, an accepted head never meets an
// unsupported coding later; and the codec's: a rejection is a 4xx, accepted tensors have
// as many bytes as their shape says, and EstimateOutputBytes bounds the answer really built
// from them (the --max-output check relies on it). A violated invariant aborts, which
// libFuzzer reports as a crash.
//
// Seed corpus: tests/fuzz/corpus/http_request/; dictionary: tests/fuzz/http_request.dict.
#include <boost/asio/buffer.hpp>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/http_common.h"
#include "runtime/http_request_parse.h"
#include "runtime/tensor_codec.h"
#include "stasis/status.h"
#include "stasis/tensor.h"

namespace {

using namespace stasis;
using namespace stasis::runtime::internal;

constexpr uint32_t kMaxHeaderBytes = 4 << 10;
constexpr uint64_t kMaxBodyBytes = 1 << 20;

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
  }
}

// A Content-Length value as a number: digits, or a list of equal numbers ("3, 3", which
// RFC 9110 lets a recipient take as 3); nullopt for anything else.
std::optional<uint64_t> ParseLength(std::string_view text) {
  std::optional<uint64_t> value;
  for (;;) {
    const size_t comma = text.find(',');
    const std::string_view item = TrimWhitespace(text.substr(0, comma));
    uint64_t v = 0;
    const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (item.empty() || ec != std::errc() || end != item.data() + item.size()) return std::nullopt;
    if (value && *value != v) return std::nullopt;
    value = v;
    if (comma == std::string_view::npos) return value;
    text.remove_prefix(comma + 1);
  }
}

// What a rejected body must look like: a client error with a code and a message.
void CheckRejection(const HttpError& e) {
  Check(e.status >= 400 && e.status < 500, "a malformed body is a 4xx");
  Check(!e.code.empty() && !e.message.empty(), "a rejection says what and why");
}

// Accepted tensors are whole, and the answer built from them fits the estimate.
void CheckTensors(const std::vector<TensorData>& tensors) {
  for (const TensorData& t : tensors) {
    unsigned __int128 elements = 1;
    for (int64_t d : t.shape) {
      Check(d >= 0 && d <= kMaxDimension, "dimension within the limit");
      elements *= static_cast<uint64_t>(d);
    }
    Check(elements * DTypeBits(t.dtype) == static_cast<unsigned __int128>(t.bytes.size()) * 8,
          "bytes match shape and dtype");
  }
  nlohmann::json outputs;
  if (!OutputsToJson(tensors, &outputs)) {
    // What the server wraps around "outputs" (cold, latency, a request id of up to 64
    // characters: under 256 bytes) is within the estimate's fixed 512.
    const std::string answer = nlohmann::json{{"outputs", outputs}}.dump(
        -1, ' ', false, nlohmann::json::error_handler_t::replace);
    Check(answer.size() + 256 <= EstimateOutputBytes(tensors, true),
          "EstimateOutputBytes bounds the JSON answer");
  }
  StatusOr<std::string> encoded =
      EncodeSafetensors(tensors, {{"cold", "false"}, {"latency_ms", "123456.789"}});
  if (encoded.ok()) {
    Check(encoded->size() <= EstimateOutputBytes(tensors, false),
          "EstimateOutputBytes bounds the safetensors answer");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  RequestParser parser;
  LimitRequestParser(&parser, kMaxHeaderBytes, kMaxBodyBytes);
  parser.eager(true);

  boost::beast::error_code ec;
  size_t used = 0;
  while (used < size && !parser.is_done()) {
    const size_t n = parser.put(boost::asio::buffer(data + used, size - used), ec);
    used += n;
    if (ec || n == 0) break;
  }
  if (!ec && !parser.is_done() && parser.is_header_done()) parser.put_eof(ec);
  if (!parser.is_header_done()) return 0;  // the transport answers 400/431 or waits

  HttpRequest request;
  CopyRequestHead(parser, &request);
  Check(!request.method.empty(), "a method");
  Check(request.target.compare(0, request.path.size(), request.path) == 0,
        "the path is the target's start");
  size_t head_bytes = request.method.size() + request.target.size();
  int content_lengths = 0, transfer_encodings = 0;
  std::optional<uint64_t> first_length;
  bool lengths_differ = false;
  for (const auto& [name, value] : request.headers) {
    head_bytes += name.size() + value.size();
    if (EqualsIgnoringCase(name, "Content-Length")) {
      // Compared as numbers: "03" and "3" frame the same body.
      const std::optional<uint64_t> length = ParseLength(value);
      if (content_lengths++ == 0) first_length = length;
      lengths_differ = lengths_differ || !length || length != first_length;
    }
    if (EqualsIgnoringCase(name, "Transfer-Encoding")) ++transfer_encodings;
  }
  Check(head_bytes <= kMaxHeaderBytes, "an accepted head is within the limit");

  // Beast refuses some heads, CheckRequestHead the rest (a Transfer-Encoding other than
  // "chunked", with or without a Content-Length, is its 501): together they must refuse
  // every head that could frame a body two ways.
  std::optional<std::pair<int, std::string>> bad_head = CheckRequestHead(request);
  if (bad_head) {
    Check(bad_head->first == 415 || bad_head->first == 501, "a bad head is a 415 or a 501");
    return 0;
  }
  Check(!lengths_differ, "two different Content-Lengths are never accepted");
  Check(content_lengths == 0 || transfer_encodings == 0,
        "Content-Length with Transfer-Encoding is never accepted");
  if (ec || !parser.is_done()) return 0;  // the transport answers 400/413 or waits

  std::string body = parser.release().body();
  Check(body.size() <= kMaxBodyBytes, "the body as sent is within the limit");
  StatusOr<std::string> decoded =
      DecodeContent(request.Header("Content-Encoding"), std::move(body), kMaxBodyBytes);
  if (!decoded.ok()) {
    const StatusCode code = decoded.status().code();
    Check(code == StatusCode::kResourceExhausted || code == StatusCode::kInvalidArgument,
          "an accepted head's coding is supported");
    return 0;
  }
  Check(decoded->size() <= kMaxBodyBytes, "the decoded body is within the limit");

  std::vector<TensorData> inputs;
  const WireFormats formats =
      NegotiateWireFormats(request.Header("Content-Type"), request.Header("Accept"));
  std::optional<HttpError> error;
  if (formats.safetensors_in) {
    error = ParseSafetensorsInputs(*decoded, &inputs);
  } else {
    // No I/O here: an input given by reference is refused as the server's allow-list
    // refuses an address it does not hold.
    const UrlInputReader no_urls = [](const nlohmann::json&, size_t, uint64_t*,
                                      TensorData*) -> std::optional<HttpError> {
      return HttpError{403, "url_not_allowed", "no url is allowed here"};
    };
    error = ParseJsonInputs(*decoded, kMaxBodyBytes, no_urls, &inputs);
  }
  if (error) {
    CheckRejection(*error);
    return 0;
  }
  CheckTensors(inputs);
  return 0;
}
