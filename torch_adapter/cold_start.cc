// RestoreWhileLoading and RestoreAndBind (stasis/torch_plugin.h): the one cold start that
// `stasis serve`'s model host, `stasis coldstart`, stasis::torch::RestoreModule and the tests
// all run.
#include <exception>
#include <functional>
#include <new>
#include <string>
#include <thread>
#include <utility>

#include "common/clock.h"
#include "stasis/image.h"
#include "stasis/remote.h"
#include "stasis/torch_plugin.h"

namespace stasis::torch {
namespace {

// The image's skeleton, read before any weight: an image without one is refused here,
// naming what it holds instead.
StatusOr<std::pair<std::string, uint64_t>> ReadSkeleton(const std::string& image,
                                                        const RestoreOptions& options) {
  // A remote image (stasis/remote.h) is opened as such; the seam's file system otherwise.
  STASIS_ASSIGN_OR_RETURN(std::unique_ptr<ImageReader> reader,
                          options.fs == nullptr ? OpenImageReader(image, options.remote)
                                                : ImageReader::Open(image, options.fs));
  const format::Manifest& m = reader->manifest();
  const std::string shown = IsRemoteLocation(image) ? RedactLocation(image) : image;
  const format::SectionInfo* section = m.FindSection(kSkeletonSection);
  if (section == nullptr) {
    const std::string* kind = m.FindMetadata(kModelKindKey);
    const std::string* source = m.FindMetadata("source.format");
    const std::string what = kind != nullptr ? *kind : source != nullptr ? *source : "unknown";
    return FailedPreconditionError(
        shown + " has no TorchScript skeleton (no section '" + kSkeletonSection +
        "'; model kind '" + what +
        "'): it was not made from a TorchScript module (model.pt); restore its tensors "
        "instead (RestoreTensors, TorchPlugin::BindTensors)");
  }
  auto bytes = reader->ReadSection(kSkeletonSection);
  if (!bytes.ok()) return bytes.status().WithContext(shown);
  return std::make_pair(std::move(*bytes), section->xxh3);
}

StatusOr<TorchPlugin*> LoadByDevice(const DeviceSpec& device) {
  return LoadTorchPluginFor(DeviceSpecString(device));
}

// The Status of an exception caught while cold-starting: no exception leaves a cold start
// (and none may pass a thread that is still running).
Status CaughtStatus(std::string_view what) {
  try {
    throw;
  } catch (const std::bad_alloc& e) {
    return ResourceExhaustedError(std::string(what) + ": out of memory (" + e.what() + ")");
  } catch (const std::exception& e) {
    return InternalError(std::string(what) + " threw: " + e.what());
  } catch (...) {
    return InternalError(std::string(what) + " threw");
  }
}

StatusOr<TorchPlugin*> LoadFramework(const FrameworkLoader& load, const DeviceSpec& device) {
  try {
    return load ? load(device) : LoadByDevice(device);
  } catch (...) {
    return CaughtStatus("loading the framework");
  }
}

// RestoreWhileLoading, with `before_restore` run on the restore's thread first (a failure
// there skips the restore).
StatusOr<ColdStart> RestoreWhileLoadingAfter(const std::function<Status()>& before_restore,
                                             const std::string& image,
                                             const ColdStartOptions& options,
                                             const FrameworkLoader& load) {
  Clock* clock = RealClock();
  ColdStart out;
  out.started_ns = clock->NowNanos();
  RestoreOptions restore = options.restore;
  if (options.loading_framework != nullptr) restore.yield_io = options.loading_framework;
  StatusOr<std::unique_ptr<RestoredModel>> restored = InternalError("restore did not run");
  auto run_restore = [&] {
    // Possibly on a thread of its own: nothing may escape it (std::terminate).
    try {
      Status s = before_restore ? before_restore() : OkStatus();
      restored = s.ok() ? RestoredModel::Restore(image, restore) : std::move(s);
    } catch (...) {
      restored = CaughtStatus("restore");
    }
    out.restored_ns = clock->NowNanos();
  };
  StatusOr<TorchPlugin*> plugin = InternalError("the framework did not load");
  if (options.framework_first) {
    plugin = LoadFramework(load, options.restore.device);
    out.framework_loaded_ns = clock->NowNanos();
    if (plugin.ok()) run_restore();
  } else {
    // Set before the restore's first read.
    if (options.loading_framework != nullptr) *options.loading_framework = true;
    std::thread restorer;
    try {
      restorer = std::thread(run_restore);
    } catch (...) {
      if (options.loading_framework != nullptr) *options.loading_framework = false;
      return CaughtStatus("starting the restore's thread");
    }
    plugin = LoadFramework(load, options.restore.device);  // catches: `restorer` is joined
    if (options.loading_framework != nullptr) *options.loading_framework = false;
    out.framework_loaded_ns = clock->NowNanos();
    restorer.join();
  }
  STASIS_RETURN_IF_ERROR(plugin.status());
  STASIS_RETURN_IF_ERROR(restored.status());
  out.plugin = *plugin;
  out.restored = std::move(*restored);
  return out;
}

}  // namespace

StatusOr<ColdStart> RestoreWhileLoading(const std::string& image, const ColdStartOptions& options,
                                        const FrameworkLoader& load) {
  return RestoreWhileLoadingAfter(nullptr, image, options, load);
}

StatusOr<BoundColdStart> RestoreAndBind(const std::string& image, const ColdStartOptions& options,
                                        const FrameworkLoader& load) {
  std::pair<std::string, uint64_t> skeleton;
  auto read_skeleton = [&]() -> Status {
    STASIS_ASSIGN_OR_RETURN(skeleton, ReadSkeleton(image, options.restore));
    return OkStatus();
  };
  STASIS_ASSIGN_OR_RETURN(ColdStart cold,
                          RestoreWhileLoadingAfter(read_skeleton, image, options, load));
  // The restore opened the image again: it must be the one the skeleton came from.
  const format::SectionInfo* section = cold.restored->manifest().FindSection(kSkeletonSection);
  if (section == nullptr || section->xxh3 != skeleton.second)
    return Status(StatusCode::kAborted,
                  cold.restored->report().image + " was replaced while it was being restored");
  BoundColdStart out;
  static_cast<ColdStart&>(out) = std::move(cold);
  StatusOr<std::unique_ptr<LoadedModule>> module = InternalError("the skeleton was not bound");
  try {
    module = out.plugin->BindModule(skeleton.first, *out.restored, out.restored, &out.bind);
  } catch (...) {
    module = CaughtStatus("binding the skeleton");
  }
  if (!module.ok()) return module.status().WithContext(out.restored->report().image);
  out.module = std::move(*module);
  out.bound_ns = RealClock()->NowNanos();
  return out;
}

}  // namespace stasis::torch
