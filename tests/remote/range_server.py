"""A small HTTP/1.1 object server for the remote-image tests: byte ranges, ETags, If-Match,
optional AWS SigV4 checking, fault injection and a log of every request.

It serves the files under `root`: GET /a/b reads root/a/b, so s3://bucket/key with
--s3-endpoint pointing here (path-style: /bucket/key) reads root/bucket/key.

The fixture runs it in a thread of the pytest process, so tests steer it directly:

    server.faults.add("reset", after_bytes=16384, when=lambda r: r.range_length > 32768)
    server.require_sigv4({"AKID": ("secret", None)})
    ... run stasis ...
    server.requests, server.max_inflight, server.connections

Every wait in here is bounded and wakes up when the server stops, so a test that fails
half-way never leaves a thread sleeping past teardown.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import http.server
import os
import re
import socket
import struct
import sys
import threading
import time
import urllib.parse
from typing import Callable, Optional

FAULT_KINDS = {
    "403",  # S3-style AccessDenied
    "500",
    "503",
    "reset",  # headers + after_bytes of the body, then RST (SO_LINGER 0)
    "truncate",  # headers + after_bytes of the body, then an orderly close (FIN)
    "stall",  # headers + after_bytes, then hold the connection `seconds`, then close
    "trickle",  # the whole body at `rate` bytes/s
    "replace",  # replace the file with `content` (atomically), then serve normally
    "ignore_range",  # 200 and the whole body whatever Range asked for
    "wrong_etag",  # ignore If-Match and answer with another ETag (same bytes)
    "delay",  # wait `seconds`, then serve normally (makes concurrency observable)
}


@dataclasses.dataclass
class Request:
    method: str
    target: str  # as sent: path and query string
    headers: dict  # lower-case names
    connection: int  # the number of the connection that carried it
    started: float  # time.monotonic()
    # When the server began the last write of its answer. The client cannot have the whole
    # answer, and start another request in its place, before then; so [started, replied]
    # intervals overlap only for requests that really were in flight together.
    replied: float = 0.0
    status: int = 0
    fault: str = ""

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.target).path

    @property
    def query(self) -> str:
        return urllib.parse.urlsplit(self.target).query

    @property
    def range(self) -> Optional[tuple]:
        """(start, end) for bytes=a-b, (start, None) for bytes=a-, (None, n) for bytes=-n."""
        return parse_range(self.headers.get("range"))

    @property
    def range_length(self) -> int:
        """Bytes a bounded range asks for; 0 for any other request."""
        r = self.range
        if r and r[0] is not None and r[1] is not None:
            return r[1] - r[0] + 1
        return 0


@dataclasses.dataclass
class Fault:
    kind: str
    count: Optional[int]  # requests it applies to; None: every one
    skip: int  # matching requests let through first
    path: Optional[str]
    when: Optional[Callable[[Request], bool]]
    after_bytes: int
    seconds: float
    rate: int
    content: Optional[bytes]
    hits: int = 0


class Faults:
    """The faults still to inject; the first one that matches a request applies to it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, kind, count=1, *, skip=0, path=None, when=None, after_bytes=4096,
            seconds=3.0, rate=4096, content=None):
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._lock:
            self._faults.append(Fault(kind, count, skip, path, when, after_bytes, seconds, rate,
                                      content))

    def clear(self):
        with self._lock:
            self._faults.clear()

    def take(self, request: Request) -> Optional[Fault]:
        with self._lock:
            for fault in self._faults:
                if fault.count is not None and fault.hits >= fault.count:
                    continue
                if fault.path is not None and request.path != fault.path:
                    continue
                if fault.when is not None and not fault.when(request):
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                fault.hits += 1
                return fault
        return None


def parse_range(value: Optional[str]) -> Optional[tuple]:
    if not value:
        return None
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", value)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None  # multi-range or malformed: served as if there were no Range (RFC 9110)
    start = int(m.group(1)) if m.group(1) else None
    end = int(m.group(2)) if m.group(2) else None
    return (start, end)


def s3_error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>0000</RequestId></Error>").encode()


def etag_of(st: os.stat_result) -> str:
    # A replacement (os.replace) gets a new inode, so the ETag changes even when the size
    # and the mtime happen to be equal.
    return f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'


def sigv4_problem(method: str, target: str, headers: dict, keys: dict) -> Optional[tuple]:
    """Checks an Authorization header as S3 does. Returns (status, code) when S3 would refuse
    the request, None when the signature is good. keys: access key id -> (secret, token)."""
    auth = headers.get("authorization")
    if not auth:
        return (403, "AccessDenied")
    m = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/,]+)/(\d{8})/([^/,]+)/s3/aws4_request,"
                     r"\s*SignedHeaders=([a-z0-9;-]+),\s*Signature=([0-9a-f]{64})", auth)
    if not m:
        return (400, "AuthorizationHeaderMalformed")
    key_id, day, region, signed_headers, signature = m.groups()
    if key_id not in keys:
        return (403, "InvalidAccessKeyId")
    secret, token = keys[key_id]
    if token is not None and headers.get("x-amz-security-token") != token:
        return (403, "InvalidToken")
    payload_hash = headers.get("x-amz-content-sha256")
    if payload_hash is None:
        return (400, "InvalidRequest")  # S3: "Missing required header ... x-amz-content-sha256"
    signed = signed_headers.split(";")
    amz_date = headers.get("x-amz-date", "")
    if "host" not in signed or "x-amz-date" not in signed or not amz_date.startswith(day):
        return (403, "AccessDenied")
    try:
        when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
    except ValueError:
        return (403, "AccessDenied")
    if abs((datetime.datetime.utcnow() - when).total_seconds()) > 900:
        return (403, "RequestTimeTooSkewed")
    if any(h not in headers for h in signed):
        return (403, "SignatureDoesNotMatch")
    if any(h.startswith("x-amz-") and h not in signed for h in headers):
        return (403, "AccessDenied")  # S3: "There were headers present ... which were not signed"
    split = urllib.parse.urlsplit(target)
    # S3 decodes the path once and encodes it again for the canonical URI.
    canonical_uri = urllib.parse.quote(urllib.parse.unquote(split.path), safe="/~")
    params = urllib.parse.parse_qsl(split.query, keep_blank_values=True)
    canonical_query = "&".join(
        f"{urllib.parse.quote(k, safe='~')}={urllib.parse.quote(v, safe='~')}"
        for k, v in sorted(params))
    canonical_headers = "".join(f"{h}:{' '.join(headers[h].split())}\n" for h in signed)
    canonical_request = "\n".join([method, canonical_uri, canonical_query, canonical_headers,
                                   signed_headers, payload_hash])
    scope = f"{day}/{region}/s3/aws4_request"
    string_to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                                hashlib.sha256(canonical_request.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return (403, "SignatureDoesNotMatch")
    return None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: connections can be reused
    timeout = 30  # an idle kept-alive connection is dropped after this
    server: "RangeServer"

    def log_message(self, format, *args):  # noqa: A002 - quiet: the log is self.server.requests
        pass

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm holds
        # the body until the client's delayed ACK (40 ms a request).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection_number = self.server.opened_connection()

    def do_GET(self):
        self._serve(body=True)

    def do_HEAD(self):
        self._serve(body=False)

    # -- one request ------------------------------------------------------------------------

    def _serve(self, body: bool):
        request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                          self.connection_number, time.monotonic())
        server = self.server
        server.log(request)
        try:
            fault = server.faults.take(request)
            request.fault = fault.kind if fault else ""
            self._answer(request, fault, body)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True  # the client went away: nothing more to send
        finally:
            request.replied = request.replied or time.monotonic()

    def _answer(self, request: Request, fault: Optional[Fault], body: bool):
        server = self.server
        kind = fault.kind if fault else ""
        if kind == "delay":
            server.stopping.wait(fault.seconds)
        if kind in ("500", "503"):
            return self._error(request, int(kind), "InternalError" if kind == "500"
                               else "SlowDown", body)
        if kind == "403":
            return self._error(request, 403, "AccessDenied", body)
        if server.sigv4_keys is not None:
            problem = sigv4_problem(request.method, request.target, request.headers,
                                    server.sigv4_keys)
            if problem:
                return self._error(request, problem[0], problem[1], body)

        file = server.file_for(request.path)
        if kind == "replace" and file is not None:
            server.replace(file, fault.content)
        try:
            f = open(file, "rb") if file is not None else None
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            f = None
        if f is None:
            # Path-style S3: /bucket/key, where the bucket is a folder of the root.
            parts = urllib.parse.unquote(request.path).strip("/").split("/")
            missing_bucket = len(parts) > 1 and not (server.root / parts[0]).is_dir()
            return self._error(request, 404, "NoSuchBucket" if missing_bucket else "NoSuchKey",
                               body)
        with f:
            # The ETag and the bytes come from the same open file: a replacement between
            # them cannot mix two objects.
            st = os.fstat(f.fileno())
            size = st.st_size
            etag = etag_of(st)
            if kind == "wrong_etag":
                etag = '"0-wrong-etag"'
            else:
                if_match = request.headers.get("if-match")
                if if_match is not None and if_match.strip() not in ("*", etag):
                    return self._error(request, 412, "PreconditionFailed", body)

            start, end, status = 0, size - 1, 200
            r = request.range
            if r is not None and kind != "ignore_range":
                status = 206
                if r[0] is None:  # suffix: the last n bytes
                    if r[1] == 0:
                        return self._unsatisfiable(request, size, body)
                    start = max(0, size - r[1])
                else:
                    if r[0] >= size:
                        return self._unsatisfiable(request, size, body)
                    start = r[0]
                    end = size - 1 if r[1] is None else min(r[1], size - 1)
            length = end - start + 1

            request.status = status
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.send_header("ETag", etag)
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            if not body:
                request.replied = time.monotonic()
            self.end_headers()
            if not body:
                return
            f.seek(start)
            data = f.read(length)
        self._send_body(request, data, fault)

    def _send_body(self, request: Request, data: bytes, fault: Optional[Fault]):
        kind = fault.kind if fault else ""
        if kind in ("reset", "truncate", "stall"):
            part = data[:min(fault.after_bytes, max(0, len(data) - 1))]
            request.replied = time.monotonic()
            self.wfile.write(part)
            self.wfile.flush()
            self.close_connection = True
            if kind == "stall":
                self.server.stopping.wait(fault.seconds)
            elif kind == "reset":
                # Let the client read what was sent before the RST arrives, so the retry
                # can (and should) ask only for the rest.
                self.server.stopping.wait(0.2)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.connection.close()
            return
        if kind == "trickle":
            piece = max(1, fault.rate // 8)
            for i in range(0, len(data), piece):
                if self.server.stopping.wait(piece / fault.rate):
                    self.close_connection = True
                    return
                request.replied = time.monotonic()
                self.wfile.write(data[i:i + piece])
                self.wfile.flush()
            return
        request.replied = time.monotonic()
        self.wfile.write(data)

    def _error(self, request: Request, status: int, code: str, body: bool):
        payload = s3_error(code, f"{code} (range_server)")
        request.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        request.replied = time.monotonic()
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def _unsatisfiable(self, request: Request, size: int, body: bool):
        payload = s3_error("InvalidRange", "The requested range is not satisfiable")
        request.status = 416
        self.send_response(416)
        self.send_header("Content-Range", f"bytes */{size}")
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        request.replied = time.monotonic()
        self.end_headers()
        if body:
            self.wfile.write(payload)


class RangeServer(http.server.ThreadingHTTPServer):
    daemon_threads = True  # a handler stuck in a client's socket cannot block teardown
    # socketserver's default backlog of 5 drops the SYNs of a client that opens 16
    # connections at once, and each dropped one costs a 1 s retransmit.
    request_queue_size = 128

    def __init__(self, root):
        import pathlib

        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = pathlib.Path(root).resolve()
        self.faults = Faults()
        self.sigv4_keys: Optional[dict] = None
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.requests: list[Request] = []
        self.connections = 0  # opened so far
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address):
        # A client that drops a kept-alive connection (stasis exiting) is no server error.
        if isinstance(sys.exc_info()[1], (ConnectionError, socket.timeout)):
            return
        super().handle_error(request, client_address)

    def require_sigv4(self, keys: Optional[dict]):
        """keys: access key id -> (secret, session token or None); None: no checking."""
        self.sigv4_keys = keys

    def file_for(self, path: str):
        relative = urllib.parse.unquote(path).lstrip("/")
        file = (self.root / relative).resolve()
        if self.root not in file.parents:
            return None  # ".." out of the root
        return file

    def replace(self, file, content: Optional[bytes]):
        """Atomically replaces `file`; by default with the same bytes but one, so only the
        ETag tells the two objects apart."""
        if content is None:
            old = bytearray(file.read_bytes())
            old[len(old) // 2] ^= 0xFF
            content = bytes(old)
        tmp = file.with_name(file.name + ".replacing")
        tmp.write_bytes(content)
        os.replace(tmp, file)

    # -- bookkeeping (handler threads) ------------------------------------------------------

    def opened_connection(self) -> int:
        with self._lock:
            self.connections += 1
            return self.connections

    def log(self, request: Request):
        with self._lock:
            self.requests.append(request)

    @property
    def max_inflight(self) -> int:
        """The most requests in flight at once, from their [started, replied] intervals."""
        events = sorted([(q.started, 1) for q in self.requests] +
                        [(q.replied, -1) for q in self.requests if q.replied])
        most = now = 0
        for _, step in events:  # at equal times -1 sorts first: touching is no overlap
            now += step
            most = max(most, now)
        return most

    def reset_log(self):
        with self._lock:
            self.requests = []
            self.connections = 0

    # -- lifetime ---------------------------------------------------------------------------

    def start(self) -> "RangeServer":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="range_server", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.stopping.set()  # wakes stalls, trickles and delays
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=10)
