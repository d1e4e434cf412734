// File: restore/device/cuda_driver.h
//
// The CUDA driver API as a table of function pointers, filled at run time by dlopen of
// libcuda.so.1. stasis never links libcuda, for two reasons:
//   - the same binary starts on machines without an NVIDIA driver (the cuda backend then
//     reports kFailedPrecondition, everything else works);
//   - tests hand the backend a table whose entries point into a fake driver that keeps
//     "device" memory on the host, records calls and injects failures
//     (tests/testutil/fake_cuda_driver.h).
//
// Each member has the exact type of the driver function of the same name, as <cuda.h>
// declares it. Several names in <cuda.h> are macros for versioned symbols (cuMemGetInfo is
// cuMemGetInfo_v2, cuMemcpyHtoDAsync is cuMemcpyHtoDAsync_v2, ...). Those macros rename the
// members too, in every translation unit alike, so `api.cuMemGetInfo(...)` calls the
// member typed as cuMemGetInfo_v2, and the loader resolves the symbol cuMemGetInfo_v2: the
// same binding a program linked against libcuda with these headers would get. Every
// symbol used exists in drivers since CUDA 11.0 (the newest, cuDevicePrimaryCtxRelease_v2).
//
// <cuda.h> is included only by restore/device/cuda_* and by tests; the rest of stasis sees
// the device through stasis/device_backend.h.
//
// Thread safety: a loaded table is immutable; the driver functions are thread-safe.
#ifndef STASIS_RESTORE_DEVICE_CUDA_DRIVER_H_
#define STASIS_RESTORE_DEVICE_CUDA_DRIVER_H_

#include <cuda.h>

#include <string>
#include <string_view>

#include "stasis/status.h"

#if defined(CUDA_API_PER_THREAD_DEFAULT_STREAM)
// The per-thread-default-stream variants (_ptsz/_ptds) would be resolved instead; the
// backend uses its own non-blocking stream and wants the plain symbols.
#error "restore/device/cuda_* must be built without CUDA_API_PER_THREAD_DEFAULT_STREAM"
#endif

namespace stasis {

struct CudaDriverApi {
#define STASIS_CUDA_API_ENTRY_(name) decltype(&::name) name = nullptr
  // Initialisation and devices.
  STASIS_CUDA_API_ENTRY_(cuInit);
  STASIS_CUDA_API_ENTRY_(cuDriverGetVersion);
  STASIS_CUDA_API_ENTRY_(cuDeviceGet);
  STASIS_CUDA_API_ENTRY_(cuDeviceGetCount);
  STASIS_CUDA_API_ENTRY_(cuDeviceGetAttribute);
  // Contexts: the backend works in the device's primary context, shared with the CUDA
  // runtime (and so with PyTorch) in the same process.
  STASIS_CUDA_API_ENTRY_(cuDevicePrimaryCtxRetain);
  STASIS_CUDA_API_ENTRY_(cuDevicePrimaryCtxRelease);
  STASIS_CUDA_API_ENTRY_(cuCtxGetCurrent);
  STASIS_CUDA_API_ENTRY_(cuCtxSetCurrent);
  STASIS_CUDA_API_ENTRY_(cuCtxSynchronize);
  // Virtual memory management.
  STASIS_CUDA_API_ENTRY_(cuMemGetAllocationGranularity);
  STASIS_CUDA_API_ENTRY_(cuMemAddressReserve);
  STASIS_CUDA_API_ENTRY_(cuMemAddressFree);
  STASIS_CUDA_API_ENTRY_(cuMemCreate);
  STASIS_CUDA_API_ENTRY_(cuMemRelease);
  STASIS_CUDA_API_ENTRY_(cuMemMap);
  STASIS_CUDA_API_ENTRY_(cuMemUnmap);
  STASIS_CUDA_API_ENTRY_(cuMemSetAccess);
  STASIS_CUDA_API_ENTRY_(cuMemGetInfo);
  // Pinned staging memory.
  STASIS_CUDA_API_ENTRY_(cuMemHostRegister);
  STASIS_CUDA_API_ENTRY_(cuMemHostUnregister);
  // Streams, events, copies.
  STASIS_CUDA_API_ENTRY_(cuStreamCreate);
  STASIS_CUDA_API_ENTRY_(cuStreamDestroy);
  STASIS_CUDA_API_ENTRY_(cuStreamSynchronize);
  STASIS_CUDA_API_ENTRY_(cuEventCreate);
  STASIS_CUDA_API_ENTRY_(cuEventDestroy);
  STASIS_CUDA_API_ENTRY_(cuEventRecord);
  STASIS_CUDA_API_ENTRY_(cuEventSynchronize);
  STASIS_CUDA_API_ENTRY_(cuMemcpyHtoDAsync);
  // Synchronous device-to-host copy on the legacy default stream; for verification in
  // tests and tools, not used by the restore path.
  STASIS_CUDA_API_ENTRY_(cuMemcpyDtoH);
  // Error descriptions.
  STASIS_CUDA_API_ENTRY_(cuGetErrorName);
  STASIS_CUDA_API_ENTRY_(cuGetErrorString);
#undef STASIS_CUDA_API_ENTRY_
};

// The process-wide driver: dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL), or of the library
// $STASIS_CUDA_DRIVER names (another driver installation; the tests' fake driver), and
// dlsym of every entry, done once (the first caller does the work, concurrent callers wait; the
// result, success or failure, is cached for the life of the process). The library is never
// unloaded.
// Errors: kFailedPrecondition "no CUDA driver (libcuda.so.1 not found)" when the library is
// absent; kFailedPrecondition naming the symbol when the driver is too old.
// Note: a stub libcuda (the toolkit's lib/stubs) loads fine; cuInit then fails with
// CUDA_ERROR_STUB_LIBRARY, which NewCudaBackend reports as kFailedPrecondition.
StatusOr<const CudaDriverApi*> LoadCudaDriver();

// Loads a driver library from an explicit path (tests, tools). Not cached: every call
// dlopens again (which only takes a reference when the library is already loaded). The
// library is never unloaded, so the returned table stays valid for the process lifetime.
// Beware: loading a library whose soname is libcuda.so.1 makes later
// dlopen("libcuda.so.1") calls, and so LoadCudaDriver, find it.
StatusOr<CudaDriverApi> LoadCudaDriverFrom(const std::string& path);

// Maps a driver result to a Status; CUDA_SUCCESS is OK. The message is
// "<what>: <CUDA_ERROR_NAME> (<driver's description>)", so the failed call is named by
// `what` (callers start it with the driver function's name).
//   CUDA_ERROR_OUT_OF_MEMORY                             -> kResourceExhausted
//   CUDA_ERROR_INVALID_DEVICE                            -> kNotFound
//   NO_DEVICE, NOT_INITIALIZED, DEINITIALIZED, STUB_LIBRARY,
//   SYSTEM_DRIVER_MISMATCH, COMPAT_NOT_SUPPORTED_ON_DEVICE, SYSTEM_NOT_READY,
//   OPERATING_SYSTEM, DEVICE_NOT_LICENSED                -> kFailedPrecondition
//   NOT_SUPPORTED                                        -> kUnimplemented
//   NOT_PERMITTED                                        -> kPermissionDenied
//   DEVICE_UNAVAILABLE, TIMEOUT, NOT_READY               -> kUnavailable
//   anything else (INVALID_VALUE, INVALID_CONTEXT, ILLEGAL_ADDRESS, ECC_UNCORRECTABLE, ...)
//                                                        -> kInternal: stasis validated
//     its arguments, so the driver rejecting them, or a sticky context error, is a bug
//     or a broken device, not bad input (kDataLoss stays reserved for corrupted images).
Status CuStatus(const CudaDriverApi& api, CUresult result, std::string_view what);

// "CUDA_ERROR_OUT_OF_MEMORY", or "CUresult 2" when the driver does not know the code.
std::string CuErrorName(const CudaDriverApi& api, CUresult result);

}  // namespace stasis

#endif  // STASIS_RESTORE_DEVICE_CUDA_DRIVER_H_
