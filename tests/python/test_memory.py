"""Peak RSS of stasis.load on cpu: the model's bytes + 10% over the interpreter's own
(torch and stasis imported), whether chunks are mapped, read in place or decompressed."""

import subprocess
import sys
import textwrap

import pytest
import torch

import stasis

MODEL_BYTES = 256 << 20


@pytest.mark.parametrize("codec", ["raw", "auto"])
def test_peak_rss_of_load_is_the_model_plus_ten_percent(tmp_path, codec):
    g = torch.Generator().manual_seed(11)
    # bf16 normals: "auto" groups and compresses them (decoded through staging slots).
    tensors = {f"layer{i}": torch.randn(MODEL_BYTES // 16 // 2, generator=g).to(torch.bfloat16) for i in range(16)}
    path = tmp_path / "m.stasis"
    report = stasis.snapshot(tensors, path, codec=codec)
    assert report.raw_bytes == MODEL_BYTES
    if codec == "auto":
        assert report.stored_bytes < report.raw_bytes
    del tensors
    code = textwrap.dedent(
        f"""
        import torch, stasis
        def status(key):  # of this process's memory (ru_maxrss would count its parent's)
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) * 1024
        base = status("VmRSS")
        peak_before = status("VmHWM")
        d = stasis.load({str(path)!r})
        total = sum(int(t.view(torch.int16).max()) for t in d.values())  # every byte read, no copy
        peak = status("VmHWM")
        print(base, peak_before, peak)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    base, peak_before, peak = map(int, r.stdout.split())
    allowed = peak_before + int(MODEL_BYTES * 1.10)
    print(f"{codec}: base {base >> 20} MiB (peak {peak_before >> 20}), peak {peak >> 20} MiB, model {MODEL_BYTES >> 20} MiB")
    assert peak <= allowed, f"peak {peak / 2**20:.0f} MiB, allowed {allowed / 2**20:.0f} MiB (base {base / 2**20:.0f} MiB)"
