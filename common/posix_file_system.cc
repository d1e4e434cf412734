#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "stasis/file_system.h"

namespace stasis {
namespace {

std::string Quote(std::string_view s) { return "'" + std::string(s) + "'"; }

class PosixRandomAccessFile final : public RandomAccessFile {
 public:
  PosixRandomAccessFile(int fd, uint64_t size, std::string path)
      : fd_(fd), size_(size), path_(std::move(path)) {}
  ~PosixRandomAccessFile() override { ::close(fd_); }

  StatusOr<size_t> ReadAt(uint64_t offset, size_t n, void* dst) const override {
    size_t done = 0;
    char* out = static_cast<char*>(dst);
    while (done < n) {
      ssize_t r = ::pread(fd_, out + done, n - done, static_cast<off_t>(offset + done));
      if (r < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        return ErrnoToStatus(errno,
                             "read " + Quote(path_) + " at " + std::to_string(offset + done));
      }
      if (r == 0) break;  // EOF
      done += static_cast<size_t>(r);
    }
    return done;
  }
  uint64_t Size() const override { return size_; }
  int fd() const override { return fd_; }

 private:
  int fd_;
  uint64_t size_;
  std::string path_;
};

class PosixWritableFile final : public WritableFile {
 public:
  PosixWritableFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }
  Status Append(const void* data, size_t n) override {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      ssize_t w = ::write(fd_, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        return ErrnoToStatus(errno, "write " + Quote(path_));
      }
      p += w;
      n -= static_cast<size_t>(w);
      offset_ += static_cast<uint64_t>(w);
    }
    return OkStatus();
  }
  Status Sync() override {
    if (::fdatasync(fd_) != 0) return ErrnoToStatus(errno, "fdatasync " + Quote(path_));
    return OkStatus();
  }
  Status Close() override {
    int fd = fd_;
    fd_ = -1;
    if (fd >= 0 && ::close(fd) != 0) return ErrnoToStatus(errno, "close " + Quote(path_));
    return OkStatus();
  }
  uint64_t Offset() const override { return offset_; }

 private:
  int fd_;
  std::string path_;
  uint64_t offset_ = 0;
};

class PosixFileSystem final : public FileSystem {
 public:
  StatusOr<std::unique_ptr<RandomAccessFile>> OpenRandomAccess(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoToStatus(errno, "open " + Quote(path));
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      int err = errno;
      ::close(fd);
      return ErrnoToStatus(err, "stat " + Quote(path));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      return InvalidArgumentError(Quote(path) + " is not a regular file");
    }
    return std::unique_ptr<RandomAccessFile>(
        new PosixRandomAccessFile(fd, static_cast<uint64_t>(st.st_size), path));
  }
  StatusOr<std::unique_ptr<WritableFile>> CreateExclusive(const std::string& path) override {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoToStatus(errno, "create " + Quote(path));
    return std::unique_ptr<WritableFile>(new PosixWritableFile(fd, path));
  }
  Status Rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0)
      return ErrnoToStatus(errno, "rename " + Quote(from) + " to " + Quote(to));
    return OkStatus();
  }
  Status Remove(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return ErrnoToStatus(errno, "remove " + Quote(path));
    return OkStatus();
  }
  Status SyncParentDir(const std::string& path) override {
    std::string dir = ".";
    size_t slash = path.rfind('/');
    if (slash != std::string::npos) dir = slash == 0 ? "/" : path.substr(0, slash);
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ErrnoToStatus(errno, "open directory " + Quote(dir));
    int rc = ::fsync(fd);
    int err = errno;
    ::close(fd);
    if (rc != 0) return ErrnoToStatus(err, "fsync directory " + Quote(dir));
    return OkStatus();
  }
  bool Exists(const std::string& path) override { return ::access(path.c_str(), F_OK) == 0; }
};

}  // namespace

FileSystem* DefaultFileSystem() {
  static FileSystem* fs = new PosixFileSystem();
  return fs;
}

Status RandomAccessFile::ReadExact(uint64_t offset, size_t n, void* dst,
                                   std::string_view what) const {
  STASIS_ASSIGN_OR_RETURN(size_t got, ReadAt(offset, n, dst));
  if (got != n) {
    return OutOfRangeError("truncated: " + std::string(what) + " needs " + std::to_string(n) +
                           " bytes at offset " + std::to_string(offset) + ", file has " +
                           std::to_string(got));
  }
  return OkStatus();
}

StatusOr<std::string> ReadFileToString(FileSystem* fs, const std::string& path,
                                       uint64_t max_bytes) {
  STASIS_ASSIGN_OR_RETURN(auto file, fs->OpenRandomAccess(path));
  uint64_t size = file->Size();
  if (size > max_bytes) {
    return ResourceExhaustedError("'" + path + "' is " + std::to_string(size) +
                                  " bytes, limit is " + std::to_string(max_bytes));
  }
  std::string out(size, '\0');
  STASIS_RETURN_IF_ERROR(file->ReadExact(0, size, out.data(), path));
  return out;
}

}  // namespace stasis
