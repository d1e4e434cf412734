// The corruption catalogue: every structure of an image damaged in every way the format
// spec says a reader must reject (docs/image-format.md, "What a reader must reject").
// Each case gets its own clear error; none crashes, hangs or allocates without bound.
// Like LevelDB's log tests, many cases corrupt a field and then fix the checksums so the
// semantic check behind the checksum is reached.
#include <cstring>
#include <functional>

#include "common/fault_injection_file_system.h"
#include "common/hash.h"
#include "common/mem_file_system.h"
#include "snapshot/format.h"
#include "stasis/image.h"
#include "tests/testutil/restore_util.h"
#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;
using testing::NormalBF16Bytes;
using testing::RandomBytes;
using testing::TempDir;
using testing::TestSeed;

void PutU64(std::string* s, size_t off, uint64_t v) {
  for (int i = 0; i < 8; ++i) (*s)[off + i] = static_cast<char>((v >> (8 * i)) & 0xff);
}
void PutU32(std::string* s, size_t off, uint32_t v) {
  for (int i = 0; i < 4; ++i) (*s)[off + i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

// Changes tensor i of `m` (the table's records are views: edited as an owning copy).
template <typename Edit>
void EditTensor(format::Manifest& m, size_t i, Edit edit) {
  format::TensorInfo t = m.tensors[i].ToInfo();
  edit(t);
  m.tensors.Replace(i, t);
}

// The catalogue runs on an image of each format version (mutations re-encode the records
// of the image's version; version 2's manifest is then stored raw).
class CorruptionTest : public ::testing::TestWithParam<uint32_t> {
 protected:
  void SetUp() override {
    // Two regions, compressed and raw chunks, a section, metadata: every structure present.
    bf16_ = NormalBF16Bytes(6000, TestSeed());
    noise_ = RandomBytes(9000, TestSeed() + 1);
    WriterOptions opt;
    opt.format_version = version();
    opt.chunk_size = 4096;
    auto w = ImageWriter::Create(dir_.File("good"), opt);
    ASSERT_OK(w.status());
    ASSERT_EQ(*(*w)->AddRegion({bf16_.size(), 4096, 0, format::DeviceKind::kCpu, -1}), 0u);
    ASSERT_EQ(*(*w)->AddRegion({noise_.size(), 4096, 0x10000, format::DeviceKind::kCuda, 0}), 1u);
    ASSERT_OK((*w)->AddRegionData(0, 0, bf16_.data(), bf16_.size(), 2));
    ASSERT_OK((*w)->AddRegionData(1, 0, noise_.data(), noise_.size(), 0));
    ASSERT_OK((*w)->AddSection("skeleton", std::string(5000, 's')));
    ASSERT_OK((*w)->AddTensor({"w", DType::kBF16, {6000}, {1}, 0, 0, 12000}));
    ASSERT_OK((*w)->AddTensor({"n", DType::kU8, {9000}, {1}, 1, 0, 9000}));
    ASSERT_OK((*w)->SetMetadata("source.format", "test"));
    ASSERT_OK((*w)->Finish());
    good_ = testing::ReadFile(dir_.File("good"));
    auto r = ImageReader::Open(dir_.File("good"));
    ASSERT_OK(r.status());
    footer_ = (*r)->footer();
    manifest_ = (*r)->manifest();
    bool has_grouped = false, has_raw = false;
    for (const auto& c : manifest_.chunks) {
      has_grouped |= c.codec == format::Codec::kGrouped;
      has_raw |= c.codec == format::Codec::kRaw;
    }
    ASSERT_TRUE(has_grouped && has_raw) << "the fixture must cover both codecs";
  }

  uint32_t version() const { return GetParam(); }

  // Writes `bytes` to a file and opens it.
  StatusOr<std::unique_ptr<ImageReader>> OpenBytes(const std::string& bytes) {
    testing::WriteFile(dir_.File("bad"), bytes);
    return ImageReader::Open(dir_.File("bad"));
  }

  // Opens and, when that succeeds, runs a full verification; returns the first problem.
  Status OpenAndVerify(const std::string& bytes) {
    auto r = OpenBytes(bytes);
    if (!r.ok()) return r.status();
    auto report = (*r)->Verify(VerifyOptions{.threads = 1});
    if (!report.ok()) return report.status();
    return report->errors.empty() ? OkStatus() : report->errors.front();
  }

  std::string FixHeader(std::string s) {
    PutU64(&s, 24, Xxh3(s.data(), 24));
    return s;
  }
  std::string FixFooter(std::string s) {
    size_t f = s.size() - format::kFooterSize;
    PutU64(&s, f + 48, Xxh3(s.data() + f, 48));
    return s;
  }
  // Re-encodes a mutated manifest in place of the original, with a consistent footer.
  std::string WithManifest(const std::string& encoded) {
    std::string s = good_.substr(0, footer_.manifest_offset) + encoded;
    format::Footer f = footer_;
    f.manifest_size = encoded.size();
    f.manifest_xxh3 = Xxh3(encoded.data(), encoded.size());
    f.file_size = s.size() + format::kFooterSize;
    return s + format::EncodeFooter(f);
  }
  std::string Mutated(const std::function<void(format::Manifest&)>& mutate) {
    format::Manifest m = manifest_;
    mutate(m);
    if (version() == 1) return WithManifest(format::EncodeManifest(m));
    return WithManifestV2(format::EncodeManifestV2(m));
  }
  // Version 2: a decoded manifest stored raw, the footer saying so.
  std::string WithManifestV2(const std::string& decoded) {
    std::string s = good_.substr(0, footer_.manifest_offset) + decoded;
    format::Footer f = footer_;
    f.manifest_codec = format::Codec::kRaw;
    f.manifest_raw_size = static_cast<uint32_t>(decoded.size());
    f.manifest_size = decoded.size();
    f.manifest_xxh3 = Xxh3(decoded.data(), decoded.size());
    f.file_size = s.size() + format::kFooterSize;
    return s + format::EncodeFooter(f);
  }
  Status OpenMutated(const std::function<void(format::Manifest&)>& mutate) {
    return OpenBytes(Mutated(mutate)).status();
  }
  size_t ChunkOfCodec(format::Codec codec) const {
    for (size_t i = 0; i < manifest_.chunks.size(); ++i)
      if (manifest_.chunks[i].codec == codec) return i;
    return 0;
  }

  TempDir dir_;
  std::vector<uint8_t> bf16_, noise_;
  std::string good_;
  format::Footer footer_;
  format::Manifest manifest_;
};

INSTANTIATE_TEST_SUITE_P(Versions, CorruptionTest, ::testing::Values(1u, 2u),
                         [](const auto& info) { return "v" + std::to_string(info.param); });

TEST_P(CorruptionTest, GoodImageIsIntact) { EXPECT_OK(OpenAndVerify(good_)); }

TEST_P(CorruptionTest, BadMagic) {
  std::string s = good_;
  s[1] = 'X';
  EXPECT_THAT(OpenBytes(s).status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("not a stasis image")));
  EXPECT_THAT(OpenBytes("{\"hello\": 1}").status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("not a stasis image")));
  s = good_;
  s[s.size() - 1] = 0;
  EXPECT_THAT(OpenBytes(s).status(), StatusIs(StatusCode::kOutOfRange, HasSubstr("no footer")));
}

TEST_P(CorruptionTest, FutureVersion) {
  // The header names the other known version than the footer, or an unknown one.
  const uint32_t other = version() == 1 ? 2 : 1;
  std::string s = good_;
  PutU32(&s, 8, other);
  EXPECT_THAT(OpenBytes(FixHeader(s)).status(),
              StatusIs(StatusCode::kUnimplemented, HasSubstr("version " + std::to_string(other))));
  s = good_;
  PutU32(&s, 8, 3);
  EXPECT_THAT(OpenBytes(FixHeader(s)).status(),
              StatusIs(StatusCode::kUnimplemented, HasSubstr("version 3")));
  s = good_;
  PutU32(&s, s.size() - format::kFooterSize + 32, 7);
  EXPECT_THAT(OpenBytes(FixFooter(s)).status(),
              StatusIs(StatusCode::kUnimplemented, HasSubstr("version 7")));
  s = good_;
  PutU32(&s, 8, 0);
  EXPECT_THAT(OpenBytes(FixHeader(s)).status(),
              StatusIs(StatusCode::kUnimplemented, HasSubstr("version 0")));
}

TEST_P(CorruptionTest, UnknownFlagsAndDirtyHeaderPadding) {
  std::string s = good_;
  s[16] = 1;
  EXPECT_THAT(OpenBytes(FixHeader(s)).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("flags")));
  s = good_;
  s[100] = 1;
  EXPECT_THAT(OpenBytes(s).status(), StatusIs(StatusCode::kDataLoss, HasSubstr("padding")));
  s = good_;
  PutU32(&s, s.size() - format::kFooterSize + 36, 1);
  EXPECT_THAT(OpenBytes(FixFooter(s)).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("flags")));
}

TEST_P(CorruptionTest, TruncationAtEveryStructureBoundary) {
  std::vector<size_t> cuts = {0,
                              1,
                              7,
                              8,
                              100,
                              4095,
                              4096,
                              4097,
                              footer_.manifest_offset,
                              footer_.manifest_offset + 1,
                              footer_.manifest_offset + 31,
                              footer_.manifest_offset + footer_.manifest_size,
                              good_.size() - format::kFooterSize + 1,
                              good_.size() - 8,
                              good_.size() - 1};
  for (const auto& c : manifest_.chunks) {
    cuts.push_back(c.file_offset);
    cuts.push_back(c.file_offset + c.stored_size / 2);
    cuts.push_back(c.file_offset + c.stored_size);
  }
  for (const auto& sec : manifest_.sections) cuts.push_back(sec.file_offset + sec.size);
  for (size_t cut : cuts) {
    SCOPED_TRACE("truncated to " + std::to_string(cut));
    EXPECT_THAT(OpenBytes(good_.substr(0, cut)).status(),
                StatusIs(StatusCode::kOutOfRange, HasSubstr("truncated")));
  }
}

TEST_P(CorruptionTest, TrailingBytes) {
  EXPECT_THAT(OpenBytes(good_ + "x").status(),
              StatusIs(StatusCode::kOutOfRange, HasSubstr("trailing")));
}

TEST_P(CorruptionTest, FlippedByteInEachStructure) {
  auto flip = [&](size_t off) {
    std::string s = good_;
    s[off] ^= 0x20;
    return s;
  };
  EXPECT_THAT(OpenBytes(flip(20)).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("header checksum")));
  EXPECT_THAT(OpenBytes(flip(footer_.manifest_offset + 40)).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("manifest checksum")));
  EXPECT_THAT(OpenBytes(flip(good_.size() - 20)).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("footer checksum")));
  for (size_t i = 0; i < manifest_.chunks.size(); ++i) {
    const auto& c = manifest_.chunks[i];
    std::string s = flip(c.file_offset + c.stored_size / 2);
    EXPECT_THAT(OpenAndVerify(s), StatusIs(StatusCode::kDataLoss,
                                           HasSubstr("chunk " + std::to_string(i) + ": checksum")));
    auto r = OpenBytes(s);
    ASSERT_OK(r.status());
    EXPECT_THAT(testing::RestoreToHost(dir_.File("bad")).status(),
                StatusIs(StatusCode::kDataLoss, HasSubstr("chunk " + std::to_string(i))));
  }
  const auto& sec = manifest_.sections[0];
  EXPECT_THAT(OpenAndVerify(flip(sec.file_offset + 3)),
              StatusIs(StatusCode::kDataLoss, HasSubstr("section 'skeleton'")));
  // Padding between the first chunk and the next block.
  const auto& c0 = manifest_.chunks[0];
  ASSERT_NE(c0.stored_size % 4096, 0u);
  EXPECT_THAT(OpenAndVerify(flip(c0.file_offset + c0.stored_size)),
              StatusIs(StatusCode::kDataLoss, HasSubstr("padding")));
}

TEST_P(CorruptionTest, VerifyDetectsEverySingleByteChange) {
  // The format's integrity promise, checked exhaustively: no byte of the file is unchecked.
  ASSERT_LT(good_.size(), 64u << 10) << "keep the fixture small: this test flips every byte";
  std::string s = good_;
  MemFileSystem fs;
  for (size_t off = 0; off < good_.size(); ++off) {
    s[off] ^= 0x01;
    fs.SetFile("bad", s);
    auto r = ImageReader::Open("bad", &fs);
    bool detected = !r.ok();
    if (!detected) {
      auto report = (*r)->Verify(VerifyOptions{.threads = 1});
      detected = !report.ok() || !report->ok();
    }
    ASSERT_TRUE(detected) << "undetected change at file offset " << off;
    s[off] = good_[off];
  }
}

TEST_P(CorruptionTest, DecodedChecksumCatchesPayloadFixedUp) {
  // Corrupt a compressed chunk's payload and fix its stored checksum: the decoded-bytes
  // checksum (or the decoder) must still catch it.
  size_t i = ChunkOfCodec(format::Codec::kGrouped);
  const auto& c = manifest_.chunks[i];
  std::string s = good_;
  s[c.file_offset + c.stored_size - 10] ^= 0x11;  // in the raw mantissa plane
  const uint64_t fixed = Xxh3(s.data() + c.file_offset, c.stored_size);
  std::string mutated = Mutated([&](auto& m) { m.chunks[i].stored_xxh3 = fixed; });
  mutated[c.file_offset + c.stored_size - 10] ^= 0x11;
  EXPECT_THAT(OpenAndVerify(mutated),
              StatusIs(StatusCode::kDataLoss, HasSubstr("chunk " + std::to_string(i))));
}

TEST_P(CorruptionTest, SemanticChecksBehindTheChecksum) {
  struct Case {
    const char* name;
    std::function<void(format::Manifest&)> mutate;
    StatusCode code;
    std::string message;
  };
  const uint64_t mo = footer_.manifest_offset;
  const bool v1 = version() == 1;
  // v2 sorts tensors by name: tensors[0] is "n", tensors[1] "w".
  std::vector<Case> cases = {
      {"overlapping chunks", [](auto& m) { m.chunks[1].dst_offset = m.chunks[0].dst_offset + 2; },
       StatusCode::kDataLoss, "overlaps chunk"},
      {"chunk past region", [](auto& m) { m.chunks[0].dst_offset = m.regions[0].size - 1; },
       StatusCode::kDataLoss, "past the end of region"},
      {"chunk region out of range", [](auto& m) { m.chunks[0].region_id = 9; },
       StatusCode::kDataLoss, "region id 9"},
      {"misaligned chunk", [](auto& m) { m.chunks[0].file_offset += 512; }, StatusCode::kDataLoss,
       "block boundary"},
      {"chunk inside header", [](auto& m) { m.chunks[0].file_offset = 0; }, StatusCode::kDataLoss,
       "block boundary"},
      {"chunk past manifest", [mo](auto& m) { m.chunks[0].file_offset = mo; },
       StatusCode::kDataLoss, "past the manifest"},
      {"blocks overlap", [](auto& m) { m.chunks[1].file_offset = m.chunks[0].file_offset; },
       StatusCode::kDataLoss, "overlap"},
      {"unknown codec", [](auto& m) { m.chunks[0].codec = static_cast<format::Codec>(7); },
       StatusCode::kDataLoss, "unknown codec 7"},
      {"bad element size",
       [this](auto& m) { m.chunks[ChunkOfCodec(format::Codec::kGrouped)].element_size = 3; },
       StatusCode::kDataLoss, "element size 3"},
      {"raw chunk sizes differ",
       [this](auto& m) { m.chunks[ChunkOfCodec(format::Codec::kRaw)].stored_size -= 1; },
       StatusCode::kDataLoss, "inconsistent raw chunk"},
      {"zero raw size", [](auto& m) { m.chunks[0].raw_size = 0; }, StatusCode::kDataLoss,
       "raw size 0"},
      {"huge raw size", [](auto& m) { m.chunks[0].raw_size = 1ull << 40; }, StatusCode::kDataLoss,
       "out of range"},
      {"tensor past region",
       [](auto& m) { EditTensor(m, 0, [](auto& t) { t.byte_offset = 100; }); },
       StatusCode::kDataLoss, "past the end of region"},
      // v2 stores no byte_size (it is the view's extent): a wrong one cannot be written.
      {"tensor size mismatch",
       [v1](auto& m) { EditTensor(m, 0, [v1](auto& t) { t.byte_size = v1 ? 11999 : 8999; }); },
       v1 ? StatusCode::kDataLoss : StatusCode::kOk, "does not match its view"},
      {"negative dim", [](auto& m) { EditTensor(m, 0, [](auto& t) { t.shape[0] = -1; }); },
       StatusCode::kDataLoss, v1 ? "negative dimension" : "bad dimension"},
      {"duplicate tensor",
       [](auto& m) {
         const std::string first(m.tensors[0].name);
         EditTensor(m, 1, [&](auto& t) { t.name = first; });
       },
       StatusCode::kDataLoss, v1 ? "duplicate name 'w'" : "duplicate name 'n'"},
      {"unknown dtype",
       [](auto& m) { EditTensor(m, 0, [](auto& t) { t.dtype = static_cast<DType>(99); }); },
       StatusCode::kDataLoss, "unknown dtype id 99"},
      {"dtype zero",
       [](auto& m) { EditTensor(m, 0, [](auto& t) { t.dtype = static_cast<DType>(0); }); },
       StatusCode::kDataLoss, "unknown dtype id 0"},
      {"rank 33",
       [](auto& m) {
         EditTensor(m, 0, [](auto& t) {
           t.shape.assign(33, 1);
           t.strides.assign(33, 1);
         });
       },
       StatusCode::kDataLoss, "rank 33"},
      {"tensor region out of range",
       [](auto& m) { EditTensor(m, 0, [](auto& t) { t.region_id = 5; }); }, StatusCode::kDataLoss,
       "region id 5"},
      {"alignment not a power of two", [](auto& m) { m.regions[0].alignment = 3000; },
       StatusCode::kDataLoss, "alignment 3000"},
      {"unaligned va hint", [](auto& m) { m.regions[1].va_hint = 0x10001; }, StatusCode::kDataLoss,
       "va_hint"},
      {"cpu region with ordinal", [](auto& m) { m.regions[0].device_ordinal = 2; },
       StatusCode::kDataLoss, "device ordinal"},
      {"unknown device kind",
       [](auto& m) { m.regions[0].device_kind = static_cast<format::DeviceKind>(5); },
       StatusCode::kDataLoss, "unknown device kind 5"},
      {"huge region", [](auto& m) { m.regions[0].size = 1ull << 50; },
       StatusCode::kResourceExhausted, "2^48"},
      {"duplicate section", [](auto& m) { m.sections.push_back(m.sections[0]); },
       StatusCode::kDataLoss, "duplicate name 'skeleton'"},
      {"empty section with offset", [](auto& m) { m.sections[0].size = 0; }, StatusCode::kDataLoss,
       "empty section"},
      {"duplicate metadata", [](auto& m) { m.metadata.push_back(m.metadata[0]); },
       StatusCode::kDataLoss, "duplicate key"},
      {"huge metadata value", [](auto& m) { m.metadata[0].second.assign((1u << 20) + 1, 'x'); },
       StatusCode::kResourceExhausted, "exceeds 1 MiB"},
  };
  if (!v1) {
    cases.push_back({"unsorted tensors",
                     [](auto& m) {
                       const format::TensorInfo a = m.tensors[0].ToInfo();
                       m.tensors.Replace(0, m.tensors[1].ToInfo());
                       m.tensors.Replace(1, a);
                     },
                     StatusCode::kDataLoss, "sorted by name"});
  }
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    if (c.code == StatusCode::kOk) {
      EXPECT_OK(OpenMutated(c.mutate));
      continue;
    }
    EXPECT_THAT(OpenMutated(c.mutate), StatusIs(c.code, HasSubstr(c.message)));
  }
}

TEST_P(CorruptionTest, OversizedCountsAreRejectedBeforeAllocating) {
  const bool v1 = version() == 1;
  std::string enc = v1 ? format::EncodeManifest(manifest_) : format::EncodeManifestV2(manifest_);
  auto with_manifest = [&](const std::string& m) {
    return v1 ? WithManifest(m) : WithManifestV2(m);
  };
  struct Case {
    size_t offset;
    uint64_t value;
    int width;
    StatusCode code;
    const char* message;
  } cases[] = {
      {0, 0xffffffff, 4, StatusCode::kResourceExhausted, "region count"},
      {4, 0xffffffff, 4, StatusCode::kResourceExhausted, "tensor count"},
      {8, 5000, 4, StatusCode::kResourceExhausted, "section count"},
      {12, 100000, 4, StatusCode::kResourceExhausted, "metadata count"},
      {16, 1ull << 40, 8, StatusCode::kResourceExhausted, "chunk count"},
      // Within the limits but more than the manifest can hold: rejected before reserving.
      {16, 1ull << 23, 8, StatusCode::kDataLoss, "record counts need"},
      {4, 1u << 20, 4, StatusCode::kDataLoss, "record counts need"},
      {24, 1, 8, StatusCode::kDataLoss, "reserved"},
  };
  for (const auto& c : cases) {
    std::string m = enc;
    if (c.width == 4)
      PutU32(&m, c.offset, static_cast<uint32_t>(c.value));
    else
      PutU64(&m, c.offset, c.value);
    SCOPED_TRACE(c.message);
    EXPECT_THAT(OpenBytes(with_manifest(m)).status(), StatusIs(c.code, HasSubstr(c.message)));
  }
  // Trailing bytes after the last record.
  EXPECT_THAT(OpenBytes(with_manifest(enc + "zz")).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("unexpected bytes")));
  if (!v1) return;  // v2 name lengths: format_test's ManifestV2RejectsBadTensorRecords
  // Name lengths: a tensor name length that runs past the manifest.
  std::string m = enc;
  size_t tensor0 = format::kManifestHeaderSize +
                   manifest_.regions.size() * format::kRegionRecordSize +
                   manifest_.chunks.size() * format::kChunkRecordSize;
  m[tensor0] = static_cast<char>(0xff);
  m[tensor0 + 1] = static_cast<char>(0x0f);  // 4095 bytes
  EXPECT_THAT(OpenBytes(WithManifest(m)).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("name and dims")));
}

TEST_P(CorruptionTest, FooterFieldsOutOfRange) {
  auto with_footer = [&](const std::function<void(format::Footer&)>& mutate) {
    format::Footer f = footer_;
    mutate(f);
    return good_.substr(0, good_.size() - format::kFooterSize) + format::EncodeFooter(f);
  };
  EXPECT_THAT(OpenBytes(with_footer([](auto& f) { f.manifest_size = 1ull << 40; })).status(),
              StatusIs(StatusCode::kResourceExhausted, HasSubstr("manifest_size")));
  EXPECT_THAT(OpenBytes(with_footer([](auto& f) { f.manifest_offset += 1; })).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("misaligned")));
  EXPECT_THAT(OpenBytes(with_footer([](auto& f) { f.file_size += 4096; })).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("file_size")));
  EXPECT_THAT(OpenBytes(with_footer([](auto& f) {
                f.manifest_offset += 4096;
                f.file_size += 4096;
              })).status(),
              StatusIs(StatusCode::kDataLoss, HasSubstr("bytes, it has")));
}

TEST_P(CorruptionTest, ReadFaultsAreReportedNotFatal) {
  FaultInjectionFileSystem fs(DefaultFileSystem());
  // EIO at each of the first reads of Open and of a full load.
  for (uint64_t k = 1; k <= 12; ++k) {
    fs.ResetCounters();
    fs.set_plan(FaultPlan{.fail_read_at = k});
    auto r = ImageReader::Open(dir_.File("good"), &fs);
    Status s = r.status();
    if (r.ok()) s = testing::RestoreToHost(dir_.File("good"), &fs, 1).status();
    if (fs.read_calls() < k) {
      EXPECT_OK(s);
      break;
    }
    EXPECT_THAT(s, StatusIs(StatusCode::kUnavailable, HasSubstr("injected read failure")))
        << "read " << k;
  }
  // Short reads everywhere: the reader loops and gets the same bytes.
  fs.ResetCounters();
  fs.set_plan(FaultPlan{.max_read_bytes = 777});
  auto r = ImageReader::Open(dir_.File("good"), &fs);
  ASSERT_OK(r.status());
  auto image = testing::RestoreToHost(dir_.File("good"), &fs);
  ASSERT_OK(image.status());
  EXPECT_EQ(0, std::memcmp(testing::RegionBytes(**image, 0), bf16_.data(), bf16_.size()));
  EXPECT_EQ(0, std::memcmp(testing::RegionBytes(**image, 1), noise_.data(), noise_.size()));
}

}  // namespace
}  // namespace stasis
