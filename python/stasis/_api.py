"""The public functions of the stasis package (docs/python.md)."""

import collections
import json
import os
import time
import weakref
from dataclasses import dataclass

from . import _core

# Sections of compile_cache=True: torch.compiler.save_cache_artifacts()'s bytes, and a tar
# of inductor's cache directory (the compiled C++ kernels of a CPU model).
COMPILE_CACHE_SECTION = "torch.compile_cache"
INDUCTOR_CACHE_SECTION = "torch.inductor_cache.tar"

_RESTORE_OPTIONS = (
    "io",
    "direct",
    "map_file",
    "threads",
    "queue_depth",
    "staging_bytes",
    "verify",
    "verify_stored",
    "huge_pages",
)


@dataclass
class SnapshotReport:
    """What stasis.snapshot wrote."""

    path: str
    tensors: int
    raw_bytes: int
    stored_bytes: int
    file_size: int
    chunks: int
    seconds: float
    compile_cache_bytes: int = 0


class LoadedTensors(dict):
    """stasis.load's result: a dict of name -> torch.Tensor, views of memory the restore
    owns, plus the restore's lifecycle. The memory lives while any tensor does; unload()
    releases it early (addresses stay reserved: do not read a tensor until reload())."""

    def __init__(self, items, restored):
        super().__init__(items)
        self._stasis = restored

    def __reduce__(self):
        # Pickled (torch.save) as an OrderedDict of tensors, as a state_dict is, which
        # torch.load(weights_only=True) accepts; the restore stays in this process.
        return (collections.OrderedDict, (list(self.items()),))

    @property
    def report(self):
        return self._stasis.report()

    @property
    def metadata(self):
        return self._stasis.metadata()

    def unload(self):
        self._stasis.unload()

    def reload(self):
        self._stasis.reload()


def _restore(path, device, options):
    unknown = set(options) - set(_RESTORE_OPTIONS)
    if unknown:
        raise TypeError(f"unknown restore option(s): {', '.join(sorted(unknown))}")
    args = _core.RestoreArgs()
    args.device = str(device)
    for k, v in options.items():
        setattr(args, k, v)
    return _core.restore(os.fspath(path), args)


def _torch():
    try:
        from . import _torch as t
    except ImportError as e:  # torch is not a dependency of the wheel
        raise ImportError(f"this stasis function needs torch ({e})") from e
    return t


def _device_string(device):
    d = str(device)
    return "cuda:0" if d == "cuda" else d


# ---- snapshot ----


def _gather(obj, T):
    """(entries, metadata): entries are (name, tensor) in a stable order."""
    torch = T.torch
    meta = {}
    if isinstance(obj, torch.nn.Module):
        slots = T.module_slots(obj)
        entries = [(name, t) for name, _, _, _, t in slots]
        cls = type(obj)
        meta["source.format"] = "torch.nn.Module"
        meta["python.class"] = f"{cls.__module__}.{cls.__qualname__}"
        non_persistent = [name for name, _, _, kind, _ in slots if kind == "buffer.non_persistent"]
        meta["torch.non_persistent_buffers"] = json.dumps(non_persistent)
        config = getattr(obj, "config", None)
        if config is not None and hasattr(config, "to_json_string"):
            meta["hf.class"] = cls.__name__
            meta["hf.config"] = config.to_json_string(use_diff=False)
            try:
                import transformers

                meta["transformers.version"] = transformers.__version__
            except ImportError:
                pass
    elif isinstance(obj, dict):
        entries = list(obj.items())
        meta["source.format"] = "torch.tensors"
    else:
        raise TypeError(f"stasis.snapshot takes an nn.Module or a dict of tensors, not {type(obj).__name__}")
    for name, t in entries:
        if not isinstance(name, str) or not name:
            raise TypeError(f"tensor names must be non-empty strings, not {name!r}")
        T.check_snapshottable(name, t)
    meta["torch.version"] = torch.__version__
    return entries, meta


def _host_records(entries, T):
    records = []
    storages = {}
    for name, t in entries:
        ptr, nbytes = T.storage_of(t)
        storages[ptr] = max(storages.get(ptr, 0), nbytes)
        records.append(
            (
                name,
                T.dtype_name(t, name),
                list(t.shape),
                list(t.stride()),
                ptr,
                nbytes,
                t.storage_offset() * t.element_size(),
            )
        )
    return records, sum(storages.values())


def _add_cuda(writer, entries, T):
    """CUDA tensors: one region per run of storages close in a device's address space,
    recording the address as the restore's hint; the bytes cross to the host in pieces of
    _CUDA_PIECE through one pinned buffer (never a full host copy)."""
    torch = T.torch
    storages = {}  # (device index, address) -> [bytes, a tensor of that storage]
    for _, t in entries:
        ptr, nbytes = T.storage_of(t)
        key = (t.device.index or 0, ptr)
        if key not in storages:
            storages[key] = [nbytes, t]
        storages[key][0] = max(storages[key][0], nbytes)
    runs = []  # [device, begin, end, [addresses]]
    for dev, ptr in sorted(storages):
        end = ptr + storages[(dev, ptr)][0]
        if runs and runs[-1][0] == dev and ptr <= runs[-1][2] + T._CUDA_REGION_GAP:
            runs[-1][2] = max(runs[-1][2], end)
            runs[-1][3].append(ptr)
        else:
            runs.append([dev, ptr, end, [ptr]])
    where = {}  # (device, storage address) -> (region, region start)
    pinned = torch.empty(T._CUDA_PIECE, dtype=torch.uint8, pin_memory=True)
    for dev, begin, end, ptrs in runs:
        region = writer.add_region(end - begin, 256, begin, f"cuda:{dev}")
        for ptr in ptrs:
            where[(dev, ptr)] = (region, begin)
            nbytes, t = storages[(dev, ptr)]
            src = T.storage_bytes_view(t)
            dtype = T.dtype_name(t, "(storage)")
            for off in range(0, nbytes, T._CUDA_PIECE):
                n = min(T._CUDA_PIECE, nbytes - off)
                pinned[:n].copy_(src[off : off + n])
                writer.add_region_data(region, ptr - begin + off, pinned.data_ptr(), n, dtype)
    for name, t in entries:
        ptr, _ = T.storage_of(t)
        region, begin = where[(t.device.index or 0, ptr)]
        writer.add_tensor(
            name,
            T.dtype_name(t, name),
            list(t.shape),
            list(t.stride()),
            region,
            ptr - begin + t.storage_offset() * t.element_size(),
        )


def _inductor_cache_dir():
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
    except ImportError:
        return None
    return cache_dir()


def _compile_cache_blobs(torch):
    """(torch.compiler.save_cache_artifacts()'s bytes, a tar of inductor's cache directory).
    The artifacts hold the compiled graphs (and on GPUs, Triton's kernels); on CPUs the C++
    kernels they call live only in the cache directory as shared objects, so it goes too,
    and a fresh process skips compiling them."""
    save = getattr(getattr(torch, "compiler", None), "save_cache_artifacts", None)
    if save is None:
        raise RuntimeError(f"compile_cache=True needs torch >= 2.7 (torch.compiler.save_cache_artifacts); this is torch {torch.__version__}")
    saved = save()
    if saved is None:
        raise ValueError("compile_cache=True, but torch has no compiled artifacts: run the compiled model once before the snapshot")
    artifacts = bytes(saved[0])
    directory = _inductor_cache_dir()
    if directory is None or not os.path.isdir(directory):
        return artifacts, None
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for root, dirs, files in os.walk(directory):
            dirs[:] = sorted(d for d in dirs if d != "locks")
            for f in sorted(files):
                if not f.endswith(".lock"):
                    full = os.path.join(root, f)
                    tar.add(full, arcname=os.path.relpath(full, directory), recursive=False)
    return artifacts, buf.getvalue()


def snapshot(
    obj,
    path,
    *,
    codec="auto",
    metadata=None,
    overwrite=False,
    compile_cache=False,
    zstd_level=1,
    threads=0,
    chunk_size=4 << 20,
):
    """Writes an image of `obj` (an nn.Module: every parameter and buffer, persistent or
    not; or a dict of name -> tensor) at `path`, atomically: a failed or interrupted
    snapshot leaves nothing at `path`. Each storage is stored once, so tied and aliased
    tensors stay tied; views keep their shape, strides and offset. Returns a
    SnapshotReport. Tensors must not change while it runs."""
    T = _torch()
    started = time.perf_counter()
    path = os.fspath(path)
    entries, meta = _gather(obj, T)
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata must map str to str, not {k!r}: {v!r}")
        meta[k] = v
    blob, inductor_tar = _compile_cache_blobs(T.torch) if compile_cache else (None, None)
    host = [(n, T.plain(t)) for n, t in entries if t.device.type == "cpu"]
    cuda = [(n, T.plain(t)) for n, t in entries if t.device.type == "cuda"]
    writer = _core.Writer(path, codec, zstd_level, chunk_size, threads, overwrite)
    try:
        if host or not cuda:
            records, total = _host_records(host, T)
            writer.add_host_tensors(records, total)
        if cuda:
            _add_cuda(writer, cuda, T)
        for k, v in meta.items():
            writer.set_metadata(k, v)
        if blob is not None:
            writer.add_section(COMPILE_CACHE_SECTION, blob)
            writer.set_metadata("torch.compile_cache.torch_version", T.torch.__version__)
        if inductor_tar is not None:
            writer.add_section(INDUCTOR_CACHE_SECTION, inductor_tar)
        stats = writer.finish()
    except BaseException:
        writer.abandon()
        raise
    return SnapshotReport(
        path=path,
        tensors=len(entries),
        raw_bytes=stats["raw_bytes"],
        stored_bytes=stats["stored_bytes"],
        file_size=stats["file_size"],
        chunks=stats["chunks"],
        seconds=time.perf_counter() - started,
        compile_cache_bytes=(len(blob) if blob is not None else 0) + (len(inductor_tar) if inductor_tar is not None else 0),
    )


# ---- load / restore ----


def load(path, *, device="cpu", **restore_options):
    """Restores the image at `path` onto `device` ("cpu", "cuda", "cuda:N") and returns a
    LoadedTensors (a dict of name -> torch.Tensor) holding every tensor of the image as a
    zero-copy view of stasis-owned memory. restore_options: io, direct, map_file, threads,
    queue_depth, staging_bytes, verify, verify_stored, huge_pages (docs/python.md)."""
    T = _torch()
    restored = _restore(path, _device_string(device), restore_options)
    return LoadedTensors(T.views_of(restored), restored)


def _mismatches(slots, image_tensors):
    """Every way the module's tensors and the image's differ. `image_tensors`: name ->
    (shape tuple, torch dtype or None when this torch lacks it), from the manifest."""
    problems = []
    names = set()
    for name, _, _, kind, old in slots:
        names.add(name)
        if name not in image_tensors:
            problems.append(f"missing from the image: {kind} '{name}'")
            continue
        shape, dtype = image_tensors[name]
        if tuple(old.shape) != shape:
            problems.append(f"shape of '{name}': module {tuple(old.shape)}, image {shape}")
        if old.dtype != dtype:
            problems.append(f"dtype of '{name}': module {old.dtype}, image {dtype}")
    for name in image_tensors:
        if name not in names:
            problems.append(f"unexpected in the image: '{name}'")
    return problems


def _broken_ties(slots, tensors):
    """Tensors one object in the module (tied weights) whose names the image keeps apart."""
    groups = {}
    for name, _, _, _, old in slots:
        groups.setdefault(id(old), []).append(name)
    problems = []
    for names in groups.values():
        views = [tensors[n] for n in names if n in tensors]
        if len(views) > 1 and any(v.data_ptr() != views[0].data_ptr() or v.stride() != views[0].stride() for v in views):
            problems.append("tied in the module, apart in the image: " + ", ".join(f"'{n}'" for n in names))
    return problems


def _unpack_inductor_cache(tar_bytes, directory):
    """Adds the files of an inductor cache tar to `directory`, keeping files already there
    (the cache is content-addressed: a file of the same name has the same content)."""
    import io
    import tarfile

    root = os.path.realpath(directory)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r") as tar:
        for member in tar.getmembers():
            target = os.path.realpath(os.path.join(root, member.name))
            if not member.isfile() or not target.startswith(root + os.sep):
                continue  # only plain files, only inside the cache directory
            if os.path.exists(target):
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.stasis-tmp.{os.getpid()}"
            with tar.extractfile(member) as src, open(tmp, "wb") as dst:
                dst.write(src.read())
            os.chmod(tmp, member.mode & 0o755)
            os.replace(tmp, target)


def _load_compile_cache(restored, torch):
    """Loads an image's compiled-code cache into this process's torch (before the first
    compile); a cache from another torch version is skipped with a warning."""
    if not restored.has_section(COMPILE_CACHE_SECTION):
        return False
    load_cache = getattr(getattr(torch, "compiler", None), "load_cache_artifacts", None)
    recorded = restored.metadata().get("torch.compile_cache.torch_version")
    if load_cache is None or recorded != torch.__version__:
        import warnings

        warnings.warn(f"the image's compiled-code cache was made by torch {recorded}; this is torch {torch.__version__}: not loaded")
        return False
    directory = _inductor_cache_dir()
    if directory is not None and restored.has_section(INDUCTOR_CACHE_SECTION):
        _unpack_inductor_cache(restored.read_section(INDUCTOR_CACHE_SECTION), directory)
    load_cache(restored.read_section(COMPILE_CACHE_SECTION))
    return True


# The restore behind each module stasis.restore bound (weakly: the module's own __dict__
# stays picklable, and the tensors keep the memory alive themselves).
_RESTORED_MODULES = weakref.WeakKeyDictionary()


def restore(module, path, *, device=None, strict=True, **restore_options):
    """Binds every parameter and buffer of `module` to memory restored from `path`, without
    initialising or copying a weight, and returns `module`. The module may be built on the
    meta device. Tied parameters stay one Parameter object. device None: the module's
    device, or cpu for a module on the meta device. With `strict`, every missing,
    unexpected, shape- or dtype-mismatched tensor is named in one ValueError, before
    anything is read, and the module is left as it was."""
    T = _torch()
    torch = T.torch
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"stasis.restore takes an nn.Module, not {type(module).__name__}")
    path = os.fspath(path)
    return _restore_into(module, path, _core.inspect(path), device, strict, restore_options)


def _restore_into(module, path, image, device, strict, restore_options):
    """restore() with the image's inspect() already read (from_image reads it first)."""
    T = _torch()
    torch = T.torch
    slots = T.module_slots(module)
    manifest = {t["name"]: (tuple(t["shape"]), T.TO_TORCH.get(t["dtype"])) for t in image["tensors"]}
    problems = _mismatches(slots, manifest)
    if strict and problems:
        raise ValueError(f"{_shown(path)} does not match the module ({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
    if device is None:
        device = T.module_device(module) or "cpu"
    restored = _restore(path, _device_string(device), restore_options)
    tensors = dict(T.views_of(restored))
    if strict:
        ties = _broken_ties(slots, tensors)
        if ties:
            raise ValueError(f"{_shown(path)} does not match the module ({len(ties)} problem(s)):\n  " + "\n  ".join(ties))
    bound = {}  # id(the module's Parameter) -> its restored Parameter: ties stay ties
    for name, mod, attr, kind, old in slots:
        t = tensors.get(name)
        if t is None or tuple(old.shape) != tuple(t.shape) or old.dtype != t.dtype:
            continue  # only when not strict
        if kind == "parameter":
            p = bound.get(id(old))
            if p is None:
                p = torch.nn.Parameter(t, requires_grad=old.requires_grad)
                bound[id(old)] = p
            mod._parameters[attr] = p
        else:
            mod._buffers[attr] = t
    _RESTORED_MODULES[module] = restored
    _load_compile_cache(restored, torch)
    return module


# ---- lifecycle, inspect, verify ----


def handle(obj):
    """The restore behind a LoadedTensors or a module stasis.restore bound."""
    restored = getattr(obj, "_stasis", None) if isinstance(obj, LoadedTensors) else None
    if restored is None:
        try:
            restored = _RESTORED_MODULES.get(obj)
        except TypeError:  # not weakly referenceable: not a module
            restored = None
    if restored is None:
        raise ValueError("not a result of stasis.load or stasis.restore")
    return restored


def unload(obj):
    """Releases the device memory behind `obj` (stasis.load's or stasis.restore's result),
    keeping every address reserved. Tensors must not be read until reload()."""
    handle(obj).unload()


def reload(obj):
    """Restores the image again into the same addresses: every tensor is valid again."""
    handle(obj).reload()


def _shown(path):
    """`path` as messages show it (a presigned URL's signature cut off: stasis/remote.h)."""
    return _core.shown_location(os.fspath(path))


def inspect(path):
    """The image's structure as a dict: format_version, regions, tensors (name, dtype,
    shape, strides, region, byte_offset, byte_size), sections, metadata. Reads no weight."""
    return _core.inspect(os.fspath(path))


def verify(path, *, threads=0):
    """Checks every checksum of the image. Returns the report (a dict) when it is intact;
    raises ValueError naming every problem otherwise."""
    report = _core.verify(os.fspath(path), threads)
    if report["errors"]:
        raise ValueError(f"{_shown(path)} is corrupt ({len(report['errors'])} problem(s)):\n  " + "\n  ".join(report["errors"]))
    return report
