// `stasis restore`: an image restored onto a device, with the phase breakdown, and
// optionally a digest of every tensor's bytes.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "common/hash.h"
#include "common/stopwatch.h"
#include "restore/report_json.h"
#include "stasis/restore.h"
#include "tools/stasis/cli_common.h"
#include "tools/stasis/commands.h"
#include "tools/stasis/restore_options.h"
#include "tools/stasis/row_major.h"

namespace stasis::cli {
namespace {

using Json = nlohmann::ordered_json;

void PrintReport(const RestoreReport& r) {
  const RestorePhases& p = r.phases;
  std::printf("restored %s to %s: %s (%s stored) in %.3f s, %.2f GB/s\n", r.image.c_str(),
              DeviceSpecString(r.device).c_str(), HumanBytes(r.raw_bytes).c_str(),
              HumanBytes(r.stored_bytes).c_str(), p.total, r.raw_gb_per_s());
  std::printf(
      "  phases (s): open %.3f  plan %.4f  map %.3f  pipeline %.3f  [cpu-s: read %.3f  verify %.3f "
      " "
      "decompress %.3f  copy %.3f]\n",
      p.open, p.plan, p.map, p.pipeline_wall, p.read, p.verify, p.decompress, p.copy);
  std::string direct = r.io.direct ? "O_DIRECT" : "buffered";
  if (!r.io.direct_reason.empty()) direct += " (" + r.io.direct_reason + ")";
  std::string ring = r.io.ring_flags.empty() ? "" : ", ring flags " + r.io.ring_flags;
  std::printf("  io: %s (%s), %s, alignment %u%s%s%s\n",
              std::string(IoBackendName(r.io.backend)).c_str(), r.io.reason.c_str(), direct.c_str(),
              r.io.alignment, ring.c_str(), r.io.buffers_registered ? ", buffers registered" : "",
              r.io.file_registered ? ", file registered" : "");
  std::printf(
      "  %d workers, %s staging, of %llu chunks: %llu mapped from the page cache, %llu read in "
      "place; checksums: %s\n",
      r.workers, HumanBytes(r.staging_bytes).c_str(), static_cast<unsigned long long>(r.chunks),
      static_cast<unsigned long long>(r.chunks_mapped),
      static_cast<unsigned long long>(r.chunks_read_in_place),
      !r.verified_stored ? "none (--no-checksums)"
      : r.verified_raw   ? "stored + decoded"
                         : "stored only (--no-verify)");
  std::printf("  addresses: %zu of %zu regions at their recorded address (%zu recorded one)\n",
              r.regions_at_hint, r.regions, r.regions_with_hint);
}

// A digest of every tensor's restored bytes (CombineTensorHashes of each one's row-major
// elements), as the torch adapter's TensorsChecksum and bench/peers compute it: equal
// digests mean equal bytes, whichever loader produced them.
struct TensorsDigest {
  uint64_t xxh3 = 0;
  size_t tensors = 0;
  double seconds = 0;
};

// `restored` must be a host restore (RunRestore refuses --digest for other devices first).
TensorsDigest DigestTensors(const RestoredModel& restored) {
  const Stopwatch start;
  std::vector<std::pair<std::string, uint64_t>> hashes;
  hashes.reserve(restored.tensors().size());
  std::vector<uint8_t> scratch;
  for (const RestoredTensor& t : restored.tensors()) {
    ByteView bytes = RowMajorBytes(t, &scratch);
    hashes.emplace_back(t.name, Xxh3(bytes.data, bytes.size));
  }
  TensorsDigest d;
  d.tensors = hashes.size();
  d.xxh3 = CombineTensorHashes(std::move(hashes));
  d.seconds = start.Seconds();
  return d;
}

}  // namespace

int RunRestore(const RestoreArgs& a) {
  auto options = ToRestoreOptions(a);
  if (!options.ok()) return ReportError(options.status());
  if (a.digest && options->device.kind != format::DeviceKind::kCpu)
    return ReportError(
        InvalidArgumentError("--digest reads restored bytes on the host: use --device cpu"));
  auto restored = RestoredModel::Restore(a.image, *options);
  if (!restored.ok()) return ReportError(restored.status());
  TensorsDigest digest;
  if (a.digest) digest = DigestTensors(**restored);
  const std::string hex = Hex64(digest.xxh3);
  if (a.json) {
    Json j = RestoreReportJson((*restored)->report());
    if (a.digest)
      j["digest"] = {{"xxh3", hex}, {"tensors", digest.tensors}, {"seconds", digest.seconds}};
    std::cout << DumpJson(j) << "\n";
  } else {
    PrintReport((*restored)->report());
    if (a.digest)
      std::printf("  digest of %zu tensors: %s (%.3f s, after the restore)\n", digest.tensors,
                  hex.c_str(), digest.seconds);
  }
  return kExitOk;
}

}  // namespace stasis::cli
