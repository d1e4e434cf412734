// Dims (stasis/dims.h): a small vector that must read like std::vector<int64_t> whether its
// values sit inline (rank <= 4) or on the heap.
#include "stasis/dims.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <utility>
#include <vector>

namespace stasis {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

TEST(DimsTest, ReadsLikeAVector) {
  Dims d = {2, 3, 5};
  EXPECT_EQ(d.size(), 3u);
  EXPECT_THAT(d, ElementsAre(2, 3, 5));
  EXPECT_EQ(d.front(), 2);
  EXPECT_EQ(d.back(), 5);
  d[1] = 7;
  EXPECT_EQ(d.vec(), (std::vector<int64_t>{2, 7, 5}));
  EXPECT_THAT(Dims(), IsEmpty());
  EXPECT_EQ(Dims(std::vector<int64_t>{1, 2}), (Dims{1, 2}));
  EXPECT_NE((Dims{1, 2}), (Dims{1, 2, 3}));
}

TEST(DimsTest, GrowsPastTheInlineValuesAndKeepsThem) {
  Dims d;
  for (int64_t i = 0; i < 40; ++i) {
    d.push_back(i * i);
    ASSERT_EQ(d.size(), static_cast<size_t>(i + 1));
    for (int64_t j = 0; j <= i; ++j) ASSERT_EQ(d[j], j * j) << "after " << i + 1 << " values";
  }
  d.resize(2);
  EXPECT_THAT(d, ElementsAre(0, 1));
  d.assign(33, 1);
  EXPECT_EQ(d.size(), 33u);
  EXPECT_EQ(d.vec(), std::vector<int64_t>(33, 1));
}

TEST(DimsTest, CopiesAndMovesEitherLayout) {
  std::mt19937_64 rng(16);
  for (size_t n : {size_t{0}, size_t{1}, Dims::kInline, Dims::kInline + 1, size_t{32}}) {
    std::vector<int64_t> values(n);
    for (auto& v : values) v = static_cast<int64_t>(rng() >> 1);
    const Dims original(values);
    Dims copy = original;
    EXPECT_EQ(copy, original) << n;
    Dims moved = std::move(copy);
    EXPECT_EQ(moved.vec(), values) << n;
    EXPECT_TRUE(copy.empty()) << n;  // NOLINT(bugprone-use-after-move): documented state
    Dims assigned = {9};
    assigned = moved;
    EXPECT_EQ(assigned.vec(), values) << n;
    Dims small = {1};
    small = std::move(assigned);
    EXPECT_EQ(small.vec(), values) << n;
    Dims& self = small;
    small = self;
    EXPECT_EQ(small.vec(), values) << n;
  }
}

}  // namespace
}  // namespace stasis
