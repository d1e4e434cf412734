"""One load by one peer loader, in a process of its own; prints one JSON line.

    python load_one.py --loader NAME --file PATH [--device cpu|cuda:N]

The timed region starts when the loader is called and ends when every tensor is in
memory on the device and usable: on the CPU that includes reading one byte of every
4 KiB page of every tensor, because some loaders (safetensors' mmap, torch.load with
mmap=True) return before reading anything and would otherwise win by deferring the
work to the first use. On CUDA it ends after torch.cuda.synchronize(). Interpreter
start and `import torch` are outside it (as the stasis rows leave out process start).

After the timed region every tensor is hashed (peers_lib's digest) so the driver can
check the bytes against the source file; that pass is not timed.
"""

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers_lib  # noqa: E402

PAGE = 4096


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def load_safetensors_file(path, device):
    from safetensors.torch import load_file
    return load_file(path, device=device)


def load_safetensors_open(path, device):
    from safetensors import safe_open
    out = {}
    with safe_open(path, framework="pt", device=device) as f:
        for name in f.keys():
            out[name] = f.get_tensor(name)
    return out


def load_runai(path, device):
    # Concurrency comes from RUNAI_STREAMER_CONCURRENCY (the driver sets it; the
    # streamer's docs: raise it until throughput stops growing). owned=True (the default)
    # hands every tensor to the caller, valid after the streamer closes.
    from runai_model_streamer import SafetensorsStreamer
    out = {}
    with SafetensorsStreamer() as streamer:
        streamer.stream_file(path)
        for name, tensor in streamer.get_tensors():
            out[name] = tensor.to(device) if device != "cpu" else tensor
    return out


def load_tensorizer(path, device):
    from tensorizer import TensorDeserializer
    readers = int(os.environ.get("STASIS_PEERS_TENSORIZER_READERS", "0")) or None
    with TensorDeserializer(path, device=device, lazy_load=False, num_readers=readers) as d:
        return dict(d.items())


def load_torch(path, device):
    import torch
    return torch.load(path, map_location=device, weights_only=True)


def load_torch_mmap(path, device):
    import torch
    return torch.load(path, map_location=device, weights_only=True, mmap=True)


def load_fastsafetensors(path, device):
    from fastsafetensors import SafeTensorsFileLoader, SingleGroup
    loader = SafeTensorsFileLoader(SingleGroup(), device=device, nogds=True)
    try:
        loader.add_filenames({0: [path]})
        files = loader.copy_files_to_device()
        out = {name: files.get_tensor(name) for name in loader.get_keys()}
        # Tensors share ownership of the buffer (fastsafetensors' docs), so closing the
        # loader here does not free them.
        return out
    finally:
        loader.close()


LOADERS = {
    "safetensors load_file": load_safetensors_file,
    "safetensors safe_open": load_safetensors_open,
    "runai-model-streamer": load_runai,
    "tensorizer": load_tensorizer,
    "torch.load": load_torch,
    "torch.load mmap": load_torch_mmap,
    "fastsafetensors": load_fastsafetensors,
}


def touch_every_page(tensors) -> None:
    import torch
    for t in tensors.values():
        if t.numel() == 0:
            continue
        flat = t.reshape(-1) if t.is_contiguous() else t.contiguous().reshape(-1)
        flat.view(torch.uint8)[::PAGE].sum()


def digest(tensors) -> str:
    import torch
    hashes = {}
    for name, t in tensors.items():
        c = t.detach().to("cpu").contiguous()
        hashes[name] = peers_lib.xxh3_ptr(c.data_ptr(), c.numel() * c.element_size())
        del c
    return peers_lib.combine(hashes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loader", required=True, choices=sorted(LOADERS))
    ap.add_argument("--file", required=True)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()

    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    cuda = a.device.startswith("cuda")
    if cuda:
        torch.cuda.init()
        torch.zeros(1, device=a.device)  # context creation is not the loader's cost
    rss_before = rss_bytes()
    out = {"loader": a.loader, "file": a.file, "device": a.device, "rss_before_bytes": rss_before}
    try:
        t0 = time.perf_counter()
        tensors = LOADERS[a.loader](a.file, a.device)
        t1 = time.perf_counter()
        if cuda:
            torch.cuda.synchronize()
        else:
            touch_every_page(tensors)
        t2 = time.perf_counter()
    except Exception as e:  # reported, not raised: the driver prints it in the table
        out.update(ok=False, error=f"{type(e).__name__}: {e}")
        print(json.dumps(out), flush=True)
        return 0
    out["load_s"] = t2 - t0
    out["returned_s"] = t1 - t0
    out["bytes"] = sum(t.numel() * t.element_size() for t in tensors.values())
    out["tensors"] = len(tensors)
    out["peak_rss_self_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t3 = time.perf_counter()
    out["digest"] = digest(tensors)
    out["digest_s"] = time.perf_counter() - t3
    out["ok"] = True
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
