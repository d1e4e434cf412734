#include "tools/stasis/temp_files.h"

#include <dirent.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <filesystem>
#include <fstream>

namespace stasis::cli {
namespace {

constexpr std::string_view kMarker = ".stasis-tmp.";

// A non-empty run of decimal digits that fits `T`.
template <typename T>
bool ParseDecimal(std::string_view text, T* out) {
  if (text.empty()) return false;
  for (char c : text)
    if (c < '0' || c > '9') return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *out);
  return ec == std::errc() && end == text.data() + text.size();
}

// No such process, or a zombie: a writer killed while its parent was gone waits to be
// reaped by init, and kill(pid, 0) still succeeds on it.
bool ProcessIsGone(pid_t pid) {
  if (::kill(pid, 0) != 0) return errno == ESRCH;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  // "pid (comm) S ...": the state follows the last ')' (comm may hold one).
  const size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() &&
         (line[paren + 2] == 'Z' || line[paren + 2] == 'X');
}

}  // namespace

bool ParseTempFileName(std::string_view output_name, std::string_view name, pid_t* pid) {
  if (output_name.empty() || name.size() <= output_name.size() + kMarker.size()) return false;
  if (name.substr(0, output_name.size()) != output_name) return false;
  name.remove_prefix(output_name.size());
  if (name.substr(0, kMarker.size()) != kMarker) return false;
  name.remove_prefix(kMarker.size());
  const size_t dot = name.find('.');
  if (dot == std::string_view::npos) return false;
  unsigned long long n = 0;
  pid_t p = 0;
  if (!ParseDecimal(name.substr(0, dot), &p) || p <= 0 || !ParseDecimal(name.substr(dot + 1), &n))
    return false;
  *pid = p;
  return true;
}

std::vector<std::string> RemoveTempFiles(const std::string& output, TempFiles which) {
  std::vector<std::string> removed;
  const std::filesystem::path out(output);
  const std::string output_name = out.filename().string();
  const std::string dir = out.has_parent_path() ? out.parent_path().string() : std::string(".");
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return removed;
  std::vector<std::string> doomed;
  const pid_t self = ::getpid();
  while (const dirent* e = ::readdir(d)) {
    pid_t pid = 0;
    if (!ParseTempFileName(output_name, e->d_name, &pid)) continue;
    const bool selected =
        which == TempFiles::kOwn ? pid == self : pid != self && ProcessIsGone(pid);
    if (selected) doomed.push_back((out.parent_path() / e->d_name).string());
  }
  ::closedir(d);
  for (std::string& path : doomed) {
    if (::unlink(path.c_str()) != 0) continue;
    if (which == TempFiles::kStale)
      spdlog::warn("removed {}, left by a writer that is gone (killed or crashed)", path);
    removed.push_back(std::move(path));
  }
  return removed;
}

}  // namespace stasis::cli
