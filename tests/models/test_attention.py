"""The predictor's attention paths: SDPA (boolean frame-causal mask) vs DINO-WM's explicit softmax (additive mask).
Both must compute the same function."""

from __future__ import annotations

import pytest
import torch

import wmqlib.models.predictor as predictor
from wmqlib.models.predictor import Attention, ViTPredictor

P = 3  # tokens per frame


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def restore_switches():
    saved = predictor.ATTENTION
    yield
    predictor.ATTENTION = saved


def test_additive_mask_is_zero_where_allowed_and_minus_inf_elsewhere():
    attention = Attention(dim=8, heads=2, dim_head=4, num_patches=2)
    additive = attention.mask(6, torch.device("cpu"), torch.float32)
    allowed = attention.mask(6, torch.device("cpu"))
    expected = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1],
                             [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]) * float("-inf")
    assert torch.equal(additive, expected.nan_to_num(0.0, neginf=float("-inf")))
    assert torch.equal(allowed, additive == 0)
    assert attention.mask(6, torch.device("cpu"), torch.float32) is additive  # built once, then cached
    assert attention.mask(6, torch.device("cpu"), torch.bfloat16).dtype == torch.bfloat16
    assert attention.mask(2, torch.device("cpu"), torch.float32) is None  # one frame: full attention


def explicit_attention(attention: Attention, x: torch.Tensor) -> torch.Tensor:
    """Hand-written frame-causal attention with a loop over queries (no mask tensor at all)."""
    b, n, _ = x.shape
    qkv = attention.to_qkv(attention.norm(x)).reshape(b, n, 3, attention.heads, attention.dim_head)
    q, k, v = qkv.unbind(2)  # (B, N, heads, dh)
    rows = []
    for i in range(n):
        visible = (i // attention.num_patches + 1) * attention.num_patches  # keys of frames <= frame(i)
        w = torch.einsum("bhd,bjhd->bhj", q[:, i], k[:, :visible]) / attention.dim_head**0.5
        rows.append(torch.einsum("bhj,bjhd->bhd", w.softmax(-1), v[:, :visible]))
    return attention.to_out(torch.stack(rows, 1).reshape(b, n, -1))


@pytest.mark.parametrize("frames", [1, 2, 4])
@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_every_attention_path_computes_frame_causal_attention(restore_switches, frames, impl):
    torch.manual_seed(0)
    attention = Attention(dim=12, heads=3, dim_head=5, num_patches=P).eval()
    x = randn(2, frames * P, 12, seed=frames)
    predictor.ATTENTION = impl
    with torch.no_grad():
        torch.testing.assert_close(attention(x), explicit_attention(attention, x), atol=1e-6, rtol=1e-5)


def test_unknown_attention_switch_is_named(restore_switches):
    predictor.ATTENTION = "flash"
    with pytest.raises(ValueError, match=r"predictor.ATTENTION must be one of \['sdpa', 'math'\], got 'flash'"):
        Attention(dim=4, heads=1, dim_head=4, num_patches=1)(torch.zeros(1, 2, 4))


def small_predictor() -> ViTPredictor:
    torch.manual_seed(1)
    return ViTPredictor(num_patches=P, num_frames=3, dim=12, depth=2, heads=2, dim_head=6, mlp_dim=24)


def test_later_frames_never_change_earlier_outputs_on_any_path(restore_switches):
    model = small_predictor().eval()
    x = randn(1, 3 * P, 12, seed=4)
    y = x.clone()
    y[:, 2 * P:] += 10.0  # change only the last frame
    for impl in predictor.ATTENTION_IMPLS:
        predictor.ATTENTION = impl
        with torch.no_grad():
            a, b = model(x), model(y)
        torch.testing.assert_close(a[:, :2 * P], b[:, :2 * P], atol=1e-6, rtol=0)
        assert not torch.allclose(a[:, 2 * P:], b[:, 2 * P:])
