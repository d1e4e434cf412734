// Tests of snapshot/safetensors: the strict header parser (every dtype, edge shapes, and a
// catalogue of hostile headers, each checked for its code and message), the index reader,
// the import layout and the importer end to end, and the atomic writer under injected
// faults.
#include "snapshot/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "common/fault_injection_file_system.h"
#include "snapshot/codec.h"
#include "snapshot/format.h"
#include "stasis/image.h"

namespace stasis {
namespace {

constexpr uint64_t kSeed = 20261128;

std::string U64LE(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return out;
}

// A whole safetensors file: length, header JSON, `data_size` bytes of data.
std::string MakeFile(std::string_view json, size_t data_size) {
  return U64LE(json.size()) + std::string(json) + std::string(data_size, '\x5a');
}

// Parses `json` as the header of a file whose data buffer has `data_size` bytes.
StatusOr<SafetensorsHeader> Parse(std::string_view json, uint64_t data_size) {
  return ParseSafetensorsHeader(json, 8 + json.size() + data_size);
}

std::string Entry(std::string_view name, std::string_view dtype, std::string_view shape,
                  uint64_t begin, uint64_t end) {
  return "\"" + std::string(name) + "\":{\"dtype\":\"" + std::string(dtype) +
         "\",\"shape\":" + std::string(shape) + ",\"data_offsets\":[" + std::to_string(begin) +
         "," + std::to_string(end) + "]}";
}

std::vector<uint8_t> RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> out(n);
  for (auto& b : out) b = static_cast<uint8_t>(rng());
  return out;
}

void ExpectError(const Status& s, StatusCode code, std::string_view substr) {
  EXPECT_EQ(s.code(), code) << s.ToString();
  EXPECT_NE(s.message().find(substr), std::string_view::npos)
      << "message '" << s.message() << "' lacks '" << substr << "'";
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* base = getenv("TEST_TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/safetensors_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string File(const std::string& name) const { return dir_ + "/" + name; }
  void Write(const std::string& name, const std::string& bytes) {
    std::ofstream f(File(name), std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(f.good());
  }
  std::string Read(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
  std::vector<std::string> List() const {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(dir_))
      names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  std::string dir_;
};

// ---------------------------------------------------------------------------------------
// Valid headers.

TEST_F(SafetensorsTest, EveryDtypeParses) {
  std::string json = "{";
  uint64_t offset = 0;
  for (uint8_t id = 1; id <= kMaxDTypeId; ++id) {
    DType t = *DTypeFromId(id);
    // [2, 4]: 8 elements, a whole number of bytes for every width including F4 and F6.
    uint64_t bytes = 8 * DTypeBits(t) / 8;
    std::string one = "{" + Entry("t", DTypeName(t), "[2,4]", 0, bytes) + "}";
    auto single = Parse(one, bytes);
    ASSERT_TRUE(single.ok()) << DTypeName(t) << ": " << single.status();
    ASSERT_EQ(single->entries.size(), 1u);
    EXPECT_EQ(single->entries[0].dtype, t);
    EXPECT_EQ(single->entries[0].shape, (std::vector<int64_t>{2, 4}));

    if (id != 1) json += ",";
    json += Entry(DTypeName(t), DTypeName(t), "[2,4]", offset, offset + bytes);
    offset += bytes;
  }
  json += "}";
  auto all = Parse(json, offset);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->entries.size(), size_t{kMaxDTypeId});
  for (size_t i = 0; i < all->entries.size(); ++i)
    EXPECT_EQ(all->entries[i].name, DTypeName(all->entries[i].dtype));
}

TEST_F(SafetensorsTest, ScalarAndZeroElementTensors) {
  // A scalar, a zero-element tensor at the same offset as the next tensor, and an empty
  // tensor at the very end.
  std::string json =
      "{" + Entry("scalar", "F32", "[]", 0, 4) + "," + Entry("empty", "BF16", "[0,5]", 4, 4) + "," +
      Entry("after", "U8", "[3]", 4, 7) + "," + Entry("tail", "F64", "[7,0]", 7, 7) + "}";
  auto h = Parse(json, 7);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->entries.size(), 4u);
  EXPECT_TRUE(h->entries[0].shape.empty());
  EXPECT_EQ(h->entries[1].begin, h->entries[1].end);
  EXPECT_EQ(h->entries[3].shape, (std::vector<int64_t>{7, 0}));

  // A file holding nothing at all.
  auto none = Parse("{}", 0);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->entries.empty());
  EXPECT_EQ(none->data_start, 10u);
}

TEST_F(SafetensorsTest, UnalignedDataStartAndPadding) {
  std::string json = "{" + Entry("w", "F32", "[2]", 0, 8) + "}";
  if (json.size() % 2 == 0) json += " ";  // odd length: data starts at an odd offset
  auto h = Parse(json, 8);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->data_start, 8 + json.size());
  EXPECT_EQ(h->data_start % 2, 1u);

  // Trailing whitespace padding, and the "-0" spelling of zero that serde also reads.
  auto padded = Parse("{" + Entry("w", "U8", "[2]", 0, 2) + "}   \n\t ", 2);
  EXPECT_TRUE(padded.ok()) << padded.status();
  auto negzero = Parse(R"({"w":{"dtype":"U8","shape":[-0],"data_offsets":[-0,0]}})", 0);
  EXPECT_TRUE(negzero.ok()) << negzero.status();
}

TEST_F(SafetensorsTest, HeaderOrderAndOffsetsAreKept) {
  // Header order differs from data order; both are legal.
  std::string json =
      "{" + Entry("second", "U8", "[2]", 3, 5) + "," + Entry("first", "U8", "[3]", 0, 3) + "}";
  auto h = Parse(json, 5);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->entries[0].name, "second");
  EXPECT_EQ(h->entries[0].begin, 3u);
  EXPECT_EQ(h->entries[0].end, 5u);
  EXPECT_EQ(h->entries[1].name, "first");
}

TEST_F(SafetensorsTest, Metadata) {
  std::string json = R"({"__metadata__":{"z":"last","format":"pt","a":"\u00e9\n"},)" +
                     Entry("w", "I16", "[1]", 0, 2) + "}";
  auto h = Parse(json, 2);
  ASSERT_TRUE(h.ok()) << h.status();
  using KV = std::pair<std::string, std::string>;
  EXPECT_EQ(h->metadata, (std::vector<KV>{{"a", "\xc3\xa9\n"}, {"format", "pt"}, {"z", "last"}}));

  auto null_meta = Parse(R"({"__metadata__":null})", 0);
  ASSERT_TRUE(null_meta.ok()) << null_meta.status();
  EXPECT_TRUE(null_meta->metadata.empty());
  auto empty_meta = Parse(R"({"__metadata__":{}})", 0);
  ASSERT_TRUE(empty_meta.ok()) << empty_meta.status();
}

// ---------------------------------------------------------------------------------------
// Rejected headers: each case checks the code and that the message says what is wrong.

struct RejectCase {
  const char* what;
  std::string json;
  uint64_t data_size;
  StatusCode code;
  std::string message;
};

TEST_F(SafetensorsTest, RejectsMalformedHeaders) {
  const StatusCode kInvalid = StatusCode::kInvalidArgument;
  const std::string deep_array = std::string(100000, '[') + std::string(100000, ']');
  const std::string long_name(format::kMaxTensorNameLen + 1, 'n');
  std::string rank33 = "[";
  for (int i = 0; i < 33; ++i) rank33 += i ? ",1" : "1";
  rank33 += "]";

  const std::vector<RejectCase> cases = {
      {"leading space", " {}", 0, kInvalid, "does not start with '{'"},
      {"array header", "[]", 0, kInvalid, "does not start with '{'"},
      {"empty header", "", 0, kInvalid, "does not start with '{'"},
      {"unterminated", R"({"a":)", 0, kInvalid, "invalid JSON"},
      {"trailing garbage", "{} x", 0, kInvalid, "invalid JSON"},
      {"NUL padding", std::string("{}\0\0", 4), 0, kInvalid, "invalid JSON: NUL byte at offset 2"},
      {"NUL then garbage", std::string("{}\0garbage", 10), 0, kInvalid, "NUL byte"},
      {"comment", "{/* c */}", 0, kInvalid, "invalid JSON"},
      {"invalid UTF-8", "{\"\xff\":{}}", 0, kInvalid, "invalid JSON"},
      {"duplicate tensor",
       "{" + Entry("a", "U8", "[1]", 0, 1) + "," + Entry("a", "U8", "[1]", 1, 2) + "}", 2, kInvalid,
       "duplicate tensor 'a'"},
      {"duplicate field", R"({"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
       1, kInvalid, "tensor 'a': duplicate key 'dtype'"},
      {"duplicate metadata key", R"({"__metadata__":{"k":"1","k":"2"}})", 0, kInvalid,
       "duplicate key 'k'"},
      {"duplicate __metadata__", R"({"__metadata__":{},"__metadata__":{}})", 0, kInvalid,
       "duplicate key '__metadata__'"},
      {"unknown dtype", "{" + Entry("a", "F128", "[1]", 0, 16) + "}", 16, kInvalid,
       "tensor 'a': unknown dtype 'F128'"},
      {"lower-case dtype", "{" + Entry("a", "f32", "[1]", 0, 4) + "}", 4, kInvalid,
       "unknown dtype 'f32'"},
      {"dtype not a string", R"({"a":{"dtype":4,"shape":[1],"data_offsets":[0,1]}})", 1, kInvalid,
       "tensor 'a': 'dtype' must be a string"},
      {"negative shape", "{" + Entry("a", "U8", "[-1]", 0, 0) + "}", 0, kInvalid,
       "tensor 'a': 'shape' holds a negative number -1"},
      {"float shape", "{" + Entry("a", "U8", "[1.5]", 0, 1) + "}", 1, kInvalid,
       "'shape' holds '1.5', not a non-negative integer"},
      {"exponent shape", "{" + Entry("a", "U8", "[1e0]", 0, 1) + "}", 1, kInvalid,
       "not a non-negative integer"},
      {"huge shape", "{" + Entry("a", "U8", "[99999999999999999999999]", 0, 1) + "}", 1, kInvalid,
       "not a non-negative integer"},
      {"shape over int64", "{" + Entry("a", "U8", "[9223372036854775808]", 0, 1) + "}", 1, kInvalid,
       "dimension 9223372036854775808 in 'shape' is too large"},
      {"string in shape", "{" + Entry("a", "U8", "[\"1\"]", 0, 1) + "}", 1, kInvalid,
       "'shape' must hold only non-negative integers, found a string"},
      {"shape not an array", R"({"a":{"dtype":"U8","shape":3,"data_offsets":[0,3]}})", 3, kInvalid,
       "'shape' must be an array"},
      {"count overflow", "{" + Entry("a", "U8", "[4294967296,4294967296]", 0, 0) + "}", 0, kInvalid,
       "tensor 'a': element count of shape [4294967296, 4294967296] overflows"},
      {"overflow before zero", "{" + Entry("a", "U8", "[4294967296,4294967296,0]", 0, 0) + "}", 0,
       kInvalid, "overflows"},
      {"F4 odd count", "{" + Entry("a", "F4", "[3]", 0, 2) + "}", 2, kInvalid,
       "3 elements of F4 (4 bits each) are not a whole number of bytes"},
      {"F6 bad count", "{" + Entry("a", "F6_E2M3", "[2]", 0, 2) + "}", 2, kInvalid,
       "not a whole number of bytes"},
      {"size mismatch", "{" + Entry("a", "F32", "[2]", 0, 4) + "}", 4, kInvalid,
       "tensor 'a': 'data_offsets' [0, 4] span 4 bytes but F32 [2] needs 8"},
      {"hole", "{" + Entry("a", "F32", "[1]", 0, 4) + "," + Entry("b", "F32", "[1]", 8, 12) + "}",
       12, kInvalid, "hole in the data: bytes [4, 8) before tensor 'b'"},
      {"hole at start", "{" + Entry("a", "F32", "[1]", 4, 8) + "}", 8, kInvalid,
       "hole in the data"},
      {"overlap",
       "{" + Entry("a", "F32", "[2]", 0, 8) + "," + Entry("b", "F32", "[2]", 4, 12) + "}", 12,
       kInvalid, "tensor 'b' [4, 12) overlaps tensor 'a' [0, 8)"},
      {"same range twice",
       "{" + Entry("a", "U8", "[4]", 0, 4) + "," + Entry("b", "U8", "[4]", 0, 4) + "}", 4, kInvalid,
       "overlaps"},
      {"trailing bytes", "{" + Entry("a", "F32", "[1]", 0, 4) + "}", 8, kInvalid,
       "4 trailing bytes after the last tensor"},
      {"data past EOF", "{" + Entry("a", "F32", "[2]", 0, 8) + "}", 4, kInvalid, "truncated"},
      {"missing data_offsets", R"({"a":{"dtype":"U8","shape":[1]}})", 1, kInvalid,
       "tensor 'a': missing 'data_offsets'"},
      {"missing dtype", R"({"a":{"shape":[1],"data_offsets":[0,1]}})", 1, kInvalid,
       "tensor 'a': missing 'dtype'"},
      {"missing shape", R"({"a":{"dtype":"U8","data_offsets":[0,1]}})", 1, kInvalid,
       "tensor 'a': missing 'shape'"},
      {"three offsets", R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}})", 1, kInvalid,
       "'data_offsets' must hold exactly two integers"},
      {"one offset", R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[0]}})", 0, kInvalid,
       "'data_offsets' must hold exactly two integers, found 1"},
      {"negative offset", R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[-1,0]}})", 0, kInvalid,
       "'data_offsets' holds a negative number"},
      {"offsets reversed", R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[2,1]}})", 0, kInvalid,
       "'data_offsets' [2, 1] begin after they end"},
      {"unknown field", R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":1}})", 1,
       kInvalid, "tensor 'a': unknown field 'extra'"},
      {"metadata value number", R"({"__metadata__":{"k":1}})", 0, kInvalid,
       "'__metadata__' value for key 'k' must be a string, found a number"},
      {"metadata value object", R"({"__metadata__":{"k":{}}})", 0, kInvalid,
       "value for key 'k' must be a string, found an object"},
      {"metadata not an object", R"({"__metadata__":["a"]})", 0, kInvalid,
       "'__metadata__' must be an object of strings, found an array"},
      {"entry not an object", R"({"a":1})", 0, kInvalid, "tensor 'a': entry must be an object"},
      {"empty name", "{" + Entry("", "U8", "[1]", 0, 1) + "}", 1, kInvalid, "empty tensor name"},
      {"NUL in name", R"({"a\u0000b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1,
       kInvalid, "contains NUL"},
      {"name too long", "{" + Entry(long_name, "U8", "[1]", 0, 1) + "}", 1, kInvalid,
       "exceeds 4096 bytes"},
      {"rank 33", "{" + Entry("a", "U8", rank33, 0, 1) + "}", 1, StatusCode::kResourceExhausted,
       "tensor 'a': rank exceeds 32"},
      {"deep nesting in shape", R"({"a":{"dtype":"U8","shape":)" + deep_array + "}}", 0, kInvalid,
       "tensor 'a': 'shape' must hold only non-negative integers, found an array"},
      {"deep nesting as entry", R"({"a":)" + deep_array + "}", 0, kInvalid,
       "tensor 'a': entry must be an object, found an array"},
      {"deep nesting in metadata", R"({"__metadata__":{"k":)" + deep_array + "}}", 0, kInvalid,
       "must be a string, found an array"},
      {"deep objects",
       std::string("{") +
           [] {
             std::string s;
             for (int i = 0; i < 100000; ++i) s += "\"a\":{";
             return s;
           }(),
       0, kInvalid, "tensor 'a': unknown field 'a'"},
  };
  for (const RejectCase& c : cases) {
    SCOPED_TRACE(c.what);
    auto h = Parse(c.json, c.data_size);
    ASSERT_FALSE(h.ok());
    ExpectError(h.status(), c.code, c.message);
  }
}

TEST_F(SafetensorsTest, ParseChecksLengthsBeforeParsing) {
  ExpectError(ParseSafetensorsHeader("{}", 9).status(), StatusCode::kInvalidArgument, "truncated");
  std::string big(kMaxSafetensorsHeaderSize + 1, ' ');
  big[0] = '{';
  ExpectError(ParseSafetensorsHeader(big, big.size() + 8).status(), StatusCode::kResourceExhausted,
              "exceeds the limit");
}

// ---------------------------------------------------------------------------------------
// Reading from files.

TEST_F(SafetensorsTest, ReadHeaderFromFile) {
  std::string json = "{" + Entry("w", "F32", "[3]", 0, 12) + "}";
  Write("ok.safetensors", MakeFile(json, 12));
  auto h = ReadSafetensorsHeader(DefaultFileSystem(), File("ok.safetensors"));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->data_start, 8 + json.size());
  EXPECT_EQ(h->entries.at(0).name, "w");

  // Errors name the file.
  Write("bad.safetensors", MakeFile("{" + Entry("w", "F32", "[3]", 0, 12) + "}", 13));
  auto bad = ReadSafetensorsHeader(DefaultFileSystem(), File("bad.safetensors"));
  ExpectError(bad.status(), StatusCode::kInvalidArgument, "bad.safetensors': 1 trailing bytes");

  ExpectError(ReadSafetensorsHeader(DefaultFileSystem(), File("missing")).status(),
              StatusCode::kNotFound, "missing");
}

// A file held in memory gets the checks a file on disk gets.
TEST_F(SafetensorsTest, ParseFileBytesMatchesReadingTheFile) {
  std::string json = "{" + Entry("w", "F32", "[3]", 0, 12) + "}";
  const std::string file = MakeFile(json, 12);
  auto h = ParseSafetensorsFileBytes(file);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->data_start, 8 + json.size());
  EXPECT_EQ(h->entries.at(0).name, "w");
  ExpectError(ParseSafetensorsFileBytes(std::string("\x02\0\0", 3)).status(),
              StatusCode::kInvalidArgument, "truncated");
  ExpectError(ParseSafetensorsFileBytes(U64LE(100) + "{}        ").status(),
              StatusCode::kInvalidArgument,
              "truncated: header length 100 but only 10 bytes follow");
  ExpectError(ParseSafetensorsFileBytes(file + "x").status(), StatusCode::kInvalidArgument,
              "1 trailing bytes");
}

TEST_F(SafetensorsTest, ReadRejectsBadLengths) {
  FileSystem* fs = DefaultFileSystem();
  // Too short for the length prefix.
  Write("short", std::string("\x02\0\0\0\0", 5));
  ExpectError(ReadSafetensorsHeader(fs, File("short")).status(), StatusCode::kInvalidArgument,
              "truncated");
  Write("empty", "");
  ExpectError(ReadSafetensorsHeader(fs, File("empty")).status(), StatusCode::kInvalidArgument,
              "truncated");
  // A header longer than the file.
  Write("trunc", U64LE(100) + "{}        ");
  ExpectError(ReadSafetensorsHeader(fs, File("trunc")).status(), StatusCode::kInvalidArgument,
              "truncated: header length 100 but only 10 bytes follow");
  // A length the file cannot hold (a text file, say) is "not safetensors", never an
  // allocation.
  for (uint64_t n : {kMaxSafetensorsHeaderSize + 1, uint64_t{1} << 40, ~uint64_t{0}}) {
    Write("huge", U64LE(n) + "{}");
    ExpectError(ReadSafetensorsHeader(fs, File("huge")).status(), StatusCode::kInvalidArgument,
                "not a safetensors file");
  }
  // A file big enough to hold the length still gets the limit, before anything is
  // allocated (a sparse file: no disk used).
  Write("big", U64LE(kMaxSafetensorsHeaderSize + 1) + "{}");
  ASSERT_EQ(::truncate(File("big").c_str(), static_cast<off_t>(kMaxSafetensorsHeaderSize + 64)), 0);
  ExpectError(ReadSafetensorsHeader(fs, File("big")).status(), StatusCode::kResourceExhausted,
              "exceeds the limit of 100000000 bytes");
}

TEST_F(SafetensorsTest, ReadSurvivesShortReadsAndReportsReadErrors) {
  std::string json = "{" + Entry("w", "U8", "[5]", 0, 5) + "}";
  Write("f", MakeFile(json, 5));
  FaultPlan plan;
  plan.max_read_bytes = 3;
  FaultInjectionFileSystem shorty(DefaultFileSystem(), plan);
  auto h = ReadSafetensorsHeader(&shorty, File("f"));
  EXPECT_TRUE(h.ok()) << h.status();

  for (uint64_t k = 1; k <= 2; ++k) {
    FaultPlan fail;
    fail.fail_read_at = k;
    FaultInjectionFileSystem fs(DefaultFileSystem(), fail);
    auto r = ReadSafetensorsHeader(&fs, File("f"));
    EXPECT_FALSE(r.ok());
  }
}

// ---------------------------------------------------------------------------------------
// Writer.

TEST_F(SafetensorsTest, WriterMatchesReferenceBytes) {
  // Byte-for-byte the outputs of the reference writer's own tests (tensor.rs:
  // test_serialization, test_empty, test_serialization_forced_alignement).
  std::vector<float> values = {0, 1, 2, 3, 4, 5};
  std::string data(reinterpret_cast<const char*>(values.data()), 24);
  FileSystem* fs = DefaultFileSystem();

  ASSERT_TRUE(WriteSafetensors(fs, File("a"), {{"attn.0", DType::kF32, {1, 2, 3}, data.data(), 24}},
                               {}, false)
                  .ok());
  EXPECT_EQ(
      Read(File("a")),
      U64LE(64) + R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})" + data);

  ASSERT_TRUE(WriteSafetensors(fs, File("b"),
                               {{"attn0", DType::kF32, {1, 1, 2, 3}, data.data(), 24}}, {}, false)
                  .ok());
  EXPECT_EQ(Read(File("b")),
            U64LE(72) + R"({"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}})" +
                "       " + data);

  ASSERT_TRUE(WriteSafetensors(fs, File("c"), {}, {}, false).ok());
  EXPECT_EQ(Read(File("c")), U64LE(8) + "{}      ");
  ASSERT_TRUE(WriteSafetensors(fs, File("d"), {}, {{"framework", "pt"}}, false).ok());
  EXPECT_EQ(Read(File("d")), U64LE(40) + R"({"__metadata__":{"framework":"pt"}})" + "     ");
}

TEST_F(SafetensorsTest, WriteReadRoundTrip) {
  std::mt19937_64 rng(kSeed);
  std::vector<SafetensorsTensorOut> tensors;
  std::vector<std::vector<uint8_t>> storage;
  const std::vector<std::pair<DType, std::vector<int64_t>>> specs = {
      {DType::kBF16, {3, 5}}, {DType::kF32, {7}},    {DType::kU8, {}},   {DType::kF4, {2, 3}},
      {DType::kF64, {0, 4}},  {DType::kF6E3M2, {4}}, {DType::kC64, {2}}, {DType::kBool, {9}},
  };
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& [dtype, shape] = specs[i];
    uint64_t count = 1;
    for (int64_t d : shape) count *= d;
    storage.push_back(RandomBytes(count * DTypeBits(dtype) / 8, rng()));
  }
  for (size_t i = 0; i < specs.size(); ++i) {
    tensors.push_back({"layer." + std::to_string(i) + ".\"quoted\"\\\n\xc3\xa9", specs[i].first,
                       specs[i].second, storage[i].data(), storage[i].size()});
  }
  std::vector<std::pair<std::string, std::string>> metadata = {{"format", "pt"},
                                                               {"note", "tab\there \x01"}};
  ASSERT_TRUE(
      WriteSafetensors(DefaultFileSystem(), File("rt.safetensors"), tensors, metadata, false).ok());

  auto h = ReadSafetensorsHeader(DefaultFileSystem(), File("rt.safetensors"));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->data_start % 8, 0u);
  std::string file = Read(File("rt.safetensors"));
  ASSERT_EQ(h->entries.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const SafetensorsEntry& e = h->entries[i];
    EXPECT_EQ(e.name, tensors[i].name);
    EXPECT_EQ(e.dtype, tensors[i].dtype);
    EXPECT_EQ(e.shape, tensors[i].shape);
    ASSERT_EQ(e.end - e.begin, tensors[i].size);
    EXPECT_EQ(file.substr(h->data_start + e.begin, e.end - e.begin),
              std::string(storage[i].begin(), storage[i].end()));
  }
  std::sort(metadata.begin(), metadata.end());
  EXPECT_EQ(h->metadata, metadata);
}

TEST_F(SafetensorsTest, WriterRefusesBadInput) {
  FileSystem* fs = DefaultFileSystem();
  uint8_t buf[16] = {};
  auto write = [&](std::vector<SafetensorsTensorOut> t,
                   std::vector<std::pair<std::string, std::string>> m = {}) {
    return WriteSafetensors(fs, File("x"), t, m, false);
  };
  ExpectError(write({{"a", DType::kF32, {2}, buf, 4}}), StatusCode::kInvalidArgument,
              "tensor 'a': 4 bytes given, F32 [2] needs 8");
  ExpectError(write({{"a", DType::kU8, {1}, buf, 1}, {"a", DType::kU8, {1}, buf, 1}}),
              StatusCode::kInvalidArgument, "duplicate tensor 'a'");
  ExpectError(write({{"__metadata__", DType::kU8, {1}, buf, 1}}), StatusCode::kInvalidArgument,
              "reserved");
  ExpectError(write({{"", DType::kU8, {1}, buf, 1}}), StatusCode::kInvalidArgument, "empty");
  ExpectError(write({{"\xff", DType::kU8, {1}, buf, 1}}), StatusCode::kInvalidArgument, "UTF-8");
  ExpectError(write({{"a", DType::kU8, {1}, nullptr, 1}}), StatusCode::kInvalidArgument, "null");
  ExpectError(write({{"a", DType::kF4, {3}, buf, 1}}), StatusCode::kInvalidArgument,
              "whole number of bytes");
  ExpectError(write({{"a", DType::kU8, {-1}, buf, 0}}), StatusCode::kInvalidArgument, "negative");
  ExpectError(write({}, {{"k", "1"}, {"k", "2"}}), StatusCode::kInvalidArgument, "duplicate key");
  EXPECT_TRUE(List().empty());

  ASSERT_TRUE(write({{"a", DType::kU8, {1}, buf, 1}}).ok());
  ExpectError(write({{"a", DType::kU8, {1}, buf, 1}}), StatusCode::kAlreadyExists, "exists");
  uint8_t two[2] = {7, 8};
  ASSERT_TRUE(WriteSafetensors(fs, File("x"), {{"b", DType::kU8, {2}, two, 2}}, {}, true).ok());
  auto h = ReadSafetensorsHeader(fs, File("x"));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->entries.at(0).name, "b");
  EXPECT_EQ(List(), std::vector<std::string>{"x"});
}

TEST_F(SafetensorsTest, WriterLeavesNothingBehindOnFailure) {
  std::vector<uint8_t> a = RandomBytes(64, kSeed), b = RandomBytes(6, kSeed + 1);
  std::vector<SafetensorsTensorOut> tensors = {
      {"a", DType::kF32, {16}, a.data(), a.size()},
      {"empty", DType::kF32, {0}, nullptr, 0},
      {"b", DType::kI16, {3}, b.data(), b.size()},
  };
  const std::string path = File("out.safetensors");

  for (WriteFault fault : {WriteFault::kEio, WriteFault::kNoSpace, WriteFault::kShortWrite}) {
    SCOPED_TRACE(static_cast<int>(fault));
    uint64_t k = 1;
    for (;; ++k) {
      ASSERT_LT(k, 100u) << "the writer never succeeded";
      FaultPlan plan;
      plan.fail_append_at = k;
      plan.append_fault = fault;
      FaultInjectionFileSystem fs(DefaultFileSystem(), plan);
      Status s = WriteSafetensors(&fs, path, tensors, {{"m", "v"}}, false);
      if (s.ok()) {
        EXPECT_TRUE(fs.LiveCreatedFiles().empty());
        break;
      }
      EXPECT_FALSE(fs.Exists(path)) << "k=" << k;
      EXPECT_TRUE(fs.LiveCreatedFiles().empty()) << "k=" << k;
      EXPECT_TRUE(List().empty()) << "k=" << k << ": " << List().front();
    }
    EXPECT_GT(k, 1u) << "no Append was ever failed";
    auto h = ReadSafetensorsHeader(DefaultFileSystem(), path);
    EXPECT_TRUE(h.ok()) << h.status();
    ASSERT_EQ(List(), std::vector<std::string>{"out.safetensors"});
    std::filesystem::remove(path);
  }

  // Failures after the data is written: sync, close, rename and the directory sync.
  for (int which = 0; which < 4; ++which) {
    SCOPED_TRACE(which);
    FaultPlan plan;
    plan.fail_sync = which == 0;
    plan.fail_close = which == 1;
    plan.fail_rename = which == 2;
    plan.fail_sync_dir = which == 3;
    FaultInjectionFileSystem fs(DefaultFileSystem(), plan);
    Status s = WriteSafetensors(&fs, path, tensors, {}, false);
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find("out.safetensors"), std::string_view::npos) << s;
    EXPECT_FALSE(fs.Exists(path));
    EXPECT_TRUE(fs.LiveCreatedFiles().empty());
    EXPECT_TRUE(List().empty());
  }
}

// ---------------------------------------------------------------------------------------
// Sharded index.

TEST_F(SafetensorsTest, IndexListsDistinctShardsInOrder) {
  Write("model.safetensors.index.json", R"({
    "metadata": {"total_size": 1234, "nested": {"list": [1, {"x": null}], "ok": true}},
    "weight_map": {
      "b": "model-00002-of-00002.safetensors",
      "a": "model-00001-of-00002.safetensors",
      "c": "model-00002-of-00002.safetensors"
    },
    "extra": [1, 2, 3]
  })");
  auto shards = ReadSafetensorsIndex(DefaultFileSystem(), File("model.safetensors.index.json"));
  ASSERT_TRUE(shards.ok()) << shards.status();
  EXPECT_EQ(*shards, (std::vector<std::string>{File("model-00002-of-00002.safetensors"),
                                               File("model-00001-of-00002.safetensors")}));
}

TEST_F(SafetensorsTest, IndexRejectsBadInput) {
  const StatusCode kInvalid = StatusCode::kInvalidArgument;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"weight_map": {"a": "../x.safetensors"}})", "must be a plain file name"},
      {R"({"weight_map": {"a": "sub/x.safetensors"}})", "must be a plain file name"},
      {R"({"weight_map": {"a": "/etc/passwd"}})", "must be a plain file name"},
      {R"({"weight_map": {"a": ".."}})", "must be a plain file name"},
      {R"({"weight_map": {"a": ""}})", "must be a plain file name"},
      {R"({"metadata": {}})", "missing 'weight_map'"},
      {R"({"weight_map": {}})", "'weight_map' is empty"},
      {R"({"weight_map": ["a"]})", "'weight_map' must be an object"},
      {R"({"weight_map": {"a": 1}})", "'weight_map' entry 'a' must be a file name"},
      {R"({"weight_map": {"a": "x", "a": "y"}})", "duplicate tensor 'a'"},
      {R"({"weight_map": {"a": "x"}, "weight_map": {"b": "y"}})", "duplicate key 'weight_map'"},
      {R"({"metadata": {"k": 1, "k": 2}, "weight_map": {"a": "x"}})", "duplicate key 'k'"},
      {R"({"weight_map": {"": "x"}})", "empty tensor name"},
      {R"({"weight_map": {"a": "x"}} trailing)", "invalid JSON"},
      {R"(["weight_map"])", "unexpected"},
      {"{\"metadata\":" + std::string(1000, '[') + std::string(1000, ']') +
           ",\"weight_map\":{\"a\":\"x\"}}",
       "nested deeper than 64"},
  };
  for (const auto& [json, message] : cases) {
    SCOPED_TRACE(json.substr(0, 80));
    Write("index.json", json);
    auto r = ReadSafetensorsIndex(DefaultFileSystem(), File("index.json"));
    ASSERT_FALSE(r.ok());
    ExpectError(r.status(), kInvalid, message);
    ExpectError(r.status(), kInvalid, "index.json");
  }

  // Size bound, checked before reading (a sparse file costs no disk).
  Write("huge.json", "{}");
  std::filesystem::resize_file(File("huge.json"), kMaxSafetensorsIndexSize + 1);
  ExpectError(ReadSafetensorsIndex(DefaultFileSystem(), File("huge.json")).status(),
              StatusCode::kResourceExhausted, "limit");
}

// ---------------------------------------------------------------------------------------
// Import: layout, shard consistency, and the importer end to end.

TEST_F(SafetensorsTest, ImportLayoutGroupsByElementSize) {
  std::vector<uint8_t> zeros(64);
  std::vector<SafetensorsTensorOut> tensors = {
      {"i8", DType::kI8, {3}, zeros.data(), 3},     {"f16", DType::kF16, {5}, zeros.data(), 10},
      {"f32a", DType::kF32, {7}, zeros.data(), 28}, {"bf", DType::kBF16, {2}, zeros.data(), 4},
      {"f32b", DType::kF32, {1}, zeros.data(), 4},  {"u64", DType::kU64, {1}, zeros.data(), 8},
      {"z", DType::kF32, {0}, nullptr, 0},
  };
  ASSERT_TRUE(
      WriteSafetensors(DefaultFileSystem(), File("m.safetensors"), tensors, {}, false).ok());
  auto plan = PlanSafetensorsImport(DefaultFileSystem(), File("m.safetensors"));
  ASSERT_TRUE(plan.ok()) << plan.status();
  std::vector<std::string> order;
  std::vector<uint64_t> offsets;
  for (const auto& item : plan->items) {
    order.push_back(plan->shards[item.shard].entries[item.entry].name);
    offsets.push_back(item.region_offset);
  }
  EXPECT_EQ(order, (std::vector<std::string>{"f32a", "f32b", "z", "f16", "bf", "i8", "u64"}));
  // Tensors under 256 bytes are packed at their natural alignment (size rounded up to a
  // power of two); the empty "z" takes no space: "f16" starts at the same offset.
  EXPECT_EQ(offsets, (std::vector<uint64_t>{0, 28, 32, 32, 44, 48, 56}));
  EXPECT_EQ(plan->region_size, 64u);
  EXPECT_TRUE(plan->metadata_json.empty());
}

class ShardedTest : public SafetensorsTest {
 protected:
  // Two shards: s1 = {a: F32[4], b: I8[2]}, s2 = {c: F32[2], d: BF16[3]}.
  void WriteShards(const std::string& index_json) {
    a_ = RandomBytes(16, kSeed);
    b_ = RandomBytes(2, kSeed + 1);
    c_ = RandomBytes(8, kSeed + 2);
    d_ = RandomBytes(6, kSeed + 3);
    FileSystem* fs = DefaultFileSystem();
    ASSERT_TRUE(WriteSafetensors(
                    fs, File("s1.safetensors"),
                    {{"a", DType::kF32, {4}, a_.data(), 16}, {"b", DType::kI8, {2}, b_.data(), 2}},
                    {{"format", "pt"}, {"x", "1"}}, false)
                    .ok());
    ASSERT_TRUE(WriteSafetensors(
                    fs, File("s2.safetensors"),
                    {{"c", DType::kF32, {2}, c_.data(), 8}, {"d", DType::kBF16, {3}, d_.data(), 6}},
                    {{"x", "2"}, {"y", "3"}}, false)
                    .ok());
    Write("model.safetensors.index.json", index_json);
  }
  std::vector<uint8_t> a_, b_, c_, d_;
};

constexpr char kGoodIndex[] =
    R"({"metadata":{"total_size":32},"weight_map":{"a":"s1.safetensors","c":"s2.safetensors",)"
    R"("b":"s1.safetensors","d":"s2.safetensors"}})";

TEST_F(ShardedTest, PlanOrdersByClassThenShardThenFile) {
  WriteShards(kGoodIndex);
  auto plan = PlanSafetensorsImport(DefaultFileSystem(), File("model.safetensors.index.json"));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->shard_paths,
            (std::vector<std::string>{File("s1.safetensors"), File("s2.safetensors")}));
  std::vector<std::string> order;
  for (const auto& item : plan->items)
    order.push_back(plan->shards[item.shard].entries[item.entry].name);
  EXPECT_EQ(order, (std::vector<std::string>{"a", "c", "d", "b"}));
  EXPECT_EQ(plan->region_size, 32u);  // a 0..16, c 16..24, d 24..30, b 30..32
  EXPECT_EQ(plan->metadata_json, R"({"format":"pt","x":"1","y":"3"})");
}

TEST_F(ShardedTest, PlanRejectsInconsistentIndex) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"weight_map":{"a":"s2.safetensors","b":"s1.safetensors","c":"s2.safetensors","d":"s2.safetensors"}})",
       "weight_map lists tensor 'a' in '" + File("s2.safetensors") + "' but it is in '" +
           File("s1.safetensors") + "'"},
      {R"({"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"s2.safetensors"}})",
       "tensor 'd' in '" + File("s2.safetensors") + "' is not listed in the weight_map"},
      {R"({"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"s2.safetensors","d":"s2.safetensors","e":"s2.safetensors"}})",
       "weight_map lists tensor 'e'"},
      {R"({"weight_map":{"a":"s1.safetensors","b":"s3.safetensors"}})", "s3.safetensors"},
  };
  for (const auto& [index, message] : cases) {
    SCOPED_TRACE(index);
    WriteShards(index);
    auto plan = PlanSafetensorsImport(DefaultFileSystem(), File("model.safetensors.index.json"));
    ASSERT_FALSE(plan.ok());
    EXPECT_NE(plan.status().message().find(message), std::string_view::npos) << plan.status();
    for (const char* f : {"s1.safetensors", "s2.safetensors"}) std::filesystem::remove(File(f));
  }

  // The same tensor name in two shards.
  WriteShards(kGoodIndex);
  uint8_t one = 1;
  ASSERT_TRUE(WriteSafetensors(DefaultFileSystem(), File("s2.safetensors"),
                               {{"a", DType::kU8, {1}, &one, 1}}, {}, true)
                  .ok());
  auto plan = PlanSafetensorsImport(DefaultFileSystem(), File("model.safetensors.index.json"));
  ExpectError(plan.status(), StatusCode::kInvalidArgument, "tensor 'a' is in both");
}

// Reassembles region 0 of an image from its chunks.
std::vector<uint8_t> ReadRegion(const ImageReader& reader) {
  const format::Manifest& m = reader.manifest();
  std::vector<uint8_t> region(m.regions.at(0).size);
  ChunkDecoder decoder;
  std::vector<uint8_t> stored;
  for (size_t i = 0; i < m.chunks.size(); ++i) {
    if (m.chunks[i].region_id != 0) continue;
    Status s = reader.ReadChunk(i, region.data() + m.chunks[i].dst_offset, &decoder, &stored);
    EXPECT_TRUE(s.ok()) << s;
  }
  return region;
}

TEST_F(ShardedTest, ImportEndToEnd) {
  WriteShards(kGoodIndex);
  // A tensor larger than the 4 MiB copy piece, in a third file imported on its own.
  std::vector<uint8_t> big = RandomBytes(6u << 20, kSeed + 9);
  ASSERT_TRUE(WriteSafetensors(DefaultFileSystem(), File("big.safetensors"),
                               {{"big", DType::kF32, {1536, 1024}, big.data(), big.size()},
                                {"small", DType::kU8, {3}, big.data(), 3}},
                               {}, false)
                  .ok());

  struct Expect {
    std::string name;
    const std::vector<uint8_t>* data;
    size_t size;
  };
  const std::vector<std::pair<std::string, std::vector<Expect>>> runs = {
      {"model.safetensors.index.json",
       {{"a", &a_, 16}, {"b", &b_, 2}, {"c", &c_, 8}, {"d", &d_, 6}}},
      {"big.safetensors", {{"big", &big, big.size()}, {"small", &big, 3}}},
  };
  for (const auto& [source, expect] : runs) {
    SCOPED_TRACE(source);
    WriterOptions options;
    options.threads = 2;
    const std::string image = File(source + ".stasis");
    auto writer = ImageWriter::Create(image, options);
    ASSERT_TRUE(writer.ok()) << writer.status();
    Status s = ImportSafetensors(DefaultFileSystem(), File(source), writer->get());
    ASSERT_TRUE(s.ok()) << s;
    ASSERT_TRUE((*writer)->Finish().ok());

    auto reader = ImageReader::Open(image);
    ASSERT_TRUE(reader.ok()) << reader.status();
    const format::Manifest& m = (*reader)->manifest();
    ASSERT_EQ(m.regions.size(), 1u);
    EXPECT_EQ(m.regions[0].alignment, 4096u);
    EXPECT_EQ(m.regions[0].device_kind, format::DeviceKind::kCpu);
    EXPECT_EQ(m.regions[0].device_ordinal, -1);
    ASSERT_NE(m.FindMetadata("source.format"), nullptr);
    EXPECT_EQ(*m.FindMetadata("source.format"), "safetensors");
    std::vector<uint8_t> region = ReadRegion(**reader);
    ASSERT_EQ(m.tensors.size(), expect.size());
    for (const Expect& e : expect) {
      std::optional<format::TensorRef> t = m.FindTensor(e.name);
      ASSERT_TRUE(t.has_value()) << e.name;
      EXPECT_EQ(t->byte_offset % format::StorageAlignment(t->byte_size), 0u);
      EXPECT_EQ(t->byte_size, e.size);
      EXPECT_THAT(t->strides, ::testing::ElementsAreArray(format::ContiguousStrides(t->shape)));
      ASSERT_LE(t->byte_offset + t->byte_size, region.size());
      EXPECT_TRUE(
          std::equal(e.data->begin(), e.data->begin() + e.size, region.begin() + t->byte_offset))
          << e.name;
    }
    if (source == "big.safetensors") {
      EXPECT_EQ(m.FindMetadata("safetensors.metadata"), nullptr);
    } else {
      ASSERT_NE(m.FindMetadata("safetensors.metadata"), nullptr);
      EXPECT_EQ(*m.FindMetadata("safetensors.metadata"), R"({"format":"pt","x":"1","y":"3"})");
    }
  }
}

TEST_F(ShardedTest, ImportReportsReadFailures) {
  WriteShards(kGoodIndex);
  // Headers take a known number of reads; fail every read index in turn until the import
  // gets through, and check that each failure is reported rather than crashing.
  for (uint64_t k = 1;; ++k) {
    ASSERT_LT(k, 100u);
    FaultPlan plan;
    plan.fail_read_at = k;
    FaultInjectionFileSystem fs(DefaultFileSystem(), plan);
    WriterOptions options;
    options.threads = 1;
    auto writer = ImageWriter::Create(File("img"), options);
    ASSERT_TRUE(writer.ok()) << writer.status();
    Status s = ImportSafetensors(&fs, File("model.safetensors.index.json"), writer->get());
    if (s.ok()) {
      ASSERT_TRUE((*writer)->Finish().ok());
      break;
    }
    EXPECT_NE(s.message().find("injected"), std::string_view::npos) << s;
    (*writer)->Abandon();
  }
}

}  // namespace
}  // namespace stasis
