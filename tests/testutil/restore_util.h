// File: tests/testutil/restore_util.h
//
// Restoring an image to host memory in tests: the real pipeline on the host backend,
// reading through the FileSystem seam.
#ifndef STASIS_TESTS_TESTUTIL_RESTORE_UTIL_H_
#define STASIS_TESTS_TESTUTIL_RESTORE_UTIL_H_

#include "stasis/restore.h"

namespace stasis::testing {

inline StatusOr<std::unique_ptr<RestoredModel>> RestoreToHost(const std::string& path,
                                                              FileSystem* fs = nullptr,
                                                              int threads = 0) {
  RestoreOptions o;
  o.fs = fs ? fs : DefaultFileSystem();
  o.threads = threads;
  return RestoredModel::Restore(path, o);
}

// The bytes of a restored host tensor, or of a region.
inline const uint8_t* TensorBytes(const RestoredModel& m, std::string_view name) {
  std::optional<RestoredTensor> t = m.FindTensor(name);
  return t ? reinterpret_cast<const uint8_t*>(t->address) : nullptr;
}
inline const uint8_t* RegionBytes(const RestoredModel& m, size_t region) {
  return m.regions()[region].host_view;
}

}  // namespace stasis::testing

#endif  // STASIS_TESTS_TESTUTIL_RESTORE_UTIL_H_
