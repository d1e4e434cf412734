// File: torch_adapter/archive.h
//
// TorchScript archives: recognising one without loading libtorch's reader (the zip central
// directory is read directly), and loading one.
#ifndef STASIS_TORCH_ADAPTER_ARCHIVE_H_
#define STASIS_TORCH_ADAPTER_ARCHIVE_H_

#include <torch/script.h>

#include <string>

#include "stasis/status.h"

namespace stasis::torch {

// OK when `path` is a TorchScript archive: a zip file (local-file magic "PK\3\4") whose
// central directory has an entry ending in "data.pkl". kNotFound (no file),
// kInvalidArgument "<path> is not a TorchScript archive (...)", I/O errors.
Status CheckTorchScript(const std::string& path);

// CheckTorchScript, then torch::jit::load onto the cpu. kInvalidArgument when the archive
// does not load.
StatusOr<::torch::jit::Module> LoadTorchScript(const std::string& path);

}  // namespace stasis::torch

#endif  // STASIS_TORCH_ADAPTER_ARCHIVE_H_
