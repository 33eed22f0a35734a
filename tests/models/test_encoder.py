"""ViTEncoder: DINOv2 key layout, and outputs equal to an independent DINOv2 forward written from the paper."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wmqlib.models.encoder import ViTEncoder

DIM, DEPTH, MLP, PATCH, POS_GRID = 64, 2, 96, 4, 5


def reference_dinov2(state: dict, images: torch.Tensor, heads: int) -> torch.Tensor:
    """x_norm_patchtokens of a DINOv2 ViT, step by step with an explicit softmax (no nn modules)."""
    d = state["cls_token"].shape[-1]
    x = F.conv2d(images, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=PATCH)
    gh, gw = x.shape[-2:]
    x = torch.cat([state["cls_token"].expand(len(x), -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    pos = state["pos_embed"]
    if (gh, gw) != (POS_GRID, POS_GRID):  # DINOv2 resizes its stored grid with scale factors (g + 0.1) / M
        grid = pos[:, 1:].reshape(1, POS_GRID, POS_GRID, d).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((gh + 0.1) / POS_GRID, (gw + 0.1) / POS_GRID), mode="bicubic")
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, d)], dim=1)
    x = x + pos
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for i in range(depth):
        w = {k.removeprefix(f"blocks.{i}."): v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        h = F.layer_norm(x, (d,), w["norm1.weight"], w["norm1.bias"], eps=1e-6)
        q, k, v = (h @ w["attn.qkv.weight"].T + w["attn.qkv.bias"]).chunk(3, dim=-1)
        q, k, v = (t.reshape(*t.shape[:2], heads, d // heads).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
        out = (att @ v).transpose(1, 2).reshape(x.shape)
        x = x + w["ls1.gamma"] * (out @ w["attn.proj.weight"].T + w["attn.proj.bias"])
        h = F.layer_norm(x, (d,), w["norm2.weight"], w["norm2.bias"], eps=1e-6)
        mlp = F.gelu(h @ w["mlp.fc1.weight"].T + w["mlp.fc1.bias"]) @ w["mlp.fc2.weight"].T + w["mlp.fc2.bias"]
        x = x + w["ls2.gamma"] * mlp
    return F.layer_norm(x, (d,), state["norm.weight"], state["norm.bias"], eps=1e-6)[:, 1:]


@pytest.fixture
def dinov2(make_dinov2_state) -> dict:
    return make_dinov2_state(DIM, DEPTH, MLP, PATCH, POS_GRID, seed=5)


def test_state_dict_layout_is_dinov2(dinov2: dict) -> None:
    encoder = ViTEncoder(DIM, DEPTH, 1, MLP, PATCH, POS_GRID)
    assert {k: v.shape for k, v in encoder.state_dict().items()} == {k: v.shape for k, v in dinov2.items()}
    encoder.load_state_dict(dinov2, strict=True)


@pytest.mark.parametrize("side", [16, 20, 12])  # grids 4 (interpolated), 5 (stored grid as is), 3 (interpolated)
def test_matches_reference_forward(dinov2: dict, side: int) -> None:
    encoder = ViTEncoder(DIM, DEPTH, 1, MLP, PATCH, POS_GRID)
    encoder.load_state_dict(dinov2)
    images = torch.rand(3, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        out = encoder(images)
    assert out.shape == (3, (side // PATCH) ** 2, DIM)
    torch.testing.assert_close(out, reference_dinov2(dinov2, images, heads=1), atol=2e-5, rtol=1e-4)


def test_two_heads_match_reference(make_dinov2_state) -> None:
    state = make_dinov2_state(128, 1, 64, PATCH, POS_GRID, seed=2)
    encoder = ViTEncoder(128, 1, 2, 64, PATCH, POS_GRID)
    encoder.load_state_dict(state)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(encoder(images), reference_dinov2(state, images, heads=2), atol=2e-5, rtol=1e-4)


def test_position_embedding_interpolation_properties() -> None:
    encoder = ViTEncoder(8, 1, 1, 8, PATCH, POS_GRID)
    assert encoder.position_embedding(POS_GRID, POS_GRID) is encoder.pos_embed  # stored grid: used as is
    with torch.no_grad():
        encoder.pos_embed[:, 1:] = 0.7  # bicubic resampling reproduces a constant field exactly
    pos = encoder.position_embedding(3, 4)
    assert pos.shape == (1, 1 + 12, 8)
    torch.testing.assert_close(pos[:, 1:], torch.full((1, 12, 8), 0.7))
    assert torch.equal(pos[:, 0], encoder.pos_embed[:, 0])


def test_rejects_sizes_off_the_patch_grid() -> None:
    with pytest.raises(ValueError, match="not a multiple of patch_size 4"):
        ViTEncoder(8, 1, 1, 8, PATCH, POS_GRID)(torch.zeros(1, 3, 18, 16))
