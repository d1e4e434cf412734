"""Writes the benchmark's model: a safetensors file of seeded bf16 N(0, 0.02) weights.

    python genweights.py --mib 1024 --seed 1 -o model.safetensors

The same kind of data as build/bench/restore_bench's "1 GiB image of seeded bf16 weights"
(docs/benchmarks.md): normal(0, 0.02) f32 values rounded to bf16 (round to nearest even,
as common/float16.h's Float32ToBf16), so its zstd image compresses about as well (about
1.49x). restore_bench writes its image directly with C++'s mt19937_64 and one tensor; this
file is for loaders that read safetensors, so it is drawn with numpy's PCG64 (seeded: the
bytes are a pure function of --mib and --seed) and split into 16 MiB tensors
[4096, 2048] named layers.<i>.weight, the last one shorter when --mib is not a multiple of 16.
Memory stays at a few tensors' worth whatever the size.
"""

import argparse
import json
import os
import struct
import sys

import numpy as np

ROW = 2048  # bf16 elements per row
ROWS = 4096  # rows per full tensor: 16 MiB


def bf16(values: np.ndarray) -> np.ndarray:
    u = values.view(np.uint32)
    u = u + (0x7FFF + ((u >> 16) & 1)).astype(np.uint32)
    return (u >> 16).astype(np.uint16)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()
    if a.mib < 1:
        sys.exit("genweights: --mib must be at least 1")
    total_rows = a.mib * (1 << 20) // (2 * ROW)
    shapes = []
    left = total_rows
    while left:
        rows = min(ROWS, left)
        shapes.append([rows, ROW])
        left -= rows
    header = {"__metadata__": {"generator": f"bench/remote/genweights.py mib={a.mib} seed={a.seed}",
                               "format": "pt"}}
    off = 0
    for i, s in enumerate(shapes):
        n = s[0] * s[1] * 2
        header[f"layers.{i}.weight"] = {"dtype": "BF16", "shape": s, "data_offsets": [off, off + n]}
        off += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-(len(blob) + 8) % 64)  # data starts 64-byte aligned
    rng = np.random.Generator(np.random.PCG64(a.seed))
    tmp = a.output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for s in shapes:
            x = rng.standard_normal(s[0] * s[1], dtype=np.float32)
            x *= np.float32(0.02)
            f.write(bf16(x).tobytes())
    os.replace(tmp, a.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
