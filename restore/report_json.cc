#include "restore/report_json.h"

#include <string>

namespace stasis {

nlohmann::json RestoreReportJson(const RestoreReport& r) {
  const RestorePhases& p = r.phases;
  nlohmann::json j;
  j["image"] = r.image;
  j["device"] = DeviceSpecString(r.device);
  j["seconds"] = p.total;
  j["raw_bytes"] = r.raw_bytes;
  j["stored_bytes"] = r.stored_bytes;
  j["raw_gb_per_s"] = r.raw_gb_per_s();
  j["stored_gb_per_s"] = p.total > 0 ? r.stored_bytes / p.total / 1e9 : 0.0;
  j["phases"] = {{"open", p.open},
                 {"plan", p.plan},
                 {"map", p.map},
                 {"pipeline_wall", p.pipeline_wall},
                 {"read", p.read},
                 {"verify", p.verify},
                 {"decompress", p.decompress},
                 {"copy", p.copy}};
  j["io"] = {{"backend", std::string(IoBackendName(r.io.backend))},
             {"reason", r.io.reason},
             {"direct", r.io.direct},
             {"direct_reason", r.io.direct_reason},
             {"alignment", r.io.alignment},
             {"ring_flags", r.io.ring_flags},
             {"buffers_registered", r.io.buffers_registered},
             {"file_registered", r.io.file_registered}};
  j["workers"] = r.workers;
  j["chunks"] = r.chunks;
  j["chunks_read_in_place"] = r.chunks_read_in_place;
  j["chunks_mapped"] = r.chunks_mapped;
  j["map_reason"] = r.map_reason;
  j["image_replaced"] = r.image_replaced;
  j["cache"] = r.cache;
  j["staging_bytes"] = r.staging_bytes;
  j["verified_raw"] = r.verified_raw;
  j["verified_stored"] = r.verified_stored;
  j["regions"] = r.regions;
  j["regions_with_hint"] = r.regions_with_hint;
  j["regions_at_hint"] = r.regions_at_hint;
  j["addresses_preserved"] = r.regions_at_hint == r.regions_with_hint;
  return j;
}

}  // namespace stasis
