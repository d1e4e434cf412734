// The strict safetensors header parser: ParseSafetensorsHeader, ReadSafetensorsHeader and
// ParseSafetensorsFileBytes (snapshot/safetensors.h).
#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/numbers.h"
#include "snapshot/format.h"
#include "snapshot/safetensors.h"
#include "snapshot/safetensors_common.h"

namespace stasis {
namespace {

using Json = nlohmann::json;
using safetensors_internal::CheckNoNul;
using safetensors_internal::kLengthPrefixSize;
using safetensors_internal::Quote;
using safetensors_internal::ReadHeader;
using safetensors_internal::ShapeString;
using safetensors_internal::TensorByteSize;
using safetensors_internal::TensorNameProblem;

uint64_t LoadU64LE(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
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

}  // namespace

namespace safetensors_internal {

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

}  // namespace safetensors_internal

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

}  // namespace stasis
