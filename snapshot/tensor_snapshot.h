// File: snapshot/tensor_snapshot.h
//
// The in-memory snapshot API: callers that already hold tensors in host memory (a
// framework, a test, a converter) describe them as views of storages and get an image.
// Storages that overlap (tied weights, views, slices of one buffer) are stored once and
// the tensors recorded as views of the shared bytes.
#ifndef STASIS_SNAPSHOT_TENSOR_SNAPSHOT_H_
#define STASIS_SNAPSHOT_TENSOR_SNAPSHOT_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "snapshot/dtype.h"
#include "snapshot/image_writer.h"

namespace stasis {

struct HostTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;   // in elements; empty means contiguous
  const void* storage = nullptr;  // start of the storage the tensor views
  uint64_t storage_bytes = 0;     // size of that storage
  uint64_t byte_offset = 0;       // where element 0 lies in the storage
};

// Adds `tensors` to `writer` as one cpu region. Tensors whose storages overlap share
// bytes in the region. REQUIRES: every storage stays valid during the call.
// Errors: kInvalidArgument for a view that runs past its storage, bad shapes, duplicate
// names; writer errors as they come.
Status AddHostTensors(const std::vector<HostTensor>& tensors, ImageWriter* writer);

// Convenience: writes an image at `path` holding `tensors` and `metadata`.
Status SnapshotHostTensors(const std::vector<HostTensor>& tensors,
                           const std::vector<std::pair<std::string, std::string>>& metadata,
                           const std::string& path, const WriterOptions& options);

}  // namespace stasis

#endif  // STASIS_SNAPSHOT_TENSOR_SNAPSHOT_H_
