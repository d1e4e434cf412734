// `stasis verify`: every byte of an image checked; exit status 0 only when it is intact.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "common/stopwatch.h"
#include "stasis/image.h"
#include "stasis/remote.h"
#include "tools/stasis/cli_common.h"
#include "tools/stasis/commands.h"
#include "tools/stasis/remote_flags.h"

namespace stasis::cli {
namespace {

using Json = nlohmann::ordered_json;

}  // namespace

int RunVerify(const std::string& location, int threads, bool json, const RemoteArgs& remote) {
  const Stopwatch start;
  const std::string path = ShownLocation(location);
  auto reader = OpenImageReader(location, ToRemoteOptions(remote));
  if (!reader.ok()) {
    if (json) {
      Json j = {{"image", path}, {"intact", false}, {"errors", {reader.status().ToString()}}};
      std::cout << DumpJson(j) << "\n";
      return ExitCodeFor(reader.status());
    }
    return ReportError(reader.status());
  }
  ProgressBar bar("verify", (*reader)->manifest().StoredBytes(), !json);
  VerifyOptions opt;
  opt.threads = threads;
  opt.progress = [&bar](uint64_t done) { bar.Update(done); };
  auto report = (*reader)->Verify(opt);
  bar.Done();
  if (!report.ok()) return ReportError(report.status());
  double secs = start.Seconds();
  if (json) {
    Json j;
    j["image"] = path;
    j["intact"] = report->ok();
    j["chunks"] = report->chunks_checked;
    j["sections"] = report->sections_checked;
    j["stored_bytes"] = report->stored_bytes;
    j["raw_bytes"] = report->raw_bytes;
    j["seconds"] = secs;
    j["errors"] = Json::array();
    for (const auto& e : report->errors) j["errors"].push_back(e.ToString());
    std::cout << DumpJson(j) << "\n";
  } else if (report->ok()) {
    std::printf("%s: intact (%llu chunks, %llu sections, %s checked in %.2f s)\n", path.c_str(),
                static_cast<unsigned long long>(report->chunks_checked),
                static_cast<unsigned long long>(report->sections_checked),
                HumanBytes((*reader)->footer().file_size).c_str(), secs);
  } else {
    for (const auto& e : report->errors)
      std::fprintf(stderr, "stasis: %s: %s\n", path.c_str(), e.ToString().c_str());
    std::fprintf(stderr, "stasis: %s: CORRUPTED (%zu problem%s)\n", path.c_str(),
                 report->errors.size(), report->errors.size() == 1 ? "" : "s");
  }
  return report->ok() ? kExitOk : kExitCorrupt;
}

}  // namespace stasis::cli
