"""What stasis needs to know of torch: dtypes, storages, a module's tensors, views.

Only the functions that take or make tensors import this module, and it imports torch.
Everything here works from torch 1.13 (Debian's) to 2.x.
"""

import torch

# The image format's dtype names (docs/image-format.md, "Dtype table") and torch's; a
# dtype this torch lacks (float8 before 2.1, uint16 before 2.3) is left out.
_PAIRS = (
    ("BOOL", "bool"),
    ("U8", "uint8"),
    ("I8", "int8"),
    ("I16", "int16"),
    ("U16", "uint16"),
    ("I32", "int32"),
    ("U32", "uint32"),
    ("I64", "int64"),
    ("U64", "uint64"),
    ("F16", "float16"),
    ("F32", "float32"),
    ("F64", "float64"),
    ("BF16", "bfloat16"),
    ("F8_E5M2", "float8_e5m2"),
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E8M0", "float8_e8m0fnu"),
    ("F8_E4M3FNUZ", "float8_e4m3fnuz"),
    ("F8_E5M2FNUZ", "float8_e5m2fnuz"),
    ("C64", "complex64"),
)
TO_TORCH = {s: getattr(torch, t) for s, t in _PAIRS if isinstance(getattr(torch, t, None), torch.dtype)}
FROM_TORCH = {t: s for s, t in TO_TORCH.items()}

# Storages closer than this in a device's address space share one region of the image
# (the caching allocator packs parameters into large segments); the gap is restored too.
_CUDA_REGION_GAP = 1 << 20
# Device-to-host copies of a CUDA snapshot go through one pinned buffer of this size.
_CUDA_PIECE = 64 << 20


def dtype_name(t, name):
    try:
        return FROM_TORCH[t.dtype]
    except KeyError:
        raise ValueError(f"tensor '{name}': dtype {t.dtype} has no image dtype") from None


def storage_of(t):
    """(address, bytes) of the storage `t` views."""
    if hasattr(t, "untyped_storage"):
        s = t.untyped_storage()
    else:  # torch < 2.0: a TypedStorage (nbytes() is its untyped size)
        s = t.storage()
    return s.data_ptr(), s.nbytes()


def storage_bytes_view(t):
    """A uint8 tensor over the whole storage `t` views (on its device)."""
    if hasattr(t, "untyped_storage"):
        return torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage())
    # torch < 2.0: a tensor of t's dtype over the TypedStorage, seen as bytes.
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(t.storage()).view(torch.uint8)


def plain(t):
    """`t` without autograd and without lazy conjugation or negation bits (a view with
    them stores other values than it reads: those few are materialised)."""
    t = t.detach()
    if (hasattr(t, "is_conj") and t.is_conj()) or (hasattr(t, "is_neg") and t.is_neg()):
        t = t.resolve_conj().resolve_neg()
    return t


def check_snapshottable(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"'{name}' is a {type(t).__name__}, not a torch.Tensor")
    if t.layout != torch.strided:
        raise ValueError(f"tensor '{name}': layout {t.layout} is not supported (strided only)")
    if t.is_quantized:
        raise ValueError(f"tensor '{name}': quantized tensors are not supported")
    if t.device.type == "meta":
        raise ValueError(f"tensor '{name}' is on the meta device: it has no bytes to snapshot")
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"tensor '{name}' is on {t.device}; stasis snapshots cpu and cuda tensors")
    if any(s < 0 for s in t.stride()):
        raise ValueError(f"tensor '{name}' has a negative stride")


def module_slots(module):
    """Every parameter and buffer of `module` as (name, owner module, attribute, kind,
    tensor), kind "parameter", "buffer" or "buffer.non_persistent". Names are state_dict's;
    a tensor reachable by two names (tied weights, a shared submodule) is listed under
    each, as state_dict lists it."""
    out = []
    stack = [("", module, ())]
    while stack:
        prefix, mod, seen = stack.pop()
        for attr, p in mod._parameters.items():
            if p is not None:
                out.append((prefix + attr, mod, attr, "parameter", p))
        non_persistent = getattr(mod, "_non_persistent_buffers_set", ())
        for attr, b in mod._buffers.items():
            if b is not None:
                kind = "buffer.non_persistent" if attr in non_persistent else "buffer"
                out.append((prefix + attr, mod, attr, kind, b))
        children = [(n, c) for n, c in mod._modules.items() if c is not None]
        for n, c in reversed(children):
            if id(c) in seen:  # a module that contains itself
                raise ValueError(f"module '{prefix + n}' contains itself")
            stack.append((prefix + n + ".", c, seen + (id(mod),)))
    return out


def module_device(module):
    """The device of the module's first tensor that is not on the meta device, or None."""
    for _, _, _, _, t in module_slots(module):
        if t.device.type != "meta":
            return t.device
    return None


def views_of(restored):
    """Every tensor of a restore, as zero-copy views of its regions, in the image's order
    as (name, tensor). The tensors of one dtype in one region share one torch storage, so
    tensors that shared memory in the source share it here; each dtype gets a storage of
    its own (beginning at its first tensor) because torch.save refuses a storage viewed as
    several dtypes."""
    names, dtypes, shapes, strides, regions, offsets, sizes = restored.tensor_columns()
    spans = {}  # (region, dtype name) -> [first byte, end]
    for dt_name, region, offset, size in zip(dtypes, regions, offsets, sizes):
        span = spans.setdefault((region, dt_name), [offset, offset + size])
        span[0] = min(span[0], offset)
        span[1] = max(span[1], offset + size)
    flats = {}
    out = []
    for name, dt_name, shape, stride, region, offset in zip(names, dtypes, shapes, strides, regions, offsets):
        dt = TO_TORCH.get(dt_name)
        if dt is None:
            raise ValueError(f"tensor '{name}': dtype {dt_name} is not supported by torch {torch.__version__}")
        lo, hi = spans[(region, dt_name)]
        flat = flats.get((region, dt_name))
        if flat is None:
            if hi == lo:  # nothing to map: an empty tensor on the device
                base = torch.empty(0, dtype=torch.uint8, device=restored.device)
            else:
                base = torch.utils.dlpack.from_dlpack(restored.region_array(region, lo, hi - lo))
            itemsize = torch.empty((), dtype=dt).element_size()
            if lo % itemsize or base.numel() % itemsize:
                raise ValueError(f"tensor '{name}': its bytes are not aligned to its element size {itemsize}")
            flat = base.view(dt)
            flats[(region, dt_name)] = flat
        itemsize = flat.element_size()
        if (offset - lo) % itemsize:
            raise ValueError(f"tensor '{name}': offset {offset} is not a multiple of its element size")
        out.append((name, flat.as_strided(shape, stride, (offset - lo) // itemsize)))
    return out
