"""Bad input: clear exceptions, never a crash, nothing left behind."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import stasis


@pytest.fixture
def image(tmp_path, rng):
    path = tmp_path / "m.stasis"
    # Random floats: zstd cannot shrink them, so the chunks are stored raw and a flipped
    # byte lands in a chunk's payload.
    stasis.snapshot({"w": torch.randn(64, 1024, generator=rng), "b": torch.arange(10)}, path, chunk_size=64 << 10)
    return path


def test_a_missing_image_is_file_not_found(tmp_path):
    for call in (stasis.load, stasis.inspect, stasis.verify):
        with pytest.raises(FileNotFoundError, match="nope.stasis"):
            call(tmp_path / "nope.stasis")


def test_not_an_image_is_a_value_error(tmp_path):
    path = tmp_path / "junk.stasis"
    path.write_bytes(b"definitely not an image" * 1000)
    for call in (stasis.load, stasis.inspect, stasis.verify):
        with pytest.raises(ValueError):
            call(path)


def test_a_corrupt_chunk_is_a_value_error_naming_it(image):
    data = bytearray(image.read_bytes())
    data[4096 + 100] ^= 0x01  # inside the first chunk's payload
    image.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        stasis.load(image)
    with pytest.raises(ValueError, match="chunk 0"):
        stasis.verify(image)
    stasis.inspect(image)  # the structure is intact: inspect reads no weight


def test_a_truncated_image_is_a_value_error(image):
    data = image.read_bytes()
    for keep in (len(data) // 2, len(data) - 7, 100):
        image.write_bytes(data[:keep])
        with pytest.raises(ValueError):
            stasis.load(image)


def test_a_bad_device_or_option_is_clear(image):
    with pytest.raises(ValueError, match="device"):
        stasis.load(image, device="tpu")
    with pytest.raises(TypeError, match="unknown restore option"):
        stasis.load(image, turbo=True)
    with pytest.raises(ValueError, match="I/O backend"):
        stasis.load(image, io="carrier-pigeon")
    if not torch.cuda.is_available():
        # No driver or no device here: a RuntimeError, not a crash.
        with pytest.raises((RuntimeError, ValueError)):
            stasis.load(image, device="cuda")


def test_restore_options_reach_the_engine(image):
    loaded = stasis.load(image, io="pread", direct="off", map_file="off", threads=1, verify=True)
    report = loaded.report
    assert report["io"]["backend"] == "pread"
    assert report["workers"] == 1
    assert report["chunks_mapped"] == 0


def test_ctrl_c_cancels_a_restore_cleanly(tmp_path):
    """SIGINT during a long restore raises KeyboardInterrupt once the restore has stopped
    and released its memory; the interpreter goes on."""
    path = tmp_path / "big.stasis"
    code = textwrap.dedent(
        f"""
        import os, signal, threading, time, resource, torch, stasis
        path = {str(path)!r}
        g = torch.Generator().manual_seed(5)
        stasis.snapshot({{"w": torch.randn(64 << 20, generator=g)}}, path)  # 256 MiB
        base = stasis.load(path, io="pread", direct="on", threads=1)
        del base
        threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGINT)).start()
        t0 = time.perf_counter()
        try:
            stasis.load(path, io="pread", direct="on", threads=1, queue_depth=2, staging_bytes=16 << 20)
            print("finished", time.perf_counter() - t0)
        except KeyboardInterrupt:
            print("interrupted", time.perf_counter() - t0)
        print("alive", stasis.load(path)["w"].shape[0])
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    if lines[0] == "finished":
        pytest.skip(f"the restore took {lines[1]} s: done before the signal came")
    assert lines[0] == "interrupted"
    assert float(lines[1]) < 5
    assert lines[2:] == ["alive", str(64 << 20)]
