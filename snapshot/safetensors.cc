#include "snapshot/safetensors.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <unordered_map>
#include <unordered_set>

#include "snapshot/format.h"
#include "stasis/image.h"

namespace stasis {
namespace {

using Json = nlohmann::json;

constexpr uint64_t kLengthPrefixSize = 8;
// The reference parser is limited by usize; the image format by 2^62 elements. Taking the
// smaller means a header we accept always imports.
constexpr uint64_t kMaxElements = uint64_t{1} << 62;
// Pieces in which the importer copies tensor data (and the size of its reused buffer).
constexpr uint64_t kImportPieceSize = 4ull << 20;
// Skipped values in an index ("metadata") are arbitrary JSON; real ones are flat.
constexpr size_t kMaxIndexDepth = 64;

std::string Num(uint64_t v) { return std::to_string(v); }

// Quotes a name for a message, cutting very long ones so that errors stay readable.
std::string Quote(std::string_view s) {
  constexpr size_t kMaxShown = 128;
  if (s.size() <= kMaxShown) return "'" + std::string(s) + "'";
  return "'" + std::string(s.substr(0, kMaxShown)) + "...' (" + Num(s.size()) + " bytes)";
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i != 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

uint64_t LoadU64LE(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void AppendU64LE(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Strict UTF-8 (no overlongs, surrogates or code points above U+10FFFF): what nlohmann's
// lexer accepts, so a header we write is one we can read back.
bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    uint8_t c = static_cast<uint8_t>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (s.size() - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      uint8_t cc = static_cast<uint8_t>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    i += len;
  }
  return true;
}

// JSON string literal, escaped like serde_json (quote, backslash, control characters;
// non-ASCII passes through). REQUIRES: IsValidUtf8(s).
void AppendJsonString(std::string* out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->push_back('"');
  for (char ch : s) {
    uint8_t c = static_cast<uint8_t>(ch);
    switch (c) {
      case '"':
        *out += "\\\"";
        break;
      case '\\':
        *out += "\\\\";
        break;
      case '\b':
        *out += "\\b";
        break;
      case '\f':
        *out += "\\f";
        break;
      case '\n':
        *out += "\\n";
        break;
      case '\r':
        *out += "\\r";
        break;
      case '\t':
        *out += "\\t";
        break;
      default:
        if (c < 0x20) {
          *out += "\\u00";
          out->push_back(kHex[c >> 4]);
          out->push_back(kHex[c & 0xf]);
        } else {
          out->push_back(ch);
        }
    }
  }
  out->push_back('"');
}

// The checks every tensor name gets, on read and on write. Returns an empty string when
// the name is fine, else what is wrong with it.
std::string TensorNameProblem(std::string_view name) {
  if (name.empty()) return "empty tensor name";
  if (name.size() > format::kMaxTensorNameLen)
    return "tensor name " + Quote(name) + " exceeds " + Num(format::kMaxTensorNameLen) + " bytes";
  if (name.find('\0') != std::string_view::npos)
    return "tensor name " + Quote(name) + " contains NUL";
  return "";
}

// Byte size of a tensor: prod(shape) * bits / 8, with every step checked. The error
// message has no context; callers prefix the tensor.
StatusOr<uint64_t> TensorByteSize(DType dtype, const std::vector<int64_t>& shape) {
  uint64_t count = 1;
  for (int64_t d : shape) {
    if (d < 0) return InvalidArgumentError("negative dimension in shape " + ShapeString(shape));
    // A later zero cannot rescue an absurd partial product: the reference parser fails on
    // the overflow too, and the image format caps the count at 2^62.
    if (__builtin_mul_overflow(count, static_cast<uint64_t>(d), &count) || count >= kMaxElements)
      return InvalidArgumentError("element count of shape " + ShapeString(shape) +
                                  " overflows 2^62");
  }
  unsigned __int128 nbits = static_cast<unsigned __int128>(count) * DTypeBits(dtype);
  if (nbits % 8 != 0) {
    return InvalidArgumentError(Num(count) + " elements of " + std::string(DTypeName(dtype)) +
                                " (" + Num(DTypeBits(dtype)) +
                                " bits each) are not a whole number of bytes");
  }
  unsigned __int128 bytes = nbits / 8;
  if (bytes > std::numeric_limits<uint64_t>::max())
    return InvalidArgumentError("byte size of shape " + ShapeString(shape) + " overflows");
  return static_cast<uint64_t>(bytes);
}

// nlohmann's lexer takes a NUL byte for the end of input, so "{}\0garbage" would parse.
// A raw NUL is never valid JSON (inside strings it must be escaped), so refuse it outright.
Status CheckNoNul(std::string_view json) {
  size_t nul = json.find('\0');
  if (nul == std::string_view::npos) return OkStatus();
  return InvalidArgumentError("invalid JSON: NUL byte at offset " + Num(nul));
}

// ---------------------------------------------------------------------------------------
// Header parsing. A schema-driven SAX handler: it keeps only the fields it knows (no DOM,
// so memory is a small multiple of the header), rejects a duplicate key or an unexpected
// value the moment it sees it, and never goes deeper than object > entry > array. The
// nlohmann SAX parser itself is iterative, so a crafted "[[[[..." costs no stack either.

class HeaderSax {
 public:
  bool null() {
    if (state_ == State::kTopValue && key_ == "__metadata__") {
      // serde reads Option<HashMap> from null as None; accept it the same way.
      state_ = State::kTop;
      return true;
    }
    return Unexpected("null");
  }
  bool boolean(bool) { return Unexpected("a boolean"); }
  bool number_integer(Json::number_integer_t v) {
    if (v >= 0) return number_unsigned(static_cast<uint64_t>(v));  // "-0"
    if (state_ == State::kShape || state_ == State::kOffsets)
      return Fail(Context() + ": " + FieldName() + " holds a negative number " + std::to_string(v));
    return Unexpected("a number");
  }
  bool number_unsigned(Json::number_unsigned_t v) {
    if (state_ == State::kShape) {
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        return Fail(Context() + ": dimension " + Num(v) + " in 'shape' is too large");
      if (entry_.shape.size() >= format::kMaxRank) {
        return Fail(Context() + ": rank exceeds " + Num(format::kMaxRank),
                    StatusCode::kResourceExhausted);
      }
      entry_.shape.push_back(static_cast<int64_t>(v));
      return true;
    }
    if (state_ == State::kOffsets) {
      if (offsets_count_ >= 2)
        return Fail(Context() + ": 'data_offsets' must hold exactly two integers");
      offsets_[offsets_count_++] = v;
      return true;
    }
    return Unexpected("a number");
  }
  bool number_float(Json::number_float_t, const std::string& text) {
    if (state_ == State::kShape || state_ == State::kOffsets) {
      return Fail(Context() + ": " + FieldName() + " holds " + Quote(text) +
                  ", not a non-negative integer (or one too large for 64 bits)");
    }
    return Unexpected("a number");
  }
  bool string(std::string& s) {
    if (state_ == State::kEntryValue && field_ == kDtype) {
      auto dtype = DTypeFromName(s);
      if (!dtype) return Fail(Context() + ": unknown dtype " + Quote(s));
      entry_.dtype = *dtype;
      state_ = State::kEntry;
      return true;
    }
    if (state_ == State::kMetaValue) {
      metadata_.emplace_back(std::move(meta_key_), std::move(s));
      state_ = State::kMeta;
      return true;
    }
    return Unexpected("a string");
  }
  bool binary(Json::binary_t&) { return Unexpected("binary data"); }

  bool start_object(std::size_t) {
    switch (state_) {
      case State::kStart:
        state_ = State::kTop;
        return true;
      case State::kTopValue:
        if (key_ == "__metadata__") {
          state_ = State::kMeta;
        } else {
          entry_ = SafetensorsEntry();
          entry_.name = std::move(key_);
          fields_seen_ = 0;
          state_ = State::kEntry;
        }
        return true;
      default:
        return Unexpected("an object");
    }
  }
  bool key(std::string& k) {
    switch (state_) {
      case State::kTop:
        if (k == "__metadata__") {
          if (saw_metadata_) return Fail("duplicate key '__metadata__'");
          saw_metadata_ = true;
        } else {
          std::string problem = TensorNameProblem(k);
          if (!problem.empty()) return Fail(problem);
          if (entries_.size() >= format::kMaxTensors) {
            return Fail("more than " + Num(format::kMaxTensors) + " tensors",
                        StatusCode::kResourceExhausted);
          }
        }
        key_ = std::move(k);
        state_ = State::kTopValue;
        return true;
      case State::kEntry: {
        int field = k == "dtype"          ? kDtype
                    : k == "shape"        ? kShape
                    : k == "data_offsets" ? kOffsets
                                          : 0;
        if (field == 0) return Fail(Context() + ": unknown field " + Quote(k));
        if (fields_seen_ & field) return Fail(Context() + ": duplicate key " + Quote(k));
        fields_seen_ |= field;
        field_ = field;
        state_ = State::kEntryValue;
        return true;
      }
      case State::kMeta:
        meta_key_ = std::move(k);
        state_ = State::kMetaValue;
        return true;
      default:
        return Fail("internal: key in state " + Num(static_cast<int>(state_)),
                    StatusCode::kInternal);
    }
  }
  bool end_object() {
    switch (state_) {
      case State::kEntry:
        for (int f : {kDtype, kShape, kOffsets}) {
          if (!(fields_seen_ & f)) {
            field_ = f;
            return Fail(Context() + ": missing " + FieldName());
          }
        }
        entries_.push_back(std::move(entry_));
        state_ = State::kTop;
        return true;
      case State::kMeta:
        state_ = State::kTop;
        return true;
      case State::kTop:
        state_ = State::kDone;
        return true;
      default:
        return Fail("internal: end of object in state " + Num(static_cast<int>(state_)),
                    StatusCode::kInternal);
    }
  }
  bool start_array(std::size_t) {
    if (state_ == State::kEntryValue && field_ == kShape) {
      entry_.shape.clear();
      state_ = State::kShape;
      return true;
    }
    if (state_ == State::kEntryValue && field_ == kOffsets) {
      offsets_count_ = 0;
      state_ = State::kOffsets;
      return true;
    }
    return Unexpected("an array");
  }
  bool end_array() {
    if (state_ == State::kShape) {
      state_ = State::kEntry;
      return true;
    }
    if (state_ == State::kOffsets) {
      if (offsets_count_ != 2) {
        return Fail(Context() + ": 'data_offsets' must hold exactly two integers, found " +
                    Num(offsets_count_));
      }
      if (offsets_[0] > offsets_[1]) {
        return Fail(Context() + ": 'data_offsets' [" + Num(offsets_[0]) + ", " + Num(offsets_[1]) +
                    "] begin after they end");
      }
      entry_.begin = offsets_[0];
      entry_.end = offsets_[1];
      state_ = State::kEntry;
      return true;
    }
    return Fail("internal: end of array in state " + Num(static_cast<int>(state_)),
                StatusCode::kInternal);
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& ex) {
    return Fail(std::string("invalid JSON: ") + ex.what());
  }

  bool done() const { return state_ == State::kDone; }
  const Status& error() const { return error_; }
  std::vector<SafetensorsEntry>& entries() { return entries_; }
  std::vector<std::pair<std::string, std::string>>& metadata() { return metadata_; }

 private:
  enum class State {
    kStart,       // before the top-level object
    kTop,         // in the top-level object, expecting a key or its end
    kTopValue,    // after a top-level key (key_)
    kEntry,       // in a tensor entry, expecting a field or its end
    kEntryValue,  // after a field name (field_)
    kShape,       // in the shape array
    kOffsets,     // in the data_offsets array
    kMeta,        // in __metadata__, expecting a key or its end
    kMetaValue,   // after a __metadata__ key (meta_key_)
    kDone,
  };
  static constexpr int kDtype = 1, kShape = 2, kOffsets = 4;

  std::string Context() const { return "tensor " + Quote(entry_.name); }
  std::string FieldName() const {
    return field_ == kDtype ? "'dtype'" : field_ == kShape ? "'shape'" : "'data_offsets'";
  }

  bool Fail(std::string message, StatusCode code = StatusCode::kInvalidArgument) {
    if (error_.ok()) error_ = Status(code, message);
    return false;
  }

  // A value of the wrong kind (`found`) where the schema expects something else.
  bool Unexpected(std::string_view found) {
    std::string f(found);
    switch (state_) {
      case State::kTopValue:
        if (key_ == "__metadata__")
          return Fail("'__metadata__' must be an object of strings, found " + f);
        return Fail("tensor " + Quote(key_) + ": entry must be an object, found " + f);
      case State::kEntryValue:
        if (field_ == kDtype) return Fail(Context() + ": 'dtype' must be a string, found " + f);
        if (field_ == kShape) {
          return Fail(Context() + ": 'shape' must be an array of non-negative integers, found " +
                      f);
        }
        return Fail(Context() +
                    ": 'data_offsets' must be an array of two non-negative integers, found " + f);
      case State::kShape:
      case State::kOffsets:
        return Fail(Context() + ": " + FieldName() +
                    " must hold only non-negative integers, found " + f);
      case State::kMetaValue:
        return Fail("'__metadata__' value for key " + Quote(meta_key_) +
                    " must be a string, found " + f);
      default:
        return Fail("unexpected " + f + " in the header");
    }
  }

  State state_ = State::kStart;
  Status error_;
  std::string key_;
  SafetensorsEntry entry_;
  int fields_seen_ = 0;
  int field_ = 0;
  uint64_t offsets_[2] = {0, 0};
  size_t offsets_count_ = 0;
  bool saw_metadata_ = false;
  std::string meta_key_;
  std::vector<SafetensorsEntry> entries_;
  std::vector<std::pair<std::string, std::string>> metadata_;
};

// ---------------------------------------------------------------------------------------
// Index parsing: {"metadata": <anything>, "weight_map": {tensor: file}, <anything else>}.

struct IndexContents {
  std::vector<std::string> files;                          // distinct, first appearance
  std::vector<std::pair<std::string, size_t>> weight_map;  // tensor -> index into files
};

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

// The 8-byte header length `n` of a file of `size` bytes, checked before anything is
// allocated for it: the length is the first thing a hostile file controls. A length the
// file cannot hold says "not safetensors" (e.g. a text file), which is more useful to the
// user than a limit.
Status CheckHeaderLength(uint64_t n, uint64_t size) {
  if (n > size - kLengthPrefixSize) {
    return InvalidArgumentError("not a safetensors file, or truncated: header length " + Num(n) +
                                " but only " + Num(size - kLengthPrefixSize) + " bytes follow it");
  }
  if (n > kMaxSafetensorsHeaderSize) {
    return ResourceExhaustedError("header length " + Num(n) + " exceeds the limit of " +
                                  Num(kMaxSafetensorsHeaderSize) + " bytes");
  }
  return OkStatus();
}

Status CheckHasLengthPrefix(uint64_t size) {
  if (size >= kLengthPrefixSize) return OkStatus();
  return InvalidArgumentError("truncated: the file has " + Num(size) +
                              " bytes, less than the 8-byte header length");
}

// ReadSafetensorsHeader, also returning the file size.
StatusOr<SafetensorsHeader> ReadHeader(FileSystem* fs, const std::string& path,
                                       uint64_t* file_size) {
  auto read = [&]() -> StatusOr<SafetensorsHeader> {
    STASIS_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> file, fs->OpenRandomAccess(path));
    uint64_t size = file->Size();
    *file_size = size;
    STASIS_RETURN_IF_ERROR(CheckHasLengthPrefix(size));
    uint8_t prefix[kLengthPrefixSize];
    STASIS_RETURN_IF_ERROR(file->ReadExact(0, sizeof(prefix), prefix, "header length"));
    uint64_t n = LoadU64LE(prefix);
    STASIS_RETURN_IF_ERROR(CheckHeaderLength(n, size));
    std::string json(n, '\0');
    STASIS_RETURN_IF_ERROR(file->ReadExact(kLengthPrefixSize, n, json.data(), "header"));
    return ParseSafetensorsHeader(json, size);
  };
  StatusOr<SafetensorsHeader> header = read();
  if (!header.ok()) return header.status().WithContext(Quote(path));
  return header;
}

// Grouping classes in region order: f32 first, then 16-bit floats, then the rest.
int GroupingRank(DType t) {
  switch (GroupingElementSize(t)) {
    case 4:
      return 0;
    case 2:
      return 1;
    default:
      return 2;
  }
}

Status AppendAll(WritableFile* file, const std::string& header,
                 const std::vector<SafetensorsTensorOut>& tensors) {
  STASIS_RETURN_IF_ERROR(file->Append(header.data(), header.size()));
  for (const SafetensorsTensorOut& t : tensors)
    if (t.size > 0) STASIS_RETURN_IF_ERROR(file->Append(t.data, t.size));
  STASIS_RETURN_IF_ERROR(file->Sync());
  return file->Close();
}

}  // namespace

StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view header_json,
                                                   uint64_t file_size) {
  const uint64_t n = header_json.size();
  if (n > kMaxSafetensorsHeaderSize) {
    return ResourceExhaustedError("header length " + Num(n) + " exceeds the limit of " +
                                  Num(kMaxSafetensorsHeaderSize) + " bytes");
  }
  SafetensorsHeader header;
  header.data_start = kLengthPrefixSize + n;
  if (file_size < header.data_start) {
    return InvalidArgumentError("truncated: the header ends at byte " + Num(header.data_start) +
                                " but the file has " + Num(file_size));
  }
  if (n == 0 || header_json[0] != '{')
    return InvalidArgumentError("header does not start with '{'");
  STASIS_RETURN_IF_ERROR(CheckNoNul(header_json));

  HeaderSax sax;
  bool ok = Json::sax_parse(header_json.begin(), header_json.end(), &sax,
                            Json::input_format_t::json, /*strict=*/true);
  if (!ok || !sax.done()) {
    if (!sax.error().ok()) return sax.error();
    return InvalidArgumentError("invalid JSON header");
  }
  header.entries = std::move(sax.entries());
  header.metadata = std::move(sax.metadata());
  const std::vector<SafetensorsEntry>& entries = header.entries;

  // Duplicate names, found by sorting rather than hashing so no second copy of every name
  // is held while parsing.
  std::vector<size_t> order(entries.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return entries[a].name < entries[b].name; });
  for (size_t k = 1; k < order.size(); ++k) {
    if (entries[order[k]].name == entries[order[k - 1]].name)
      return InvalidArgumentError("duplicate tensor " + Quote(entries[order[k]].name));
  }
  std::stable_sort(header.metadata.begin(), header.metadata.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t k = 1; k < header.metadata.size(); ++k) {
    if (header.metadata[k].first == header.metadata[k - 1].first)
      return InvalidArgumentError("'__metadata__': duplicate key " +
                                  Quote(header.metadata[k].first));
  }

  for (const SafetensorsEntry& e : entries) {
    StatusOr<uint64_t> bytes = TensorByteSize(e.dtype, e.shape);
    if (!bytes.ok()) return bytes.status().WithContext("tensor " + Quote(e.name));
    if (e.end - e.begin != *bytes) {
      return InvalidArgumentError("tensor " + Quote(e.name) + ": 'data_offsets' [" + Num(e.begin) +
                                  ", " + Num(e.end) + "] span " + Num(e.end - e.begin) +
                                  " bytes but " + std::string(DTypeName(e.dtype)) + " " +
                                  ShapeString(e.shape) + " needs " + Num(*bytes));
    }
  }

  // Like the reference parser: sorted by (begin, end), each range starts where the last
  // ended, and the last ends at EOF.
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const SafetensorsEntry &x = entries[a], &y = entries[b];
    if (x.begin != y.begin) return x.begin < y.begin;
    if (x.end != y.end) return x.end < y.end;
    return a < b;
  });
  uint64_t covered = 0;
  const SafetensorsEntry* prev = nullptr;
  for (size_t idx : order) {
    const SafetensorsEntry& e = entries[idx];
    if (e.begin > covered) {
      return InvalidArgumentError("hole in the data: bytes [" + Num(covered) + ", " + Num(e.begin) +
                                  ") before tensor " + Quote(e.name) + " belong to no tensor");
    }
    if (e.begin < covered) {
      return InvalidArgumentError("tensor " + Quote(e.name) + " [" + Num(e.begin) + ", " +
                                  Num(e.end) + ") overlaps tensor " + Quote(prev->name) + " [" +
                                  Num(prev->begin) + ", " + Num(prev->end) + ")");
    }
    covered = e.end;
    prev = &e;
  }
  const uint64_t data_size = file_size - header.data_start;
  if (covered > data_size) {
    return InvalidArgumentError("truncated: tensor data ends at byte " + Num(covered) +
                                " of the data buffer but the file holds " + Num(data_size));
  }
  if (covered < data_size) {
    return InvalidArgumentError(Num(data_size - covered) +
                                " trailing bytes after the last tensor (data buffer is " +
                                Num(data_size) + " bytes, tensors cover " + Num(covered) + ")");
  }
  return header;
}

StatusOr<SafetensorsHeader> ReadSafetensorsHeader(FileSystem* fs, const std::string& path) {
  uint64_t size = 0;
  return ReadHeader(fs, path, &size);
}

StatusOr<SafetensorsHeader> ParseSafetensorsFileBytes(std::string_view file) {
  STASIS_RETURN_IF_ERROR(CheckHasLengthPrefix(file.size()));
  const uint64_t n = LoadU64LE(reinterpret_cast<const uint8_t*>(file.data()));
  STASIS_RETURN_IF_ERROR(CheckHeaderLength(n, file.size()));
  return ParseSafetensorsHeader(file.substr(kLengthPrefixSize, n), file.size());
}

StatusOr<std::vector<std::string>> ReadSafetensorsIndex(FileSystem* fs,
                                                        const std::string& index_path) {
  std::vector<std::string> resolved;
  STASIS_RETURN_IF_ERROR(ReadIndex(fs, index_path, &resolved));
  return resolved;
}

StatusOr<SafetensorsImportPlan> PlanSafetensorsImport(FileSystem* fs, const std::string& path) {
  SafetensorsImportPlan plan;
  const bool sharded = EndsWith(path, ".json");
  IndexContents index;
  if (sharded) {
    STASIS_ASSIGN_OR_RETURN(index, ReadIndex(fs, path, &plan.shard_paths));
  } else {
    plan.shard_paths.push_back(path);
  }

  uint64_t total = 0;
  for (const std::string& shard : plan.shard_paths) {
    uint64_t size = 0;
    STASIS_ASSIGN_OR_RETURN(SafetensorsHeader header, ReadHeader(fs, shard, &size));
    total += header.entries.size();
    if (total > format::kMaxTensors) {
      return ResourceExhaustedError("the checkpoint has more than " + Num(format::kMaxTensors) +
                                    " tensors");
    }
    plan.shards.push_back(std::move(header));
    plan.shard_sizes.push_back(size);
  }

  // Name -> (shard, entry). Views point into plan.shards, which no longer changes.
  std::unordered_map<std::string_view, std::pair<size_t, size_t>> where;
  where.reserve(total);
  for (size_t s = 0; s < plan.shards.size(); ++s) {
    const auto& entries = plan.shards[s].entries;
    for (size_t i = 0; i < entries.size(); ++i) {
      auto [it, inserted] = where.emplace(entries[i].name, std::make_pair(s, i));
      if (!inserted) {
        return InvalidArgumentError("tensor " + Quote(entries[i].name) + " is in both " +
                                    Quote(plan.shard_paths[it->second.first]) + " and " +
                                    Quote(plan.shard_paths[s]));
      }
    }
  }
  if (sharded) {
    for (const auto& [name, file] : index.weight_map) {
      auto it = where.find(name);
      if (it == where.end()) {
        return InvalidArgumentError("weight_map lists tensor " + Quote(name) + " in " +
                                    Quote(plan.shard_paths[file]) + " but no shard holds it");
      }
      if (it->second.first != file) {
        return InvalidArgumentError("weight_map lists tensor " + Quote(name) + " in " +
                                    Quote(plan.shard_paths[file]) + " but it is in " +
                                    Quote(plan.shard_paths[it->second.first]));
      }
    }
    // weight_map names are unique and each is a tensor of its shard, so equal counts mean
    // every tensor is listed.
    if (index.weight_map.size() != total) {
      std::unordered_set<std::string_view> listed;
      for (const auto& entry : index.weight_map) listed.insert(entry.first);
      for (size_t s = 0; s < plan.shards.size(); ++s) {
        for (const SafetensorsEntry& e : plan.shards[s].entries) {
          if (!listed.count(e.name)) {
            return InvalidArgumentError("tensor " + Quote(e.name) + " in " +
                                        Quote(plan.shard_paths[s]) +
                                        " is not listed in the weight_map");
          }
        }
      }
    }
  }

  for (size_t s = 0; s < plan.shards.size(); ++s)
    for (size_t i = 0; i < plan.shards[s].entries.size(); ++i)
      plan.items.push_back(SafetensorsImportItem{s, i, 0});
  auto entry_of = [&](const SafetensorsImportItem& it) -> const SafetensorsEntry& {
    return plan.shards[it.shard].entries[it.entry];
  };
  std::sort(plan.items.begin(), plan.items.end(),
            [&](const SafetensorsImportItem& a, const SafetensorsImportItem& b) {
              const SafetensorsEntry &x = entry_of(a), &y = entry_of(b);
              int rx = GroupingRank(x.dtype), ry = GroupingRank(y.dtype);
              if (rx != ry) return rx < ry;
              if (a.shard != b.shard) return a.shard < b.shard;
              if (x.begin != y.begin) return x.begin < y.begin;
              if (x.end != y.end) return x.end < y.end;
              return a.entry < b.entry;
            });
  uint64_t offset = 0;
  for (SafetensorsImportItem& item : plan.items) {
    const SafetensorsEntry& e = entry_of(item);
    offset = format::AlignUp(offset, kImportTensorAlignment);
    item.region_offset = offset;
    // Each size is bounded by its file's size, so the sum cannot wrap before the check.
    offset += e.end - e.begin;
    if (offset > format::kMaxRegionSize) {
      return ResourceExhaustedError(
          "the checkpoint's tensors exceed the region limit of 2^48 "
          "bytes");
    }
  }
  plan.region_size = offset;

  std::map<std::string, std::string> merged;
  bool any_metadata = false;
  for (const SafetensorsHeader& h : plan.shards) {
    for (const auto& [k, v] : h.metadata) {
      any_metadata = true;
      merged.emplace(k, v);  // the first shard wins
    }
  }
  if (any_metadata) {
    Json object = Json::object();
    for (const auto& [k, v] : merged) object[k] = v;
    // The parser validated every string as UTF-8, so "replace" never fires; it only keeps
    // dump() from having a throwing path.
    plan.metadata_json = object.dump(-1, ' ', false, Json::error_handler_t::replace);
    if (plan.metadata_json.size() > format::kMaxMetadataValueLen) {
      return ResourceExhaustedError("'__metadata__' is " + Num(plan.metadata_json.size()) +
                                    " bytes as JSON, over the image's metadata limit of " +
                                    Num(format::kMaxMetadataValueLen));
    }
  }
  return plan;
}

Status ImportSafetensors(FileSystem* fs, const std::string& path, ImageWriter* writer,
                         const ImportOptions& options) {
  STASIS_ASSIGN_OR_RETURN(SafetensorsImportPlan plan, PlanSafetensorsImport(fs, path));

  format::RegionInfo region_info;
  region_info.size = plan.region_size;
  region_info.alignment = 4096;
  region_info.va_hint = 0;
  region_info.device_kind = format::DeviceKind::kCpu;
  region_info.device_ordinal = -1;
  STASIS_ASSIGN_OR_RETURN(uint32_t region, writer->AddRegion(region_info));
  STASIS_RETURN_IF_ERROR(writer->SetMetadata("source.format", "safetensors"));
  if (!plan.metadata_json.empty())
    STASIS_RETURN_IF_ERROR(writer->SetMetadata("safetensors.metadata", plan.metadata_json));

  std::vector<std::unique_ptr<RandomAccessFile>> files;
  for (size_t s = 0; s < plan.shard_paths.size(); ++s) {
    STASIS_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> file,
                            fs->OpenRandomAccess(plan.shard_paths[s]));
    // The headers were validated against the size seen then; a file that changed since
    // could make those offsets lie.
    if (file->Size() != plan.shard_sizes[s]) {
      return FailedPreconditionError(Quote(plan.shard_paths[s]) + " changed size during import (" +
                                     Num(plan.shard_sizes[s]) + " -> " + Num(file->Size()) +
                                     " bytes)");
    }
    files.push_back(std::move(file));
  }

  uint64_t largest = 0;
  for (const SafetensorsImportItem& item : plan.items) {
    const SafetensorsEntry& e = plan.shards[item.shard].entries[item.entry];
    largest = std::max(largest, e.end - e.begin);
  }
  std::vector<uint8_t> buffer(std::min(largest, kImportPieceSize));

  for (const SafetensorsImportItem& item : plan.items) {
    const SafetensorsHeader& header = plan.shards[item.shard];
    const SafetensorsEntry& e = header.entries[item.entry];
    const uint64_t size = e.end - e.begin;
    const int element_size = GroupingElementSize(e.dtype);
    for (uint64_t done = 0; done < size;) {
      const size_t n = static_cast<size_t>(std::min(size - done, kImportPieceSize));
      STASIS_RETURN_IF_ERROR(files[item.shard]->ReadExact(
          header.data_start + e.begin + done, n, buffer.data(),
          "tensor " + Quote(e.name) + " in " + Quote(plan.shard_paths[item.shard])));
      STASIS_RETURN_IF_ERROR(
          writer->AddRegionData(region, item.region_offset + done, buffer.data(), n, element_size));
      done += n;
    }
    format::TensorInfo tensor;
    tensor.name = e.name;
    tensor.dtype = e.dtype;
    tensor.shape = e.shape;
    tensor.strides = format::ContiguousStrides(e.shape);
    tensor.region_id = region;
    tensor.byte_offset = item.region_offset;
    tensor.byte_size = size;
    STASIS_RETURN_IF_ERROR(writer->AddTensor(std::move(tensor)));
  }
  return OkStatus();
}

StatusOr<std::string> EncodeSafetensorsHeader(
    const std::vector<SafetensorsTensorOut>& tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::string json = "{";
  if (!metadata.empty()) {
    std::unordered_set<std::string_view> keys;
    json += "\"__metadata__\":{";
    for (size_t i = 0; i < metadata.size(); ++i) {
      const auto& [k, v] = metadata[i];
      if (!keys.insert(k).second)
        return InvalidArgumentError("metadata: duplicate key " + Quote(k));
      if (!IsValidUtf8(k) || !IsValidUtf8(v))
        return InvalidArgumentError("metadata: key or value of " + Quote(k) + " is not UTF-8");
      if (i != 0) json += ',';
      AppendJsonString(&json, k);
      json += ':';
      AppendJsonString(&json, v);
    }
    json += '}';
  }
  std::unordered_set<std::string_view> names;
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const SafetensorsTensorOut& t = tensors[i];
    std::string problem = TensorNameProblem(t.name);
    if (!problem.empty()) return InvalidArgumentError("tensor " + Num(i) + ": " + problem);
    if (!IsValidUtf8(t.name))
      return InvalidArgumentError("tensor " + Num(i) + ": name is not UTF-8");
    if (t.name == "__metadata__")
      return InvalidArgumentError("tensor " + Num(i) + ": '__metadata__' is reserved");
    if (!names.insert(t.name).second)
      return InvalidArgumentError("duplicate tensor " + Quote(t.name));
    StatusOr<uint64_t> bytes = TensorByteSize(t.dtype, t.shape);
    if (!bytes.ok()) return bytes.status().WithContext("tensor " + Quote(t.name));
    if (*bytes != t.size) {
      return InvalidArgumentError("tensor " + Quote(t.name) + ": " + Num(t.size) +
                                  " bytes given, " + std::string(DTypeName(t.dtype)) + " " +
                                  ShapeString(t.shape) + " needs " + Num(*bytes));
    }
    uint64_t end;
    if (__builtin_add_overflow(offset, t.size, &end))
      return InvalidArgumentError("total tensor size overflows 64 bits");
    if (!metadata.empty() || i != 0) json += ',';
    AppendJsonString(&json, t.name);
    json += ":{\"dtype\":\"";
    json += DTypeName(t.dtype);
    json += "\",\"shape\":[";
    for (size_t d = 0; d < t.shape.size(); ++d) {
      if (d != 0) json += ',';
      json += std::to_string(t.shape[d]);
    }
    json += "],\"data_offsets\":[" + Num(offset) + "," + Num(end) + "]}";
    offset = end;
  }
  json += '}';
  // Like the reference writer: pad so the data buffer starts 8-aligned.
  json.append((8 - json.size() % 8) % 8, ' ');
  if (json.size() > kMaxSafetensorsHeaderSize) {
    return ResourceExhaustedError("header would be " + Num(json.size()) +
                                  " bytes, over the limit of " + Num(kMaxSafetensorsHeaderSize));
  }
  std::string out;
  out.reserve(kLengthPrefixSize + json.size());
  AppendU64LE(&out, json.size());
  out += json;
  return out;
}

Status WriteSafetensors(FileSystem* fs, const std::string& path,
                        const std::vector<SafetensorsTensorOut>& tensors,
                        const std::vector<std::pair<std::string, std::string>>& metadata,
                        bool overwrite) {
  for (const SafetensorsTensorOut& t : tensors) {
    if (t.size > 0 && t.data == nullptr)
      return InvalidArgumentError("tensor " + Quote(t.name) + ": null data");
  }
  STASIS_ASSIGN_OR_RETURN(std::string header, EncodeSafetensorsHeader(tensors, metadata));
  if (!overwrite && fs->Exists(path)) return AlreadyExistsError(Quote(path) + " exists");

  static std::atomic<uint64_t> counter{0};
  const std::string temp = path + ".stasis-tmp." + std::to_string(::getpid()) + "." +
                           std::to_string(counter.fetch_add(1));
  STASIS_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> file, fs->CreateExclusive(temp));
  Status s = AppendAll(file.get(), header, tensors);
  file.reset();
  // Checked again just before the rename so that a file created meanwhile is not
  // clobbered (a narrow race remains: FileSystem has no rename-without-replace).
  if (s.ok() && !overwrite && fs->Exists(path)) s = AlreadyExistsError(Quote(path) + " exists");
  if (s.ok()) s = fs->Rename(temp, path);
  if (!s.ok()) {
    fs->Remove(temp).IgnoreError();
    return s.WithContext("writing " + Quote(path));
  }
  s = fs->SyncParentDir(path);
  if (!s.ok()) {
    // The rename may not survive a crash; report failure and leave nothing that a later
    // run could mistake for a durable file.
    fs->Remove(path).IgnoreError();
    return s.WithContext("writing " + Quote(path));
  }
  return OkStatus();
}

}  // namespace stasis
