// libFuzzer target: the image reader on hostile bytes. Invariants checked beyond "does not
// crash": an image that opens has a manifest that passes validation again, every chunk
// lies inside its region, and verify/load agree (load succeeds only if no chunk is bad).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/file_system.h"
#include "restore/host_loader.h"
#include "snapshot/image_reader.h"

namespace {

using namespace stasis;

class BufferFile final : public RandomAccessFile {
 public:
  BufferFile(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  StatusOr<size_t> ReadAt(uint64_t offset, size_t n, void* dst) const override {
    if (offset >= size_) return size_t{0};
    size_t got = std::min<uint64_t>(n, size_ - offset);
    std::memcpy(dst, data_ + offset, got);
    return got;
  }
  uint64_t Size() const override { return size_; }

 private:
  const uint8_t* data_;
  size_t size_;
};

// Serves one in-memory file under any name; writing is not supported.
class BufferFileSystem final : public FileSystem {
 public:
  BufferFileSystem(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  StatusOr<std::unique_ptr<RandomAccessFile>> OpenRandomAccess(const std::string&) override {
    return std::unique_ptr<RandomAccessFile>(new BufferFile(data_, size_));
  }
  StatusOr<std::unique_ptr<WritableFile>> CreateExclusive(const std::string&) override {
    return UnimplementedError("read-only");
  }
  Status Rename(const std::string&, const std::string&) override {
    return UnimplementedError("read-only");
  }
  Status Remove(const std::string&) override { return UnimplementedError("read-only"); }
  Status SyncParentDir(const std::string&) override { return OkStatus(); }
  bool Exists(const std::string&) override { return true; }

 private:
  const uint8_t* data_;
  size_t size_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  BufferFileSystem fs(data, size);
  auto reader = ImageReader::Open("fuzz.stasis", &fs);
  if (!reader.ok()) return 0;
  const format::Manifest& m = (*reader)->manifest();
  if (!format::ValidateManifest(m, (*reader)->footer().manifest_offset).ok()) std::abort();
  uint64_t total_region = 0;
  for (const auto& r : m.regions) total_region += r.size;
  for (const auto& c : m.chunks)
    if (c.dst_offset + c.raw_size > m.regions[c.region_id].size) std::abort();
  auto report = (*reader)->Verify(VerifyOptions{.threads = 1});
  if (!report.ok()) return 0;
  // Regions are mapped lazily, but keep the fuzzer's RSS small anyway.
  if (total_region > (64u << 20)) return 0;
  bool chunk_error = false;
  for (const auto& e : report->errors)
    if (std::string(e.message()).find("chunk ") != std::string::npos) chunk_error = true;
  auto image = LoadImageToHost(**reader, HostLoadOptions{.threads = 1});
  if (image.ok() == chunk_error) std::abort();  // load and verify must agree on chunks
  return 0;
}
