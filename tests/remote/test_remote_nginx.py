"""A large image (192 MiB, 48 chunks of 4 MiB) from a fast static server: Debian's nginx,
path-style GETs with ranges, inside a network namespace this test creates (its own
loopback, so nothing else on the machine can reach it or be reached), capped at 1 Gbit/s by
tc so that transfers really overlap. Byte-identical over http:// and s3:// (nginx ignores
the signature), then a cache fill and a hit. moto is too slow for objects this size.
Skipped where nginx is missing or network namespaces are not allowed (not root)."""

import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import time

import pytest

from harness import STASIS, write_safetensors

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NETNS = f"stasis-test-{os.getpid()}"

# `user root`: the workers must read pytest's temporary folders (mode 0700, root's).
CONF = """\
user root;
worker_processes 2;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  sendfile on;
  keepalive_requests 100000;
  client_body_temp_path {run}/body;
  proxy_temp_path {run}/proxy;
  fastcgi_temp_path {run}/fastcgi;
  uwsgi_temp_path {run}/uwsgi;
  scgi_temp_path {run}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location /bucket/ {{ alias {root}/; }}
  }}
}}
"""


def ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


@pytest.fixture
def nginx(tmp_path):
    if not os.path.exists(NGINX):
        pytest.skip("nginx is not installed (nginx-light; scripts/setup installs it)")
    if os.geteuid() != 0 or ip("netns", "add", NETNS, check=False).returncode != 0:
        pytest.skip("network namespaces need root here")
    root, run = tmp_path / "served", tmp_path / "nginx"
    root.mkdir()
    run.mkdir()
    proc = None
    try:
        ip("-n", NETNS, "link", "set", "lo", "up")
        subprocess.run(["ip", "netns", "exec", NETNS, "tc", "qdisc", "add", "dev", "lo", "root",
                        "tbf", "rate", "1gbit", "burst", "1mb", "latency", "20ms"],
                       capture_output=True, timeout=30, check=True)
        with socket.socket() as s:  # any free port number: the namespace's loopback is empty
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        (run / "nginx.conf").write_text(CONF.format(run=run, port=port, root=root))
        proc = subprocess.Popen(["ip", "netns", "exec", NETNS, NGINX, "-p", str(run), "-e",
                                 str(run / "error.log"), "-c", str(run / "nginx.conf"), "-g",
                                 "daemon off;"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until it answers
            probe = subprocess.run(["ip", "netns", "exec", NETNS, "curl", "-s", "-o",
                                    "/dev/null", "-w", "%{http_code}",
                                    f"http://127.0.0.1:{port}/bucket/"],
                                   capture_output=True, text=True, timeout=10)
            if probe.stdout.strip() not in ("", "000"):
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.1)
        yield root, f"http://127.0.0.1:{port}"
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        ip("netns", "delete", NETNS, check=False)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def test_large_image_through_nginx(stasis, nginx, tmp_path):
    root, url = nginx
    rng = random.Random(1907)
    # Half incompressible, half a few distinct values: the auto codec mixes raw and zstd.
    palette = [rng.randbytes(2) for _ in range(8)]
    tensors = {
        "noise": ("BF16", [48, 1024, 1024], rng.randbytes(96 << 20)),
        "levels": ("BF16", [48, 1024, 1024], b"".join(rng.choice(palette) for _ in range(1 << 20)) * 48),
    }
    model = tmp_path / "big.safetensors"
    write_safetensors(model, tensors)
    del tensors
    image = root / "big.stasis"
    stasis.ok("snapshot", model, "-o", image, "--codec", "auto", "-q")
    local = tmp_path / "local.safetensors"
    stasis.ok("export", image, "-o", local)
    want = sha256(local)

    in_ns = ["ip", "netns", "exec", NETNS, str(STASIS)]
    for location, extra in [(f"{url}/bucket/big.stasis", []),
                            ("s3://bucket/big.stasis", ["--s3-endpoint", url])]:
        out = tmp_path / "remote.safetensors"
        p = subprocess.run([*in_ns, "export", location, "-o", out, "--force", "--json", *extra],
                           env=stasis.aws_env(), capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, p.stderr
        report = json.loads(p.stdout)["restore"]
        assert report["io"]["backend"] == "http"
        assert report["chunks"] >= 48
        assert sha256(out) == want, location
    cache = tmp_path / "cache"
    for expect in ("filled ", "hit "):
        p = subprocess.run([*in_ns, "restore", f"{url}/bucket/big.stasis", "--cache", cache,
                            "--json"], env=stasis.env(), capture_output=True, text=True,
                           timeout=180)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["cache"].startswith(expect), p.stdout[-2000:]
