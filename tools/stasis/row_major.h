// File: tools/stasis/row_major.h
//
// A restored tensor's elements in row-major order, as `export` writes them and
// `restore --digest` hashes them.
#ifndef STASIS_TOOLS_STASIS_ROW_MAJOR_H_
#define STASIS_TOOLS_STASIS_ROW_MAJOR_H_

#include <cstdint>
#include <vector>

#include "stasis/image.h"
#include "stasis/restore.h"

namespace stasis::cli {

struct ByteView {
  const uint8_t* data;
  uint64_t size;
};

// The tensor's restored memory when it is contiguous, otherwise a copy gathered into
// `scratch` (which must outlive the returned bytes). REQUIRES: a host restore.
ByteView RowMajorBytes(const RestoredTensor& t, std::vector<uint8_t>* scratch);

}  // namespace stasis::cli

#endif  // STASIS_TOOLS_STASIS_ROW_MAJOR_H_
