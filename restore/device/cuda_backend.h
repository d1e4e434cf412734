// File: restore/device/cuda_backend.h
//
// The `cuda` DeviceBackend: regions live in device memory managed with the driver's
// virtual memory management (VMM) API, so a region can be placed at the address the image
// recorded, and its memory released and re-backed without the address changing.
//
// Per region (MapRegion):
//   1. one cuMemAddressReserve of the region's size rounded up to the allocation
//      granularity, aligned to max(granularity, region alignment), asking for the image's
//      va_hint. The driver treats the address as a hint: when it returns another address
//      the region is relocated (at_hint = false); when it rejects the hinted call, one more
//      reservation is made anywhere. No loop: a taken address will not become free.
//   2. physical memory in few large handles (cuMemCreate of options.handle_size each, the
//      last one smaller), all created before any is mapped, so running out of memory, the
//      likely failure, costs no mapping work; then cuMemMap of each at consecutive offsets;
//   3. one cuMemSetAccess (read/write for the device) over the whole reservation: mapping
//      and access changes are synchronous and cost per call, not per byte.
// A failure at any step undoes the steps before it (unmap, release, free the range). Should
// undoing fail too, the leftovers stay in the backend's bookkeeping and the destructor (or,
// for Unload/Reload/UnmapRegion, the next call on the region) retries them.
//
// Teardown (UnmapRegion, destructor): cuCtxSynchronize, cuMemUnmap of each mapping,
// cuMemRelease of each handle, cuMemAddressFree. The synchronisation is context-wide, not
// just the backend's stream: unmapping does not wait for kernels of other streams (PyTorch
// and vLLM both hit illegal addresses without it). Unload stops before cuMemAddressFree;
// Reload creates, maps and grants access again at the same addresses.
//
// Granularity: CU_MEM_ALLOC_GRANULARITY_MINIMUM aligns reservations, hints and mappings;
// physical handles are sized in multiples of _RECOMMENDED (when it is a multiple of the
// minimum, as on every known device), so a larger recommendation never turns away a hint
// the model's allocator placed at the minimum. Both are queried once at construction with
// exactly the properties later passed to cuMemCreate: pinned device memory on the
// backend's device, no compression, no shareable handle types. The recorded va_hint must
// be a multiple of the reservation alignment to be asked for at all.
//
// Staging memory: anonymous private mappings aligned to 2 MiB (transparent huge pages
// requested), populated, then registered once with cuMemHostRegister. Anonymous memory
// also satisfies io_uring's fixed-buffer rule. FreeStaging waits for the copy stream
// before unregistering, since a DMA may still read the buffer. A registration failure is
// returned as is (kResourceExhausted for CUDA_ERROR_OUT_OF_MEMORY); falling back to
// pageable copies is the pipeline's decision, not the backend's.
//
// Copies: cuMemcpyHtoDAsync on one non-blocking stream (CU_STREAM_NON_BLOCKING, so no
// implicit synchronisation with the legacy default stream), then cuEventRecord of the
// slot's event (created on first use, CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING:
// waits sleep, where the context's default policy would spin a core the pipeline's workers
// need; Synchronize and FreeStaging wait on such an event too). One H2D stream is enough:
// copies in one direction serialise on the link anyway. A copy must fall inside a loaded
// region (checked: a copy to an unmapped address is a sticky error that kills the context;
// Copy holds the region table's lock until the copy is enqueued, and Unload/UnmapRegion
// take it exclusively before they synchronise, so no copy can slip past them).
// When Copy fails, earlier copies may still be in flight: call Synchronize() before reusing
// their staging memory.
//
// Context: the backend retains the device's primary context (the one the CUDA runtime and
// PyTorch use) and makes it current on the calling thread for the duration of every method,
// since the pipeline calls from several threads, then puts back the thread's previous
// context (the runtime reads the current context as the current device: a restore onto
// cuda:1 must not move its caller to cuda:1).
//
// Thread safety: as DeviceBackend states. MapRegion/UnmapRegion/Unload/Reload from one
// thread at a time; Copy/WaitCopies concurrently for distinct slots, also concurrently with
// those. AllocateStaging/FreeStaging/Synchronize may be called from any thread.
//
// The destructor synchronises, then tears down whatever is still mapped, registered or
// created (regions, staging, events, stream) and releases the primary context. Failures
// there are logged and skipped; it never throws or aborts.
#ifndef STASIS_RESTORE_DEVICE_CUDA_BACKEND_H_
#define STASIS_RESTORE_DEVICE_CUDA_BACKEND_H_

#include <cstdint>
#include <memory>

#include "stasis/device_backend.h"
#include "stasis/status.h"

namespace stasis {

struct CudaDriverApi;  // restore/device/cuda_driver.h

struct CudaBackendOptions {
  // Bytes of device memory per physical allocation (cuMemCreate), rounded up to the
  // allocation granularity. Map and unmap costs grow with the number of handles (PyTorch:
  // "mapping 10 separately allocated 2MiB pages takes 10x time"); 256 MiB keeps a 140 GB
  // H200 image at ~550 handles while an out-of-memory failure still wastes little.
  uint64_t handle_size = 256ull << 20;
};

// Opens device `ordinal` through `api`, which must outlive the backend.
// Errors: kInvalidArgument (null api, handle_size 0); kNotFound "no CUDA device N (M
// devices present)", M possibly 0; kFailedPrecondition (stub or mismatched driver, no VMM
// support); other driver errors as CuStatus maps them.
StatusOr<std::unique_ptr<DeviceBackend>> NewCudaBackend(const CudaDriverApi* api, int ordinal,
                                                        const CudaBackendOptions& options = {});

// NewCudaBackend with the process's driver (LoadCudaDriver): kFailedPrecondition "no CUDA
// driver (libcuda.so.1 not found)" on machines without one.
StatusOr<std::unique_ptr<DeviceBackend>> OpenCudaBackend(int ordinal,
                                                         const CudaBackendOptions& options = {});

}  // namespace stasis

#endif  // STASIS_RESTORE_DEVICE_CUDA_BACKEND_H_
