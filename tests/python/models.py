"""Modules the tests snapshot: small, seeded, and with what breaks naive loaders."""

import torch


class Tricky(torch.nn.Module):
    """Tied weights (embedding and head), a transposed (non-contiguous) parameter, a
    non-persistent buffer, a view of another parameter's storage with an offset, and
    f32/bf16/f16/int64/bool tensors."""

    def __init__(self, vocab=32, dim=16):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.transposed = torch.nn.Parameter(torch.empty(dim, dim + 3).t())
        self.f16 = torch.nn.Parameter(torch.empty(dim, dtype=torch.float16))
        self.bf16 = torch.nn.Parameter(torch.empty(dim, dtype=torch.bfloat16))
        self.register_buffer("positions", torch.arange(vocab, dtype=torch.int64))
        self.register_buffer("mask", torch.arange(vocab) % 3 == 0)
        self.register_buffer("scale", torch.full((dim,), 0.5), persistent=False)

    def reset(self, generator):
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator).to(p.dtype))
            self.scale.copy_(torch.rand(self.scale.shape, generator=generator))
        return self

    def forward(self, ids):
        x = self.embed(ids) * self.scale
        x = self.proj(x) + x @ self.transposed[: x.shape[-1]]
        x = x + self.f16.float() + self.bf16.float()
        logits = self.head(x)
        return logits.masked_fill(self.mask, 0.0) + self.positions.float()


def tricky(generator):
    return Tricky().reset(generator)
