// File: stasis/tensor_table.h
//
// The tensors of a manifest: TensorInfo, a tensor as a writer describes it (it owns its
// name and dims), and TensorTable, the compact form a manifest keeps them in, read through
// TensorRef views.
//
// Why a table and not a vector of TensorInfo: a mixture-of-experts checkpoint has 10^4 to
// 10^5 tensors, most of them tiny. As one object per tensor (a name string and two small
// vectors: about 200 bytes and a heap allocation each) the manifest of 100,000 tensors of
// 4 bytes first-touched 20 MB and made a cold start 4-5x slower than one tensor of the same
// bytes (docs/benchmarks.md, "Tensor count"). The table holds a 32-byte record per tensor,
// every name end to end in one buffer and every dim in one array: three allocations for the
// whole manifest, about 60-80 bytes per tensor in all (dims equal to the previous
// tensor's are shared).
//
// Thread safety: a TensorTable's const methods may be called concurrently; mutation
// (Append, Replace, Reserve) needs the caller's exclusion like any value. Copies share
// their storage until one of them is mutated (copy on write), so a copy is cheap.
#ifndef STASIS_TENSOR_TABLE_H_
#define STASIS_TENSOR_TABLE_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "stasis/dims.h"
#include "stasis/tensor.h"

namespace stasis {
namespace format {

// A tensor as a writer describes it: a strided view of bytes in one region. Owns its
// name and dims.
struct TensorInfo {
  std::string name;
  DType dtype = DType::kU8;
  Dims shape;
  Dims strides;  // in elements
  uint32_t region_id = 0;
  uint64_t byte_offset = 0;
  uint64_t byte_size = 0;
};

// One tensor of a TensorTable, as views of the table's storage: valid while the table it
// came from, or any copy of that table, lives unmutated (a mutation of a table that no copy
// shares may move its buffers, as a std::vector's would).
struct TensorRef {
  std::string_view name;
  DType dtype = DType::kU8;
  std::span<const int64_t> shape;
  std::span<const int64_t> strides;  // in elements
  uint32_t region_id = 0;
  uint64_t byte_offset = 0;
  uint64_t byte_size = 0;

  // An owning copy.
  TensorInfo ToInfo() const;
};

// True when every field of `a` equals the same field of `b` (dims element by element).
bool SameTensor(const TensorRef& a, const TensorRef& b);

// A random-access iterator over anything with size() and operator[](size_t) returning a
// value (TensorTable, RestoredModel's tensors): it yields those values, so `for (const auto&
// t : table)` binds each to a temporary.
template <typename Container>
class IndexIterator {
  // A container that is a small handle (RestoredTensors: one pointer) is held by value, so
  // an iterator of the temporary `model.tensors()` outlives it; others by pointer.
  static constexpr bool kByValue =
      std::is_trivially_copyable_v<Container> && sizeof(Container) <= sizeof(void*);
  using Holder = std::conditional_t<kByValue, Container, const Container*>;

 public:
  using value_type = decltype(std::declval<const Container&>()[size_t{0}]);
  using difference_type = std::ptrdiff_t;
  using reference = value_type;
  using iterator_category = std::random_access_iterator_tag;
  struct pointer {  // what operator-> returns: the value, held
    value_type value;
    const value_type* operator->() const { return &value; }
  };

  IndexIterator() = default;
  IndexIterator(const Container* c, size_t i) : c_(Hold(c)), i_(i) {}
  value_type operator*() const { return At(i_); }
  pointer operator->() const { return {At(i_)}; }
  value_type operator[](difference_type n) const { return At(i_ + n); }
  IndexIterator& operator++() { return ++i_, *this; }
  IndexIterator operator++(int) { return {c_, i_++}; }
  IndexIterator& operator--() { return --i_, *this; }
  IndexIterator operator--(int) { return {c_, i_--}; }
  IndexIterator& operator+=(difference_type n) { return i_ += n, *this; }
  IndexIterator& operator-=(difference_type n) { return i_ -= n, *this; }
  friend IndexIterator operator+(IndexIterator it, difference_type n) { return it += n; }
  friend IndexIterator operator+(difference_type n, IndexIterator it) { return it += n; }
  friend IndexIterator operator-(IndexIterator it, difference_type n) { return it -= n; }
  friend difference_type operator-(const IndexIterator& a, const IndexIterator& b) {
    return static_cast<difference_type>(a.i_) - static_cast<difference_type>(b.i_);
  }
  friend bool operator==(const IndexIterator& a, const IndexIterator& b) { return a.i_ == b.i_; }
  friend auto operator<=>(const IndexIterator& a, const IndexIterator& b) { return a.i_ <=> b.i_; }

 private:
  static Holder Hold(const Container* c) {
    if constexpr (kByValue)
      return *c;
    else
      return c;
  }
  value_type At(size_t i) const {
    if constexpr (kByValue)
      return c_[i];
    else
      return (*c_)[i];
  }
  Holder c_{};
  size_t i_ = 0;
};

class TensorTable {
 public:
  using iterator = IndexIterator<TensorTable>;
  using const_iterator = iterator;

  TensorTable() = default;

  size_t size() const { return storage_ ? storage_->records.size() : 0; }
  bool empty() const { return size() == 0; }
  // REQUIRES: i < size().
  TensorRef operator[](size_t i) const;
  iterator begin() const { return {this, 0}; }
  iterator end() const { return {this, size()}; }

  // The index of the tensor named `name`: by binary search when the names are strictly
  // increasing (as version 2 images store them), else by a scan.
  std::optional<size_t> Find(std::string_view name) const;
  // True when every name is bytewise greater than the one before (so names are unique).
  bool sorted_by_name() const { return !storage_ || storage_->sorted; }
  // Bytes of every name together.
  size_t name_bytes() const { return storage_ ? storage_->names.size() : 0; }

  // Room for `tensors` more tensors, `name_bytes` more name bytes and `dims` more dims
  // (shape and strides values), so that appending them moves nothing.
  void Reserve(size_t tensors, size_t name_bytes, size_t dims);
  // Appends a tensor, copying its name and dims. REQUIRES: strides.size() == shape.size(),
  // name.size() <= 65535 (the format allows 4096), the table's names and dims below 4 GiB
  // and 2^32 values (the format's limits keep them far below).
  void Append(const TensorRef& t);
  void Append(const TensorInfo& t) { Append(RefOf(t)); }
  // Appends a tensor whose name is the last tensor's first `shared` bytes followed by
  // `suffix` (how version 2 stores names), without building the name elsewhere first, and
  // returns a view of the name. REQUIRES: as Append; shared <= the last name's size (0 for
  // the first tensor).
  std::string_view AppendFrontCoded(size_t shared, std::string_view suffix, DType dtype,
                                    std::span<const int64_t> shape,
                                    std::span<const int64_t> strides, uint32_t region_id,
                                    uint64_t byte_offset, uint64_t byte_size);
  // Replaces tensor i (tests that damage manifests use it). REQUIRES: i < size().
  void Replace(size_t i, const TensorInfo& t);

  // A view of `t`'s own fields.
  static TensorRef RefOf(const TensorInfo& t);

 private:
  // 32 bytes: where the name and dims lie in the buffers, and the fixed fields.
  struct Record {
    uint64_t byte_offset;
    uint64_t byte_size;
    uint32_t name_at;  // into names
    uint32_t dims_at;  // into dims: rank shape values, then rank stride values
    uint32_t region_id;
    uint16_t name_len;
    DType dtype;
    uint8_t rank;
  };
  static_assert(sizeof(Record) == 32);
  // Bytes that grow like a std::string's but append with one inline memcpy (names are
  // appended 10^5 times in a row when a manifest is decoded).
  class NameBuffer {
   public:
    NameBuffer() = default;
    NameBuffer(const NameBuffer& o) { append(o.data(), o.size()); }
    NameBuffer& operator=(const NameBuffer&) = delete;
    const char* data() const { return bytes_.get(); }
    size_t size() const { return size_; }
    size_t capacity() const { return capacity_; }
    void reserve(size_t n) {
      if (n <= capacity_) return;
      std::unique_ptr<char[]> grown(new char[n]);  // not zeroed: only written bytes are read
      if (size_ > 0) std::memcpy(grown.get(), bytes_.get(), size_);
      bytes_ = std::move(grown);
      capacity_ = n;
    }
    // Room for `n` more bytes, doubling at least (appends then move nothing).
    void Grow(size_t n) {
      if (size_ + n > capacity_) reserve(std::max(2 * capacity_, size_ + n));
    }
    void append(const char* p, size_t n) {
      Grow(n);
      if (n > 0) std::memcpy(bytes_.get() + size_, p, n);
      size_ += n;
    }
    void append(std::string_view s) { append(s.data(), s.size()); }

   private:
    std::unique_ptr<char[]> bytes_;
    size_t size_ = 0;
    size_t capacity_ = 0;
  };
  struct Storage {
    std::vector<Record> records;
    NameBuffer names;           // every name, end to end
    std::vector<int64_t> dims;  // every tensor's shape, then its strides
    bool sorted = true;         // names strictly increasing
  };
  static std::string_view NameOf(const Storage& s, const Record& r) {
    return std::string_view(s.names.data() + r.name_at, r.name_len);
  }
  // The storage to mutate: made first, or copied first from one a copy shares.
  Storage& Own() {
    if (!storage_ || storage_.use_count() > 1)
      Unshare();
    else  // the last owner: see the other copies' reads before writing (they may have
          // been on other threads, and use_count() reads the count relaxed)
      std::atomic_thread_fence(std::memory_order_acquire);
    return *storage_;
  }
  void Unshare();
  void PushRecord(Storage& s, uint32_t name_at, size_t name_len, DType dtype,
                  std::span<const int64_t> shape, std::span<const int64_t> strides,
                  uint32_t region_id, uint64_t byte_offset, uint64_t byte_size);

  std::shared_ptr<Storage> storage_;
};

// A table of `tensors`, in their order.
TensorTable MakeTensorTable(const std::vector<TensorInfo>& tensors);

}  // namespace format
}  // namespace stasis

#endif  // STASIS_TENSOR_TABLE_H_
