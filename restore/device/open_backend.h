// File: restore/device/open_backend.h
//
// The device backend for a device spec, chosen the way OpenReadEngine chooses a reader:
// RestoredModel::Restore calls it unless the caller passes a backend_factory. Whether the
// CUDA backend exists is decided here, once, by how the restore library was built (with
// the CUDA toolkit: STASIS_HAVE_CUDA), never by the including target.
#ifndef STASIS_RESTORE_DEVICE_OPEN_BACKEND_H_
#define STASIS_RESTORE_DEVICE_OPEN_BACKEND_H_

#include <memory>

#include "stasis/device_backend.h"
#include "stasis/status.h"

namespace stasis {

// cpu: the host backend (`huge_pages`: see NewHostBackend). cuda: the CUDA VMM backend on
// the process's driver (restore/device/cuda_backend.h). Errors: kFailedPrecondition when
// there is no usable driver or device, kNotFound for an ordinal past the devices present,
// kUnimplemented for cuda in a build without the CUDA toolkit.
StatusOr<std::unique_ptr<DeviceBackend>> OpenDeviceBackend(const DeviceSpec& device,
                                                           bool huge_pages);

}  // namespace stasis

#endif  // STASIS_RESTORE_DEVICE_OPEN_BACKEND_H_
