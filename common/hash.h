// File: common/hash.h
//
// XXH3-64 (seed 0), the one checksum of the image format (docs/image-format.md).
#ifndef STASIS_COMMON_HASH_H_
#define STASIS_COMMON_HASH_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace stasis {

uint64_t Xxh3(const void* data, size_t n);

// The digest of a set of named tensors from the XXH3 of each one's row-major bytes: the
// hashes in name order, XXH3 of them laid out as little-endian u64s. `stasis restore
// --digest`, the torch adapter's checksum and bench/peers/peers_lib.py all compute it, so
// equal digests mean equal bytes whichever loader produced them.
uint64_t CombineTensorHashes(std::vector<std::pair<std::string, uint64_t>> hashes_by_name);

// Seed derivation for generated data (the model generators): SplitMix64's finaliser, and
// FNV-1a of a name. Not checksums: fixed here so generated models stay the same bytes.
inline uint64_t Mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
inline uint64_t NameHash(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
  return h;
}

}  // namespace stasis

#endif  // STASIS_COMMON_HASH_H_
