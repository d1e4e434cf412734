// The writer: EncodeSafetensorsHeader and WriteSafetensors (snapshot/safetensors.h).
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "common/numbers.h"
#include "snapshot/safetensors.h"
#include "snapshot/safetensors_common.h"

namespace stasis {
namespace {

using safetensors_internal::kLengthPrefixSize;
using safetensors_internal::Quote;
using safetensors_internal::ShapeString;
using safetensors_internal::TensorByteSize;
using safetensors_internal::TensorNameProblem;

void AppendU64LE(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
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

Status AppendAll(WritableFile* file, const std::string& header,
                 const std::vector<SafetensorsTensorOut>& tensors) {
  STASIS_RETURN_IF_ERROR(file->Append(header.data(), header.size()));
  for (const SafetensorsTensorOut& t : tensors)
    if (t.size > 0) STASIS_RETURN_IF_ERROR(file->Append(t.data, t.size));
  STASIS_RETURN_IF_ERROR(file->Sync());
  return file->Close();
}

}  // namespace

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
