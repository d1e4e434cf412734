// Golden images (zstd's golden-decompression idea): committed files that pin the format.
// - valid/small.stasis (format v1) and valid/small_v2.stasis (v2) must open, verify and
//   hold the expected tensors, and the writer must still produce each byte for byte from
//   the same input: an accidental format change fails here before it ships.
// - invalid/*.stasis must fail with the code and message listed in InvalidCases().
// STASIS_UPDATE_GOLDEN=1 rewrites them (review the diff, and bump the format version if
// a valid file changed).
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>

#include "common/hash.h"
#include "snapshot/format.h"
#include "stasis/image.h"
#include "tests/testutil/restore_util.h"
#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;

const std::string kGolden = STASIS_SOURCE_DIR "/tests/golden";

bool Updating() { return std::getenv("STASIS_UPDATE_GOLDEN") != nullptr; }

struct GoldenInput {
  std::vector<uint8_t> f32, bf16, i64;
  std::vector<HostTensor> tensors;
};

// Fixed seeds here, not the test seed: the golden file depends on these bytes.
GoldenInput MakeInput() {
  GoldenInput in;
  in.f32 = testing::NormalF32Bytes(3000, 1);
  in.bf16 = testing::NormalBF16Bytes(5000, 2);
  in.i64 = testing::RandomBytes(8 * 10, 3);
  in.tensors = {
      {"embed.weight", DType::kF32, {100, 30}, {}, in.f32.data(), in.f32.size(), 0},
      {"head.weight", DType::kF32, {100, 30}, {}, in.f32.data(), in.f32.size(), 0},
      {"proj.weight_t", DType::kF32, {30, 100}, {1, 30}, in.f32.data(), in.f32.size(), 0},
      {"mlp.weight", DType::kBF16, {50, 100}, {}, in.bf16.data(), in.bf16.size(), 0},
      {"steps", DType::kI64, {10}, {}, in.i64.data(), in.i64.size(), 0},
  };
  return in;
}

// Version 1, written at the layout the v1 writer gave AddHostTensors (every storage at a
// multiple of 256), spelled out so the v1 encoder is pinned whatever the layout policy.
std::string WriteGoldenV1(const std::string& path) {
  GoldenInput in = MakeInput();
  WriterOptions opt;
  opt.format_version = 1;
  opt.chunk_size = 4096;
  opt.threads = 2;
  opt.overwrite = true;
  auto w = ImageWriter::Create(path, opt);
  EXPECT_OK(w.status());
  if (!w.ok()) return "";
  ImageWriter& writer = **w;
  const uint64_t f32 = 0, bf16 = 12032, i64 = 22272;
  EXPECT_OK(writer.AddRegion({i64 + 80, 4096, 0, format::DeviceKind::kCpu, -1}).status());
  EXPECT_OK(writer.AddRegionData(0, f32, in.f32.data(), in.f32.size(), 4));
  EXPECT_OK(writer.AddRegionData(0, bf16, in.bf16.data(), in.bf16.size(), 2));
  EXPECT_OK(writer.AddRegionData(0, i64, in.i64.data(), in.i64.size(), 0));
  const uint64_t offsets[] = {f32, f32, f32, bf16, i64};
  for (size_t i = 0; i < in.tensors.size(); ++i) {
    const HostTensor& t = in.tensors[i];
    const Dims strides = t.strides.empty() ? format::ContiguousStrides(t.shape) : Dims(t.strides);
    uint64_t size = *format::ViewByteSize(t.dtype, t.shape, strides);
    EXPECT_OK(writer.AddTensor({t.name, t.dtype, t.shape, strides, 0, offsets[i], size}));
  }
  EXPECT_OK(writer.SetMetadata("source.format", "tensors"));
  EXPECT_OK(writer.SetMetadata("creator", "stasis golden"));
  EXPECT_OK(writer.SetMetadata("created", "2026-11-28T00:00:00Z"));
  EXPECT_OK(writer.Finish());
  return testing::ReadFile(path);
}

// Version 2 through AddHostTensors: the v1 tensors plus a scalar and 48 tiny tensors
// (packed at their natural alignment, names front-coded), so the compact records,
// explicit strides, aliasing and the compressed manifest are all pinned. Every storage lies
// in one arena, so the layout (which follows storage addresses) is the same on every run.
struct GoldenInputV2 {
  std::vector<uint8_t> arena;
  std::vector<HostTensor> tensors;
};

GoldenInputV2 MakeInputV2() {
  GoldenInputV2 in;
  GoldenInput v1 = MakeInput();
  const std::vector<uint8_t> tiny = testing::RandomBytes(48 * 8, 4);
  const uint64_t f32 = 0, bf16 = 12008, i64 = 22016, tiny_at = 22104;
  in.arena.resize(tiny_at + tiny.size());
  std::copy(v1.f32.begin(), v1.f32.end(), in.arena.begin() + f32);
  std::copy(v1.bf16.begin(), v1.bf16.end(), in.arena.begin() + bf16);
  std::copy(v1.i64.begin(), v1.i64.end(), in.arena.begin() + i64);
  std::copy(tiny.begin(), tiny.end(), in.arena.begin() + tiny_at);
  const uint8_t* a = in.arena.data();
  const uint64_t at[] = {f32, f32, f32, bf16, i64};
  for (size_t i = 0; i < v1.tensors.size(); ++i) {
    HostTensor t = v1.tensors[i];
    t.storage = a + at[i];
    in.tensors.push_back(t);
  }
  in.tensors.push_back({"temperature", DType::kF32, {}, {}, a + tiny_at, 4, 0});  // rank 0
  for (int i = 0; i < 48; ++i) {
    const DType dtype = i % 3 == 0 ? DType::kF32 : i % 3 == 1 ? DType::kBF16 : DType::kU8;
    const int64_t n = i % 3 == 0 ? 1 : i % 3 == 1 ? 3 : 5;
    const uint64_t bytes = static_cast<uint64_t>(n) * (DTypeBits(dtype) / 8);
    // Tensor 0 shares its 4 bytes with "temperature" (an alias).
    in.tensors.push_back(
        {"layers." + std::to_string(i / 8) + ".experts." + std::to_string(i % 8) + ".scale",
         dtype,
         {n},
         {},
         a + tiny_at + 8 * i,
         bytes,
         0});
  }
  return in;
}

std::string WriteGoldenV2(const std::string& path) {
  GoldenInputV2 in = MakeInputV2();
  WriterOptions opt;
  opt.chunk_size = 4096;
  opt.threads = 2;
  opt.overwrite = true;
  Status s = SnapshotHostTensors(
      in.tensors, {{"creator", "stasis golden"}, {"created", "2026-12-03T00:00:00Z"}}, path, opt);
  EXPECT_OK(s);
  return testing::ReadFile(path);
}

TEST(GoldenTest, WriterReproducesTheValidGoldenImages) {
  TempDir dir;
  struct Golden {
    const char* file;
    std::function<std::string(const std::string&)> write;
  } goldens[] = {{"small.stasis", WriteGoldenV1}, {"small_v2.stasis", WriteGoldenV2}};
  for (const auto& g : goldens) {
    SCOPED_TRACE(g.file);
    std::string fresh = g.write(dir.File(g.file));
    if (Updating()) testing::WriteFile(kGolden + "/valid/" + g.file, fresh);
    std::string golden = testing::ReadFile(kGolden + "/valid/" + g.file);
    ASSERT_FALSE(golden.empty()) << "missing golden file; run with STASIS_UPDATE_GOLDEN=1";
    EXPECT_TRUE(fresh == golden)
        << "the writer's output changed: review it (an encoder change is fine, "
           "a format change needs a new version), then regenerate";
  }
}

TEST(GoldenTest, ValidGoldenImageRestores) {
  auto reader = ImageReader::Open(kGolden + "/valid/small.stasis");
  ASSERT_OK(reader.status());
  EXPECT_EQ((*reader)->footer().format_version, 1u);
  auto report = (*reader)->Verify(VerifyOptions{});
  ASSERT_OK(report.status());
  EXPECT_TRUE(report->ok());
  auto image = testing::RestoreToHost(kGolden + "/valid/small.stasis");
  ASSERT_OK(image.status());
  GoldenInput in = MakeInput();
  const auto& m = (*reader)->manifest();
  auto mlp = m.FindTensor("mlp.weight");
  ASSERT_TRUE(mlp.has_value());
  EXPECT_EQ(
      0, std::memcmp(testing::TensorBytes(**image, "mlp.weight"), in.bf16.data(), in.bf16.size()));
  EXPECT_EQ(m.FindTensor("embed.weight")->byte_offset, m.FindTensor("head.weight")->byte_offset);
}

TEST(GoldenTest, ValidGoldenImageV2Restores) {
  const std::string path = kGolden + "/valid/small_v2.stasis";
  auto reader = ImageReader::Open(path);
  ASSERT_OK(reader.status());
  const format::Footer& f = (*reader)->footer();
  EXPECT_EQ(f.format_version, 2u);
  EXPECT_EQ(f.manifest_codec, format::Codec::kZstd);
  EXPECT_LT(f.manifest_size, f.manifest_raw_size);
  auto report = (*reader)->Verify(VerifyOptions{});
  ASSERT_OK(report.status());
  EXPECT_TRUE(report->ok());
  auto image = testing::RestoreToHost(path);
  ASSERT_OK(image.status());
  GoldenInputV2 in = MakeInputV2();
  const auto& m = (*reader)->manifest();
  ASSERT_EQ(m.tensors.size(), in.tensors.size());
  for (size_t i = 1; i < m.tensors.size(); ++i) EXPECT_LT(m.tensors[i - 1].name, m.tensors[i].name);
  for (const HostTensor& t : in.tensors) {
    SCOPED_TRACE(t.name);
    std::optional<format::TensorRef> info = m.FindTensor(t.name);
    ASSERT_TRUE(info.has_value());
    EXPECT_THAT(info->shape, ::testing::ElementsAreArray(t.shape));
    EXPECT_THAT(info->strides,
                ::testing::ElementsAreArray(
                    t.strides.empty() ? format::ContiguousStrides(t.shape).vec() : t.strides));
    EXPECT_EQ(0,
              std::memcmp(testing::TensorBytes(**image, t.name),
                          static_cast<const uint8_t*>(t.storage) + t.byte_offset, info->byte_size));
  }
  EXPECT_EQ(m.FindTensor("embed.weight")->byte_offset, m.FindTensor("head.weight")->byte_offset);
  EXPECT_EQ(m.FindTensor("temperature")->byte_offset,
            m.FindTensor("layers.0.experts.0.scale")->byte_offset);
  // The 48 tiny storages are packed at their natural alignment (4, 8 and 8 bytes), not 256
  // apart: the region ends within 48 * 8 bytes of the three large storages' end.
  EXPECT_LE(m.regions[0].size, 12032u + 10240u + 80u + 48u * 8u);
}

struct InvalidCase {
  std::string file;
  StatusCode code;
  std::string message;
  std::function<std::string(std::string)> make;
};

std::vector<InvalidCase> InvalidCases() {
  auto put32 = [](std::string s, size_t off, uint32_t v) {
    for (int i = 0; i < 4; ++i) s[off + i] = static_cast<char>(v >> (8 * i));
    return s;
  };
  auto fix_header = [](std::string s) {
    uint64_t h = Xxh3(s.data(), 24);
    for (int i = 0; i < 8; ++i) s[24 + i] = static_cast<char>(h >> (8 * i));
    return s;
  };
  return {
      {"bad_magic.stasis", StatusCode::kInvalidArgument, "not a stasis image",
       [](std::string s) {
         s[0] = 'P';
         return s;
       }},
      {"version_2.stasis", StatusCode::kUnimplemented, "version 2",
       [=](std::string s) { return fix_header(put32(s, 8, 2)); }},
      {"truncated.stasis", StatusCode::kOutOfRange, "truncated",
       [](std::string s) { return s.substr(0, s.size() - 100); }},
      {"manifest_flip.stasis", StatusCode::kDataLoss, "manifest checksum",
       [](std::string s) {
         s[s.size() - 80] ^= 1;
         return s;
       }},
  };
}

// Damaged copies of the v2 golden image: the compressed manifest and its footer fields.
std::vector<InvalidCase> InvalidCasesV2() {
  auto footer = [](std::string s, const std::function<void(format::Footer&)>& mutate) {
    auto f = format::DecodeFooter(s.substr(s.size() - format::kFooterSize));
    if (!f.ok()) return s;
    mutate(*f);
    return s.substr(0, s.size() - format::kFooterSize) + format::EncodeFooter(*f);
  };
  return {
      {"v2_manifest_flip.stasis", StatusCode::kDataLoss, "manifest checksum",
       [](std::string s) {
         s[s.size() - 80] ^= 1;
         return s;
       }},
      {"v2_manifest_raw_size.stasis", StatusCode::kDataLoss, "does not declare",
       [=](std::string s) {
         return footer(s, [](format::Footer& f) { f.manifest_raw_size += 1; });
       }},
      {"v2_manifest_codec.stasis", StatusCode::kDataLoss, "unknown manifest codec 2",
       [=](std::string s) {
         return footer(s, [](format::Footer& f) { f.manifest_codec = format::Codec::kGrouped; });
       }},
  };
}

TEST(GoldenTest, InvalidGoldenImagesV2FailWithTheirError) {
  std::string valid = testing::ReadFile(kGolden + "/valid/small_v2.stasis");
  ASSERT_FALSE(valid.empty());
  for (const auto& c : InvalidCasesV2()) {
    std::string path = kGolden + "/invalid/" + c.file;
    if (Updating()) testing::WriteFile(path, c.make(valid));
    SCOPED_TRACE(c.file);
    EXPECT_EQ(testing::ReadFile(path), c.make(valid)) << "golden file drifted";
    EXPECT_THAT(ImageReader::Open(path).status(), StatusIs(c.code, HasSubstr(c.message)));
  }
}

TEST(GoldenTest, InvalidGoldenImagesFailWithTheirError) {
  std::string valid = testing::ReadFile(kGolden + "/valid/small.stasis");
  ASSERT_FALSE(valid.empty());
  for (const auto& c : InvalidCases()) {
    std::string path = kGolden + "/invalid/" + c.file;
    if (Updating()) testing::WriteFile(path, c.make(valid));
    SCOPED_TRACE(c.file);
    EXPECT_EQ(testing::ReadFile(path), c.make(valid)) << "golden file drifted";
    EXPECT_THAT(ImageReader::Open(path).status(), StatusIs(c.code, HasSubstr(c.message)));
  }
}

}  // namespace
}  // namespace stasis
