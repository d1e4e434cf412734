"""What stasis makes of a failing web server or object store (range_server.py, moto):
retried, and then byte-identical, where a retry can help; a clear error in bounded time where
it cannot; never a mix of two objects' bytes; never a partial export left behind."""

import time

import pytest

from harness import BUCKET

NAME = "model-many.stasis"  # raw, ~120 chunks of 64 KiB: many range GETs


def chunk_read(request):
    """A range GET of chunk data (the chunks are 64 KiB), not the open's suffix GET."""
    return request.range_length > 32768


def export(stasis, server, out_dir, *args, name=NAME):
    out_dir.mkdir(exist_ok=True)
    out = out_dir / "out.safetensors"
    return stasis.run("export", f"{server.url}/{name}", "-o", out, *args), out


def assert_message(result, *words):
    text = result.stderr.lower()
    assert result.returncode != 0, str(result)
    assert any(w in text for w in words), f"stderr names none of {words}:\n{result}"


# -- not found ---------------------------------------------------------------------------------


@pytest.mark.parametrize("loc", [f"s3://{BUCKET}/no-such-key.stasis",
                                 "s3://no-such-bucket/model-raw.stasis"])
def test_missing_s3_object(stasis, moto, tmp_path, loc):
    for command in (["inspect", loc], ["export", loc, "-o", tmp_path / "out.safetensors"]):
        r = stasis.run(*command, "--s3-endpoint", moto.url, env=stasis.aws_env())
        assert_message(r, "404", "not found")
        assert r.elapsed < 15, f"a 404 should not be retried for long:\n{r}"
    assert not (tmp_path / "out.safetensors").exists()


def test_missing_http_object(stasis, range_server):
    r = stasis.run("verify", f"{range_server.url}/nothing-here.stasis")
    assert_message(r, "404", "not found")
    assert [q.status for q in range_server.requests] == [404]


# -- retried faults: the export must still be byte-identical -----------------------------------


@pytest.mark.parametrize("kind, when", [("500", None), ("503", chunk_read)],
                         ids=["500-on-open", "503-on-chunks"])
def test_5xx_twice_then_ok(stasis, images, range_server, tmp_path, kind, when):
    range_server.faults.add(kind, count=2, when=when)
    r, out = export(stasis, range_server, tmp_path / "o")
    assert r.returncode == 0, str(r)
    assert out.read_bytes() == images["many"].export.read_bytes()
    assert [q.status for q in range_server.requests].count(int(kind)) == 2


@pytest.mark.parametrize("kind", ["reset", "truncate"])
def test_partial_body_retries_only_the_missing_bytes(stasis, images, range_server, tmp_path,
                                                     kind):
    sent = 16384
    range_server.faults.add(kind, after_bytes=sent, when=chunk_read)
    r, out = export(stasis, range_server, tmp_path / "o")
    assert r.returncode == 0, str(r)
    assert out.read_bytes() == images["many"].export.read_bytes()

    reqs = range_server.requests
    broken = next(q for q in reqs if q.fault == kind)
    start, end = broken.range
    later = [q for q in reqs if q.started > broken.started and q.range_length]
    retries = [q for q in later if q.range[1] == end and start < q.range[0] <= start + sent]
    assert retries, (f"no retry of bytes {start}-{end} that starts past the {sent} bytes sent; "
                     f"later ranges: {[q.range for q in later]}")
    # And nothing asks for the bytes that did arrive again.
    assert not [q for q in later if q.range[0] <= start <= q.range[1]], \
        [q.range for q in later]


def test_stall_is_cut_by_the_stall_timeout(stasis, images, range_server, tmp_path):
    # 8 KiB, then nothing for 5 s. libcurl's low-speed check alone averages over a window of
    # up to 5 s, so the burst would hide the stall for ~6 s; stasis's own check (time since
    # the last byte) cuts it after the stall timeout.
    range_server.faults.add("stall", seconds=5, after_bytes=8192, when=chunk_read)
    r, out = export(stasis, range_server, tmp_path / "o", "--remote-stall-timeout", "1")
    assert r.returncode == 0, str(r)
    assert out.read_bytes() == images["many"].export.read_bytes()
    stalled = next(q for q in range_server.requests if q.fault == "stall")
    retry = [q for q in range_server.requests
             if q.started > stalled.started and q.range and q.range[1] == stalled.range[1]]
    assert retry, "the stalled range was never asked for again"
    # The client gave up on its own: the retry began well before the server ended the stall.
    assert retry[0].started - stalled.started < 3, retry[0].started - stalled.started


# -- faults that must fail, clearly and in bounded time ------------------------------------------


def test_persistent_500_fails_after_the_retries(stasis, range_server, tmp_path):
    range_server.faults.add("500", count=None)
    r, out = export(stasis, range_server, tmp_path / "o", "--remote-retries", "1")
    assert_message(r, "500")
    assert r.elapsed < 15, str(r)
    assert len(range_server.requests) <= 2, [q.headers.get("range") for q in range_server.requests]
    assert not out.exists()


@pytest.mark.parametrize("command", ["export", "verify", "restore"])
def test_object_replaced_while_read(stasis, range_server, tmp_path, command):
    """The object is replaced (same size, one byte changed: only the ETag tells) after two
    chunk reads: If-Match turns the later reads into 412s, and the command fails instead of
    mixing two objects' bytes."""
    range_server.faults.add("replace", skip=2, when=chunk_read)
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    args = ["-o", out_dir / "out.safetensors"] if command == "export" else []
    r = stasis.run(command, f"{range_server.url}/{NAME}", *args)
    assert_message(r, "replaced")
    assert 412 in [q.status for q in range_server.requests], "If-Match was not sent"
    assert list(out_dir.iterdir()) == [], "export left a file behind"


def test_etag_changing_without_412(stasis, range_server, tmp_path):
    """A server that ignores If-Match: the ETag of each answer is checked too."""
    range_server.faults.add("wrong_etag", count=None, when=chunk_read)
    out_dir = tmp_path / "o"
    r, _ = export(stasis, range_server, out_dir)
    assert_message(r, "replaced")
    assert list(out_dir.iterdir()) == [], "export left a file behind"


def test_server_ignoring_range(stasis, images, range_server, tmp_path):
    """200 with the whole object whatever the Range: an error, unless the client asked for
    the whole object anyway."""
    range_server.faults.add("ignore_range", count=None)
    size = images["raw"].path.stat().st_size
    r, out = export(stasis, range_server, tmp_path / "o", name="model-raw.stasis")
    if r.returncode == 0:
        first = range_server.requests[0].range
        assert first is None or (first[0] is None and first[1] >= size) or first == (0, None), \
            f"success though a part was asked for and the whole came back:\n{r}"
        assert out.read_bytes() == images["raw"].export.read_bytes()
    else:
        assert_message(r, "range")
        assert not out.exists()


@pytest.mark.parametrize("how", ["http", "s3"])
def test_name_that_does_not_resolve(stasis, how):
    if how == "http":
        args = ["http://nonexistent.invalid/x.stasis"]
    else:
        args = [f"s3://{BUCKET}/x.stasis", "--s3-endpoint", "http://nonexistent.invalid:9000"]
    r = stasis.run("inspect", *args, env=stasis.aws_env())
    assert_message(r, "resolve")
    assert r.elapsed < 30, str(r)


def test_connection_refused(stasis, closed_port):
    r = stasis.run("inspect", f"http://127.0.0.1:{closed_port}/x.stasis")
    assert_message(r, "connect")
    assert r.elapsed < 30, str(r)


def test_deadline_bounds_a_trickle(stasis, range_server, tmp_path):
    """4 KiB/s is no stall (the threshold is 1 KiB/s), so only the deadline ends it."""
    range_server.faults.add("trickle", count=None, rate=4096)
    start = time.monotonic()
    r, out = export(stasis, range_server, tmp_path / "o", "--remote-deadline", "2")
    assert_message(r, "deadline")
    assert time.monotonic() - start < 10, str(r)
    assert not out.exists()


# -- parallelism ---------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 8])
def test_parallel_range_gets_over_reused_connections(stasis, images, range_server, tmp_path,
                                                     concurrency):
    # 20 ms per chunk read, so that reads in flight together overlap at the server.
    range_server.faults.add("delay", count=None, seconds=0.02, when=chunk_read)
    r, out = export(stasis, range_server, tmp_path / "o", "--remote-concurrency",
                    str(concurrency))
    assert r.returncode == 0, str(r)
    assert out.read_bytes() == images["many"].export.read_bytes()
    reqs = range_server.requests
    if concurrency == 1:
        assert range_server.max_inflight == 1
    else:
        assert 1 < range_server.max_inflight <= concurrency, range_server.max_inflight
    # Reused: one connection per read in flight, plus the one the open used.
    assert range_server.connections <= concurrency + 1 < len(reqs), \
        (range_server.connections, len(reqs))


def test_a_permanent_error_stops_the_other_reads(stasis, range_server, tmp_path):
    """A 403 on one chunk ends the restore at once: the reads still queued or in flight are
    cancelled, not run through their retry schedules."""
    range_server.faults.add("403", count=1, when=chunk_read)
    range_server.faults.add("delay", count=None, when=chunk_read, seconds=0.5)
    r, out = export(stasis, range_server, tmp_path / "o", "--remote-concurrency", "4")
    assert_message(r, "403", "denied")
    assert r.elapsed < 10, str(r)
    # ~120 chunks: without cancelling, every one would still be fetched.
    assert len(range_server.requests) < 40, len(range_server.requests)
    assert not out.exists()
