// `stasis export`: an image restored to host memory and written as safetensors.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "common/stopwatch.h"
#include "restore/report_json.h"
#include "snapshot/safetensors.h"
#include "stasis/file_system.h"
#include "stasis/restore.h"
#include "tools/stasis/cli_common.h"
#include "tools/stasis/commands.h"
#include "tools/stasis/interrupt.h"
#include "tools/stasis/remote_flags.h"
#include "tools/stasis/restore_options.h"
#include "tools/stasis/row_major.h"
#include "tools/stasis/same_file.h"
#include "tools/stasis/temp_files.h"

namespace stasis::cli {
namespace {

using Json = nlohmann::ordered_json;

}  // namespace

int RunExport(const RestoreArgs& a, const std::string& output, bool force) {
  // First, while this is the only thread (interrupt.h).
  if (Status s = CleanUpOnInterrupt(output); !s.ok())
    spdlog::warn("{}; an interrupted export may leave a temporary file", s.ToString());
  const Stopwatch start;
  if (Status s = CheckOutputIsNotAnInput({a.image}, output); !s.ok()) return ReportError(s);
  RemoveTempFiles(output, TempFiles::kStale);
  if (!force && DefaultFileSystem()->Exists(output))
    return ReportError(AlreadyExistsError("'" + output + "' exists (use --force to replace it)"));
  auto options = ToRestoreOptions(a);
  if (!options.ok()) return ReportError(options.status());
  auto restored = RestoredModel::Restore(a.image, *options);
  if (!restored.ok()) return ReportError(restored.status());
  const format::Manifest& m = (*restored)->manifest();

  std::vector<SafetensorsTensorOut> out;
  std::vector<std::vector<uint8_t>> gathered;  // contiguous copies of strided views
  gathered.reserve(m.tensors.size());
  for (const RestoredTensor& t : (*restored)->tensors()) {
    ByteView bytes = RowMajorBytes(t, &gathered.emplace_back());
    out.push_back({std::string(t.name), t.dtype,
                   std::vector<int64_t>(t.shape.begin(), t.shape.end()), bytes.data, bytes.size});
  }
  std::vector<std::pair<std::string, std::string>> metadata;
  if (const std::string* md = m.FindMetadata("safetensors.metadata")) {
    auto parsed = nlohmann::json::parse(*md, nullptr, /*allow_exceptions=*/false);
    if (!parsed.is_object())
      return ReportError(DataLossError("metadata 'safetensors.metadata' is not a JSON object"));
    for (auto& [k, v] : parsed.items()) {
      if (!v.is_string())
        return ReportError(DataLossError("metadata 'safetensors.metadata' holds a non-string"));
      metadata.emplace_back(k, v.get<std::string>());
    }
  }
  Status s = WriteSafetensors(DefaultFileSystem(), output, out, metadata, force);
  if (!s.ok()) return ReportError(s);
  double secs = start.Seconds();
  const RestoreReport& r = (*restored)->report();
  if (a.json) {
    Json j = {
        {"image", ShownLocation(a.image)}, {"output", output}, {"tensors", m.tensors.size()},
        {"raw_bytes", r.raw_bytes},        {"seconds", secs},  {"restore", RestoreReportJson(r)}};
    std::cout << DumpJson(j) << "\n";
  } else {
    std::printf("exported %zu tensors (%s) to %s in %.2f s (restore %.3f s via %s)\n",
                m.tensors.size(), HumanBytes(r.raw_bytes).c_str(), output.c_str(), secs,
                r.phases.total, std::string(IoBackendName(r.io.backend)).c_str());
  }
  return kExitOk;
}

}  // namespace stasis::cli
