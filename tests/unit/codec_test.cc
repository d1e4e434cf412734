#include "snapshot/codec.h"

#include <cstring>

#include "common/hash.h"
#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using ::testing::HasSubstr;
using testing::NormalBF16Bytes;
using testing::NormalF32Bytes;
using testing::RandomBytes;
using testing::TestSeed;

format::ChunkInfo InfoFor(const ChunkEncoder::Result& r, const std::vector<uint8_t>& raw) {
  format::ChunkInfo c;
  c.codec = r.codec;
  c.element_size = r.element_size;
  c.raw_size = raw.size();
  c.stored_size = r.codec == format::Codec::kRaw ? raw.size() : r.stored.size();
  return c;
}

std::vector<uint8_t> RoundTrip(const std::vector<uint8_t>& raw, CodecChoice choice, int es,
                               format::Codec* codec_out) {
  ChunkEncoder enc(1);
  ChunkEncoder::Result r;
  EXPECT_OK(enc.Encode(raw.data(), raw.size(), choice, es, &r));
  *codec_out = r.codec;
  format::ChunkInfo c = InfoFor(r, raw);
  std::vector<uint8_t> out(raw.size());
  ChunkDecoder dec;
  const void* stored = r.codec == format::Codec::kRaw ? raw.data() : r.stored.data();
  EXPECT_OK(dec.Decode(c, 0, stored, out.data()));
  return out;
}

TEST(CodecTest, GroupUngroupIsIdentityForAllWidths) {
  for (int es : {2, 4}) {
    auto raw = RandomBytes(4096 * es, TestSeed() + es);
    std::vector<uint8_t> planes(raw.size()), back(raw.size());
    GroupBytes(raw.data(), raw.size(), es, planes.data());
    std::vector<const uint8_t*> p;
    for (int k = 0; k < es; ++k) p.push_back(planes.data() + k * raw.size() / es);
    UngroupBytes(p.data(), raw.size(), es, back.data());
    EXPECT_EQ(back, raw) << "element size " << es;
  }
}

TEST(CodecTest, GroupingPutsBf16ExponentInTheHighPlane) {
  // 1.0 in bf16 is 0x3F80: sign 0, exponent 127. Rotated left by one: 0x7F00.
  std::vector<uint8_t> raw = {0x80, 0x3F, 0x80, 0xBF};  // 1.0, -1.0
  std::vector<uint8_t> planes(4);
  GroupBytes(raw.data(), raw.size(), 2, planes.data());
  EXPECT_EQ(planes[2], 0x7F);  // exponent byte of 1.0
  EXPECT_EQ(planes[3], 0x7F);  // exponent byte of -1.0: the sign went to the low plane
  EXPECT_EQ(planes[0], 0x00);
  EXPECT_EQ(planes[1], 0x01);
}

TEST(CodecTest, RoundTripsEveryChoice) {
  uint64_t seed = TestSeed();
  struct Case {
    std::vector<uint8_t> data;
    int es;
  } cases[] = {{NormalBF16Bytes(300000, seed), 2},
               {NormalF32Bytes(150000, seed + 1), 4},
               {RandomBytes(100003, seed + 2), 0},
               {std::vector<uint8_t>(65536, 7), 0},
               {std::vector<uint8_t>(1, 1), 0}};
  for (auto& c : cases) {
    for (CodecChoice ch : {CodecChoice::kAuto, CodecChoice::kZstd, CodecChoice::kRaw}) {
      format::Codec used;
      EXPECT_EQ(RoundTrip(c.data, ch, c.es, &used), c.data);
      if (ch == CodecChoice::kRaw) {
        EXPECT_EQ(used, format::Codec::kRaw);
      }
    }
  }
}

TEST(CodecTest, ChoosesGroupedForFloatsAndRawForNoise) {
  format::Codec used;
  RoundTrip(NormalBF16Bytes(1 << 20, TestSeed()), CodecChoice::kAuto, 2, &used);
  EXPECT_EQ(used, format::Codec::kGrouped);
  RoundTrip(NormalBF16Bytes(1 << 20, TestSeed()), CodecChoice::kZstd, 2, &used);
  EXPECT_EQ(used, format::Codec::kZstd);
  // Random bytes cannot save 5%: stored raw.
  RoundTrip(RandomBytes(1 << 20, TestSeed()), CodecChoice::kAuto, 0, &used);
  EXPECT_EQ(used, format::Codec::kRaw);
}

TEST(CodecTest, GroupedBf16BeatsPlainZstd) {
  auto raw = NormalBF16Bytes(2 << 20, TestSeed());
  ChunkEncoder enc(1);
  ChunkEncoder::Result grouped, plain;
  ASSERT_OK(enc.Encode(raw.data(), raw.size(), CodecChoice::kAuto, 2, &grouped));
  ASSERT_OK(enc.Encode(raw.data(), raw.size(), CodecChoice::kZstd, 2, &plain));
  ASSERT_EQ(grouped.codec, format::Codec::kGrouped);
  EXPECT_LT(grouped.stored.size(), plain.stored.size());
  double ratio = static_cast<double>(raw.size()) / static_cast<double>(grouped.stored.size());
  EXPECT_GT(ratio, 1.4) << "bf16 grouped ratio";
}

TEST(CodecTest, CorruptPayloadsAreDataLoss) {
  auto raw = NormalBF16Bytes(1 << 16, TestSeed());
  ChunkEncoder enc(1);
  ChunkEncoder::Result r;
  ASSERT_OK(enc.Encode(raw.data(), raw.size(), CodecChoice::kAuto, 2, &r));
  ASSERT_EQ(r.codec, format::Codec::kGrouped);
  format::ChunkInfo c = InfoFor(r, raw);
  std::vector<uint8_t> out(raw.size());
  ChunkDecoder dec;

  auto bad_table = r.stored;
  bad_table[4] = 9;  // plane 0 codec
  EXPECT_THAT(dec.Decode(c, 5, bad_table.data(), out.data()),
              StatusIs(StatusCode::kDataLoss, HasSubstr("chunk 5: plane 0 has unknown codec")));

  auto bad_size = r.stored;
  bad_size[0] ^= 0x40;  // plane 0 stored size
  EXPECT_THAT(dec.Decode(c, 5, bad_size.data(), out.data()),
              StatusIs(StatusCode::kDataLoss, HasSubstr("chunk 5")));

  // A flipped byte inside a zstd frame either fails to decode or decodes to other bytes;
  // it never crashes or writes out of bounds (the checksum catches the rest).
  for (size_t i = 16; i < r.stored.size(); i += 97) {
    auto flipped = r.stored;
    flipped[i] ^= 0x5a;
    Status s = dec.Decode(c, 1, flipped.data(), out.data());
    if (!s.ok()) {
      EXPECT_EQ(s.code(), StatusCode::kDataLoss);
    }
  }

  c.element_size = 3;
  EXPECT_THAT(dec.Decode(c, 2, r.stored.data(), out.data()),
              StatusIs(StatusCode::kDataLoss, HasSubstr("geometry")));
}

TEST(CodecTest, ZstdContentSizeMismatchIsDataLoss) {
  auto raw = std::vector<uint8_t>(10000, 3);
  ChunkEncoder enc(1);
  ChunkEncoder::Result r;
  ASSERT_OK(enc.Encode(raw.data(), raw.size(), CodecChoice::kZstd, 0, &r));
  ASSERT_EQ(r.codec, format::Codec::kZstd);
  format::ChunkInfo c = InfoFor(r, raw);
  c.raw_size = 9999;
  std::vector<uint8_t> out(10000);
  ChunkDecoder dec;
  EXPECT_THAT(dec.Decode(c, 4, r.stored.data(), out.data()),
              StatusIs(StatusCode::kDataLoss, HasSubstr("content size")));
}

}  // namespace
}  // namespace stasis
