// Restore benchmark (issue 3), host backend, ratios measured side by side in one run:
//  - page cache hot, raw codec: stasis restore throughput vs a tuned multi-threaded pread
//    of the same file into memory (target >= 0.9x);
//  - page cache cold (caches dropped before every run; skipped with a message when not
//    permitted), compressed bf16 image: logical bytes restored per second vs the O_DIRECT
//    read throughput of the uncompressed bytes (target >= 1.25x: compression must pay).
// Medians of --runs runs (>= 5 by default). The images are generated, seeded: N(0, 0.02)
// bf16 weights, --mib MiB of them.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>
#include <vector>

#include "bench/bench_util.h"
#include "common/float16.h"
#include "common/stopwatch.h"
#include "stasis/image.h"
#include "stasis/restore.h"

namespace {

using stasis::Stopwatch;
using stasis::bench::FileSize;
using stasis::bench::Median;

using Json = nlohmann::ordered_json;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "restore_bench: %s\n", what.c_str());
  std::exit(1);
}

bool DropCaches() {
  ::sync();
  int fd = ::open("/proc/sys/vm/drop_caches", O_WRONLY);
  if (fd < 0) return false;
  bool ok = ::write(fd, "3", 1) == 1;
  ::close(fd);
  return ok;
}

void WriteImage(const std::string& path, stasis::CodecChoice codec, uint64_t bytes, uint64_t seed) {
  stasis::WriterOptions opt;
  opt.codec = codec;
  opt.overwrite = true;
  auto w = stasis::ImageWriter::Create(path, opt);
  if (!w.ok()) Die(w.status().ToString());
  stasis::format::RegionInfo region;
  region.size = bytes;
  region.alignment = 4096;
  uint32_t id = *(*w)->AddRegion(region);
  std::vector<uint8_t> buf(8 << 20);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  for (uint64_t off = 0; off < bytes; off += buf.size()) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), bytes - off));
    for (size_t i = 0; i + 1 < n; i += 2) {
      const uint16_t h = stasis::Float32ToBf16(dist(rng));
      std::memcpy(buf.data() + i, &h, 2);
    }
    stasis::Status s = (*w)->AddRegionData(id, off, buf.data(), n, 2);
    if (!s.ok()) Die(s.ToString());
  }
  uint64_t tensor_elems = bytes / 2;
  stasis::Status s = (*w)->AddTensor({"weights",
                                      stasis::DType::kBF16,
                                      {static_cast<int64_t>(tensor_elems)},
                                      {1},
                                      id,
                                      0,
                                      tensor_elems * 2});
  if (s.ok()) s = (*w)->Finish();
  if (!s.ok()) Die(s.ToString());
}

// The baseline: `threads` threads pread 8 MiB pieces of the file into one buffer, dealt
// out round-robin. `direct` opens with O_DIRECT. The buffer is fresh memory every run, as
// it is for a restore (a loader must put the bytes somewhere new); `huge_pages` advises
// it MADV_HUGEPAGE, as stasis does by default, so the baseline is not slowed by 4 KiB
// page faults that stasis avoids.
double ReadFileThreads(const std::string& path, int threads, bool direct, bool huge_pages = false) {
  const uint64_t size = FileSize(path);
  const uint64_t piece = 8 << 20;
  const Stopwatch start;
  int fd = ::open(path.c_str(), O_RDONLY | (direct ? O_DIRECT : 0));
  if (fd < 0) Die("open " + path + ": " + std::strerror(errno));
  void* buf =
      ::mmap(nullptr, size + piece, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buf == MAP_FAILED) Die("mmap");
  if (huge_pages) ::madvise(buf, size + piece, MADV_HUGEPAGE);
  std::atomic<uint64_t> next{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (uint64_t off = next.fetch_add(piece); off < size; off = next.fetch_add(piece)) {
        uint64_t want = std::min(piece, size - off);
        if (direct) want = (want + 4095) / 4096 * 4096;
        uint64_t done = 0;
        while (done < want) {
          ssize_t r = ::pread(fd, static_cast<char*>(buf) + off + done, want - done,
                              static_cast<off_t>(off + done));
          if (r < 0 && errno == EINTR) continue;
          if (r < 0) Die(std::string("pread: ") + std::strerror(errno));
          if (r == 0) break;
          done += static_cast<uint64_t>(r);
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  double secs = start.Seconds();
  ::munmap(buf, size + piece);
  ::close(fd);
  return secs;
}

stasis::RestoreReport Restore(const std::string& path, const stasis::RestoreOptions& o) {
  auto m = stasis::RestoredModel::Restore(path, o);
  if (!m.ok()) Die(m.status().ToString());
  return (*m)->report();  // timed inside Restore(); unmapping is not part of a cold start
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"stasis restore benchmark (host backend)"};
  std::string dir = "/var/tmp/stasis-bench";
  uint64_t mib = 1024;
  int runs = 5;
  int threads = 0;
  std::string json_path;
  bool keep = false;
  app.add_option("--dir", dir, "scratch directory on a real disk (not tmpfs)");
  app.add_option("--mib", mib, "MiB of weights in each image (default 1024)");
  app.add_option("--runs", runs, "runs per measurement; medians are reported (default 5)");
  app.add_option("--threads", threads,
                 "threads for the baselines (default: all cores); stasis uses its default");
  app.add_option("--json", json_path, "also write the results as JSON here");
  app.add_flag("--keep", keep, "keep the generated images");
  CLI11_PARSE(app, argc, argv);
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  ::mkdir(dir.c_str(), 0755);
  const std::string raw_img = dir + "/raw.stasis", bf16_img = dir + "/bf16.stasis";
  const uint64_t bytes = mib << 20;
  if (FileSize(raw_img) == 0 || !keep) WriteImage(raw_img, stasis::CodecChoice::kRaw, bytes, 1);
  if (FileSize(bf16_img) == 0 || !keep) WriteImage(bf16_img, stasis::CodecChoice::kAuto, bytes, 1);
  std::printf("restore benchmark: %llu MiB bf16 N(0,0.02), %d threads, medians of %d runs\n",
              static_cast<unsigned long long>(mib), threads, runs);
  std::printf("images: raw %.1f MiB, compressed %.1f MiB (ratio %.3f)\n",
              FileSize(raw_img) / 1048576.0, FileSize(bf16_img) / 1048576.0,
              static_cast<double>(FileSize(raw_img)) / FileSize(bf16_img));

  stasis::RestoreOptions opt;
  // stasis picks its own worker count (restore/restored_model.h); --threads sets the baselines'.
  Json out;
  out["mib"] = mib;
  out["threads"] = threads;
  out["runs"] = runs;

  // --- hot -----------------------------------------------------------------------------
  {
    ReadFileThreads(raw_img, threads, false);  // warm the cache
    ReadFileThreads(bf16_img, threads, false);
    std::vector<double> base, base_thp, raw, raw_copied, comp;
    stasis::RestoreReport last_raw, last_comp;
    // The default maps a hot raw image's pages (restore/restored_model.h, map_file); this
    // variant copies every byte like the baselines do.
    stasis::RestoreOptions copy_opt = opt;
    copy_opt.map_file = stasis::RestoreOptions::MapFile::kOff;
    for (int r = 0; r < runs; ++r) {
      std::vector<std::function<void()>> steps = {
          [&] { base.push_back(ReadFileThreads(raw_img, threads, false)); },
          [&] { base_thp.push_back(ReadFileThreads(raw_img, threads, false, true)); },
          [&] {
            last_raw = Restore(raw_img, opt);
            raw.push_back(last_raw.phases.total);
          },
          [&] { raw_copied.push_back(Restore(raw_img, copy_opt).phases.total); },
          [&] {
            last_comp = Restore(bf16_img, opt);
            comp.push_back(last_comp.phases.total);
          }};
      // Rotate the order so no side always runs first.
      for (size_t k = 0; k < steps.size(); ++k) steps[(k + r) % steps.size()]();
    }
    const double gb = static_cast<double>(bytes) / 1e9;
    const double plain_gbs = FileSize(raw_img) / 1e9 / Median(base);
    const double thp_gbs = FileSize(raw_img) / 1e9 / Median(base_thp);
    const double base_gbs = std::max(plain_gbs, thp_gbs);  // the better baseline is the one to beat
    const double raw_gbs = gb / Median(raw), comp_gbs = gb / Median(comp);
    const double copied_gbs = gb / Median(raw_copied);
    std::printf("\npage cache hot\n");
    std::printf("  %-44s %8.2f GB/s\n", "baseline: multi-threaded pread of raw image", plain_gbs);
    std::printf("  %-44s %8.2f GB/s\n", "baseline: same, into huge pages (tuned)", thp_gbs);
    std::printf(
        "  %-44s %8.2f GB/s  ratio %.3f (target >= 0.9)  [%s, %s, %llu/%llu chunks mapped]\n",
        "stasis restore, raw image", raw_gbs, raw_gbs / base_gbs,
        std::string(stasis::IoBackendName(last_raw.io.backend)).c_str(),
        last_raw.io.direct ? "O_DIRECT" : "buffered",
        static_cast<unsigned long long>(last_raw.chunks_mapped),
        static_cast<unsigned long long>(last_raw.chunks));
    std::printf("  %-44s %8.2f GB/s  ratio %.3f\n", "stasis restore, raw image, --map off",
                copied_gbs, copied_gbs / base_gbs);
    std::printf("  %-44s %8.2f GB/s  (logical bytes)\n", "stasis restore, compressed bf16 image",
                comp_gbs);
    out["hot"] = {{"baseline_pread_gb_per_s", plain_gbs},
                  {"baseline_pread_huge_pages_gb_per_s", thp_gbs},
                  {"stasis_raw_gb_per_s", raw_gbs},
                  {"ratio", raw_gbs / base_gbs},
                  {"stasis_raw_copied_gb_per_s", copied_gbs},
                  {"stasis_raw_copied_seconds", raw_copied},
                  {"chunks_mapped", last_raw.chunks_mapped},
                  {"stasis_compressed_logical_gb_per_s", comp_gbs},
                  {"baseline_seconds", base},
                  {"baseline_huge_pages_seconds", base_thp},
                  {"stasis_raw_seconds", raw},
                  {"stasis_compressed_seconds", comp},
                  {"io", std::string(stasis::IoBackendName(last_raw.io.backend))}};
  }

  // --- cold ----------------------------------------------------------------------------
  if (!DropCaches()) {
    std::printf(
        "\npage cache cold: SKIPPED (cannot write /proc/sys/vm/drop_caches: run as root)\n");
    out["cold"] = "skipped: cannot drop caches";
  } else {
    // The O_DIRECT baseline at two parallelisms: the cores, and 4x that (more reads in
    // flight is what a virtio or NVMe device wants); the better one is the baseline.
    std::vector<double> direct_raw, direct_raw_deep, comp, raw;
    stasis::RestoreReport last_comp;
    for (int r = 0; r < runs; ++r) {
      DropCaches();
      direct_raw.push_back(ReadFileThreads(raw_img, threads, true));
      DropCaches();
      direct_raw_deep.push_back(ReadFileThreads(raw_img, 4 * threads, true));
      DropCaches();
      last_comp = Restore(bf16_img, opt);
      comp.push_back(last_comp.phases.total);
      DropCaches();
      raw.push_back(Restore(raw_img, opt).phases.total);
    }
    const double gb = static_cast<double>(bytes) / 1e9;
    const double direct_shallow = gb / Median(direct_raw),
                 direct_deep = gb / Median(direct_raw_deep);
    const double direct_gbs = std::max(direct_shallow, direct_deep);
    const double comp_gbs = gb / Median(comp), raw_gbs = gb / Median(raw);
    std::printf("\npage cache cold (caches dropped before each run)\n");
    std::printf("  %-44s %8.2f GB/s\n", "baseline: O_DIRECT read, uncompressed, N threads",
                direct_shallow);
    std::printf("  %-44s %8.2f GB/s\n", "baseline: O_DIRECT read, uncompressed, 4N threads",
                direct_deep);
    std::printf("  %-44s %8.2f GB/s  ratio %.3f (target >= 1.25)  [%s, %s]\n",
                "stasis restore, compressed bf16 (logical)", comp_gbs, comp_gbs / direct_gbs,
                std::string(stasis::IoBackendName(last_comp.io.backend)).c_str(),
                last_comp.io.direct ? "O_DIRECT" : "buffered");
    std::printf("  %-44s %8.2f GB/s  ratio %.3f\n", "stasis restore, raw image", raw_gbs,
                raw_gbs / direct_gbs);
    out["cold"] = {{"baseline_odirect_gb_per_s", direct_shallow},
                   {"baseline_odirect_deep_gb_per_s", direct_deep},
                   {"stasis_compressed_logical_gb_per_s", comp_gbs},
                   {"ratio", comp_gbs / direct_gbs},
                   {"stasis_raw_gb_per_s", raw_gbs},
                   {"baseline_seconds", direct_raw},
                   {"baseline_deep_seconds", direct_raw_deep},
                   {"stasis_compressed_seconds", comp},
                   {"stasis_raw_seconds", raw}};
  }
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
  if (!keep) {
    ::unlink(raw_img.c_str());
    ::unlink(bf16_img.c_str());
  }
  return 0;
}
