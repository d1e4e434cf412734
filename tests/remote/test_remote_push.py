"""`stasis push` and `stasis snapshot -o s3://` (restore/io/s3_upload.h) against moto: the
object is the file byte for byte and reads back as the local image; parts go up in parallel,
signed with their SHA-256; failures and interrupts abort the multipart upload, so no upload
stays open and the key is never half-written.

An S3Proxy in front of moto checks what moto does not (every request's SigV4 signature and
payload hash, with range_server.sigv4_problem) and injects faults."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import http.server
import signal
import subprocess
import threading
import time
import urllib.parse
from typing import Callable, Optional

import pytest

from harness import (ACCESS_KEY, BUCKET, SECRET_KEY, STASIS, Result, Stasis, make_model,
                     read_safetensors)
from range_server import s3_error, sigv4_problem

MiB = 1 << 20


# -- an S3 proxy that checks signatures and injects faults ----------------------------------------


@dataclasses.dataclass
class ProxiedRequest:
    method: str
    path: str
    query: dict
    headers: dict  # lower-case names
    size: int  # body bytes
    signature_problem: Optional[tuple]  # sigv4_problem's verdict; None: good
    payload_hash_ok: bool  # x-amz-content-sha256 is the body's SHA-256
    status: int = 0
    started: float = 0.0
    finished: float = 0.0

    @property
    def kind(self) -> str:
        if self.method == "POST" and "uploads" in self.query:
            return "create"
        if self.method == "PUT" and "partNumber" in self.query:
            return "part"
        if self.method == "POST" and "uploadId" in self.query:
            return "complete"
        if self.method == "DELETE" and "uploadId" in self.query:
            return "abort"
        return self.method.lower()


@dataclasses.dataclass
class Fault:
    """Answers `count` requests that `match` with `status` and an S3 error `code` instead of
    forwarding them (`status` 200 with an <Error> body: what S3 may answer to Complete)."""
    match: Callable[[ProxiedRequest], bool]
    status: int
    code: str
    count: int = 1


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "S3Proxy"

    def log_message(self, format, *args):  # noqa: A002
        pass

    def _handle(self):
        split = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        claimed = headers.get("x-amz-content-sha256")
        request = ProxiedRequest(
            method=self.command, path=split.path,
            query=dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True)),
            headers=headers, size=len(body),
            signature_problem=sigv4_problem(self.command, self.path, headers,
                                            {ACCESS_KEY: (SECRET_KEY, None)}),
            payload_hash_ok=claimed == hashlib.sha256(body).hexdigest(),
            started=time.monotonic())
        self.server.started(request)
        try:
            delay = self.server.delay(request)
            if delay and self.server.stopping.wait(delay):
                return  # the test is over: a request held this long is never forwarded
            fault = self.server.take_fault(request)
            if fault is not None:
                payload = s3_error(fault.code, "injected by the test")
                self._reply(request, fault.status, {"Content-Type": "application/xml"}, payload)
                return
            status, reply_headers, payload = self.server.forward(self.command, self.path,
                                                                 headers, body)
            self._reply(request, status, reply_headers, payload)
        finally:
            self.server.finished(request)

    def _reply(self, request, status, headers, payload):
        request.status = status
        self.send_response(status)
        for k, v in headers.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "date",
                                 "server"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


class S3Proxy(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = urllib.parse.urlsplit(upstream)
        self.faults: list[Fault] = []
        self.delays: list[tuple] = []  # (match, seconds)
        self.requests: list[ProxiedRequest] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.inflight_parts = 0
        self.max_inflight_parts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def delay(self, request) -> float:
        return sum(seconds for match, seconds in self.delays if match(request))

    def take_fault(self, request) -> Optional[Fault]:
        with self._lock:
            for fault in self.faults:
                if fault.count > 0 and fault.match(request):
                    fault.count -= 1
                    return fault
        return None

    def started(self, request):
        with self._lock:
            self.requests.append(request)
            if request.kind == "part":
                self.inflight_parts += 1
                self.max_inflight_parts = max(self.max_inflight_parts, self.inflight_parts)

    def finished(self, request):
        request.finished = time.monotonic()
        with self._lock:
            if request.kind == "part":
                self.inflight_parts -= 1

    def forward(self, method, target, headers, body):
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            forwarded = {k: v for k, v in headers.items()
                         if k not in ("host", "expect", "connection", "content-length")}
            conn.request(method, target, body=body if body or method in ("PUT", "POST") else None,
                         headers=forwarded)
            response = conn.getresponse()
            payload = response.read()
            return response.status, dict(response.getheaders()), payload
        finally:
            conn.close()

    def of_kind(self, kind) -> list:
        return [r for r in self.requests if r.kind == kind]

    def start(self) -> "S3Proxy":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def proxy(moto):
    server = S3Proxy(moto.url).start()
    try:
        yield server
    finally:
        server.stop()


# -- images ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class LocalImage:
    model: object  # the safetensors it was made from
    path: object
    export: object  # `stasis export` of it


@pytest.fixture(scope="module")
def big_image(tmp_path_factory, stasis_with_remote_support) -> LocalImage:
    """A raw image of about 12.5 MiB: three parts of 5 MiB."""
    work = tmp_path_factory.mktemp("push")
    stasis = Stasis(work)
    model = work / "big.safetensors"
    make_model(model, seed=99, scale=6)
    path = work / "big.stasis"
    stasis.ok("snapshot", model, "-o", path, "--codec", "raw", "--chunk-size", "1MiB", "-q")
    assert 10 * MiB < path.stat().st_size <= 15 * MiB, path.stat().st_size
    export = work / "big.export.safetensors"
    stasis.ok("export", path, "-o", export)
    return LocalImage(model, path, export)


# -- helpers --------------------------------------------------------------------------------------


def push(stasis, image, key, endpoint, *args, **kw) -> Result:
    return stasis.run("push", image, f"s3://{BUCKET}/{key}", "--s3-endpoint", endpoint, *args,
                      env=stasis.aws_env(), **kw)


def open_uploads(moto) -> list:
    return moto.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])


def assert_absent(moto, key):
    with pytest.raises(moto.client.exceptions.ClientError) as e:
        moto.client.head_object(Bucket=BUCKET, Key=key)
    assert e.value.response["Error"]["Code"] in ("404", "NoSuchKey"), e.value.response


def assert_all_signed(proxy):
    assert proxy.requests
    for r in proxy.requests:
        assert r.signature_problem is None, (r.kind, r.method, r.path, r.query, r.signature_problem)
        assert r.payload_hash_ok, (r.kind, r.headers.get("x-amz-content-sha256"), r.size)


def is_part(n: int) -> Callable:
    return lambda r: r.kind == "part" and r.query.get("partNumber") == str(n)


# -- pushes that succeed --------------------------------------------------------------------------


def test_push_multipart_in_parallel(stasis, moto, proxy, big_image, tmp_path):
    # Each part waits a little at the proxy, so parts in flight together show as such.
    proxy.delays.append((lambda r: r.kind == "part", 0.5))
    key = "pushed/big.stasis"
    r = push(stasis, big_image.path, key, proxy.url, "--part-size", "5MiB", "--concurrency", "8",
             "--json")
    assert r.returncode == 0, str(r)
    report = r.json()
    size = big_image.path.stat().st_size
    assert report["multipart"] is True and report["parts"] == 3, report
    assert report["bytes"] == size and report["part_size"] == 5 * MiB, report
    assert report["location"] == f"s3://{BUCKET}/{key}"

    assert [q.kind for q in proxy.requests if q.kind != "part"] == ["create", "complete"]
    parts = sorted(proxy.of_kind("part"), key=lambda q: int(q.query["partNumber"]))
    assert [q.size for q in parts] == [5 * MiB, 5 * MiB, size - 10 * MiB]
    assert len({q.query["uploadId"] for q in parts}) == 1
    assert proxy.max_inflight_parts >= 2, "the parts went up one at a time"
    assert_all_signed(proxy)  # each part signed with its own SHA-256

    head = moto.client.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == size
    assert head["ETag"].endswith('-3"'), head["ETag"]  # one object made of three parts
    body = moto.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert body == big_image.path.read_bytes()
    assert open_uploads(moto) == []

    out = tmp_path / "remote.safetensors"
    stasis.ok("export", f"s3://{BUCKET}/{key}", "-o", out, "--s3-endpoint", moto.url,
              env=stasis.aws_env())
    assert out.read_bytes() == big_image.export.read_bytes()


def test_push_text_report_and_replace(stasis, moto, big_image, images):
    """The text report names bytes, parts and the rate; a second push replaces the key (as
    `aws s3 cp` does)."""
    key = "pushed/replaced.stasis"
    r = push(stasis, big_image.path, key, moto.url, "--part-size", "5MiB", "-q")
    assert r.returncode == 0, str(r)
    assert "3 parts" in r.stdout and "MB/s" in r.stdout and f"s3://{BUCKET}/{key}" in r.stdout, r
    small = images["raw"].path
    r = push(stasis, small, key, moto.url, "-q")
    assert r.returncode == 0, str(r)
    assert "one request" in r.stdout, r
    body = moto.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert body == small.read_bytes()
    assert open_uploads(moto) == []


def test_small_image_is_one_signed_put(stasis, moto, proxy, images):
    image = images["auto"].path
    assert image.stat().st_size < 64 * MiB
    r = push(stasis, image, "pushed/small.stasis", proxy.url, "--json")
    assert r.returncode == 0, str(r)
    assert r.json()["multipart"] is False and r.json()["parts"] == 1
    assert [q.kind for q in proxy.requests] == ["put"]
    assert proxy.requests[0].size == image.stat().st_size
    assert_all_signed(proxy)
    body = moto.client.get_object(Bucket=BUCKET, Key="pushed/small.stasis")["Body"].read()
    assert body == image.read_bytes()
    stasis.ok("verify", f"s3://{BUCKET}/pushed/small.stasis", "--s3-endpoint", moto.url,
              env=stasis.aws_env())


def test_parts_retried_after_5xx(stasis, moto, proxy, big_image):
    proxy.faults.append(Fault(is_part(2), 503, "SlowDown", count=2))
    proxy.faults.append(Fault(lambda r: r.kind == "complete", 500, "InternalError", count=1))
    key = "pushed/retried.stasis"
    r = push(stasis, big_image.path, key, proxy.url, "--part-size", "5MiB", "--json")
    assert r.returncode == 0, str(r)
    assert r.json()["retries"] == 3, r.json()
    assert len([q for q in proxy.of_kind("part") if q.query["partNumber"] == "2"]) == 3
    assert len(proxy.of_kind("complete")) == 2
    body = moto.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert body == big_image.path.read_bytes()
    assert open_uploads(moto) == []


def test_error_inside_a_200_to_complete_is_retried(stasis, moto, proxy, big_image):
    """S3 may answer Complete with 200 and then an <Error> in the body."""
    proxy.faults.append(Fault(lambda r: r.kind == "complete", 200, "InternalError", count=1))
    key = "pushed/complete-200.stasis"
    r = push(stasis, big_image.path, key, proxy.url, "--part-size", "5MiB", "-q")
    assert r.returncode == 0, str(r)
    assert len(proxy.of_kind("complete")) == 2
    assert moto.client.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == \
        big_image.path.stat().st_size


# -- pushes that fail: nothing published, no upload left open ------------------------------------


def assert_aborted(proxy, moto, key):
    aborts = proxy.of_kind("abort")
    assert aborts, [q.kind for q in proxy.requests]
    assert all(q.status in (200, 204) for q in aborts), [q.status for q in aborts]
    assert open_uploads(moto) == []
    assert_absent(moto, key)


@pytest.mark.parametrize("status, code", [(403, "AccessDenied"), (400, "InvalidArgument")])
def test_part_refused_aborts_the_upload(stasis, moto, proxy, big_image, status, code):
    proxy.faults.append(Fault(is_part(2), status, code, count=100))
    key = f"pushed/refused-{status}.stasis"
    r = push(stasis, big_image.path, key, proxy.url, "--part-size", "5MiB")
    assert r.returncode != 0, str(r)
    assert code in r.stderr and str(status) in r.stderr, r.stderr
    if status == 403:
        assert "PERMISSION_DENIED" in r.stderr, r.stderr
    assert len([q for q in proxy.of_kind("part") if q.query["partNumber"] == "2"]) == 1
    assert_aborted(proxy, moto, key)


def test_failed_complete_aborts_the_upload(stasis, moto, proxy, big_image):
    proxy.faults.append(Fault(lambda r: r.kind == "complete", 400, "InvalidPart", count=100))
    key = "pushed/no-complete.stasis"
    r = push(stasis, big_image.path, key, proxy.url, "--part-size", "5MiB")
    assert r.returncode != 0 and "InvalidPart" in r.stderr, str(r)
    assert_aborted(proxy, moto, key)


def test_error_inside_a_200_that_no_retry_cures(stasis, moto, proxy, big_image):
    proxy.faults.append(Fault(lambda r: r.kind == "complete", 200, "AccessDenied", count=100))
    key = "pushed/complete-denied.stasis"
    r = push(stasis, big_image.path, key, proxy.url, "--part-size", "5MiB")
    assert r.returncode != 0 and "AccessDenied" in r.stderr, str(r)
    assert len(proxy.of_kind("complete")) == 1
    assert_aborted(proxy, moto, key)


def test_retries_run_out(stasis, moto, proxy, big_image):
    proxy.faults.append(Fault(is_part(3), 500, "InternalError", count=100))
    key = "pushed/gave-up.stasis"
    r = push(stasis, big_image.path, key, proxy.url, "--part-size", "5MiB")
    assert r.returncode != 0, str(r)
    assert "UNAVAILABLE" in r.stderr and "gave up after 7 attempts" in r.stderr, r.stderr
    assert len([q for q in proxy.of_kind("part") if q.query["partNumber"] == "3"]) == 7
    assert_aborted(proxy, moto, key)


def test_missing_bucket(stasis, moto, big_image):
    r = stasis.run("push", big_image.path, "s3://no-such-bucket/big.stasis", "--s3-endpoint",
                   moto.url, "--part-size", "5MiB", env=stasis.aws_env())
    assert r.returncode == 2, str(r)  # kNotFound
    assert "NOT_FOUND" in r.stderr and "NoSuchBucket" in r.stderr, r.stderr
    assert "s3://no-such-bucket/big.stasis" in r.stderr
    assert r.elapsed < 15
    assert open_uploads(moto) == []


def test_not_an_image_is_refused_before_any_request(stasis, moto, proxy, tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"not an image\n" * 100000)
    r = push(stasis, junk, "pushed/junk.stasis", proxy.url, "--part-size", "5MiB")
    assert r.returncode == 2, str(r)
    assert "refusing to push" in r.stderr and "not a valid image" in r.stderr, r.stderr
    assert proxy.requests == []
    assert open_uploads(moto) == []
    assert_absent(moto, "pushed/junk.stasis")


@pytest.mark.parametrize("args, words", [
    (["http://127.0.0.1:1/x.stasis"], ["s3://BUCKET/KEY"]),
    ([f"s3://{BUCKET}/x.stasis", "--part-size", "1MiB"], ["5MiB"]),
    ([f"s3://{BUCKET}/x.stasis", "--concurrency", "0"], ["concurrency"]),
])
def test_bad_arguments(stasis, moto, images, args, words):
    r = stasis.run("push", images["raw"].path, *args, "--s3-endpoint", moto.url,
                   env=stasis.aws_env())
    assert r.returncode in (1, 2), str(r)
    assert any(w in r.stderr for w in words), r.stderr


@pytest.mark.parametrize("args, kind", [(["--part-size", "5MiB"], "part"), ([], "put")],
                         ids=["multipart", "one-put"])
def test_interrupt_aborts_the_upload(stasis, moto, proxy, big_image, args, kind):
    """SIGINT while the upload runs: a multipart upload is aborted, the key never appears, and
    the exit status is 130."""
    proxy.delays.append((lambda r: r.kind == kind, 30))
    key = f"pushed/interrupted-{kind}.stasis"
    argv = [str(STASIS), "push", str(big_image.path), f"s3://{BUCKET}/{key}", "--s3-endpoint",
            proxy.url, "-q", *args]
    p = subprocess.Popen(argv, env=stasis.aws_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not proxy.of_kind(kind) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.of_kind(kind), f"no {kind} went up"
        started = time.monotonic()
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    stasis.check_no_secrets(Result(argv, p.returncode, stdout, stderr, 0))
    assert p.returncode == 130, (p.returncode, stderr)
    assert time.monotonic() - started < 10
    assert "interrupted by SIGINT" in stderr and "CANCELLED" in stderr, stderr
    if kind == "part":
        assert_aborted(proxy, moto, key)
    else:
        assert_absent(moto, key)


# -- snapshot -o s3:// ----------------------------------------------------------------------------


def test_snapshot_to_s3(stasis, moto, big_image, tmp_path):
    temp = tmp_path / "tmpdir"
    temp.mkdir()
    key = "snapshots/big.stasis"
    env = stasis.aws_env(AWS_ENDPOINT_URL_S3=moto.url, TMPDIR=temp)
    r = stasis.run("snapshot", big_image.model, "-o", f"s3://{BUCKET}/{key}", "--codec", "raw",
                   "--chunk-size", "1MiB", "--json", env=env)
    assert r.returncode == 0, str(r)
    report = r.json()
    assert report["image"] == f"s3://{BUCKET}/{key}"
    assert report["push"]["bytes"] == report["file_size"]
    assert report["push"]["location"] == f"s3://{BUCKET}/{key}"
    assert list(temp.iterdir()) == []  # the temporary image is gone

    verify = stasis.ok("verify", f"s3://{BUCKET}/{key}", "--json", env=env).json()
    assert verify["intact"] is True
    out = tmp_path / "remote.safetensors"
    stasis.ok("export", f"s3://{BUCKET}/{key}", "-o", out, env=env)
    assert out.read_bytes() == big_image.export.read_bytes()
    assert read_safetensors(out) == read_safetensors(big_image.model)
    head = moto.client.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == report["file_size"]
    assert open_uploads(moto) == []

    # Text mode names the location, not the temporary file, in its first line.
    r = stasis.run("snapshot", big_image.model, "-o", f"s3://{BUCKET}/{key}", "-q", env=env)
    assert r.returncode == 0, str(r)
    assert r.stdout.startswith(f"wrote s3://{BUCKET}/{key}:"), r.stdout
    assert "pushed " in r.stdout
    assert list(temp.iterdir()) == []


def test_snapshot_to_a_missing_bucket_leaves_nothing(stasis, moto, big_image, tmp_path):
    temp = tmp_path / "tmpdir"
    temp.mkdir()
    env = stasis.aws_env(AWS_ENDPOINT_URL_S3=moto.url, TMPDIR=temp)
    r = stasis.run("snapshot", big_image.model, "-o", "s3://no-such-bucket/x.stasis", "-q",
                   env=env)
    assert r.returncode == 2 and "NoSuchBucket" in r.stderr, str(r)
    assert list(temp.iterdir()) == []


def test_snapshot_to_http_is_refused(stasis, big_image, tmp_path):
    temp = tmp_path / "tmpdir"
    temp.mkdir()
    r = stasis.run("snapshot", big_image.model, "-o", "https://example.invalid/x.stasis", "-q",
                   env=stasis.env(TMPDIR=temp))
    assert r.returncode == 2 and "s3://BUCKET/KEY" in r.stderr, str(r)
    assert list(temp.iterdir()) == []
