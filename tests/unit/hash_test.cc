// The dispatched XXH3 (AVX2 where the CPU has it) must equal the reference library's for
// every length: image checksums depend on it.
#include "common/hash.h"

#include <xxhash.h>

#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

TEST(HashTest, MatchesTheReferenceLibrary) {
  auto bytes = testing::RandomBytes(5 << 20, testing::TestSeed());
  EXPECT_EQ(Xxh3("", 0), 0x2D06800538D394C2ull);  // XXH3_64bits of the empty input
  for (size_t n : {size_t{1}, size_t{3}, size_t{16}, size_t{17}, size_t{128}, size_t{129},
                   size_t{240}, size_t{241}, size_t{1023}, size_t{4096}, size_t{100003},
                   size_t{4} << 20, size_t{5} << 20}) {
    EXPECT_EQ(Xxh3(bytes.data(), n), XXH3_64bits(bytes.data(), n)) << n << " bytes";
    EXPECT_EQ(Xxh3(bytes.data() + 1, n - 1), XXH3_64bits(bytes.data() + 1, n - 1))
        << "unaligned, " << n;
  }
}

TEST(HashTest, TensorDigestIsTheHashOfHashesInNameOrder) {
  const uint64_t in_order[] = {7, 5, 9};  // hashes of "a", "b", "c"
  const uint64_t expect = XXH3_64bits(in_order, sizeof(in_order));
  EXPECT_EQ(CombineTensorHashes({{"b", 5}, {"c", 9}, {"a", 7}}), expect);
  EXPECT_EQ(CombineTensorHashes({{"a", 7}, {"b", 5}, {"c", 9}}), expect);
  EXPECT_NE(CombineTensorHashes({{"a", 5}, {"b", 7}, {"c", 9}}), expect);
  EXPECT_EQ(CombineTensorHashes({}), XXH3_64bits(nullptr, 0));
}

}  // namespace
}  // namespace stasis
