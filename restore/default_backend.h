// File: restore/default_backend.h
//
// The device backend a caller gets when it names a device and sets no
// RestoreOptions::backend_factory: the host backend for cpu (chosen inside
// RestoredModel::Restore), the CUDA VMM backend (restore/cuda/cuda_backend.h) for cuda.
//
// Header-only and of internal linkage on purpose: whether the CUDA backend exists is a
// property of the calling target (it links stasis_restore_cuda and defines
// STASIS_HAVE_CUDA=1), not of stasis_restore, which must not depend on the layer that
// implements one of its interfaces.
#pragma once

#include "common/status.h"
#include "restore/restored_model.h"
#ifdef STASIS_HAVE_CUDA
#include "restore/cuda/cuda_backend.h"
#endif

namespace stasis {

// Sets options->backend_factory for a cuda device unless the caller already set one.
// Errors: Unimplemented for a cuda device when this build has no CUDA backend.
[[maybe_unused]] static Status UseDefaultBackend(RestoreOptions* options) {
  if (options->backend_factory || options->device.kind != format::DeviceKind::kCuda)
    return OkStatus();
#ifdef STASIS_HAVE_CUDA
  options->backend_factory = [](const DeviceSpec& d) { return OpenCudaBackend(d.ordinal); };
  return OkStatus();
#else
  return UnimplementedError(
      "this stasis was built without CUDA (STASIS_WITH_CUDA=OFF or no toolkit)");
#endif
}

}  // namespace stasis
