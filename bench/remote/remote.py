"""The remote-images benchmark's driver: one endpoint (nginx in a network namespace of its
own, capped at --rate with tc and uncapped), the same model as a compressed and a raw
stasis image and as safetensors, and every loader in fresh processes, interleaved, in the
same run; medians, same-run ratios, JSON and a summary.

Run it through bench/remote/run, which installs nginx, builds stasis and makes the virtual
environment first. `python remote.py --help` lists the knobs; the report (summary.txt)
says what each case measures.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import importlib.metadata
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "bench", "peers"))
import peers_lib  # noqa: E402  (the digest `stasis restore --digest` prints, XXH3 via ctypes)

NETNS = "stasis-bench"
BUCKET = "stasis-bench"  # path-style: http://HOST:PORT/BUCKET/KEY
PORT = 8399
LOCK = "/run/lock/stasis-bench-remote.lock"
RUN_DIR = "/tmp/stasis-bench-nginx"
ALL_CASES = ("compressed", "raw", "runai", "download", "cache")
REMOTE_CASES = ("compressed", "raw", "runai", "download")
RUNAI_TRIALS = (8, 16, 32)
LABELS = {
    "compressed": "stasis restore, compressed image (http)",
    "raw": "stasis restore, raw image (http)",
    "runai": "Run:ai streamer (s3)",
    "download": "boto3 download_file + load_file",
    "cache hot": "stasis restore --cache, entry hot",
    "cache cold": "stasis restore --cache, entry cold",
    "local hot": "stasis restore, local raw image, hot",
    "local cold": "stasis restore, local raw image, cold",
}


def log(msg: str) -> None:
    print(f"[remote {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd: List[str], timeout: float = 30, check: bool = False) -> subprocess.CompletedProcess:
    """A short helper command (ip, tc, curl, nginx -t): bounded, output captured."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        r = subprocess.CompletedProcess(cmd, 124, "", f"timed out after {timeout:.0f} s")
    except OSError as e:
        r = subprocess.CompletedProcess(cmd, 127, "", str(e))
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(shlex.quote, cmd))}: exit {r.returncode}: "
                           f"{(r.stderr or r.stdout).strip()[:300]}")
    return r


# ---- the page cache --------------------------------------------------------------------


def files_under(path: str) -> List[str]:
    if os.path.isfile(path):
        return [path]
    out = []
    for d, _, names in os.walk(path):
        out += [os.path.join(d, n) for n in names if os.path.isfile(os.path.join(d, n))]
    return sorted(out)


def resident_bytes(paths: List[str]) -> Optional[int]:
    """Bytes of these files in the page cache (util-linux fincore); None if unknown."""
    if not paths or not shutil.which("fincore"):
        return None
    r = sh(["fincore", "--bytes", "--noheadings", "--output", "RES", *paths], timeout=30)
    if r.returncode != 0:
        return None
    try:
        return sum(int(x) for x in r.stdout.split())
    except ValueError:
        return None


class PageCache:
    """Cold: the files evicted (fdatasync + POSIX_FADV_DONTNEED: libraries, the interpreter
    and the stasis binary stay cached) or, with --cold-method drop, the whole page cache
    dropped (sync; echo 1 > /proc/sys/vm/drop_caches). Hot: the files read once."""

    def __init__(self, method: str):
        self.method = method
        if method == "drop":
            ok, how = peers_lib.page_cache_drop("1")
            if not ok:
                log(f"page cache: {how}; evicting each file with posix_fadvise instead")
                self.method = "evict"
        self.description = (
            "the whole page cache dropped (sync; echo 1 > /proc/sys/vm/drop_caches)"
            if self.method == "drop" else
            "the files evicted (fdatasync, then posix_fadvise(POSIX_FADV_DONTNEED); "
            "libraries, the interpreter and the stasis binary stay cached)")

    def cold(self, path: str) -> Optional[int]:
        files = files_under(path)
        if self.method == "drop":
            peers_lib.page_cache_drop("1")
        else:
            for f in files:
                peers_lib.evict_file(f)
        return resident_bytes(files)

    @staticmethod
    def hot(path: str) -> Optional[int]:
        files = files_under(path)
        for f in files:
            peers_lib.warm_file(f)
        return resident_bytes(files)


# ---- the endpoint ----------------------------------------------------------------------


NGINX_CONF = """\
# Generated by bench/remote/remote.py; removed when the run ends.
daemon off;
master_process on;
worker_processes {workers};
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 300s;
  keepalive_requests 1000000;
  client_body_temp_path {run}/body;
  proxy_temp_path {run}/proxy;
  fastcgi_temp_path {run}/fastcgi;
  uwsgi_temp_path {run}/uwsgi;
  scgi_temp_path {run}/scgi;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port};
    # Path-style S3 GETs and HEADs: /BUCKET/KEY[?query]. The query (x-id=GetObject, ...)
    # and the Authorization header are ignored; Range, If-Match and ETag are nginx's own.
    location /{bucket}/ {{ alias {served}/; }}
  }}
}}
"""


class Endpoint:
    """nginx serving `served` at http://127.0.0.1:PORT/BUCKET/, in the network namespace
    NETNS when `ip netns add` works here, else on the root namespace's loopback."""

    def __init__(self, served: str, a):
        self.served = served
        self.a = a
        self.netns = False
        self.port = PORT
        self.proc: Optional[subprocess.Popen] = None
        # nginx's config, pid and logs; a fixed name (we hold the lock), so that one left by
        # a killed run is replaced here and removed by bench/remote/run's trap.
        self.run_dir = RUN_DIR
        shutil.rmtree(self.run_dir, ignore_errors=True)
        os.makedirs(self.run_dir)
        self.capped = False
        self.root_tc = False  # a tbf we put on the root namespace's lo (removed at exit)
        self.notes: List[str] = []

    # -- set-up ---------------------------------------------------------------------------

    def prefix(self) -> List[str]:
        return ["ip", "netns", "exec", NETNS] if self.netns else []

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{BUCKET}/{name}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def remove_stale_namespace() -> None:
        """A namespace left by a run that was killed (the lock says none is running): its
        processes are that run's nginx; they are stopped, then the namespace removed."""
        r = sh(["ip", "netns", "pids", NETNS])
        pids = [int(p) for p in r.stdout.split() if p.isdigit()] if r.returncode == 0 else []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 5
        while pids and time.time() < deadline:
            pids = [p for p in pids if os.path.exists(f"/proc/{p}")]
            time.sleep(0.1)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        sh(["ip", "netns", "del", NETNS])

    def _try_netns(self) -> Tuple[bool, str]:
        if self.a.no_netns:
            return False, "--no-netns given"
        if not shutil.which("ip"):
            return False, "no `ip` command (package iproute2)"
        r = sh(["ip", "netns", "add", NETNS])
        if r.returncode != 0 and "exists" in r.stderr:
            log(f"removing the network namespace {NETNS} left by an earlier run")
            self.remove_stale_namespace()
            r = sh(["ip", "netns", "add", NETNS])
        if r.returncode != 0:
            return False, f"`ip netns add {NETNS}` failed: {r.stderr.strip()[:200]}"
        self.netns = True  # from here on, stop() removes it
        r = sh(self.prefix() + ["ip", "link", "set", "lo", "up"])
        if r.returncode != 0:
            return False, f"`ip link set lo up` in {NETNS} failed: {r.stderr.strip()[:200]}"
        return True, ""

    def start(self) -> None:
        ok, why = self._try_netns()
        if ok:
            self.notes.append(f"nginx and every client in the network namespace {NETNS} "
                              f"(ip netns exec), on its loopback 127.0.0.1:{self.port}")
        else:
            if self.netns:
                sh(["ip", "netns", "del", NETNS])
                self.netns = False
            with socket.socket() as s:  # a free port on the shared loopback
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            self.notes.append(f"no network namespace ({why}): nginx on the root namespace's "
                              f"loopback 127.0.0.1:{self.port}")
            log(self.notes[-1])
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
        conf = os.path.join(self.run_dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(workers=self.a.nginx_workers, run=self.run_dir,
                                      port=self.port, bucket=BUCKET, served=self.served))
        cmd = self.prefix() + [nginx, "-p", self.run_dir, "-e", os.path.join(self.run_dir,
                                                                           "error.log"),
                               "-c", conf]
        r = sh(cmd + ["-t"], timeout=20)
        if r.returncode != 0:
            raise RuntimeError(f"nginx -t: {(r.stderr or r.stdout).strip()[-400:]}")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.run_dir, "stderr"), "w"),
                                     start_new_session=True)
        deadline = time.time() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited ({self.proc.returncode}): "
                                   f"{self._error_log()}")
            r = sh(self.prefix() + ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                    "--max-time", "5", "-I",
                                    self.url("model.safetensors")], timeout=10)
            if r.returncode == 0 and r.stdout.strip() == "200":
                break
            if time.time() > deadline:
                raise RuntimeError(f"nginx does not answer HEAD {self.url('model.safetensors')}"
                                   f" with 200 (got {r.stdout.strip() or r.stderr.strip()}); "
                                   f"its workers (user nobody) must be able to read "
                                   f"{self.served}. {self._error_log()}")
            time.sleep(0.2)
        v = sh([nginx, "-v"]).stderr.strip()
        self.version = v.split("/", 1)[-1] if "/" in v else v
        log(f"nginx {self.version} serving {self.served} at {self.base}/{BUCKET}/"
            + (f" in the network namespace {NETNS}" if self.netns else ""))

    def _error_log(self) -> str:
        try:
            with open(os.path.join(self.run_dir, "error.log")) as f:
                return f.read()[-600:]
        except OSError:
            return ""

    # -- the cap -----------------------------------------------------------------------------

    def tbf(self) -> List[str]:
        return ["tbf", "rate", self.a.rate, "burst", self.a.tbf_burst, "latency",
                self.a.tbf_latency]

    def set_cap(self, on: bool) -> Tuple[bool, str]:
        """Puts the tbf on lo (on) or takes it off; (done, what was done or why not)."""
        if self.netns:
            if on:
                r = sh(self.prefix() + ["tc", "qdisc", "replace", "dev", "lo", "root"] + self.tbf())
                if r.returncode != 0:
                    return False, f"tc in {NETNS} failed: {r.stderr.strip()[:200]}"
                self.capped = True
                return True, f"tc qdisc replace dev lo root {' '.join(self.tbf())} (in {NETNS})"
            if self.capped:
                sh(self.prefix() + ["tc", "qdisc", "del", "dev", "lo", "root"])
                self.capped = False
            return True, "no qdisc on lo"
        # The root namespace's lo carries every local connection of this machine: capped
        # only when it has no qdisc of its own yet, and restored at exit.
        if on:
            if self.a.no_root_tc:
                return False, "--no-root-tc: no cap on the shared loopback"
            r = sh(["tc", "qdisc", "show", "dev", "lo"])
            if r.returncode != 0:
                return False, f"tc does not work here: {r.stderr.strip()[:200]}"
            if not self.root_tc and not re.match(r"^qdisc noqueue", r.stdout.strip()):
                return False, f"lo already has a qdisc ({r.stdout.strip()[:80]}); left alone"
            with open(LOCK + ".root-tc", "w"):  # bench/remote/run removes it if we die
                pass
            r = sh(["tc", "qdisc", "replace", "dev", "lo", "root"] + self.tbf())
            if r.returncode != 0:
                os.unlink(LOCK + ".root-tc")
                return False, f"tc on the root namespace's lo failed: {r.stderr.strip()[:200]}"
            self.root_tc = self.capped = True
            return True, (f"tc qdisc replace dev lo root {' '.join(self.tbf())} (root namespace:"
                          f" every loopback connection of this machine is capped meanwhile)")
        if self.root_tc:
            self.remove_root_tc()
        return True, "no qdisc on lo"

    def remove_root_tc(self) -> None:
        sh(["tc", "qdisc", "del", "dev", "lo", "root"])
        self.root_tc = self.capped = False
        try:
            os.unlink(LOCK + ".root-tc")
        except FileNotFoundError:
            pass

    def measure_rate(self, name: str, tries: int = 3) -> Optional[dict]:
        """curl -o /dev/null of the file, `tries` times: median bytes/s and each run's."""
        speeds = []
        for _ in range(tries):
            r = sh(self.prefix() + ["curl", "-sS", "-o", "/dev/null", "--max-time", "120", "-w",
                                    "%{http_code} %{size_download} %{time_total}",
                                    self.url(name)], timeout=150)
            parts = r.stdout.split()
            if r.returncode != 0 or len(parts) != 3 or parts[0] != "200":
                log(f"curl {self.url(name)} failed: {r.stderr.strip() or r.stdout.strip()}")
                return None
            speeds.append(int(parts[1]) / float(parts[2]))
        return {"bytes_per_s": statistics.median(speeds), "runs_bytes_per_s": speeds,
                "file": name}

    # -- tear-down ----------------------------------------------------------------------------

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)  # nginx: fast shutdown
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        self.proc = None
        if self.root_tc:
            self.remove_root_tc()
        if self.netns:
            r = sh(["ip", "netns", "del", NETNS])
            if r.returncode != 0:
                log(f"could not remove the network namespace {NETNS}: {r.stderr.strip()}")
            self.netns = False
        shutil.rmtree(self.run_dir, ignore_errors=True)


# ---- the model --------------------------------------------------------------------------


def fresh(path: str, *sources: str) -> bool:
    return os.path.exists(path) and all(os.path.getmtime(path) >= os.path.getmtime(s)
                                        for s in sources)


def prepare(a) -> dict:
    """The safetensors file (bench/remote/genweights.py) and its two images, made once per
    size and reused while newer than their sources (and the stasis binary)."""
    d = os.path.join(a.data, f"{a.size_mib}mib")
    served = os.path.join(d, "served")
    os.makedirs(served, exist_ok=True)
    for p in (d, served):
        os.chmod(p, 0o755)  # nginx's workers run as nobody (and --data must let them in)
    st = os.path.join(served, "model.safetensors")
    gen = os.path.join(HERE, "genweights.py")
    stamp = os.path.join(d, "generator.json")
    want = {"mib": a.size_mib, "seed": a.seed}
    try:
        with open(stamp) as f:
            same = json.load(f) == want
    except (OSError, ValueError):
        same = False
    if not (same and fresh(st, gen)):
        log(f"generating {a.size_mib} MiB of bf16 weights: {st}")
        subprocess.run([sys.executable, gen, "--mib", str(a.size_mib), "--seed", str(a.seed),
                        "-o", st], check=True, timeout=600)
        with open(stamp, "w") as f:
            json.dump(want, f)
    files = {"safetensors": st, "raw": os.path.join(served, "model.raw.stasis"),
             "zstd": os.path.join(served, "model.zstd.stasis")}
    for kind, codec in (("raw", "raw"), ("zstd", "auto")):
        if not (fresh(files[kind], st) and fresh(files[kind], a.stasis)):
            log(f"stasis snapshot --codec {codec} -> {files[kind]}")
            subprocess.run([a.stasis, "snapshot", st, "-o", files[kind], "--codec", codec,
                            "--force", "--quiet"], check=True, timeout=900,
                           stdout=subprocess.DEVNULL)
    for f in files.values():
        os.chmod(f, 0o644)
    ref_file = os.path.join(d, "reference.json")
    if fresh(ref_file, st):
        with open(ref_file) as f:
            ref = json.load(f)
    else:
        digest, count, nbytes = peers_lib.reference_digest(st)
        ref = {"digest": digest, "tensors": count, "bytes": nbytes}
        with open(ref_file, "w") as f:
            json.dump(ref, f)
    sizes = {k: os.path.getsize(v) for k, v in files.items()}
    return {"dir": d, "served": served, "files": files, "reference": ref["digest"],
            "tensors": ref["tensors"], "bytes": ref["bytes"], "file_bytes": sizes,
            "compression_ratio": ref["bytes"] / sizes["zstd"],
            "cache_dir": os.path.join(d, "cache"),
            "download": os.path.join(d, "download", "model.safetensors")}


# ---- one run ----------------------------------------------------------------------------


def spawn(cmd: List[str], env: Dict[str, str], timeout: float) -> dict:
    """Runs one process to its end: wall time from spawn to exit (wait4), its peak RSS,
    stdout; killed (its whole process group) after `timeout` seconds."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        timed_out = threading.Event()
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                             start_new_session=True)

        def kill() -> None:
            timed_out.set()
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
        except BaseException:
            kill()
            p.wait()
            raise
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        return {"rc": p.returncode, "wall_s": wall, "timed_out": timed_out.is_set(),
                "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace"),
                "peak_rss_bytes": usage.ru_maxrss * 1024}


def child_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment without the user's AWS settings and stasis cache settings (a
    STASIS_CACHE_DIR would turn the plain restores into cached ones)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and not k.startswith("RUNAI_STREAMER_")
           and k not in ("STASIS_CACHE_DIR", "STASIS_CACHE_MAX")}
    env.update(extra or {})
    return env


class Runner:
    def __init__(self, a, model: dict, ep: Endpoint, cache: PageCache):
        self.a, self.model, self.ep, self.cache = a, model, ep, cache
        self.timeout = a.timeout or (60 + 0.25 * a.size_mib)
        self.s3_env = {
            # Credentials are required by the clients and ignored by nginx.
            "AWS_ACCESS_KEY_ID": "stasis-bench", "AWS_SECRET_ACCESS_KEY": "stasis-bench",
            "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL": ep.base,
            "AWS_ENDPOINT_URL_S3": ep.base, "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
            "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        }

    def stasis_cmd(self, location: str, cache: bool, digest: bool) -> List[str]:
        cmd = [self.a.stasis, "restore", location, "--json"]
        if cache:
            cmd += ["--cache", self.model["cache_dir"]]
        if digest:
            cmd.append("--digest")
        return cmd

    def run(self, case: str, digest: bool = False, runai_concurrency: int = 16) -> dict:
        """One fresh process of `case`; the page cache prepared as the case wants."""
        m, ep = self.model, self.ep
        res: dict = {"case": case, "ok": False}
        if case in REMOTE_CASES or case.startswith("cache") or case == "fill":
            # The endpoint serves from memory, as an object store's network is the limit.
            src = m["files"]["safetensors" if case in ("runai", "download") else
                             "raw" if case == "raw" else "zstd"]
            self.cache.hot(src)
        env = child_env()
        if case == "compressed":
            cmd = self.stasis_cmd(ep.url("model.zstd.stasis"), False, digest)
        elif case == "raw":
            cmd = self.stasis_cmd(ep.url("model.raw.stasis"), False, digest)
        elif case.startswith("cache") or case == "fill":
            cmd = self.stasis_cmd(ep.url("model.zstd.stasis"), True, digest)
        elif case.startswith("local"):
            cmd = self.stasis_cmd(m["files"]["raw"], False, digest)
        elif case == "runai":
            env = child_env(dict(self.s3_env, RUNAI_STREAMER_CONCURRENCY=str(runai_concurrency)))
            cmd = [sys.executable, os.path.join(HERE, "load_one.py"), "--mode", "runai",
                   "--location", f"s3://{BUCKET}/model.safetensors"]
        elif case == "download":
            env = child_env(self.s3_env)
            os.makedirs(os.path.dirname(m["download"]), exist_ok=True)
            if os.path.exists(m["download"]):
                os.unlink(m["download"])
            cmd = [sys.executable, os.path.join(HERE, "load_one.py"), "--mode", "download",
                   "--endpoint", ep.base, "--location", f"s3://{BUCKET}/model.safetensors",
                   "--dest", m["download"]]
        else:
            raise ValueError(case)
        if case in ("runai", "download") and digest:
            cmd.append("--digest")
        if case.startswith("cache") or case.startswith("local"):
            target = m["cache_dir"] if case.startswith("cache") else m["files"]["raw"]
            res["resident_before_bytes"] = (self.cache.cold(target) if case.endswith("cold")
                                            else self.cache.hot(target))
        p = spawn(ep.prefix() + cmd, env, self.timeout)
        res.update(wall_s=p["wall_s"], peak_rss_bytes=p["peak_rss_bytes"])
        if case == "download" and os.path.exists(m["download"]):
            os.unlink(m["download"])
        if p["rc"] != 0:
            why = (f"timed out after {self.timeout:.0f} s" if p["timed_out"] else
                   (p["stderr"].strip().splitlines() or [f"exit {p['rc']}"])[-1][:300])
            res["error"] = why
            return res
        text = p["stdout"].strip()
        try:
            j = json.loads(text if text.startswith("{") and case not in ("runai", "download")
                           else text.splitlines()[-1])
        except (ValueError, IndexError):
            res["error"] = f"no JSON on stdout ({text[-200:]!r})"
            return res
        if case in ("runai", "download"):
            if not j.get("ok"):
                res["error"] = j.get("error", "failed")
                return res
            res.update(ready_s=j["ready_s"], bytes=j["bytes"], tensors=j["tensors"])
            for k in ("client_s", "download_s", "load_s", "touch_s"):
                if k in j:
                    res[k] = j[k]
            if case == "runai":
                res["concurrency"] = runai_concurrency
            if digest:
                res["digest"] = j.get("digest")
        else:
            res.update(ready_s=j["seconds"], bytes=j["raw_bytes"], phases=j.get("phases", {}),
                       io={"backend": j.get("io", {}).get("backend"),
                           "direct": j.get("io", {}).get("direct")},
                       chunks=j.get("chunks"), chunks_mapped=j.get("chunks_mapped"),
                       stored_bytes=j.get("stored_bytes"), cache=j.get("cache", ""))
            if digest:
                res["digest"] = (j.get("digest") or {}).get("xxh3")
            if case.startswith("cache") and not str(res["cache"]).startswith("hit"):
                res["error"] = f"not a cache hit: cache = {res['cache']!r}"
                return res
        if digest:
            res["digest_ok"] = res.get("digest") == m["reference"]
        res["ok"] = True
        return res


# ---- series, summaries, ratios ---------------------------------------------------------


def summarize(runs: List[dict]) -> dict:
    ok = [r for r in runs if r.get("ok")]
    s: dict = {"runs": len(runs), "ok_runs": len(ok)}
    if ok:
        ready = [r["ready_s"] for r in ok]
        s.update(ready_s=statistics.median(ready), ready_min_s=min(ready),
                 ready_max_s=max(ready), wall_s=statistics.median(r["wall_s"] for r in ok),
                 peak_rss_bytes=statistics.median(r["peak_rss_bytes"] for r in ok),
                 bytes=ok[0]["bytes"])
        for k in ("client_s", "download_s", "load_s", "touch_s"):
            if k in ok[0]:
                s[k] = statistics.median(r[k] for r in ok)
        if "phases" in ok[0]:
            keys = ok[0]["phases"].keys()
            s["phases"] = {k: statistics.median(r["phases"].get(k, 0.0) for r in ok)
                           for k in keys}
            s["io"] = ok[len(ok) // 2]["io"]
            s["chunks_mapped"] = ok[len(ok) // 2]["chunks_mapped"]
            s["cache"] = ok[len(ok) // 2].get("cache", "")
        res = [r.get("resident_before_bytes") for r in ok
               if r.get("resident_before_bytes") is not None]
        if res:
            s["resident_before_bytes_max"] = max(res)
    errors = [r["error"] for r in runs if not r.get("ok")]
    if errors:
        s["error"] = errors[0]
    return s


def ratio(cells: dict, num: str, den: str, key: str) -> Optional[float]:
    a, b = cells.get(num, {}).get(key), cells.get(den, {}).get(key)
    return a / b if a and b else None


def series(runner: Runner, names: List[str], runs: int, rng: random.Random, tag: str,
           extra: Optional[dict] = None) -> Dict[str, List[dict]]:
    """`runs` rounds; in each, every case once, in a seeded random order."""
    out: Dict[str, List[dict]] = {n: [] for n in names}
    for i in range(runs):
        order = names[:]
        rng.shuffle(order)
        for n in order:
            r = runner.run(n, **(extra or {}).get(n, {}))
            out[n].append(r)
            state = (f"ready {r['ready_s']:.3f} s, wall {r['wall_s']:.3f} s" if r["ok"]
                     else f"FAILED: {r['error']}")
            log(f"{tag} run {i + 1}/{runs} {n}: {state}")
    return out


def verify(runner: Runner, names: List[str], tag: str, extra: Optional[dict] = None) -> dict:
    """One untimed run of each case that hashes its tensors (also a warm-up)."""
    out = {}
    for n in names:
        r = runner.run(n, digest=True, **(extra or {}).get(n, {}))
        ok = r["ok"] and r.get("digest_ok")
        out[n] = {"ok": bool(ok), "digest": r.get("digest"),
                  "error": r.get("error") or (None if ok else "digest mismatch")}
        log(f"{tag} check {n}: " + ("bytes match the safetensors file" if ok else
                                    f"FAILED: {out[n]['error']}"))
    return out


def remote_setting(runner: Runner, a, name: str, capped: bool, cases: List[str],
                   rng: random.Random) -> dict:
    ep = runner.ep
    done, how = ep.set_cap(capped)
    setting: dict = {"name": name, "capped": capped, "tc": how}
    if capped and not done:
        setting["skipped"] = how
        log(f"{name}: SKIPPED ({how})")
        return setting
    rate = ep.measure_rate("model.raw.stasis")
    setting["curl"] = rate
    if rate:
        log(f"{name}: curl -o /dev/null of the raw image: {rate['bytes_per_s'] * 8 / 1e9:.2f} "
            f"Gbit/s ({rate['bytes_per_s'] / 1e6:.0f} MB/s)")
    remote = [c for c in cases if c in REMOTE_CASES]
    conc = a.runai_concurrency
    extra: dict = {}
    if "runai" in remote:
        setting["runai_trials"] = {}
        if not conc:
            runner.run("runai", runai_concurrency=16)  # warm-up (imports, the page cache)
            for c in RUNAI_TRIALS:
                r = runner.run("runai", runai_concurrency=c)
                setting["runai_trials"][str(c)] = r.get("ready_s") if r["ok"] else r["error"]
                log(f"{name}: Run:ai RUNAI_STREAMER_CONCURRENCY={c}: " +
                    (f"{r['ready_s']:.3f} s" if r["ok"] else f"FAILED: {r['error']}"))
            timed = {int(c): v for c, v in setting["runai_trials"].items()
                     if isinstance(v, float)}
            conc = min(timed, key=timed.get) if timed else 16
        setting["runai_concurrency"] = conc
        extra["runai"] = {"runai_concurrency": conc}
    setting["checks"] = verify(runner, remote, name, extra)
    runs = series(runner, remote, a.runs, rng, name, extra)
    setting["cells"] = {c: summarize(runs[c]) for c in remote}
    setting["runs"] = runs
    cells = setting["cells"]
    setting["ratios"] = {
        key: {"ready": ratio(cells, num, den, "ready_s"), "wall": ratio(cells, num, den, "wall_s")}
        for key, num, den in (("compressed_vs_raw", "raw", "compressed"),
                              ("compressed_vs_runai", "runai", "compressed"),
                              ("compressed_vs_download", "download", "compressed"))}
    return setting


def cache_setting(runner: Runner, a, rng: random.Random) -> dict:
    out: dict = {"name": "cache", "endpoint": "uncapped"}
    runner.ep.set_cap(False)
    shutil.rmtree(runner.model["cache_dir"], ignore_errors=True)
    os.makedirs(runner.model["cache_dir"])
    # The fill: the first restore with --cache (once, timed on its own).
    r = runner.run("fill")
    out["fill"] = r
    if not r["ok"] or not str(r.get("cache", "")).startswith("filled"):
        out["skipped"] = f"the first restore did not fill the cache: {r.get('error') or r.get('cache')!r}"
        log(f"cache: SKIPPED ({out['skipped']})")
        return out
    log(f"cache: fill {r['ready_s']:.3f} s (wall {r['wall_s']:.3f} s): {r['cache']}")
    out["entry_bytes"] = sum(os.path.getsize(f) for f in files_under(runner.model["cache_dir"]))
    names = ["cache hot", "cache cold", "local hot", "local cold"]
    out["checks"] = verify(runner, names, "cache")
    runs = series(runner, names, a.runs, rng, "cache")
    out["cells"] = {n: summarize(runs[n]) for n in names}
    out["runs"] = runs
    cells = out["cells"]
    out["ratios"] = {
        key: {"ready": ratio(cells, num, den, "ready_s"), "wall": ratio(cells, num, den, "wall_s")}
        for key, num, den in (("cache_hot_vs_local_hot", "cache hot", "local hot"),
                              ("cache_cold_vs_local_cold", "cache cold", "local cold"))}
    return out


# ---- the report --------------------------------------------------------------------------


def versions(a) -> dict:
    out = {}
    r = sh([a.stasis, "--version"])
    out["stasis"] = (r.stdout or r.stderr).strip().replace("stasis ", "", 1)
    cache = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(a.stasis))),
                         "CMakeCache.txt")
    try:
        with open(cache) as f:
            t = re.search(r"^CMAKE_BUILD_TYPE:STRING=(.*)$", f.read(), re.M)
            out["stasis_build_type"] = t.group(1) if t else "?"
    except OSError:
        pass
    for pkg in ("runai-model-streamer", "runai-model-streamer-s3", "boto3", "botocore",
                "safetensors", "torch", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def fmt_s(v: Optional[float]) -> str:
    return f"{v:8.3f}" if isinstance(v, (int, float)) else "       -"


def verdict(v: Optional[float], target: float, higher: bool) -> str:
    if v is None:
        return "n/a"
    met = v >= target if higher else v <= target
    return "met" if met else "NOT MET"


def cell_line(label: str, c: dict) -> str:
    if not c.get("ok_runs"):
        return f"  {label:<44} FAILED: {c.get('error', '?')}"
    gbs = c["bytes"] / c["ready_s"] / 1e9
    notes = []
    if "download_s" in c:
        notes.append(f"client {c['client_s']:.3f} + download {c['download_s']:.3f} + load "
                     f"{c['load_s']:.3f} + touch {c['touch_s']:.3f}")
    if "phases" in c:
        ph = c["phases"]
        io = c.get("io") or {}
        notes.append(f"{io.get('backend')}{', O_DIRECT' if io.get('direct') else ''}, "
                     f"open {ph.get('open', 0):.3f}")
        if c.get("chunks_mapped"):
            notes.append(f"{c['chunks_mapped']} chunks mapped")
        if ph.get("decompress"):
            notes.append(f"decompress {ph['decompress']:.3f} s over all workers")
    if c.get("resident_before_bytes_max") is not None:
        notes.append(f"cached before: {c['resident_before_bytes_max'] / 2**20:.0f} MiB max")
    if c["ok_runs"] < c["runs"]:
        notes.append(f"{c['runs'] - c['ok_runs']} runs FAILED: {c.get('error')}")
    return (f"  {label:<44} {fmt_s(c['ready_s'])} {fmt_s(c['wall_s'])} {gbs:7.2f}  "
            f"[{c['ready_min_s']:.3f}-{c['ready_max_s']:.3f}]  " + "; ".join(notes))


def ratio_line(label: str, r: dict, target: float, higher: bool) -> str:
    v, w = r.get("ready"), r.get("wall")
    sign = ">=" if higher else "<="
    vs = f"{v:.3f}x" if v else "n/a"
    ws = f"{w:.3f}x" if w else "n/a"
    return (f"  {label:<34} {vs:>8}  (target {sign} {target})  {verdict(v, target, higher):<8}"
            f" by process wall time: {ws}")


def render(result: dict) -> str:
    m, model, v = result["machine"], result["model"], result["versions"]
    mib = 2**20
    lines = [
        f"remote benchmark: {model['bytes'] / mib:.0f} MiB of seeded bf16 N(0,0.02) weights "
        f"({model['tensors']} tensors), medians of {result['runs']} runs, a fresh process per "
        f"run, cases interleaved in a seeded random order",
        f"date {result['date']}; {m['summary']}; command: {result['command']}",
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"files: safetensors {model['file_bytes']['safetensors'] / mib:.1f} MiB, raw image "
        f"{model['file_bytes']['raw'] / mib:.1f} MiB, compressed image "
        f"{model['file_bytes']['zstd'] / mib:.1f} MiB (ratio {model['compression_ratio']:.3f})",
        f"endpoint: nginx {result['endpoint']['version']}, " +
        "; ".join(result["endpoint"]["notes"]) +
        "; sendfile, keepalive, access_log off; served files kept in the page cache",
        f"page cache, cold runs: {result['cold_method']}",
        "",
        "ready: in-process time to every tensor in memory (stasis: the restore its --json reports, "
        "checksums included; Python: from the first library call, after the imports, to every "
        "4 KiB page of every tensor read); wall: the whole process (spawn to exit" +
        (", via `ip netns exec`" if result["endpoint"]["netns"] else "") +
        "; Python's includes starting the interpreter and importing torch). "
        "GB/s: tensor bytes over ready. [min-max] of ready.",
    ]
    for s in result["settings"]:
        lines.append("")
        head = ("endpoint capped: " + s["tc"]) if s["capped"] else "endpoint uncapped"
        lines.append(head)
        if s.get("skipped"):
            lines.append(f"  SKIPPED: {s['skipped']}")
            continue
        if s.get("curl"):
            c = s["curl"]
            lines.append(f"  curl -o /dev/null of the raw image: {c['bytes_per_s'] * 8 / 1e9:.2f} "
                         f"Gbit/s ({c['bytes_per_s'] / 1e6:.0f} MB/s; runs: " +
                         ", ".join(f"{x / 1e6:.0f}" for x in c["runs_bytes_per_s"]) + " MB/s)")
            fb = model["file_bytes"]
            lines.append("  each file's transfer time at that rate: compressed image "
                         f"{fb['zstd'] / c['bytes_per_s']:.3f} s, raw image "
                         f"{fb['raw'] / c['bytes_per_s']:.3f} s, safetensors "
                         f"{fb['safetensors'] / c['bytes_per_s']:.3f} s")
        if "runai_concurrency" in s:
            trials = ", ".join(f"{k}: " + (f"{t:.3f} s" if isinstance(t, float) else str(t))
                               for k, t in s.get("runai_trials", {}).items())
            lines.append(f"  Run:ai RUNAI_STREAMER_CONCURRENCY={s['runai_concurrency']}" +
                         (f" (the best of one run each: {trials})" if trials else " (given)"))
        bad = [k for k, c in s.get("checks", {}).items() if not c["ok"]]
        lines.append("  bytes checked against the safetensors file (one untimed run each): " +
                     ("all match" if not bad else "FAILED: " + ", ".join(
                         f"{k} ({s['checks'][k]['error']})" for k in bad)))
        lines.append(f"  {'case':<44} {'ready s':>8} {'wall s':>8} {'GB/s':>7}")
        for c in REMOTE_CASES:
            if c in s.get("cells", {}):
                label = LABELS[c] + (f", concurrency {s['runai_concurrency']}" if c == "runai"
                                     else "")
                lines.append(cell_line(label, s["cells"][c]))
        r = s.get("ratios", {})
        lines.append("  same-run ratios (ready time; the slower one's over the faster one's):")
        if r.get("compressed_vs_raw", {}).get("ready"):
            lines.append(ratio_line("compressed vs raw", r["compressed_vs_raw"], 1.35, True))
        if r.get("compressed_vs_runai", {}).get("ready"):
            lines.append(ratio_line("compressed vs Run:ai", r["compressed_vs_runai"], 1.5, True))
        d = r.get("compressed_vs_download", {})
        if d.get("ready"):
            lines.append(f"  {'compressed vs download-then-load':<34} {d['ready']:>7.3f}x  "
                         f"(no target){'':<17} by process wall time: {d['wall']:.3f}x")
    c = result.get("cache")
    if c is not None:
        lines.append("")
        lines.append("second cold start from the local cache (endpoint uncapped; "
                     "`stasis restore URL-of-compressed-image --cache DIR`)")
        if c.get("skipped"):
            lines.append(f"  SKIPPED: {c['skipped']}")
        else:
            f = c["fill"]
            lines.append(f"  fill (first restore, once): ready {f['ready_s']:.3f} s, wall "
                         f"{f['wall_s']:.3f} s; entry {c['entry_bytes'] / mib:.1f} MiB; "
                         f"{f['cache']}")
            bad = [k for k, x in c.get("checks", {}).items() if not x["ok"]]
            lines.append("  bytes checked (one untimed run each): " +
                         ("all match" if not bad else "FAILED: " + ", ".join(bad)))
            lines.append(f"  {'case':<44} {'ready s':>8} {'wall s':>8} {'GB/s':>7}")
            for n in ("cache hot", "local hot", "cache cold", "local cold"):
                lines.append(cell_line(LABELS[n], c["cells"][n]))
            r = c["ratios"]
            lines.append("  same-run ratios (ready time, cache over local):")
            lines.append(ratio_line("cache hot vs local raw hot",
                                    r["cache_hot_vs_local_hot"], 1.2, False))
            lines.append(ratio_line("cache cold vs local raw cold",
                                    r["cache_cold_vs_local_cold"], 1.1, False))
    for note in result.get("notes", []):
        lines.append("")
        lines.append("note: " + note)
    return "\n".join(lines) + "\n"


def write(result: dict, out: str) -> str:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "remote.json.tmp"), "w") as f:
        json.dump(result, f, indent=1)
    os.replace(os.path.join(out, "remote.json.tmp"), os.path.join(out, "remote.json"))
    text = render(result)
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(text)
    return text


# ---- main ---------------------------------------------------------------------------------


def cache_supported(stasis: str) -> bool:
    r = sh([stasis, "restore", "--help"])
    return "--cache" in r.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stasis", default=os.path.join(ROOT, "build", "tools", "stasis"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--cases", default=",".join(ALL_CASES),
                    help="comma-separated subset of " + ",".join(ALL_CASES))
    ap.add_argument("--no-cap", action="store_true", help="the uncapped endpoint only")
    ap.add_argument("--rate", default="2gbit", help="tc rate of the capped endpoint")
    ap.add_argument("--tbf-burst", default="1mb")
    ap.add_argument("--tbf-latency", default="20ms")
    ap.add_argument("--runai-concurrency", type=int, default=0,
                    help="fixed RUNAI_STREAMER_CONCURRENCY (default: the best of 8/16/32)")
    ap.add_argument("--cold-method", choices=("evict", "drop"), default="evict")
    ap.add_argument("--nginx-workers", default="2")
    ap.add_argument("--no-netns", action="store_true",
                    help="do not create a network namespace (the fallback: the root "
                    "namespace's loopback)")
    ap.add_argument("--no-root-tc", action="store_true",
                    help="without a namespace, never put a qdisc on the shared lo")
    ap.add_argument("--timeout", type=float, default=0,
                    help="seconds per process (default 60 + 0.25 s per MiB)")
    ap.add_argument("--data", default="/var/tmp/stasis-remote")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench-remote"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--command", default="bench/remote/run", help="recorded in the report")
    a = ap.parse_args()
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    for c in cases:
        if c not in ALL_CASES:
            ap.error(f"unknown case '{c}' (known: {', '.join(ALL_CASES)})")
    if a.runs < 1 or a.size_mib < 1:
        ap.error("--runs and --size-mib must be at least 1")
    if not os.access(a.stasis, os.X_OK):
        sys.exit(f"remote: {a.stasis} is missing (build it: scripts/build --target stasis)")
    a.stasis = os.path.abspath(a.stasis)
    a.data = os.path.abspath(a.data)
    if os.geteuid() != 0:
        log("not root: no network namespace, no tc, cold runs by posix_fadvise")

    try:
        os.makedirs(os.path.dirname(LOCK), exist_ok=True)
        lock = open(LOCK, "w")
    except OSError:  # not root: no namespace to guard, only this user's runs
        lock = open(os.path.join(tempfile.gettempdir(), f"stasis-bench-remote-{os.getuid()}.lock"),
                    "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.exit(f"remote: another run holds {LOCK}")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    notes = []
    if "cache" in cases and not cache_supported(a.stasis):
        notes.append("case 5 (cache) SKIPPED: `stasis restore --help` has no --cache "
                     "(this stasis predates the cache tier)")
        log(notes[-1])
        cases.remove("cache")

    model = prepare(a)
    log(f"model: {model['tensors']} tensors, {model['bytes'] / 2**20:.0f} MiB; compressed "
        f"image ratio {model['compression_ratio']:.3f}")
    cache = PageCache(a.cold_method)
    ep = Endpoint(model["served"], a)
    rng = random.Random(a.seed)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": a.command, "runs": a.runs, "machine": peers_lib.machine(), "versions": versions(a),
              "cold_method": cache.description, "cases": cases,
              "model": {k: v for k, v in model.items() if k in
                        ("tensors", "bytes", "file_bytes", "compression_ratio", "reference")},
              "settings": [], "notes": notes}
    status = 0
    try:
        ep.start()
        result["endpoint"] = {"version": ep.version, "netns": ep.netns, "port": ep.port,
                              "notes": ep.notes, "nginx_workers": a.nginx_workers,
                              "tbf": ep.tbf()}
        runner = Runner(a, model, ep, cache)
        settings = [] if a.no_cap else [(f"capped at {a.rate}", True)]
        settings.append(("uncapped", False))
        if any(c in REMOTE_CASES for c in cases):
            for name, capped in settings:
                result["settings"].append(remote_setting(runner, a, name, capped, cases, rng))
                write(result, a.out)
        if "cache" in cases:
            result["cache"] = cache_setting(runner, a, rng)
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); cleaning up")
        result["notes"].append(f"interrupted: {e}")
        status = 130
    finally:
        ep.stop()
        log("endpoint stopped" + (f", network namespace {NETNS} removed" if "endpoint" in result
                                  and result["endpoint"]["netns"] else ""))
    if "endpoint" not in result:
        return status or 1
    text = write(result, a.out)
    print(text, end="")
    print(f"(JSON and this summary: {a.out}/remote.json, {a.out}/summary.txt)")
    failed = []
    for s in result["settings"]:
        for c, cell in s.get("cells", {}).items():
            if cell.get("ok_runs", 0) < cell.get("runs", 0):
                failed.append(f"{s['name']} {c}")
        failed += [f"{s['name']} {c} check" for c, x in s.get("checks", {}).items()
                   if not x["ok"]]
    c = result.get("cache") or {}
    for n, cell in c.get("cells", {}).items():
        if cell.get("ok_runs", 0) < cell.get("runs", 0):
            failed.append(f"cache {n}")
    if failed:
        log("FAILED: " + ", ".join(failed))
    return status or (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
