// `stasis inspect`: an image's regions, tensors, sections, metadata and codec mix.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "stasis/image.h"
#include "stasis/remote.h"
#include "tools/stasis/cli_common.h"
#include "tools/stasis/commands.h"
#include "tools/stasis/remote_flags.h"

namespace stasis::cli {
namespace {

using Json = nlohmann::ordered_json;

std::string ShapeString(std::span<const int64_t> v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

}  // namespace

int RunInspect(const std::string& location, bool json, const RemoteArgs& remote) {
  const std::string path = ShownLocation(location);
  auto reader = OpenImageReader(location, ToRemoteOptions(remote));
  if (!reader.ok()) return ReportError(reader.status());
  const format::Manifest& m = (*reader)->manifest();
  uint64_t raw = 0, stored = 0, by_codec[3] = {0, 0, 0}, raw_by_codec[3] = {0, 0, 0},
           stored_by_codec[3] = {0, 0, 0};
  for (const auto& c : m.chunks) {
    int k = static_cast<int>(c.codec);
    raw += c.raw_size;
    stored += c.stored_size;
    by_codec[k]++;
    raw_by_codec[k] += c.raw_size;
    stored_by_codec[k] += c.stored_size;
  }
  double ratio = stored ? static_cast<double>(raw) / static_cast<double>(stored) : 1.0;
  if (json) {
    Json j;
    j["image"] = path;
    j["format_version"] = (*reader)->footer().format_version;
    j["file_size"] = (*reader)->footer().file_size;
    j["raw_bytes"] = raw;
    j["stored_bytes"] = stored;
    j["ratio"] = ratio;
    Json codecs = Json::object();
    for (int k = 0; k < 3; ++k)
      codecs[std::string(format::CodecName(static_cast<format::Codec>(k)))] = {
          {"chunks", by_codec[k]},
          {"raw_bytes", raw_by_codec[k]},
          {"stored_bytes", stored_by_codec[k]}};
    j["codecs"] = codecs;
    j["regions"] = Json::array();
    for (size_t i = 0; i < m.regions.size(); ++i) {
      const auto& r = m.regions[i];
      j["regions"].push_back(
          {{"id", i},
           {"device", r.device_kind == format::DeviceKind::kCpu ? "cpu" : "cuda"},
           {"ordinal", r.device_ordinal},
           {"size", r.size},
           {"alignment", r.alignment},
           {"va_hint", r.va_hint}});
    }
    j["tensors"] = Json::array();
    for (const auto& t : m.tensors) {
      j["tensors"].push_back({{"name", t.name},
                              {"dtype", std::string(DTypeName(t.dtype))},
                              {"shape", t.shape},
                              {"strides", t.strides},
                              {"region", t.region_id},
                              {"offset", t.byte_offset},
                              {"bytes", t.byte_size}});
    }
    j["sections"] = Json::array();
    for (const auto& s : m.sections)
      j["sections"].push_back({{"name", s.name}, {"size", s.size}, {"file_offset", s.file_offset}});
    j["metadata"] = Json::object();
    for (const auto& [k, v] : m.metadata) j["metadata"][k] = v;
    std::cout << DumpJson(j) << "\n";
    return kExitOk;
  }
  std::printf("image     %s (format v%u, %s)\n", path.c_str(), (*reader)->footer().format_version,
              HumanBytes((*reader)->footer().file_size).c_str());
  std::printf("data      %s raw, %s stored, ratio %.3f\n", HumanBytes(raw).c_str(),
              HumanBytes(stored).c_str(), ratio);
  for (int k = 0; k < 3; ++k) {
    if (by_codec[k] == 0) continue;
    std::printf("  %-8s %llu chunks, %s -> %s\n",
                std::string(format::CodecName(static_cast<format::Codec>(k))).c_str(),
                static_cast<unsigned long long>(by_codec[k]), HumanBytes(raw_by_codec[k]).c_str(),
                HumanBytes(stored_by_codec[k]).c_str());
  }
  std::printf("regions   %zu\n", m.regions.size());
  for (size_t i = 0; i < m.regions.size(); ++i) {
    const auto& r = m.regions[i];
    std::printf(
        "  #%zu %s%s %s align %llu va_hint 0x%llx\n", i,
        r.device_kind == format::DeviceKind::kCpu ? "cpu" : "cuda:",
        r.device_kind == format::DeviceKind::kCpu ? "" : std::to_string(r.device_ordinal).c_str(),
        HumanBytes(r.size).c_str(), static_cast<unsigned long long>(r.alignment),
        static_cast<unsigned long long>(r.va_hint));
  }
  std::printf("tensors   %zu\n", m.tensors.size());
  for (const auto& t : m.tensors) {
    std::printf("  %-48s %-6s %-20s region %u +%llu\n", std::string(t.name).c_str(),
                std::string(DTypeName(t.dtype)).c_str(), ShapeString(t.shape).c_str(), t.region_id,
                static_cast<unsigned long long>(t.byte_offset));
  }
  std::printf("sections  %zu\n", m.sections.size());
  for (const auto& s : m.sections)
    std::printf("  %s %s\n", s.name.c_str(), HumanBytes(s.size).c_str());
  std::printf("metadata  %zu\n", m.metadata.size());
  for (const auto& [k, v] : m.metadata) {
    std::string shown = v.size() > 120 ? v.substr(0, 117) + "..." : v;
    std::printf("  %s = %s\n", k.c_str(), shown.c_str());
  }
  return kExitOk;
}

}  // namespace stasis::cli
