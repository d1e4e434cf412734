"""pytest setup: the tests import the stasis package built in build/python/ (a link to
python/stasis/ beside the extension), or, with STASIS_PYTHON_INSTALLED=1, the installed
one (`pip install .`)."""

import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if os.environ.get("STASIS_PYTHON_INSTALLED") != "1":
    build = pathlib.Path(os.environ.get("STASIS_BUILD_DIR", ROOT / "build")) / "python"
    sys.path.insert(0, str(build))
    os.environ["PYTHONPATH"] = str(build) + os.pathsep + os.environ.get("PYTHONPATH", "")


@pytest.fixture
def rng():
    """A seeded generator, so every failure can be repeated."""
    import torch

    return torch.Generator().manual_seed(1234)
