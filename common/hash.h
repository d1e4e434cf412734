// File: common/hash.h
//
// XXH3-64 (seed 0), the one checksum of the image format (docs/image-format.md).
#ifndef STASIS_COMMON_HASH_H_
#define STASIS_COMMON_HASH_H_

#include <cstddef>
#include <cstdint>

namespace stasis {

uint64_t Xxh3(const void* data, size_t n);

}  // namespace stasis

#endif  // STASIS_COMMON_HASH_H_
