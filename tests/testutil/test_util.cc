#include "tests/testutil/test_util.h"

#include <dirent.h>
#include <ftw.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/float16.h"
#include "snapshot/dtype.h"

namespace stasis::testing {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/stasis-test-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp failed: " << std::strerror(errno);
  }
  path_ = buf.data();
}

// POSIX calls, not std::filesystem: PyTorch's pip wheels (2.5 onwards, 2.11 included)
// export a statically linked copy of libstdc++'s std::filesystem from libtorch.so
// (pytorch/pytorch#133437), and a test linked against them binds to that copy, whose
// remove_all crashes.
TempDir::~TempDir() {
  ::nftw(
      path_.c_str(),
      [](const char* path, const struct stat*, int type, struct FTW*) {
        // Errors are ignored: remove what can be removed.
        if (type == FTW_DP) {
          ::rmdir(path);
        } else {
          ::unlink(path);
        }
        return 0;
      },
      16, FTW_DEPTH | FTW_PHYS);
}

std::vector<std::string> TempDir::List() const {
  std::vector<std::string> out;
  if (DIR* dir = ::opendir(path_.c_str())) {
    while (const struct dirent* e = ::readdir(dir)) {
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0)
        out.push_back(e->d_name);
    }
    ::closedir(dir);
  }
  std::sort(out.begin(), out.end());
  return out;
}

uint64_t TestSeed() {
  static const uint64_t seed = [] {
    const char* env = std::getenv("STASIS_TEST_SEED");
    uint64_t s = env ? std::strtoull(env, nullptr, 0) : 20261128;
    std::fprintf(stderr, "[stasis] test seed %llu (set STASIS_TEST_SEED to replay)\n",
                 static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

std::vector<uint8_t> RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> out(n);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    std::memcpy(out.data() + i, &v, 8);
  }
  for (; i < n; ++i) out[i] = static_cast<uint8_t>(rng());
  return out;
}

namespace {
std::vector<float> NormalFloats(size_t count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  std::vector<float> v(count);
  for (auto& x : v) x = dist(rng);
  return v;
}
}  // namespace

std::vector<uint8_t> NormalF32Bytes(size_t count, uint64_t seed) {
  auto v = NormalFloats(count, seed);
  std::vector<uint8_t> out(count * 4);
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

std::vector<uint8_t> NormalBF16Bytes(size_t count, uint64_t seed) {
  auto v = NormalFloats(count, seed);
  std::vector<uint8_t> out(count * 2);
  for (size_t i = 0; i < count; ++i) {
    uint16_t h = Float32ToBf16(v[i]);
    std::memcpy(out.data() + 2 * i, &h, 2);
  }
  return out;
}

namespace {

// Runs `cmd` with /bin/sh; captures its stdout. exit_code -1 when it did not exit normally.
CommandResult Popen(const std::string& cmd) {
  CommandResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace

CommandResult RunCommand(const std::string& shell_cmd, const TempDir& dir) {
  const std::string err_file = dir.File("stderr.txt");
  CommandResult r = Popen(shell_cmd + " 2>" + err_file);
  r.err = ReadFile(err_file);
  return r;
}

CommandResult RunThisTestBinary(const std::string& env_assignment,
                                const std::string& gtest_filter) {
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return CommandResult{};
  self[n] = '\0';
  return Popen(env_assignment + " '" + self + "' --gtest_filter=" + gtest_filter + " 2>&1");
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace stasis::testing
