// File: restore/torch_plugin_loader.h
//
// Finds and loads libstasis_torch.so (restore/torch/torch_plugin.h) on first use, so that
// binaries which never need a framework never pay for loading libtorch.
//
// Search order: $STASIS_TORCH_PLUGIN (a path to the library), the directory of the running
// executable, <that directory>/../lib, then the dynamic linker's own search path.
//
// Thread safety: LoadTorchPlugin may be called from any thread; the library is loaded once
// per process and never unloaded (libtorch does not support dlclose).
#ifndef STASIS_RESTORE_TORCH_PLUGIN_LOADER_H_
#define STASIS_RESTORE_TORCH_PLUGIN_LOADER_H_

#include <string>

#include "common/status.h"
#include "restore/torch/torch_plugin.h"

namespace stasis::torch {

inline constexpr char kTorchPluginFile[] = "libstasis_torch.so";

// Errors: kFailedPrecondition naming every place searched and the loader's message (no
// plugin: stasis was built without libtorch, or libtorch is not installed);
// kFailedPrecondition when the plugin's ABI version differs from this binary's.
StatusOr<TorchPlugin*> LoadTorchPlugin();

// LoadTorchPlugin, then what libtorch needs for `device` (TorchPlugin::LoadDeviceSupport:
// libtorch_cuda for a cuda device). What a caller that will use `device` loads first.
StatusOr<TorchPlugin*> LoadTorchPluginFor(const std::string& device);

// The path the plugin was loaded from ("" before a successful LoadTorchPlugin).
std::string LoadedTorchPluginPath();

}  // namespace stasis::torch

#endif  // STASIS_RESTORE_TORCH_PLUGIN_LOADER_H_
