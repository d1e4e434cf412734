// The `stasis` command line: snapshot, inspect, verify, restore, export, bench (and the
// hidden coldstart child of bench). Commands that need libtorch are in torch_commands.cc.
// Statuses become exit codes and messages here and nowhere else (tools/cli_common.h).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "common/file_system.h"
#include "common/hash.h"
#include "common/logging.h"
#include "restore/default_backend.h"
#include "restore/report_json.h"
#include "restore/restored_model.h"
#include "snapshot/image_reader.h"
#include "snapshot/image_writer.h"
#include "snapshot/safetensors.h"
#include "tools/cli_common.h"
#include "tools/serve_command.h"
#include "tools/torch_commands.h"

namespace stasis::cli {
namespace {

using Json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

std::string ShapeString(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

bool IsContiguous(const format::TensorInfo& t) {
  return t.strides == format::ContiguousStrides(t.shape);
}

// Copies a strided view into contiguous row-major order.
void GatherStrided(const uint8_t* base, const format::TensorInfo& t, size_t elem, uint8_t* out) {
  const size_t rank = t.shape.size();
  std::vector<int64_t> idx(rank, 0);
  uint64_t count = *format::ElementCount(t.shape);
  for (uint64_t n = 0; n < count; ++n) {
    int64_t off = 0;
    for (size_t d = 0; d < rank; ++d) off += idx[d] * t.strides[d];
    std::memcpy(out + n * elem, base + off * static_cast<int64_t>(elem), elem);
    for (size_t d = rank; d-- > 0;) {
      if (++idx[d] < t.shape[d]) break;
      idx[d] = 0;
    }
  }
}

// A tensor's elements in row-major order: its restored memory when contiguous, otherwise a
// copy gathered into `scratch` (which must outlive the returned bytes). Host restores only.
struct ByteView {
  const uint8_t* data;
  uint64_t size;
};
ByteView RowMajorBytes(const RestoredModel& model, const format::TensorInfo& t,
                       std::vector<uint8_t>* scratch) {
  const auto* data = reinterpret_cast<const uint8_t*>(model.FindTensor(t.name)->address);
  if (IsContiguous(t)) return {data, t.byte_size};
  const size_t elem = static_cast<size_t>(DTypeBits(t.dtype) / 8);
  scratch->resize(*format::ElementCount(t.shape) * elem);
  GatherStrided(data, t, elem, scratch->data());
  return {scratch->data(), scratch->size()};
}

// ---- snapshot -------------------------------------------------------------------------

struct SnapshotArgs {
  std::string input, output, codec = "auto", chunk_size = "4MiB";
  int level = 1, threads = 0;
  bool force = false, json = false, quiet = false;
};

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

int RunSnapshot(const SnapshotArgs& a) {
  WriterOptions opt;
  auto codec = ParseCodecChoice(a.codec);
  if (!codec.ok()) return ReportError(codec.status());
  opt.codec = *codec;
  auto chunk = ParseSize(a.chunk_size);
  if (!chunk.ok()) return ReportError(chunk.status());
  opt.chunk_size = *chunk;
  opt.zstd_level = a.level;
  opt.threads = a.threads;
  opt.overwrite = a.force;

  uint64_t input_bytes = 0;
  {
    auto f = DefaultFileSystem()->OpenRandomAccess(a.input);
    if (!f.ok()) return ReportError(f.status());
    input_bytes = (*f)->Size();
  }
  ProgressBar bar("snapshot", input_bytes, !a.quiet && !a.json);
  opt.progress = [&bar](uint64_t done) { bar.Update(done); };
  auto start = Clock::now();
  auto writer = ImageWriter::Create(a.output, opt);
  if (!writer.ok()) return ReportError(writer.status());
  Status s = ImportSafetensors(DefaultFileSystem(), a.input, writer->get());
  if (!s.ok()) {
    (*writer)->Abandon();
    bar.Done();
    return ReportError(s);
  }
  s = (*writer)->Finish();
  bar.Done();
  if (!s.ok()) return ReportError(s);
  double secs = Seconds(start);
  const WriterStats& st = (*writer)->stats();
  double ratio = st.stored_bytes
                     ? static_cast<double>(st.raw_bytes) / static_cast<double>(st.stored_bytes)
                     : 1.0;
  if (a.json) {
    Json j;
    j["image"] = a.output;
    j["raw_bytes"] = st.raw_bytes;
    j["stored_bytes"] = st.stored_bytes;
    j["file_size"] = st.file_size;
    j["ratio"] = ratio;
    j["chunks"] = {{"raw", st.chunks_by_codec[0]},
                   {"zstd", st.chunks_by_codec[1]},
                   {"grouped", st.chunks_by_codec[2]}};
    j["seconds"] = secs;
    j["raw_gb_per_s"] = secs > 0 ? static_cast<double>(st.raw_bytes) / secs / 1e9 : 0.0;
    std::cout << j.dump(2) << "\n";
  } else {
    std::printf(
        "wrote %s: %s of tensor data in %s (ratio %.3f; chunks raw %llu, zstd %llu, grouped %llu) "
        "in %.2f s, %.2f GB/s\n",
        a.output.c_str(), HumanBytes(st.raw_bytes).c_str(), HumanBytes(st.file_size).c_str(), ratio,
        static_cast<unsigned long long>(st.chunks_by_codec[0]),
        static_cast<unsigned long long>(st.chunks_by_codec[1]),
        static_cast<unsigned long long>(st.chunks_by_codec[2]), secs,
        secs > 0 ? static_cast<double>(st.raw_bytes) / secs / 1e9 : 0.0);
  }
  return kExitOk;
}

// ---- inspect --------------------------------------------------------------------------

int RunInspect(const std::string& path, bool json) {
  auto reader = ImageReader::Open(path);
  if (!reader.ok()) return ReportError(reader.status());
  const format::Manifest& m = (*reader)->manifest();
  uint64_t raw = 0, stored = 0, by_codec[3] = {0, 0, 0}, raw_by_codec[3] = {0, 0, 0},
           stored_by_codec[3] = {0, 0, 0};
  for (const auto& c : m.chunks) {
    int k = static_cast<int>(c.codec);
    raw += c.raw_size;
    stored += c.stored_size;
    by_codec[k]++;
    raw_by_codec[k] += c.raw_size;
    stored_by_codec[k] += c.stored_size;
  }
  double ratio = stored ? static_cast<double>(raw) / static_cast<double>(stored) : 1.0;
  if (json) {
    Json j;
    j["image"] = path;
    j["format_version"] = format::kFormatVersion;
    j["file_size"] = (*reader)->footer().file_size;
    j["raw_bytes"] = raw;
    j["stored_bytes"] = stored;
    j["ratio"] = ratio;
    Json codecs = Json::object();
    for (int k = 0; k < 3; ++k)
      codecs[std::string(format::CodecName(static_cast<format::Codec>(k)))] = {
          {"chunks", by_codec[k]},
          {"raw_bytes", raw_by_codec[k]},
          {"stored_bytes", stored_by_codec[k]}};
    j["codecs"] = codecs;
    j["regions"] = Json::array();
    for (size_t i = 0; i < m.regions.size(); ++i) {
      const auto& r = m.regions[i];
      j["regions"].push_back(
          {{"id", i},
           {"device", r.device_kind == format::DeviceKind::kCpu ? "cpu" : "cuda"},
           {"ordinal", r.device_ordinal},
           {"size", r.size},
           {"alignment", r.alignment},
           {"va_hint", r.va_hint}});
    }
    j["tensors"] = Json::array();
    for (const auto& t : m.tensors) {
      j["tensors"].push_back({{"name", t.name},
                              {"dtype", std::string(DTypeName(t.dtype))},
                              {"shape", t.shape},
                              {"strides", t.strides},
                              {"region", t.region_id},
                              {"offset", t.byte_offset},
                              {"bytes", t.byte_size}});
    }
    j["sections"] = Json::array();
    for (const auto& s : m.sections)
      j["sections"].push_back({{"name", s.name}, {"size", s.size}, {"file_offset", s.file_offset}});
    j["metadata"] = Json::object();
    for (const auto& [k, v] : m.metadata) j["metadata"][k] = v;
    std::cout << j.dump(2) << "\n";
    return kExitOk;
  }
  std::printf("image     %s (format v%u, %s)\n", path.c_str(), format::kFormatVersion,
              HumanBytes((*reader)->footer().file_size).c_str());
  std::printf("data      %s raw, %s stored, ratio %.3f\n", HumanBytes(raw).c_str(),
              HumanBytes(stored).c_str(), ratio);
  for (int k = 0; k < 3; ++k) {
    if (by_codec[k] == 0) continue;
    std::printf("  %-8s %llu chunks, %s -> %s\n",
                std::string(format::CodecName(static_cast<format::Codec>(k))).c_str(),
                static_cast<unsigned long long>(by_codec[k]), HumanBytes(raw_by_codec[k]).c_str(),
                HumanBytes(stored_by_codec[k]).c_str());
  }
  std::printf("regions   %zu\n", m.regions.size());
  for (size_t i = 0; i < m.regions.size(); ++i) {
    const auto& r = m.regions[i];
    std::printf(
        "  #%zu %s%s %s align %llu va_hint 0x%llx\n", i,
        r.device_kind == format::DeviceKind::kCpu ? "cpu" : "cuda:",
        r.device_kind == format::DeviceKind::kCpu ? "" : std::to_string(r.device_ordinal).c_str(),
        HumanBytes(r.size).c_str(), static_cast<unsigned long long>(r.alignment),
        static_cast<unsigned long long>(r.va_hint));
  }
  std::printf("tensors   %zu\n", m.tensors.size());
  for (const auto& t : m.tensors) {
    std::printf("  %-48s %-6s %-20s region %u +%llu\n", t.name.c_str(),
                std::string(DTypeName(t.dtype)).c_str(), ShapeString(t.shape).c_str(), t.region_id,
                static_cast<unsigned long long>(t.byte_offset));
  }
  std::printf("sections  %zu\n", m.sections.size());
  for (const auto& s : m.sections)
    std::printf("  %s %s\n", s.name.c_str(), HumanBytes(s.size).c_str());
  std::printf("metadata  %zu\n", m.metadata.size());
  for (const auto& [k, v] : m.metadata) {
    std::string shown = v.size() > 120 ? v.substr(0, 117) + "..." : v;
    std::printf("  %s = %s\n", k.c_str(), shown.c_str());
  }
  return kExitOk;
}

// ---- verify ---------------------------------------------------------------------------

int RunVerify(const std::string& path, int threads, bool json) {
  auto start = Clock::now();
  auto reader = ImageReader::Open(path);
  if (!reader.ok()) {
    if (json) {
      Json j = {{"image", path}, {"intact", false}, {"errors", {reader.status().ToString()}}};
      std::cout << j.dump(2) << "\n";
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
  double secs = Seconds(start);
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
    std::cout << j.dump(2) << "\n";
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

// ---- restore / export: both run the restore engine --------------------------------

struct RestoreArgs {
  std::string image, device = "cpu", io = "auto", direct = "auto";
  int threads = 0, queue_depth = 32;
  uint64_t staging_mb = 256;
  bool no_verify = false, no_checksums = false, json = false, digest = false;
  std::string huge_pages = "off";
  std::string map = "auto";
};

StatusOr<RestoreOptions> ToRestoreOptions(const RestoreArgs& a) {
  RestoreOptions o;
  STASIS_ASSIGN_OR_RETURN(o.device, ParseDeviceSpec(a.device));
  STASIS_ASSIGN_OR_RETURN(o.io, ParseIoBackend(a.io));
  if (a.direct == "auto")
    o.direct = ReadEngineOptions::Direct::kAuto;
  else if (a.direct == "on")
    o.direct = ReadEngineOptions::Direct::kOn;
  else if (a.direct == "off")
    o.direct = ReadEngineOptions::Direct::kOff;
  else
    return InvalidArgumentError("--direct must be auto, on or off");
  // --queue-depth is bounded by RestoredModel::Restore (2..4096), where every caller meets it.
  if (a.staging_mb < 1 || a.staging_mb > (64u << 10))
    return InvalidArgumentError("--staging-mb must be 1..65536");
  o.threads = a.threads;
  o.queue_depth = a.queue_depth;
  o.staging_bytes = a.staging_mb << 20;
  o.verify = !a.no_verify && !a.no_checksums;
  o.verify_stored = !a.no_checksums;
  o.huge_pages = a.huge_pages == "on";
  o.map_file = a.map == "on"    ? RestoreOptions::MapFile::kOn
               : a.map == "off" ? RestoreOptions::MapFile::kOff
                                : RestoreOptions::MapFile::kAuto;
  STASIS_RETURN_IF_ERROR(UseDefaultBackend(&o));
  return o;
}

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

// `model` must be a host restore (RunRestore refuses --digest for other devices first).
TensorsDigest DigestTensors(const RestoredModel& model) {
  auto start = Clock::now();
  std::vector<std::pair<std::string, uint64_t>> hashes;
  hashes.reserve(model.manifest().tensors.size());
  std::vector<uint8_t> scratch;
  for (const format::TensorInfo& t : model.manifest().tensors) {
    ByteView bytes = RowMajorBytes(model, t, &scratch);
    hashes.emplace_back(t.name, Xxh3(bytes.data, bytes.size));
  }
  TensorsDigest d;
  d.tensors = hashes.size();
  d.xxh3 = CombineTensorHashes(std::move(hashes));
  d.seconds = Seconds(start);
  return d;
}

int RunRestore(const RestoreArgs& a) {
  auto options = ToRestoreOptions(a);
  if (!options.ok()) return ReportError(options.status());
  if (a.digest && options->device.kind != format::DeviceKind::kCpu)
    return ReportError(
        InvalidArgumentError("--digest reads restored bytes on the host: use --device cpu"));
  auto model = RestoredModel::Restore(a.image, *options);
  if (!model.ok()) return ReportError(model.status());
  TensorsDigest digest;
  if (a.digest) digest = DigestTensors(**model);
  const std::string hex = Hex64(digest.xxh3);
  if (a.json) {
    Json j = RestoreReportJson((*model)->report());
    if (a.digest)
      j["digest"] = {{"xxh3", hex}, {"tensors", digest.tensors}, {"seconds", digest.seconds}};
    std::cout << j.dump(2) << "\n";
  } else {
    PrintReport((*model)->report());
    if (a.digest)
      std::printf("  digest of %zu tensors: %s (%.3f s, after the restore)\n", digest.tensors,
                  hex.c_str(), digest.seconds);
  }
  return kExitOk;
}

int RunExport(const RestoreArgs& a, const std::string& output, bool force) {
  auto start = Clock::now();
  if (!force && DefaultFileSystem()->Exists(output))
    return ReportError(AlreadyExistsError("'" + output + "' exists (use --force to replace it)"));
  auto options = ToRestoreOptions(a);
  if (!options.ok()) return ReportError(options.status());
  auto model = RestoredModel::Restore(a.image, *options);
  if (!model.ok()) return ReportError(model.status());
  const format::Manifest& m = (*model)->manifest();

  std::vector<SafetensorsTensorOut> out;
  std::vector<std::vector<uint8_t>> gathered;  // contiguous copies of strided views
  gathered.reserve(m.tensors.size());
  for (const auto& t : m.tensors) {
    ByteView bytes = RowMajorBytes(**model, t, &gathered.emplace_back());
    out.push_back({t.name, t.dtype, t.shape, bytes.data, bytes.size});
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
  double secs = Seconds(start);
  const RestoreReport& r = (*model)->report();
  if (a.json) {
    Json j = {{"image", a.image},         {"output", output}, {"tensors", m.tensors.size()},
              {"raw_bytes", r.raw_bytes}, {"seconds", secs},  {"restore", RestoreReportJson(r)}};
    std::cout << j.dump(2) << "\n";
  } else {
    std::printf("exported %zu tensors (%s) to %s in %.2f s (restore %.3f s via %s)\n",
                m.tensors.size(), HumanBytes(r.raw_bytes).c_str(), output.c_str(), secs,
                r.phases.total, std::string(IoBackendName(r.io.backend)).c_str());
  }
  return kExitOk;
}

void AddRestoreFlags(CLI::App* cmd, RestoreArgs* a) {
  cmd->add_option("--io", a->io, "reader: auto|uring|pread")
      ->check(CLI::IsMember({"auto", "uring", "pread"}));
  cmd->add_option("--direct", a->direct, "O_DIRECT: auto (when the file is not cached)|on|off")
      ->check(CLI::IsMember({"auto", "on", "off"}));
  cmd->add_option("--threads", a->threads, "pipeline workers (default: all cores)");
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
}

}  // namespace
}  // namespace stasis::cli

int main(int argc, char** argv) {
  using namespace stasis::cli;
  CLI::App app{"stasis: snapshot model tensors into a checksummed image and restore them fast"};
  app.set_version_flag("--version", "stasis " STASIS_VERSION_STRING);
  app.require_subcommand(1);
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "log what the engine decides (to stderr)");

  SnapshotArgs snap;
  auto* snapshot = app.add_subcommand(
      "snapshot",
      "Snapshot a safetensors model (file or index.json) or a TorchScript module into an image");
  snapshot
      ->add_option("model", snap.input,
                   "model.safetensors, model.safetensors.index.json or model.pt (TorchScript)")
      ->required();
  snapshot->add_option("-o,--output", snap.output, "image to write")->required();
  snapshot->add_option("--codec", snap.codec, "auto|raw|zstd")
      ->check(CLI::IsMember({"auto", "raw", "zstd"}));
  snapshot->add_option("--level", snap.level, "zstd level (default 1)");
  snapshot->add_option("--chunk-size", snap.chunk_size, "raw bytes per chunk (default 4MiB)");
  snapshot->add_option("--threads", snap.threads, "compression threads (default: all cores)");
  snapshot->add_flag("--force", snap.force, "replace an existing image");
  snapshot->add_flag("--json", snap.json, "print a JSON report");
  snapshot->add_flag("-q,--quiet", snap.quiet, "no progress bar");
  std::string snap_device = "cpu", snap_warmup;
  snapshot->add_option("--device", snap_device,
                       "TorchScript: load and warm up the module on cpu|cuda[:N] (default cpu)");
  snapshot->add_option("--warmup-input", snap_warmup,
                       "TorchScript: run forward once on this input first, and record it "
                       "(e.g. i64:1x64:50257 = int64 [1,64] tokens below 50257)");

  ColdStartArgs cold;
  auto* coldstart = app.add_subcommand("coldstart", "One timed cold start (run by `bench`)");
  coldstart->group("");  // internal: not listed in --help
  coldstart->add_option("--mode", cold.mode, "baseline|stasis")->required();
  coldstart->add_option("path", cold.path, "model.pt (baseline) or image (stasis)")->required();
  coldstart->add_option("--device", cold.device);
  coldstart->add_option("--input", cold.input);
  coldstart->add_option("--kind", cold.kind, "module (default) | tensors");
  coldstart->add_option("--spawn-ns", cold.spawn_ns);
  coldstart->add_option("--threads", cold.threads);
  coldstart->add_flag("--library-first", cold.library_first);
  coldstart->add_flag("--yield-io", cold.yield_io);

  ServeArgs serve_args;
  auto* serve = app.add_subcommand(
      "serve", "Serve a TorchScript image over HTTP with a cold/warm lifecycle (docs/runtime.md)");
  serve->add_option("image", serve_args.image, "image made from model.pt")->required();
  serve->add_option("--device", serve_args.device, "cpu|cuda[:N] (default cpu)");
  serve->add_option("--host", serve_args.host, "address to bind (default 127.0.0.1)");
  serve->add_option("--port", serve_args.port, "port (default 8000; 0: any free port)");
  serve->add_option("--idle-timeout", serve_args.idle_timeout,
                    "unload (or exit) after this long without requests: 30s, 500ms, 2m, never");
  serve->add_flag("--yield-io", serve_args.yield_io,
                  "first restore at idle I/O priority while libtorch loads (helps small models "
                  "on a cold disk; docs/restore-pipeline.md)");
  serve->add_option("--retry-backoff", serve_args.retry_backoff,
                    "after a failed restore, retry it by itself this long later, doubling per "
                    "failure up to 60s (default 1s; never: only requests retry)");
  serve->add_option("--on-idle", serve_args.on_idle, "unload (default) | exit")
      ->check(CLI::IsMember({"unload", "exit"}));
  serve->add_option("--max-concurrency", serve_args.max_concurrency,
                    "inferences at once (default 1)");
  serve->add_option("--queue", serve_args.queue, "inferences waiting; more get 503 (default 64)");
  serve->add_option("--request-timeout", serve_args.request_timeout,
                    "longest wait for a slot (default 60s)");
  serve->add_option("--max-body", serve_args.max_body, "largest request body (default 256MiB)");
  serve->add_option("--file-root", serve_args.file_root,
                    "directory file:// inputs may be read from (default: none allowed)");
  serve
      ->add_option("--http-inputs", serve_args.http_inputs,
                   "hosts http:// inputs may be fetched from: HOST or HOST:PORT, comma-separated, "
                   "* for any (default: none allowed)")
      ->delimiter(',');
  serve->add_option("--threads", serve_args.threads, "HTTP worker threads");
  serve->add_flag("--warmup", serve_args.warmup, "restore at start, not on the first request");
  serve->add_option("--token-file", serve_args.token_file,
                    "require 'Authorization: Bearer <token>' (all but /healthz)");
  serve->add_option("--log-format", serve_args.log_format, "text (default) | json")
      ->check(CLI::IsMember({"text", "json"}));

  BenchArgs bench_args;
  auto* bench = app.add_subcommand(
      "bench",
      "Cold starts in fresh processes: torch::jit::load (or a safetensors read) vs stasis");
  bench
      ->add_option("model", bench_args.model,
                   "TorchScript model (model.pt) or a safetensors checkpoint")
      ->required();
  bench->add_option("--image", bench_args.image,
                    "its stasis image (default: <out>/<model>.stasis, made when missing)");
  bench->add_option("--device", bench_args.device, "cpu|cuda[:N] (default cpu)");
  bench->add_option("--runs", bench_args.runs, "runs per path and cache state (default 5)");
  bench->add_option("--input", bench_args.input,
                    "input of the first inference (default: the one the image records)");
  bench->add_option("--out", bench_args.out, "where bench.json and bench.svg go");
  bench
      ->add_option("--codec", bench_args.codec,
                   "codec of the image bench makes: raw (default: a page-cache-hot raw image "
                   "is mapped, not copied) | auto | zstd")
      ->check(CLI::IsMember({"auto", "raw", "zstd"}));
  bench->add_option("--threads", bench_args.threads, "restore workers (default: all cores)");
  bench->add_flag("--cold", bench_args.cold, "also measure with the page cache dropped");
  bench->add_flag("!--no-hot", bench_args.hot, "skip the page-cache-hot runs");
  bench->add_flag("--resnapshot", bench_args.force_snapshot, "snapshot again even if fresh");
  bench->add_flag("--yield-io", bench_args.yield_io,
                  "stasis path: restore at idle I/O priority while libtorch loads");

  std::string image, output;
  bool json = false, force = false;
  int threads = 0;
  auto* inspect = app.add_subcommand(
      "inspect", "Show an image's regions, tensors, sections, metadata and codec mix");
  inspect->add_option("image", image)->required();
  inspect->add_flag("--json", json);

  auto* verify =
      app.add_subcommand("verify", "Check every byte of an image; exit 0 only if intact");
  verify->add_option("image", image)->required();
  verify->add_option("--threads", threads);
  verify->add_flag("--json", json);

  RestoreArgs restore_args;
  auto* restore =
      app.add_subcommand("restore", "Restore an image onto a device and report each phase");
  restore->add_option("image", restore_args.image)->required();
  restore->add_option("--device", restore_args.device, "cpu|cuda[:N] (default cpu)");
  AddRestoreFlags(restore, &restore_args);
  restore->add_flag("--digest", restore_args.digest,
                    "then print a digest of every tensor's bytes (as bench/peers computes it)");

  RestoreArgs export_args;
  auto* exp = app.add_subcommand("export", "Restore an image to host memory and write safetensors");
  exp->add_option("image", export_args.image)->required();
  exp->add_option("-o,--output", output)->required();
  exp->add_flag("--force", force, "replace an existing output file");
  AddRestoreFlags(exp, &export_args);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }
  // Logs go to stderr, never stdout: --json output must stay parseable.
  // `serve` sets up its own logging (--log-format); InitLogging runs once per process.
  if (!*serve) stasis::InitLogging(stasis::LogFormat::kText, verbose ? "info" : "warn");
  if (*snapshot) {
    if (LooksLikeZip(snap.input)) {
      TorchSnapshotArgs t;
      t.input = snap.input;
      t.output = snap.output;
      t.device = snap_device;
      t.warmup_input = snap_warmup;
      t.codec = snap.codec;
      t.chunk_size = snap.chunk_size;
      t.level = snap.level;
      t.threads = snap.threads;
      t.force = snap.force;
      t.json = snap.json;
      return RunTorchSnapshot(t);
    }
    if (snap_device != "cpu" || !snap_warmup.empty()) {
      return ReportError(stasis::InvalidArgumentError(
          "--device and --warmup-input apply to TorchScript modules; " + snap.input +
          " is not one"));
    }
    return RunSnapshot(snap);
  }
  if (*coldstart) return RunColdStart(cold);
  if (*serve) {
    serve_args.verbose = verbose;
    return RunServe(serve_args);
  }
  if (*bench) return RunBench(bench_args);
  if (*inspect) return RunInspect(image, json);
  if (*verify) return RunVerify(image, threads, json);
  if (*restore) return RunRestore(restore_args);
  if (*exp) return RunExport(export_args, output, force);
  return kExitUsage;
}
