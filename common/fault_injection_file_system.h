// File: common/fault_injection_file_system.h
//
// A FileSystem wrapper that injects failures at chosen operations (LevelDB's SpecialEnv):
// EIO, ENOSPC or a short write at the k-th Append, failures of Sync/Close/Rename/SyncDir,
// EIO at the k-th read and short reads. Used by tests and fuzzers to reach every failure
// path of the writer and the readers.
//
// Thread safety: counters are atomic; configure before use, then share freely.
#ifndef STASIS_COMMON_FAULT_INJECTION_FILE_SYSTEM_H_
#define STASIS_COMMON_FAULT_INJECTION_FILE_SYSTEM_H_

#include <atomic>
#include <cstdint>
#include <mutex>
#include <set>
#include <string>

#include "stasis/file_system.h"

namespace stasis {

enum class WriteFault { kNone, kEio, kNoSpace, kShortWrite };

struct FaultPlan {
  // 1-based index of the Append call (counted over all files) that fails; 0 = never.
  uint64_t fail_append_at = 0;
  WriteFault append_fault = WriteFault::kNone;
  bool fail_sync = false;
  bool fail_close = false;
  bool fail_rename = false;
  bool fail_sync_dir = false;
  // 1-based index of the ReadAt call that fails with EIO; 0 = never.
  uint64_t fail_read_at = 0;
  // When set, every ReadAt returns at most this many bytes (a short read, not EOF), so
  // callers must loop.
  size_t max_read_bytes = 0;
};

class FaultInjectionFileSystem : public FileSystemWrapper {
 public:
  explicit FaultInjectionFileSystem(FileSystem* target, FaultPlan plan = {})
      : FileSystemWrapper(target), plan_(plan) {}

  void set_plan(const FaultPlan& plan) { plan_ = plan; }
  const FaultPlan& plan() const { return plan_; }
  uint64_t append_calls() const { return append_calls_.load(); }
  uint64_t read_calls() const { return read_calls_.load(); }
  void ResetCounters() {
    append_calls_ = 0;
    read_calls_ = 0;
  }
  // Paths created through this file system and not yet removed or renamed away.
  std::set<std::string> LiveCreatedFiles() const;

  StatusOr<std::unique_ptr<RandomAccessFile>> OpenRandomAccess(const std::string& p) override;
  StatusOr<std::unique_ptr<WritableFile>> CreateExclusive(const std::string& p) override;
  Status Rename(const std::string& from, const std::string& to) override;
  Status Remove(const std::string& p) override;
  Status SyncParentDir(const std::string& p) override;

  // Internal hooks used by the wrapped files.
  Status OnAppend(size_t n, size_t* allowed);
  Status OnRead(size_t* n);

 private:
  FaultPlan plan_;
  std::atomic<uint64_t> append_calls_{0};
  std::atomic<uint64_t> read_calls_{0};
  mutable std::mutex mu_;
  std::set<std::string> created_;
};

}  // namespace stasis

#endif  // STASIS_COMMON_FAULT_INJECTION_FILE_SYSTEM_H_
