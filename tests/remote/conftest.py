"""Fixtures for the remote-image tests: seeded images made once per session, a range server
(range_server.py) and moto's S3 server, each on 127.0.0.1 with a free port and stopped at
teardown. The shared helpers are in harness.py."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import socket
import subprocess

import pytest

from harness import (ACCESS_KEY, BUCKET, CODECS, SECRET_KEY, STASIS, Stasis, make_model,
                     read_safetensors)
from range_server import RangeServer

# libcurl reads these; a proxy from the caller's environment must not see 127.0.0.1 (boto3,
# in this process, too).
for _proxy in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
               "ALL_PROXY"):
    os.environ.pop(_proxy, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"


def has_remote_support() -> bool:
    try:
        p = subprocess.run([str(STASIS), "restore", "--help"], capture_output=True, text=True,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--s3-endpoint" in p.stdout


@pytest.fixture(scope="session")
def stasis_with_remote_support():
    """Fails (rather than skips) every test of a binary without the feature: scripts/test runs
    these after the build, where the feature must be there."""
    if not STASIS.is_file():
        pytest.fail(f"{STASIS} is missing: build it (cmake --build build --target stasis)")
    if not has_remote_support():
        pytest.fail(f"{STASIS} has no remote-image support (no --s3-endpoint in `restore --help`)")


@pytest.fixture
def stasis(tmp_path, stasis_with_remote_support) -> Stasis:
    home = tmp_path / "home"
    home.mkdir()
    return Stasis(home)


# -- models and images (made once per session) -------------------------------------------------


@dataclasses.dataclass
class Image:
    codec: str
    path: pathlib.Path  # the local image
    export: pathlib.Path  # `stasis export` of the local image: what every remote export must equal
    inspect: dict  # `stasis inspect --json` of the local image
    verify: dict  # `stasis verify --json` of the local image


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> dict:
    """codec -> Image, plus "many": a raw image of ~7.5 MiB in 64 KiB chunks (about 120) for
    the parallelism and fault tests. Every image uses 64 KiB chunks, so a restore issues
    many range GETs."""
    work = tmp_path_factory.mktemp("images")
    stasis = Stasis(work)
    model = work / "model.safetensors"
    tensors = make_model(model, seed=20240611)
    big_model = work / "big.safetensors"
    big_tensors = make_model(big_model, seed=7, scale=4)
    out = {}
    for name, codec, source, expected in [*[(c, c, model, tensors) for c in CODECS],
                                          ("many", "raw", big_model, big_tensors)]:
        path = work / f"model-{name}.stasis"
        stasis.ok("snapshot", source, "-o", path, "--codec", codec, "--chunk-size", "64KiB", "-q")
        export = work / f"model-{name}.export.safetensors"
        stasis.ok("export", path, "-o", export)
        # The local export is the reference for the remote ones; it must hold the source's
        # tensors, so that "equal to the local export" means "right".
        assert read_safetensors(export) == expected
        out[name] = Image(codec, path, export, stasis.ok("inspect", path, "--json").json(),
                          stasis.ok("verify", path, "--json").json())
    # The images must exercise what they are meant to: `auto` mixes codecs.
    codecs = out["auto"].inspect["codecs"]
    assert codecs["raw"]["chunks"] > 0 and codecs["zstd"]["chunks"] > 0, codecs
    assert out["many"].inspect["codecs"]["raw"]["chunks"] >= 100
    return out


# -- servers -------------------------------------------------------------------------------------


@pytest.fixture
def range_server(tmp_path, images):
    """A RangeServer whose root holds every image twice: /model-CODEC.stasis (for http://)
    and /stasis-test/model-CODEC.stasis (for s3://stasis-test/... with --s3-endpoint)."""
    root = tmp_path / "served"
    (root / BUCKET).mkdir(parents=True)
    for image in images.values():
        shutil.copyfile(image.path, root / image.path.name)
        shutil.copyfile(image.path, root / BUCKET / image.path.name)
    server = RangeServer(root).start()
    try:
        yield server
    finally:
        server.stop()


@dataclasses.dataclass
class Moto:
    url: str
    client: object  # boto3 S3 client, path-style, against the moto server
    bucket: str


@pytest.fixture(scope="session")
def moto(images):
    from moto.server import ThreadedMotoServer
    import boto3
    import botocore.config

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        client = boto3.client(
            "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            # s3v4: presigned URLs carry X-Amz-Signature, as AWS's do today.
            config=botocore.config.Config(
                s3={"addressing_style": "path"}, signature_version="s3v4", connect_timeout=5,
                read_timeout=30, retries={"max_attempts": 2}))
        client.create_bucket(Bucket=BUCKET)
        for image in images.values():
            client.upload_file(str(image.path), BUCKET, image.path.name)
        yield Moto(url, client, BUCKET)
    finally:
        server.stop()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
