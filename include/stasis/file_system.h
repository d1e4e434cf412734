// File: stasis/file_system.h
//
// The file-system seam (LevelDB's Env, kept small). Everything that touches files in
// snapshot/ and restore/ goes through FileSystem, so tests substitute an in-memory or a
// fault-injecting implementation and reach every failure path.
//
// Thread safety: FileSystem implementations are safe for concurrent use. A
// RandomAccessFile is safe for concurrent ReadAt calls. A WritableFile is used by one
// thread at a time.
#ifndef STASIS_FILE_SYSTEM_H_
#define STASIS_FILE_SYSTEM_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "stasis/status.h"

namespace stasis {

class RandomAccessFile {
 public:
  virtual ~RandomAccessFile() = default;
  // Reads up to `n` bytes at `offset` into `dst`, retrying short reads and EINTR until `n`
  // bytes are read or EOF is reached. Returns the number of bytes read (< n only at EOF).
  virtual StatusOr<size_t> ReadAt(uint64_t offset, size_t n, void* dst) const = 0;
  // Size of the file when it was opened.
  virtual uint64_t Size() const = 0;
  // The underlying descriptor, or -1 when there is none (in-memory files). Readers that
  // bypass the seam for speed (io_uring) must check this.
  virtual int fd() const { return -1; }

  // Reads exactly `n` bytes; a read that reaches EOF first is kOutOfRange naming `what`.
  Status ReadExact(uint64_t offset, size_t n, void* dst, std::string_view what) const;
};

class WritableFile {
 public:
  // REQUIRES: Close() was called, or the owner accepts that an unclosed file is simply
  // released (no flush, no sync: destructors do no I/O that can fail silently).
  virtual ~WritableFile() = default;
  // Appends all of `data`; a short write is retried, a failure leaves the file in an
  // unspecified state.
  virtual Status Append(const void* data, size_t n) = 0;
  // Flushes to stable storage (fdatasync).
  virtual Status Sync() = 0;
  virtual Status Close() = 0;
  // Bytes appended so far.
  virtual uint64_t Offset() const = 0;
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;
  virtual StatusOr<std::unique_ptr<RandomAccessFile>> OpenRandomAccess(const std::string& path) = 0;
  // Creates `path` exclusively (O_EXCL): an existing file is kAlreadyExists.
  virtual StatusOr<std::unique_ptr<WritableFile>> CreateExclusive(const std::string& path) = 0;
  // Atomically replaces `to` with `from`.
  virtual Status Rename(const std::string& from, const std::string& to) = 0;
  virtual Status Remove(const std::string& path) = 0;
  // fsyncs the directory containing `path`, so a rename into it is durable.
  virtual Status SyncParentDir(const std::string& path) = 0;
  virtual bool Exists(const std::string& path) = 0;
};

// The process-wide POSIX file system. Never null; never destroyed.
FileSystem* DefaultFileSystem();

// Reads a whole file (bounded by `max_bytes`: larger is kResourceExhausted).
StatusOr<std::string> ReadFileToString(FileSystem* fs, const std::string& path, uint64_t max_bytes);

// Forwards every call to a target; override what a test needs to change.
class FileSystemWrapper : public FileSystem {
 public:
  explicit FileSystemWrapper(FileSystem* target) : target_(target) {}
  StatusOr<std::unique_ptr<RandomAccessFile>> OpenRandomAccess(const std::string& p) override {
    return target_->OpenRandomAccess(p);
  }
  StatusOr<std::unique_ptr<WritableFile>> CreateExclusive(const std::string& p) override {
    return target_->CreateExclusive(p);
  }
  Status Rename(const std::string& f, const std::string& t) override {
    return target_->Rename(f, t);
  }
  Status Remove(const std::string& p) override { return target_->Remove(p); }
  Status SyncParentDir(const std::string& p) override { return target_->SyncParentDir(p); }
  bool Exists(const std::string& p) override { return target_->Exists(p); }
  FileSystem* target() const { return target_; }

 private:
  FileSystem* target_;
};

}  // namespace stasis

#endif  // STASIS_FILE_SYSTEM_H_
