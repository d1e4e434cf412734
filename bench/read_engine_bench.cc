// Read engine benchmark: reads one file completely into one big buffer, the way a restore
// does (N workers, each with its own queue of `depth` reads of `chunk` bytes over its
// contiguous share of the file), with every engine in {pread, uring} x {buffered, direct}
// (and io_uring with registered buffers), and with the baseline a restore must reach
// (>= 0.9x, page cache hot): N plain threads pread-ing 8 MiB pieces into the buffer.
// Prints GB/s medians of --runs runs ("x baseline": against the mean of the baseline rows'
// medians), and checks that every mode read the same bytes.
//
//   read_engine_bench [--file PATH | --dir DIR --size-mib 1024] [--threads N] [--depth D]
//                     [--chunk-mib 8] [--runs 5] [--cold] [--modes baseline,pread-buffered,...]
//
// Hot (default): the file is read once before each mode, so buffered modes measure
// page-cache copies; direct modes always go to the device. --cold evicts the file
// (POSIX_FADV_DONTNEED) before every run instead.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"
#include "common/stopwatch.h"
#include "restore/io/read_engine.h"

namespace {

using stasis::Stopwatch;
using stasis::bench::FileSize;
using stasis::bench::Median;

using stasis::IoBackend;
using stasis::ReadEngineOptions;

// Writes `bytes` of xorshift noise (incompressible, like weights for a disk that
// compresses) in 8 MiB writes.
bool GenerateFile(const std::string& path, uint64_t bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  std::vector<uint64_t> block((8u << 20) / 8);
  uint64_t x = 0x9E3779B97F4A7C15ull;
  bool ok = true;
  for (uint64_t done = 0; done < bytes && ok;) {
    for (uint64_t& w : block) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      w = x;
    }
    const size_t n = static_cast<size_t>(std::min<uint64_t>(block.size() * 8, bytes - done));
    ok = ::write(fd, block.data(), n) == static_cast<ssize_t>(n);
    done += n;
  }
  ok = ::fsync(fd) == 0 && ok;
  ::close(fd);
  return ok;
}

void Evict(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

// Reads the file once through the page cache.
void Warm(const std::string& path, uint64_t size, int threads) {
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      std::vector<char> buf(8u << 20);
      for (uint64_t off = uint64_t(t) * buf.size(); off < size;
           off += uint64_t(threads) * buf.size())
        if (::pread(fd, buf.data(), buf.size(), static_cast<off_t>(off)) < 0) break;
      ::close(fd);
    });
  }
  for (auto& t : ts) t.join();
}

// An order-sensitive checksum of the buffer, to compare what the modes read.
uint64_t Checksum(const uint8_t* p, uint64_t n) {
  uint64_t h = 1469598103934665603ull;
  uint64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 1099511628211ull;
  }
  for (; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// [begin, end) of worker t's contiguous share, in whole chunks.
std::pair<uint64_t, uint64_t> Share(uint64_t size, uint64_t chunk, int workers, int t) {
  const uint64_t chunks = (size + chunk - 1) / chunk;
  const uint64_t per = chunks / workers, extra = chunks % workers;
  const uint64_t first = t * per + std::min<uint64_t>(t, extra);
  const uint64_t count = per + (uint64_t(t) < extra ? 1 : 0);
  return {std::min(size, first * chunk), std::min(size, (first + count) * chunk)};
}

struct Config {
  std::string path;
  uint64_t size = 0;
  int threads = 2;
  int depth = 4;
  uint64_t chunk = 8u << 20;
  uint8_t* dst = nullptr;
  uint64_t dst_size = 0;
};

// The tuned baseline: plain threads, each pread-ing 8 MiB pieces of its share.
double RunBaseline(const Config& c) {
  const uint64_t piece = 8u << 20;
  std::atomic<bool> failed{false};
  std::vector<std::thread> ts;
  std::barrier start(c.threads + 1);
  for (int t = 0; t < c.threads; ++t) {
    ts.emplace_back([&, t] {
      int fd = ::open(c.path.c_str(), O_RDONLY | O_CLOEXEC);
      auto [begin, end] = Share(c.size, piece, c.threads, t);
      start.arrive_and_wait();
      for (uint64_t off = begin; off < end;) {
        ssize_t n = ::pread(fd, c.dst + off, std::min(piece, end - off), static_cast<off_t>(off));
        if (n <= 0) {
          if (n < 0 && errno == EINTR) continue;
          failed = true;
          break;
        }
        off += static_cast<uint64_t>(n);
      }
      ::close(fd);
    });
  }
  start.arrive_and_wait();
  const Stopwatch t0;
  for (auto& t : ts) t.join();
  const double s = t0.Seconds();
  return failed ? -1 : c.size / s / 1e9;
}

// One run of an engine: queues are made (and rings registered) before the clock starts.
double RunEngine(const Config& c, stasis::ReadEngine* engine, bool fixed) {
  const uint64_t a = engine->report().alignment;
  const uint64_t fixed_piece = 512u << 20;
  std::atomic<bool> failed{false};
  std::barrier start(c.threads + 1);
  std::vector<std::thread> ts;
  for (int t = 0; t < c.threads; ++t) {
    ts.emplace_back([&, t] {
      auto q = engine->NewQueue();
      if (!q.ok()) {
        std::fprintf(stderr, "NewQueue: %s\n", q.status().ToString().c_str());
        failed = true;
      }
      auto [begin, end] = Share(c.size, c.chunk, c.threads, t);
      start.arrive_and_wait();
      if (!q.ok()) return;
      std::vector<stasis::ReadCompletion> done;
      uint64_t off = begin;
      while (!failed && (off < end || (*q)->in_flight() > 0)) {
        while (off < end && (*q)->in_flight() < (*q)->depth()) {
          const uint64_t len = (std::min(c.chunk, end - off) + a - 1) / a * a;
          int index = -1;
          if (fixed && off / fixed_piece == (off + len - 1) / fixed_piece)
            index = static_cast<int>(off / fixed_piece);
          stasis::Status s = (*q)->Submit({off, len, c.dst + off, off, index});
          if (!s.ok()) {
            std::fprintf(stderr, "Submit: %s\n", s.ToString().c_str());
            failed = true;
            break;
          }
          off += len;
        }
        done.clear();
        stasis::Status s = (*q)->Wait(1, &done);
        if (!s.ok()) {
          std::fprintf(stderr, "Wait: %s\n", s.ToString().c_str());
          failed = true;
        }
        for (const auto& d : done) {
          if (!d.status.ok()) {
            std::fprintf(stderr, "read: %s\n", d.status.ToString().c_str());
            failed = true;
          }
        }
      }
      if (failed) {
        while ((*q)->in_flight() > 0 && (*q)->Wait((*q)->in_flight(), &done).ok()) {
        }
      }
    });
  }
  start.arrive_and_wait();
  const Stopwatch t0;
  for (auto& t : ts) t.join();
  const double s = t0.Seconds();
  return failed ? -1 : c.size / s / 1e9;
}

struct Mode {
  std::string name;
  bool baseline = false;
  IoBackend backend = IoBackend::kPread;
  bool direct = false;
  bool fixed = false;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"stasis read engine benchmark"};
  std::string file, dir = "/var/tmp";
  uint64_t size_mib = 1024, chunk_mib = 8;
  int runs = 5;
  bool cold = false, keep = false;
  std::string modes_arg =
      "baseline,pread-buffered,pread-direct,uring-buffered,uring-direct,uring-direct-fixed";
  Config c;
  app.add_option("--file", file, "file to read (default: generate one in --dir)");
  app.add_option("--dir", dir, "where to generate the file")->capture_default_str();
  app.add_option("--size-mib", size_mib, "size of the generated file")->capture_default_str();
  app.add_option("--keep", keep, "keep the generated file")->capture_default_str();
  app.add_option("--threads", c.threads, "workers (queues), and baseline threads")
      ->capture_default_str();
  app.add_option("--depth", c.depth, "reads in flight per queue")->capture_default_str();
  app.add_option("--chunk-mib", chunk_mib, "bytes per read, MiB")->capture_default_str();
  app.add_option("--runs", runs, "runs per mode (median reported)")->capture_default_str();
  app.add_flag("--cold", cold, "evict the file from the page cache before every run");
  app.add_option("--modes", modes_arg, "comma-separated modes")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);

  bool generated = false;
  if (file.empty()) {
    file = dir + "/stasis-read-engine-bench-" + std::to_string(size_mib) + "MiB.bin";
    if (FileSize(file) != size_mib << 20) {
      std::printf("generating %s (%llu MiB)...\n", file.c_str(), (unsigned long long)size_mib);
      if (!GenerateFile(file, size_mib << 20)) {
        std::fprintf(stderr, "cannot write %s: %s\n", file.c_str(), std::strerror(errno));
        return 1;
      }
      generated = !keep;
    }
  }
  c.path = file;
  c.size = FileSize(file);
  c.chunk = chunk_mib << 20;
  if (c.size == 0 || c.threads < 1 || c.depth < 1 || c.chunk == 0 || runs < 1) {
    std::fprintf(stderr, "bad arguments (file size %llu)\n", (unsigned long long)c.size);
    return 1;
  }
  // One destination, touched once so page faults stay out of the timings; room for the
  // rounded-up tail of direct reads.
  c.dst_size = (c.size + (4u << 20)) / (2u << 20) * (2u << 20);
  void* mem =
      ::mmap(nullptr, c.dst_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    std::perror("mmap");
    return 1;
  }
  c.dst = static_cast<uint8_t*>(mem);
  ::madvise(mem, c.dst_size, MADV_HUGEPAGE);
  std::memset(mem, 0, c.dst_size);

  std::vector<Mode> modes;
  for (size_t pos = 0; pos <= modes_arg.size();) {
    size_t comma = std::min(modes_arg.find(',', pos), modes_arg.size());
    std::string m = modes_arg.substr(pos, comma - pos);
    pos = comma + 1;
    if (m.empty()) continue;
    Mode mode{m};
    if (m == "baseline") {
      mode.baseline = true;
    } else if (m.rfind("pread-", 0) == 0 || m.rfind("uring-", 0) == 0) {
      mode.backend = m[0] == 'p' ? IoBackend::kPread : IoBackend::kUring;
      mode.direct = m.find("-direct") != std::string::npos;
      mode.fixed = m.find("-fixed") != std::string::npos;
    } else {
      std::fprintf(stderr, "unknown mode '%s'\n", m.c_str());
      return 1;
    }
    modes.push_back(mode);
  }

  std::printf("file %s, %.2f GiB, %s; %d threads x depth %d, %llu MiB reads, %d runs, %u CPUs\n",
              file.c_str(), c.size / double(1ull << 30), cold ? "cold (evicted each run)" : "hot",
              c.threads, c.depth, (unsigned long long)chunk_mib, runs,
              std::thread::hardware_concurrency());
  struct Row {
    std::string name, note;
    double median = 0, lo = 0, hi = 0;
    bool ok = true;
  };
  std::vector<Row> rows;
  std::vector<double> baselines;  // medians of the baseline rows (list it twice to bracket)
  uint64_t reference = 0;
  bool have_reference = false;
  for (const Mode& m : modes) {
    Row row{m.name};
    std::unique_ptr<stasis::ReadEngine> engine;
    if (!m.baseline) {
      ReadEngineOptions o;
      o.backend = m.backend;
      o.direct = m.direct ? ReadEngineOptions::Direct::kOn : ReadEngineOptions::Direct::kOff;
      o.queue_depth = c.depth;
      if (m.fixed) {
        for (uint64_t off = 0; off < c.dst_size; off += 512u << 20)
          o.fixed_buffers.push_back(
              {c.dst + off, std::min<uint64_t>(512u << 20, c.dst_size - off)});
      }
      auto e = stasis::OpenReadEngine(file, o);
      if (!e.ok()) {
        row.ok = false;
        row.note = e.status().ToString();
        rows.push_back(row);
        continue;
      }
      engine = std::move(e).value();
      const auto& r = engine->report();
      if (m.direct && !r.direct) row.note = "NOT direct: " + r.direct_reason + "; ";
      if (!r.ring_flags.empty()) row.note += r.ring_flags;
      if (m.fixed)
        row.note += r.buffers_registered ? ", buffers registered" : ", buffers NOT registered";
    }
    std::vector<double> speeds;
    for (int i = 0; i < runs && row.ok; ++i) {
      if (cold) {
        Evict(file);
      } else if (i == 0) {
        Warm(file, c.size, c.threads);
      }
      if (i == runs - 1) std::memset(c.dst, 0, c.size);  // the checked run starts clean
      double gbs = m.baseline ? RunBaseline(c) : RunEngine(c, engine.get(), m.fixed);
      if (gbs < 0) row.ok = false;
      speeds.push_back(gbs);
    }
    if (row.ok) {
      const uint64_t sum = Checksum(c.dst, c.size);
      if (!have_reference) {
        reference = sum;
        have_reference = true;
      } else if (sum != reference) {
        row.ok = false;
        row.note += " CHECKSUM MISMATCH";
      }
      row.median = Median(speeds);
      row.lo = *std::min_element(speeds.begin(), speeds.end());
      row.hi = *std::max_element(speeds.begin(), speeds.end());
      if (m.baseline) baselines.push_back(row.median);
    }
    rows.push_back(row);
  }

  double baseline = 0;
  for (double b : baselines) baseline += b / baselines.size();
  std::printf("\n%-22s %9s %9s %9s %10s  %s\n", "mode", "GB/s", "min", "max", "x baseline",
              "notes");
  for (const Row& r : rows) {
    if (!r.ok) {
      std::printf("%-22s %9s %9s %9s %10s  FAILED %s\n", r.name.c_str(), "-", "-", "-", "-",
                  r.note.c_str());
      continue;
    }
    char ratio[32] = "-";
    if (baseline > 0) std::snprintf(ratio, sizeof(ratio), "%.2f", r.median / baseline);
    std::printf("%-22s %9.2f %9.2f %9.2f %10s  %s\n", r.name.c_str(), r.median, r.lo, r.hi, ratio,
                r.note.c_str());
  }
  if (generated) ::unlink(file.c_str());
  ::munmap(mem, c.dst_size);
  bool all_ok = std::all_of(rows.begin(), rows.end(), [](const Row& r) { return r.ok; });
  return all_ok ? 0 : 1;
}
