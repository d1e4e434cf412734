// File: restore/restore_plan.h
//
// The restore plan: a pure function from an image's manifest and the restore options to
// the work — which worker restores which chunks in which order, how each chunk is read
// (straight into its destination, or through a staging slot), and how much staging memory
// each worker gets. No I/O, no clocks, no threads: it is unit-tested exhaustively, and the
// executor (restore/pipeline.h) only runs what it says.
#ifndef STASIS_RESTORE_RESTORE_PLAN_H_
#define STASIS_RESTORE_RESTORE_PLAN_H_

#include <cstdint>
#include <vector>

#include "snapshot/format.h"
#include "stasis/status.h"

namespace stasis {

struct PlanOptions {
  int workers = 1;                        // >= 1
  uint64_t staging_bytes = 256ull << 20;  // total staging memory for all workers
  uint32_t alignment = 1;                 // read alignment (offset, length, memory); power of 2
  // Slots per worker at most: enough to keep reads in flight while one chunk is decoded;
  // more only costs memory (and pinning time on CUDA).
  int max_slots_per_worker = 16;
  // True when the destination memory is CPU-writable (host backend): raw chunks are then
  // read straight into place and compressed ones decompressed straight into place.
  bool destination_host_visible = true;
  // Per region, the address the region was mapped at (for alignment of in-place reads).
  std::vector<uint64_t> region_addresses;
  // Map raw chunks of the image file into place (mmap MAP_PRIVATE|MAP_FIXED) instead of
  // reading them: zero copies from a page-cache-hot image. Only raw chunks whose file
  // offset, destination and size are multiples of `page_size` qualify (a partial page
  // would map neighbouring file bytes over the destination). Needs a host-visible
  // destination.
  bool map_raw_chunks = false;
  uint64_t page_size = 4096;
};

// How one chunk gets from the file to its destination.
enum class ChunkRoute : uint8_t {
  kReadInPlace,    // raw: the read lands in the destination (aligned body [+ staged tail])
  kDecodeInPlace,  // compressed: read into a slot, decode into the destination
  kStagedCopy,     // raw: read into a slot, copy the slot to the device
  kDecodeStaged,   // compressed: read into a slot, decode into a second slot, copy that
  kMapInPlace,     // raw: the file's pages are mapped at the destination (no read, no slot)
};

struct ChunkTask {
  uint32_t chunk = 0;  // index into manifest.chunks
  ChunkRoute route = ChunkRoute::kStagedCopy;
  uint64_t read_offset = 0;  // aligned file offset of the read (== chunk file offset)
  uint64_t read_length = 0;  // aligned length of the read (whole read for staged routes)
  // kReadInPlace only: bytes read straight into the destination (a multiple of the
  // alignment); the remaining stored_size - in_place_bytes bytes (< alignment) come from
  // one more aligned read of `alignment` bytes into a slot, then a memcpy.
  uint64_t in_place_bytes = 0;
};

struct WorkerPlan {
  std::vector<ChunkTask> tasks;  // in file order
  uint64_t stored_bytes = 0;
  uint64_t raw_bytes = 0;
  uint64_t cost = 0;  // the balancing estimate (see restore_plan.cc)
};

struct RestorePlan {
  std::vector<WorkerPlan> workers;  // may be fewer than asked for (small images)
  uint64_t slot_size = 0;           // bytes per staging slot, a multiple of the alignment
  int slots_per_worker = 0;         // >= 2 when any task needs a slot, <= max_slots_per_worker
  uint64_t staging_bytes = 0;       // slot_size * slots_per_worker * workers
};

// Errors: kInvalidArgument for bad options (workers < 1, max_slots_per_worker < 2,
// alignment not a power of two
// or above 1 MiB, a staging budget too small for two slots of the largest chunk, missing
// region addresses).
StatusOr<RestorePlan> PlanRestore(const format::Manifest& manifest, const PlanOptions& options);

}  // namespace stasis

#endif  // STASIS_RESTORE_RESTORE_PLAN_H_
