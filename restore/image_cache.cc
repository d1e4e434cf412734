#include "restore/image_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/hash.h"
#include "common/numbers.h"
#include "snapshot/format.h"

namespace stasis {
namespace {

std::string Errno(std::string_view what, const std::string& path) {
  return std::string(what) + " " + path + ": " + std::strerror(errno);
}

Status IoError(std::string_view what, const std::string& path) {
  const int e = errno;
  std::string m = Errno(what, path);
  if (e == ENOSPC || e == EDQUOT) return ResourceExhaustedError(m);
  if (e == EACCES || e == EPERM || e == EROFS) return PermissionDeniedError(m);
  if (e == ENOENT) return NotFoundError(m);
  return UnavailableError(m);
}

Status PwriteAll(int fd, const void* data, uint64_t n, uint64_t offset, const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, std::min<uint64_t>(n, 1ull << 30), static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      return IoError("write", path);
    }
    p += w, n -= static_cast<uint64_t>(w), offset += static_cast<uint64_t>(w);
  }
  return OkStatus();
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Whether someone holds `lock`'s flock (a live filler).
bool LockHeld(const std::string& lock) {
  int fd = ::open(lock.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return false;
  bool held = ::flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  ::close(fd);  // releases ours, if we got it
  return held;
}

}  // namespace

std::string CacheKey(const format::Footer& footer, std::string_view etag) {
  std::string id = std::to_string(footer.manifest_xxh3) + "/" +
                   std::to_string(footer.manifest_size) + "/" + std::to_string(footer.file_size) +
                   "/" + std::string(etag);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx",
                static_cast<unsigned long long>(Xxh3(id.data(), id.size())));
  return hex;
}

StatusOr<RawLayout> PlanRawLayout(const format::Manifest& source) {
  RawLayout out;
  out.manifest = source;
  uint64_t off = format::kHeaderSize;
  for (format::ChunkInfo& c : out.manifest.chunks) {
    // As the writer places raw chunks (ImageWriter AlignFile): block-aligned, and large
    // ones at their map phase so a mapped restore gets whole large folios.
    uint64_t at = format::AlignUp(off, format::kBlockAlign);
    if (c.raw_size >= format::kMapPhase && c.dst_offset % format::kBlockAlign == 0) {
      const uint64_t want = c.dst_offset % format::kMapPhase;
      uint64_t phased = format::AlignDown(at, format::kMapPhase) + want;
      if (phased < at) phased += format::kMapPhase;
      at = phased;
    }
    c.file_offset = at;
    c.codec = format::Codec::kRaw;
    c.element_size = 0;
    c.stored_size = c.raw_size;
    c.stored_xxh3 = c.raw_xxh3;
    off = at + c.raw_size;
  }
  for (format::SectionInfo& s : out.manifest.sections) {
    if (s.size == 0) {  // the format places empty sections nowhere
      s.file_offset = 0;
      continue;
    }
    s.file_offset = format::AlignUp(off, format::kBlockAlign);
    off = s.file_offset + s.size;
  }
  out.manifest_offset = format::AlignUp(off, format::kBlockAlign);
  STASIS_RETURN_IF_ERROR(format::ValidateManifest(out.manifest, out.manifest_offset));
  return out;
}

std::optional<std::string> FindCacheEntry(const std::string& dir, const std::string& key) {
  std::string path = dir + "/" + key + ".stasis";
  if (::access(path.c_str(), R_OK) != 0) return std::nullopt;
  return path;
}

void TouchCacheEntry(const std::string& path) {
  ::utimensat(AT_FDCWD, path.c_str(), nullptr, 0);  // now
}

std::string EntryDifference(const format::Manifest& source, const format::Manifest& entry) {
  if (source.regions.size() != entry.regions.size()) return "another number of regions";
  for (size_t i = 0; i < source.regions.size(); ++i) {
    const format::RegionInfo &a = source.regions[i], &b = entry.regions[i];
    if (a.size != b.size || a.alignment != b.alignment || a.va_hint != b.va_hint ||
        a.device_kind != b.device_kind || a.device_ordinal != b.device_ordinal)
      return "region " + Num(i) + " differs";
  }
  if (source.chunks.size() != entry.chunks.size()) return "another number of chunks";
  for (size_t i = 0; i < source.chunks.size(); ++i) {
    const format::ChunkInfo &a = source.chunks[i], &b = entry.chunks[i];
    if (a.raw_size != b.raw_size || a.raw_xxh3 != b.raw_xxh3 || a.region_id != b.region_id ||
        a.dst_offset != b.dst_offset || b.codec != format::Codec::kRaw)
      return "chunk " + Num(i) + " differs";
  }
  if (source.tensors.size() != entry.tensors.size()) return "another number of tensors";
  for (size_t i = 0; i < source.tensors.size(); ++i)
    if (!format::SameTensor(source.tensors[i], entry.tensors[i]))
      return "tensor " + Num(i) + " differs";
  if (source.sections.size() != entry.sections.size()) return "another number of sections";
  for (size_t i = 0; i < source.sections.size(); ++i) {
    const format::SectionInfo &a = source.sections[i], &b = entry.sections[i];
    if (a.name != b.name || a.size != b.size || a.xxh3 != b.xxh3)
      return "section " + Num(i) + " differs";
  }
  if (source.metadata != entry.metadata) return "the metadata differs";
  return "";
}

Status RemoveCacheEntry(const std::string& dir, const std::string& key) {
  const std::string lock = dir + "/" + key + ".lock", entry = dir + "/" + key + ".stasis";
  int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return IoError("open", lock);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    return UnavailableError(entry + " is being filled by another process");
  }
  Status s =
      ::unlink(entry.c_str()) == 0 || errno == ENOENT ? OkStatus() : IoError("remove", entry);
  ::close(fd);
  return s;
}

StatusOr<std::unique_ptr<CacheFill>> CacheFill::Begin(const std::string& dir,
                                                      const std::string& key,
                                                      const ImageReader& source) {
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) return IoError("create cache", dir);
  std::unique_ptr<CacheFill> f(new CacheFill());
  f->source_ = &source;
  f->entry_ = dir + "/" + key + ".stasis";
  f->partial_ = f->entry_ + ".partial";
  f->lock_path_ = dir + "/" + key + ".lock";
  f->lock_fd_ = ::open(f->lock_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (f->lock_fd_ < 0) return IoError("open", f->lock_path_);
  if (::flock(f->lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) return std::unique_ptr<CacheFill>();  // another filler
    return IoError("lock", f->lock_path_);
  }
  f->locked_ = true;
  // Published between our lookup and the lock: nothing to fill.
  if (::access(f->entry_.c_str(), F_OK) == 0) return std::unique_ptr<CacheFill>();
  STASIS_ASSIGN_OR_RETURN(f->layout_, PlanRawLayout(source.manifest()));
  // O_TRUNC: a .partial left by a filler that died is started over.
  f->fd_ = ::open(f->partial_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (f->fd_ < 0) return IoError("create", f->partial_);
  // Holes read as zeros: the padding verify expects. Reserve the blocks now, so a full
  // disk shows here and not as a failed write halfway.
  const uint64_t data_end = f->layout_.manifest_offset;
  // fallocate(2), not posix_fallocate: glibc's fallback writes every block itself.
  if (::fallocate(f->fd_, 0, 0, static_cast<off_t>(data_end)) != 0 && errno != EOPNOTSUPP &&
      errno != EINVAL)
    return IoError("reserve space for", f->partial_);
  std::string header = format::EncodeHeader(source.footer().format_version);
  STASIS_RETURN_IF_ERROR(PwriteAll(f->fd_, header.data(), header.size(), 0, f->partial_));
  f->put_ = std::vector<std::atomic<uint8_t>>(f->layout_.manifest.chunks.size());
  return f;
}

CacheFill::~CacheFill() {
  if (fd_ >= 0) ::close(fd_);
  if (!published_ && locked_) ::unlink(partial_.c_str());
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

Status CacheFill::Put(uint32_t chunk, const uint8_t* raw) {
  // Never fails the restore: a write that fails (a full disk) only spoils the entry.
  if (failed_.load(std::memory_order_relaxed)) return OkStatus();
  if (chunk >= put_.size() || put_[chunk].exchange(1) != 0) return OkStatus();
  const format::ChunkInfo& c = layout_.manifest.chunks[chunk];
  Status s = PwriteAll(fd_, raw, c.raw_size, c.file_offset, partial_);
  if (!s.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failed_.exchange(true)) failure_ = s;
    return OkStatus();
  }
  puts_.fetch_add(1, std::memory_order_relaxed);
  return OkStatus();
}

Status CacheFill::Publish() {
  if (published_) return OkStatus();
  if (failed_.load()) {
    std::lock_guard<std::mutex> lock(mu_);
    return failure_;
  }
  if (puts_.load() != put_.size())
    return FailedPreconditionError("cache fill: " + Num(puts_.load()) + " of " + Num(put_.size()) +
                                   " chunks written");
  for (const format::SectionInfo& s : layout_.manifest.sections) {
    STASIS_ASSIGN_OR_RETURN(std::string bytes, source_->ReadSection(s.name));
    STASIS_RETURN_IF_ERROR(PwriteAll(fd_, bytes.data(), bytes.size(), s.file_offset, partial_));
  }
  format::Footer f;
  STASIS_ASSIGN_OR_RETURN(
      std::string manifest,
      format::EncodeStoredManifest(layout_.manifest, source_->footer().format_version, 3, &f));
  f.manifest_offset = layout_.manifest_offset;
  f.manifest_size = manifest.size();
  f.manifest_xxh3 = Xxh3(manifest.data(), manifest.size());
  f.file_size = f.manifest_offset + manifest.size() + format::kFooterSize;
  std::string footer = format::EncodeFooter(f);
  STASIS_RETURN_IF_ERROR(
      PwriteAll(fd_, manifest.data(), manifest.size(), f.manifest_offset, partial_));
  STASIS_RETURN_IF_ERROR(
      PwriteAll(fd_, footer.data(), footer.size(), f.manifest_offset + manifest.size(), partial_));
  if (::ftruncate(fd_, static_cast<off_t>(f.file_size)) != 0) return IoError("truncate", partial_);
  if (::fdatasync(fd_) != 0) return IoError("sync", partial_);
  if (::rename(partial_.c_str(), entry_.c_str()) != 0) return IoError("publish", entry_);
  published_ = true;
  const std::string dir = entry_.substr(0, entry_.rfind('/'));
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return OkStatus();
}

StatusOr<std::vector<CacheEntry>> ListCacheEntries(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return IoError("open cache", dir);
  std::vector<CacheEntry> out;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    bool partial = EndsWith(name, ".stasis.partial");
    if (!partial && !EndsWith(name, ".stasis")) continue;
    CacheEntry c;
    c.path = dir + "/" + name;
    c.key = name.substr(0, name.find('.'));
    c.partial = partial;
    struct stat st;
    if (::stat(c.path.c_str(), &st) != 0) continue;  // removed meanwhile
    c.bytes = static_cast<uint64_t>(st.st_blocks) * 512;
    c.last_used_unix = st.st_mtim.tv_sec;
    if (partial) c.filling = LockHeld(dir + "/" + c.key + ".lock");
    out.push_back(std::move(c));
  }
  ::closedir(d);
  std::sort(out.begin(), out.end(), [](const CacheEntry& a, const CacheEntry& b) {
    return a.last_used_unix != b.last_used_unix ? a.last_used_unix < b.last_used_unix
                                                : a.path < b.path;
  });
  return out;
}

StatusOr<std::vector<CacheEntry>> PruneCache(const std::string& dir, uint64_t max_bytes,
                                             const std::string& keep) {
  STASIS_ASSIGN_OR_RETURN(std::vector<CacheEntry> entries, ListCacheEntries(dir));
  std::vector<CacheEntry> removed;
  uint64_t total = 0;
  for (const CacheEntry& e : entries)
    if (!e.partial) total += e.bytes;
  for (const CacheEntry& e : entries) {
    if (e.partial) {
      // Under the key's lock: a filler that takes it after the listing must not lose its
      // partial file to us.
      const std::string lock = dir + "/" + e.key + ".lock";
      int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
      if (fd < 0) continue;
      if (::flock(fd, LOCK_EX | LOCK_NB) == 0 && ::unlink(e.path.c_str()) == 0)
        removed.push_back(e);
      ::close(fd);
      continue;
    }
    if (max_bytes == 0 || total <= max_bytes) continue;
    if (e.path == keep) continue;
    // Unlinking an entry another process restores from is safe: its open descriptor and
    // mappings keep the inode.
    if (::unlink(e.path.c_str()) == 0) {
      total -= e.bytes;
      removed.push_back(e);
    }
  }
  return removed;
}

}  // namespace stasis
