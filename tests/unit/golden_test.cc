// Golden images (zstd's golden-decompression idea): committed files that pin the format.
// - valid/small.stasis must open, verify and hold the expected tensors, and the writer
//   must still produce it byte for byte from the same input: an accidental format change
//   fails here before it ships.
// - invalid/*.stasis must fail with the code and message listed in InvalidCases().
// STASIS_UPDATE_GOLDEN=1 rewrites them (review the diff, and bump the format version if
// the valid file changed).
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>

#include "common/hash.h"
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

std::string WriteGolden(const std::string& path) {
  GoldenInput in = MakeInput();
  WriterOptions opt;
  opt.chunk_size = 4096;
  opt.threads = 2;
  opt.overwrite = true;
  Status s = SnapshotHostTensors(
      in.tensors, {{"creator", "stasis golden"}, {"created", "2026-11-28T00:00:00Z"}}, path, opt);
  EXPECT_OK(s);
  return testing::ReadFile(path);
}

TEST(GoldenTest, WriterReproducesTheValidGoldenImage) {
  TempDir dir;
  std::string fresh = WriteGolden(dir.File("small.stasis"));
  if (Updating()) testing::WriteFile(kGolden + "/valid/small.stasis", fresh);
  std::string golden = testing::ReadFile(kGolden + "/valid/small.stasis");
  ASSERT_FALSE(golden.empty()) << "missing golden file; run with STASIS_UPDATE_GOLDEN=1";
  EXPECT_TRUE(fresh == golden)
      << "the writer's output changed: review it (an encoder change is fine, "
         "a format change needs a new version), then regenerate";
}

TEST(GoldenTest, ValidGoldenImageRestores) {
  auto reader = ImageReader::Open(kGolden + "/valid/small.stasis");
  ASSERT_OK(reader.status());
  auto report = (*reader)->Verify(VerifyOptions{});
  ASSERT_OK(report.status());
  EXPECT_TRUE(report->ok());
  auto image = testing::RestoreToHost(kGolden + "/valid/small.stasis");
  ASSERT_OK(image.status());
  GoldenInput in = MakeInput();
  const auto& m = (*reader)->manifest();
  const auto* mlp = m.FindTensor("mlp.weight");
  ASSERT_NE(mlp, nullptr);
  EXPECT_EQ(
      0, std::memcmp(testing::TensorBytes(**image, "mlp.weight"), in.bf16.data(), in.bf16.size()));
  EXPECT_EQ(m.FindTensor("embed.weight")->byte_offset, m.FindTensor("head.weight")->byte_offset);
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
