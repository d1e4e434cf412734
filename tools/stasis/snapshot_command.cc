// `stasis snapshot`: an image from a safetensors checkpoint (a file or a sharded
// index.json) or from a TorchScript module (through the torch plugin).
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/stopwatch.h"
#include "snapshot/safetensors.h"
#include "stasis/file_system.h"
#include "stasis/image.h"
#include "stasis/remote.h"
#include "stasis/torch_plugin.h"
#include "tools/stasis/cli_common.h"
#include "tools/stasis/commands.h"
#include "tools/stasis/interrupt.h"
#include "tools/stasis/same_file.h"
#include "tools/stasis/temp_files.h"

namespace stasis::cli {
namespace {

using Json = nlohmann::ordered_json;

// TorchScript archives are zip files; safetensors files start with a little-endian header
// length, never "PK\x03\x04". Only the first bytes are read, so libtorch is loaded only
// for TorchScript.
bool LooksLikeZip(const std::string& path) {
  auto f = DefaultFileSystem()->OpenRandomAccess(path);
  if (!f.ok() || (*f)->Size() < 4) return false;
  char magic[4];
  if (!(*f)->ReadExact(0, 4, magic, "magic").ok()) return false;
  return std::memcmp(magic, "PK\x03\x04", 4) == 0;
}

// The writer the flags ask for (both inputs).
StatusOr<WriterOptions> WriterOptionsFromFlags(const SnapshotArgs& a) {
  WriterOptions opt;
  STASIS_ASSIGN_OR_RETURN(opt.codec, ParseCodecChoice(a.codec));
  STASIS_ASSIGN_OR_RETURN(opt.chunk_size, ParseSize(a.chunk_size));
  opt.zstd_level = a.level;
  opt.threads = a.threads;
  opt.overwrite = a.force;
  return opt;
}

// The written image where it goes: pushed for `-o s3://` (`push` set), else where it is.
StatusOr<PushOutcome> Publish(const SnapshotArgs& a, const PushWrittenImage& push) {
  if (!push) return PushOutcome{a.output, {}, {}};
  return push();
}

int SnapshotTorchScript(const SnapshotArgs& a, const WriterOptions& writer,
                        const PushWrittenImage& push) {
  auto plugin = torch::LoadTorchPluginFor(a.device);
  if (!plugin.ok()) return ReportError(plugin.status());
  torch::TorchSnapshotOptions opt;
  opt.device = a.device;
  opt.warmup_input = a.warmup_input;
  opt.writer = writer;
  const Stopwatch start;
  torch::TorchSnapshotReport r;
  Status s = (*plugin)->SnapshotModule(a.input, a.output, opt, &r);
  if (!s.ok()) return ReportError(s);
  const double secs = start.Seconds();
  auto out = Publish(a, push);
  if (!out.ok()) return ReportError(out.status());
  const double ratio = r.writer.stored_bytes ? static_cast<double>(r.writer.raw_bytes) /
                                                   static_cast<double>(r.writer.stored_bytes)
                                             : 1.0;
  if (a.json) {
    Json j;
    j["image"] = out->location;
    j["model"] = a.input;
    j["torch_version"] = r.torch_version;
    j["device"] = a.device;
    j["parameters"] = r.parameters;
    j["buffers"] = r.buffers;
    j["storages"] = r.storages;
    j["tensor_bytes"] = r.tensor_bytes;
    j["stored_bytes"] = r.stored_bytes;
    j["skeleton_bytes"] = r.skeleton_bytes;
    j["file_size"] = r.writer.file_size;
    j["ratio"] = ratio;
    j["seconds"] = secs;
    if (push) j["push"] = out->json;
    std::cout << DumpJson(j) << "\n";
  } else {
    std::printf(
        "wrote %s: TorchScript module (torch %s, %s) with %zu parameters and %zu buffers in %zu "
        "storages, %s of weights, skeleton %s, file %s (ratio %.3f) in %.2f s\n",
        out->location.c_str(), r.torch_version.c_str(), a.device.c_str(), r.parameters, r.buffers,
        r.storages, HumanBytes(r.stored_bytes).c_str(), HumanBytes(r.skeleton_bytes).c_str(),
        HumanBytes(r.writer.file_size).c_str(), ratio, secs);
    if (push) std::printf("%s\n", out->text.c_str());
  }
  return kExitOk;
}

int SnapshotSafetensors(const SnapshotArgs& a, WriterOptions opt, const PushWrittenImage& push) {
  uint64_t input_bytes = 0;
  {
    auto f = DefaultFileSystem()->OpenRandomAccess(a.input);
    if (!f.ok()) return ReportError(f.status());
    input_bytes = (*f)->Size();
  }
  ProgressBar bar("snapshot", input_bytes, !a.quiet && !a.json);
  opt.progress = [&bar](uint64_t done) { bar.Update(done); };
  const Stopwatch start;
  auto stats = WriteSafetensorsImage(a.input, a.output, opt);
  bar.Done();
  if (!stats.ok()) return ReportError(stats.status());
  double secs = start.Seconds();
  auto out = Publish(a, push);
  if (!out.ok()) return ReportError(out.status());
  const WriterStats& st = *stats;
  double ratio = st.stored_bytes
                     ? static_cast<double>(st.raw_bytes) / static_cast<double>(st.stored_bytes)
                     : 1.0;
  if (a.json) {
    Json j;
    j["image"] = out->location;
    j["raw_bytes"] = st.raw_bytes;
    j["stored_bytes"] = st.stored_bytes;
    j["file_size"] = st.file_size;
    j["ratio"] = ratio;
    j["chunks"] = {{"raw", st.chunks_by_codec[0]},
                   {"zstd", st.chunks_by_codec[1]},
                   {"grouped", st.chunks_by_codec[2]}};
    j["seconds"] = secs;
    j["raw_gb_per_s"] = secs > 0 ? static_cast<double>(st.raw_bytes) / secs / 1e9 : 0.0;
    if (push) j["push"] = out->json;
    std::cout << DumpJson(j) << "\n";
  } else {
    std::printf(
        "wrote %s: %s of tensor data in %s (ratio %.3f; chunks raw %llu, zstd %llu, grouped %llu) "
        "in %.2f s, %.2f GB/s\n",
        out->location.c_str(), HumanBytes(st.raw_bytes).c_str(), HumanBytes(st.file_size).c_str(),
        ratio, static_cast<unsigned long long>(st.chunks_by_codec[0]),
        static_cast<unsigned long long>(st.chunks_by_codec[1]),
        static_cast<unsigned long long>(st.chunks_by_codec[2]), secs,
        secs > 0 ? static_cast<double>(st.raw_bytes) / secs / 1e9 : 0.0);
    if (push) std::printf("%s\n", out->text.c_str());
  }
  return kExitOk;
}

}  // namespace

StatusOr<WriterStats> WriteSafetensorsImage(const std::string& input, const std::string& output,
                                            const WriterOptions& options) {
  STASIS_ASSIGN_OR_RETURN(std::unique_ptr<ImageWriter> writer,
                          ImageWriter::Create(output, options));
  Status s = ImportSafetensors(DefaultFileSystem(), input, writer.get());
  if (s.ok()) s = writer->Finish();
  if (!s.ok()) {
    writer->Abandon();
    return s;
  }
  return writer->stats();
}

// The files the snapshot reads: the model and, for a sharded checkpoint, its shards (an
// index that does not parse is reported by the import).
std::vector<std::string> SnapshotInputs(const std::string& input) {
  std::vector<std::string> inputs = {input};
  if (input.size() >= 5 && input.compare(input.size() - 5, 5, ".json") == 0) {
    if (auto shards = ReadSafetensorsIndex(DefaultFileSystem(), input); shards.ok())
      inputs.insert(inputs.end(), shards->begin(), shards->end());
  }
  return inputs;
}

namespace {

// The image written at a.output, then handed to `push` when it is set.
int Snapshot(const SnapshotArgs& a, const PushWrittenImage& push) {
  if (Status s = CheckOutputIsNotAnInput(SnapshotInputs(a.input), a.output); !s.ok())
    return ReportError(s);
  RemoveTempFiles(a.output, TempFiles::kStale);
  auto writer = WriterOptionsFromFlags(a);
  if (!writer.ok()) return ReportError(writer.status());
  if (LooksLikeZip(a.input)) return SnapshotTorchScript(a, *writer, push);
  if (a.device != "cpu" || !a.warmup_input.empty()) {
    return ReportError(InvalidArgumentError(
        "--device and --warmup-input apply to TorchScript modules; " + a.input + " is not one"));
  }
  return SnapshotSafetensors(a, *writer, push);
}

}  // namespace

int RunSnapshot(const SnapshotArgs& a) {
  // s3://: written to a temporary file, then pushed (push_command.cc).
  if (IsRemoteLocation(a.output)) return SnapshotToS3(a, &Snapshot);
  // First, while this is the only thread (interrupt.h).
  if (Status s = CleanUpOnInterrupt(a.output); !s.ok())
    spdlog::warn("{}; an interrupted snapshot may leave a temporary file", s.ToString());
  return Snapshot(a, nullptr);
}

}  // namespace stasis::cli
