// The sharded checkpoint's index, model.safetensors.index.json: ReadSafetensorsIndex
// (snapshot/safetensors.h).
#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "common/numbers.h"
#include "snapshot/safetensors.h"
#include "snapshot/safetensors_common.h"

namespace stasis {
namespace {

using Json = nlohmann::json;
using safetensors_internal::CheckNoNul;
using safetensors_internal::IndexContents;
using safetensors_internal::Quote;
using safetensors_internal::ReadIndex;
using safetensors_internal::TensorNameProblem;

// Skipped values in an index ("metadata") are arbitrary JSON; real ones are flat.
constexpr size_t kMaxIndexDepth = 64;

// ---------------------------------------------------------------------------------------
// Index parsing: {"metadata": <anything>, "weight_map": {tensor: file}, <anything else>}.

class IndexSax {
 public:
  bool null() { return Scalar("null"); }
  bool boolean(bool) { return Scalar("a boolean"); }
  bool number_integer(Json::number_integer_t) { return Scalar("a number"); }
  bool number_unsigned(Json::number_unsigned_t) { return Scalar("a number"); }
  bool number_float(Json::number_float_t, const std::string&) { return Scalar("a number"); }
  bool binary(Json::binary_t&) { return Scalar("binary data"); }
  bool string(std::string& s) {
    if (state_ != State::kMapValue) return Scalar("a string");
    if (s.empty() || s.find('/') != std::string::npos || s.find("..") != std::string::npos ||
        s.find('\0') != std::string::npos) {
      return Fail("'weight_map' entry " + Quote(map_key_) + ": shard file name " + Quote(s) +
                  " must be a plain file name beside the index (no '/', '..' or NUL)");
    }
    auto [it, inserted] = file_ids_.emplace(s, contents_.files.size());
    if (inserted) contents_.files.push_back(s);
    contents_.weight_map.emplace_back(std::move(map_key_), it->second);
    state_ = State::kMap;
    return true;
  }
  bool start_object(std::size_t) {
    switch (state_) {
      case State::kStart:
        state_ = State::kTop;
        return true;
      case State::kTopValue:
        if (top_key_ == "weight_map") {
          state_ = State::kMap;
          return true;
        }
        state_ = State::kSkip;
        return Push(true);
      case State::kSkip:
        return Push(true);
      default:
        return Scalar("an object");
    }
  }
  bool start_array(std::size_t) {
    if (state_ == State::kTopValue && top_key_ != "weight_map") {
      state_ = State::kSkip;
      return Push(false);
    }
    if (state_ == State::kSkip) return Push(false);
    return Scalar("an array");
  }
  bool end_object() {
    switch (state_) {
      case State::kTop:
        state_ = State::kDone;
        return true;
      case State::kMap:
        state_ = State::kTop;
        return true;
      case State::kSkip:
        return Pop();
      default:
        return Fail("internal: end of object", StatusCode::kInternal);
    }
  }
  bool end_array() {
    if (state_ == State::kSkip) return Pop();
    return Fail("internal: end of array", StatusCode::kInternal);
  }
  bool key(std::string& k) {
    switch (state_) {
      case State::kTop:
        if (!top_keys_.insert(k).second) return Fail("duplicate key " + Quote(k));
        if (k == "weight_map") saw_weight_map_ = true;
        top_key_ = std::move(k);
        state_ = State::kTopValue;
        return true;
      case State::kMap: {
        std::string problem = TensorNameProblem(k);
        if (!problem.empty()) return Fail("'weight_map': " + problem);
        if (!map_keys_.insert(k).second) return Fail("'weight_map': duplicate tensor " + Quote(k));
        map_key_ = std::move(k);
        state_ = State::kMapValue;
        return true;
      }
      case State::kSkip:
        if (!skip_.back().keys.insert(k).second)
          return Fail("'" + top_key_ + "': duplicate key " + Quote(k));
        return true;
      default:
        return Fail("internal: key", StatusCode::kInternal);
    }
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& ex) {
    return Fail(std::string("invalid JSON: ") + ex.what());
  }

  bool done() const { return state_ == State::kDone; }
  bool saw_weight_map() const { return saw_weight_map_; }
  const Status& error() const { return error_; }
  IndexContents& contents() { return contents_; }

 private:
  enum class State { kStart, kTop, kTopValue, kSkip, kMap, kMapValue, kDone };
  struct Level {
    bool is_object;
    std::unordered_set<std::string> keys;
  };

  bool Fail(std::string message, StatusCode code = StatusCode::kInvalidArgument) {
    if (error_.ok()) error_ = Status(code, message);
    return false;
  }
  bool Push(bool is_object) {
    if (skip_.size() >= kMaxIndexDepth)
      return Fail("'" + top_key_ + "' is nested deeper than " + Num(kMaxIndexDepth) + " levels");
    skip_.push_back(Level{is_object, {}});
    return true;
  }
  bool Pop() {
    skip_.pop_back();
    if (skip_.empty()) state_ = State::kTop;
    return true;
  }
  // A scalar is fine as (part of) a skipped value; anywhere else it is the wrong kind.
  bool Scalar(std::string_view found) {
    if (state_ == State::kSkip) return true;
    if (state_ == State::kTopValue) {
      if (top_key_ == "weight_map")
        return Fail("'weight_map' must be an object, found " + std::string(found));
      state_ = State::kTop;
      return true;
    }
    if (state_ == State::kMapValue) {
      return Fail("'weight_map' entry " + Quote(map_key_) + " must be a file name, found " +
                  std::string(found));
    }
    return Fail("unexpected " + std::string(found) + " in the index");
  }

  State state_ = State::kStart;
  Status error_;
  std::string top_key_;
  std::unordered_set<std::string> top_keys_;
  bool saw_weight_map_ = false;
  std::string map_key_;
  std::unordered_set<std::string> map_keys_;
  std::unordered_map<std::string, size_t> file_ids_;
  std::vector<Level> skip_;
  IndexContents contents_;
};

}  // namespace

namespace safetensors_internal {

StatusOr<IndexContents> ReadIndex(FileSystem* fs, const std::string& index_path,
                                  std::vector<std::string>* resolved) {
  STASIS_ASSIGN_OR_RETURN(std::string text,
                          ReadFileToString(fs, index_path, kMaxSafetensorsIndexSize));
  STASIS_RETURN_IF_ERROR(CheckNoNul(text).WithContext(Quote(index_path)));
  IndexSax sax;
  bool ok = Json::sax_parse(text.begin(), text.end(), &sax, Json::input_format_t::json,
                            /*strict=*/true);
  Status status;
  if (!ok || !sax.done()) {
    status = sax.error().ok() ? InvalidArgumentError("invalid index") : sax.error();
  } else if (!sax.saw_weight_map()) {
    status = InvalidArgumentError("missing 'weight_map'");
  } else if (sax.contents().weight_map.empty()) {
    status = InvalidArgumentError("'weight_map' is empty");
  }
  if (!status.ok()) return status.WithContext(Quote(index_path));

  size_t slash = index_path.rfind('/');
  std::string dir = slash == std::string::npos ? "" : index_path.substr(0, slash + 1);
  resolved->clear();
  for (const std::string& f : sax.contents().files) resolved->push_back(dir + f);
  return std::move(sax.contents());
}

}  // namespace safetensors_internal

StatusOr<std::vector<std::string>> ReadSafetensorsIndex(FileSystem* fs,
                                                        const std::string& index_path) {
  std::vector<std::string> resolved;
  STASIS_RETURN_IF_ERROR(ReadIndex(fs, index_path, &resolved));
  return resolved;
}

}  // namespace stasis
