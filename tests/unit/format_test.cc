#include "snapshot/format.h"

#include "tests/testutil/test_util.h"

namespace stasis::format {
namespace {

using ::testing::HasSubstr;

TEST(FormatTest, HeaderRoundTripAndLayout) {
  std::string h = EncodeHeader();
  ASSERT_EQ(h.size(), kHeaderSize);
  EXPECT_EQ(h.substr(0, 8), std::string("\x89STASIS\n", 8));
  EXPECT_EQ(h[8], 1);  // version, little-endian
  EXPECT_OK(DecodeHeader(h));
}

TEST(FormatTest, FooterRoundTrip) {
  Footer f{8192, 100, 0x1234, 8192 + 100 + 64};
  std::string s = EncodeFooter(f);
  ASSERT_EQ(s.size(), kFooterSize);
  EXPECT_EQ(s.substr(56), std::string("\nSISATS\x89", 8));
  auto d = DecodeFooter(s);
  ASSERT_OK(d.status());
  EXPECT_EQ(d->manifest_offset, 8192u);
  EXPECT_EQ(d->manifest_size, 100u);
  EXPECT_EQ(d->manifest_xxh3, 0x1234u);
}

TEST(FormatTest, ManifestRoundTrip) {
  Manifest m;
  m.regions.push_back({10000, 4096, 0x7f0000000000, DeviceKind::kCuda, 3});
  m.chunks.push_back({4096, 5000, 8000, 0, 0, Codec::kGrouped, 2, 11, 22});
  m.chunks.push_back({12288, 2000, 2000, 8000, 0, Codec::kRaw, 0, 33, 33});
  m.tensors.push_back({"a.b", DType::kBF16, {40, 100}, {100, 1}, 0, 0, 8000});
  m.tensors.push_back({"t", DType::kF32, {50, 10}, {1, 50}, 0, 8000, 2000});
  m.tensors.push_back({"s", DType::kI64, {}, {}, 0, 16, 8});
  m.sections.push_back({"skeleton", 16384, 10, 99});
  m.metadata.push_back({"k", "v"});
  std::string enc = EncodeManifest(m);
  auto d = DecodeManifest(enc, 20480);
  ASSERT_OK(d.status());
  EXPECT_EQ(d->regions[0].va_hint, 0x7f0000000000u);
  EXPECT_EQ(d->regions[0].device_ordinal, 3);
  EXPECT_EQ(d->chunks[0].codec, Codec::kGrouped);
  EXPECT_EQ(d->chunks[0].element_size, 2);
  EXPECT_EQ(d->tensors[1].strides, (std::vector<int64_t>{1, 50}));
  EXPECT_EQ(d->tensors[2].shape.size(), 0u);
  EXPECT_EQ(d->sections[0].name, "skeleton");
  EXPECT_EQ(*d->FindMetadata("k"), "v");
  EXPECT_EQ(EncodeManifest(*d), enc);
  // The manifest offset bounds the blocks.
  EXPECT_THAT(DecodeManifest(enc, 16384).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("past the manifest")));
}

TEST(FormatTest, ViewByteSize) {
  EXPECT_EQ(*ViewByteSize(DType::kF32, {2, 3}, {3, 1}), 24u);
  EXPECT_EQ(*ViewByteSize(DType::kF32, {3, 2}, {1, 3}), 24u);  // transposed
  EXPECT_EQ(*ViewByteSize(DType::kF32, {2, 2}, {4, 1}), 24u);  // rows of a wider matrix
  EXPECT_EQ(*ViewByteSize(DType::kF32, {}, {}), 4u);           // scalar
  EXPECT_EQ(*ViewByteSize(DType::kF32, {0, 7}, {7, 1}), 0u);   // empty
  EXPECT_EQ(*ViewByteSize(DType::kF32, {4}, {0}), 4u);         // broadcast (expand)
  EXPECT_EQ(*ViewByteSize(DType::kF4, {3, 2}, {2, 1}), 3u);
  EXPECT_EQ(*ViewByteSize(DType::kF6E2M3, {4}, {1}), 3u);
  EXPECT_THAT(ViewByteSize(DType::kF4, {3, 2}, {1, 3}).status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("contiguous")));
  EXPECT_THAT(ViewByteSize(DType::kF32, {2}, {-1}).status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("negative stride")));
  EXPECT_THAT(ViewByteSize(DType::kF32, {1 << 30, 1 << 30, 1 << 30}, {1, 1, 1}).status(),
              StatusIs(StatusCode::kResourceExhausted, HasSubstr("overflows")));
  EXPECT_THAT(ElementCount({int64_t{1} << 31, int64_t{1} << 31, 0}).status(),
              StatusIs(StatusCode::kResourceExhausted, HasSubstr("2^62")));
}

TEST(FormatTest, DTypeTableMatchesTheSpec) {
  for (uint8_t id = 1; id <= kMaxDTypeId; ++id) {
    auto t = DTypeFromId(id);
    ASSERT_TRUE(t.has_value());
    EXPECT_EQ(DTypeFromName(DTypeName(*t)), t);
  }
  EXPECT_FALSE(DTypeFromId(0).has_value());
  EXPECT_FALSE(DTypeFromId(23).has_value());
  EXPECT_EQ(DTypeBits(DType::kF4), 4);
  EXPECT_EQ(DTypeBits(DType::kF6E3M2), 6);
  EXPECT_EQ(DTypeBits(DType::kC64), 64);
  EXPECT_EQ(GroupingElementSize(DType::kBF16), 2);
  EXPECT_EQ(GroupingElementSize(DType::kF32), 4);
  EXPECT_EQ(GroupingElementSize(DType::kI32), 0);
}

}  // namespace
}  // namespace stasis::format
