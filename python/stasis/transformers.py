"""Hugging Face transformers models from stasis images.

stasis.snapshot(model, path) stores a transformers model's class name and full config in
the image's metadata; from_image builds that class from that config on the meta device
(no weight is allocated or initialised) and binds the restored memory into it.
"""

import contextlib
import json
import os

from . import _api


@contextlib.contextmanager
def _meta_device(torch):
    """Parameters created inside are meta tensors: torch.device("meta") on torch >= 2.0;
    on older torch, each parameter is moved to meta as it is registered (its own
    initialisation then runs on meta and costs nothing)."""
    if hasattr(torch.device, "__enter__"):
        with torch.device("meta"):
            yield
        return
    original = torch.nn.Module.register_parameter

    def register_parameter(module, name, param):
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    torch.nn.Module.register_parameter = register_parameter
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


def model_class_and_config(metadata):
    """(class, config) recorded in an image's metadata."""
    import transformers

    class_name = metadata.get("hf.class")
    config_json = metadata.get("hf.config")
    if not class_name or not config_json:
        raise ValueError("the image holds no Hugging Face model (no hf.class/hf.config metadata): snapshot a transformers model")
    cls = getattr(transformers, class_name, None)
    if cls is None:
        raise ValueError(f"transformers {transformers.__version__} has no class {class_name}")
    config = cls.config_class.from_dict(json.loads(config_json))
    return cls, config


def from_image(path, *, device="cpu", strict=True, **restore_options):
    """The transformers model stored in the image at `path`, on `device`, in eval mode
    (as from_pretrained returns it), with outputs equal to the snapshotted model's."""
    import torch

    path = os.fspath(path)
    image = _api.inspect(path)  # read once: the class and config here, the tensors in restore
    cls, config = model_class_and_config(image["metadata"])
    with _meta_device(torch):
        model = cls(config)
    model.eval()
    return _api._restore_into(model, path, image, device, strict, restore_options)
