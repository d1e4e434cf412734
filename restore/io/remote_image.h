// File: restore/io/remote_image.h
//
// An ImageReader over a pinned remote object: the manifest comes through the object's
// RandomAccessFile (mostly from the tail its opening request brought).
#ifndef STASIS_RESTORE_IO_REMOTE_IMAGE_H_
#define STASIS_RESTORE_IO_REMOTE_IMAGE_H_

#include <memory>

#include "restore/io/remote_object.h"
#include "stasis/image.h"

namespace stasis {

StatusOr<std::unique_ptr<ImageReader>> OpenRemoteImageReader(
    const std::shared_ptr<const RemoteObject>& object);

}  // namespace stasis

#endif  // STASIS_RESTORE_IO_REMOTE_IMAGE_H_
