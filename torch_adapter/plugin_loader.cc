#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <vector>

#include "stasis/torch_plugin.h"

namespace stasis::torch {
namespace {

struct LoadState {
  std::once_flag once;
  StatusOr<TorchPlugin*> plugin = FailedPreconditionError("torch plugin not loaded");
};

LoadState& State() {
  static LoadState* state = new LoadState();  // never destroyed: the plugin is never unloaded
  return *state;
}

std::vector<std::string> Candidates() {
  std::vector<std::string> out;
  if (const char* env = std::getenv("STASIS_TORCH_PLUGIN"); env != nullptr && *env != '\0')
    out.emplace_back(env);
  std::error_code ec;
  std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    out.push_back((exe.parent_path() / kTorchPluginFile).string());
    out.push_back((exe.parent_path().parent_path() / "lib" / kTorchPluginFile).string());
  }
  out.emplace_back(kTorchPluginFile);  // the dynamic linker's search path
  return out;
}

StatusOr<TorchPlugin*> Load() {
  std::string tried;
  for (const std::string& candidate : Candidates()) {
    const bool bare = candidate.find('/') == std::string::npos;
    if (!bare && access(candidate.c_str(), F_OK) != 0) {
      tried += "\n  " + candidate + ": not found";
      continue;
    }
    void* handle = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* err = dlerror();
      tried += "\n  " + candidate + ": " + (err ? err : "dlopen failed");
      continue;
    }
    auto abi = reinterpret_cast<int (*)()>(dlsym(handle, "stasis_torch_plugin_abi"));
    auto entry = reinterpret_cast<TorchPlugin* (*)()>(dlsym(handle, "stasis_torch_plugin"));
    auto layout = reinterpret_cast<uint64_t (*)()>(dlsym(handle, "stasis_torch_plugin_layout"));
    if (abi == nullptr || entry == nullptr || layout == nullptr)
      return FailedPreconditionError(candidate + " is not a stasis torch plugin (no entry points)");
    if (abi() != kTorchPluginAbi) {
      return FailedPreconditionError(candidate + " has plugin ABI " + std::to_string(abi()) +
                                     ", this binary needs " + std::to_string(kTorchPluginAbi) +
                                     " (mixed installations?)");
    }
    if (layout() != LayoutFingerprint()) {
      return FailedPreconditionError(candidate +
                                     " was built from other stasis sources than this binary "
                                     "(type layouts differ); rebuild both together");
    }
    TorchPlugin* plugin = entry();
    if (plugin == nullptr) return InternalError(candidate + ": plugin entry returned null");
    return plugin;
  }
  return FailedPreconditionError(
      "libtorch support is not available: could not load " + std::string(kTorchPluginFile) +
      " (build stasis with libtorch: apt-get install libtorch-dev, or set STASIS_TORCH_PLUGIN)." +
      " Tried:" + tried);
}

}  // namespace

StatusOr<TorchPlugin*> LoadTorchPlugin() {
  LoadState& s = State();
  std::call_once(s.once, [&s] { s.plugin = Load(); });
  return s.plugin;
}

StatusOr<TorchPlugin*> LoadTorchPluginFor(const std::string& device) {
  STASIS_ASSIGN_OR_RETURN(TorchPlugin * plugin, LoadTorchPlugin());
  STASIS_RETURN_IF_ERROR(plugin->LoadDeviceSupport(device));
  return plugin;
}

}  // namespace stasis::torch
