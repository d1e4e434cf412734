#include "restore/restore_plan.h"

#include <numeric>
#include <random>
#include <set>

#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using ::testing::HasSubstr;

// A manifest with `n` chunks of random sizes and codecs laid out like the writer does.
format::Manifest RandomManifest(size_t n, std::mt19937_64& rng, uint64_t max_raw = 4 << 20) {
  format::Manifest m;
  m.regions.push_back({0, 4096, 0, format::DeviceKind::kCpu, -1});
  m.regions.push_back({0, 4096, 0, format::DeviceKind::kCpu, -1});
  uint64_t file = 4096, dst[2] = {0, 0};
  for (size_t i = 0; i < n; ++i) {
    format::ChunkInfo c;
    c.region_id = static_cast<uint32_t>(rng() % 2);
    // Some whole pages, so that the map route has candidates.
    c.raw_size = rng() % 4 == 0 ? 4096 * (1 + rng() % std::max<uint64_t>(max_raw / 4096, 1))
                                : 1 + rng() % max_raw;
    c.codec = static_cast<format::Codec>(rng() % 3);
    c.stored_size = c.codec == format::Codec::kRaw ? c.raw_size : 1 + rng() % c.raw_size;
    // Destinations: sometimes 256-aligned, sometimes odd (packed tensors).
    dst[c.region_id] += (rng() % 2) ? 0 : 1 + rng() % 300;
    c.dst_offset = dst[c.region_id];
    dst[c.region_id] += c.raw_size;
    c.file_offset = file;
    file = (file + c.stored_size + 4095) / 4096 * 4096;
    m.chunks.push_back(c);
  }
  m.regions[0].size = dst[0];
  m.regions[1].size = dst[1];
  // The writer's chunk order is not the file order the plan must produce: shuffle.
  std::shuffle(m.chunks.begin(), m.chunks.end(), rng);
  return m;
}

void CheckInvariants(const format::Manifest& m, const PlanOptions& o, const RestorePlan& p) {
  std::vector<int> seen(m.chunks.size(), 0);
  ASSERT_LE(p.workers.size(), static_cast<size_t>(o.workers));
  uint64_t total_cost = 0, max_cost = 0;
  for (const auto& w : p.workers) {
    ASSERT_FALSE(w.tasks.empty()) << "no idle workers in a plan";
    uint64_t last = 0, stored = 0;
    for (const auto& t : w.tasks) {
      const auto& c = m.chunks[t.chunk];
      seen[t.chunk]++;
      EXPECT_GE(t.read_offset, last) << "a worker reads front to back";
      last = t.read_offset;
      stored += c.stored_size;
      EXPECT_EQ(t.read_offset % o.alignment, 0u);
      EXPECT_EQ(t.read_length % o.alignment, 0u);
      EXPECT_LE(t.read_offset, c.file_offset);
      EXPECT_GE(t.read_offset + t.read_length, c.file_offset + c.stored_size);
      const bool raw = c.codec == format::Codec::kRaw;
      switch (t.route) {
        case ChunkRoute::kReadInPlace:
          ASSERT_TRUE(raw && o.destination_host_visible);
          EXPECT_EQ((o.region_addresses[c.region_id] + c.dst_offset) % o.alignment, 0u);
          EXPECT_EQ(t.in_place_bytes % o.alignment, 0u);
          EXPECT_LE(c.stored_size - t.in_place_bytes, o.alignment);
          if (t.in_place_bytes != c.stored_size) {
            EXPECT_GE(p.slot_size, o.alignment);
          }
          break;
        case ChunkRoute::kStagedCopy:
          EXPECT_TRUE(raw);
          EXPECT_GE(p.slot_size, t.read_length);
          break;
        case ChunkRoute::kDecodeInPlace:
          EXPECT_TRUE(!raw && o.destination_host_visible);
          EXPECT_GE(p.slot_size, t.read_length);
          break;
        case ChunkRoute::kDecodeStaged:
          EXPECT_TRUE(!raw && !o.destination_host_visible);
          EXPECT_GE(p.slot_size, std::max(t.read_length, c.raw_size));
          break;
        case ChunkRoute::kMapInPlace:
          ASSERT_TRUE(raw && o.destination_host_visible && o.map_raw_chunks);
          EXPECT_EQ(c.file_offset % o.page_size, 0u);
          EXPECT_EQ((o.region_addresses[c.region_id] + c.dst_offset) % o.page_size, 0u);
          EXPECT_EQ(c.raw_size % o.page_size, 0u) << "a partial page would map foreign bytes";
          EXPECT_EQ(t.read_offset, c.file_offset);
          break;
      }
      // Every chunk that can be mapped is mapped when mapping is on.
      if (o.map_raw_chunks && o.destination_host_visible && raw &&
          c.file_offset % o.page_size == 0 &&
          (o.region_addresses[c.region_id] + c.dst_offset) % o.page_size == 0 &&
          c.raw_size % o.page_size == 0) {
        EXPECT_EQ(t.route, ChunkRoute::kMapInPlace);
      }
      if (!o.destination_host_visible) {
        EXPECT_NE(t.route, ChunkRoute::kReadInPlace);
      }
    }
    EXPECT_EQ(w.stored_bytes, stored);
    total_cost += w.cost;
    max_cost = std::max(max_cost, w.cost);
  }
  for (size_t i = 0; i < seen.size(); ++i)
    ASSERT_EQ(seen[i], 1) << "chunk " << i << " must be planned once";
  EXPECT_LE(p.staging_bytes, o.staging_bytes) << "staging stays within its bound";
  if (p.slot_size > 0) {
    EXPECT_GE(p.slots_per_worker, 2);
    EXPECT_LE(p.slots_per_worker, o.max_slots_per_worker);
    EXPECT_EQ(p.staging_bytes, p.slot_size * p.slots_per_worker * p.workers.size());
  }
  // Balance: no worker carries much more than its share plus one chunk.
  if (!p.workers.empty()) {
    uint64_t biggest_chunk = 0;
    for (const auto& c : m.chunks)
      biggest_chunk = std::max(
          biggest_chunk, c.stored_size + (c.codec == format::Codec::kRaw ? 0 : 3 * c.raw_size));
    EXPECT_LE(max_cost, total_cost / p.workers.size() + 2 * biggest_chunk);
  }
}

TEST(RestorePlanTest, RandomManifestsSatisfyEveryInvariant) {
  std::mt19937_64 rng(testing::TestSeed());
  for (int iter = 0; iter < 300; ++iter) {
    format::Manifest m = RandomManifest(rng() % 80, rng);
    PlanOptions o;
    o.workers = 1 + static_cast<int>(rng() % 16);
    o.alignment = 1u << (rng() % 13);  // 1 .. 4096
    o.destination_host_visible = rng() % 2;
    o.staging_bytes = 1ull << 30;
    o.max_slots_per_worker = 2 + static_cast<int>(rng() % 64);
    if (o.destination_host_visible)
      o.region_addresses = {0x7f0000000000ull, 0x7f1000000000ull + (rng() % 2) * 64};
    o.map_raw_chunks = rng() % 2;
    SCOPED_TRACE("iteration " + std::to_string(iter));
    auto plan = PlanRestore(m, o);
    ASSERT_OK(plan.status());
    CheckInvariants(m, o, *plan);
    if (HasFatalFailure()) return;
  }
}

TEST(RestorePlanTest, RoutesOnTheHostBackend) {
  format::Manifest m;
  m.regions.push_back({1 << 20, 4096, 0, format::DeviceKind::kCpu, -1});
  m.chunks.push_back({4096, 8192, 8192, 0, 0, format::Codec::kRaw, 0, 1, 1});      // aligned
  m.chunks.push_back({12288, 5000, 5000, 8192, 0, format::Codec::kRaw, 0, 1, 1});  // tail
  m.chunks.push_back(
      {20480, 100, 5000, 16384 + 7, 0, format::Codec::kZstd, 0, 1, 2});  // compressed
  m.chunks.push_back(
      {24576, 4096, 4096, 30000 + 1, 0, format::Codec::kRaw, 0, 1, 1});  // misaligned dst
  PlanOptions o;
  o.alignment = 4096;
  o.region_addresses = {0x10000000};
  auto p = PlanRestore(m, o);
  ASSERT_OK(p.status());
  ASSERT_EQ(p->workers.size(), 1u);
  const auto& t = p->workers[0].tasks;
  EXPECT_EQ(t[0].route, ChunkRoute::kReadInPlace);
  EXPECT_EQ(t[0].in_place_bytes, 8192u);
  EXPECT_EQ(t[1].route, ChunkRoute::kReadInPlace);
  EXPECT_EQ(t[1].in_place_bytes, 4096u);
  EXPECT_EQ(t[2].route, ChunkRoute::kDecodeInPlace);
  EXPECT_EQ(t[2].read_length, 4096u);
  EXPECT_EQ(t[3].route, ChunkRoute::kStagedCopy);
  EXPECT_EQ(p->slot_size, 4096u);
  // Buffered reads (alignment 1): every raw chunk in place, no tails.
  o.alignment = 1;
  p = PlanRestore(m, o);
  ASSERT_OK(p.status());
  EXPECT_EQ(p->workers[0].tasks[1].in_place_bytes, 5000u);
  EXPECT_EQ(p->workers[0].tasks[3].route, ChunkRoute::kReadInPlace);
}

TEST(RestorePlanTest, MapRouteOnlyForWholePagesAtPageAlignedPlaces) {
  format::Manifest m;
  m.regions.push_back({1 << 20, 4096, 0, format::DeviceKind::kCpu, -1});
  m.chunks.push_back({4096, 8192, 8192, 0, 0, format::Codec::kRaw, 0, 1, 1});           // mapped
  m.chunks.push_back({12288, 5000, 5000, 8192, 0, format::Codec::kRaw, 0, 1, 1});       // partial
  m.chunks.push_back({20480, 4096, 4096, 16384 + 8, 0, format::Codec::kRaw, 0, 1, 1});  // dst
  m.chunks.push_back({24576, 100, 4096, 24576, 0, format::Codec::kZstd, 0, 1, 2});      // coded
  PlanOptions o;
  o.alignment = 1;
  o.region_addresses = {0x10000000};
  o.map_raw_chunks = true;
  auto p = PlanRestore(m, o);
  ASSERT_OK(p.status());
  const auto& t = p->workers[0].tasks;
  EXPECT_EQ(t[0].route, ChunkRoute::kMapInPlace);
  EXPECT_EQ(t[1].route, ChunkRoute::kReadInPlace);
  EXPECT_EQ(t[2].route, ChunkRoute::kReadInPlace);
  EXPECT_EQ(t[3].route, ChunkRoute::kDecodeInPlace);
  // A region mapped off a page boundary: nothing can be mapped.
  o.region_addresses = {0x10000000 + 64};
  p = PlanRestore(m, o);
  ASSERT_OK(p.status());
  for (const auto& task : p->workers[0].tasks) EXPECT_NE(task.route, ChunkRoute::kMapInPlace);
  // Not on a device backend.
  o.destination_host_visible = false;
  o.region_addresses.clear();
  p = PlanRestore(m, o);
  ASSERT_OK(p.status());
  for (const auto& task : p->workers[0].tasks) EXPECT_NE(task.route, ChunkRoute::kMapInPlace);
}

TEST(RestorePlanTest, DeviceBackendStagesEverything) {
  std::mt19937_64 rng(testing::TestSeed());
  format::Manifest m = RandomManifest(40, rng);
  PlanOptions o;
  o.workers = 4;
  o.alignment = 4096;
  o.destination_host_visible = false;
  auto p = PlanRestore(m, o);
  ASSERT_OK(p.status());
  for (const auto& w : p->workers)
    for (const auto& t : w.tasks)
      EXPECT_TRUE(t.route == ChunkRoute::kStagedCopy || t.route == ChunkRoute::kDecodeStaged);
  EXPECT_LE(p->staging_bytes, o.staging_bytes);
}

TEST(RestorePlanTest, StagingIsBoundedWhateverTheModelSize) {
  std::mt19937_64 rng(testing::TestSeed());
  format::Manifest m = RandomManifest(5000, rng);  // ~10 GiB of chunks
  PlanOptions o;
  o.workers = 8;
  o.alignment = 4096;
  o.destination_host_visible = false;
  o.staging_bytes = 256ull << 20;
  auto p = PlanRestore(m, o);
  ASSERT_OK(p.status());
  EXPECT_LE(p->staging_bytes, 256ull << 20);
  o.staging_bytes = 8 << 20;  // not enough for two 4 MiB slots per worker
  EXPECT_THAT(PlanRestore(m, o).status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("too small")));
}

TEST(RestorePlanTest, EdgeCases) {
  format::Manifest empty;
  PlanOptions o;
  auto p = PlanRestore(empty, o);
  ASSERT_OK(p.status());
  EXPECT_TRUE(p->workers.empty());
  EXPECT_EQ(p->staging_bytes, 0u);
  o.workers = 0;
  EXPECT_THAT(PlanRestore(empty, o).status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("worker")));
  o.workers = 1;
  o.alignment = 3000;
  EXPECT_THAT(PlanRestore(empty, o).status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("power of two")));
  // More workers than chunks: one chunk each, no empty workers.
  std::mt19937_64 rng(1);
  format::Manifest m = RandomManifest(3, rng);
  o.alignment = 1;
  o.workers = 16;
  o.region_addresses = {0, 0};
  p = PlanRestore(m, o);
  ASSERT_OK(p.status());
  EXPECT_EQ(p->workers.size(), 3u);
}

}  // namespace
}  // namespace stasis
