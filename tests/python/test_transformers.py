"""stasis.transformers.from_image: a Hugging Face model from its image, outputs equal."""

import pytest
import torch

import stasis

transformers = pytest.importorskip("transformers")


def tiny_gpt2(seed):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    return transformers.GPT2LMHeadModel(config).eval()


def test_from_image_builds_on_meta_and_matches_outputs(tmp_path):
    model = tiny_gpt2(7)
    path = tmp_path / "gpt2.stasis"
    stasis.snapshot(model, path)
    md = stasis.inspect(path)["metadata"]
    assert md["hf.class"] == "GPT2LMHeadModel"
    assert '"n_embd": 32' in md["hf.config"]

    restored = stasis.transformers.from_image(path)
    assert type(restored) is transformers.GPT2LMHeadModel
    assert not restored.training
    assert restored.lm_head.weight is restored.transformer.wte.weight  # tied
    regions = stasis.handle(restored).regions()
    for name, t in list(restored.named_parameters()) + list(restored.named_buffers()):
        assert any(b <= t.data_ptr() < b + n for b, n in regions), name
    ids = torch.tensor([[1, 5, 9, 3, 2]])
    with torch.no_grad():
        want = model(ids).logits
        got = restored(ids).logits
    assert torch.equal(got, want)


def test_from_image_refuses_an_image_without_a_config(tmp_path):
    path = tmp_path / "plain.stasis"
    stasis.snapshot({"w": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="no Hugging Face model"):
        stasis.transformers.from_image(path)
