#include "common/mem_file_system.h"

#include <algorithm>
#include <cstring>

namespace stasis {
namespace {

class MemRandomAccessFile final : public RandomAccessFile {
 public:
  explicit MemRandomAccessFile(std::shared_ptr<const std::string> data) : data_(std::move(data)) {}
  StatusOr<size_t> ReadAt(uint64_t offset, size_t n, void* dst) const override {
    if (offset >= data_->size()) return size_t{0};
    size_t got = static_cast<size_t>(std::min<uint64_t>(n, data_->size() - offset));
    std::memcpy(dst, data_->data() + offset, got);
    return got;
  }
  uint64_t Size() const override { return data_->size(); }

 private:
  std::shared_ptr<const std::string> data_;
};

class MemWritableFile final : public WritableFile {
 public:
  explicit MemWritableFile(std::shared_ptr<std::string> data) : data_(std::move(data)) {}
  Status Append(const void* data, size_t n) override {
    data_->append(static_cast<const char*>(data), n);
    return OkStatus();
  }
  Status Sync() override { return OkStatus(); }
  Status Close() override { return OkStatus(); }
  uint64_t Offset() const override { return data_->size(); }

 private:
  std::shared_ptr<std::string> data_;
};

}  // namespace

void MemFileSystem::SetFile(const std::string& path, std::string contents) {
  std::lock_guard<std::mutex> lock(mu_);
  files_[path] = std::make_shared<std::string>(std::move(contents));
}

StatusOr<std::unique_ptr<RandomAccessFile>> MemFileSystem::OpenRandomAccess(
    const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = files_.find(path);
  if (it == files_.end()) return NotFoundError("open '" + path + "': no such file");
  return std::unique_ptr<RandomAccessFile>(new MemRandomAccessFile(it->second));
}

StatusOr<std::unique_ptr<WritableFile>> MemFileSystem::CreateExclusive(const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  if (files_.count(path)) return AlreadyExistsError("create '" + path + "': file exists");
  auto data = std::make_shared<std::string>();
  files_[path] = data;
  return std::unique_ptr<WritableFile>(new MemWritableFile(data));
}

Status MemFileSystem::Rename(const std::string& from, const std::string& to) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = files_.find(from);
  if (it == files_.end()) return NotFoundError("rename '" + from + "': no such file");
  files_[to] = it->second;
  files_.erase(it);
  return OkStatus();
}

Status MemFileSystem::Remove(const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  if (files_.erase(path) == 0) return NotFoundError("remove '" + path + "': no such file");
  return OkStatus();
}

bool MemFileSystem::Exists(const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  return files_.count(path) != 0;
}

}  // namespace stasis
