// libFuzzer target for the safetensors header parser. The input is a whole safetensors
// file: the first 8 bytes are N, the next N bytes the header, the rest the data buffer.
//
// Beyond "never crash, never hang, never allocate without bound" it checks that an accepted
// header really describes the file (every promise ParseSafetensorsHeader makes) and that
// re-encoding it with EncodeSafetensorsHeader gives a header that parses to the same
// tensors. A violated invariant aborts, which libFuzzer reports as a crash.
//
// Seed corpus: tests/fuzz/corpus/safetensors/.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "snapshot/dtype.h"
#include "snapshot/format.h"
#include "snapshot/safetensors.h"

namespace {

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
  }
}

bool SameEntry(const stasis::SafetensorsEntry& a, const stasis::SafetensorsEntry& b) {
  return a.name == b.name && a.dtype == b.dtype && a.shape == b.shape &&
         a.end - a.begin == b.end - b.begin;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stasis;
  if (size < 8) return 0;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > size - 8) return 0;
  std::string_view json(reinterpret_cast<const char*>(data + 8), n);

  StatusOr<SafetensorsHeader> parsed = ParseSafetensorsHeader(json, size);
  if (!parsed.ok()) {
    Check(parsed.status().code() == StatusCode::kInvalidArgument ||
              parsed.status().code() == StatusCode::kResourceExhausted,
          "rejection has an unexpected code");
    return 0;
  }
  const SafetensorsHeader& h = *parsed;
  Check(h.data_start == 8 + n, "data_start is 8 + N");

  std::unordered_set<std::string_view> names;
  for (const SafetensorsEntry& e : h.entries) {
    Check(!e.name.empty() && e.name.size() <= format::kMaxTensorNameLen, "name length");
    Check(e.name.find('\0') == std::string::npos, "name has no NUL");
    Check(e.name != "__metadata__", "no tensor named __metadata__");
    Check(names.insert(e.name).second, "names are unique");
    Check(e.shape.size() <= format::kMaxRank, "rank within the limit");
    Check(e.begin <= e.end, "begin <= end");
    StatusOr<uint64_t> count = format::ElementCount(e.shape);
    Check(count.ok(), "element count fits the image format");
    unsigned __int128 nbits = static_cast<unsigned __int128>(*count) * DTypeBits(e.dtype);
    Check(nbits % 8 == 0, "whole bytes");
    Check(nbits / 8 == e.end - e.begin, "size matches shape and dtype");
  }
  for (size_t i = 1; i < h.metadata.size(); ++i)
    Check(h.metadata[i - 1].first < h.metadata[i].first, "metadata sorted, keys unique");

  // Contiguous from 0 to EOF in data order.
  std::vector<size_t> order(h.entries.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const auto &x = h.entries[a], &y = h.entries[b];
    return x.begin != y.begin ? x.begin < y.begin : x.end < y.end;
  });
  uint64_t covered = 0;
  for (size_t i : order) {
    Check(h.entries[i].begin == covered, "no hole and no overlap");
    covered = h.entries[i].end;
  }
  Check(covered == size - h.data_start, "tensors end at EOF");

  // Re-encode in data order and parse again: same tensors, same metadata.
  std::vector<SafetensorsTensorOut> out;
  for (size_t i : order) {
    const SafetensorsEntry& e = h.entries[i];
    out.push_back({e.name, e.dtype, e.shape, data + h.data_start + e.begin, e.end - e.begin});
  }
  StatusOr<std::string> encoded = EncodeSafetensorsHeader(out, h.metadata);
  Check(encoded.ok(), "an accepted header re-encodes");
  Check(encoded->size() % 8 == 0, "encoded header is padded to 8");
  std::string_view json2 = std::string_view(*encoded).substr(8);
  StatusOr<SafetensorsHeader> again =
      ParseSafetensorsHeader(json2, encoded->size() + (size - h.data_start));
  Check(again.ok(), "a re-encoded header parses");
  Check(again->entries.size() == h.entries.size(), "re-encoded tensor count");
  for (size_t k = 0; k < order.size(); ++k)
    Check(SameEntry(again->entries[k], h.entries[order[k]]), "re-encoded tensor matches");
  Check(again->metadata == h.metadata, "re-encoded metadata matches");
  return 0;
}
