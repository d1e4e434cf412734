// File: restore/io/file_read_engine.h
//
// A ReadEngine over the FileSystem seam: reads go through RandomAccessFile::ReadAt, on the
// thread that calls Wait(). It has the engines' semantics (short reads continued, EINTR
// and bounded EAGAIN retried, EOF is kOutOfRange) and exists so that the whole restore
// pipeline runs over in-memory and fault-injecting file systems in tests and fuzzers.
#ifndef STASIS_RESTORE_IO_FILE_READ_ENGINE_H_
#define STASIS_RESTORE_IO_FILE_READ_ENGINE_H_

#include <functional>
#include <memory>

#include "restore/io/read_engine.h"
#include "stasis/file_system.h"

namespace stasis {

StatusOr<std::unique_ptr<ReadEngine>> NewFileSystemReadEngine(
    FileSystem* fs, const std::string& path, int queue_depth,
    std::function<int64_t(uint64_t, uint64_t, int64_t)> fault_hook = nullptr);

}  // namespace stasis

#endif  // STASIS_RESTORE_IO_FILE_READ_ENGINE_H_
