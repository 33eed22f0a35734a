"""StepEmbedding: DINO-WM's Conv1d over time, as a per-step linear map."""

from __future__ import annotations

import torch

from wmqlib.models.embeddings import StepEmbedding


def test_equals_conv1d_over_time() -> None:
    torch.manual_seed(0)
    embedding = StepEmbedding(6, 4)
    x = torch.randn(3, 5, 6)
    per_step = x @ embedding.patch_embed.weight[:, :, 0].T + embedding.patch_embed.bias
    torch.testing.assert_close(embedding(x), per_step)
    torch.testing.assert_close(embedding(x[None]), per_step[None])  # extra leading axes
    torch.testing.assert_close(embedding(x[0]), per_step[0])  # (T, in_dim) alone
    assert {k: tuple(v.shape) for k, v in embedding.state_dict().items()} == {
        "patch_embed.weight": (4, 6, 1), "patch_embed.bias": (4,)}
