"""ViTPredictor: the frame-causal mask, its effect on outputs, and the released key layout."""

from __future__ import annotations

import pytest
import torch

from wmqlib.models.predictor import Attention, ViTPredictor, frame_causal_mask

P, FRAMES, DIM = 3, 4, 12


def test_mask_is_block_lower_triangular_by_frame() -> None:
    one, zero = [1, 1], [0, 0]
    expected = torch.tensor([one + zero + zero, one + zero + zero,
                             one + one + zero, one + one + zero,
                             one + one + one, one + one + one], dtype=torch.bool)
    assert torch.equal(frame_causal_mask(6, 2), expected)


def test_attention_dependencies_follow_frames() -> None:
    """Output tokens of frame i depend on every input token of frames <= i and on none of later frames."""
    torch.manual_seed(0)
    attention = Attention(DIM, heads=2, dim_head=4, num_patches=P)
    x = torch.randn(1, FRAMES * P, DIM, requires_grad=True)
    for frame in range(FRAMES):
        (grad,) = torch.autograd.grad(attention(x)[0, frame * P:(frame + 1) * P].sum(), x)
        touched = grad[0].abs().sum(-1).reshape(FRAMES, P) > 0
        assert touched[:frame + 1].all() and not touched[frame + 1:].any()


def test_output_unchanged_when_later_frames_change() -> None:
    torch.manual_seed(0)
    predictor = ViTPredictor(P, FRAMES, DIM, depth=2, heads=2, dim_head=4, mlp_dim=16).eval()
    x = torch.randn(2, FRAMES * P, DIM)
    for t in range(FRAMES - 1):
        changed = x.clone()
        changed[:, (t + 1) * P:] += torch.randn_like(changed[:, (t + 1) * P:])
        with torch.no_grad():
            a, b = predictor(x), predictor(changed)
        assert torch.equal(a[:, :(t + 1) * P], b[:, :(t + 1) * P])
        assert not torch.allclose(a[:, (t + 1) * P:], b[:, (t + 1) * P:])


def test_mask_cached_and_never_in_state_dict() -> None:
    attention = Attention(DIM, heads=2, dim_head=4, num_patches=P)
    assert attention.mask(P, torch.device("cpu")) is None  # one frame: full attention
    first = attention.mask(2 * P, torch.device("cpu"))
    assert attention.mask(2 * P, torch.device("cpu")) is first
    assert sorted(attention.state_dict()) == ["norm.bias", "norm.weight", "to_out.0.bias", "to_out.0.weight",
                                              "to_qkv.weight"]
    with pytest.raises(ValueError, match="not a whole number of 3-token frames"):
        attention.mask(4, torch.device("cpu"))


def test_state_dict_keys_match_released_layout() -> None:
    predictor = ViTPredictor(P, 2, DIM, depth=1, heads=2, dim_head=4, mlp_dim=16)
    layer = "transformer.layers.0."
    expected = {"pos_embedding": (1, 2 * P, DIM),
                layer + "0.norm.weight": (DIM,), layer + "0.norm.bias": (DIM,), layer + "0.to_qkv.weight": (24, DIM),
                layer + "0.to_out.0.weight": (DIM, 8), layer + "0.to_out.0.bias": (DIM,),
                layer + "1.net.0.weight": (DIM,), layer + "1.net.0.bias": (DIM,),
                layer + "1.net.1.weight": (16, DIM), layer + "1.net.1.bias": (16,),
                layer + "1.net.4.weight": (DIM, 16), layer + "1.net.4.bias": (DIM,),
                "transformer.norm.weight": (DIM,), "transformer.norm.bias": (DIM,)}
    assert {k: tuple(v.shape) for k, v in predictor.state_dict().items()} == expected


def test_window_longer_than_position_embedding_is_refused() -> None:
    predictor = ViTPredictor(P, 2, DIM, depth=1, heads=2, dim_head=4, mlp_dim=16)
    with pytest.raises(ValueError, match="exceed its window of 2 frames x 3 tokens"):
        predictor(torch.zeros(1, 3 * P, DIM))
