// The cache tier's parts (restore/image_cache.h): the raw layout of an entry is a valid
// image for every codec and both format versions, and CacheFill publishes an entry that
// opens and verifies, only when every chunk came, never twice at once.
#include "restore/image_cache.h"

#include <fcntl.h>
#include <sys/stat.h>

#include "snapshot/codec.h"
#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using ::testing::HasSubstr;
using namespace ::stasis::testing;

// An image of two regions (bf16-like compressible data and random bytes), a tensor per
// region and a section, written with `codec` in 64 KiB chunks.
std::string WriteImage(const TempDir& dir, CodecChoice codec, uint32_t version,
                       const std::string& name) {
  const std::string path = dir.File(name);
  WriterOptions o;
  o.codec = codec;
  o.format_version = version;
  o.chunk_size = 64 << 10;
  auto w = ImageWriter::Create(path, o);
  EXPECT_TRUE(w.ok()) << w.status().ToString();
  const std::vector<uint8_t> a = NormalBF16Bytes(300000, TestSeed());
  const std::vector<uint8_t> b = RandomBytes(3 << 20, TestSeed() + 1);  // >= kMapPhase chunks
  for (const auto* data : {&a, &b}) {
    auto region = (*w)->AddRegion({data->size(), 4096, 0, format::DeviceKind::kCpu, -1});
    EXPECT_TRUE(region.ok());
    EXPECT_TRUE(
        (*w)->AddRegionData(*region, 0, data->data(), data->size(), data == &a ? 2 : 0).ok());
    format::TensorInfo t;
    t.name = data == &a ? "a" : "b";
    t.dtype = data == &a ? DType::kBF16 : DType::kU8;
    t.shape = Dims{static_cast<int64_t>(data == &a ? data->size() / 2 : data->size())};
    t.strides = Dims{1};
    t.region_id = *region;
    t.byte_size = data->size();
    EXPECT_TRUE((*w)->AddTensor(t).ok());
  }
  EXPECT_TRUE((*w)->AddSection("skeleton", std::string(10000, 's')).ok());
  EXPECT_TRUE((*w)->AddSection("empty", "").ok());  // the format places it nowhere
  EXPECT_TRUE((*w)->Finish().ok());
  return path;
}

// Every chunk of `source`, decoded and checked, into `fill`.
void FillFrom(const ImageReader& source, CacheFill* fill) {
  std::vector<uint8_t> raw, scratch;
  for (size_t i = 0; i < source.manifest().chunks.size(); ++i) {
    raw.resize(source.manifest().chunks[i].raw_size);
    ASSERT_THAT(source.ReadChunk(i, raw.data(), nullptr, &scratch), IsOk());
    ASSERT_THAT(fill->Put(static_cast<uint32_t>(i), raw.data()), IsOk());
  }
}

struct Param {
  CodecChoice codec;
  uint32_t version;
};

class RawLayoutTest : public ::testing::TestWithParam<Param> {};

TEST_P(RawLayoutTest, EntryIsAVerifiedRawImageOfTheSameTensors) {
  TempDir dir;
  const std::string image = WriteImage(dir, GetParam().codec, GetParam().version, "src.stasis");
  auto source = ImageReader::Open(image);
  ASSERT_THAT(source.status(), IsOk());

  auto layout = PlanRawLayout((*source)->manifest());
  ASSERT_THAT(layout.status(), IsOk());
  for (const format::ChunkInfo& c : layout->manifest.chunks) {
    EXPECT_EQ(c.codec, format::Codec::kRaw);
    EXPECT_EQ(c.stored_size, c.raw_size);
    EXPECT_EQ(c.stored_xxh3, c.raw_xxh3);
    EXPECT_EQ(c.file_offset % format::kBlockAlign, 0u);
    if (c.raw_size >= format::kMapPhase && c.dst_offset % format::kBlockAlign == 0) {
      EXPECT_EQ(c.file_offset % format::kMapPhase, c.dst_offset % format::kMapPhase);
    }
  }

  const std::string cache = dir.File("cache");
  auto fill = CacheFill::Begin(cache, "0123456789abcdef", **source);
  ASSERT_THAT(fill.status(), IsOk());
  ASSERT_NE(*fill, nullptr);
  FillFrom(**source, fill->get());
  ASSERT_THAT((*fill)->Publish(), IsOk());
  const std::string entry = (*fill)->entry_path();
  fill->reset();
  EXPECT_EQ(FindCacheEntry(cache, "0123456789abcdef"), entry);

  auto opened = ImageReader::Open(entry);
  ASSERT_THAT(opened.status(), IsOk());
  auto report = (*opened)->Verify({});
  ASSERT_THAT(report.status(), IsOk());
  EXPECT_TRUE(report->ok()) << (report->errors.empty() ? "" : report->errors[0].ToString());
  EXPECT_EQ((*opened)->footer().format_version, GetParam().version);
  const format::Manifest &was = (*source)->manifest(), &now = (*opened)->manifest();
  ASSERT_EQ(now.tensors.size(), was.tensors.size());
  for (size_t i = 0; i < was.tensors.size(); ++i)
    EXPECT_TRUE(format::SameTensor(was.tensors[i], now.tensors[i]));
  EXPECT_EQ(*(*opened)->ReadSection("skeleton"), std::string(10000, 's'));
  EXPECT_EQ(*(*opened)->ReadSection("empty"), "");
  EXPECT_EQ(EntryDifference(was, now), "");
  EXPECT_EQ(now.RawBytes(), was.RawBytes());
  for (const auto& e : dir.List()) EXPECT_EQ(e.find(".partial"), std::string::npos) << e;
}

INSTANTIATE_TEST_SUITE_P(Codecs, RawLayoutTest,
                         ::testing::Values(Param{CodecChoice::kAuto, 2},
                                           Param{CodecChoice::kZstd, 2},
                                           Param{CodecChoice::kRaw, 2},
                                           Param{CodecChoice::kAuto, 1}));

TEST(CacheFillTest, RefusesToPublishWithAChunkMissingAndLeavesNoPartial) {
  TempDir dir;
  const std::string image = WriteImage(dir, CodecChoice::kAuto, 2, "src.stasis");
  auto source = ImageReader::Open(image);
  ASSERT_THAT(source.status(), IsOk());
  const std::string cache = dir.File("cache");
  {
    auto fill = CacheFill::Begin(cache, "k1", **source);
    ASSERT_THAT(fill.status(), IsOk());
    std::vector<uint8_t> raw((*source)->manifest().chunks[0].raw_size), scratch;
    ASSERT_THAT((*source)->ReadChunk(0, raw.data(), nullptr, &scratch), IsOk());
    ASSERT_THAT((*fill)->Put(0, raw.data()), IsOk());
    EXPECT_THAT((*fill)->Publish(),
                StatusIs(StatusCode::kFailedPrecondition, HasSubstr("chunks written")));
  }
  EXPECT_FALSE(FindCacheEntry(cache, "k1").has_value());
  struct stat st;
  EXPECT_NE(::stat((cache + "/k1.stasis.partial").c_str(), &st), 0) << "partial file left";
}

TEST(CacheFillTest, OneFillerPerKeyAndAPublishedEntryIsNotFilledAgain) {
  TempDir dir;
  const std::string image = WriteImage(dir, CodecChoice::kZstd, 2, "src.stasis");
  auto source = ImageReader::Open(image);
  ASSERT_THAT(source.status(), IsOk());
  const std::string cache = dir.File("cache");
  auto first = CacheFill::Begin(cache, "k", **source);
  ASSERT_THAT(first.status(), IsOk());
  ASSERT_NE(*first, nullptr);
  // flock locks belong to the open file description: a second Begin in this process
  // opens its own, so it is refused as another process's would be.
  auto second = CacheFill::Begin(cache, "k", **source);
  ASSERT_THAT(second.status(), IsOk());
  EXPECT_EQ(*second, nullptr);
  FillFrom(**source, first->get());
  ASSERT_THAT((*first)->Publish(), IsOk());
  first->reset();
  auto third = CacheFill::Begin(cache, "k", **source);
  ASSERT_THAT(third.status(), IsOk());
  EXPECT_EQ(*third, nullptr) << "the entry exists: nothing to fill";
  EXPECT_TRUE(FindCacheEntry(cache, "k").has_value());
}

TEST(CacheFillTest, PruneEvictsLeastRecentlyUsedAndKeepsTheNamedEntry) {
  TempDir dir;
  const std::string image = WriteImage(dir, CodecChoice::kZstd, 2, "src.stasis");
  auto source = ImageReader::Open(image);
  ASSERT_THAT(source.status(), IsOk());
  const std::string cache = dir.File("cache");
  std::vector<std::string> paths;
  for (const char* key : {"a", "b", "c"}) {
    auto fill = CacheFill::Begin(cache, key, **source);
    ASSERT_THAT(fill.status(), IsOk());
    FillFrom(**source, fill->get());
    ASSERT_THAT((*fill)->Publish(), IsOk());
    paths.push_back((*fill)->entry_path());
  }
  // Last used: b (oldest), a, then c.
  struct timespec times[2] = {{1000, 0}, {1000, 0}};
  for (auto [path, t] : {std::pair{paths[1], 1000}, {paths[0], 2000}, {paths[2], 3000}}) {
    times[0].tv_sec = times[1].tv_sec = t;
    ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
  }
  auto listed = ListCacheEntries(cache);
  ASSERT_THAT(listed.status(), IsOk());
  ASSERT_EQ(listed->size(), 3u);
  EXPECT_EQ((*listed)[0].path, paths[1]);
  const uint64_t one = (*listed)[0].bytes;
  // Room for one entry, and b must stay: a and c go (c although it is the most recent).
  auto removed = PruneCache(cache, one, paths[1]);
  ASSERT_THAT(removed.status(), IsOk());
  ASSERT_EQ(removed->size(), 2u);
  EXPECT_EQ((*removed)[0].path, paths[0]);
  EXPECT_EQ((*removed)[1].path, paths[2]);
  EXPECT_TRUE(FindCacheEntry(cache, "b").has_value());
}

TEST(CacheEntryTest, DifferenceNamesWhatAnEntryGotWrong) {
  TempDir dir;
  auto a = ImageReader::Open(WriteImage(dir, CodecChoice::kZstd, 2, "a.stasis"));
  ASSERT_THAT(a.status(), IsOk());
  auto layout = PlanRawLayout((*a)->manifest());
  ASSERT_THAT(layout.status(), IsOk());
  EXPECT_EQ(EntryDifference((*a)->manifest(), layout->manifest), "");
  format::Manifest bad = layout->manifest;
  bad.chunks[1].raw_xxh3 ^= 1;
  EXPECT_EQ(EntryDifference((*a)->manifest(), bad), "chunk 1 differs");
  bad = layout->manifest;
  bad.sections[0].xxh3 ^= 1;
  EXPECT_EQ(EntryDifference((*a)->manifest(), bad), "section 0 differs");
  bad = layout->manifest;
  bad.metadata.emplace_back("x", "y");
  EXPECT_EQ(EntryDifference((*a)->manifest(), bad), "the metadata differs");
  // Not raw: an entry is never compressed.
  EXPECT_EQ(EntryDifference((*a)->manifest(), (*a)->manifest()).substr(0, 5), "chunk");
}

TEST(CacheEntryTest, RemovalWaitsForNoFiller) {
  TempDir dir;
  auto source = ImageReader::Open(WriteImage(dir, CodecChoice::kZstd, 2, "a.stasis"));
  ASSERT_THAT(source.status(), IsOk());
  const std::string cache = dir.File("cache");
  auto fill = CacheFill::Begin(cache, "k", **source);
  ASSERT_THAT(fill.status(), IsOk());
  ASSERT_NE(*fill, nullptr);
  EXPECT_THAT(RemoveCacheEntry(cache, "k"),
              StatusIs(StatusCode::kUnavailable, HasSubstr("filled")));
  FillFrom(**source, fill->get());
  ASSERT_THAT((*fill)->Publish(), IsOk());
  fill->reset();
  EXPECT_THAT(RemoveCacheEntry(cache, "k"), IsOk());
  EXPECT_FALSE(FindCacheEntry(cache, "k").has_value());
}

TEST(CacheKeyTest, DependsOnTheManifestAndTheEtag) {
  format::Footer f;
  f.manifest_xxh3 = 1;
  f.manifest_size = 2;
  f.file_size = 3;
  const std::string k = CacheKey(f, "\"e1\"");
  EXPECT_EQ(k.size(), 16u);
  EXPECT_EQ(k, CacheKey(f, "\"e1\""));
  EXPECT_NE(k, CacheKey(f, "\"e2\""));
  format::Footer g = f;
  g.manifest_xxh3 = 9;
  EXPECT_NE(k, CacheKey(g, "\"e1\""));
}

}  // namespace
}  // namespace stasis
