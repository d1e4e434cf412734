// File: tests/testutil/fake_cuda_driver.h
//
// A fake CUDA driver for unit tests of the cuda backend on machines without a GPU. It
// fills a CudaDriverApi table whose entries are static trampolines into the one live
// FakeCudaDriver (a C function pointer cannot capture, so the trampolines go through a
// global "current fake"; at most one FakeCudaDriver may exist at a time).
//
// Device memory is host memory, laid out the way the VMM API lays it out:
//   - cuMemAddressReserve reserves address space with mmap(PROT_NONE), at the hint when it
//     is free (MAP_FIXED_NOREPLACE), elsewhere otherwise (or failing, see knobs);
//   - cuMemCreate makes a memfd of the handle's size (sparse: untouched pages cost nothing);
//   - cuMemMap maps the memfd MAP_SHARED|MAP_FIXED over the reservation, still PROT_NONE;
//   - cuMemSetAccess makes it readable and writable, so "device" bytes really live at the
//     device address, and unmapping then remapping shows fresh memory;
//   - cuMemUnmap puts a PROT_NONE reservation back; copies run as memcpy.
// Every rule of the driver documentation the backend relies on is checked (granularity
// multiples, whole-mapping unmaps, fully mapped ranges for cuMemSetAccess, an empty range
// for cuMemAddressFree, a current context on the calling thread, the same allocation
// properties for the granularity query and cuMemCreate, ...): a broken rule returns the
// driver's error code, and misuse a real device would punish later (a copy running into
// unmapped memory, unregistering memory a pending copy reads) is listed by violations().
//
// Thread safety: all methods and trampolines are thread-safe (one internal mutex).
#ifndef STASIS_TESTS_TESTUTIL_FAKE_CUDA_DRIVER_H_
#define STASIS_TESTS_TESTUTIL_FAKE_CUDA_DRIVER_H_

#include <cuda.h>

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "restore/device/cuda_driver.h"

namespace stasis::testing {

class FakeCudaDriver {
 public:
  // Installs this fake as the target of the trampolines. Defaults: 1 device with VMM
  // support, 2 MiB granularity (minimum and recommended), 4 GiB of device memory.
  FakeCudaDriver();
  // Unmaps and closes whatever the code under test leaked, so tests never leak host
  // resources themselves; check LeakReport() before.
  ~FakeCudaDriver();
  FakeCudaDriver(const FakeCudaDriver&) = delete;
  FakeCudaDriver& operator=(const FakeCudaDriver&) = delete;

  const CudaDriverApi* api() const { return &api_; }

  // --- Knobs (may change at any time).
  void set_device_count(int n);
  void set_vmm_supported(bool supported);
  void set_granularity(size_t minimum, size_t recommended);
  // Total memory of each device; cuMemCreate beyond it fails with OUT_OF_MEMORY.
  void set_device_memory(uint64_t bytes);
  // cuMemAddressReserve never places a reservation at the requested address.
  void set_ignore_hints(bool ignore);
  // When a requested address cannot be had (taken, or ignore_hints): fail with `code`
  // instead of relocating. CUDA_SUCCESS (the default) relocates.
  void set_hint_taken_error(CUresult code);
  // Copies are queued and run when their stream is synchronised (stream, event, context
  // synchronisation, or stream destruction), reading the source at that moment; catches
  // a missing wait or a staging buffer reused too early.
  void set_defer_copies(bool defer);
  // The k-th recorded call (1-based, counted since construction or ClearCalls) fails with
  // `code` without doing anything. 0 disables.
  void set_fail_at_call(uint64_t k, CUresult code = CUDA_ERROR_OUT_OF_MEMORY);
  // Every call of driver function `name` (e.g. "cuMemHostRegister") fails with `code`;
  // CUDA_SUCCESS removes the rule.
  void set_fail_function(const std::string& name, CUresult code);

  // --- Observations.
  // Names of the recorded calls, in order: every entry of the table except
  // cuGetErrorName/cuGetErrorString (pure lookups: neither recorded nor failed).
  std::vector<std::string> calls() const;
  // The same calls with their arguments, e.g.
  // "cuMemAddressReserve(size=0xa00000, align=0x200000, addr=0x7f0000000000, flags=0)".
  std::vector<std::string> call_log() const;
  uint64_t call_count() const;
  void ClearCalls();
  // Whether the fail_at_call call has happened, and which function it was.
  bool failure_injected() const;
  std::string injected_function() const;

  // Everything created and not destroyed: handles, mappings, reservations, host
  // registrations, streams, events, primary-context references, copies never run. One
  // line each; empty when clean.
  std::string LeakReport() const;
  // Misuse a real device would punish later (see the file comment). Empty when clean.
  std::vector<std::string> violations() const;

  size_t live_handles() const;
  size_t live_mappings() const;
  size_t live_reservations() const;
  size_t live_registrations() const;
  uint64_t device_memory_used() const;
  unsigned last_stream_flags() const;
  unsigned last_event_flags() const;
  // Copies whose source was not inside registered (pinned) host memory.
  uint64_t unpinned_copies() const;
  // Whether [address, address + n) is reserved / mapped and accessible.
  bool IsReserved(uint64_t address, uint64_t n) const;
  bool IsAccessible(uint64_t address, uint64_t n) const;
  // Reads device memory as the device sees it now (pending deferred copies not run);
  // false when any byte is not mapped and accessible.
  bool ReadDevice(uint64_t address, void* out, size_t n) const;

 private:
  friend struct FakeCudaTrampolines;

  struct Reservation {
    uint64_t size = 0;
  };
  struct Allocation {
    int fd = -1;
    uint64_t size = 0;
    int device = 0;
    int mappings = 0;
    bool released = false;
  };
  struct Mapping {
    uint64_t size = 0;
    CUmemGenericAllocationHandle handle = 0;
    bool accessible = false;
  };
  struct PendingCopy {
    uint64_t dst = 0;
    const void* src = nullptr;
    size_t n = 0;
    uint64_t seq = 0;
  };
  struct Stream {
    unsigned flags = 0;
    std::deque<PendingCopy> pending;
  };
  struct EventMark {
    uintptr_t stream = 0;
    uint64_t seq = 0;  // copies with seq <= this precede the event
    bool recorded = false;
  };

  // Records a call; returns the error to inject, or CUDA_SUCCESS. Requires mu_.
  CUresult Enter(const char* name, const std::string& args);
  CUresult RequireInit() const;
  CUresult RequireContext() const;
  CUresult CheckProp(const CUmemAllocationProp* prop) const;
  // Requires mu_.
  bool AccessibleLocked(uint64_t address, uint64_t n) const;
  void Flush(uintptr_t stream, uint64_t up_to_seq);
  void FlushAll();
  void RunCopy(const PendingCopy& c);
  void Violation(std::string what);

  // The driver entry points (same signatures as the versioned driver symbols).
  CUresult Init(unsigned int flags);
  CUresult DriverGetVersion(int* version);
  CUresult DeviceGet(CUdevice* device, int ordinal);
  CUresult DeviceGetCount(int* count);
  CUresult DeviceGetAttribute(int* value, CUdevice_attribute attr, CUdevice device);
  CUresult DevicePrimaryCtxRetain(CUcontext* ctx, CUdevice device);
  CUresult DevicePrimaryCtxRelease(CUdevice device);
  CUresult CtxGetCurrent(CUcontext* ctx);
  CUresult CtxSetCurrent(CUcontext ctx);
  CUresult CtxSynchronize();
  CUresult MemGetAllocationGranularity(size_t* granularity, const CUmemAllocationProp* prop,
                                       CUmemAllocationGranularity_flags option);
  CUresult MemAddressReserve(CUdeviceptr* ptr, size_t size, size_t alignment, CUdeviceptr addr,
                             unsigned long long flags);
  CUresult MemAddressFree(CUdeviceptr ptr, size_t size);
  CUresult MemCreate(CUmemGenericAllocationHandle* handle, size_t size,
                     const CUmemAllocationProp* prop, unsigned long long flags);
  CUresult MemRelease(CUmemGenericAllocationHandle handle);
  CUresult MemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                  unsigned long long flags);
  CUresult MemUnmap(CUdeviceptr ptr, size_t size);
  CUresult MemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc* desc, size_t count);
  CUresult MemGetInfo(size_t* free_bytes, size_t* total_bytes);
  CUresult MemHostRegister(void* p, size_t bytes, unsigned int flags);
  CUresult MemHostUnregister(void* p);
  CUresult StreamCreate(CUstream* stream, unsigned int flags);
  CUresult StreamDestroy(CUstream stream);
  CUresult StreamSynchronize(CUstream stream);
  CUresult EventCreate(CUevent* event, unsigned int flags);
  CUresult EventDestroy(CUevent event);
  CUresult EventRecord(CUevent event, CUstream stream);
  CUresult EventSynchronize(CUevent event);
  CUresult MemcpyHtoDAsync(CUdeviceptr dst, const void* src, size_t n, CUstream stream);
  CUresult MemcpyDtoH(void* dst, CUdeviceptr src, size_t n);

  CudaDriverApi api_;
  const uint64_t generation_;  // tells this fake's contexts from an earlier fake's

  mutable std::mutex mu_;
  // Knobs.
  int device_count_ = 1;
  bool vmm_supported_ = true;
  size_t min_granularity_ = 2u << 20;
  size_t rec_granularity_ = 2u << 20;
  uint64_t device_memory_ = 4ull << 30;
  bool ignore_hints_ = false;
  CUresult hint_taken_error_ = CUDA_SUCCESS;
  bool defer_copies_ = false;
  uint64_t fail_at_call_ = 0;
  CUresult fail_code_ = CUDA_ERROR_OUT_OF_MEMORY;
  std::map<std::string, CUresult> fail_functions_;
  // Records.
  std::vector<std::string> calls_;
  std::vector<std::string> call_log_;
  uint64_t call_count_ = 0;
  bool injected_ = false;
  std::string injected_function_;
  std::vector<std::string> violations_;
  // Driver state.
  bool initialized_ = false;
  std::vector<int> ctx_refs_;  // per device
  bool have_granularity_prop_ = false;
  CUmemAllocationProp granularity_prop_ = {};
  std::map<uint64_t, Reservation> reservations_;  // by base
  std::map<CUmemGenericAllocationHandle, Allocation> allocations_;
  CUmemGenericAllocationHandle next_handle_ = 0x1000;
  std::map<uint64_t, Mapping> mappings_;    // by base
  std::map<uintptr_t, size_t> registered_;  // host base -> bytes
  std::map<uintptr_t, Stream> streams_;
  std::map<uintptr_t, EventMark> events_;
  uintptr_t next_object_ = 0x5000;
  uint64_t next_seq_ = 1;
  uint64_t used_ = 0;
  unsigned last_stream_flags_ = 0;
  unsigned last_event_flags_ = 0;
  uint64_t unpinned_copies_ = 0;
};

}  // namespace stasis::testing

#endif  // STASIS_TESTS_TESTUTIL_FAKE_CUDA_DRIVER_H_
