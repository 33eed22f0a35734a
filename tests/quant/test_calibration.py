"""Calibration capture: exact running statistics, a bounded seeded reservoir, save / load round trips."""

from __future__ import annotations

import pytest
import torch

from wmqlib.quant import Calibration, capture_calibration

from .conftest import toy_inputs

QKV = "encoder.blocks.0.attn.qkv"
UNIT = "encoder.blocks.0"


def qkv_input(model, x: torch.Tensor) -> torch.Tensor:
    """The input of encoder.blocks.0.attn.qkv, computed by hand: ``(B * N, C)``."""
    block = model.encoder.blocks[0]
    return block.norm1(model.encoder.patch_embed(x)).reshape(-1, block.norm1.normalized_shape[0])


def capture(model, batches, **kwargs) -> Calibration:
    with torch.no_grad(), capture_calibration(model, **kwargs) as calib:
        for x in batches:
            model(x)
    return calib


def test_running_statistics_are_exact(toy_model, calib_inputs):
    calib = capture(toy_model, calib_inputs.split(3), max_tokens=1000)
    rows = qkv_input(toy_model, calib_inputs).detach()
    torch.testing.assert_close(calib.absmean(QKV), rows.abs().mean(0))
    torch.testing.assert_close(calib.absmax(QKV), rows.abs().amax(0))
    lo, hi = calib.channel_range(QKV)
    assert torch.equal(lo, rows.amin(0)) and torch.equal(hi, rows.amax(0))
    assert calib.tokens_seen(QKV) == rows.shape[0] == 128
    # the reservoir is larger than the stream: it holds every row exactly once
    assert torch.equal(torch.sort(calib.rows(QKV), dim=0).values, torch.sort(rows, dim=0).values)


def test_reservoir_is_bounded_seeded_and_drawn_from_the_stream(toy_model, calib_inputs):
    a = capture(toy_model, calib_inputs.split(2), max_tokens=10, max_sequences=3, seed=5)
    b = capture(toy_model, calib_inputs.split(2), max_tokens=10, max_sequences=3, seed=5)
    c = capture(toy_model, calib_inputs.split(2), max_tokens=10, max_sequences=3, seed=6)
    assert a.rows(QKV).shape == (10, 32) and len(a.sequences(UNIT)) == 3
    assert torch.equal(a.rows(QKV), b.rows(QKV)) and not torch.equal(a.rows(QKV), c.rows(QKV))
    stream = qkv_input(toy_model, calib_inputs).detach()
    assert all(bool((stream == row).all(1).any()) for row in a.rows(QKV))
    inputs = toy_model.encoder.patch_embed(calib_inputs).detach()
    assert all(any(torch.equal(s, x) for x in inputs) for s in a.sequences(UNIT))
    assert len(a.units) == 6


def test_reservoir_sample_is_roughly_uniform_over_the_stream():
    calib = Calibration(max_tokens=200, max_sequences=0, seed=0)
    for start in range(0, 2000, 100):  # rows carry their position in the stream
        calib.observe_linear("lin", torch.arange(start, start + 100, dtype=torch.float32)[:, None])
    kept = calib.rows("lin")[:, 0]
    assert kept.unique().numel() == 200
    assert abs(kept.mean().item() - 999.5) < 100  # the first or last batches are not favoured


def test_hooks_are_removed_on_exit(toy_model, calib_inputs):
    capture(toy_model, [calib_inputs[:1]])
    assert all(not m._forward_pre_hooks for m in toy_model.modules())


def test_save_load_round_trip(toy_model, calib_inputs, tmp_path, stale_tmp):
    calib = capture(toy_model, calib_inputs.split(4), max_tokens=20, max_sequences=2, seed=3)
    leftover = stale_tmp(tmp_path / "calib.safetensors")  # a save killed mid-write
    loaded = Calibration.load(calib.save(tmp_path / "calib.safetensors"))
    assert not leftover.exists() and [p.name for p in tmp_path.iterdir()] == ["calib.safetensors"]
    assert loaded.linears == calib.linears and loaded.units == calib.units
    assert (loaded.max_tokens, loaded.max_sequences, loaded.seed) == (20, 2, 3)
    for name in calib.linears:
        for read in ("rows", "absmean", "absmax", "channel_range", "tokens_seen"):
            a, b = getattr(calib, read)(name), getattr(loaded, read)(name)
            assert a == b if isinstance(a, int) else all(torch.equal(x, y) for x, y in zip(a, b))
    for unit in calib.units:
        assert all(torch.equal(x, y) for x, y in zip(calib.sequences(unit), loaded.sequences(unit)))


def test_units_fed_one_tensor_save_and_load_apart(tmp_path):
    """An RSSM's two heads read the same state: their samples share storage, which safetensors refuses to save."""
    state = torch.randn(2, 5, 4)
    calib = Calibration(max_sequences=4, seed=0)
    calib.observe_unit("visual_head", state)
    calib.observe_unit("proprio_head", state)
    loaded = Calibration.load(calib.save(tmp_path / "c.safetensors"))
    for unit in ("visual_head", "proprio_head"):
        assert all(torch.equal(x, y) for x, y in zip(calib.sequences(unit), loaded.sequences(unit)))
        assert len(loaded.sequences(unit)) == 2


def test_a_loaded_calibration_continues_like_the_original(tmp_path):
    """The generator state is saved: observing more after load draws the same sample as without the break."""
    first, second = torch.randn(50, 3), torch.randn(50, 3)
    calib = Calibration(max_tokens=20, seed=1)
    calib.observe_linear("lin", first)
    loaded = Calibration.load(calib.save(tmp_path / "c.safetensors"))
    calib.observe_linear("lin", second)
    loaded.observe_linear("lin", second)
    assert torch.equal(calib.rows("lin"), loaded.rows("lin"))


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Calibration.load(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="is not a wmq calibration file"):
        Calibration.load(tmp_path / "other.safetensors")


def test_invalid_settings_and_inputs_raise():
    with pytest.raises(ValueError, match="max_tokens must be an int >= 1"):
        Calibration(max_tokens=0)
    with pytest.raises(ValueError, match="max_sequences must be an int >= 0"):
        Calibration(max_sequences=-1)
    calib = Calibration(max_sequences=0)
    calib.observe_linear("lin", torch.ones(3, 4))
    with pytest.raises(ValueError, match="has 5 channels, before 4"):
        calib.observe_linear("lin", torch.ones(3, 5))
    with pytest.raises(ValueError, match="no statistics for \\['other'\\]"):
        calib.rows("other")
    with pytest.raises(ValueError, match="max_sequences > 0"):
        calib.sequences("unit")


def test_different_inputs_give_different_statistics(toy_model):
    a = capture(toy_model, [toy_inputs(2, seed=10)])
    b = capture(toy_model, [toy_inputs(2, seed=11)])
    assert not torch.equal(a.absmean(QKV), b.absmean(QKV))
