// File: common/mem_file_system.h
//
// An in-memory FileSystem (LevelDB's MemEnv): files are strings in a map. Tests and
// fuzzers use it to run the real readers and writers without touching the disk.
//
// Thread safety: safe for concurrent use. Open files keep their contents alive; a file
// replaced or removed while open keeps serving the old bytes to its readers.
#ifndef STASIS_COMMON_MEM_FILE_SYSTEM_H_
#define STASIS_COMMON_MEM_FILE_SYSTEM_H_

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "stasis/file_system.h"

namespace stasis {

class MemFileSystem final : public FileSystem {
 public:
  // Creates or replaces `path` with `contents`.
  void SetFile(const std::string& path, std::string contents);

  StatusOr<std::unique_ptr<RandomAccessFile>> OpenRandomAccess(const std::string& path) override;
  StatusOr<std::unique_ptr<WritableFile>> CreateExclusive(const std::string& path) override;
  Status Rename(const std::string& from, const std::string& to) override;
  Status Remove(const std::string& path) override;
  Status SyncParentDir(const std::string& path) override { return OkStatus(); }
  bool Exists(const std::string& path) override;

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<std::string>> files_;
};

}  // namespace stasis

#endif  // STASIS_COMMON_MEM_FILE_SYSTEM_H_
