#include "restore/device/cuda_driver.h"

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace stasis {
namespace {

// Expands the macro first, so STASIS_CUDA_SYMBOL_(cuMemGetInfo) is "cuMemGetInfo_v2": the
// symbol <cuda.h> binds the name to.
#define STASIS_CUDA_STR_INNER_(x) #x
#define STASIS_CUDA_SYMBOL_(x) STASIS_CUDA_STR_INNER_(x)

// Resolves every entry of `api` from `lib`; fails naming the first missing symbol.
Status ResolveAll(void* lib, const std::string& path, CudaDriverApi* api) {
  // dlsym returns void*; the POSIX-sanctioned way to turn it into a function pointer is
  // a copy of the pointer's bytes (the pointer types have the same size and
  // representation on every platform CUDA supports).
#define STASIS_CUDA_RESOLVE_(name)                                                       \
  do {                                                                                   \
    void* sym = ::dlsym(lib, STASIS_CUDA_SYMBOL_(name));                                 \
    if (sym == nullptr)                                                                  \
      return FailedPreconditionError("CUDA driver " + path + " lacks symbol " +          \
                                     STASIS_CUDA_SYMBOL_(name) +                         \
                                     " (driver too old for the CUDA 11.0 driver API?)"); \
    static_assert(sizeof(api->name) == sizeof(sym));                                     \
    std::memcpy(&api->name, &sym, sizeof(sym));                                          \
  } while (0)

  STASIS_CUDA_RESOLVE_(cuInit);
  STASIS_CUDA_RESOLVE_(cuDriverGetVersion);
  STASIS_CUDA_RESOLVE_(cuDeviceGet);
  STASIS_CUDA_RESOLVE_(cuDeviceGetCount);
  STASIS_CUDA_RESOLVE_(cuDeviceGetAttribute);
  STASIS_CUDA_RESOLVE_(cuDevicePrimaryCtxRetain);
  STASIS_CUDA_RESOLVE_(cuDevicePrimaryCtxRelease);
  STASIS_CUDA_RESOLVE_(cuCtxGetCurrent);
  STASIS_CUDA_RESOLVE_(cuCtxSetCurrent);
  STASIS_CUDA_RESOLVE_(cuCtxSynchronize);
  STASIS_CUDA_RESOLVE_(cuMemGetAllocationGranularity);
  STASIS_CUDA_RESOLVE_(cuMemAddressReserve);
  STASIS_CUDA_RESOLVE_(cuMemAddressFree);
  STASIS_CUDA_RESOLVE_(cuMemCreate);
  STASIS_CUDA_RESOLVE_(cuMemRelease);
  STASIS_CUDA_RESOLVE_(cuMemMap);
  STASIS_CUDA_RESOLVE_(cuMemUnmap);
  STASIS_CUDA_RESOLVE_(cuMemSetAccess);
  STASIS_CUDA_RESOLVE_(cuMemGetInfo);
  STASIS_CUDA_RESOLVE_(cuMemHostRegister);
  STASIS_CUDA_RESOLVE_(cuMemHostUnregister);
  STASIS_CUDA_RESOLVE_(cuStreamCreate);
  STASIS_CUDA_RESOLVE_(cuStreamDestroy);
  STASIS_CUDA_RESOLVE_(cuStreamSynchronize);
  STASIS_CUDA_RESOLVE_(cuEventCreate);
  STASIS_CUDA_RESOLVE_(cuEventDestroy);
  STASIS_CUDA_RESOLVE_(cuEventRecord);
  STASIS_CUDA_RESOLVE_(cuEventSynchronize);
  STASIS_CUDA_RESOLVE_(cuMemcpyHtoDAsync);
  STASIS_CUDA_RESOLVE_(cuMemcpyDtoH);
  STASIS_CUDA_RESOLVE_(cuGetErrorName);
  STASIS_CUDA_RESOLVE_(cuGetErrorString);
#undef STASIS_CUDA_RESOLVE_
  return OkStatus();
}

StatusOr<const CudaDriverApi*> LoadProcessDriver() {
  const char* env = std::getenv("STASIS_CUDA_DRIVER");
  const std::string path = env != nullptr && *env != '\0' ? env : "libcuda.so.1";
  // RTLD_LOCAL: the driver's symbols must not satisfy anyone else's undefined references
  // (a fake or a second copy could otherwise be bound by accident).
  void* lib = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = ::dlerror();
    return FailedPreconditionError("no CUDA driver (" + path + " not found)" +
                                   (why != nullptr ? std::string(": ") + why : ""));
  }
  // Intentionally leaked with the library: the table outlives every backend, and
  // unloading libcuda while contexts may exist is unsafe.
  auto* api = new CudaDriverApi();
  Status s = ResolveAll(lib, path, api);
  if (!s.ok()) {
    delete api;
    return s;
  }
  return static_cast<const CudaDriverApi*>(api);
}

}  // namespace

StatusOr<const CudaDriverApi*> LoadCudaDriver() {
  // A function-local static: initialised exactly once, concurrent callers block until it
  // is ready (C++11 "magic statics").
  static const StatusOr<const CudaDriverApi*> driver = LoadProcessDriver();
  return driver;
}

StatusOr<CudaDriverApi> LoadCudaDriverFrom(const std::string& path) {
  void* lib = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = ::dlerror();
    return FailedPreconditionError("cannot load CUDA driver " + path +
                                   (why != nullptr ? std::string(": ") + why : ""));
  }
  CudaDriverApi api;
  STASIS_RETURN_IF_ERROR(ResolveAll(lib, path, &api));
  return api;
}

std::string CuErrorName(const CudaDriverApi& api, CUresult result) {
  const char* name = nullptr;
  if (api.cuGetErrorName != nullptr && api.cuGetErrorName(result, &name) == CUDA_SUCCESS &&
      name != nullptr)
    return name;
  return "CUresult " + std::to_string(static_cast<int>(result));
}

Status CuStatus(const CudaDriverApi& api, CUresult result, std::string_view what) {
  if (result == CUDA_SUCCESS) return OkStatus();
  StatusCode code;
  switch (result) {
    case CUDA_ERROR_OUT_OF_MEMORY:
      code = StatusCode::kResourceExhausted;
      break;
    case CUDA_ERROR_INVALID_DEVICE:
      code = StatusCode::kNotFound;
      break;
    case CUDA_ERROR_NO_DEVICE:
    case CUDA_ERROR_NOT_INITIALIZED:
    case CUDA_ERROR_DEINITIALIZED:
    case CUDA_ERROR_STUB_LIBRARY:
    case CUDA_ERROR_SYSTEM_DRIVER_MISMATCH:
    case CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE:
    case CUDA_ERROR_SYSTEM_NOT_READY:
    case CUDA_ERROR_OPERATING_SYSTEM:
    case CUDA_ERROR_DEVICE_NOT_LICENSED:
      code = StatusCode::kFailedPrecondition;
      break;
    case CUDA_ERROR_NOT_SUPPORTED:
      code = StatusCode::kUnimplemented;
      break;
    case CUDA_ERROR_NOT_PERMITTED:
      code = StatusCode::kPermissionDenied;
      break;
    case CUDA_ERROR_DEVICE_UNAVAILABLE:
    case CUDA_ERROR_TIMEOUT:
    case CUDA_ERROR_NOT_READY:
      code = StatusCode::kUnavailable;
      break;
    default:
      code = StatusCode::kInternal;
      break;
  }
  std::string msg(what);
  msg += ": ";
  msg += CuErrorName(api, result);
  const char* text = nullptr;
  if (api.cuGetErrorString != nullptr && api.cuGetErrorString(result, &text) == CUDA_SUCCESS &&
      text != nullptr) {
    msg += " (";
    msg += text;
    msg += ")";
  }
  return Status(code, msg);
}

}  // namespace stasis
