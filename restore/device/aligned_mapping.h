// File: restore/device/aligned_mapping.h
//
// The over-map-and-trim anonymous mapping the backends' regions and staging share.
#ifndef STASIS_RESTORE_DEVICE_ALIGNED_MAPPING_H_
#define STASIS_RESTORE_DEVICE_ALIGNED_MAPPING_H_

#include <cstdint>

#include "stasis/status.h"

namespace stasis {

// A private anonymous read-write mapping (MAP_NORESERVE) of `length` bytes, a multiple of
// the page size, starting at a multiple of `align` (a power of two; address space is
// over-mapped by `align` and trimmed at both ends). Release it with munmap.
StatusOr<uint8_t*> MapAlignedAnonymous(uint64_t length, uint64_t align);

}  // namespace stasis

#endif  // STASIS_RESTORE_DEVICE_ALIGNED_MAPPING_H_
