#include "common/fault_injection_file_system.h"

#include <cerrno>

namespace stasis {
namespace {

class FaultyWritableFile final : public WritableFile {
 public:
  FaultyWritableFile(std::unique_ptr<WritableFile> base, FaultInjectionFileSystem* fs)
      : base_(std::move(base)), fs_(fs) {}
  Status Append(const void* data, size_t n) override {
    size_t allowed = n;
    Status injected = fs_->OnAppend(n, &allowed);
    if (allowed > 0) STASIS_RETURN_IF_ERROR(base_->Append(data, allowed));
    return injected;
  }
  Status Sync() override {
    if (fs_->plan().fail_sync) return ErrnoToStatus(EIO, "injected fdatasync failure");
    return base_->Sync();
  }
  Status Close() override {
    Status s = base_->Close();
    if (fs_->plan().fail_close) return ErrnoToStatus(EIO, "injected close failure");
    return s;
  }
  uint64_t Offset() const override { return base_->Offset(); }

 private:
  std::unique_ptr<WritableFile> base_;
  FaultInjectionFileSystem* fs_;
};

class FaultyRandomAccessFile final : public RandomAccessFile {
 public:
  FaultyRandomAccessFile(std::unique_ptr<RandomAccessFile> base, FaultInjectionFileSystem* fs)
      : base_(std::move(base)), fs_(fs) {}
  StatusOr<size_t> ReadAt(uint64_t offset, size_t n, void* dst) const override {
    // Honour the RandomAccessFile contract (loop until n or EOF) on top of short reads, so
    // the seam's callers see exactly what a real file gives them.
    size_t done = 0;
    char* out = static_cast<char*>(dst);
    while (done < n) {
      size_t want = n - done;
      STASIS_RETURN_IF_ERROR(fs_->OnRead(&want));
      STASIS_ASSIGN_OR_RETURN(size_t got, base_->ReadAt(offset + done, want, out + done));
      done += got;
      if (got < want) break;
    }
    return done;
  }
  uint64_t Size() const override { return base_->Size(); }
  int fd() const override { return -1; }  // forces callers through the seam

 private:
  std::unique_ptr<RandomAccessFile> base_;
  FaultInjectionFileSystem* fs_;
};

}  // namespace

Status FaultInjectionFileSystem::OnAppend(size_t n, size_t* allowed) {
  uint64_t call = ++append_calls_;
  *allowed = n;
  if (plan_.fail_append_at == 0 || call != plan_.fail_append_at) return OkStatus();
  switch (plan_.append_fault) {
    case WriteFault::kNone:
      return OkStatus();
    case WriteFault::kEio:
      *allowed = 0;
      return ErrnoToStatus(EIO, "injected write failure");
    case WriteFault::kNoSpace:
      *allowed = 0;
      return ErrnoToStatus(ENOSPC, "injected write");
    case WriteFault::kShortWrite:
      // The kernel wrote part of the buffer, and the retry of the rest hit ENOSPC.
      *allowed = n / 2;
      return ErrnoToStatus(ENOSPC, "injected short write");
  }
  return OkStatus();
}

Status FaultInjectionFileSystem::OnRead(size_t* n) {
  uint64_t call = ++read_calls_;
  if (plan_.fail_read_at != 0 && call == plan_.fail_read_at)
    return ErrnoToStatus(EIO, "injected read failure");
  if (plan_.max_read_bytes != 0 && *n > plan_.max_read_bytes) *n = plan_.max_read_bytes;
  return OkStatus();
}

std::set<std::string> FaultInjectionFileSystem::LiveCreatedFiles() const {
  std::lock_guard<std::mutex> lock(mu_);
  return created_;
}

StatusOr<std::unique_ptr<RandomAccessFile>> FaultInjectionFileSystem::OpenRandomAccess(
    const std::string& p) {
  STASIS_ASSIGN_OR_RETURN(auto base, target()->OpenRandomAccess(p));
  return std::unique_ptr<RandomAccessFile>(new FaultyRandomAccessFile(std::move(base), this));
}

StatusOr<std::unique_ptr<WritableFile>> FaultInjectionFileSystem::CreateExclusive(
    const std::string& p) {
  STASIS_ASSIGN_OR_RETURN(auto base, target()->CreateExclusive(p));
  {
    std::lock_guard<std::mutex> lock(mu_);
    created_.insert(p);
  }
  return std::unique_ptr<WritableFile>(new FaultyWritableFile(std::move(base), this));
}

Status FaultInjectionFileSystem::Rename(const std::string& from, const std::string& to) {
  if (plan_.fail_rename) return ErrnoToStatus(EIO, "injected rename failure");
  STASIS_RETURN_IF_ERROR(target()->Rename(from, to));
  std::lock_guard<std::mutex> lock(mu_);
  created_.erase(from);
  return OkStatus();
}

Status FaultInjectionFileSystem::Remove(const std::string& p) {
  STASIS_RETURN_IF_ERROR(target()->Remove(p));
  std::lock_guard<std::mutex> lock(mu_);
  created_.erase(p);
  return OkStatus();
}

Status FaultInjectionFileSystem::SyncParentDir(const std::string& p) {
  if (plan_.fail_sync_dir) return ErrnoToStatus(EIO, "injected directory fsync failure");
  return target()->SyncParentDir(p);
}

}  // namespace stasis
