#include "common/hash.h"

#include <algorithm>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace stasis {

// Defined in hash_avx2.cc, which is compiled with -mavx2 (XXH3 runs twice as fast there:
// ~45 GB/s against ~20 on SSE2, and every restored byte is hashed).
uint64_t Xxh3Avx2(const void* data, size_t n);

namespace {

uint64_t Xxh3Generic(const void* data, size_t n) { return XXH3_64bits(data, n); }

using HashFn = uint64_t (*)(const void*, size_t);

HashFn Pick() {
#if defined(__x86_64__) && defined(STASIS_HAVE_AVX2_HASH)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) return &Xxh3Avx2;
#endif
  return &Xxh3Generic;
}

const HashFn kHash = Pick();

}  // namespace

uint64_t Xxh3(const void* data, size_t n) { return kHash(data, n); }

uint64_t CombineTensorHashes(std::vector<std::pair<std::string, uint64_t>> hashes_by_name) {
  std::sort(hashes_by_name.begin(), hashes_by_name.end());
  std::vector<uint64_t> ordered;
  ordered.reserve(hashes_by_name.size());
  for (const auto& [name, h] : hashes_by_name) ordered.push_back(h);  // x86-64: little-endian
  return Xxh3(ordered.data(), ordered.size() * sizeof(uint64_t));
}

}  // namespace stasis
