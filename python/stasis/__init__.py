"""stasis: snapshot a model's tensors into a checksummed image, restore them fast.

    import stasis
    stasis.snapshot(model, "model.stasis")              # an nn.Module or a dict of tensors
    weights = stasis.load("model.stasis")                # dict[str, torch.Tensor], zero-copy
    stasis.restore(meta_built_model, "model.stasis")     # binds restored memory, no init
    model = stasis.transformers.from_image("model.stasis")

``import stasis`` does not import torch: the functions that take or make tensors import it
when called, and the extension talks to torch through DLPack only, so any torch from 1.13
on works. docs/python.md is the guide (lifetime, errors, the compiled-code cache).
"""

from . import _core
from ._api import (
    LoadedTensors,
    SnapshotReport,
    handle,
    inspect,
    load,
    reload,
    restore,
    snapshot,
    unload,
    verify,
)

__version__ = _core.__version__

__all__ = [
    "LoadedTensors",
    "SnapshotReport",
    "handle",
    "inspect",
    "load",
    "reload",
    "restore",
    "snapshot",
    "transformers",
    "unload",
    "verify",
]


def __getattr__(name):
    # stasis.transformers imports transformers only when first used.
    if name == "transformers":
        import importlib

        return importlib.import_module(".transformers", __name__)
    raise AttributeError(f"module 'stasis' has no attribute {name!r}")
