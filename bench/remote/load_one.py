"""One load of the benchmark's safetensors file from the endpoint by a Python loader, in a
process of its own; prints one JSON line.

    python load_one.py --mode runai --location s3://BUCKET/KEY [--digest]
    python load_one.py --mode download --endpoint URL --location s3://BUCKET/KEY
                       --dest FILE [--digest]

runai     the Run:ai Model Streamer (runai-model-streamer + runai-model-streamer-s3)
          streams s3://BUCKET/KEY; the endpoint, path-style addressing, credentials and
          RUNAI_STREAMER_CONCURRENCY come from the environment (remote.py sets them).
          Timed: SafetensorsStreamer() + stream_file() + the loop over get_tensors() that
          keeps every tensor and reads one byte of every 4 KiB page of it.
download  boto3's download_file (s3 path-style against the endpoint, boto3's default
          TransferConfig: 10 threads, 8 MiB parts) to --dest, then
          safetensors.torch.load_file(--dest) and the same page touch. Timed: client
          creation + download + load + touch (each part is reported too).

Imports (torch, boto3, the streamer, safetensors) happen before the timed region, as in
bench/peers/load_one.py: interpreter start and imports are the same for every Python
loader and are not the loader's cost (the process's wall time, measured by the driver,
includes them). With --digest, every tensor is hashed after the timed region (peers_lib's
digest, the one `stasis restore --digest` prints) so the driver can check the bytes.
"""

import argparse
import json
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "peers"))
import peers_lib  # noqa: E402

PAGE = 4096


def touch(t) -> None:
    """Reads one byte of every 4 KiB page of the tensor (a first use would)."""
    import torch
    if t.numel() == 0:
        return
    flat = t.reshape(-1) if t.is_contiguous() else t.contiguous().reshape(-1)
    flat.view(torch.uint8)[::PAGE].sum()


def split_s3(location: str):
    if not location.startswith("s3://") or "/" not in location[5:]:
        raise ValueError(f"not an s3://bucket/key location: {location}")
    bucket, key = location[5:].split("/", 1)
    return bucket, key


def load_runai(a, out: dict) -> dict:
    from runai_model_streamer import SafetensorsStreamer
    tensors = {}
    t0 = time.perf_counter()
    with SafetensorsStreamer() as streamer:
        streamer.stream_file(a.location)
        for name, tensor in streamer.get_tensors():
            touch(tensor)
            tensors[name] = tensor
    out["ready_s"] = time.perf_counter() - t0
    return tensors


def load_download(a, out: dict) -> dict:
    import boto3
    from botocore.config import Config
    from safetensors.torch import load_file
    bucket, key = split_s3(a.location)
    t0 = time.perf_counter()
    s3 = boto3.client("s3", endpoint_url=a.endpoint,
                      config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}))
    t1 = time.perf_counter()
    s3.download_file(bucket, key, a.dest)
    t2 = time.perf_counter()
    tensors = load_file(a.dest)
    t3 = time.perf_counter()
    for t in tensors.values():
        touch(t)
    t4 = time.perf_counter()
    out.update(ready_s=t4 - t0, client_s=t1 - t0, download_s=t2 - t1, load_s=t3 - t2,
               touch_s=t4 - t3)
    return tensors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", required=True, choices=("runai", "download"))
    ap.add_argument("--location", required=True, help="s3://BUCKET/KEY")
    ap.add_argument("--endpoint", default="", help="download: the S3 endpoint URL")
    ap.add_argument("--dest", default="", help="download: the local file to write")
    ap.add_argument("--digest", action="store_true", help="hash every tensor afterwards")
    a = ap.parse_args()
    if a.mode == "download" and not (a.endpoint and a.dest):
        ap.error("--mode download needs --endpoint and --dest")

    # Imported before the timed region (every loader needs them; not the loader's cost).
    import torch  # noqa: F401  pylint: disable=unused-import
    if a.mode == "runai":
        import runai_model_streamer  # noqa: F401  pylint: disable=unused-import
    else:
        import boto3  # noqa: F401  pylint: disable=unused-import
        import safetensors.torch  # noqa: F401  pylint: disable=unused-import
    out = {"mode": a.mode, "location": a.location}
    try:
        tensors = (load_runai if a.mode == "runai" else load_download)(a, out)
    except Exception as e:  # reported, not raised: the driver shows it
        out.update(ok=False, error=f"{type(e).__name__}: {e}"[:500])
        print(json.dumps(out), flush=True)
        return 0
    out["tensors"] = len(tensors)
    out["bytes"] = sum(t.numel() * t.element_size() for t in tensors.values())
    out["peak_rss_self_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if a.digest:
        hashes = {}
        for name, t in tensors.items():
            c = t.contiguous()
            hashes[name] = peers_lib.xxh3_ptr(c.data_ptr(), c.numel() * c.element_size())
        out["digest"] = peers_lib.combine(hashes)
    out["ok"] = True
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
