"""AWQ: scale search then clip search; better than RTN when a few input channels are salient."""

from __future__ import annotations

import pytest
import torch

from wmqlib.quant import AWQ, RTN, PerChannel, PerGroup, capture_calibration, quantize, quantwm_reference, search_params
from wmqlib.quant.spec import group_minmax

from .toy import DinoBlock


@pytest.fixture(scope="module")
def salient_block():
    """A DINOv2 block whose LayerNorms blow up 3 channels: their inputs to qkv and fc1 are large (salient)."""
    torch.manual_seed(0)
    block = DinoBlock(32, 4, 64).eval()
    with torch.no_grad():
        block.norm1.weight[:3] = 8.0
        block.norm2.weight[:3] = 8.0
    g = torch.Generator().manual_seed(0)
    calib_x, eval_x = torch.randn(8, 16, 32, generator=g), torch.randn(4, 16, 32, generator=g)
    with torch.no_grad(), capture_calibration(block) as calib:
        block(calib_x)
    return block, calib, eval_x


def block_mse(block, qblock, x) -> float:
    with torch.no_grad():
        return (qblock(x) - block(x)).pow(2).mean().item()


@pytest.mark.parametrize("bits", [3, 4])
def test_beats_rtn_on_salient_channels(salient_block, bits):
    block, calib, x = salient_block
    rtn, _ = quantize(block, RTN(bits, PerGroup(16), w_symmetric=False))  # the same asymmetric g16 format
    awq, _ = quantize(block, AWQ(bits, PerGroup(16)), calib)
    scale_only, _ = quantize(block, AWQ(bits, PerGroup(16), clip=False), calib)
    assert block_mse(block, awq, x) < 0.8 * block_mse(block, rtn, x)
    assert block_mse(block, scale_only, x) < block_mse(block, rtn, x)


def test_scales_protect_the_salient_channels(salient_block):
    block, calib, _ = salient_block
    params = search_params(block, AWQ(3, PerGroup(16), clip=False), calib)
    assert set(params) == {f"{n}.input_scale" for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    s = params["mlp.fc1.input_scale"]
    assert s[:3].min() > s[3:].max()  # salient inputs get the largest scales (their weights are kept finer)
    assert torch.allclose((s.max() * s.min()).sqrt(), torch.tensor(1.0), atol=1e-5)  # normalised


def test_clip_skips_query_and_key_rows(salient_block):
    block, calib, _ = salient_block
    params = search_params(block, AWQ(3, PerGroup(16)), calib)
    w = block.attn.qkv.weight.detach() * params["attn.qkv.input_scale"]
    w[64:] /= params["attn.proj.input_scale"][:, None]  # v rows carry the proj scale
    lo, hi = group_minmax(w, PerGroup(16))
    assert torch.allclose(params["attn.qkv.weight_lo"][:64], lo[:64]) and torch.allclose(
        params["attn.qkv.weight_hi"][:64], hi[:64])
    assert bool((params["attn.qkv.weight_hi"][64:] <= hi[64:] + 1e-6).all())
    assert bool((params["attn.qkv.weight_hi"][64:] < hi[64:] - 1e-6).any())  # some v rows were clipped


def test_reference_mode_searches_only_fc1(toy_model, calibration):
    params = search_params(toy_model, AWQ(4, PerGroup(16), scale_targets=("fc1",), clip=False), calibration)
    assert sorted(params) == sorted(f"{n}.input_scale" for n in (
        "encoder.blocks.0.mlp.fc1", "encoder.blocks.1.mlp.fc1",
        "predictor.transformer.layers.0.1.net.1", "predictor.transformer.layers.1.1.net.1"))


def test_quantwm_reference_scales_only_ln2_to_fc1_and_clips_query_key_rows(salient_block):
    block, calib, x = salient_block
    recipe = quantwm_reference("AWQ", 3)
    params = search_params(block, recipe, calib)
    scales = {k for k in params if k.endswith(".input_scale")}
    assert scales == {"mlp.fc1.input_scale"}  # LN1 -> qkv, v -> proj, GELU -> fc2 keep scale 1 (absent)
    assert {k for k in params if k.endswith(".weight_hi")} == {f"{n}.weight_hi" for n in (
        "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}  # every linear is clipped
    w = block.attn.qkv.weight.detach()  # no scale folded into qkv
    amax = w.abs().amax(dim=1)
    hi, lo = params["attn.qkv.weight_hi"].flatten(), params["attn.qkv.weight_lo"].flatten()
    assert bool((torch.maximum(hi, -lo)[:64] < amax[:64] - 1e-6).any())  # q / k rows clipped too (clip_qk)
    qblock, _ = quantize(block, recipe, calib)
    assert torch.equal(qblock.norm1.weight, block.norm1.weight) and torch.equal(qblock.norm1.bias, block.norm1.bias)
    torch.testing.assert_close(qblock.norm2.weight, block.norm2.weight / params["mlp.fc1.input_scale"])
    default = search_params(block, AWQ(3, PerChannel(), w_symmetric=True, w_full_range=True, scale_targets=("fc1",)),
                            calib)
    torch.testing.assert_close(default["attn.qkv.weight_hi"][:64], w.amax(dim=1, keepdim=True)[:64])  # skipped
    rtn, _ = quantize(block, quantwm_reference("RTN", 3))
    assert block_mse(block, qblock, x) < block_mse(block, rtn, x)  # on the same (full, symmetric) grid


def test_v_pair_needs_the_qkv_linear_in_the_same_recipe(toy_model, calibration):
    params = search_params(toy_model, AWQ(4, PerChannel(), clip=False), calibration, scope="*.proj")
    assert params == {}  # proj's v-scale would edit qkv, which this recipe does not own


def test_needs_calibration(toy_model):
    with pytest.raises(ValueError, match="AWQ needs calibration for its search"):
        quantize(toy_model, AWQ(4))
