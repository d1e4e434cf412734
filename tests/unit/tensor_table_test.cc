// TensorTable (stasis/tensor_table.h): a manifest's tensors as fixed records and shared
// buffers, read through TensorRef views; and the streaming manifest decode that fills it.
#include "stasis/tensor_table.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_getFrameHeader: the window a frame asks for
#include <zstd.h>

#include <algorithm>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "snapshot/format.h"
#include "tests/testutil/test_util.h"

namespace stasis::format {
namespace {

using ::testing::ElementsAre;
using ::testing::Optional;

TensorInfo Info(std::string name, Dims shape, Dims strides, uint64_t offset = 0) {
  TensorInfo t;
  t.name = std::move(name);
  t.dtype = DType::kF32;
  t.shape = std::move(shape);
  t.strides = std::move(strides);
  t.byte_offset = offset;
  t.byte_size = 4;
  return t;
}

TEST(TensorTableTest, HoldsWhatWasAppendedAndFindsIt) {
  TensorTable t;
  EXPECT_TRUE(t.empty());
  EXPECT_FALSE(t.Find("a").has_value());
  t.Append(Info("a.bias", {3}, {1}, 0));
  t.Append(Info("a.weight", {3, 2}, {2, 1}, 16));
  t.Append(Info("b", {}, {}, 64));
  ASSERT_EQ(t.size(), 3u);
  EXPECT_TRUE(t.sorted_by_name());
  EXPECT_EQ(t[1].name, "a.weight");
  EXPECT_THAT(t[1].shape, ElementsAre(3, 2));
  EXPECT_THAT(t[1].strides, ElementsAre(2, 1));
  EXPECT_EQ(t[1].byte_offset, 16u);
  EXPECT_TRUE(t[2].shape.empty());
  EXPECT_THAT(t.Find("a.weight"), Optional(1u));
  EXPECT_THAT(t.Find("b"), Optional(2u));
  EXPECT_FALSE(t.Find("a").has_value());
  EXPECT_FALSE(t.Find("c").has_value());
  EXPECT_EQ(t.name_bytes(), 6u + 8u + 1u);
  // Iterates like a container of values, with the standard algorithms.
  std::vector<std::string> names;
  for (const TensorRef r : t) names.emplace_back(r.name);
  EXPECT_THAT(names, ElementsAre("a.bias", "a.weight", "b"));
  EXPECT_EQ(std::count_if(t.begin(), t.end(), [](const TensorRef& r) { return r.shape.empty(); }),
            1);
  EXPECT_EQ(t.end() - t.begin(), 3);
  EXPECT_EQ(t.begin()->name, "a.bias");
}

static_assert(std::random_access_iterator<TensorTable::iterator>);

TEST(TensorTableTest, UnsortedNamesAreFoundByAScan) {
  TensorTable t;
  t.Append(Info("z", {1}, {1}));
  t.Append(Info("a", {1}, {1}));
  t.Append(Info("m", {1}, {1}));
  EXPECT_FALSE(t.sorted_by_name());
  EXPECT_THAT(t.Find("a"), Optional(1u));
  EXPECT_THAT(t.Find("m"), Optional(2u));
  EXPECT_THAT(t.Find("z"), Optional(0u));
  EXPECT_FALSE(t.Find("b").has_value());
  // A repeated name is not strictly increasing either.
  TensorTable dup;
  dup.Append(Info("a", {1}, {1}));
  dup.Append(Info("a", {1}, {1}));
  EXPECT_FALSE(dup.sorted_by_name());
}

TEST(TensorTableTest, BinarySearchFindsEveryNameOfALargeSortedTable) {
  std::mt19937_64 rng(testing::TestSeed());
  std::vector<std::string> names;
  for (int i = 0; i < 5000; ++i) names.push_back("layers." + std::to_string(rng() % 100000) + ".w");
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  TensorTable t;
  for (const auto& n : names) t.Append(Info(n, {1}, {1}));
  ASSERT_TRUE(t.sorted_by_name());
  for (size_t i = 0; i < names.size(); ++i) ASSERT_THAT(t.Find(names[i]), Optional(i));
  EXPECT_FALSE(t.Find("layers.").has_value());
  EXPECT_FALSE(t.Find("layers.99999999.w").has_value());
}

TEST(TensorTableTest, EqualDimsAreStoredOnceAndStillReadRight) {
  TensorTable t;
  t.Append(Info("a", {4, 2}, {2, 1}));
  t.Append(Info("b", {4, 2}, {2, 1}));  // shares a's dims
  t.Append(Info("c", {4, 2}, {1, 4}));  // same shape, other strides: its own
  t.Append(Info("d", {4}, {1}));
  EXPECT_EQ(t[0].shape.data(), t[1].shape.data());
  EXPECT_NE(t[1].shape.data(), t[2].shape.data());
  EXPECT_THAT(t[1].strides, ElementsAre(2, 1));
  EXPECT_THAT(t[2].strides, ElementsAre(1, 4));
  EXPECT_THAT(t[3].shape, ElementsAre(4));
}

TEST(TensorTableTest, FrontCodedNamesAreRebuiltFromThePreviousName) {
  TensorTable t;
  const int64_t one[] = {1};
  EXPECT_EQ(t.AppendFrontCoded(0, "layers.0.w", DType::kF32, one, one, 0, 0, 4), "layers.0.w");
  EXPECT_EQ(t.AppendFrontCoded(7, "1.w", DType::kF32, one, one, 0, 4, 4), "layers.1.w");
  EXPECT_EQ(t.AppendFrontCoded(9, "x", DType::kF32, one, one, 0, 8, 4), "layers.1.x");
  EXPECT_TRUE(t.sorted_by_name());
  EXPECT_EQ(t[1].name, "layers.1.w");
  EXPECT_EQ(t.AppendFrontCoded(7, "0.z", DType::kF32, one, one, 0, 12, 4), "layers.0.z");
  EXPECT_FALSE(t.sorted_by_name());
  // Names far past the first buffer's room, each sharing most of the one before.
  TensorTable long_names;
  std::string expect;
  for (int i = 0; i < 2000; ++i) {
    const std::string suffix = std::to_string(1000 + i);
    const std::string got(long_names.AppendFrontCoded(
        i == 0 ? 0 : 3000, i == 0 ? std::string(3000, 'p') + suffix : suffix, DType::kU8, one, one,
        0, 0, 1));
    ASSERT_EQ(got, std::string(3000, 'p') + suffix);
  }
  EXPECT_TRUE(long_names.sorted_by_name());
  EXPECT_EQ(long_names[1999].name, std::string(3000, 'p') + "2999");
}

TEST(TensorTableTest, CopiesShareUntilOneIsChanged) {
  TensorTable a;
  a.Append(Info("x", {2}, {1}));
  TensorTable b = a;
  const TensorRef before = b[0];
  a.Append(Info("y", {3}, {1}));  // copies a's storage first: b and its views are untouched
  a.Replace(0, Info("renamed", {5}, {1}));
  EXPECT_EQ(b.size(), 1u);
  EXPECT_EQ(before.name, "x");
  EXPECT_THAT(before.shape, ElementsAre(2));
  EXPECT_EQ(a[0].name, "renamed");
  EXPECT_EQ(a[1].name, "y");
  // A view outlives the table it came from while a copy lives.
  std::optional<TensorTable> owner(std::in_place, b);
  const TensorRef kept = (*owner)[0];
  b = TensorTable();
  EXPECT_EQ(kept.name, "x");  // `owner` still holds the storage
  owner.reset();
}

TEST(TensorTableTest, AppendingItsOwnViewCopiesItFirst) {
  TensorTable t;
  t.Append(Info(std::string(100, 'a'), {7, 3}, {3, 1}));
  for (int i = 0; i < 200; ++i) t.Append(t[0]);  // the buffers grow under the view's bytes
  EXPECT_EQ(t[200].name, std::string(100, 'a'));
  EXPECT_THAT(t[200].shape, ElementsAre(7, 3));
  EXPECT_TRUE(SameTensor(t[0], t[200]));
}

TEST(TensorTableTest, ToInfoAndMakeTensorTableRoundTrip) {
  const std::vector<TensorInfo> in = {Info("a", {2, 3}, {3, 1}, 8), Info("b", {}, {}, 0)};
  const TensorTable t = MakeTensorTable(in);
  ASSERT_EQ(t.size(), 2u);
  for (size_t i = 0; i < in.size(); ++i) {
    const TensorInfo back = t[i].ToInfo();
    EXPECT_EQ(back.name, in[i].name);
    EXPECT_EQ(back.shape, in[i].shape);
    EXPECT_EQ(back.strides, in[i].strides);
    EXPECT_EQ(back.byte_offset, in[i].byte_offset);
    EXPECT_TRUE(SameTensor(t[i], TensorTable::RefOf(in[i])));
  }
  EXPECT_FALSE(SameTensor(t[0], t[1]));
}

// A version 2 manifest of `n` tensors, as a writer stores it (zstd).
struct StoredManifest {
  Manifest m;
  std::string stored;
  Footer footer;
};
StoredManifest ManyTensors(int n) {
  StoredManifest s;
  s.m.regions.push_back({static_cast<uint64_t>(4 * n), 256, 0, DeviceKind::kCpu, -1});
  std::vector<TensorInfo> tensors;
  for (int i = 0; i < n; ++i)
    tensors.push_back(
        Info("layers." + std::to_string(i / 64) + ".experts." + std::to_string(i % 64) + ".scale",
             {1}, {1}, static_cast<uint64_t>(4 * i)));
  SortTensorsByName(&tensors);
  s.m.tensors = MakeTensorTable(tensors);
  s.footer.manifest_offset = 4096;
  auto stored = EncodeStoredManifest(s.m, 2, 3, &s.footer);
  EXPECT_TRUE(stored.ok());
  s.stored = *stored;
  return s;
}

TEST(StreamingManifestTest, DecodesAsTheWholeBufferDoes) {
  const StoredManifest s = ManyTensors(20000);
  ASSERT_EQ(s.footer.manifest_codec, Codec::kZstd);
  // Written with a 128 KiB window: what a streaming reader holds of history.
  ZSTD_frameHeader h;
  ASSERT_EQ(ZSTD_getFrameHeader(&h, s.stored.data(), s.stored.size()), 0u);
  EXPECT_LE(h.windowSize, 128u << 10);
  EXPECT_GT(s.footer.manifest_raw_size, 256u << 10);  // more than one window's worth
  auto streamed = ParseStoredManifest(s.stored, s.footer);
  ASSERT_TRUE(streamed.ok()) << streamed.status();
  std::string scratch;
  auto whole = DecodeStoredManifest(s.stored, s.footer, &scratch);
  ASSERT_TRUE(whole.ok());
  auto parsed = DecodeManifest(*whole, 4096, 2);
  ASSERT_TRUE(parsed.ok());
  ASSERT_EQ(streamed->tensors.size(), 20000u);
  for (size_t i = 0; i < parsed->tensors.size(); ++i)
    ASSERT_TRUE(SameTensor(streamed->tensors[i], parsed->tensors[i])) << i;
  EXPECT_EQ(EncodeManifestV2(*streamed), *whole);
}

TEST(StreamingManifestTest, DamagedFramesAreDataLoss) {
  const StoredManifest s = ManyTensors(5000);
  // Truncated, extended, and a lie about the decoded size: refused before decoding.
  EXPECT_EQ(ParseStoredManifest(s.stored.substr(0, s.stored.size() - 5), s.footer).status().code(),
            StatusCode::kDataLoss);
  EXPECT_EQ(ParseStoredManifest(s.stored + "x", s.footer).status().code(), StatusCode::kDataLoss);
  Footer lie = s.footer;
  lie.manifest_raw_size -= 1;
  EXPECT_EQ(ParseStoredManifest(s.stored, lie).status().code(), StatusCode::kDataLoss);
  // Flipped bytes inside the frame (the checksum over the stored bytes is the reader's
  // first line; this is the second): every outcome is a clean DataLoss (or a count past a
  // limit) or a manifest that still validates, never a crash.
  std::mt19937_64 rng(testing::TestSeed());
  for (int k = 0; k < 200; ++k) {
    std::string bad = s.stored;
    bad[8 + rng() % (bad.size() - 8)] ^= static_cast<char>(1 + rng() % 255);
    auto r = ParseStoredManifest(bad, s.footer);
    if (!r.ok())
      EXPECT_THAT(r.status().code(),
                  ::testing::AnyOf(StatusCode::kDataLoss, StatusCode::kResourceExhausted))
          << r.status();
  }
}

}  // namespace
}  // namespace stasis::format
