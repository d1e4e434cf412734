// libFuzzer target: the image reader on hostile bytes. Invariants checked beyond "does not
// crash": an image that opens has a manifest that passes validation again, every chunk
// lies inside its region, and verify/load agree (load succeeds only if no chunk is bad).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/mem_file_system.h"
#include "snapshot/format.h"
#include "stasis/image.h"
#include "stasis/restore.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stasis;
  MemFileSystem fs;
  fs.SetFile("fuzz.stasis", std::string(reinterpret_cast<const char*>(data), size));
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
  RestoreOptions options;
  options.fs = &fs;
  options.threads = 1;
  options.staging_bytes = 256u << 20;
  auto image = RestoredModel::Restore("fuzz.stasis", options);
  if (image.ok() == chunk_error) std::abort();  // load and verify must agree on chunks
  return 0;
}
