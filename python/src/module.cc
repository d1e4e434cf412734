// File: python/src/module.cc
//
// stasis._core: the C++ half of the Python package (python/stasis/ is the other half and
// the public API; docs/python.md). It knows nothing of torch: restored regions leave as
// DLPack-capable arrays (nanobind ndarrays) whose owner keeps the restore alive, tensors
// to snapshot arrive as (pointer, size) pairs the Python side read off torch storages, and
// the Python side builds the views. Every blocking call runs without the GIL; restores and
// snapshots run through RunInterruptible (Ctrl-C, progress).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/logging.h"
#include "python/src/errors.h"
#include "python/src/interruptible.h"
#include "restore/report_json.h"
#include "snapshot/dtype.h"
#include "snapshot/format.h"
#include "stasis/image.h"
#include "stasis/remote.h"
#include "stasis/restore.h"
#include "stasis/tensor.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace stasis::python {
namespace {

// The file name for a progress line; a remote location's without its query (a presigned
// URL's signature).
std::string BaseName(const std::string& location) {
  const std::string path = IsRemoteLocation(location) ? RedactLocation(location) : location;
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

DType DTypeOrThrow(const std::string& name) {
  std::optional<DType> d = DTypeFromName(name);
  if (!d) ThrowStatus(InvalidArgumentError("unknown dtype '" + name + "'"));
  return *d;
}

// ---- Restored: a RestoredModel and what its options point to ----

struct Restored {
  std::string path;
  // RestoreOptions::cancel and ::progress point here, and Reload uses them again.
  std::atomic<bool> cancel{false};
  std::atomic<uint64_t> progress{0};
  // Held while Unload or Reload runs (without the GIL: RestoredModel requires them to run
  // alone, and a reload replaces the manifest and the report the accessors read). Every
  // other call try-locks it and refuses while it is held, rather than wait for it with the
  // GIL held (the reload's caller needs the GIL back to finish).
  std::mutex lifecycle;
  std::unique_ptr<RestoredModel> model;  // last: destroyed first
};

// The model, for one call that must not overlap an unload or reload.
class ModelAccess {
 public:
  explicit ModelAccess(Restored& r) : lock_(r.lifecycle, std::try_to_lock) {
    if (!lock_.owns_lock()) ThrowStatus(FailedPreconditionError("an unload or reload is running"));
    if (!r.model) ThrowStatus(FailedPreconditionError("the restore was closed"));
    model_ = r.model.get();
  }
  RestoredModel& operator*() const { return *model_; }
  RestoredModel* operator->() const { return model_; }

 private:
  std::unique_lock<std::mutex> lock_;
  RestoredModel* model_ = nullptr;
};

struct RestoreArgs {
  std::string device = "cpu";
  std::string io = "auto";
  std::string direct = "auto";
  std::string map_file = "auto";
  int threads = 0;
  int queue_depth = 32;
  uint64_t staging_bytes = 0;  // 0: StagingFor(the image)
  bool verify = true;
  bool verify_stored = true;
  bool huge_pages = false;
};

RestoreOptions MakeRestoreOptions(const RestoreArgs& a, Restored* r) {
  RestoreOptions o;
  o.device = ValueOrThrow(ParseDeviceSpec(a.device));
  o.io = ValueOrThrow(ParseIoBackend(a.io));
  o.direct = ValueOrThrow(ParseDirectIo(a.direct));
  o.map_file = ValueOrThrow(RestoreOptions::ParseMapFile(a.map_file));
  o.threads = a.threads;
  o.queue_depth = a.queue_depth;
  o.staging_bytes = a.staging_bytes;
  o.verify = a.verify;
  o.verify_stored = a.verify_stored;
  o.huge_pages = a.huge_pages;
  o.cancel = &r->cancel;
  o.progress = &r->progress;
  return o;
}

// Staging memory for decoding compressed chunks: a sixteenth of the model's bytes, within
// [16 MiB, 256 MiB], so that a load's peak memory stays within the model's bytes + 10%
// (docs/python.md, "Memory"); fewer workers decode at once when it is small.
uint64_t StagingFor(uint64_t raw_bytes) {
  return std::clamp<uint64_t>(raw_bytes / 16, 16ull << 20, 256ull << 20);
}

// "No CUDA device" is kNotFound in the backend; to Python it is a device error, not a
// missing file.
Status DeviceErrorsAsDevice(Status s) {
  if (s.code() == StatusCode::kNotFound &&
      s.message().find("CUDA device") != std::string_view::npos)
    return FailedPreconditionError(std::string(s.message()));
  return s;
}

std::shared_ptr<Restored> Restore(const std::string& path, const RestoreArgs& args) {
  auto r = std::make_shared<Restored>();
  r->path = path;
  RestoreOptions options = MakeRestoreOptions(args, r.get());
  // The image's size, for the staging default and the progress line (the manifest only).
  StatusOr<uint64_t> raw_bytes = InternalError("unset");
  {
    nb::gil_scoped_release release;
    auto reader = OpenImageReader(path);
    raw_bytes = reader.ok() ? StatusOr<uint64_t>((*reader)->manifest().RawBytes())
                            : StatusOr<uint64_t>(reader.status());
  }
  const uint64_t total = ValueOrThrow(std::move(raw_bytes));
  if (args.staging_bytes == 0) options.staging_bytes = StagingFor(total);
  std::unique_ptr<RestoredModel> model;
  Status s = RunInterruptible(
      [&]() -> Status {
        auto restored = RestoredModel::Restore(path, options);
        if (!restored.ok()) return restored.status();
        model = std::move(restored).value();
        return OkStatus();
      },
      &r->cancel, Progress{"restoring " + BaseName(path), total, &r->progress});
  ThrowIfError(DeviceErrorsAsDevice(s));
  r->model = std::move(model);
  return r;
}

// Bytes [offset, offset + size) of region `i` as a one-dimensional uint8 array on its
// device, for torch.from_dlpack or numpy.from_dlpack. The array's owner holds the
// Restored: the memory lives as long as any tensor made from it (unload() still releases
// it: see docs/python.md, "Lifetime").
nb::ndarray<> RegionArray(std::shared_ptr<Restored> r, size_t i, uint64_t offset, uint64_t size) {
  ModelAccess m(*r);
  if (i >= m->regions().size())
    ThrowStatus(OutOfRangeError("region " + std::to_string(i) + " of " +
                                std::to_string(m->regions().size())));
  const MappedRegion region = m->regions()[i];
  if (offset > region.size || size > region.size - offset)
    ThrowStatus(OutOfRangeError("bytes [" + std::to_string(offset) + ", +" + std::to_string(size) +
                                ") run past region " + std::to_string(i) + " of " +
                                std::to_string(region.size) + " bytes"));
  const DeviceSpec device = m->report().device;
  const bool cuda = device.kind == format::DeviceKind::kCuda;
  auto* keep = new std::shared_ptr<Restored>(std::move(r));
  nb::capsule owner(keep,
                    [](void* p) noexcept { delete static_cast<std::shared_ptr<Restored>*>(p); });
  size_t shape[1] = {static_cast<size_t>(size)};
  return nb::ndarray<>(reinterpret_cast<void*>(region.address + offset), 1, shape, owner, nullptr,
                       nb::dtype<uint8_t>(),
                       cuda ? nb::device::cuda::value : nb::device::cpu::value,
                       cuda ? device.ordinal : 0);
}

// Every tensor in one call, column by column: (names, dtypes, shapes, strides, regions,
// offsets in bytes from the region's start, byte sizes). One Python object per value, no per-tensor
// call: a checkpoint of 10^5 tensors costs one pass.
nb::tuple TensorColumns(Restored& r) {
  ModelAccess access(r);
  const RestoredModel& m = *access;
  const RestoredTensors tensors = m.tensors();
  const size_t n = tensors.size();
  nb::list names, dtypes, shapes, strides, regions, offsets, sizes;
  for (size_t i = 0; i < n; ++i) {
    const RestoredTensor t = tensors[i];
    names.append(nb::str(t.name.data(), t.name.size()));
    const std::string_view dt = DTypeName(t.dtype);
    dtypes.append(nb::str(dt.data(), dt.size()));
    nb::list shape, stride;
    for (int64_t d : t.shape) shape.append(d);
    for (int64_t d : t.strides) stride.append(d);
    shapes.append(nb::tuple(shape));
    strides.append(nb::tuple(stride));
    regions.append(t.region);
    offsets.append(t.address - m.regions()[t.region].address);
    sizes.append(t.byte_size);
  }
  return nb::make_tuple(names, dtypes, shapes, strides, regions, offsets, sizes);
}

nb::dict Metadata(const format::Manifest& m) {
  nb::dict d;
  for (const auto& [k, v] : m.metadata)
    d[nb::str(k.data(), k.size())] = nb::str(v.data(), v.size());
  return d;
}

nb::object JsonToPython(const nlohmann::json& j) {
  nb::object json = nb::module_::import_("json");
  return json.attr("loads")(j.dump());
}

// A section's bytes, read and checked without the GIL (a section can be large).
nb::bytes ReadSection(Restored& r, const std::string& name) {
  ModelAccess m(r);
  StatusOr<std::string> bytes = InternalError("unset");
  {
    nb::gil_scoped_release release;
    bytes = m->ReadSection(name);
  }
  const std::string b = ValueOrThrow(std::move(bytes));
  return nb::bytes(b.data(), b.size());
}

void Unload(Restored& r) {
  ModelAccess m(r);
  Status s;
  {
    nb::gil_scoped_release release;
    s = m->Unload();
  }
  ThrowIfError(s);
}

void Reload(Restored& r) {
  ModelAccess m(r);
  r.cancel = false;
  r.progress = 0;
  ThrowIfError(DeviceErrorsAsDevice(RunInterruptible(
      [&] { return m->Reload(); }, &r.cancel,
      Progress{"reloading " + BaseName(r.path), m->manifest().RawBytes(), &r.progress})));
}

// ---- Writer: an ImageWriter, Abandon()ed unless finished ----

struct HostRecord {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
  uint64_t storage = 0;  // address
  uint64_t storage_bytes = 0;
  uint64_t byte_offset = 0;
};

class Writer {
 public:
  Writer(const std::string& path, const std::string& codec, int zstd_level, uint64_t chunk_size,
         int threads, bool overwrite)
      : path_(path) {
    WriterOptions o;
    o.codec = ValueOrThrow(ParseCodecChoice(codec));
    o.zstd_level = zstd_level;
    o.chunk_size = chunk_size;
    o.threads = threads;
    o.overwrite = overwrite;
    o.cancel = &cancel_;
    o.progress = [this](uint64_t bytes) { progress_.store(bytes, std::memory_order_relaxed); };
    writer_ = ValueOrThrow(ImageWriter::Create(path, o));
  }
  ~Writer() {
    if (writer_) writer_->Abandon();
  }

  // `records`: (name, dtype, shape, strides, storage address, storage bytes, byte offset).
  // REQUIRES: every storage stays valid and unchanged during the call.
  void AddHostTensors(
      const std::vector<std::tuple<std::string, std::string, std::vector<int64_t>,
                                   std::vector<int64_t>, uint64_t, uint64_t, uint64_t>>& records,
      uint64_t total_bytes) {
    ImageWriter& w = Live();
    std::vector<HostTensor> tensors;
    tensors.reserve(records.size());
    for (const auto& [name, dtype, shape, strides, storage, storage_bytes, offset] : records) {
      HostTensor t;
      t.name = name;
      t.dtype = DTypeOrThrow(dtype);
      t.shape = shape;
      t.strides = strides;
      t.storage = reinterpret_cast<const void*>(storage);
      t.storage_bytes = storage_bytes;
      t.byte_offset = offset;
      tensors.push_back(std::move(t));
    }
    Run([&] { return stasis::AddHostTensors(tensors, &w); }, total_bytes);
  }

  uint32_t AddRegion(uint64_t size, uint64_t alignment, uint64_t va_hint,
                     const std::string& device) {
    const DeviceSpec d = ValueOrThrow(ParseDeviceSpec(device));
    format::RegionInfo r;
    r.size = size;
    r.alignment = alignment;
    r.va_hint = va_hint;
    r.device_kind = d.kind;
    r.device_ordinal = d.ordinal;
    return ValueOrThrow(Live().AddRegion(r));
  }

  // Bytes of `dtype` elements; the codec groups them as AddHostTensors does.
  // REQUIRES: [address, address + n) stays valid during the call.
  void AddRegionData(uint32_t region, uint64_t offset, uint64_t address, uint64_t n,
                     const std::string& dtype) {
    ImageWriter& w = Live();
    const int element_size = GroupingElementSize(DTypeOrThrow(dtype));
    Status s;
    {
      nb::gil_scoped_release release;
      s = w.AddRegionData(region, offset, reinterpret_cast<const void*>(address), n, element_size);
    }
    ThrowIfError(s);
  }

  // A view at `byte_offset` of `region`; its byte size is the format's (ViewByteSize).
  void AddTensor(const std::string& name, const std::string& dtype,
                 const std::vector<int64_t>& shape, const std::vector<int64_t>& strides,
                 uint32_t region, uint64_t byte_offset) {
    format::TensorInfo t;
    t.name = name;
    t.dtype = DTypeOrThrow(dtype);
    t.shape = shape;
    t.strides = strides;
    t.region_id = region;
    t.byte_offset = byte_offset;
    t.byte_size = ValueOrThrow(format::ViewByteSize(t.dtype, t.shape, t.strides));
    ThrowIfError(Live().AddTensor(std::move(t)));
  }

  // Without the GIL: it drains the chunks in flight and writes the section (bytes objects
  // are immutable, so the buffer stays valid).
  void AddSection(const std::string& name, nb::bytes bytes) {
    ImageWriter& w = Live();
    const std::string_view view(bytes.c_str(), bytes.size());
    Run([&] { return w.AddSection(name, view); }, 0);
  }

  void SetMetadata(const std::string& key, const std::string& value) {
    ThrowIfError(Live().SetMetadata(key, value));
  }

  // Publishes the image; returns (raw bytes, stored bytes, file size, chunks).
  nb::dict Finish() {
    ImageWriter& w = Live();
    Run([&] { return w.Finish(); }, 0);
    const WriterStats st = w.stats();
    writer_.reset();
    nb::dict d;
    d["raw_bytes"] = st.raw_bytes;
    d["stored_bytes"] = st.stored_bytes;
    d["file_size"] = st.file_size;
    d["chunks"] = st.chunks_by_codec[0] + st.chunks_by_codec[1] + st.chunks_by_codec[2];
    return d;
  }

  void Abandon() {
    if (!writer_) return;
    {
      nb::gil_scoped_release release;
      writer_->Abandon();
    }
    writer_.reset();
  }

 private:
  ImageWriter& Live() {
    if (!writer_) ThrowStatus(FailedPreconditionError("the snapshot of " + path_ + " has ended"));
    return *writer_;
  }

  void Run(const std::function<Status()>& work, uint64_t total) {
    Status s = OkStatus();
    try {
      s = RunInterruptible(work, &cancel_,
                           Progress{"writing " + BaseName(path_), total, &progress_});
    } catch (...) {  // interrupted: the writer stopped at its next chunk
      Abandon();
      throw;
    }
    if (!s.ok()) {
      Abandon();
      ThrowStatus(s);
    }
  }

  std::string path_;
  std::atomic<bool> cancel_{false};
  std::atomic<uint64_t> progress_{0};
  std::unique_ptr<ImageWriter> writer_;
};

// ---- inspect / verify ----

nb::dict Inspect(const std::string& path) {
  std::unique_ptr<ImageReader> reader;
  {
    Status s;
    {
      nb::gil_scoped_release release;
      auto opened = OpenImageReader(path);
      if (opened.ok())
        reader = std::move(opened).value();
      else
        s = opened.status();
    }
    ThrowIfError(s);
  }
  const format::Manifest& m = reader->manifest();
  nb::dict d;
  d["path"] = IsRemoteLocation(path) ? RedactLocation(path) : path;
  d["format_version"] = reader->footer().format_version;
  d["file_size"] = reader->footer().file_size;
  d["raw_bytes"] = m.RawBytes();
  d["stored_bytes"] = m.StoredBytes();
  d["chunks"] = m.chunks.size();
  nb::list regions;
  for (const format::RegionInfo& r : m.regions) {
    nb::dict rd;
    rd["size"] = r.size;
    rd["alignment"] = r.alignment;
    rd["va_hint"] = r.va_hint;
    rd["device"] = DeviceSpecString(DeviceSpec{r.device_kind, r.device_ordinal});
    regions.append(rd);
  }
  d["regions"] = regions;
  nb::list tensors;
  for (const format::TensorRef t : m.tensors) {
    nb::dict td;
    td["name"] = nb::str(t.name.data(), t.name.size());
    const std::string_view dt = DTypeName(t.dtype);
    td["dtype"] = nb::str(dt.data(), dt.size());
    td["shape"] = std::vector<int64_t>(t.shape.begin(), t.shape.end());
    td["strides"] = std::vector<int64_t>(t.strides.begin(), t.strides.end());
    td["region"] = t.region_id;
    td["byte_offset"] = t.byte_offset;
    td["byte_size"] = t.byte_size;
    tensors.append(td);
  }
  d["tensors"] = tensors;
  nb::dict sections;
  for (const format::SectionInfo& s : m.sections) sections[nb::str(s.name.c_str())] = s.size;
  d["sections"] = sections;
  d["metadata"] = Metadata(m);
  return d;
}

nb::dict Verify(const std::string& path, int threads) {
  std::unique_ptr<ImageReader> reader;
  VerifyReport report;
  std::atomic<bool> cancel{false};  // verification runs to its end: nothing to release
  std::atomic<uint64_t> checked{0};
  uint64_t total = 0;
  Status s = RunInterruptible(
      [&]() -> Status {
        auto opened = OpenImageReader(path);
        if (!opened.ok()) return opened.status();
        reader = std::move(opened).value();
        VerifyOptions o;
        o.threads = threads;
        o.progress = [&](uint64_t bytes) { checked.store(bytes, std::memory_order_relaxed); };
        auto r = reader->Verify(o);
        if (!r.ok()) return r.status();
        report = std::move(r).value();
        return OkStatus();
      },
      &cancel, Progress{"verifying " + BaseName(path), total, &checked});
  ThrowIfError(s);
  nb::dict d;
  d["path"] = IsRemoteLocation(path) ? RedactLocation(path) : path;
  d["chunks_checked"] = report.chunks_checked;
  d["sections_checked"] = report.sections_checked;
  d["stored_bytes"] = report.stored_bytes;
  d["raw_bytes"] = report.raw_bytes;
  nb::list errors;
  for (const Status& e : report.errors) errors.append(e.ToString());
  d["errors"] = errors;
  return d;
}

}  // namespace
}  // namespace stasis::python

NB_MODULE(_core, m) {
  using namespace stasis::python;
  m.attr("__version__") = STASIS_VERSION_STRING;
  // Restores held by tensors torch has not freed when the interpreter exits are not leaks
  // of ours: the process is ending (nanobind would list each at exit).
  nb::set_leak_warnings(false);
  // A library inside someone's process says nothing unless asked: warnings and errors
  // only, or the level STASIS_LOG names ("info", "debug", ...).
  // To standard error (standard output is the program's own).
  const char* level = std::getenv("STASIS_LOG");
  if (!spdlog::get("stasis")) {  // another stasis library in this process may have set it up
    try {
      stasis::InitLogging(stasis::LogFormat::kText, level ? level : "warn");
    } catch (const std::exception&) {  // logging is not worth failing the import for
    }
  }

  nb::class_<Restored>(m, "Restored")
      .def_prop_ro("path", [](const Restored& r) { return r.path; })
      .def_prop_ro("loaded", [](Restored& r) { return ModelAccess(r)->loaded(); })
      .def_prop_ro(
          "device",
          [](Restored& r) { return stasis::DeviceSpecString(ModelAccess(r)->report().device); })
      .def_prop_ro("device_bytes", [](Restored& r) { return ModelAccess(r)->device_bytes(); })
      .def(
          "regions",
          [](Restored& r) {
            std::vector<std::pair<uint64_t, uint64_t>> out;
            for (const auto& reg : ModelAccess(r)->regions())
              out.emplace_back(reg.address, reg.size);
            return out;
          },
          "(address, size) of each region")
      .def("region_array", &RegionArray, "i"_a, "offset"_a, "size"_a)
      .def("tensor_columns", &TensorColumns)
      .def("metadata", [](Restored& r) { return Metadata(ModelAccess(r)->manifest()); })
      .def("report",
           [](Restored& r) {
             return JsonToPython(stasis::RestoreReportJson(ModelAccess(r)->report()));
           })
      .def("read_section", &ReadSection, "name"_a)
      .def("has_section",
           [](Restored& r, const std::string& name) {
             return ModelAccess(r)->manifest().FindSection(name) != nullptr;
           })
      .def("unload", &Unload)
      .def("reload", &Reload);

  nb::class_<RestoreArgs>(m, "RestoreArgs")
      .def(nb::init<>())
      .def_rw("device", &RestoreArgs::device)
      .def_rw("io", &RestoreArgs::io)
      .def_rw("direct", &RestoreArgs::direct)
      .def_rw("map_file", &RestoreArgs::map_file)
      .def_rw("threads", &RestoreArgs::threads)
      .def_rw("queue_depth", &RestoreArgs::queue_depth)
      .def_rw("staging_bytes", &RestoreArgs::staging_bytes)
      .def_rw("verify", &RestoreArgs::verify)
      .def_rw("verify_stored", &RestoreArgs::verify_stored)
      .def_rw("huge_pages", &RestoreArgs::huge_pages);
  m.def("restore", &Restore, "path"_a, "args"_a);

  nb::class_<Writer>(m, "Writer")
      .def(nb::init<const std::string&, const std::string&, int, uint64_t, int, bool>(), "path"_a,
           "codec"_a = "auto", "zstd_level"_a = 1, "chunk_size"_a = 4ull << 20, "threads"_a = 0,
           "overwrite"_a = false)
      .def("add_host_tensors", &Writer::AddHostTensors, "records"_a, "total_bytes"_a = 0)
      .def("add_region", &Writer::AddRegion, "size"_a, "alignment"_a, "va_hint"_a, "device"_a)
      .def("add_region_data", &Writer::AddRegionData, "region"_a, "offset"_a, "address"_a, "n"_a,
           "dtype"_a)
      .def("add_tensor", &Writer::AddTensor, "name"_a, "dtype"_a, "shape"_a, "strides"_a,
           "region"_a, "byte_offset"_a)
      .def("add_section", &Writer::AddSection)
      .def("set_metadata", &Writer::SetMetadata)
      .def("finish", &Writer::Finish)
      .def("abandon", &Writer::Abandon);

  m.def(
      "shown_location",
      [](const std::string& location) {
        return stasis::IsRemoteLocation(location) ? stasis::RedactLocation(location) : location;
      },
      "A location as messages show it: a remote one without its query or user:password@.");
  m.def("inspect", &Inspect, "path"_a);
  m.def("verify", &Verify, "path"_a, "threads"_a = 0);
}
