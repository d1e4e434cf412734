#include "torch_adapter/archive.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "stasis/file_system.h"
#include "torch_adapter/exception_status.h"

namespace stasis::torch {
namespace {

using internal::ExceptionStatus;

uint16_t Le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t Le32(const uint8_t* p) { return Le16(p) | (static_cast<uint32_t>(Le16(p + 2)) << 16); }
uint64_t Le64(const uint8_t* p) { return Le32(p) | (static_cast<uint64_t>(Le32(p + 4)) << 32); }

// A TorchScript archive's central directory holds a few entries per submodule; this is
// orders of magnitude more than any real one.
constexpr uint64_t kMaxCentralDirectory = 64ull << 20;

Status CheckTorchScriptImpl(const std::string& path) {
  auto file = DefaultFileSystem()->OpenRandomAccess(path);
  if (!file.ok()) return file.status();
  const RandomAccessFile& f = **file;
  const uint64_t size = f.Size();
  auto bad = [&](const std::string& why) {
    return InvalidArgumentError(path + " is not a TorchScript archive (" + why + ")");
  };
  uint8_t magic[4];
  if (size < 22) return bad("too short for a zip file");
  STASIS_RETURN_IF_ERROR(f.ReadExact(0, 4, magic, path));
  if (std::memcmp(magic, "PK\x03\x04", 4) != 0) return bad("not a zip file");

  // End of central directory: the last "PK\5\6" whose comment ends at EOF (or within).
  const uint64_t tail_size = std::min<uint64_t>(size, 22 + 65535);
  std::vector<uint8_t> tail(tail_size);
  STASIS_RETURN_IF_ERROR(f.ReadExact(size - tail_size, tail_size, tail.data(), path));
  int64_t eocd = -1;
  for (int64_t i = static_cast<int64_t>(tail_size) - 22; i >= 0; --i) {
    const uint8_t* p = tail.data() + i;
    if (std::memcmp(p, "PK\x05\x06", 4) == 0 &&
        i + 22 + Le16(p + 20) <= static_cast<int64_t>(tail_size)) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) return bad("no zip end-of-central-directory record");
  const uint8_t* e = tail.data() + eocd;
  uint64_t entries = Le16(e + 10), cd_size = Le32(e + 12), cd_offset = Le32(e + 16);
  if (entries == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff) {
    // zip64: the locator sits just before the end record.
    const uint64_t eocd_abs = size - tail_size + static_cast<uint64_t>(eocd);
    if (eocd_abs < 20) return bad("zip64 locator missing");
    uint8_t loc[20];
    STASIS_RETURN_IF_ERROR(f.ReadExact(eocd_abs - 20, 20, loc, path));
    if (std::memcmp(loc, "PK\x06\x07", 4) != 0) return bad("zip64 locator missing");
    const uint64_t rec_offset = Le64(loc + 8);
    uint8_t rec[56];
    if (rec_offset > size || size - rec_offset < 56) return bad("zip64 record out of range");
    STASIS_RETURN_IF_ERROR(f.ReadExact(rec_offset, 56, rec, path));
    if (std::memcmp(rec, "PK\x06\x06", 4) != 0) return bad("bad zip64 end record");
    entries = Le64(rec + 32);
    cd_size = Le64(rec + 40);
    cd_offset = Le64(rec + 48);
  }
  if (cd_offset > size || cd_size > size - cd_offset) return bad("central directory out of range");
  if (cd_size > kMaxCentralDirectory) return bad("central directory too large");
  std::vector<uint8_t> cd(cd_size);
  STASIS_RETURN_IF_ERROR(f.ReadExact(cd_offset, cd_size, cd.data(), path));
  static constexpr std::string_view kData = "data.pkl";
  uint64_t pos = 0;
  for (uint64_t i = 0; i < entries; ++i) {
    if (cd_size - pos < 46 || std::memcmp(cd.data() + pos, "PK\x01\x02", 4) != 0)
      return bad("corrupt central directory");
    const uint8_t* r = cd.data() + pos;
    const uint64_t name_len = Le16(r + 28), extra = Le16(r + 30), comment = Le16(r + 32);
    if (cd_size - pos - 46 < name_len + extra + comment) return bad("corrupt central directory");
    std::string_view name(reinterpret_cast<const char*>(r + 46), name_len);
    if (name.size() >= kData.size() && name.substr(name.size() - kData.size()) == kData)
      return OkStatus();
    pos += 46 + name_len + extra + comment;
  }
  return bad("a zip file without data.pkl");
}

}  // namespace

Status CheckTorchScript(const std::string& path) {
  return internal::Guarded("checking " + path, [&] { return CheckTorchScriptImpl(path); });
}

StatusOr<::torch::jit::Module> LoadTorchScript(const std::string& path) {
  STASIS_RETURN_IF_ERROR(CheckTorchScript(path));
  try {
    return ::torch::jit::load(path, c10::Device(at::kCPU));
  } catch (...) {
    return ExceptionStatus(StatusCode::kInvalidArgument,
                           path + " does not load as TorchScript (torch.save checkpoints are " +
                               "not TorchScript: save with torch.jit.save)",
                           std::current_exception());
  }
}

}  // namespace stasis::torch
