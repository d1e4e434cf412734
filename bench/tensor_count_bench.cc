// Tensor-count scaling (issue 16): what a checkpoint of many tiny tensors costs against one
// tensor of the same bytes. Two safetensors checkpoints of seeded N(0, 1) f32 values, one
// with --tensors tensors of --elements elements each (mixture-of-experts-style names) and
// one with a single tensor of all those elements, are imported the way `stasis snapshot`
// imports them; then, page cache hot, host backend, in this process and alternating:
//  - restore: RestoredModel::Restore wall time (RestoreReport::phases.total), default options;
//  - manifest open: ImageReader::Open wall time (header, footer, manifest read and validated).
//  - cold start: `stasis restore --json` in a fresh process (what a user or a server's cold
//    start pays): the process's wall time, and the restore's own total as it reports it.
// Printed: medians of --runs runs (>= 5), the ratio many/one of each run and its median (the
// target is <= 2), and the image sizes (the target for 100,000 x 4 bytes is < 1 MB).
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "common/logging.h"
#include "common/stopwatch.h"
#include "snapshot/safetensors.h"
#include "stasis/image.h"
#include "stasis/restore.h"

namespace {

using stasis::Stopwatch;
using stasis::bench::FileSize;
using stasis::bench::Median;

using Json = nlohmann::ordered_json;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "tensor_count_bench: %s\n", what.c_str());
  std::exit(1);
}

void Check(const stasis::Status& s) {
  if (!s.ok()) Die(s.ToString());
}

// A safetensors file of `count` f32 tensors of `elements` elements each; the bytes of all of
// them together are the same seeded stream whatever the count.
void WriteCheckpoint(const std::string& path, uint64_t count, uint64_t elements,
                     const std::vector<float>& values) {
  std::vector<stasis::SafetensorsTensorOut> out;
  out.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    stasis::SafetensorsTensorOut t;
    // Names as a mixture of experts has them (64 experts per layer).
    t.name = count == 1 ? "weight"
                        : "layers." + std::to_string(i / 64) + ".experts." +
                              std::to_string(i % 64) + ".scale";
    t.dtype = stasis::DType::kF32;
    t.shape = {static_cast<int64_t>(elements)};
    t.data = values.data() + i * elements;
    t.size = elements * sizeof(float);
    out.push_back(std::move(t));
  }
  Check(stasis::WriteSafetensors(stasis::DefaultFileSystem(), path, out, {}, /*overwrite=*/true));
}

// `stasis snapshot x.safetensors -o image`, default writer options.
void Import(const std::string& from, const std::string& image) {
  stasis::WriterOptions opt;
  opt.overwrite = true;
  auto w = stasis::ImageWriter::Create(image, opt);
  if (!w.ok()) Die(w.status().ToString());
  stasis::Status s = stasis::ImportSafetensors(stasis::DefaultFileSystem(), from, w->get());
  if (!s.ok()) {
    (*w)->Abandon();
    Die(s.ToString());
  }
  Check((*w)->Finish());
}

double RestoreSeconds(const std::string& image, uint64_t expect_tensors,
                      stasis::RestorePhases* phases = nullptr) {
  auto m = stasis::RestoredModel::Restore(image, stasis::RestoreOptions{});
  if (!m.ok()) Die(m.status().ToString());
  if ((*m)->tensors().size() != expect_tensors) Die(image + ": wrong tensor count");
  if (phases != nullptr) *phases = (*m)->report().phases;
  return (*m)->report().phases.total;  // timed inside Restore(); unmapping is not part of it
}

struct ProcessRun {
  double wall = 0;     // fork to exit
  double restore = 0;  // the restore's phases.total, as the process reports it
};

ProcessRun RestoreInProcessOfItsOwn(const std::string& image) {
  const std::string cmd = std::string(STASIS_BIN) + " restore --json '" + image + "'";
  Stopwatch t;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) Die("cannot run " + cmd);
  std::string out;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), p)) > 0;) out.append(buf, n);
  const int rc = ::pclose(p);
  ProcessRun run;
  run.wall = t.Seconds();
  if (rc != 0) Die(cmd + " failed: " + out);
  auto j = Json::parse(out, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.contains("seconds")) Die(cmd + ": no JSON report");
  run.restore = j["seconds"].get<double>();  // RestoreReport::phases.total
  return run;
}

double OpenSeconds(const std::string& image) {
  Stopwatch t;
  auto r = stasis::ImageReader::Open(image);
  const double s = t.Seconds();
  if (!r.ok()) Die(r.status().ToString());
  return s;
}

void WarmCache(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> buf(1 << 20);
  while (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0) {
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"stasis tensor-count benchmark: many tiny tensors vs one tensor of the same bytes"};
  std::string dir = "/var/tmp/stasis-bench";
  uint64_t tensors = 100000;
  uint64_t elements = 1;
  int runs = 7;
  std::string json_path;
  bool keep = false;
  app.add_option("--dir", dir, "scratch directory");
  app.add_option("--tensors", tensors,
                 "tiny tensors in the many-tensor checkpoint (default 100000)")
      ->check(CLI::Range(uint64_t{2}, uint64_t{1} << 20));
  app.add_option("--elements", elements, "f32 elements per tiny tensor (default 1: 4 bytes)")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 20));
  app.add_option("--runs", runs, "runs per measurement; medians are reported (default 7)")
      ->check(CLI::Range(5, 1000));
  app.add_option("--json", json_path, "also write the results as JSON here");
  app.add_flag("--keep", keep, "keep the checkpoints and images in --dir (to profile them)");
  CLI11_PARSE(app, argc, argv);
  stasis::InitLogging(stasis::LogFormat::kText, "warn");
  ::mkdir(dir.c_str(), 0755);

  std::vector<float> values(tensors * elements);
  std::mt19937_64 rng(1);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (float& v : values) v = dist(rng);
  const std::string many_st = dir + "/many.safetensors", one_st = dir + "/one.safetensors";
  const std::string many = dir + "/many.stasis", one = dir + "/one.stasis";
  WriteCheckpoint(many_st, tensors, elements, values);
  WriteCheckpoint(one_st, 1, tensors * elements, values);
  Stopwatch t;
  Import(many_st, many);
  const double import_many = t.Seconds();
  t.Restart();
  Import(one_st, one);
  const double import_one = t.Seconds();
  WarmCache(many);
  WarmCache(one);
  RestoreSeconds(many, tensors);  // first touches of the allocator and the code
  RestoreSeconds(one, 1);

  std::vector<double> r_many, r_one, r_ratio, o_many, o_one, o_ratio;
  std::vector<double> p_many, p_one, p_ratio, pr_many, pr_one, pr_ratio;
  stasis::RestorePhases many_phases, one_phases;
  for (int r = 0; r < runs; ++r) {
    // Alternate which side goes first.
    if (r % 2 == 0) {
      r_many.push_back(RestoreSeconds(many, tensors, &many_phases));
      r_one.push_back(RestoreSeconds(one, 1, &one_phases));
      o_many.push_back(OpenSeconds(many));
      o_one.push_back(OpenSeconds(one));
    } else {
      r_one.push_back(RestoreSeconds(one, 1, &one_phases));
      r_many.push_back(RestoreSeconds(many, tensors, &many_phases));
      o_one.push_back(OpenSeconds(one));
      o_many.push_back(OpenSeconds(many));
    }
    const bool many_first = r % 2 == 0;
    ProcessRun a = RestoreInProcessOfItsOwn(many_first ? many : one);
    ProcessRun b = RestoreInProcessOfItsOwn(many_first ? one : many);
    const ProcessRun& pm = many_first ? a : b;
    const ProcessRun& po = many_first ? b : a;
    p_many.push_back(pm.wall);
    p_one.push_back(po.wall);
    p_ratio.push_back(pm.wall / po.wall);
    pr_many.push_back(pm.restore);
    pr_one.push_back(po.restore);
    pr_ratio.push_back(pm.restore / po.restore);
    r_ratio.push_back(r_many.back() / r_one.back());
    o_ratio.push_back(o_many.back() / o_one.back());
  }
  const uint64_t bytes = tensors * elements * sizeof(float);
  std::printf(
      "tensor-count benchmark: %llu tensors of %llu bytes vs 1 tensor of %llu bytes (f32, "
      "safetensors import, host, page cache hot), medians of %d runs\n",
      static_cast<unsigned long long>(tensors),
      static_cast<unsigned long long>(elements * sizeof(float)),
      static_cast<unsigned long long>(bytes), runs);
  std::printf("  %-28s %10s %10s %8s\n", "", "many", "one", "ratio");
  std::printf("  %-28s %9.2f ms %7.2f ms %8.2f  (target <= 2)\n", "cold start: stasis restore",
              Median(p_many) * 1e3, Median(p_one) * 1e3, Median(p_ratio));
  std::printf("  %-28s %9.2f ms %7.2f ms %8.2f\n", "  its restore (\"seconds\")",
              Median(pr_many) * 1e3, Median(pr_one) * 1e3, Median(pr_ratio));
  std::printf("  %-28s %9.2f ms %7.2f ms %8.2f\n", "restore, warm process", Median(r_many) * 1e3,
              Median(r_one) * 1e3, Median(r_ratio));
  std::printf("  %-28s %9.2f ms %7.2f ms %8.2f\n", "  manifest open", Median(o_many) * 1e3,
              Median(o_one) * 1e3, Median(o_ratio));
  std::printf("  %-28s %10llu %10llu %8.2f  (target: many < 1000000)\n", "image bytes",
              static_cast<unsigned long long>(FileSize(many)),
              static_cast<unsigned long long>(FileSize(one)),
              static_cast<double>(FileSize(many)) / FileSize(one));
  std::printf("  %-28s %9.2f ms %7.2f ms\n", "import (once)", import_many * 1e3, import_one * 1e3);
  auto phases = [](const char* what, const stasis::RestorePhases& p) {
    std::printf(
        "  last %-4s restore (ms): open %.2f, map %.2f, plan %.2f, pipeline %.2f, "
        "tensor table and rest %.2f\n",
        what, p.open * 1e3, p.map * 1e3, p.plan * 1e3, p.pipeline_wall * 1e3,
        (p.total - p.open - p.map - p.plan - p.pipeline_wall) * 1e3);
  };
  phases("many", many_phases);
  phases("one", one_phases);
  if (!json_path.empty()) {
    Json out = {{"tensors", tensors},
                {"tensor_bytes", elements * sizeof(float)},
                {"runs", runs},
                {"cold_start_seconds_many", p_many},
                {"cold_start_seconds_one", p_one},
                {"cold_start_ratio_median", Median(p_ratio)},
                {"cold_start_restore_seconds_many", pr_many},
                {"cold_start_restore_seconds_one", pr_one},
                {"restore_seconds_many", r_many},
                {"restore_seconds_one", r_one},
                {"restore_ratio_median", Median(r_ratio)},
                {"open_seconds_many", o_many},
                {"open_seconds_one", o_one},
                {"image_bytes_many", FileSize(many)},
                {"image_bytes_one", FileSize(one)}};
    std::ofstream(json_path) << out.dump(2) << "\n";
  }
  if (!keep)
    for (const auto& p : {many_st, one_st, many, one}) ::unlink(p.c_str());
  return 0;
}
