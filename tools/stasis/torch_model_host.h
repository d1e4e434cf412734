// File: tools/stasis/torch_model_host.h
//
// The model `stasis serve` runs: a TorchScript image, cold-started with RestoreAndBind
// (the weights restored while libtorch loads through the plugin, then the skeleton bound)
// and afterwards unloaded and reloaded at the same addresses, so the bound module's tensors
// stay valid across idle cycles without rebinding.
#ifndef STASIS_TOOLS_STASIS_TORCH_MODEL_HOST_H_
#define STASIS_TOOLS_STASIS_TORCH_MODEL_HOST_H_

#include <memory>
#include <string>

#include "runtime/model_host.h"
#include "stasis/restore.h"
#include "stasis/status.h"

namespace stasis::cli {

// `options.device` says where. `yield_io`: the first restore's reads go at idle I/O
// priority while libtorch loads alongside (ColdStartOptions::loading_framework;
// options.yield_io itself is ignored).
std::unique_ptr<runtime::ModelHost> NewTorchModelHost(const std::string& image,
                                                      const RestoreOptions& options,
                                                      bool yield_io = false);

}  // namespace stasis::cli

#endif  // STASIS_TOOLS_STASIS_TORCH_MODEL_HOST_H_
