#include "restore/restore_plan.h"

#include <algorithm>
#include <numeric>

namespace stasis {
namespace {

using format::AlignDown;
using format::AlignUp;

// Relative cost of a chunk for balancing: every stored byte is read and hashed; a
// compressed chunk also decodes raw_size bytes, which is slower per byte than reading a
// cached file (about 1-3 GB/s per core against 5-10).
uint64_t Cost(const format::ChunkInfo& c, ChunkRoute route) {
  // A mapped chunk is only hashed, which is several times faster than reading it.
  if (route == ChunkRoute::kMapInPlace) return c.stored_size / 4;
  return c.stored_size + (c.codec == format::Codec::kRaw ? 0 : 3 * c.raw_size);
}

}  // namespace

StatusOr<RestorePlan> PlanRestore(const format::Manifest& m, const PlanOptions& o) {
  if (o.workers < 1) return InvalidArgumentError("restore needs at least one worker");
  if (o.max_slots_per_worker < 2)
    return InvalidArgumentError("a worker needs at least two staging slots");
  const uint64_t a = o.alignment;
  if (a == 0 || (a & (a - 1)) != 0 || a > (1u << 20))
    return InvalidArgumentError("read alignment " + std::to_string(a) +
                                " is not a power of two <= 1 MiB");
  if (o.destination_host_visible && o.region_addresses.size() != m.regions.size())
    return InvalidArgumentError("plan needs the address of every region");

  RestorePlan plan;
  // Chunks in file order: each worker then reads its share front to back.
  std::vector<uint32_t> order(m.chunks.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](uint32_t x, uint32_t y) {
    return m.chunks[x].file_offset < m.chunks[y].file_offset;
  });

  std::vector<ChunkTask> tasks;
  tasks.reserve(order.size());
  uint64_t slot = 0;
  uint64_t total_cost = 0;
  for (uint32_t i : order) {
    const format::ChunkInfo& c = m.chunks[i];
    ChunkTask t;
    t.chunk = i;
    t.read_offset =
        AlignDown(c.file_offset, a);  // chunks are 4 KiB aligned; a <= 4 KiB in practice
    const uint64_t head = c.file_offset - t.read_offset;
    t.read_length = AlignUp(head + c.stored_size, a);
    const bool raw = c.codec == format::Codec::kRaw;
    if (o.destination_host_visible) {
      const uint64_t dst = o.region_addresses[c.region_id] + c.dst_offset;
      const uint64_t page = o.page_size;
      if (o.map_raw_chunks && raw && page > 0 && c.file_offset % page == 0 && dst % page == 0 &&
          c.raw_size % page == 0) {
        t.route = ChunkRoute::kMapInPlace;
        t.read_offset = c.file_offset;
        t.read_length = c.stored_size;
      } else if (raw && head == 0 && dst % a == 0) {
        t.route = ChunkRoute::kReadInPlace;
        t.in_place_bytes = AlignDown(c.stored_size, a);
        // The unaligned tail goes through a slot of one alignment unit.
        if (t.in_place_bytes != c.stored_size) slot = std::max(slot, a);
      } else if (raw) {
        // Misaligned destination: read into a slot, copy into place.
        t.route = ChunkRoute::kStagedCopy;
        slot = std::max(slot, t.read_length);
      } else {
        t.route = ChunkRoute::kDecodeInPlace;
        slot = std::max(slot, t.read_length);
      }
    } else if (raw) {
      t.route = ChunkRoute::kStagedCopy;
      slot = std::max(slot, t.read_length);
    } else {
      t.route = ChunkRoute::kDecodeStaged;
      slot = std::max({slot, t.read_length, AlignUp(c.raw_size, a)});
    }
    total_cost += Cost(c, t.route);
    tasks.push_back(t);
  }

  // Split the file-ordered tasks into contiguous runs of about equal cost.
  const int workers =
      static_cast<int>(std::min<uint64_t>(o.workers, std::max<size_t>(tasks.size(), 1)));
  plan.workers.resize(workers);
  uint64_t done_cost = 0;
  int w = 0;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const ChunkTask& t = tasks[i];
    const format::ChunkInfo& c = m.chunks[t.chunk];
    // Move to the next worker once this one has its share, or when the tasks left are
    // just enough to give every remaining worker one.
    const uint64_t share_end =
        total_cost * static_cast<uint64_t>(w + 1) / static_cast<uint64_t>(workers);
    const size_t tasks_left = tasks.size() - i;
    const size_t workers_after = static_cast<size_t>(workers - 1 - w);
    if (w + 1 < workers && !plan.workers[w].tasks.empty() &&
        (done_cost >= share_end || tasks_left <= workers_after))
      ++w;
    WorkerPlan& wp = plan.workers[w];
    wp.tasks.push_back(t);
    wp.stored_bytes += c.stored_size;
    wp.raw_bytes += c.raw_size;
    wp.cost += Cost(c, t.route);
    done_cost += Cost(c, t.route);
  }
  // Drop workers left without tasks (possible when a few chunks dominate the cost).
  plan.workers.erase(std::remove_if(plan.workers.begin(), plan.workers.end(),
                                    [](const WorkerPlan& p) { return p.tasks.empty(); }),
                     plan.workers.end());

  if (slot > 0 && !plan.workers.empty()) {
    plan.slot_size = AlignUp(slot, a);
    const uint64_t per_worker = o.staging_bytes / plan.workers.size();
    const uint64_t slots = per_worker / plan.slot_size;
    if (slots < 2) {
      return InvalidArgumentError(
          "staging memory of " + std::to_string(o.staging_bytes >> 20) +
          " MiB is too small: each of " + std::to_string(plan.workers.size()) +
          " workers needs two slots of " + std::to_string(plan.slot_size) + " bytes");
    }
    // No worker needs more slots than it has staged tasks (plus one for a decode output).
    size_t staged_tasks = 0;
    for (const auto& wp : plan.workers) {
      size_t n = 0;
      for (const auto& t : wp.tasks)
        n += t.route == ChunkRoute::kMapInPlace ? 0
             : t.route == ChunkRoute::kReadInPlace
                 ? (t.in_place_bytes != m.chunks[t.chunk].stored_size)
                 : 1;
      staged_tasks = std::max(staged_tasks, n);
    }
    plan.slots_per_worker =
        static_cast<int>(std::min<uint64_t>({slots, static_cast<uint64_t>(o.max_slots_per_worker),
                                             std::max<uint64_t>(staged_tasks + 1, 2)}));
    plan.staging_bytes = plan.slot_size * plan.slots_per_worker * plan.workers.size();
  }
  return plan;
}

}  // namespace stasis
