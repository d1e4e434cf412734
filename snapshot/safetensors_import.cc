// The importer: PlanSafetensorsImport and ImportSafetensors (snapshot/safetensors.h).
#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "common/numbers.h"
#include "snapshot/format.h"
#include "snapshot/safetensors.h"
#include "snapshot/safetensors_common.h"
#include "stasis/image.h"

namespace stasis {
namespace {

using Json = nlohmann::json;
using safetensors_internal::IndexContents;
using safetensors_internal::Quote;
using safetensors_internal::ReadHeader;
using safetensors_internal::ReadIndex;

// Pieces in which the importer copies tensor data (and the size of its reused buffer).
constexpr uint64_t kImportPieceSize = 4ull << 20;

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
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

}  // namespace

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
    offset = format::AlignUp(offset, format::StorageAlignment(e.end - e.begin));
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

}  // namespace stasis
