"""Quantization points are declared per architecture (DINO-WM's two naming conventions, the RSSM) and found by
child names and types; scopes select them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wmqlib.quant import RTN, apply_params
from wmqlib.quant.points import find_points, matches, select

from .conftest import rssm_calibration, rssm_inputs, rssm_plan_latents
from .toy import DinoBlock, FeedForward


def test_both_conventions_are_found_with_roles_and_scale_pairs(toy_model):
    points = find_points(toy_model)
    assert [u.name for u in points.units] == [
        "encoder.blocks.0", "encoder.blocks.1",
        "predictor.transformer.layers.0.0", "predictor.transformer.layers.0.1",
        "predictor.transformer.layers.1.0", "predictor.transformer.layers.1.1",
    ]
    enc, attn, ff = points.units[0], points.units[2], points.units[3]
    assert enc.linears == {"qkv": "encoder.blocks.0.attn.qkv", "proj": "encoder.blocks.0.attn.proj",
                           "fc1": "encoder.blocks.0.mlp.fc1", "fc2": "encoder.blocks.0.mlp.fc2"}
    p = "predictor.transformer.layers.0"
    assert attn.linears == {"qkv": f"{p}.0.to_qkv", "proj": f"{p}.0.to_out.0"}
    assert ff.linears == {"fc1": f"{p}.1.net.1", "fc2": f"{p}.1.net.4"}
    assert {(q.prev, q.kind, q.linear) for q in enc.pairs} == {
        ("encoder.blocks.0.norm1", "norm", "encoder.blocks.0.attn.qkv"),
        ("encoder.blocks.0.attn.qkv", "v", "encoder.blocks.0.attn.proj"),
        ("encoder.blocks.0.norm2", "norm", "encoder.blocks.0.mlp.fc1"),
        ("encoder.blocks.0.mlp.act", "act", "encoder.blocks.0.mlp.fc2"),
    }
    assert {(q.prev, q.kind) for q in attn.pairs + ff.pairs} == {
        (f"{p}.0.norm", "norm"), (f"{p}.0.to_qkv", "v"), (f"{p}.1.net.0", "norm"), (f"{p}.1.net.2", "act")}
    assert len(points.linears) == 16 and points.role(f"{p}.1.net.4") == "fc2"
    # everything else (patch embedding, predictor embedding, final norms) stays floating point
    assert not any(n.endswith(("patch_embed", "embed", "norm")) for n in points.linears)


def test_a_bare_block_is_its_own_unit():
    points = find_points(DinoBlock(16, 2, 32))
    assert points.units[0].name == "" and points.linears == ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]
    assert find_points(FeedForward(8, 16)).linears == ["net.1", "net.4"]


def test_norm_without_affine_parameters_gives_no_norm_pair():
    block = DinoBlock(16, 2, 32)
    block.norm1 = nn.LayerNorm(16, elementwise_affine=False)
    kinds = {(p.kind, p.linear) for p in find_points(block).units[0].pairs}
    assert ("norm", "attn.qkv") not in kinds and ("norm", "mlp.fc1") in kinds


def test_model_without_blocks_raises():
    with pytest.raises(ValueError, match="no quantization points found"):
        find_points(nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2)))


def test_patterns_match_a_name_or_its_ancestors():
    name = "encoder.blocks.1.attn.qkv"
    assert matches(name, "all") and matches(name, "encoder") and matches(name, "encoder.blocks.1")
    assert matches(name, "*.attn.*") and matches(name, r"re:encoder\.blocks\.[13]")
    assert not matches(name, "predictor") and not matches(name, "encoder.blocks.0") and not matches(name, "re:blocks")


def test_select_by_scope(toy_model):
    names = find_points(toy_model).linears
    assert len(select(names, "encoder")) == 8 and len(select(names, "predictor")) == 8
    assert select(names, ["*.mlp.fc2", "re:.*layers\\.1\\.1\\.net\\.4"]) == [
        "encoder.blocks.0.mlp.fc2", "encoder.blocks.1.mlp.fc2", "predictor.transformer.layers.1.1.net.4"]


def test_empty_or_invalid_scope_raises(toy_model):
    names = find_points(toy_model).linears
    with pytest.raises(ValueError, match="scope='decoder' matches none of the 16 quantization points"):
        select(names, "decoder")
    with pytest.raises(TypeError, match="scope must be 'all', 'encoder', 'predictor'"):
        select(names, 3)
    with pytest.raises(TypeError, match="non-empty list of patterns"):
        select(names, [])
    with pytest.raises(ValueError, match="not a valid regular expression"):
        select(names, "re:(")


RSSM_MLPS = ("posterior", "transition", "prior", "visual_head", "proprio_head")


def test_the_rssm_declares_convolutions_linears_and_gru_matrices(tiny_rssm):
    points = find_points(tiny_rssm())
    expected = ["encoder.convs.0", "encoder.convs.1", "encoder.fc", "posterior.fc1", "posterior.fc2",
                "transition.fc1", "cell.ih", "cell.hh", "prior.fc1", "prior.fc2", "visual_head.fc1",
                "visual_head.fc2", "proprio_head.fc1", "proprio_head.fc2"]
    assert points.linears == expected
    assert [points.role(n) for n in expected[:3]] == ["conv", "conv", "embed"]
    assert points.role("cell.ih") == "ih" and points.role("cell.hh") == "hh"
    pairs = {(p.prev, p.kind, p.linear) for u in points.units for p in u.pairs}
    assert pairs == ({(f"{m}.norm", "norm", f"{m}.fc1") for m in RSSM_MLPS}
                     | {(f"{m}.act", "act", f"{m}.fc2") for m in RSSM_MLPS if m != "transition"}
                     | {("transition.act", "act", "cell.ih")})
    assert [u.name for u in points.units if u.trainable] == list(RSSM_MLPS)


def test_the_rssm_scopes_split_observation_side_from_imagination(tiny_rssm):
    points = find_points(tiny_rssm())
    encoder, predictor = points.select("encoder"), points.select("predictor")
    assert encoder == [n for n in points.linears if n.startswith(("encoder.", "posterior."))]
    assert predictor == [n for n in points.linears if n not in encoder]
    assert points.select(["encoder", "cell.hh"]) == [*encoder, "cell.hh"]
    with pytest.raises(ValueError, match="scope='decoder' matches none of the 14 quantization points"):
        points.select("decoder")


def test_an_unknown_architecture_is_refused():
    model = nn.Sequential(nn.Linear(4, 4))
    model.architecture = "mamba"
    with pytest.raises(ValueError, match=r"Sequential.architecture must be one of \['dinowm', 'rssm'\].*'mamba'"):
        find_points(model)


def test_rssm_calibration_records_patches_and_trainable_units(tiny_rssm):
    calib = rssm_calibration(tiny_rssm())
    # 3 channels x 4 x 4 kernel, then 4 x 4 x 4; 8 x 8 then 4 x 4 output positions per image, 3 images
    assert calib.rows("encoder.convs.0").shape == (128, 48) and calib.tokens_seen("encoder.convs.0") == 3 * 64
    assert calib.rows("encoder.convs.1").shape == (3 * 16, 64)
    assert calib.units == list(RSSM_MLPS)


def test_rssm_scale_pairs_fold_exactly(tiny_rssm):
    """Scales (and a LayerNorm shift) folded into every kind of RSSM pair, weights in floating point: the model
    computes what it computed."""
    model = tiny_rssm()
    g = torch.Generator().manual_seed(3)
    scale = lambda n: torch.rand(n, generator=g) * 3 + 0.2  # noqa: E731
    params = {"cell.ih.input_scale": scale(16), "prior.fc2.input_scale": scale(16),
              "posterior.fc1.input_scale": scale(8 + 12 + 3), "posterior.fc1.input_shift": torch.randn(23, generator=g)}
    folded, _ = apply_params(model, RTN(16), params)
    assert not torch.equal(folded.cell.ih.weight, model.cell.ih.weight)
    inputs = rssm_inputs(model)
    fp, again = rssm_plan_latents(model, inputs), rssm_plan_latents(folded, inputs)
    for key in fp:
        torch.testing.assert_close(again[key], fp[key], rtol=1e-5, atol=1e-5)
