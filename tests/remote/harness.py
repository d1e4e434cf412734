"""Shared pieces of the remote-image tests (stasis/remote.h): the test credentials, seeded
models in safetensors, and `Stasis`, which runs the CLI in a clean environment and checks
every run's output for leaked secrets (the secret key, the session token, any presigned
signature)."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import random
import re
import struct
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = pathlib.Path(os.environ.get("STASIS_BUILD_DIR", ROOT / "build"))
STASIS = pathlib.Path(os.environ.get("STASIS_BIN", BUILD / "tools" / "stasis"))

# Credentials the tests hand to stasis: none of the secrets may ever appear in its output.
ACCESS_KEY = "AKIDSTASISTEST000001"
SECRET_KEY = "sEcReT/stasis+test0000000000000000000001"
SESSION_TOKEN = "SeSsIoNtOkEn/stasis+test00000000000000000001"
BUCKET = "stasis-test"

CODECS = ("raw", "zstd", "auto")
DTYPE_SIZE = {"BF16": 2, "F32": 4, "I64": 8}

# A local web or object store can still be slow on a loaded 2-core machine; every run has
# this bound so that a hung client fails the test instead of hanging the suite.
RUN_TIMEOUT_S = 60


# -- models ----------------------------------------------------------------------------------


def make_tensor_bytes(rng: random.Random, dtype: str, count: int, compressible: bool) -> bytes:
    size = DTYPE_SIZE[dtype]
    if not compressible:
        return rng.randbytes(count * size)
    # Few distinct values: zstd shrinks it, so `auto` picks zstd here and raw elsewhere.
    palette = [rng.randbytes(size) for _ in range(16)]
    return b"".join(rng.choice(palette) for _ in range(count))


def write_safetensors(path: pathlib.Path, tensors: dict) -> None:
    """tensors: name -> (dtype, shape, bytes). The safetensors layout: an 8-byte little-endian
    header length, a JSON header padded with spaces to 8 bytes, then the data."""
    header, offset = {}, 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text +
                     b"".join(data for _, _, data in tensors.values()))


def read_safetensors(path: pathlib.Path) -> dict:
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    return {name: (h["dtype"], h["shape"],
                   raw[base + h["data_offsets"][0]:base + h["data_offsets"][1]])
            for name, h in header.items()}


def make_model(path: pathlib.Path, seed: int, scale: int = 1) -> dict:
    """About 1.9 MiB (x scale) in five tensors of three dtypes, some compressible."""
    rng = random.Random(seed)
    spec = [  # name, dtype, shape, compressible
        ("model.embed.weight", "BF16", [512 * scale, 1024], False),
        ("model.layers.0.mlp.weight", "F32", [256 * scale, 512], True),
        ("model.layers.0.mlp.bias", "F32", [512], False),
        ("model.position_ids", "I64", [32768 * scale], True),
        ("model.norm.weight", "BF16", [1000, 3], False),  # a size that is no multiple of 8
    ]
    tensors = {}
    for name, dtype, shape, compressible in spec:
        count = 1
        for d in shape:
            count *= d
        tensors[name] = (dtype, shape, make_tensor_bytes(rng, dtype, count, compressible))
    write_safetensors(path, tensors)
    return tensors


# -- running the CLI ---------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    args: list
    returncode: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self):
        return json.loads(self.stdout)

    def __str__(self):
        return (f"$ stasis {' '.join(map(str, self.args))}\nexit {self.returncode} after "
                f"{self.elapsed:.2f}s\n--- stdout\n{self.stdout[-4000:]}\n--- stderr\n"
                f"{self.stderr[-4000:]}")


class Stasis:
    """Runs build/tools/stasis with a clean environment: no AWS_* or proxy variable from the
    caller and HOME in a temporary folder, so the caller's ~/.aws is never read."""

    def __init__(self, home: pathlib.Path):
        self.home = home
        self.secrets = {SECRET_KEY, SESSION_TOKEN}

    def env(self, **extra) -> dict:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
               "LANG": "C.UTF-8", "NO_PROXY": "127.0.0.1,localhost",
               "no_proxy": "127.0.0.1,localhost"}
        env.update({k: str(v) for k, v in extra.items() if v is not None})
        return env

    def aws_env(self, **extra) -> dict:
        """The environment with the test credentials (and any other variables)."""
        env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
               "AWS_REGION": "us-east-1"}
        env.update(extra)  # None removes a variable
        return self.env(**env)

    def run(self, *args, env=None, timeout=RUN_TIMEOUT_S) -> Result:
        args = [str(a) for a in args]
        start = time.monotonic()
        try:
            p = subprocess.run([str(STASIS), *args], env=env if env is not None else self.env(),
                               capture_output=True, text=True, errors="replace", timeout=timeout)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"stasis {' '.join(args)} did not finish in {timeout}s\n"
                        f"stderr: {e.stderr!r}")
        result = Result(args, p.returncode, p.stdout, p.stderr, time.monotonic() - start)
        self.check_no_secrets(result)
        return result

    def check_no_secrets(self, result: Result) -> None:
        for secret in self.secrets:
            assert secret not in result.output, f"a secret leaked into the output:\n{result}"
        # Presigned query strings and SigV4 headers, whoever's they are.
        assert not re.search(r"(?i)x-amz-(signature|credential|security-token)=", result.output), \
            f"a presigned query string leaked into the output:\n{result}"
        assert not re.search(r"Signature=[0-9a-f]{64}", result.output), \
            f"a signature leaked into the output:\n{result}"

    def ok(self, *args, **kw) -> Result:
        r = self.run(*args, **kw)
        assert r.returncode == 0, str(r)
        return r

    def fails(self, *args, **kw) -> Result:
        r = self.run(*args, **kw)
        assert r.returncode != 0, f"expected a failure:\n{r}"
        assert r.stderr.strip(), f"a failure without a message:\n{r}"
        return r


def comparable(report: dict) -> dict:
    """An inspect/verify report without the fields that name where the image is, and the
    time it took: what must be equal for a local image and the same image remote."""
    return {k: v for k, v in report.items() if k not in ("image", "location", "path", "seconds")}
