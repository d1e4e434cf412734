#include "tools/stasis/restore_options.h"

#include <cstdlib>

#include "tools/stasis/cli_common.h"
#include "tools/stasis/remote_flags.h"

namespace stasis::cli {

StatusOr<RestoreOptions> ToRestoreOptions(const RestoreArgs& a) {
  RestoreOptions o;
  STASIS_ASSIGN_OR_RETURN(o.device, ParseDeviceSpec(a.device));
  // A device this build cannot restore onto is the answer whatever else is wrong.
  STASIS_RETURN_IF_ERROR(CheckBackendBuilt(o.device));
  STASIS_ASSIGN_OR_RETURN(o.io, ParseIoBackend(a.io));
  StatusOr<DirectIo> direct = ParseDirectIo(a.direct);
  if (!direct.ok()) return InvalidArgumentError("--direct must be auto, on or off");
  o.direct = *direct;
  // --queue-depth is bounded by RestoredModel::Restore (2..4096), where every caller meets it.
  if (a.staging_mb < 1 || a.staging_mb > (64u << 10))
    return InvalidArgumentError("--staging-mb must be 1..65536");
  o.threads = a.threads;
  o.queue_depth = a.queue_depth;
  o.staging_bytes = a.staging_mb << 20;
  o.verify = !a.no_verify && !a.no_checksums;
  o.verify_stored = !a.no_checksums;
  o.huge_pages = a.huge_pages == "on";
  STASIS_ASSIGN_OR_RETURN(o.map_file, RestoreOptions::ParseMapFile(a.map));
  o.remote = ToRemoteOptions(a.remote);
  STASIS_ASSIGN_OR_RETURN(o.cache, ToCacheOptions(a.cache_dir, a.cache_max));
  return o;
}

void AddRestoreFlags(CLI::App* cmd, RestoreArgs* a) {
  cmd->add_option("--io", a->io, "reader: auto|uring|pread")
      ->check(CLI::IsMember({"auto", "uring", "pread"}));
  cmd->add_option("--direct", a->direct, "O_DIRECT: auto (when the file is not cached)|on|off")
      ->check(CLI::IsMember({"auto", "on", "off"}));
  cmd->add_option("--threads", a->threads, "pipeline workers (default: all cores)")
      ->check(CLI::Range(0, kMaxThreadsFlag));
  // --queue-depth and --staging-mb are bounded where they are used (exit 2).
  cmd->add_option("--queue-depth", a->queue_depth, "reads in flight per worker (default 32)");
  cmd->add_option("--staging-mb", a->staging_mb, "staging memory bound in MiB (default 256)");
  cmd->add_option(
         "--huge-pages", a->huge_pages,
         "host restores into transparent huge pages: off (default) | on (faster on some hosts; "
         "can stall on compaction)")
      ->check(CLI::IsMember({"on", "off"}));
  cmd->add_option("--map", a->map,
                  "map raw chunks of a page-cache-hot image instead of copying them: auto "
                  "(when >= 90% cached) | on | off")
      ->check(CLI::IsMember({"auto", "on", "off"}));
  cmd->add_flag("--no-verify", a->no_verify,
                "skip checksums of decoded bytes (stored bytes are always checked)");
  cmd->add_flag("--no-checksums", a->no_checksums,
                "check nothing, stored bytes included (as loaders without checksums do); for "
                "images already checked with `stasis verify`");
  cmd->add_flag("--json", a->json, "print a JSON report");
  AddRemoteFlags(cmd, &a->remote);
  cmd->add_option("--cache", a->cache_dir,
                  "local cache tier: restore remote (or compressed) images from a raw entry "
                  "here, filling it on the first restore (default: STASIS_CACHE_DIR)");
  cmd->add_option("--cache-max", a->cache_max,
                  "evict least recently used entries beyond this size, e.g. 100GiB (default: "
                  "STASIS_CACHE_MAX, else no bound)");
}

StatusOr<CacheOptions> ToCacheOptions(const std::string& dir, const std::string& max) {
  CacheOptions c;
  c.dir = dir;
  if (c.dir.empty())
    if (const char* env = std::getenv("STASIS_CACHE_DIR")) c.dir = env;
  std::string m = max;
  if (m.empty())
    if (const char* env = std::getenv("STASIS_CACHE_MAX")) m = env;
  if (!m.empty()) {
    StatusOr<uint64_t> bytes = ParseSize(m);
    if (!bytes.ok())
      return InvalidArgumentError("--cache-max: " + std::string(bytes.status().message()));
    c.max_bytes = *bytes;
  }
  if (c.dir.empty() && !max.empty())  // the flag; STASIS_CACHE_MAX alone is harmless
    return InvalidArgumentError("--cache-max needs --cache DIR (or STASIS_CACHE_DIR)");
  return c;
}

}  // namespace stasis::cli
