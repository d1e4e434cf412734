// A driver library for the fake CUDA driver (fake_cuda_driver.h): it exports the driver's
// symbols, as libcuda.so.1 does, and forwards each to the table a test installs, so that
// LoadCudaDriver (STASIS_CUDA_DRIVER=<this library>) and everything above it, down from
// RestoredModel::Restore with no backend_factory, run over the fake exactly as they would
// over a real driver. Loaded only by the tests that install a table (never linked: its
// exported names would interpose the real driver's in a process that also loads one).
#include <cuda.h>

#include "restore/device/cuda_driver.h"

namespace {

const stasis::CudaDriverApi* g_table = nullptr;

}  // namespace

extern "C" {

// The table every export forwards to; null: every call fails with CUDA_ERROR_DEINITIALIZED.
__attribute__((visibility("default"))) void stasis_fake_libcuda_install(
    const stasis::CudaDriverApi* table) {
  g_table = table;
}

#define STASIS_FAKE_FORWARD_(name, params, args)                               \
  __attribute__((visibility("default"))) CUresult CUDAAPI name params {        \
    return g_table != nullptr ? g_table->name args : CUDA_ERROR_DEINITIALIZED; \
  }

STASIS_FAKE_FORWARD_(cuInit, (unsigned int flags), (flags))
STASIS_FAKE_FORWARD_(cuDriverGetVersion, (int* version), (version))
STASIS_FAKE_FORWARD_(cuDeviceGet, (CUdevice * device, int ordinal), (device, ordinal))
STASIS_FAKE_FORWARD_(cuDeviceGetCount, (int* count), (count))
STASIS_FAKE_FORWARD_(cuDeviceGetAttribute, (int* value, CUdevice_attribute attribute, CUdevice dev),
                     (value, attribute, dev))
STASIS_FAKE_FORWARD_(cuDevicePrimaryCtxRetain, (CUcontext * ctx, CUdevice dev), (ctx, dev))
STASIS_FAKE_FORWARD_(cuDevicePrimaryCtxRelease, (CUdevice dev), (dev))
STASIS_FAKE_FORWARD_(cuCtxGetCurrent, (CUcontext * ctx), (ctx))
STASIS_FAKE_FORWARD_(cuCtxSetCurrent, (CUcontext ctx), (ctx))
STASIS_FAKE_FORWARD_(cuCtxSynchronize, (void), ())
STASIS_FAKE_FORWARD_(cuMemGetAllocationGranularity,
                     (size_t * granularity, const CUmemAllocationProp* prop,
                      CUmemAllocationGranularity_flags option),
                     (granularity, prop, option))
STASIS_FAKE_FORWARD_(cuMemAddressReserve,
                     (CUdeviceptr * ptr, size_t size, size_t alignment, CUdeviceptr addr,
                      unsigned long long flags),
                     (ptr, size, alignment, addr, flags))
STASIS_FAKE_FORWARD_(cuMemAddressFree, (CUdeviceptr ptr, size_t size), (ptr, size))
STASIS_FAKE_FORWARD_(cuMemCreate,
                     (CUmemGenericAllocationHandle * handle, size_t size,
                      const CUmemAllocationProp* prop, unsigned long long flags),
                     (handle, size, prop, flags))
STASIS_FAKE_FORWARD_(cuMemRelease, (CUmemGenericAllocationHandle handle), (handle))
STASIS_FAKE_FORWARD_(cuMemMap,
                     (CUdeviceptr ptr, size_t size, size_t offset,
                      CUmemGenericAllocationHandle handle, unsigned long long flags),
                     (ptr, size, offset, handle, flags))
STASIS_FAKE_FORWARD_(cuMemUnmap, (CUdeviceptr ptr, size_t size), (ptr, size))
STASIS_FAKE_FORWARD_(cuMemSetAccess,
                     (CUdeviceptr ptr, size_t size, const CUmemAccessDesc* desc, size_t count),
                     (ptr, size, desc, count))
STASIS_FAKE_FORWARD_(cuMemGetInfo, (size_t * free, size_t* total), (free, total))
STASIS_FAKE_FORWARD_(cuMemHostRegister, (void* p, size_t bytes, unsigned int flags),
                     (p, bytes, flags))
STASIS_FAKE_FORWARD_(cuMemHostUnregister, (void* p), (p))
STASIS_FAKE_FORWARD_(cuStreamCreate, (CUstream * stream, unsigned int flags), (stream, flags))
STASIS_FAKE_FORWARD_(cuStreamDestroy, (CUstream stream), (stream))
STASIS_FAKE_FORWARD_(cuStreamSynchronize, (CUstream stream), (stream))
STASIS_FAKE_FORWARD_(cuEventCreate, (CUevent * event, unsigned int flags), (event, flags))
STASIS_FAKE_FORWARD_(cuEventDestroy, (CUevent event), (event))
STASIS_FAKE_FORWARD_(cuEventRecord, (CUevent event, CUstream stream), (event, stream))
STASIS_FAKE_FORWARD_(cuEventSynchronize, (CUevent event), (event))
STASIS_FAKE_FORWARD_(cuMemcpyHtoDAsync,
                     (CUdeviceptr dst, const void* src, size_t bytes, CUstream stream),
                     (dst, src, bytes, stream))
STASIS_FAKE_FORWARD_(cuMemcpyDtoH, (void* dst, CUdeviceptr src, size_t bytes), (dst, src, bytes))
STASIS_FAKE_FORWARD_(cuGetErrorName, (CUresult error, const char** text), (error, text))
STASIS_FAKE_FORWARD_(cuGetErrorString, (CUresult error, const char** text), (error, text))

#undef STASIS_FAKE_FORWARD_

}  // extern "C"
