// Snapshot compression benchmark (issue 2): for seeded N(0, 0.02) weights in bf16 and f32,
// compares stasis's snapshot (the `auto` codec: byte-grouped zstd for floats) against the
// plain `zstd -1 -T0` command on the same bytes, in the same run:
//   - compression ratio: raw bytes / output file size (targets: >= 1.4 bf16, >= 1.15 f32);
//   - throughput: raw bytes / wall time, stasis vs zstd (target: >= 1.0x).
// Both read the same input file from the page cache and write their output beside it.
// Medians of --runs runs.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"
#include "common/float16.h"
#include "common/stopwatch.h"
#include "stasis/image.h"

namespace {

using stasis::Stopwatch;
using stasis::bench::FileSize;
using stasis::bench::Median;

// Seeded N(0, 0.02) weights, generated in parallel from per-block seeds so the bytes do not
// depend on the thread count.
std::vector<uint8_t> Weights(bool bf16, uint64_t bytes, uint64_t seed) {
  const size_t elem = bf16 ? 2 : 4;
  const uint64_t count = bytes / elem;
  std::vector<uint8_t> out(count * elem);
  const uint64_t block = 1 << 20;
  const uint64_t blocks = (count + block - 1) / block;
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (uint64_t b = t; b < blocks; b += threads) {
        std::mt19937_64 rng(seed * 1000003 + b);
        std::normal_distribution<float> dist(0.0f, 0.02f);
        uint64_t end = std::min(count, (b + 1) * block);
        for (uint64_t i = b * block; i < end; ++i) {
          const float f = dist(rng);
          if (bf16) {
            const uint16_t h = stasis::Float32ToBf16(f);
            std::memcpy(out.data() + 2 * i, &h, 2);
          } else {
            std::memcpy(out.data() + 4 * i, &f, 4);
          }
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  return out;
}

// Snapshots `input` (a raw weights file) the way the safetensors importer does: 4 MiB
// reads into the writer. Returns seconds.
double StasisSnapshot(const std::string& input, const std::string& output, int element_size) {
  const Stopwatch start;
  stasis::WriterOptions opt;
  opt.overwrite = true;
  auto writer = stasis::ImageWriter::Create(output, opt);
  if (!writer.ok()) {
    std::fprintf(stderr, "%s\n", writer.status().ToString().c_str());
    std::exit(1);
  }
  uint64_t size = FileSize(input);
  stasis::format::RegionInfo region;
  region.size = size;
  region.alignment = 4096;
  uint32_t id = *(*writer)->AddRegion(region);
  int fd = ::open(input.c_str(), O_RDONLY);
  std::vector<uint8_t> buf(4 << 20);
  for (uint64_t off = 0; off < size;) {
    ssize_t n = ::pread(fd, buf.data(), buf.size(), static_cast<off_t>(off));
    if (n <= 0) std::exit(1);
    stasis::Status s =
        (*writer)->AddRegionData(id, off, buf.data(), static_cast<size_t>(n), element_size);
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      std::exit(1);
    }
    off += static_cast<uint64_t>(n);
  }
  ::close(fd);
  stasis::Status s = (*writer)->Finish();
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    std::exit(1);
  }
  return start.Seconds();
}

double RunZstd(const std::string& input, const std::string& output) {
  const Stopwatch start;
  std::string cmd = "zstd -1 -T0 -q -f -o '" + output + "' '" + input + "'";
  if (std::system(cmd.c_str()) != 0) {
    std::fprintf(stderr, "zstd failed (is the zstd package installed?)\n");
    std::exit(1);
  }
  return start.Seconds();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"stasis snapshot compression benchmark"};
  std::string dir = "/tmp/stasis-bench";
  uint64_t mib = 512;
  int runs = 3;
  uint64_t seed = 42;
  std::string json_path;
  app.add_option("--dir", dir, "scratch directory (needs ~4x the data size free)");
  app.add_option("--mib", mib, "MiB of weights per dtype (default 512)");
  app.add_option("--runs", runs, "runs per measurement; medians are reported");
  app.add_option("--seed", seed);
  app.add_option("--json", json_path, "also write the results as JSON here");
  CLI11_PARSE(app, argc, argv);
  ::mkdir(dir.c_str(), 0755);

  nlohmann::ordered_json results = nlohmann::ordered_json::array();
  std::printf(
      "snapshot compression: %llu MiB per dtype, seed %llu, medians of %d runs, %u hardware "
      "threads\n",
      static_cast<unsigned long long>(mib), static_cast<unsigned long long>(seed), runs,
      std::thread::hardware_concurrency());
  std::printf("%-6s %12s %12s %10s %12s %12s %10s\n", "dtype", "stasis ratio", "zstd ratio",
              "ratio x", "stasis GB/s", "zstd GB/s", "speed x");
  for (bool bf16 : {true, false}) {
    const char* name = bf16 ? "bf16" : "f32";
    std::string raw = dir + "/" + name + ".bin";
    {
      auto bytes = Weights(bf16, mib << 20, seed);
      std::ofstream(raw, std::ios::binary)
          .write(reinterpret_cast<const char*>(bytes.data()),
                 static_cast<std::streamsize>(bytes.size()));
    }
    const double size = static_cast<double>(FileSize(raw));
    std::string img = dir + "/" + name + ".stasis", zst = dir + "/" + name + ".zst";
    std::vector<double> stasis_s, zstd_s;
    RunZstd(raw, zst);  // warm the page cache for both
    for (int r = 0; r < runs; ++r) {
      // Alternate the order so neither side always runs on a warmer machine.
      if (r % 2 == 0) {
        stasis_s.push_back(StasisSnapshot(raw, img, bf16 ? 2 : 4));
        zstd_s.push_back(RunZstd(raw, zst));
      } else {
        zstd_s.push_back(RunZstd(raw, zst));
        stasis_s.push_back(StasisSnapshot(raw, img, bf16 ? 2 : 4));
      }
    }
    double stasis_ratio = size / static_cast<double>(FileSize(img));
    double zstd_ratio = size / static_cast<double>(FileSize(zst));
    double stasis_gbs = size / Median(stasis_s) / 1e9, zstd_gbs = size / Median(zstd_s) / 1e9;
    std::printf("%-6s %12.3f %12.3f %10.3f %12.3f %12.3f %10.3f\n", name, stasis_ratio, zstd_ratio,
                stasis_ratio / zstd_ratio, stasis_gbs, zstd_gbs, stasis_gbs / zstd_gbs);
    results.push_back({{"dtype", name},
                       {"bytes", size},
                       {"stasis_ratio", stasis_ratio},
                       {"zstd_ratio", zstd_ratio},
                       {"stasis_seconds", stasis_s},
                       {"zstd_seconds", zstd_s},
                       {"stasis_gb_per_s", stasis_gbs},
                       {"zstd_gb_per_s", zstd_gbs},
                       {"speed_ratio", stasis_gbs / zstd_gbs}});
    ::unlink(raw.c_str());
    ::unlink(img.c_str());
    ::unlink(zst.c_str());
  }
  if (!json_path.empty()) std::ofstream(json_path) << results.dump(2) << "\n";
  return 0;
}
