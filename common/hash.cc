#include "common/hash.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace stasis {

uint64_t Xxh3(const void* data, size_t n) { return XXH3_64bits(data, n); }

}  // namespace stasis
