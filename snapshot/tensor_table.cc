// TensorTable: a manifest's tensors as fixed records and two shared buffers
// (stasis/tensor_table.h).
#include "stasis/tensor_table.h"

#include <algorithm>

namespace stasis::format {

TensorInfo TensorRef::ToInfo() const {
  TensorInfo t;
  t.name = std::string(name);
  t.dtype = dtype;
  t.shape = Dims(shape.data(), shape.data() + shape.size());
  t.strides = Dims(strides.data(), strides.data() + strides.size());
  t.region_id = region_id;
  t.byte_offset = byte_offset;
  t.byte_size = byte_size;
  return t;
}

bool SameTensor(const TensorRef& a, const TensorRef& b) {
  return a.name == b.name && a.dtype == b.dtype && std::ranges::equal(a.shape, b.shape) &&
         std::ranges::equal(a.strides, b.strides) && a.region_id == b.region_id &&
         a.byte_offset == b.byte_offset && a.byte_size == b.byte_size;
}

TensorRef TensorTable::RefOf(const TensorInfo& t) {
  TensorRef r;
  r.name = t.name;
  r.dtype = t.dtype;
  r.shape = t.shape;
  r.strides = t.strides;
  r.region_id = t.region_id;
  r.byte_offset = t.byte_offset;
  r.byte_size = t.byte_size;
  return r;
}

TensorRef TensorTable::operator[](size_t i) const {
  const Storage& s = *storage_;
  const Record& rec = s.records[i];
  TensorRef r;
  r.name = NameOf(s, rec);
  r.dtype = rec.dtype;
  const int64_t* dims = s.dims.data() + rec.dims_at;
  r.shape = {dims, rec.rank};
  r.strides = {dims + rec.rank, rec.rank};
  r.region_id = rec.region_id;
  r.byte_offset = rec.byte_offset;
  r.byte_size = rec.byte_size;
  return r;
}

std::optional<size_t> TensorTable::Find(std::string_view name) const {
  if (!storage_) return std::nullopt;
  const Storage& s = *storage_;
  if (s.sorted) {
    auto it =
        std::lower_bound(s.records.begin(), s.records.end(), name,
                         [&s](const Record& r, std::string_view n) { return NameOf(s, r) < n; });
    if (it != s.records.end() && NameOf(s, *it) == name)
      return static_cast<size_t>(it - s.records.begin());
    return std::nullopt;
  }
  for (size_t i = 0; i < s.records.size(); ++i)
    if (NameOf(s, s.records[i]) == name) return i;
  return std::nullopt;
}

void TensorTable::Unshare() {
  storage_ = storage_ ? std::make_shared<Storage>(*storage_) : std::make_shared<Storage>();
}

void TensorTable::Reserve(size_t tensors, size_t name_bytes, size_t dims) {
  Storage& s = Own();
  s.records.reserve(s.records.size() + tensors);
  s.names.reserve(s.names.size() + name_bytes);
  s.dims.reserve(s.dims.size() + dims);
}

void TensorTable::PushRecord(Storage& s, uint32_t name_at, size_t name_len, DType dtype,
                             std::span<const int64_t> shape, std::span<const int64_t> strides,
                             uint32_t region_id, uint64_t byte_offset, uint64_t byte_size) {
  Record rec;
  rec.byte_offset = byte_offset;
  rec.byte_size = byte_size;
  rec.name_at = name_at;
  rec.region_id = region_id;
  rec.name_len = static_cast<uint16_t>(name_len);
  rec.dtype = dtype;
  rec.rank = static_cast<uint8_t>(shape.size());
  // Dims equal to the previous tensor's are shared with it: neighbours in a checkpoint
  // (experts of one layer, the same projection of every layer) mostly have equal shapes.
  const size_t rank = shape.size();
  bool same_dims = !s.records.empty() && s.records.back().rank == rank;
  if (same_dims) {
    // A loop, not std::equal: ranks are small, and memcmp's call costs more than the compare.
    const int64_t* prev = s.dims.data() + s.records.back().dims_at;
    for (size_t d = 0; d < rank && same_dims; ++d)
      same_dims = prev[d] == shape[d] && prev[rank + d] == strides[d];
  }
  if (same_dims) {
    rec.dims_at = s.records.back().dims_at;
  } else {
    rec.dims_at = static_cast<uint32_t>(s.dims.size());
    s.dims.resize(s.dims.size() + 2 * rank);
    std::copy(shape.begin(), shape.end(), s.dims.data() + rec.dims_at);
    std::copy(strides.begin(), strides.end(), s.dims.data() + rec.dims_at + rank);
  }
  s.records.push_back(rec);
}

void TensorTable::Append(const TensorRef& t) {
  Storage& s = Own();
  auto inside = [](const auto& buf, const void* p) {
    return p >= static_cast<const void*>(buf.data()) &&
           p < static_cast<const void*>(buf.data() + buf.size());
  };
  // A view of this very table (table.Append(table[0])): its bytes may move as they are
  // appended, so from an owning copy.
  if (inside(s.names, t.name.data()) || inside(s.dims, t.shape.data()) ||
      inside(s.dims, t.strides.data()))
    return Append(t.ToInfo());
  const auto name_at = static_cast<uint32_t>(s.names.size());
  s.names.append(t.name);
  if (s.sorted && !s.records.empty()) s.sorted = NameOf(s, s.records.back()) < t.name;
  PushRecord(s, name_at, t.name.size(), t.dtype, t.shape, t.strides, t.region_id, t.byte_offset,
             t.byte_size);
}

std::string_view TensorTable::AppendFrontCoded(size_t shared, std::string_view suffix, DType dtype,
                                               std::span<const int64_t> shape,
                                               std::span<const int64_t> strides, uint32_t region_id,
                                               uint64_t byte_offset, uint64_t byte_size) {
  Storage& s = Own();
  const auto name_at = static_cast<uint32_t>(s.names.size());
  const size_t name_len = shared + suffix.size();
  // The first `shared` bytes are equal, so the order is decided by the rest.
  if (!s.records.empty() && s.sorted)
    s.sorted = suffix > NameOf(s, s.records.back()).substr(shared);
  const size_t prev_at = s.records.empty() ? 0 : s.records.back().name_at;
  // Room first: the shared prefix is copied from the buffer itself.
  s.names.Grow(name_len);
  s.names.append(s.names.data() + prev_at, shared);
  s.names.append(suffix.data(), suffix.size());
  PushRecord(s, name_at, name_len, dtype, shape, strides, region_id, byte_offset, byte_size);
  return std::string_view(s.names.data() + name_at, name_len);
}

void TensorTable::Replace(size_t i, const TensorInfo& t) {
  // Rebuilt with the one record changed: a test's tool, not a hot path.
  TensorTable rebuilt;
  for (size_t j = 0; j < size(); ++j) {
    if (j == i)
      rebuilt.Append(t);
    else
      rebuilt.Append((*this)[j]);
  }
  *this = std::move(rebuilt);
}

TensorTable MakeTensorTable(const std::vector<TensorInfo>& tensors) {
  size_t name_bytes = 0, dims = 0;
  for (const auto& t : tensors) {
    name_bytes += t.name.size();
    dims += 2 * t.shape.size();
  }
  TensorTable table;
  table.Reserve(tensors.size(), name_bytes, dims);
  for (const auto& t : tensors) table.Append(t);
  return table;
}

}  // namespace stasis::format
