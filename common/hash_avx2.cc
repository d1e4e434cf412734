// XXH3 built for AVX2; selected at run time by hash.cc when the CPU has it.
#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX2
#include <xxhash.h>

#include <cstddef>
#include <cstdint>

namespace stasis {

uint64_t Xxh3Avx2(const void* data, size_t n) { return XXH3_64bits(data, n); }

}  // namespace stasis
