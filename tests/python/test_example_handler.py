"""docs/examples/potassium_handler.py: warmup, answers, idle unload, reload on demand."""

import importlib.util
import pathlib
import time

import pytest
import torch

import stasis

transformers = pytest.importorskip("transformers")
EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "examples" / "potassium_handler.py"


def load_example():
    spec = importlib.util.spec_from_file_location("potassium_handler", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_handler_unloads_when_idle_and_reloads_on_the_next_request(tmp_path):
    torch.manual_seed(3)
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    model = transformers.GPT2LMHeadModel(config).eval()
    path = tmp_path / "gpt2.stasis"
    stasis.snapshot(model, path)
    with torch.no_grad():
        want = int(model(torch.tensor([[4, 8, 15]])).logits[0, -1].argmax())

    handler = load_example().ModelHandler(path, idle_s=0.2)
    try:
        assert handler({"input_ids": [4, 8, 15]}) == {"next_token": want}
        deadline = time.monotonic() + 10
        while handler.loaded and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not handler.loaded
        assert not stasis.handle(handler.model).loaded  # the memory was released
        assert handler({"input_ids": [4, 8, 15]}) == {"next_token": want}
        assert stasis.handle(handler.model).loaded
    finally:
        handler.close()
