#include "restore/io/remote_image.h"

#include "stasis/remote.h"

namespace stasis {
namespace {

// ImageReader opens its file through a FileSystem; this one hands out the pinned object
// under its own location and has nothing else.
class PinnedObjectFileSystem final : public FileSystem {
 public:
  explicit PinnedObjectFileSystem(std::shared_ptr<const RemoteObject> o) : o_(std::move(o)) {}
  StatusOr<std::unique_ptr<RandomAccessFile>> OpenRandomAccess(const std::string&) override {
    return o_->NewFile(o_);
  }
  StatusOr<std::unique_ptr<WritableFile>> CreateExclusive(const std::string&) override {
    return UnimplementedError("remote images are read-only here");
  }
  Status Rename(const std::string&, const std::string&) override {
    return UnimplementedError("remote images are read-only here");
  }
  Status Remove(const std::string&) override {
    return UnimplementedError("remote images are read-only here");
  }
  Status SyncParentDir(const std::string&) override { return OkStatus(); }
  bool Exists(const std::string&) override { return true; }

 private:
  std::shared_ptr<const RemoteObject> o_;
};

}  // namespace

StatusOr<std::unique_ptr<ImageReader>> OpenRemoteImageReader(
    const std::shared_ptr<const RemoteObject>& object) {
  PinnedObjectFileSystem fs(object);  // ImageReader keeps the file, not the file system
  return ImageReader::Open(object->display(), &fs);
}

StatusOr<std::unique_ptr<ImageReader>> OpenImageReader(const std::string& location,
                                                       const RemoteOptions& options) {
  if (!IsRemoteLocation(location)) return ImageReader::Open(location);
  STASIS_ASSIGN_OR_RETURN(std::shared_ptr<const RemoteObject> object,
                          RemoteObject::Open(location, options));
  return OpenRemoteImageReader(object);
}

}  // namespace stasis
