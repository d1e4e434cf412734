// File: bench/bench_util.h
//
// What the benchmarks share: medians and file sizes.
#ifndef STASIS_BENCH_BENCH_UTIL_H_
#define STASIS_BENCH_BENCH_UTIL_H_

#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace stasis::bench {

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Size of a file, 0 when it cannot be stat'ed.
inline uint64_t FileSize(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

}  // namespace stasis::bench

#endif  // STASIS_BENCH_BENCH_UTIL_H_
