"""The Python package reads remote images as the CLI does: stasis.load, stasis.inspect and
stasis.verify take http(s):// and s3:// locations (the environment's S3 settings), and no
exception message shows a presigned URL's signature. Runs on the build tree's package
(build/python/stasis) and Debian's torch; skipped where either is missing."""

import os
import shutil
import sys

import pytest

from harness import BUILD

sys.path.insert(0, str(BUILD / "python"))
torch = pytest.importorskip("torch")
stasis = pytest.importorskip("stasis")


@pytest.fixture
def served(range_server, tmp_path):
    """A small module's image on the range server; the module and its URL."""
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 8))
    image = tmp_path / "m.stasis"
    stasis.snapshot(model, image, codec="zstd")
    shutil.copyfile(image, range_server.root / "m.stasis")
    return model, f"{range_server.url}/m.stasis"


def test_load_inspect_verify_over_http(served, range_server):
    model, url = served
    tensors = stasis.load(url)
    expected = model.state_dict()
    assert set(tensors) == set(expected)
    for name, t in expected.items():
        assert torch.equal(tensors[name], t), name
    assert stasis.inspect(url)["path"] == url
    assert stasis.verify(url)["errors"] == []
    assert any(q.headers.get("if-match") for q in range_server.requests), "reads not pinned"


def test_restore_into_a_module_over_s3(served, range_server, monkeypatch):
    model, _ = served
    # The range server answers path-style S3 GETs from its root (bucket = a folder).
    os.makedirs(range_server.root / "bucket", exist_ok=True)
    shutil.copyfile(range_server.root / "m.stasis", range_server.root / "bucket" / "m.stasis")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", range_server.url)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(range_server.root))  # no ~/.aws: unsigned requests
    fresh = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 8))
    stasis.restore(fresh, "s3://bucket/m.stasis")
    x = torch.randn(3, 64)
    assert torch.equal(fresh(x), model(x))


def test_errors_never_show_a_presigned_signature(served):
    _, url = served
    secret = "X-Amz-Signature=00deadbeef11"
    with pytest.raises(FileNotFoundError) as e:
        stasis.load(url.replace("m.stasis", "gone.stasis") + "?" + secret)
    assert "deadbeef" not in str(e.value)
    assert "gone.stasis" in str(e.value)
