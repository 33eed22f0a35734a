"""StepEmbedding: the linear shortcut computes DINO-WM's Conv1d over time."""

from __future__ import annotations

import torch

from wmqlib.models.embeddings import StepEmbedding


def test_equals_conv1d_over_time() -> None:
    torch.manual_seed(0)
    embedding = StepEmbedding(6, 4)
    x = torch.randn(3, 5, 6)
    conv = embedding.patch_embed(x.transpose(1, 2)).transpose(1, 2)  # DINO-WM: permute, Conv1d, permute
    torch.testing.assert_close(embedding(x), conv)
    assert {k: tuple(v.shape) for k, v in embedding.state_dict().items()} == {
        "patch_embed.weight": (4, 6, 1), "patch_embed.bias": (4,)}
