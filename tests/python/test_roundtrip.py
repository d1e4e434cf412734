"""Snapshot → load/restore round trips: bitwise, ties, strides, dtypes, buffers, meta."""

import os
import subprocess
import sys

import pytest
import torch

import stasis
from models import Tricky, tricky


def regions_of(obj):
    return stasis.handle(obj).regions()


def inside(ptr, regions):
    return any(base <= ptr < base + size for base, size in regions)


def all_named(module):
    """Every parameter and buffer by name, duplicates (ties) included."""
    out = dict(module.state_dict(keep_vars=True))
    out["scale"] = module.scale
    return out


def test_import_does_not_import_torch(tmp_path):
    code = "import sys, stasis; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_load_is_bitwise_with_ties_strides_and_every_dtype(tmp_path, rng):
    m = tricky(rng)
    path = tmp_path / "m.stasis"
    report = stasis.snapshot(m, path)
    # The tied weight is stored once: the raw bytes are the distinct storages'.
    distinct = {t.data_ptr(): t.numel() * t.element_size() for t in all_named(m).values()}
    assert report.raw_bytes >= sum(distinct.values())
    assert report.raw_bytes < sum(distinct.values()) + 256 * len(distinct)
    loaded = stasis.load(path)
    want = all_named(m)
    assert set(loaded) == set(want)  # every state_dict key, ties included, and "scale"
    for name, t in want.items():
        got = loaded[name]
        assert got.dtype == t.dtype, name
        assert got.shape == t.shape, name
        assert got.stride() == t.stride(), name
        assert torch.equal(got.view(torch.uint8) if got.dtype == torch.bool else got, t.detach().view(torch.uint8) if t.dtype == torch.bool else t.detach()), name
    assert {t.dtype for t in loaded.values()} >= {torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.bool}
    assert not loaded["transposed"].is_contiguous()
    # Tied in the source, one memory here; and everything lives in the restore's regions.
    assert loaded["head.weight"].data_ptr() == loaded["embed.weight"].data_ptr()
    regions = regions_of(loaded)
    assert all(inside(t.data_ptr(), regions) for t in loaded.values())
    md = stasis.inspect(path)["metadata"]
    assert md["source.format"] == "torch.nn.Module"
    assert md["python.class"].endswith("Tricky")
    assert md["torch.non_persistent_buffers"] == '["scale"]'


def test_restore_into_a_meta_module_binds_without_copying(tmp_path, rng):
    m = tricky(rng).eval()
    path = tmp_path / "m.stasis"
    stasis.snapshot(m, path)
    ids = torch.randint(0, 32, (3, 7), generator=rng)
    want = m(ids)

    fresh = meta_tricky()
    assert fresh.embed.weight.device.type == "meta"
    out = stasis.restore(fresh, path)
    assert out is fresh
    regions = regions_of(fresh)
    for name, t in list(fresh.named_parameters()) + list(fresh.named_buffers()):
        assert t.device.type == "cpu", name
        # No weight was copied: every parameter and buffer is restored memory.
        assert inside(t.data_ptr(), regions), name
    assert fresh.head.weight is fresh.embed.weight  # still one Parameter
    assert isinstance(fresh.embed.weight, torch.nn.Parameter)
    assert torch.equal(fresh.scale, m.scale)  # the non-persistent buffer came back
    assert not fresh.transposed.is_contiguous()
    got = fresh.eval()(ids)
    assert torch.equal(got, want)


def meta_tricky():
    if hasattr(torch.device, "__enter__"):
        with torch.device("meta"):
            return Tricky()
    from stasis.transformers import _meta_device

    with _meta_device(torch):
        return Tricky()


def test_strict_names_every_problem_and_leaves_the_module_alone(tmp_path, rng):
    path = tmp_path / "m.stasis"
    stasis.snapshot(tricky(rng), path)

    class Other(Tricky):
        def __init__(self):
            super().__init__()
            self.extra = torch.nn.Parameter(torch.zeros(2))
            self.proj = torch.nn.Linear(16, 8)  # shape mismatch
            self.f16 = torch.nn.Parameter(torch.zeros(16, dtype=torch.float32))  # dtype
            del self.bf16  # unexpected in the image

    other = Other()
    before = {n: t.clone() for n, t in other.state_dict().items()}
    with pytest.raises(ValueError) as e:
        stasis.restore(other, path)
    msg = str(e.value)
    assert "missing from the image: parameter 'extra'" in msg
    assert "shape of 'proj.weight'" in msg and "shape of 'proj.bias'" in msg
    assert "dtype of 'f16'" in msg
    assert "unexpected in the image: 'bf16'" in msg
    for n, t in other.state_dict().items():
        assert torch.equal(t, before[n]), n
    # Not strict: what matches is bound, the rest is left.
    stasis.restore(other, path, strict=False)
    assert inside(other.embed.weight.data_ptr(), regions_of(other))
    assert torch.equal(other.extra, torch.zeros(2))
    assert not inside(other.proj.weight.data_ptr(), regions_of(other))


def test_a_dict_of_tensors_keeps_views_and_sharing(tmp_path, rng):
    base = torch.randn(10, 12, generator=rng)
    tensors = {
        "base": base,
        "row": base[3],  # a view with an offset into base's storage
        "col": base[:, 5],  # strided
        "empty": torch.empty(0, 4),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "ints": torch.arange(7, dtype=torch.int32),
    }
    path = tmp_path / "d.stasis"
    report = stasis.snapshot(tensors, path)
    assert report.tensors == 6
    loaded = stasis.load(path)
    assert set(loaded) == set(tensors)
    for k, t in tensors.items():
        assert torch.equal(loaded[k], t), k
        assert loaded[k].stride() == t.stride(), k
    assert loaded["row"].storage_offset() - loaded["base"].storage_offset() == 36
    loaded["base"][3, 0] = 42.0  # one storage, as in the source
    assert loaded["row"][0].item() == 42.0
    assert stasis.inspect(path)["metadata"]["source.format"] == "torch.tensors"


def test_tensors_outlive_the_dict_and_unload_reload_keeps_addresses(tmp_path, rng):
    t = torch.randn(1000, generator=rng)
    path = tmp_path / "t.stasis"
    stasis.snapshot({"t": t}, path)
    loaded = stasis.load(path)
    addr = loaded["t"].data_ptr()
    loaded.unload()
    assert not stasis.handle(loaded).loaded
    loaded.reload()
    assert loaded["t"].data_ptr() == addr
    assert torch.equal(loaded["t"], t)
    keep = loaded["t"]
    del loaded
    import gc

    gc.collect()
    assert torch.equal(keep, t)  # the memory lives as long as a tensor does


def test_a_second_process_reads_the_same_image(tmp_path, rng):
    m = tricky(rng)
    path = tmp_path / "m.stasis"
    stasis.snapshot(m, path)
    first = stasis.load(path)
    code = (
        "import sys, torch, stasis\n"
        "d = stasis.load(sys.argv[1])\n"
        "print(sum(float(t.double().sum()) for k, t in sorted(d.items())))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True, env=os.environ)
    want = sum(float(t.double().sum()) for k, t in sorted(first.items()))
    assert float(r.stdout.strip()) == want


def test_snapshot_refuses_what_it_cannot_store_and_leaves_nothing(tmp_path):
    path = tmp_path / "x.stasis"
    with pytest.raises(ValueError, match="meta device"):
        stasis.snapshot({"w": torch.empty(3, device="meta")}, path)
    with pytest.raises(TypeError, match="not a torch.Tensor"):
        stasis.snapshot({"w": [1, 2]}, path)
    with pytest.raises(TypeError, match="nn.Module or a dict"):
        stasis.snapshot([torch.zeros(1)], path)
    with pytest.raises(TypeError, match="metadata"):
        stasis.snapshot({"w": torch.zeros(1)}, path, metadata={"k": 1})
    with pytest.raises(ValueError, match="codec"):
        stasis.snapshot({"w": torch.zeros(1)}, path, codec="lz4")
    if not hasattr(getattr(torch, "compiler", None), "save_cache_artifacts"):
        with pytest.raises(RuntimeError, match="torch >= 2.7"):
            stasis.snapshot({"w": torch.zeros(1)}, path, compile_cache=True)
    assert os.listdir(tmp_path) == []
    stasis.snapshot({"w": torch.zeros(1)}, path)
    with pytest.raises(FileExistsError):
        stasis.snapshot({"w": torch.ones(1)}, path)
    assert torch.equal(stasis.load(path)["w"], torch.zeros(1))
    stasis.snapshot({"w": torch.ones(1)}, path, overwrite=True)
    assert torch.equal(stasis.load(path)["w"], torch.ones(1))
    assert os.listdir(tmp_path) == ["x.stasis"]


def test_user_metadata_is_stored(tmp_path):
    path = tmp_path / "x.stasis"
    stasis.snapshot({"w": torch.zeros(2)}, path, metadata={"model": "demo", "rev": "7"})
    md = stasis.load(path).metadata
    assert md["model"] == "demo" and md["rev"] == "7"


def test_results_pickle_and_copy_and_lazy_bits_are_stored_as_read(tmp_path, rng):
    import collections
    import copy
    import io

    z = torch.randn(4, dtype=torch.complex64, generator=rng)
    tensors = {"conj": z.conj(), "neg_imag": z.conj().imag, "plain": torch.arange(3.0)}
    path = tmp_path / "t.stasis"
    stasis.snapshot(tensors, path)
    loaded = stasis.load(path)
    for k, t in tensors.items():
        assert torch.equal(loaded[k], t.resolve_conj().resolve_neg()), k
    assert loaded.__reduce__()[0] is collections.OrderedDict  # as a state_dict pickles
    # torch < 2 cannot save tensors of several dtypes over one storage (one region here).
    modern = int(torch.__version__.split(".")[0]) >= 2
    if modern:
        buf = io.BytesIO()
        torch.save(loaded, buf)
        back = torch.load(io.BytesIO(buf.getvalue()))
        assert isinstance(back, dict) and torch.equal(back["plain"], tensors["plain"])

    m = tricky(rng)
    mpath = tmp_path / "m.stasis"
    stasis.snapshot(m, mpath)
    fresh = stasis.restore(Tricky(), mpath)
    twin = copy.deepcopy(fresh)
    assert torch.equal(twin.embed.weight, fresh.embed.weight)
    assert "_stasis" not in fresh.__dict__  # nothing unpicklable in the module
    if modern:
        torch.save(fresh, io.BytesIO())
    assert stasis.handle(fresh).loaded


def test_the_region_writer_calls_the_cuda_snapshot_uses(tmp_path, rng):
    """_add_cuda's calls (add_region, add_region_data in pieces, add_tensor), driven here
    with host memory: bytes land where the tensor records say, sizes come from the format."""
    from stasis import _core

    base = torch.randn(6, 8, generator=rng)
    path = tmp_path / "r.stasis"
    w = _core.Writer(str(path))
    region = w.add_region(base.numel() * 4, 256, 0, "cpu")
    half = base.numel() * 2
    w.add_region_data(region, 0, base.data_ptr(), half, "F32")
    w.add_region_data(region, half, base.data_ptr() + half, half, "F32")
    w.add_tensor("base", "F32", [6, 8], [8, 1], region, 0)
    w.add_tensor("col", "F32", [6], [8], region, 3 * 4)
    w.finish()
    info = {t["name"]: t for t in stasis.inspect(path)["tensors"]}
    assert info["col"]["byte_size"] == (5 * 8 + 1) * 4
    loaded = stasis.load(path)
    assert torch.equal(loaded["base"], base)
    assert torch.equal(loaded["col"], base[:, 3])
    w = _core.Writer(str(tmp_path / "bad.stasis"))
    w.add_region(16, 256, 0, "cpu")
    with pytest.raises(ValueError):
        w.add_tensor("neg", "F32", [-1], [1], 0, 0)
    w.abandon()
    assert not (tmp_path / "bad.stasis").exists()
