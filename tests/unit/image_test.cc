// Round trips through the writer, the reader and the host loader.
#include "stasis/image.h"

#include <cstring>

#include "snapshot/dtype.h"
#include "snapshot/format.h"
#include "tests/testutil/restore_util.h"
#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::NormalBF16Bytes;
using testing::NormalF32Bytes;
using testing::RandomBytes;
using testing::TempDir;
using testing::TestSeed;

struct OwnedTensor {
  HostTensor view;
  std::vector<uint8_t> bytes;
};

// One tensor of each dtype (with odd sizes), a scalar and an empty tensor.
std::vector<OwnedTensor> EveryDtype(uint64_t seed) {
  std::vector<OwnedTensor> out;
  for (uint8_t id = 1; id <= kMaxDTypeId; ++id) {
    DType t = *DTypeFromId(id);
    int bits = DTypeBits(t);
    // Sub-byte dtypes need a count that fills whole bytes: 4 bits * 2k, 6 bits * 4k.
    std::vector<int64_t> shape = bits == 4   ? std::vector<int64_t>{6, 10}
                                 : bits == 6 ? std::vector<int64_t>{3, 8}
                                             : std::vector<int64_t>{7, 13};
    uint64_t count = static_cast<uint64_t>(shape[0] * shape[1]);
    OwnedTensor o;
    o.bytes = RandomBytes(count * bits / 8, seed + id);
    o.view.name = "t." + std::string(DTypeName(t));
    o.view.dtype = t;
    o.view.shape = shape;
    out.push_back(std::move(o));
  }
  OwnedTensor scalar;
  scalar.bytes = RandomBytes(4, seed);
  scalar.view = HostTensor{"scalar", DType::kF32, {}, {}, nullptr, 4, 0};
  out.push_back(std::move(scalar));
  OwnedTensor empty;
  empty.view = HostTensor{"empty", DType::kBF16, {0, 5}, {}, nullptr, 0, 0};
  out.push_back(std::move(empty));
  for (auto& o : out) {
    o.view.storage = o.bytes.empty() ? nullptr : o.bytes.data();
    o.view.storage_bytes = o.bytes.size();
  }
  return out;
}

std::vector<HostTensor> Views(const std::vector<OwnedTensor>& owned) {
  std::vector<HostTensor> v;
  for (const auto& o : owned) v.push_back(o.view);
  return v;
}

class ImageRoundTripTest : public ::testing::TestWithParam<CodecChoice> {};

TEST_P(ImageRoundTripTest, EveryDtypeIsByteIdentical) {
  TempDir dir;
  auto owned = EveryDtype(TestSeed());
  WriterOptions opt;
  opt.codec = GetParam();
  opt.chunk_size = 4096;  // force many chunks and packing across tensors
  opt.threads = 2;
  ASSERT_OK(SnapshotHostTensors(Views(owned), {{"k", "v"}}, dir.File("img"), opt));
  auto reader = ImageReader::Open(dir.File("img"));
  ASSERT_OK(reader.status());
  const auto& m = (*reader)->manifest();
  ASSERT_EQ(m.tensors.size(), owned.size());
  EXPECT_EQ(*m.FindMetadata("k"), "v");
  EXPECT_EQ(*m.FindMetadata("source.format"), "tensors");
  EXPECT_NE(m.FindMetadata("creator"), nullptr);
  auto image = testing::RestoreToHost(dir.File("img"));
  ASSERT_OK(image.status());
  for (const auto& o : owned) {
    std::optional<format::TensorRef> t = m.FindTensor(o.view.name);
    ASSERT_TRUE(t.has_value()) << o.view.name;
    EXPECT_EQ(t->dtype, o.view.dtype);
    EXPECT_THAT(t->shape, ::testing::ElementsAreArray(o.view.shape));
    ASSERT_EQ(t->byte_size, o.bytes.size()) << o.view.name;
    if (o.bytes.empty()) continue;  // memcmp must not see the null data of an empty vector
    EXPECT_EQ(0,
              std::memcmp(testing::TensorBytes(**image, t->name), o.bytes.data(), o.bytes.size()))
        << o.view.name;
  }
  auto report = (*reader)->Verify(VerifyOptions{});
  ASSERT_OK(report.status());
  EXPECT_TRUE(report->ok());
}

INSTANTIATE_TEST_SUITE_P(Codecs, ImageRoundTripTest,
                         ::testing::Values(CodecChoice::kAuto, CodecChoice::kZstd,
                                           CodecChoice::kRaw));

TEST(ImageTest, AliasedStoragesAreStoredOnce) {
  TempDir dir;
  auto weights = NormalF32Bytes(64 * 32, TestSeed());
  // wte and lm_head share storage (tied); `transposed` is a strided view of the same bytes;
  // `row` is a view at an offset.
  std::vector<HostTensor> tensors = {
      {"wte.weight", DType::kF32, {64, 32}, {}, weights.data(), weights.size(), 0},
      {"lm_head.weight", DType::kF32, {64, 32}, {}, weights.data(), weights.size(), 0},
      {"transposed", DType::kF32, {32, 64}, {1, 32}, weights.data(), weights.size(), 0},
      {"row", DType::kF32, {32}, {}, weights.data(), weights.size(), 5 * 32 * 4},
  };
  WriterOptions opt;
  ASSERT_OK(SnapshotHostTensors(tensors, {}, dir.File("img"), opt));
  auto reader = ImageReader::Open(dir.File("img"));
  ASSERT_OK(reader.status());
  const auto& m = (*reader)->manifest();
  ASSERT_EQ(m.regions.size(), 1u);
  EXPECT_EQ(m.regions[0].size, weights.size()) << "tied bytes must be stored once";
  uint64_t raw = 0;
  for (const auto& c : m.chunks) raw += c.raw_size;
  EXPECT_EQ(raw, weights.size());
  EXPECT_EQ(m.FindTensor("wte.weight")->byte_offset, m.FindTensor("lm_head.weight")->byte_offset);
  EXPECT_THAT(m.FindTensor("transposed")->strides, ElementsAre(1, 32));
  EXPECT_EQ(m.FindTensor("row")->byte_offset, m.FindTensor("wte.weight")->byte_offset + 5 * 32 * 4);
  auto image = testing::RestoreToHost(dir.File("img"));
  ASSERT_OK(image.status());
  EXPECT_EQ(0, std::memcmp(testing::TensorBytes(**image, "lm_head.weight"), weights.data(),
                           weights.size()));
}

TEST(ImageTest, SectionsAndManyRegions) {
  TempDir dir;
  WriterOptions opt;
  opt.chunk_size = 8192;
  auto w = ImageWriter::Create(dir.File("img"), opt);
  ASSERT_OK(w.status());
  auto a = RandomBytes(20000, TestSeed());
  auto b = NormalBF16Bytes(30000, TestSeed());
  format::RegionInfo ra{20000, 4096, 0x7f0000000000, format::DeviceKind::kCuda, 0};
  format::RegionInfo rb{70000, 2 << 20, 0x7f0000200000, format::DeviceKind::kCuda, 1};
  ASSERT_EQ(*(*w)->AddRegion(ra), 0u);
  ASSERT_EQ(*(*w)->AddRegion(rb), 1u);
  ASSERT_OK((*w)->AddRegionData(0, 0, a.data(), a.size(), 0));
  ASSERT_OK((*w)->AddSection("skeleton", "torchscript bytes"));
  ASSERT_OK((*w)->AddRegionData(1, 1000, b.data(), b.size(), 2));  // sparse: [0,1000) stays zero
  ASSERT_OK((*w)->AddSection("empty", ""));
  ASSERT_OK((*w)->AddTensor({"b", DType::kBF16, {30000}, {1}, 1, 1000, 60000}));
  ASSERT_OK((*w)->Finish());
  EXPECT_EQ((*w)->stats().raw_bytes, a.size() + b.size());

  auto reader = ImageReader::Open(dir.File("img"));
  ASSERT_OK(reader.status());
  EXPECT_EQ(*(*reader)->ReadSection("skeleton"), "torchscript bytes");
  EXPECT_EQ(*(*reader)->ReadSection("empty"), "");
  EXPECT_THAT((*reader)->ReadSection("nope"), StatusIs(StatusCode::kNotFound, HasSubstr("nope")));
  const auto& m = (*reader)->manifest();
  EXPECT_EQ(m.regions[1].va_hint, 0x7f0000200000u);
  EXPECT_EQ(m.regions[1].device_ordinal, 1);
  auto image = testing::RestoreToHost(dir.File("img"));
  ASSERT_OK(image.status());
  EXPECT_EQ(0, std::memcmp(testing::RegionBytes(**image, 0), a.data(), a.size()));
  EXPECT_EQ(0, std::memcmp(testing::RegionBytes(**image, 1) + 1000, b.data(), b.size()));
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(testing::RegionBytes(**image, 1)[i], 0);
  for (const auto& c : m.chunks) EXPECT_EQ(c.file_offset % 4096, 0u);
  auto report = (*reader)->Verify(VerifyOptions{});
  ASSERT_OK(report.status());
  EXPECT_TRUE(report->ok());
  EXPECT_EQ(report->sections_checked, 2u);
}

TEST(ImageTest, WriterRejectsBadInputAndPublishesNothing) {
  TempDir dir;
  {
    auto w = ImageWriter::Create(dir.File("img"), WriterOptions{});
    ASSERT_OK(w.status());
    ASSERT_EQ(*(*w)->AddRegion({100, 1, 0, format::DeviceKind::kCpu, -1}), 0u);
    uint8_t bytes[200] = {};
    EXPECT_THAT((*w)->AddRegionData(0, 50, bytes, 60, 0),
                StatusIs(StatusCode::kInvalidArgument, HasSubstr("past the end")));
    // Sticky: the writer stays failed.
    EXPECT_THAT((*w)->AddRegionData(0, 0, bytes, 10, 0),
                StatusIs(StatusCode::kInvalidArgument, HasSubstr("past the end")));
    EXPECT_FALSE((*w)->Finish().ok());
  }
  {
    auto w = ImageWriter::Create(dir.File("img"), WriterOptions{});
    ASSERT_OK(w.status());
    ASSERT_EQ(*(*w)->AddRegion({100, 1, 0, format::DeviceKind::kCpu, -1}), 0u);
    ASSERT_OK((*w)->AddTensor({"x", DType::kF32, {30}, {1}, 0, 0, 120}));  // past the region
    EXPECT_THAT((*w)->Finish(),
                StatusIs(StatusCode::kDataLoss, HasSubstr("runs past the end of region")));
  }
  // What the manifest's table cannot hold is refused when it is added.
  for (const format::TensorInfo& bad :
       std::vector<format::TensorInfo>{{"", DType::kF32, {1}, {1}, 0, 0, 4},
                                       {std::string(4097, 'n'), DType::kF32, {1}, {1}, 0, 0, 4},
                                       {"r", DType::kF32, {1, 1}, {1}, 0, 0, 4},
                                       {"deep", DType::kF32, Dims(std::vector<int64_t>(33, 1)),
                                        Dims(std::vector<int64_t>(33, 1)), 0, 0, 4}}) {
    auto w = ImageWriter::Create(dir.File("img"), WriterOptions{});
    ASSERT_OK(w.status());
    EXPECT_THAT((*w)->AddTensor(bad), StatusIs(StatusCode::kInvalidArgument, HasSubstr("tensor")));
    EXPECT_FALSE((*w)->Finish().ok());
  }
  EXPECT_TRUE(dir.List().empty());
  EXPECT_THAT(ImageWriter::Create(dir.File("img"), WriterOptions{.chunk_size = 100}).status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("chunk size")));
}

TEST(ImageTest, RefusesToReplaceWithoutOverwrite) {
  TempDir dir;
  testing::WriteFile(dir.File("img"), "precious");
  EXPECT_THAT(ImageWriter::Create(dir.File("img"), WriterOptions{}).status(),
              StatusIs(StatusCode::kAlreadyExists, HasSubstr("--force")));
  EXPECT_EQ(testing::ReadFile(dir.File("img")), "precious");
  WriterOptions opt;
  opt.overwrite = true;
  auto w = ImageWriter::Create(dir.File("img"), opt);
  ASSERT_OK(w.status());
  (*w)->Abandon();
  EXPECT_EQ(testing::ReadFile(dir.File("img")), "precious")
      << "abandon must not touch the destination";
  EXPECT_THAT(dir.List(), ElementsAre("img"));
}

TEST(ImageTest, StreamsALargeRegionThroughASmallPipeline) {
  // A large image through a tiny pipeline: the writer must not buffer the whole model.
  TempDir dir;
  WriterOptions opt;
  opt.chunk_size = 64 << 10;
  opt.threads = 2;
  opt.max_inflight_chunks = 2;
  auto w = ImageWriter::Create(dir.File("img"), opt);
  ASSERT_OK(w.status());
  const uint64_t total = 64ull << 20;
  ASSERT_EQ(*(*w)->AddRegion({total, 4096, 0, format::DeviceKind::kCpu, -1}), 0u);
  auto piece = NormalBF16Bytes(1 << 20, TestSeed());
  for (uint64_t off = 0; off < total; off += piece.size())
    ASSERT_OK((*w)->AddRegionData(0, off, piece.data(), piece.size(), 2));
  ASSERT_OK((*w)->Finish());
  EXPECT_EQ((*w)->stats().raw_bytes, total);
  EXPECT_EQ((*w)->stats().chunks_by_codec[2], total / opt.chunk_size);
}

TEST(ImageTest, LargeRawChunksSitAtTheirRegionPhaseInTheFile) {
  // format::kMapPhase: a raw chunk of >= 2 MiB lies at a file offset congruent to its
  // dst_offset modulo 2 MiB, so a restorer can map it with large folios. Small chunks
  // (and every compressed one) keep plain block alignment.
  TempDir dir;
  WriterOptions opt;
  opt.codec = CodecChoice::kRaw;
  opt.chunk_size = 4 << 20;
  auto w = ImageWriter::Create(dir.File("img"), opt);
  ASSERT_OK(w.status());
  auto small = RandomBytes(10000, TestSeed());
  auto big = RandomBytes((9 << 20) + 12288, TestSeed() + 1);
  ASSERT_EQ(*(*w)->AddRegion({small.size(), 64, 0, format::DeviceKind::kCpu, -1}), 0u);
  ASSERT_EQ(*(*w)->AddRegion({big.size() + 4096, 4096, 0, format::DeviceKind::kCpu, -1}), 1u);
  ASSERT_OK((*w)->AddRegionData(0, 0, small.data(), small.size(), 0));
  ASSERT_OK((*w)->AddRegionData(1, 4096, big.data(), big.size(), 0));
  ASSERT_OK((*w)->Finish());

  auto reader = ImageReader::Open(dir.File("img"));
  ASSERT_OK(reader.status());
  int phased = 0;
  for (const format::ChunkInfo& c : (*reader)->manifest().chunks) {
    EXPECT_EQ(c.file_offset % format::kBlockAlign, 0u);
    if (c.raw_size >= format::kMapPhase) {
      EXPECT_EQ(c.file_offset % format::kMapPhase, c.dst_offset % format::kMapPhase)
          << "chunk at dst_offset " << c.dst_offset;
      ++phased;
    }
  }
  EXPECT_EQ(phased, 2);  // 4 MiB, 4 MiB, then 1 MiB + 12 KiB
  // The padding is zero and the image is intact; the file grew by less than one phase.
  auto report = (*reader)->Verify(VerifyOptions{});
  ASSERT_OK(report.status());
  EXPECT_TRUE(report->ok());
  EXPECT_LT(testing::ReadFile(dir.File("img")).size(),
            small.size() + big.size() + format::kMapPhase + (64 << 10));
  auto image = testing::RestoreToHost(dir.File("img"));
  ASSERT_OK(image.status());
  const MappedRegion& restored = (*image)->regions()[1];
  EXPECT_EQ(std::memcmp(restored.host_view + 4096, big.data(), big.size()), 0);
}

}  // namespace
}  // namespace stasis
