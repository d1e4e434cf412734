// File: stasis/dims.h
//
// Dims: a tensor's shape or strides, a small vector of int64_t that holds up to kInline
// values in place and goes to the heap only beyond. A manifest or a restored model holds
// two per tensor; with std::vector that was two heap allocations per tensor, which
// dominated opening and restoring checkpoints of many tiny tensors (docs/benchmarks.md,
// "Tensor count").
//
// It reads like a std::vector<int64_t> (size, data, [], iteration, ==) and converts from one
// and from a braced list; vec() gives a std::vector back.
//
// Thread safety: a plain value.
#ifndef STASIS_DIMS_H_
#define STASIS_DIMS_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <vector>

namespace stasis {

class Dims {
 public:
  static constexpr size_t kInline = 4;
  using value_type = int64_t;
  using size_type = size_t;
  using iterator = int64_t*;
  using const_iterator = const int64_t*;
  using reference = int64_t&;
  using const_reference = const int64_t&;

  Dims() = default;
  Dims(std::initializer_list<int64_t> values) { assign(values.begin(), values.end()); }
  Dims(const std::vector<int64_t>& values) {  // NOLINT: implicit, reads like a vector
    assign(values.data(), values.data() + values.size());
  }
  Dims(const int64_t* first, const int64_t* last) { assign(first, last); }
  Dims(const Dims& other) { assign(other.begin(), other.end()); }
  Dims(Dims&& other) noexcept { MoveFrom(other); }
  Dims& operator=(const Dims& other) {
    if (this != &other) assign(other.begin(), other.end());
    return *this;
  }
  Dims& operator=(Dims&& other) noexcept {
    if (this != &other) MoveFrom(other);
    return *this;
  }
  Dims& operator=(std::initializer_list<int64_t> values) {
    assign(values.begin(), values.end());
    return *this;
  }
  ~Dims() = default;

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  const int64_t* data() const { return heap_ ? heap_.get() : inline_; }
  int64_t* data() { return heap_ ? heap_.get() : inline_; }
  const int64_t* begin() const { return data(); }
  const int64_t* end() const { return data() + size_; }
  int64_t* begin() { return data(); }
  int64_t* end() { return data() + size_; }
  int64_t operator[](size_t i) const { return data()[i]; }
  int64_t& operator[](size_t i) { return data()[i]; }
  int64_t front() const { return data()[0]; }
  int64_t back() const { return data()[size_ - 1]; }

  void clear() { size_ = 0; }
  // Sets the size to n; new values are `value`.
  void resize(size_t n, int64_t value = 0) {
    Reserve(n);
    std::fill(data() + std::min<size_t>(n, size_), data() + n, value);
    size_ = n;
  }
  void push_back(int64_t v) {
    Reserve(size_ + 1);
    data()[size_++] = v;
  }
  void assign(size_t n, int64_t value) {
    size_ = 0;
    resize(n, value);
  }
  void assign(const int64_t* first, const int64_t* last) {
    const size_t n = static_cast<size_t>(last - first);
    size_ = 0;
    Reserve(n);
    std::copy(first, last, data());
    size_ = n;
  }

  std::vector<int64_t> vec() const { return std::vector<int64_t>(begin(), end()); }
  operator std::span<const int64_t>() const { return {data(), size()}; }  // NOLINT

  friend bool operator==(const Dims& a, const Dims& b) {
    return std::equal(a.begin(), a.end(), b.begin(), b.end());
  }
  friend bool operator!=(const Dims& a, const Dims& b) { return !(a == b); }

 private:
  // Room for n values, keeping the first size_.
  void Reserve(size_t n) {
    if (n <= Capacity()) return;
    const size_t cap = std::max(n, 2 * Capacity());
    std::unique_ptr<int64_t[]> grown(new int64_t[cap]);
    std::copy(begin(), end(), grown.get());
    heap_ = std::move(grown);
    heap_capacity_ = cap;
  }
  size_t Capacity() const { return heap_ ? heap_capacity_ : kInline; }
  void MoveFrom(Dims& other) {
    size_ = other.size_;
    heap_ = std::move(other.heap_);
    heap_capacity_ = other.heap_capacity_;
    if (!heap_) std::copy(other.inline_, other.inline_ + size_, inline_);
    other.size_ = 0;
  }

  uint32_t size_ = 0;
  uint32_t heap_capacity_ = 0;
  int64_t inline_[kInline] = {};
  std::unique_ptr<int64_t[]> heap_;
};

}  // namespace stasis

#endif  // STASIS_DIMS_H_
