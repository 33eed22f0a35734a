"""Quantization points are found by child names and types, in both naming conventions; scopes select them."""

from __future__ import annotations

import pytest
from torch import nn

from wmqlib.quant.points import find_points, matches, select

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
