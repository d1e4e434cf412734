// `stasis coldstart` (hidden): one cold start in this process, the child `stasis bench`
// spawns. The baseline is the framework's own load (torch::jit::load, or a safetensors read
// into tensors); the stasis path is RestoreAndBind (stasis/torch_plugin.h). Every phase is
// timed from the moment the parent spawned the process; the report is JSON on stdout.
#include <algorithm>
#include <atomic>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "common/clock.h"
#include "restore/report_json.h"
#include "stasis/device_backend.h"
#include "stasis/torch_plugin.h"
#include "tools/stasis/cli_common.h"
#include "tools/stasis/commands.h"
#include "tools/stasis/remote_flags.h"

namespace stasis::cli {
namespace {

using Json = nlohmann::ordered_json;

class PhaseLog {
 public:
  explicit PhaseLog(int64_t origin_ns) : origin_(origin_ns) {}
  double Now() const { return At(RealClock()->NowNanos()); }
  // Seconds from the origin to `ns`, a time of RealClock (CLOCK_MONOTONIC).
  double At(int64_t ns) const { return static_cast<double>(ns - origin_) / 1e9; }
  void Add(const std::string& name, double start, double end) {
    phases_.push_back({{"name", name}, {"start", start}, {"end", end}});
  }
  Json json() const { return phases_; }

 private:
  int64_t origin_;
  Json phases_ = Json::array();
};

// What every cold start reports at its end, whichever path and model kind.
void RecordResult(double t_ready, double t_result, const torch::InferenceResult& r,
                  uint64_t weight_bytes, Json* out) {
  (*out)["ready"] = t_ready;
  (*out)["first_result"] = t_result;
  (*out)["output"] = {{"dtype", r.dtype}, {"shape", r.shape}, {"xxh3", Hex64(r.xxh3)}};
  (*out)["weight_bytes"] = weight_bytes;
}

// The end of a checkpoint's cold start on either path: `tensors` became ready after phase
// `phase` (from `start`), and their checksum is the first result.
Status FinishTensors(torch::LoadedTensors& tensors, const char* phase, double start, PhaseLog* log,
                     Json* out) {
  const double t_ready = log->Now();
  log->Add(phase, start, t_ready);
  STASIS_ASSIGN_OR_RETURN(torch::InferenceResult result, tensors.Checksum());
  const double t_result = log->Now();
  log->Add("first result (checksum)", t_ready, t_result);
  RecordResult(t_ready, t_result, result, tensors.bytes(), out);
  return OkStatus();
}

Status ColdStartBaseline(const ColdStartArgs& a, PhaseLog* log, Json* out) {
  const double t_main = log->Now();
  auto plugin = torch::LoadTorchPluginFor(a.device);
  STASIS_RETURN_IF_ERROR(plugin.status());
  const double t_lib = log->Now();
  log->Add("library load", t_main, t_lib);
  if (a.kind == "tensors") {
    // A checkpoint without a module: read it into framework tensors (and onto the device).
    STASIS_ASSIGN_OR_RETURN(auto tensors, (*plugin)->LoadSafetensors(a.path, a.device));
    return FinishTensors(*tensors, "framework load + weight I/O", t_lib, log, out);
  }
  if (a.input.empty()) return InvalidArgumentError("--input is required for a module");
  STASIS_ASSIGN_OR_RETURN(auto module, (*plugin)->LoadModule(a.path));
  const double t_loaded = log->Now();
  log->Add("framework load + weight I/O", t_lib, t_loaded);
  STASIS_RETURN_IF_ERROR(module->ToDevice(a.device));
  const double t_ready = log->Now();
  log->Add("copy to device", t_loaded, t_ready);
  STASIS_ASSIGN_OR_RETURN(torch::InferenceResult result, module->Run(a.input));
  const double t_result = log->Now();
  log->Add("first inference", t_ready, t_result);
  RecordResult(t_ready, t_result, result, module->WeightBytes(), out);
  return OkStatus();
}

Status ColdStartStasis(const ColdStartArgs& a, PhaseLog* log, Json* out) {
  const double t_main = log->Now();
  torch::ColdStartOptions options;
  STASIS_ASSIGN_OR_RETURN(options.restore.device, ParseDeviceSpec(a.device));
  STASIS_RETURN_IF_ERROR(CheckBackendBuilt(options.restore.device));
  options.restore.threads = a.threads;
  options.restore.remote = ToRemoteOptions(a.remote);
  options.framework_first = a.library_first;
  // The weights do not need the framework: they are restored while libtorch loads, with
  // the restore's reads behind the loader's page faults (idle I/O priority) until it is
  // loaded when asked.
  std::atomic<bool> loading_framework{false};
  if (a.yield_io) options.loading_framework = &loading_framework;
  // The timeline of the restore and the library load, the same for both kinds.
  auto record = [&](const torch::ColdStart& cold) {
    const double t_lib = log->At(cold.framework_loaded_ns);
    log->Add("library load", t_main, t_lib);
    log->Add("weight I/O + copy (restore)", a.library_first ? t_lib : t_main,
             log->At(cold.restored_ns));
    (*out)["restore"] = RestoreReportJson(cold.restored->report());
    return std::max(t_lib, log->At(cold.restored_ns));  // when binding could start
  };
  if (a.kind == "tensors") {
    STASIS_ASSIGN_OR_RETURN(torch::ColdStart cold, torch::RestoreWhileLoading(a.path, options));
    const double t_bind_start = record(cold);
    STASIS_ASSIGN_OR_RETURN(auto tensors, cold.plugin->BindTensors(*cold.restored, cold.restored));
    return FinishTensors(*tensors, "bind weights", t_bind_start, log, out);
  }
  if (a.input.empty()) return InvalidArgumentError("--input is required for a module");
  STASIS_ASSIGN_OR_RETURN(torch::BoundColdStart cold, torch::RestoreAndBind(a.path, options));
  const double t_bind_start = record(cold);
  const torch::BindReport& bind = cold.bind;
  const double t_ready = log->At(cold.bound_ns);
  const double t_skeleton = std::min(t_ready, t_bind_start + bind.skeleton_load_seconds);
  log->Add("skeleton load", t_bind_start, t_skeleton);
  log->Add("bind weights", t_skeleton, t_ready);
  STASIS_ASSIGN_OR_RETURN(torch::InferenceResult result, cold.module->Run(a.input));
  const double t_result = log->Now();
  log->Add("first inference", t_ready, t_result);
  RecordResult(t_ready, t_result, result, cold.module->WeightBytes(), out);
  (*out)["bind"] = {{"parameters_bound", bind.parameters_bound},
                    {"buffers_bound", bind.buffers_bound},
                    {"nonempty_before_binding", bind.nonempty_before_binding},
                    {"skeleton_load_seconds", bind.skeleton_load_seconds},
                    {"bind_seconds", bind.bind_seconds}};
  return OkStatus();
}

}  // namespace

int RunColdStart(const ColdStartArgs& a) {
  const int64_t origin = a.spawn_ns > 0 ? a.spawn_ns : RealClock()->NowNanos();
  PhaseLog log(origin);
  const double t_main = log.Now();
  log.Add("process start", 0, t_main);
  Json out;
  out["mode"] = a.mode;
  out["device"] = a.device;
  Status s;
  if (a.kind != "module" && a.kind != "tensors") {
    s = InvalidArgumentError("--kind must be module or tensors");
  } else if (a.mode == "baseline") {
    s = ColdStartBaseline(a, &log, &out);
  } else if (a.mode == "stasis") {
    s = ColdStartStasis(a, &log, &out);
  } else {
    s = InvalidArgumentError("--mode must be baseline or stasis");
  }
  if (!s.ok()) return ReportError(s);
  out["phases"] = log.json();
  std::cout << DumpJson(out, -1) << "\n";
  return kExitOk;
}

}  // namespace stasis::cli
