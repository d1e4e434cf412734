#include "tests/testutil/fake_cuda_driver.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>

namespace stasis::testing {
namespace {

constexpr int kMaxFakeDevices = 64;

// Primary contexts are addresses in this array: stable, distinct, never dereferenced.
char g_context_tokens[kMaxFakeDevices];
std::atomic<FakeCudaDriver*> g_current{nullptr};
std::atomic<uint64_t> g_generation{0};

// The context current on this thread, tagged with the fake that set it.
struct CurrentContext {
  uint64_t generation = 0;
  CUcontext ctx = nullptr;
};
thread_local CurrentContext t_current;

CUcontext ContextToken(int device) {
  return reinterpret_cast<CUcontext>(&g_context_tokens[device]);
}
int ContextDevice(CUcontext ctx) {
  const char* p = reinterpret_cast<const char*>(ctx);
  if (p < g_context_tokens || p >= g_context_tokens + kMaxFakeDevices) return -1;
  return static_cast<int>(p - g_context_tokens);
}

std::string Fmt(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string Fmt(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  return buf;
}

uint64_t PageSize() { return static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)); }
bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

struct ErrorText {
  CUresult code;
  const char* name;
  const char* text;
};
constexpr ErrorText kErrors[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_DEINITIALIZED, "CUDA_ERROR_DEINITIALIZED", "driver shutting down"},
    {CUDA_ERROR_STUB_LIBRARY, "CUDA_ERROR_STUB_LIBRARY", "CUDA driver is a stub library"},
    {CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_ALREADY_MAPPED, "CUDA_ERROR_ALREADY_MAPPED", "resource already mapped"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS",
     "an illegal memory access was encountered"},
    {CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED, "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED",
     "part or all of the requested memory range is already mapped"},
    {CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED, "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED",
     "pointer does not correspond to a registered memory region"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_NOT_PERMITTED, "CUDA_ERROR_NOT_PERMITTED", "operation not permitted"},
    {CUDA_ERROR_DEVICE_UNAVAILABLE, "CUDA_ERROR_DEVICE_UNAVAILABLE",
     "CUDA-capable device(s) is/are busy or unavailable"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

const ErrorText* FindError(CUresult r) {
  for (const ErrorText& e : kErrors)
    if (e.code == r) return &e;
  return nullptr;
}

bool SameProp(const CUmemAllocationProp& a, const CUmemAllocationProp& b) {
  return a.type == b.type && a.requestedHandleTypes == b.requestedHandleTypes &&
         a.location.type == b.location.type && a.location.id == b.location.id &&
         a.win32HandleMetaData == b.win32HandleMetaData &&
         a.allocFlags.compressionType == b.allocFlags.compressionType &&
         a.allocFlags.gpuDirectRDMACapable == b.allocFlags.gpuDirectRDMACapable &&
         a.allocFlags.usage == b.allocFlags.usage;
}

}  // namespace

// Static functions with the driver's signatures that forward to the current fake. A
// member-function pointer template argument gives each entry its exact parameter list.
struct FakeCudaTrampolines {
  template <auto Method>
  struct To;
  template <typename... Args, CUresult (FakeCudaDriver::*Method)(Args...)>
  struct To<Method> {
    static CUresult Call(Args... args) {
      FakeCudaDriver* fake = g_current.load();
      if (fake == nullptr) return CUDA_ERROR_DEINITIALIZED;
      return (fake->*Method)(args...);
    }
  };

  static CUresult GetErrorName(CUresult r, const char** out) {
    const ErrorText* e = FindError(r);
    *out = e != nullptr ? e->name : nullptr;
    return e != nullptr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
  }
  static CUresult GetErrorString(CUresult r, const char** out) {
    const ErrorText* e = FindError(r);
    *out = e != nullptr ? e->text : nullptr;
    return e != nullptr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
  }

  static void Fill(CudaDriverApi* api) {
    using F = FakeCudaDriver;
    api->cuInit = &To<&F::Init>::Call;
    api->cuDriverGetVersion = &To<&F::DriverGetVersion>::Call;
    api->cuDeviceGet = &To<&F::DeviceGet>::Call;
    api->cuDeviceGetCount = &To<&F::DeviceGetCount>::Call;
    api->cuDeviceGetAttribute = &To<&F::DeviceGetAttribute>::Call;
    api->cuDevicePrimaryCtxRetain = &To<&F::DevicePrimaryCtxRetain>::Call;
    api->cuDevicePrimaryCtxRelease = &To<&F::DevicePrimaryCtxRelease>::Call;
    api->cuCtxGetCurrent = &To<&F::CtxGetCurrent>::Call;
    api->cuCtxSetCurrent = &To<&F::CtxSetCurrent>::Call;
    api->cuCtxSynchronize = &To<&F::CtxSynchronize>::Call;
    api->cuMemGetAllocationGranularity = &To<&F::MemGetAllocationGranularity>::Call;
    api->cuMemAddressReserve = &To<&F::MemAddressReserve>::Call;
    api->cuMemAddressFree = &To<&F::MemAddressFree>::Call;
    api->cuMemCreate = &To<&F::MemCreate>::Call;
    api->cuMemRelease = &To<&F::MemRelease>::Call;
    api->cuMemMap = &To<&F::MemMap>::Call;
    api->cuMemUnmap = &To<&F::MemUnmap>::Call;
    api->cuMemSetAccess = &To<&F::MemSetAccess>::Call;
    api->cuMemGetInfo = &To<&F::MemGetInfo>::Call;
    api->cuMemHostRegister = &To<&F::MemHostRegister>::Call;
    api->cuMemHostUnregister = &To<&F::MemHostUnregister>::Call;
    api->cuStreamCreate = &To<&F::StreamCreate>::Call;
    api->cuStreamDestroy = &To<&F::StreamDestroy>::Call;
    api->cuStreamSynchronize = &To<&F::StreamSynchronize>::Call;
    api->cuEventCreate = &To<&F::EventCreate>::Call;
    api->cuEventDestroy = &To<&F::EventDestroy>::Call;
    api->cuEventRecord = &To<&F::EventRecord>::Call;
    api->cuEventSynchronize = &To<&F::EventSynchronize>::Call;
    api->cuMemcpyHtoDAsync = &To<&F::MemcpyHtoDAsync>::Call;
    api->cuMemcpyDtoH = &To<&F::MemcpyDtoH>::Call;
    api->cuGetErrorName = &GetErrorName;
    api->cuGetErrorString = &GetErrorString;
  }
};

FakeCudaDriver::FakeCudaDriver() : generation_(++g_generation), ctx_refs_(kMaxFakeDevices, 0) {
  FakeCudaTrampolines::Fill(&api_);
  FakeCudaDriver* expected = nullptr;
  if (!g_current.compare_exchange_strong(expected, this)) {
    std::fprintf(stderr, "FakeCudaDriver: only one may exist at a time\n");
    std::abort();
  }
}

FakeCudaDriver::~FakeCudaDriver() {
  g_current.store(nullptr);
  // Reservations cover every mapping; unmapping them removes both.
  for (const auto& [base, r] : reservations_) ::munmap(reinterpret_cast<void*>(base), r.size);
  for (const auto& [h, a] : allocations_) ::close(a.fd);
}

// --- Knobs and observations.

void FakeCudaDriver::set_device_count(int n) {
  std::lock_guard lock(mu_);
  device_count_ = std::clamp(n, 0, kMaxFakeDevices);
}
void FakeCudaDriver::set_vmm_supported(bool supported) {
  std::lock_guard lock(mu_);
  vmm_supported_ = supported;
}
void FakeCudaDriver::set_granularity(size_t minimum, size_t recommended) {
  std::lock_guard lock(mu_);
  min_granularity_ = minimum;
  rec_granularity_ = recommended;
}
void FakeCudaDriver::set_device_memory(uint64_t bytes) {
  std::lock_guard lock(mu_);
  device_memory_ = bytes;
}
void FakeCudaDriver::set_ignore_hints(bool ignore) {
  std::lock_guard lock(mu_);
  ignore_hints_ = ignore;
}
void FakeCudaDriver::set_hint_taken_error(CUresult code) {
  std::lock_guard lock(mu_);
  hint_taken_error_ = code;
}
void FakeCudaDriver::set_defer_copies(bool defer) {
  std::lock_guard lock(mu_);
  defer_copies_ = defer;
}
void FakeCudaDriver::set_fail_at_call(uint64_t k, CUresult code) {
  std::lock_guard lock(mu_);
  fail_at_call_ = k;
  fail_code_ = code;
  injected_ = false;
  injected_function_.clear();
}
void FakeCudaDriver::set_fail_function(const std::string& name, CUresult code) {
  std::lock_guard lock(mu_);
  if (code == CUDA_SUCCESS) {
    fail_functions_.erase(name);
  } else {
    fail_functions_[name] = code;
  }
}

std::vector<std::string> FakeCudaDriver::calls() const {
  std::lock_guard lock(mu_);
  return calls_;
}
std::vector<std::string> FakeCudaDriver::call_log() const {
  std::lock_guard lock(mu_);
  return call_log_;
}
uint64_t FakeCudaDriver::call_count() const {
  std::lock_guard lock(mu_);
  return call_count_;
}
void FakeCudaDriver::ClearCalls() {
  std::lock_guard lock(mu_);
  calls_.clear();
  call_log_.clear();
  call_count_ = 0;
}
bool FakeCudaDriver::failure_injected() const {
  std::lock_guard lock(mu_);
  return injected_;
}
std::string FakeCudaDriver::injected_function() const {
  std::lock_guard lock(mu_);
  return injected_function_;
}
std::vector<std::string> FakeCudaDriver::violations() const {
  std::lock_guard lock(mu_);
  return violations_;
}
size_t FakeCudaDriver::live_handles() const {
  std::lock_guard lock(mu_);
  size_t n = 0;
  for (const auto& [h, a] : allocations_) n += a.released ? 0 : 1;
  return n;
}
size_t FakeCudaDriver::live_mappings() const {
  std::lock_guard lock(mu_);
  return mappings_.size();
}
size_t FakeCudaDriver::live_reservations() const {
  std::lock_guard lock(mu_);
  return reservations_.size();
}
size_t FakeCudaDriver::live_registrations() const {
  std::lock_guard lock(mu_);
  return registered_.size();
}
uint64_t FakeCudaDriver::device_memory_used() const {
  std::lock_guard lock(mu_);
  return used_;
}
unsigned FakeCudaDriver::last_stream_flags() const {
  std::lock_guard lock(mu_);
  return last_stream_flags_;
}
unsigned FakeCudaDriver::last_event_flags() const {
  std::lock_guard lock(mu_);
  return last_event_flags_;
}
uint64_t FakeCudaDriver::unpinned_copies() const {
  std::lock_guard lock(mu_);
  return unpinned_copies_;
}

bool FakeCudaDriver::IsReserved(uint64_t address, uint64_t n) const {
  std::lock_guard lock(mu_);
  auto it = reservations_.upper_bound(address);
  if (it == reservations_.begin()) return false;
  --it;
  return address - it->first <= it->second.size && n <= it->second.size - (address - it->first);
}

bool FakeCudaDriver::IsAccessible(uint64_t address, uint64_t n) const {
  std::lock_guard lock(mu_);
  return AccessibleLocked(address, n);
}

bool FakeCudaDriver::AccessibleLocked(uint64_t address, uint64_t n) const {
  if (address + n < address) return false;
  uint64_t at = address;
  const uint64_t end = address + n;
  while (at < end) {
    auto it = mappings_.upper_bound(at);
    if (it == mappings_.begin()) return false;
    --it;
    const uint64_t mend = it->first + it->second.size;
    if (mend <= at || !it->second.accessible) return false;
    at = mend;
  }
  return true;
}

bool FakeCudaDriver::ReadDevice(uint64_t address, void* out, size_t n) const {
  std::lock_guard lock(mu_);
  if (!AccessibleLocked(address, n)) return false;
  std::memcpy(out, reinterpret_cast<const void*>(address), n);
  return true;
}

std::string FakeCudaDriver::LeakReport() const {
  std::lock_guard lock(mu_);
  std::string out;
  for (const auto& [h, a] : allocations_)
    if (!a.released) out += Fmt("handle 0x%llx (%" PRIu64 " bytes) not released\n", h, a.size);
  for (const auto& [base, m] : mappings_)
    out += Fmt("mapping at 0x%" PRIx64 " (%" PRIu64 " bytes) not unmapped\n", base, m.size);
  for (const auto& [base, r] : reservations_)
    out += Fmt("reservation at 0x%" PRIx64 " (%" PRIu64 " bytes) not freed\n", base, r.size);
  for (const auto& [p, n] : registered_)
    out += Fmt("host registration at 0x%" PRIxPTR " (%zu bytes) not unregistered\n", p, n);
  for (const auto& [s, st] : streams_) {
    out += Fmt("stream 0x%" PRIxPTR " not destroyed\n", s);
    if (!st.pending.empty())
      out += Fmt("stream 0x%" PRIxPTR ": %zu copies never ran\n", s, st.pending.size());
  }
  for (const auto& [e, m] : events_) out += Fmt("event 0x%" PRIxPTR " not destroyed\n", e);
  for (int d = 0; d < kMaxFakeDevices; ++d)
    if (ctx_refs_[d] > 0)
      out += Fmt("primary context of device %d: %d references not released\n", d, ctx_refs_[d]);
  return out;
}

// --- Internals.

CUresult FakeCudaDriver::Enter(const char* name, const std::string& args) {
  ++call_count_;
  calls_.push_back(name);
  call_log_.push_back(std::string(name) + args);
  if (fail_at_call_ != 0 && call_count_ == fail_at_call_) {
    injected_ = true;
    injected_function_ = name;
    return fail_code_;
  }
  auto it = fail_functions_.find(name);
  if (it != fail_functions_.end()) return it->second;
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::RequireInit() const {
  return initialized_ ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
}

CUresult FakeCudaDriver::RequireContext() const {
  if (!initialized_) return CUDA_ERROR_NOT_INITIALIZED;
  if (t_current.generation != generation_ || t_current.ctx == nullptr)
    return CUDA_ERROR_INVALID_CONTEXT;
  const int d = ContextDevice(t_current.ctx);
  if (d < 0 || ctx_refs_[d] <= 0) return CUDA_ERROR_INVALID_CONTEXT;  // released since
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::CheckProp(const CUmemAllocationProp* prop) const {
  if (prop == nullptr || prop->type != CU_MEM_ALLOCATION_TYPE_PINNED ||
      prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE || prop->location.id < 0 ||
      prop->location.id >= device_count_ || prop->win32HandleMetaData != nullptr ||
      (prop->requestedHandleTypes != CU_MEM_HANDLE_TYPE_NONE &&
       prop->requestedHandleTypes != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR))
    return CUDA_ERROR_INVALID_VALUE;
  return CUDA_SUCCESS;
}

void FakeCudaDriver::Violation(std::string what) { violations_.push_back(std::move(what)); }

void FakeCudaDriver::RunCopy(const PendingCopy& c) {
  if (!AccessibleLocked(c.dst, c.n)) {
    Violation(Fmt("a copy of %zu bytes into 0x%" PRIx64
                  " ran after its destination was unmapped (illegal address on a device)",
                  c.n, c.dst));
    return;
  }
  std::memcpy(reinterpret_cast<void*>(c.dst), c.src, c.n);
}

void FakeCudaDriver::Flush(uintptr_t stream, uint64_t up_to_seq) {
  auto it = streams_.find(stream);
  if (it == streams_.end()) return;
  auto& q = it->second.pending;
  while (!q.empty() && q.front().seq <= up_to_seq) {
    RunCopy(q.front());
    q.pop_front();
  }
}

void FakeCudaDriver::FlushAll() {
  for (auto& [s, st] : streams_) Flush(s, UINT64_MAX);
}

// --- Driver entry points.

CUresult FakeCudaDriver::Init(unsigned int flags) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuInit", Fmt("(flags=%u)", flags))) return r;
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  if (device_count_ == 0) return CUDA_ERROR_NO_DEVICE;
  initialized_ = true;
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::DriverGetVersion(int* version) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuDriverGetVersion", "()")) return r;
  if (version == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *version = CUDA_VERSION;
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::DeviceGet(CUdevice* device, int ordinal) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuDeviceGet", Fmt("(ordinal=%d)", ordinal))) return r;
  if (CUresult r = RequireInit()) return r;
  if (device == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (ordinal < 0 || ordinal >= device_count_) return CUDA_ERROR_INVALID_DEVICE;
  *device = ordinal;
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::DeviceGetCount(int* count) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuDeviceGetCount", "()")) return r;
  if (CUresult r = RequireInit()) return r;
  if (count == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *count = device_count_;
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::DeviceGetAttribute(int* value, CUdevice_attribute attr, CUdevice device) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuDeviceGetAttribute",
                         Fmt("(attr=%d, device=%d)", static_cast<int>(attr), device)))
    return r;
  if (CUresult r = RequireInit()) return r;
  if (value == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (device < 0 || device >= device_count_) return CUDA_ERROR_INVALID_DEVICE;
  switch (attr) {
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED:
      *value = vmm_supported_ ? 1 : 0;
      break;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING:
      *value = 1;
      break;
    default:
      *value = 0;
  }
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::DevicePrimaryCtxRetain(CUcontext* ctx, CUdevice device) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuDevicePrimaryCtxRetain", Fmt("(device=%d)", device))) return r;
  if (CUresult r = RequireInit()) return r;
  if (ctx == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (device < 0 || device >= device_count_) return CUDA_ERROR_INVALID_DEVICE;
  ++ctx_refs_[device];
  *ctx = ContextToken(device);
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::DevicePrimaryCtxRelease(CUdevice device) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuDevicePrimaryCtxRelease", Fmt("(device=%d)", device))) return r;
  if (CUresult r = RequireInit()) return r;
  if (device < 0 || device >= device_count_) return CUDA_ERROR_INVALID_DEVICE;
  if (ctx_refs_[device] <= 0) return CUDA_ERROR_INVALID_CONTEXT;
  --ctx_refs_[device];
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::CtxGetCurrent(CUcontext* ctx) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuCtxGetCurrent", "()")) return r;
  if (CUresult r = RequireInit()) return r;
  if (ctx == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *ctx = t_current.generation == generation_ ? t_current.ctx : nullptr;
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::CtxSetCurrent(CUcontext ctx) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuCtxSetCurrent", Fmt("(ctx=%p)", static_cast<void*>(ctx)))) return r;
  if (CUresult r = RequireInit()) return r;
  if (ctx != nullptr) {
    const int d = ContextDevice(ctx);
    if (d < 0 || ctx_refs_[d] <= 0) return CUDA_ERROR_INVALID_CONTEXT;
  }
  t_current = {generation_, ctx};
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::CtxSynchronize() {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuCtxSynchronize", "()")) return r;
  if (CUresult r = RequireContext()) return r;
  FlushAll();
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::MemGetAllocationGranularity(size_t* granularity,
                                                     const CUmemAllocationProp* prop,
                                                     CUmemAllocationGranularity_flags option) {
  std::lock_guard lock(mu_);
  if (CUresult r =
          Enter("cuMemGetAllocationGranularity",
                Fmt("(option=%s)",
                    option == CU_MEM_ALLOC_GRANULARITY_RECOMMENDED ? "RECOMMENDED" : "MINIMUM")))
    return r;
  if (CUresult r = RequireInit()) return r;
  if (granularity == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (CUresult r = CheckProp(prop)) return r;
  have_granularity_prop_ = true;
  granularity_prop_ = *prop;
  *granularity =
      option == CU_MEM_ALLOC_GRANULARITY_RECOMMENDED ? rec_granularity_ : min_granularity_;
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::MemAddressReserve(CUdeviceptr* ptr, size_t size, size_t alignment,
                                           CUdeviceptr addr, unsigned long long flags) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter(
          "cuMemAddressReserve",
          Fmt("(size=0x%zx, align=0x%zx, addr=0x%llx, flags=%llu)", size, alignment, addr, flags)))
    return r;
  if (CUresult r = RequireContext()) return r;
  const uint64_t page = PageSize();
  if (ptr == nullptr || flags != 0 || size == 0 || size % page != 0 || addr % page != 0 ||
      (alignment != 0 && !IsPowerOfTwo(alignment)))
    return CUDA_ERROR_INVALID_VALUE;
  const uint64_t align = std::max<uint64_t>(alignment, min_granularity_);
  if (addr != 0) {
    bool placed = false;
    if (!ignore_hints_ && addr % align == 0) {
      void* p = ::mmap(reinterpret_cast<void*>(addr), size, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
      if (p != MAP_FAILED && reinterpret_cast<uint64_t>(p) == addr) {
        placed = true;
      } else if (p != MAP_FAILED) {
        ::munmap(p, size);  // a kernel without MAP_FIXED_NOREPLACE took it as a hint
      }
    }
    if (placed) {
      reservations_[addr] = {size};
      *ptr = addr;
      return CUDA_SUCCESS;
    }
    if (hint_taken_error_ != CUDA_SUCCESS) return hint_taken_error_;
  }
  // Anywhere aligned; but never at the refused address, which the kernel would happily
  // hand out when it is free (ignore_hints): that one is held while another is found.
  auto place = [&]() -> uint64_t {
    void* raw = ::mmap(nullptr, size + align, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) return 0;
    const uint64_t start = reinterpret_cast<uint64_t>(raw);
    const uint64_t base = (start + align - 1) / align * align;
    if (base > start) ::munmap(raw, base - start);
    const uint64_t end = start + size + align;
    if (end > base + size) ::munmap(reinterpret_cast<void*>(base + size), end - (base + size));
    return base;
  };
  uint64_t base = place();
  if (base != 0 && addr != 0 && base == addr) {
    const uint64_t again = place();
    ::munmap(reinterpret_cast<void*>(base), size);
    base = again;
  }
  if (base == 0) return CUDA_ERROR_OUT_OF_MEMORY;
  reservations_[base] = {size};
  *ptr = base;
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::MemAddressFree(CUdeviceptr ptr, size_t size) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuMemAddressFree", Fmt("(ptr=0x%llx, size=0x%zx)", ptr, size))) return r;
  if (CUresult r = RequireInit()) return r;
  auto it = reservations_.find(ptr);
  if (it == reservations_.end() || it->second.size != size) return CUDA_ERROR_INVALID_VALUE;
  auto m = mappings_.lower_bound(ptr);
  if (m != mappings_.end() && m->first < ptr + size) {
    Violation(Fmt("cuMemAddressFree(0x%llx) while memory is still mapped in the range", ptr));
    return CUDA_ERROR_INVALID_VALUE;
  }
  ::munmap(reinterpret_cast<void*>(ptr), size);
  reservations_.erase(it);
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::MemCreate(CUmemGenericAllocationHandle* handle, size_t size,
                                   const CUmemAllocationProp* prop, unsigned long long flags) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuMemCreate", Fmt("(size=0x%zx, flags=%llu)", size, flags))) return r;
  if (CUresult r = RequireContext()) return r;
  if (handle == nullptr || flags != 0 || size == 0 || size % min_granularity_ != 0)
    return CUDA_ERROR_INVALID_VALUE;
  if (CUresult r = CheckProp(prop)) return r;
  if (!have_granularity_prop_ || !SameProp(granularity_prop_, *prop))
    Violation("cuMemCreate with properties other than those the granularity was queried with");
  if (size > device_memory_ - std::min(used_, device_memory_)) return CUDA_ERROR_OUT_OF_MEMORY;
  int fd = ::memfd_create("fake-cuda-memory", MFD_CLOEXEC);
  if (fd < 0) return CUDA_ERROR_OUT_OF_MEMORY;
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    ::close(fd);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  const CUmemGenericAllocationHandle h = next_handle_++;
  allocations_[h] = {fd, size, prop->location.id, 0, false};
  used_ += size;
  *handle = h;
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::MemRelease(CUmemGenericAllocationHandle handle) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuMemRelease", Fmt("(handle=0x%llx)", handle))) return r;
  if (CUresult r = RequireInit()) return r;
  auto it = allocations_.find(handle);
  if (it == allocations_.end() || it->second.released) return CUDA_ERROR_INVALID_VALUE;
  it->second.released = true;
  // As documented: the memory goes when the last mapping does.
  if (it->second.mappings == 0) {
    ::close(it->second.fd);
    used_ -= it->second.size;
    allocations_.erase(it);
  }
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::MemMap(CUdeviceptr ptr, size_t size, size_t offset,
                                CUmemGenericAllocationHandle handle, unsigned long long flags) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuMemMap", Fmt("(ptr=0x%llx, size=0x%zx, offset=%zu, handle=0x%llx)", ptr,
                                         size, offset, handle)))
    return r;
  if (CUresult r = RequireContext()) return r;
  if (flags != 0 || offset != 0 || size == 0 || ptr % min_granularity_ != 0 ||
      size % min_granularity_ != 0)
    return CUDA_ERROR_INVALID_VALUE;
  auto a = allocations_.find(handle);
  if (a == allocations_.end() || a->second.released) return CUDA_ERROR_INVALID_HANDLE;
  if (size > a->second.size) return CUDA_ERROR_INVALID_VALUE;
  // Inside one reservation.
  auto res = reservations_.upper_bound(ptr);
  if (res == reservations_.begin()) return CUDA_ERROR_INVALID_VALUE;
  --res;
  if (ptr - res->first > res->second.size || size > res->second.size - (ptr - res->first))
    return CUDA_ERROR_INVALID_VALUE;
  // Not over another mapping.
  auto next = mappings_.lower_bound(ptr);
  if (next != mappings_.end() && next->first < ptr + size) return CUDA_ERROR_ALREADY_MAPPED;
  if (next != mappings_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.size > ptr) return CUDA_ERROR_ALREADY_MAPPED;
  }
  void* p = ::mmap(reinterpret_cast<void*>(ptr), size, PROT_NONE, MAP_SHARED | MAP_FIXED,
                   a->second.fd, 0);
  if (p == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  mappings_[ptr] = {size, handle, false};
  ++a->second.mappings;
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::MemUnmap(CUdeviceptr ptr, size_t size) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuMemUnmap", Fmt("(ptr=0x%llx, size=0x%zx)", ptr, size))) return r;
  if (CUresult r = RequireContext()) return r;
  // The whole of one mapping: the driver cannot unmap a sub-range.
  auto m = mappings_.find(ptr);
  if (m == mappings_.end() || m->second.size != size) return CUDA_ERROR_INVALID_VALUE;
  for (const auto& [s, st] : streams_)
    for (const PendingCopy& c : st.pending)
      if (c.dst < ptr + size && c.dst + c.n > ptr)
        Violation(Fmt("cuMemUnmap(0x%llx) while a copy into it is still queued", ptr));
  // Back to a bare reservation.
  ::mmap(reinterpret_cast<void*>(ptr), size, PROT_NONE,
         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
  auto a = allocations_.find(m->second.handle);
  mappings_.erase(m);
  if (a != allocations_.end() && --a->second.mappings == 0 && a->second.released) {
    ::close(a->second.fd);
    used_ -= a->second.size;
    allocations_.erase(a);
  }
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::MemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc* desc,
                                      size_t count) {
  std::lock_guard lock(mu_);
  if (CUresult r =
          Enter("cuMemSetAccess", Fmt("(ptr=0x%llx, size=0x%zx, count=%zu)", ptr, size, count)))
    return r;
  if (CUresult r = RequireContext()) return r;
  if (desc == nullptr || count == 0 || size == 0) return CUDA_ERROR_INVALID_VALUE;
  for (size_t i = 0; i < count; ++i) {
    if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE || desc[i].location.id < 0 ||
        desc[i].location.id >= device_count_ ||
        (desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE &&
         desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_READ))
      return CUDA_ERROR_INVALID_VALUE;
  }
  // A fully mapped range made of whole mappings.
  uint64_t at = ptr;
  while (at < ptr + size) {
    auto m = mappings_.find(at);
    if (m == mappings_.end()) return CUDA_ERROR_INVALID_VALUE;
    at += m->second.size;
  }
  if (at != ptr + size) return CUDA_ERROR_INVALID_VALUE;
  if (::mprotect(reinterpret_cast<void*>(ptr), size, PROT_READ | PROT_WRITE) != 0)
    return CUDA_ERROR_UNKNOWN;
  for (at = ptr; at < ptr + size;) {
    Mapping& m = mappings_[at];
    m.accessible = true;
    at += m.size;
  }
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::MemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuMemGetInfo", "()")) return r;
  if (CUresult r = RequireContext()) return r;
  if (free_bytes == nullptr || total_bytes == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *total_bytes = device_memory_;
  *free_bytes = device_memory_ - std::min(used_, device_memory_);
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::MemHostRegister(void* p, size_t bytes, unsigned int flags) {
  std::lock_guard lock(mu_);
  if (CUresult r =
          Enter("cuMemHostRegister", Fmt("(p=%p, bytes=0x%zx, flags=%u)", p, bytes, flags)))
    return r;
  if (CUresult r = RequireContext()) return r;
  if (p == nullptr || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  const uintptr_t start = reinterpret_cast<uintptr_t>(p);
  auto next = registered_.lower_bound(start);
  if (next != registered_.end() && next->first < start + bytes)
    return CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
  if (next != registered_.begin() && std::prev(next)->first + std::prev(next)->second > start)
    return CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
  registered_[start] = bytes;
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::MemHostUnregister(void* p) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuMemHostUnregister", Fmt("(p=%p)", p))) return r;
  if (CUresult r = RequireContext()) return r;
  const uintptr_t start = reinterpret_cast<uintptr_t>(p);
  auto it = registered_.find(start);
  if (it == registered_.end()) return CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
  for (const auto& [s, st] : streams_)
    for (const PendingCopy& c : st.pending) {
      const uintptr_t src = reinterpret_cast<uintptr_t>(c.src);
      if (src < start + it->second && src + c.n > start)
        Violation(Fmt("cuMemHostUnregister(%p) while a copy from it is still queued", p));
    }
  registered_.erase(it);
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::StreamCreate(CUstream* stream, unsigned int flags) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuStreamCreate", Fmt("(flags=%u)", flags))) return r;
  if (CUresult r = RequireContext()) return r;
  if (stream == nullptr || (flags != CU_STREAM_DEFAULT && flags != CU_STREAM_NON_BLOCKING))
    return CUDA_ERROR_INVALID_VALUE;
  const uintptr_t id = next_object_++;
  streams_[id].flags = flags;
  last_stream_flags_ = flags;
  *stream = reinterpret_cast<CUstream>(id);
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::StreamDestroy(CUstream stream) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuStreamDestroy", Fmt("(stream=%p)", static_cast<void*>(stream))))
    return r;
  if (CUresult r = RequireContext()) return r;
  const uintptr_t id = reinterpret_cast<uintptr_t>(stream);
  if (streams_.find(id) == streams_.end()) return CUDA_ERROR_INVALID_HANDLE;
  Flush(id, UINT64_MAX);  // queued work still completes
  streams_.erase(id);
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::StreamSynchronize(CUstream stream) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuStreamSynchronize", Fmt("(stream=%p)", static_cast<void*>(stream))))
    return r;
  if (CUresult r = RequireContext()) return r;
  const uintptr_t id = reinterpret_cast<uintptr_t>(stream);
  if (streams_.find(id) == streams_.end()) return CUDA_ERROR_INVALID_HANDLE;
  Flush(id, UINT64_MAX);
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::EventCreate(CUevent* event, unsigned int flags) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuEventCreate", Fmt("(flags=%u)", flags))) return r;
  if (CUresult r = RequireContext()) return r;
  if (event == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const uintptr_t id = next_object_++;
  events_[id] = {};
  last_event_flags_ = flags;
  *event = reinterpret_cast<CUevent>(id);
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::EventDestroy(CUevent event) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuEventDestroy", Fmt("(event=%p)", static_cast<void*>(event)))) return r;
  if (CUresult r = RequireContext()) return r;
  if (events_.erase(reinterpret_cast<uintptr_t>(event)) == 0) return CUDA_ERROR_INVALID_HANDLE;
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::EventRecord(CUevent event, CUstream stream) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuEventRecord", Fmt("(event=%p, stream=%p)", static_cast<void*>(event),
                                              static_cast<void*>(stream))))
    return r;
  if (CUresult r = RequireContext()) return r;
  auto e = events_.find(reinterpret_cast<uintptr_t>(event));
  const uintptr_t s = reinterpret_cast<uintptr_t>(stream);
  if (e == events_.end() || streams_.find(s) == streams_.end()) return CUDA_ERROR_INVALID_HANDLE;
  e->second = {s, next_seq_ - 1, true};
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::EventSynchronize(CUevent event) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuEventSynchronize", Fmt("(event=%p)", static_cast<void*>(event))))
    return r;
  if (CUresult r = RequireContext()) return r;
  auto e = events_.find(reinterpret_cast<uintptr_t>(event));
  if (e == events_.end()) return CUDA_ERROR_INVALID_HANDLE;
  if (e->second.recorded) Flush(e->second.stream, e->second.seq);
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::MemcpyHtoDAsync(CUdeviceptr dst, const void* src, size_t n,
                                         CUstream stream) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuMemcpyHtoDAsync", Fmt("(dst=0x%llx, src=%p, n=0x%zx, stream=%p)", dst,
                                                  src, n, static_cast<void*>(stream))))
    return r;
  if (CUresult r = RequireContext()) return r;
  const uintptr_t s = reinterpret_cast<uintptr_t>(stream);
  if (streams_.find(s) == streams_.end()) return CUDA_ERROR_INVALID_HANDLE;
  if (src == nullptr || !AccessibleLocked(dst, n)) return CUDA_ERROR_INVALID_VALUE;
  const uintptr_t from = reinterpret_cast<uintptr_t>(src);
  auto reg = registered_.upper_bound(from);
  if (reg == registered_.begin() || std::prev(reg)->first + std::prev(reg)->second < from + n)
    ++unpinned_copies_;
  PendingCopy c{dst, src, n, next_seq_++};
  if (defer_copies_) {
    streams_[s].pending.push_back(c);
  } else {
    RunCopy(c);
  }
  return CUDA_SUCCESS;
}

CUresult FakeCudaDriver::MemcpyDtoH(void* dst, CUdeviceptr src, size_t n) {
  std::lock_guard lock(mu_);
  if (CUresult r = Enter("cuMemcpyDtoH", Fmt("(dst=%p, src=0x%llx, n=0x%zx)", dst, src, n)))
    return r;
  if (CUresult r = RequireContext()) return r;
  // The legacy default stream does not wait for non-blocking streams: queued copies stay
  // queued, as on a device.
  if (dst == nullptr || !AccessibleLocked(src, n)) return CUDA_ERROR_INVALID_VALUE;
  std::memcpy(dst, reinterpret_cast<const void*>(src), n);
  return CUDA_SUCCESS;
}

}  // namespace stasis::testing
