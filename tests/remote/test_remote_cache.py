"""The cache tier (stasis/image_cache.h): a remote restore with --cache fills a raw entry as it
goes and publishes it only once complete; the next restore uses it without reading the
remote chunks; entries are valid images; eviction, concurrent fills and a filler killed
with SIGKILL leave nothing that looks complete."""

import json
import os
import signal
import subprocess
import time

from harness import STASIS

NAME = "model-zstd.stasis"  # compressed: the entry differs from the source (raw chunks)


def export(stasis, location, out, cache, *args):
    return stasis.ok("export", location, "-o", out, "--force", "--cache", cache, "--json",
                     *args).json()


def entries(stasis, cache):
    return stasis.ok("cache", "ls", cache, "--json").json()["entries"]


def wait_for_partial(cache, timeout=20):
    deadline = time.monotonic() + timeout
    while not (cache.exists() and any(p.endswith(".partial") for p in os.listdir(cache))):
        assert time.monotonic() < deadline, "the fill never started"
        time.sleep(0.05)


def chunk_read(request):
    return request.range_length > 32768


def test_fill_then_hit(stasis, images, range_server, tmp_path):
    cache = tmp_path / "cache"
    url = f"{range_server.url}/{NAME}"
    first = export(stasis, url, tmp_path / "a.safetensors", cache)["restore"]
    assert first["cache"].startswith("filled "), first["cache"]
    assert (tmp_path / "a.safetensors").read_bytes() == images["zstd"].export.read_bytes()
    [entry] = entries(stasis, cache)
    assert not entry["partial"] and entry["path"].endswith(".stasis")
    # The entry is an image of its own: intact, every chunk raw, the same tensors.
    assert stasis.ok("verify", entry["path"], "--json").json()["intact"]
    inspected = stasis.ok("inspect", entry["path"], "--json").json()
    assert set(inspected["codecs"]) == {"raw"} or all(
        v["chunks"] == 0 for k, v in inspected["codecs"].items() if k != "raw"), inspected
    assert inspected["tensors"] == images["zstd"].inspect["tensors"]

    range_server.reset_log()
    second = export(stasis, url, tmp_path / "b.safetensors", cache)["restore"]
    assert second["cache"] == "hit " + entry["path"], second["cache"]
    assert second["io"]["backend"] != "http"
    assert (tmp_path / "b.safetensors").read_bytes() == images["zstd"].export.read_bytes()
    # Only the open went to the server (it pins the object and names the entry): the
    # suffix GET of the footer and manifest, and the header's 4 KiB; no chunk.
    ranges = [q.range for q in range_server.requests]
    assert len(ranges) <= 2 and not any(chunk_read(q) for q in range_server.requests), ranges


def test_local_images(stasis, images, tmp_path):
    cache = tmp_path / "cache"
    first = export(stasis, images["zstd"].path, tmp_path / "a.safetensors", cache)["restore"]
    assert first["cache"].startswith("filled "), first["cache"]
    second = export(stasis, images["zstd"].path, tmp_path / "b.safetensors", cache)["restore"]
    assert second["cache"].startswith("hit "), second["cache"]
    assert (tmp_path / "b.safetensors").read_bytes() == images["zstd"].export.read_bytes()
    raw = export(stasis, images["raw"].path, tmp_path / "c.safetensors", cache)["restore"]
    assert raw["cache"].startswith("not cached"), raw["cache"]
    assert len(entries(stasis, cache)) == 1


def test_eviction_keeps_the_most_recent(stasis, range_server, tmp_path):
    cache = tmp_path / "cache"
    export(stasis, f"{range_server.url}/model-zstd.stasis", tmp_path / "a.safetensors", cache)
    [first] = entries(stasis, cache)
    time.sleep(1.1)  # mtime resolution of the LRU clock in `ls` is a second
    # A budget of one entry: filling the second evicts the first.
    r = export(stasis, f"{range_server.url}/model-auto.stasis", tmp_path / "b.safetensors", cache,
               "--cache-max", str(first["bytes"] + 4096))["restore"]
    assert r["cache"].startswith("filled "), r["cache"]
    [kept] = entries(stasis, cache)
    assert kept["path"] == r["cache"].split(" ", 1)[1]
    assert not os.path.exists(first["path"])
    # prune with no budget removes nothing complete.
    assert stasis.ok("cache", "prune", cache, "--json").json()["removed"] == []


def test_concurrent_fill_streams_through(stasis, images, range_server, tmp_path):
    cache = tmp_path / "cache"
    url = f"{range_server.url}/{NAME}"
    # The first filler stalls on one chunk for 3 s (under its stall timeout): meanwhile a
    # second restore finds the entry being filled and reads from the source instead.
    range_server.faults.add("stall", count=1, when=chunk_read, seconds=3, after_bytes=1024)
    first = subprocess.Popen(
        [str(STASIS), "export", url, "-o", tmp_path / "a.safetensors", "--cache", cache,
         "--json", "--remote-stall-timeout", "20"],
        env=stasis.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_partial(cache)
        second = export(stasis, url, tmp_path / "b.safetensors", cache)["restore"]
        assert second["cache"].startswith("another process is filling"), second["cache"]
        assert (tmp_path / "b.safetensors").read_bytes() == images["zstd"].export.read_bytes()
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    assert json.loads(out)["restore"]["cache"].startswith("filled "), out
    [entry] = entries(stasis, cache)
    assert stasis.ok("verify", entry["path"], "--json").json()["intact"]


def test_killed_filler_leaves_nothing_complete(stasis, images, range_server, tmp_path):
    cache = tmp_path / "cache"
    url = f"{range_server.url}/{NAME}"
    range_server.faults.add("stall", count=1, when=chunk_read, seconds=30, after_bytes=1024)
    filler = subprocess.Popen(
        [str(STASIS), "export", url, "-o", tmp_path / "a.safetensors", "--cache", cache,
         "--remote-stall-timeout", "60"],
        env=stasis.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_partial(cache)
        time.sleep(0.3)  # some chunks written
    finally:
        filler.send_signal(signal.SIGKILL)
        filler.wait()
    range_server.faults.clear()
    listed = entries(stasis, cache)
    assert [e["partial"] for e in listed] == [True], listed
    assert not listed[0]["filling"], "nobody holds the lock of a killed filler"
    assert not (tmp_path / "a.safetensors").exists()
    # The next restore fills it again (the partial file is started over) and publishes it.
    r = export(stasis, url, tmp_path / "b.safetensors", cache)["restore"]
    assert r["cache"].startswith("filled "), r["cache"]
    [entry] = entries(stasis, cache)
    assert not entry["partial"]
    assert stasis.ok("verify", entry["path"], "--json").json()["intact"]
    assert (tmp_path / "b.safetensors").read_bytes() == images["zstd"].export.read_bytes()


def test_unusable_cache_dir_does_not_fail_the_restore(stasis, images, range_server, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"x")
    r = export(stasis, f"{range_server.url}/{NAME}", tmp_path / "a.safetensors", not_a_dir)
    assert r["restore"]["cache"].startswith("not filled: "), r["restore"]["cache"]
    assert (tmp_path / "a.safetensors").read_bytes() == images["zstd"].export.read_bytes()


def test_prune_removes_abandoned_partials(stasis, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "0123456789abcdef.stasis.partial").write_bytes(b"\0" * 8192)
    removed = stasis.ok("cache", "prune", cache, "--json").json()["removed"]
    assert [os.path.basename(e["path"]) for e in removed] == ["0123456789abcdef.stasis.partial"]
    assert entries(stasis, cache) == []


def test_damaged_entry_is_removed_and_filled_again(stasis, images, range_server, tmp_path):
    cache = tmp_path / "cache"
    url = f"{range_server.url}/{NAME}"
    export(stasis, url, tmp_path / "a.safetensors", cache)
    [entry] = entries(stasis, cache)
    # One byte of chunk data flipped: the entry's own checksums catch it during the restore.
    data = bytearray(open(entry["path"], "rb").read())
    data[8192] ^= 0xFF
    open(entry["path"], "wb").write(bytes(data))
    r = export(stasis, url, tmp_path / "b.safetensors", cache)["restore"]
    assert r["cache"].startswith(f"entry {entry['path']} failed ("), r["cache"]
    assert "checksum" in r["cache"] and ", removed; filled " in r["cache"], r["cache"]
    assert (tmp_path / "b.safetensors").read_bytes() == images["zstd"].export.read_bytes()
    # Refilled: the next restore is a clean hit again.
    [again] = entries(stasis, cache)
    assert stasis.ok("verify", again["path"], "--json").json()["intact"]
    third = export(stasis, url, tmp_path / "c.safetensors", cache)["restore"]
    assert third["cache"].startswith("hit "), third["cache"]


def test_planted_entry_is_not_used(stasis, images, range_server, tmp_path):
    """An entry under the right key holding another image (stale, planted): refused by its
    manifest, removed, filled again from the source."""
    cache = tmp_path / "cache"
    url = f"{range_server.url}/{NAME}"
    export(stasis, url, tmp_path / "a.safetensors", cache)
    [entry] = entries(stasis, cache)
    other = tmp_path / "other-cache"
    export(stasis, f"{range_server.url}/model-many.stasis", tmp_path / "o.safetensors", other)
    [other_entry] = entries(stasis, other)
    os.replace(other_entry["path"], entry["path"])
    r = export(stasis, url, tmp_path / "b.safetensors", cache)["restore"]
    assert "unusable" in r["cache"] and "filled " in r["cache"], r["cache"]
    assert (tmp_path / "b.safetensors").read_bytes() == images["zstd"].export.read_bytes()
    third = export(stasis, url, tmp_path / "c.safetensors", cache)["restore"]
    assert third["cache"].startswith("hit "), third["cache"]
