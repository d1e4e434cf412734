// `stasis cache ls|prune DIR`: the entries of the cache tier (stasis/image_cache.h), least
// recently used first, and trimming them to a size.
#include <cstdio>
#include <ctime>
#include <iostream>
#include <nlohmann/json.hpp>

#include "stasis/image_cache.h"
#include "tools/stasis/cli_common.h"
#include "tools/stasis/commands.h"
#include "tools/stasis/restore_options.h"

namespace stasis::cli {
namespace {

using Json = nlohmann::ordered_json;

Json EntryJson(const CacheEntry& e) {
  return {{"path", e.path},       {"key", e.key},
          {"bytes", e.bytes},     {"last_used", e.last_used_unix},
          {"partial", e.partial}, {"filling", e.filling}};
}

std::string When(int64_t unix_seconds) {
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", std::localtime(&t));
  return buf;
}

}  // namespace

int RunCache(const CacheArgs& a) {
  StatusOr<CacheOptions> cache = ToCacheOptions(a.dir, a.max);
  if (!cache.ok()) return ReportError(cache.status());
  if (cache->dir.empty())
    return ReportError(InvalidArgumentError("name the cache: stasis cache " + a.action +
                                            " DIR (or set STASIS_CACHE_DIR)"));
  if (a.action == "prune") {
    auto removed = PruneCache(cache->dir, cache->max_bytes);
    if (!removed.ok()) return ReportError(removed.status());
    uint64_t freed = 0;
    for (const CacheEntry& e : *removed) freed += e.bytes;
    if (a.json) {
      Json j = {{"cache", cache->dir}, {"removed", Json::array()}, {"freed_bytes", freed}};
      for (const CacheEntry& e : *removed) j["removed"].push_back(EntryJson(e));
      std::cout << DumpJson(j) << "\n";
    } else {
      for (const CacheEntry& e : *removed)
        std::printf("removed %s (%s%s)\n", e.path.c_str(), HumanBytes(e.bytes).c_str(),
                    e.partial ? ", partial" : "");
      std::printf("freed %s in %s\n", HumanBytes(freed).c_str(), cache->dir.c_str());
    }
    return kExitOk;
  }
  auto entries = ListCacheEntries(cache->dir);
  if (!entries.ok()) return ReportError(entries.status());
  uint64_t total = 0;
  for (const CacheEntry& e : *entries) total += e.bytes;
  if (a.json) {
    Json j = {{"cache", cache->dir}, {"bytes", total}, {"entries", Json::array()}};
    for (const CacheEntry& e : *entries) j["entries"].push_back(EntryJson(e));
    std::cout << DumpJson(j) << "\n";
    return kExitOk;
  }
  for (const CacheEntry& e : *entries)
    std::printf("%-10s  %s  %s%s\n", HumanBytes(e.bytes).c_str(), When(e.last_used_unix).c_str(),
                e.path.c_str(),
                e.filling   ? "  (being filled)"
                : e.partial ? "  (partial, abandoned)"
                            : "");
  std::printf("%zu entries, %s in %s\n", entries->size(), HumanBytes(total).c_str(),
              cache->dir.c_str());
  return kExitOk;
}

}  // namespace stasis::cli
