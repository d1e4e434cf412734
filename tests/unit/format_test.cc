#include "snapshot/format.h"

#include "tests/testutil/test_util.h"

namespace stasis::format {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

TEST(FormatTest, HeaderRoundTripAndLayout) {
  std::string h = EncodeHeader();
  ASSERT_EQ(h.size(), kHeaderSize);
  EXPECT_EQ(h.substr(0, 8), std::string("\x89STASIS\n", 8));
  EXPECT_EQ(h[8], 2);  // version, little-endian
  EXPECT_EQ(*DecodeHeader(h), 2u);
  EXPECT_EQ(*DecodeHeader(EncodeHeader(1)), 1u);
  EXPECT_THAT(DecodeHeader(EncodeHeader(3)).status(),
              StatusIs(StatusCode::kUnimplemented, HasSubstr("version 3")));
}

TEST(FormatTest, FooterRoundTrip) {
  Footer f{8192, 100, 0x1234, 8192 + 100 + 64, 2, Codec::kRaw, 100};
  std::string s = EncodeFooter(f);
  ASSERT_EQ(s.size(), kFooterSize);
  EXPECT_EQ(s.substr(56), std::string("\nSISATS\x89", 8));
  auto d = DecodeFooter(s);
  ASSERT_OK(d.status());
  EXPECT_EQ(d->manifest_offset, 8192u);
  EXPECT_EQ(d->manifest_size, 100u);
  EXPECT_EQ(d->manifest_xxh3, 0x1234u);
  EXPECT_EQ(d->format_version, 2u);
  EXPECT_EQ(d->manifest_codec, Codec::kRaw);

  // v2: the manifest's codec and decoded size in bytes 40..47.
  f.manifest_codec = Codec::kZstd;
  f.manifest_raw_size = 5000;
  d = DecodeFooter(EncodeFooter(f));
  ASSERT_OK(d.status());
  EXPECT_EQ(d->manifest_codec, Codec::kZstd);
  EXPECT_EQ(d->manifest_raw_size, 5000u);
  f.manifest_codec = Codec::kRaw;  // a raw manifest's decoded size is its size
  EXPECT_THAT(DecodeFooter(EncodeFooter(f)).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("differs")));
  f.manifest_codec = Codec::kZstd;
  f.manifest_raw_size = (256u << 20) + 1;
  EXPECT_THAT(DecodeFooter(EncodeFooter(f)).status(),
              StatusIs(StatusCode::kResourceExhausted, HasSubstr("manifest_raw_size")));
  // v1: bytes 40..47 are written as zero whatever the record says, and must be zero.
  f.format_version = 1;
  std::string v1 = EncodeFooter(f);
  EXPECT_EQ(v1.substr(40, 8), std::string(8, '\0'));
  d = DecodeFooter(v1);
  ASSERT_OK(d.status());
  EXPECT_EQ(d->format_version, 1u);
  EXPECT_EQ(d->manifest_raw_size, 0u);
}

Manifest SampleManifest() {
  Manifest m;
  m.regions.push_back({10000, 4096, 0x7f0000000000, DeviceKind::kCuda, 3});
  m.chunks.push_back({4096, 5000, 8000, 0, 0, Codec::kGrouped, 2, 11, 22});
  m.chunks.push_back({12288, 2000, 2000, 8000, 0, Codec::kRaw, 0, 33, 33});
  m.tensors = MakeTensorTable({{"a.b", DType::kBF16, {40, 100}, {100, 1}, 0, 0, 8000},
                               {"a.c", DType::kF32, {50, 10}, {1, 50}, 0, 8000, 2000},
                               {"s", DType::kI64, {}, {}, 0, 16, 8},
                               {"z", DType::kF32, {0, 3}, {3, 1}, 0, 9999, 0}});
  m.sections.push_back({"skeleton", 16384, 10, 99});
  m.metadata.push_back({"k", "v"});
  return m;
}

TEST(FormatTest, ManifestV2RoundTrip) {
  Manifest m = SampleManifest();
  std::string enc = EncodeManifestV2(m);
  EXPECT_LT(enc.size(), EncodeManifest(m).size());
  auto d = DecodeManifest(enc, 20480, 2);
  ASSERT_OK(d.status());
  ASSERT_EQ(d->tensors.size(), 4u);
  for (size_t i = 0; i < m.tensors.size(); ++i) {
    SCOPED_TRACE(m.tensors[i].name);
    const TensorRef a = m.tensors[i], b = d->tensors[i];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.dtype, b.dtype);
    EXPECT_THAT(b.shape, ElementsAreArray(a.shape));
    EXPECT_THAT(b.strides, ElementsAreArray(a.strides));
    EXPECT_EQ(a.region_id, b.region_id);
    EXPECT_EQ(a.byte_offset, b.byte_offset);
    EXPECT_EQ(a.byte_size, b.byte_size);  // not stored: computed from the view
  }
  EXPECT_EQ(EncodeManifestV2(*d), enc);
  EXPECT_EQ(d->sections[0].name, "skeleton");
  EXPECT_EQ(*d->FindMetadata("k"), "v");
  // "a.c" shares "a." with "a.b"; its transposed strides are stored, "a.b"'s are not.
  const size_t tensors_at = kManifestHeaderSize + kRegionRecordSize + 2 * kChunkRecordSize;
  EXPECT_EQ(enc.substr(tensors_at, 5), std::string("\0\x03"
                                                   "a.b",
                                                   5));
  EXPECT_EQ(static_cast<uint8_t>(enc[tensors_at + 6]), 2);  // rank 2, no strides
  // A v1 decode of v2 bytes fails cleanly, and v2 is what the offset check sees too.
  EXPECT_FALSE(DecodeManifest(enc, 20480, 1).ok());
  EXPECT_THAT(DecodeManifest(enc, 16384, 2).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("past the manifest")));
}

TEST(FormatTest, ManifestV2RejectsBadTensorRecords) {
  const Manifest m = SampleManifest();
  const std::string good = EncodeManifestV2(m);
  const size_t t0 = kManifestHeaderSize + kRegionRecordSize + 2 * kChunkRecordSize;
  auto with = [&](size_t off, std::string bytes) {
    std::string s = good;
    s.replace(off, bytes.size(), bytes);
    return DecodeManifest(s, 20480, 2).status();
  };
  // Record 0 is: shared 0, suffix_len 3, "a.b", dtype, rank_flags, region 0, offset 0, dims.
  EXPECT_THAT(with(t0, "\x01"), StatusIs(StatusCode::kDataLoss, HasSubstr("shares 1 bytes")));
  EXPECT_THAT(with(t0 + 1, std::string(1, '\0')),
              StatusIs(StatusCode::kDataLoss, HasSubstr("name length out of range")));
  EXPECT_THAT(with(t0 + 5, std::string(1, '\0')),
              StatusIs(StatusCode::kDataLoss, HasSubstr("unknown dtype id 0")));
  EXPECT_THAT(with(t0 + 6, "\x82"), StatusIs(StatusCode::kDataLoss, HasSubstr("reserved bit")));
  EXPECT_THAT(with(t0 + 6, "\x21"), StatusIs(StatusCode::kDataLoss, HasSubstr("rank 33")));
  EXPECT_THAT(with(t0 + 7, "\x05"), StatusIs(StatusCode::kDataLoss, HasSubstr("region id 5")));
  EXPECT_THAT(with(t0 + 4, std::string(1, '\0')),
              StatusIs(StatusCode::kDataLoss, HasSubstr("NUL")));
  // An offset varint of 11 bytes, and one past 64 bits.
  std::string s = good;
  s.replace(t0 + 8, 1, std::string(10, '\x80') + "\x01");
  EXPECT_THAT(DecodeManifest(s, 20480, 2).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("not a varint")));
  s = good;
  s.replace(t0 + 8, 1, std::string(9, '\xff') + "\x02");
  EXPECT_THAT(DecodeManifest(s, 20480, 2).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("not a varint")));
  // Past the end of the region (the view's size is computed, not stored).
  s = good;
  s.replace(t0 + 8, 1, "\xff\x4f");  // 10239
  EXPECT_THAT(DecodeManifest(s, 20480, 2).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("past the end of region")));

  // Names out of order or repeated: the rule that makes names unique.
  Manifest unsorted = m;
  unsorted.tensors.Replace(0, m.tensors[1].ToInfo());
  unsorted.tensors.Replace(1, m.tensors[0].ToInfo());
  EXPECT_THAT(DecodeManifest(EncodeManifestV2(unsorted), 20480, 2).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("sorted by name")));
  Manifest dup = m;
  TensorInfo renamed = m.tensors[1].ToInfo();
  renamed.name = "a.b";
  dup.tensors.Replace(1, renamed);
  EXPECT_THAT(DecodeManifest(EncodeManifestV2(dup), 20480, 2).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("duplicate name 'a.b'")));
  // Counts the bytes cannot hold are rejected before reserving.
  s = good;
  s[4] = static_cast<char>(0xff);
  s[5] = static_cast<char>(0xff);
  EXPECT_THAT(DecodeManifest(s, 20480, 2).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("record counts need")));
  // Every truncation fails cleanly.
  for (size_t n = 0; n < good.size(); ++n)
    EXPECT_FALSE(DecodeManifest(good.substr(0, n), 20480, 2).ok()) << n;
}

// Front coding lets a small manifest name gigabytes: 65,537 names of 4096 bytes that share
// all but their last 8 bytes are 270 MB of names in a manifest of a few hundred KB. Both
// sides refuse past 256 MiB together: the reader before allocating more, the writer
// before publishing an image no reader would open.
TEST(FormatTest, TheTensorNamesTogetherAreBounded) {
  const size_t count = kMaxTensorNameBytes / kMaxTensorNameLen + 1;
  Manifest m;
  m.regions.push_back({4, 4, 0, DeviceKind::kCpu, -1});
  m.tensors.Reserve(count, count * kMaxTensorNameLen, 2 * count);
  std::string name(kMaxTensorNameLen, 'x');
  const int64_t one[] = {1};
  for (size_t i = 0; i < count; ++i) {
    std::snprintf(name.data() + kMaxTensorNameLen - 8, 9, "%08zu", i);
    TensorRef t;
    t.name = name;
    t.dtype = DType::kF32;
    t.shape = one;
    t.strides = one;
    t.byte_size = 4;
    m.tensors.Append(t);
  }
  ASSERT_GT(m.tensors.name_bytes(), kMaxTensorNameBytes);
  EXPECT_THAT(ValidateManifest(m, 8192),
              StatusIs(StatusCode::kResourceExhausted, HasSubstr("tensor names take")));
  const std::string enc = EncodeManifestV2(m);
  EXPECT_LT(enc.size(), 2u << 20);
  m.tensors = TensorTable();  // the decoder's names alone come near the limit
  EXPECT_THAT(DecodeManifest(enc, 8192, 2).status(),
              StatusIs(StatusCode::kResourceExhausted, HasSubstr("tensor names exceed")));
}

TEST(FormatTest, StoredManifestIsCompressedWhenThatPays) {
  Manifest m = SampleManifest();
  std::vector<TensorInfo> tensors;
  for (const TensorRef t : m.tensors) tensors.push_back(t.ToInfo());
  for (int i = 0; i < 200; ++i)
    tensors.push_back({"layers." + std::to_string(1000 + i) + ".weight",
                       DType::kF32,
                       {1},
                       {1},
                       0,
                       static_cast<uint64_t>(4 * i),
                       4});
  SortTensorsByName(&tensors);
  m.tensors = MakeTensorTable(tensors);
  Footer f;
  auto stored = EncodeStoredManifest(m, 2, 3, &f);
  ASSERT_OK(stored.status());
  EXPECT_EQ(f.format_version, 2u);
  EXPECT_EQ(f.manifest_codec, Codec::kZstd);
  EXPECT_EQ(f.manifest_raw_size, EncodeManifestV2(m).size());
  EXPECT_LT(stored->size(), f.manifest_raw_size / 2);
  std::string scratch;
  auto raw = DecodeStoredManifest(*stored, f, &scratch);
  ASSERT_OK(raw.status());
  EXPECT_EQ(*raw, EncodeManifestV2(m));
  // A frame that lies about its size, or is cut short, or has bytes after it.
  Footer lie = f;
  lie.manifest_raw_size += 1;
  EXPECT_THAT(DecodeStoredManifest(*stored, lie, &scratch).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("does not declare")));
  EXPECT_FALSE(DecodeStoredManifest(stored->substr(0, stored->size() - 3), f, &scratch).ok());
  EXPECT_THAT(DecodeStoredManifest(*stored + "x", f, &scratch).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("one zstd frame")));
  // Version 1 is the v1 bytes, raw; a tiny v2 manifest that zstd cannot shrink is raw.
  auto v1 = EncodeStoredManifest(m, 1, 3, &f);
  ASSERT_OK(v1.status());
  EXPECT_EQ(*v1, EncodeManifest(m));
  EXPECT_EQ(f.manifest_codec, Codec::kRaw);
  EXPECT_EQ(f.manifest_raw_size, 0u);
  Manifest tiny;
  const std::vector<uint8_t> noise = testing::RandomBytes(200, testing::TestSeed());
  tiny.metadata.push_back({"noise", std::string(noise.begin(), noise.end())});
  auto small = EncodeStoredManifest(tiny, 2, 3, &f);
  ASSERT_OK(small.status());
  EXPECT_EQ(f.manifest_codec, Codec::kRaw);
  EXPECT_EQ(f.manifest_raw_size, small->size());
  EXPECT_THAT(EncodeStoredManifest(m, 3, 3, &f).status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("version 3")));
}

TEST(FormatTest, StorageAlignmentPacksTinyStorages) {
  EXPECT_EQ(StorageAlignment(0), 1u);
  EXPECT_EQ(StorageAlignment(1), 1u);
  EXPECT_EQ(StorageAlignment(4), 4u);
  EXPECT_EQ(StorageAlignment(5), 8u);
  EXPECT_EQ(StorageAlignment(255), 256u);
  EXPECT_EQ(StorageAlignment(256), 256u);
  EXPECT_EQ(StorageAlignment(1 << 20), 256u);
}

TEST(FormatTest, ManifestRoundTrip) {
  Manifest m;
  m.regions.push_back({10000, 4096, 0x7f0000000000, DeviceKind::kCuda, 3});
  m.chunks.push_back({4096, 5000, 8000, 0, 0, Codec::kGrouped, 2, 11, 22});
  m.chunks.push_back({12288, 2000, 2000, 8000, 0, Codec::kRaw, 0, 33, 33});
  m.tensors = MakeTensorTable({{"a.b", DType::kBF16, {40, 100}, {100, 1}, 0, 0, 8000},
                               {"t", DType::kF32, {50, 10}, {1, 50}, 0, 8000, 2000},
                               {"s", DType::kI64, {}, {}, 0, 16, 8}});
  m.sections.push_back({"skeleton", 16384, 10, 99});
  m.metadata.push_back({"k", "v"});
  std::string enc = EncodeManifest(m);
  auto d = DecodeManifest(enc, 20480);
  ASSERT_OK(d.status());
  EXPECT_EQ(d->regions[0].va_hint, 0x7f0000000000u);
  EXPECT_EQ(d->regions[0].device_ordinal, 3);
  EXPECT_EQ(d->chunks[0].codec, Codec::kGrouped);
  EXPECT_EQ(d->chunks[0].element_size, 2);
  EXPECT_THAT(d->tensors[1].strides, ElementsAreArray({1, 50}));
  EXPECT_EQ(d->tensors[2].shape.size(), 0u);
  EXPECT_EQ(d->sections[0].name, "skeleton");
  EXPECT_EQ(*d->FindMetadata("k"), "v");
  EXPECT_EQ(EncodeManifest(*d), enc);
  // The manifest offset bounds the blocks.
  EXPECT_THAT(DecodeManifest(enc, 16384).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("past the manifest")));
}

// Braced shapes for the span-taking functions.
StatusOr<uint64_t> ViewBytes(DType dtype, Dims shape, Dims strides) {
  return ViewByteSize(dtype, shape, strides);
}
StatusOr<uint64_t> Elements(Dims shape) { return ElementCount(shape); }

TEST(FormatTest, ViewByteSize) {
  EXPECT_EQ(*ViewBytes(DType::kF32, {2, 3}, {3, 1}), 24u);
  EXPECT_EQ(*ViewBytes(DType::kF32, {3, 2}, {1, 3}), 24u);  // transposed
  EXPECT_EQ(*ViewBytes(DType::kF32, {2, 2}, {4, 1}), 24u);  // rows of a wider matrix
  EXPECT_EQ(*ViewBytes(DType::kF32, {}, {}), 4u);           // scalar
  EXPECT_EQ(*ViewBytes(DType::kF32, {0, 7}, {7, 1}), 0u);   // empty
  EXPECT_EQ(*ViewBytes(DType::kF32, {4}, {0}), 4u);         // broadcast (expand)
  EXPECT_EQ(*ViewBytes(DType::kF4, {3, 2}, {2, 1}), 3u);
  EXPECT_EQ(*ViewBytes(DType::kF6E2M3, {4}, {1}), 3u);
  EXPECT_THAT(ViewBytes(DType::kF4, {3, 2}, {1, 3}).status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("contiguous")));
  EXPECT_THAT(ViewBytes(DType::kF32, {2}, {-1}).status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("negative stride")));
  EXPECT_THAT(ViewBytes(DType::kF32, {1 << 30, 1 << 30, 1 << 30}, {1, 1, 1}).status(),
              StatusIs(StatusCode::kResourceExhausted, HasSubstr("overflows")));
  EXPECT_THAT(Elements({int64_t{1} << 31, int64_t{1} << 31, 0}).status(),
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
