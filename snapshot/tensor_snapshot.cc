#include <algorithm>
#include <numeric>
#include <unordered_set>

#include "snapshot/format.h"
#include "stasis/image.h"

namespace stasis {
namespace {

struct Block {
  uintptr_t begin, end;
  int element_size;
  uint64_t region_offset = 0;
};

}  // namespace

Status AddHostTensors(const std::vector<HostTensor>& tensors, ImageWriter* writer) {
  std::unordered_set<std::string> names;
  std::vector<uint64_t> sizes(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const HostTensor& t = tensors[i];
    if (!names.insert(t.name).second)
      return InvalidArgumentError("duplicate tensor name '" + t.name + "'");
    if (t.name.empty() || t.name.size() > format::kMaxTensorNameLen)
      return InvalidArgumentError("tensor name length out of range: '" + t.name + "'");
    if (t.shape.size() > format::kMaxRank)
      return InvalidArgumentError("tensor '" + t.name + "' has rank above 32");
    const Dims strides = t.strides.empty() ? format::ContiguousStrides(t.shape) : Dims(t.strides);
    auto size = format::ViewByteSize(t.dtype, t.shape, strides);
    if (!size.ok()) return size.status().WithContext("tensor '" + t.name + "'");
    if (t.byte_offset > t.storage_bytes || *size > t.storage_bytes - t.byte_offset)
      return InvalidArgumentError("tensor '" + t.name + "' runs past the end of its storage");
    if (t.storage == nullptr && t.storage_bytes > 0)
      return InvalidArgumentError("tensor '" + t.name + "' has a null storage");
    sizes[i] = *size;
  }

  // Merge overlapping storages into blocks: each block is stored once.
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return reinterpret_cast<uintptr_t>(tensors[a].storage) <
           reinterpret_cast<uintptr_t>(tensors[b].storage);
  });
  std::vector<Block> blocks;
  std::vector<size_t> block_of(tensors.size());
  for (size_t i : order) {
    const HostTensor& t = tensors[i];
    uintptr_t b = reinterpret_cast<uintptr_t>(t.storage);
    uintptr_t e = b + t.storage_bytes;
    int es = GroupingElementSize(t.dtype);
    if (!blocks.empty() && b < blocks.back().end + (t.storage_bytes == 0 ? 1 : 0)) {
      Block& last = blocks.back();
      last.end = std::max(last.end, e);
      if (last.element_size != es) last.element_size = 0;
    } else {
      blocks.push_back(Block{b, e, es});
    }
    block_of[i] = blocks.size() - 1;
  }
  // Group blocks by element size so packed chunks are homogeneous (better compression).
  std::vector<size_t> placement(blocks.size());
  std::iota(placement.begin(), placement.end(), 0);
  std::stable_sort(placement.begin(), placement.end(), [&](size_t a, size_t b) {
    return blocks[a].element_size > blocks[b].element_size;
  });
  uint64_t region_size = 0;
  for (size_t k : placement) {
    region_size =
        format::AlignUp(region_size, format::StorageAlignment(blocks[k].end - blocks[k].begin));
    blocks[k].region_offset = region_size;
    region_size += blocks[k].end - blocks[k].begin;
  }
  format::RegionInfo region;
  region.size = region_size;
  region.alignment = 4096;
  region.device_kind = format::DeviceKind::kCpu;
  region.device_ordinal = -1;
  STASIS_ASSIGN_OR_RETURN(uint32_t region_id, writer->AddRegion(region));
  for (size_t k : placement) {
    const Block& b = blocks[k];
    STASIS_RETURN_IF_ERROR(writer->AddRegionData(region_id, b.region_offset,
                                                 reinterpret_cast<const void*>(b.begin),
                                                 b.end - b.begin, b.element_size));
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    const HostTensor& t = tensors[i];
    const Block& b = blocks[block_of[i]];
    format::TensorInfo info;
    info.name = t.name;
    info.dtype = t.dtype;
    info.shape = t.shape;
    info.strides = t.strides.empty() ? format::ContiguousStrides(t.shape) : t.strides;
    info.region_id = region_id;
    info.byte_offset =
        b.region_offset + (reinterpret_cast<uintptr_t>(t.storage) - b.begin) + t.byte_offset;
    info.byte_size = sizes[i];
    STASIS_RETURN_IF_ERROR(writer->AddTensor(std::move(info)));
  }
  return OkStatus();
}

Status SnapshotHostTensors(const std::vector<HostTensor>& tensors,
                           const std::vector<std::pair<std::string, std::string>>& metadata,
                           const std::string& path, const WriterOptions& options) {
  STASIS_ASSIGN_OR_RETURN(auto writer, ImageWriter::Create(path, options));
  Status s = AddHostTensors(tensors, writer.get());
  if (s.ok()) s = writer->SetMetadata("source.format", "tensors");
  for (const auto& [k, v] : metadata) {
    if (!s.ok()) break;
    s = writer->SetMetadata(k, v);
  }
  if (!s.ok()) {
    writer->Abandon();
    return s;
  }
  return writer->Finish();
}

}  // namespace stasis
