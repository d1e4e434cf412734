"""Remote images read as local ones: byte-identical exports, equal inspect reports and clean
verifies from http:// (range_server.py) and s3:// (moto), for every codec; the pinned open;
presigned URLs; where the S3 endpoint comes from."""

import shutil
import urllib.parse

import pytest

from harness import ACCESS_KEY, BUCKET, CODECS, SECRET_KEY, comparable
from range_server import etag_of


def locations(kind, codec, range_server, moto, stasis):
    """(location, extra CLI args, environment) for one way of naming the image."""
    name = f"model-{codec}.stasis"
    if kind == "http":
        return f"{range_server.url}/{name}", [], stasis.env()
    if kind == "s3-flag":
        return f"s3://{BUCKET}/{name}", ["--s3-endpoint", moto.url], stasis.aws_env()
    if kind == "s3-env":
        return f"s3://{BUCKET}/{name}", [], stasis.aws_env(AWS_ENDPOINT_URL_S3=moto.url)
    if kind == "s3-env-generic":
        return f"s3://{BUCKET}/{name}", [], stasis.aws_env(AWS_ENDPOINT_URL=moto.url)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["http", "s3-flag", "s3-env", "s3-env-generic"])
@pytest.mark.parametrize("codec", CODECS)
def test_remote_reads_like_local(stasis, images, range_server, moto, tmp_path, kind, codec):
    image = images[codec]
    loc, args, env = locations(kind, codec, range_server, moto, stasis)

    out = tmp_path / "remote.safetensors"
    stasis.ok("export", loc, "-o", out, *args, env=env)
    assert out.read_bytes() == image.export.read_bytes()

    inspect = stasis.ok("inspect", loc, "--json", *args, env=env).json()
    assert comparable(inspect) == comparable(image.inspect)

    verify = stasis.ok("verify", loc, "--json", *args, env=env).json()
    assert verify["intact"] is True and comparable(verify) == comparable(image.verify)

    restore = stasis.ok("restore", loc, "--json", *args, env=env).json()
    assert restore["raw_bytes"] == image.inspect["raw_bytes"]
    assert restore["verified_stored"] is True


def test_open_is_pinned_by_etag(stasis, images, range_server, tmp_path):
    """The first request is one suffix-range GET; every later GET is a range GET that carries
    If-Match with the ETag the first one got (stasis/remote.h: "pinned")."""
    stasis.ok("export", f"{range_server.url}/model-many.stasis", "-o", tmp_path / "out.safetensors")
    gets = range_server.requests
    assert gets and all(r.method == "GET" for r in gets), [(r.method, r.target) for r in gets]
    first = gets[0]
    assert first.range is not None and first.range[0] is None, first.headers
    etag = etag_of(range_server.file_for("/model-many.stasis").stat())
    assert len(gets) > 2
    for r in gets[1:]:
        assert r.headers.get("if-match") == etag, (r.target, r.headers)
        assert r.range_length > 0, r.headers  # a bounded range, never the whole object
        assert r.range[1] < images["many"].path.stat().st_size
    assert all(r.status == 206 for r in gets)


def test_presigned_url(stasis, images, moto, tmp_path):
    """A presigned URL works as an http:// location; its signature never shows, neither when
    the run succeeds nor when it fails (the object deleted: 404)."""
    name = images["auto"].path.name
    key = "presigned/" + name
    moto.client.upload_file(str(images["auto"].path), BUCKET, key)
    url = moto.client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key},
                                             ExpiresIn=600)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert "X-Amz-Signature" in query, url
    stasis.secrets.add(query["X-Amz-Signature"][0])
    stasis.secrets.add(urllib.parse.urlsplit(url).query)

    out = tmp_path / "out.safetensors"
    # -v: the engine's log lines are checked too.
    r = stasis.ok("-v", "export", url, "-o", out)
    assert out.read_bytes() == images["auto"].export.read_bytes()
    inspect = stasis.ok("inspect", url, "--json").json()
    assert comparable(inspect) == comparable(images["auto"].inspect)
    assert "?" not in inspect.get("image", ""), inspect.get("image")

    moto.client.delete_object(Bucket=BUCKET, Key=key)
    for command in (["inspect", url], ["export", url, "-o", tmp_path / "gone.safetensors"]):
        r = stasis.fails("-v", *command)
        assert "404" in r.stderr or "not found" in r.stderr.lower(), str(r)
    assert not (tmp_path / "gone.safetensors").exists()


def test_endpoint_precedence(stasis, moto, closed_port):
    """--s3-endpoint over AWS_ENDPOINT_URL_S3 over AWS_ENDPOINT_URL: the one that wins points
    at moto, the others at a closed port."""
    dead = f"http://127.0.0.1:{closed_port}"
    loc = f"s3://{BUCKET}/model-raw.stasis"
    stasis.ok("inspect", loc, "--s3-endpoint", moto.url,
              env=stasis.aws_env(AWS_ENDPOINT_URL_S3=dead, AWS_ENDPOINT_URL=dead))
    stasis.ok("inspect", loc, env=stasis.aws_env(AWS_ENDPOINT_URL_S3=moto.url,
                                                 AWS_ENDPOINT_URL=dead))
    r = stasis.fails("inspect", loc, "--remote-retries", "1",
                     env=stasis.aws_env(AWS_ENDPOINT_URL_S3=dead, AWS_ENDPOINT_URL=moto.url))
    assert "connect" in r.stderr.lower(), str(r)


def test_key_that_needs_encoding(stasis, images, range_server, tmp_path):
    """A key with a space, a '+' and a non-ASCII letter: percent-encoded in the URL, and the
    SigV4 signature (checked by the range server as S3 checks it) matches."""
    key = "dir/sub dir/model+v1\u00e9.stasis"
    target = range_server.root / BUCKET / key
    target.parent.mkdir(parents=True)
    shutil.copyfile(images["raw"].path, target)
    range_server.require_sigv4({ACCESS_KEY: (SECRET_KEY, None)})

    out = tmp_path / "out.safetensors"
    stasis.ok("export", f"s3://{BUCKET}/{key}", "-o", out, "--s3-endpoint", range_server.url,
              env=stasis.aws_env())
    assert out.read_bytes() == images["raw"].export.read_bytes()
    assert all(r.status == 206 for r in range_server.requests)
    assert all(" " not in r.target for r in range_server.requests)
