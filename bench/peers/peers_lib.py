"""What the peers benchmark shares between its driver and its loader processes.

Standard library only (ctypes for XXH3), so the driver's report and digest code run and
are tested without the benchmark's virtual environment.

The digest: tensors in name order, XXH3-64 of each one's bytes (row-major, little-endian),
then XXH3-64 of those 64-bit hashes laid out as little-endian u64s. `stasis restore
--digest` and the torch adapter's TensorsChecksum compute the same value, so one
comparison checks every loader against the source file's bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import html
import json
import mmap
import os
import platform
import re
import struct
import statistics
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

# ---- XXH3 ------------------------------------------------------------------------------


def _load_xxhash() -> ctypes.CDLL:
    names = ["libxxhash.so.0", "libxxhash.so"]
    found = ctypes.util.find_library("xxhash")
    if found:
        names.insert(0, found)
    errors = []
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            lib.XXH3_64bits.restype = ctypes.c_uint64
            lib.XXH3_64bits.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            return lib
        except OSError as e:  # try the next name
            errors.append(str(e))
    raise OSError("libxxhash (XXH3) not found: install libxxhash0 (" + "; ".join(errors) + ")")


_XXH = None


def xxh3_ptr(address: int, size: int) -> int:
    """XXH3-64 of `size` bytes at `address` (no copy)."""
    global _XXH
    if _XXH is None:
        _XXH = _load_xxhash()
    return int(_XXH.XXH3_64bits(ctypes.c_void_p(address), ctypes.c_size_t(size)))


def xxh3_bytes(data) -> int:
    """XXH3-64 of a bytes-like object."""
    if isinstance(data, bytes):
        # c_char_p points into the bytes object itself: no copy.
        return xxh3_ptr(ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0,
                        len(data))
    return xxh3_bytes(bytes(memoryview(data).cast("B")))


def combine(hashes_by_name: Dict[str, int]) -> str:
    """The digest of a model from its tensors' hashes, as 16 hex digits."""
    ordered = [hashes_by_name[k] for k in sorted(hashes_by_name)]
    packed = struct.pack("<%dQ" % len(ordered), *ordered)
    return "%016x" % xxh3_bytes(packed)


# ---- safetensors files, read without any framework ---------------------------------------


def read_safetensors_header(path: str) -> Tuple[int, dict]:
    """(offset of the data section, header dict) of a safetensors file."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > 100 << 20:
            raise ValueError(f"{path}: header of {n} bytes is not plausible")
        header = json.loads(f.read(n))
    return 8 + n, header


def reference_digest(path: str) -> Tuple[str, int, int]:
    """(digest, tensor count, tensor bytes) straight from a safetensors file's bytes."""
    base, header = read_safetensors_header(path)
    hashes = {}
    total = 0
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            hashes[name] = xxh3_bytes(m[base + begin:base + end])
            total += end - begin
    return combine(hashes), len(hashes), total


# ---- results: medians, ratios, Markdown, JSON, SVG ----------------------------------------


def median(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def summarize(runs: List[dict]) -> dict:
    """Medians of one (model, loader, cache) cell's runs."""
    ok = [r for r in runs if r.get("ok")]
    out = {"runs": len(runs), "ok_runs": len(ok)}
    if ok:
        out["load_s"] = median([r["load_s"] for r in ok])
        out["peak_rss_bytes"] = median([r["peak_rss_bytes"] for r in ok])
        out["bytes"] = ok[0]["bytes"]
        out["gb_per_s"] = out["bytes"] / out["load_s"] / 1e9 if out["load_s"] > 0 else None
        out["digest_ok"] = all(r.get("digest_ok") for r in ok)
        extras = [r.get("extra") for r in ok if r.get("extra")]
        if extras:
            out["extra"] = extras[len(extras) // 2]
    errors = [r.get("error") for r in runs if not r.get("ok") and r.get("error")]
    if errors:
        out["error"] = errors[0]
    return out


def is_stasis(loader: str) -> bool:
    return loader.startswith("stasis")


def is_checked(loader: str) -> bool:
    """stasis rows that checksum what they restore (every row but --no-checksums)."""
    return is_stasis(loader) and "no checksums" not in loader


def verdicts(cells: List[dict]) -> List[dict]:
    """Per (model, cache): the fastest peer against the fastest stasis row that checks
    every byte, and against the fastest stasis row of all (like for like: no peer checks)."""
    groups: Dict[Tuple[str, str], List[dict]] = {}
    for c in cells:
        groups.setdefault((c["model"], c["cache"]), []).append(c)
    out = []
    for (model, cache), rows in groups.items():
        timed = [r for r in rows if r["summary"].get("load_s") and r["summary"].get("digest_ok")]
        checked = [r for r in timed if is_checked(r["loader"])]
        ours = [r for r in timed if is_stasis(r["loader"])]
        theirs = [r for r in timed if not is_stasis(r["loader"])]
        if not ours or not theirs:
            continue
        fastest = lambda rs: min(rs, key=lambda r: r["summary"]["load_s"])  # noqa: E731
        best_ours, best_theirs = fastest(ours), fastest(theirs)
        v = {"model": model, "cache": cache,
             "peer": best_theirs["loader"], "peer_s": best_theirs["summary"]["load_s"],
             "stasis": best_ours["loader"], "stasis_s": best_ours["summary"]["load_s"],
             "speedup": best_theirs["summary"]["load_s"] / best_ours["summary"]["load_s"]}
        if checked:
            best_checked = fastest(checked)
            v.update(checked=best_checked["loader"], checked_s=best_checked["summary"]["load_s"],
                     checked_speedup=best_theirs["summary"]["load_s"] /
                     best_checked["summary"]["load_s"])
        out.append(v)
    return out


def _fmt(v: Optional[float], spec: str) -> str:
    return "—" if v is None else format(v, spec)


def render_markdown(result: dict) -> str:
    """The report: one table per model (rows: loaders; cold and hot side by side)."""
    lines = []
    cells = result["cells"]
    for model in result["models"]:
        name = model["name"]
        lines.append(f"#### {name}: {model['description']}")
        lines.append("")
        lines.append(
            f"{model['tensors']} tensors, {model['bytes'] / 1e9:.3f} GB; stasis image "
            f"(zstd, byte-grouped) {model['compressed_bytes'] / 1e9:.3f} GB, ratio "
            f"{model['compression_ratio']:.3f}.")
        lines.append("")
        caches = [c for c in ("cold", "hot") if any(x["cache"] == c for x in cells)]
        head = "| loader |"
        rule = "|---|"
        for c in caches:
            head += f" {c}: load s | {c}: GB/s | {c}: peak RSS GB | {c}: × stasis |"
            rule += "---:|---:|---:|---:|"
        lines.append(head)
        lines.append(rule)
        best = {}
        for c in caches:
            ours = [x["summary"]["load_s"] for x in cells
                    if x["model"] == name and x["cache"] == c and is_stasis(x["loader"])
                    and x["summary"].get("load_s") and x["summary"].get("digest_ok")]
            best[c] = min(ours) if ours else None
        loaders = []
        for x in cells:
            if x["model"] == name and x["loader"] not in loaders:
                loaders.append(x["loader"])
        for loader in loaders:
            row = f"| {loader} |"
            for c in caches:
                cell = next((x for x in cells
                             if x["model"] == name and x["loader"] == loader and x["cache"] == c),
                            None)
                s = cell["summary"] if cell else {}
                if not s.get("load_s"):
                    why = s.get("error", "not run")
                    row += f" {html.escape(why[:60])} | | | |"
                    continue
                mark = "" if s.get("digest_ok") else " ✗digest"
                ratio = s["load_s"] / best[c] if best[c] else None
                row += (f" {s['load_s']:.3f}{mark} | {_fmt(s.get('gb_per_s'), '.2f')} | "
                        f"{s['peak_rss_bytes'] / 1e9:.2f} | {_fmt(ratio, '.2f')} |")
            lines.append(row)
        lines.append("")
    v = verdicts(cells)
    if v:
        lines.append("| model | cache | fastest peer | s | fastest stasis, checksummed | s | "
                     "speedup | fastest stasis | s | speedup |")
        lines.append("|---|---|---|---:|---|---:|---:|---|---:|---:|")
        for x in v:
            checked = (f"{x['checked']} | {x['checked_s']:.3f} | **{x['checked_speedup']:.2f}×**"
                       if "checked" in x else "— | | ")
            lines.append(f"| {x['model']} | {x['cache']} | {x['peer']} | {x['peer_s']:.3f} | "
                         f"{checked} | {x['stasis']} | {x['stasis_s']:.3f} | "
                         f"**{x['speedup']:.2f}×** |")
        lines.append("")
    return "\n".join(lines)


def render_svg(result: dict, model_name: str) -> str:
    """Horizontal bars of median load seconds for one model, cold and hot side by side."""
    cells = [c for c in result["cells"] if c["model"] == model_name and c["summary"].get("load_s")]
    caches = [c for c in ("cold", "hot") if any(x["cache"] == c for x in cells)]
    loaders = []
    for x in cells:
        if x["loader"] not in loaders:
            loaders.append(x["loader"])
    label_w, bar_w, row_h, pad = 300, 360, 18, 12
    panel_w = bar_w + 70
    width = label_w + panel_w * max(1, len(caches)) + pad
    height = 60 + row_h * len(loaders) + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{pad}" y="20" font-size="14" font-weight="bold">'
           f'{html.escape(model_name)}: median load seconds (shorter is faster)</text>']
    for i, loader in enumerate(loaders):
        y = 50 + i * row_h
        out.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">'
                   f'{html.escape(loader)}</text>')
    for p, cache in enumerate(caches):
        x0 = label_w + p * panel_w
        vals = [x["summary"]["load_s"] for x in cells if x["cache"] == cache]
        top = max(vals) if vals else 1.0
        out.append(f'<text x="{x0}" y="42" font-weight="bold">page cache {cache}</text>')
        for i, loader in enumerate(loaders):
            cell = next((x for x in cells if x["loader"] == loader and x["cache"] == cache), None)
            if cell is None:
                continue
            s = cell["summary"]["load_s"]
            w = max(1.0, bar_w * s / top)
            y = 50 + i * row_h
            color = "#d62728" if is_stasis(loader) else "#7f7f7f"
            out.append(f'<rect class="bar" x="{x0}" y="{y + 2}" width="{w:.1f}" '
                       f'height="{row_h - 5}" fill="{color}"/>')
            out.append(f'<text x="{x0 + w + 4:.1f}" y="{y + 12}">{s:.3f} s</text>')
    out.append(f'<text x="{pad}" y="{height - 10}" fill="#555">red: stasis; grey: peers. '
               f'{html.escape(result.get("machine", {}).get("summary", ""))}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def markers(device: str) -> Tuple[str, str]:
    return (f"<!-- peers:{device}:begin (written by bench/peers/run; edits inside are "
            f"replaced) -->", f"<!-- peers:{device}:end -->")


def replace_section(document: str, section: str, device: str = "cpu") -> str:
    """`document` with the text between the device's peers markers replaced by `section`;
    the markers are appended (under their own heading) when the document has none."""
    begin, end = markers(device)
    block = begin + "\n" + section.rstrip("\n") + "\n" + end
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(document):
        return pattern.sub(lambda _: block, document, count=1)
    return (document.rstrip("\n") + f"\n\n### Peers, side by side: {device}\n\n" + block +
            "\n")


def page_cache_drop(level: str = "3") -> Tuple[bool, str]:
    """Drops clean caches if permitted: (done, how). level: what /proc/sys/vm/drop_caches
    takes, "1" the page cache, "3" dentries and inodes too."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write(level + "\n")
        return True, "drop_caches"
    except OSError as e:
        return False, f"drop_caches not permitted ({e.strerror})"


def evict_file(path: str) -> None:
    """Evicts one file's clean pages (the fallback when drop_caches is not permitted)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm_file(path: str) -> None:
    """Reads a file once so that its pages are in the page cache."""
    with open(path, "rb", buffering=0) as f:
        while f.read(16 << 20):
            pass


def machine() -> dict:
    """The machine a benchmark ran on, for its report: CPU model, cores, memory, kernel."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    info = {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem,
            "kernel": platform.release(), "python": platform.python_version()}
    info["summary"] = (f"{cpu}, {info['cores']} cores, {mem / 2**30:.0f} GiB, "
                       f"Linux {info['kernel']}")
    return info
