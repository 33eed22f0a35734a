"""wmqlib.probe: the ridge state probe on latents whose answer is known, on a tiny trained world model and its
quantized copies, and the outlier statistics on hand-built activations and a real capture."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from wmqlib.envs import pusht, wall
from wmqlib.probe import (
    OUTLIER_COLUMNS, PENALTY_GRID, PROBE_COLUMNS, ProbeFrames, StateComponent, encode_frames, fit_probe, kurtosis,
    max_over_median, outlier_stats, probe_errors, probe_frames, probe_model, state_components, state_targets,
)
from wmqlib.quant import RTN, Calibration, PerChannel, capture_calibration, find_points, quantize
from wmqlib.recipes import PRESETS
from wmqlib.train import train


def _pusht_states(n_traj: int, per_traj: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random PushT-like states (N, 7) with every frame of a trajectory near its own centre, and trajectory ids."""
    rng = np.random.default_rng(seed)
    centre = np.column_stack([rng.uniform(50, 450, (n_traj, 4)), rng.uniform(0, 2 * np.pi, n_traj),
                              np.zeros((n_traj, 2))])
    states = np.repeat(centre, per_traj, axis=0)
    states[:, :4] += rng.normal(0, 10, (len(states), 4))
    states[:, 4] = (states[:, 4] + rng.normal(0, 0.3, len(states))) % (2 * np.pi)
    return states, np.repeat(np.arange(n_traj), per_traj)


# ----- what the probe predicts ----------------------------------------------------------------------------------

def test_components_read_the_env_tolerances():
    assert [c.name for c in state_components("wall")] == ["agent_x", "agent_y"]
    assert all(c.tolerance == wall.SUCCESS_RADIUS for c in state_components("wall"))
    comps = state_components("pusht")
    assert [c.name for c in comps] == ["agent_x", "agent_y", "block_x", "block_y", "block_angle"]
    assert [c.tolerance for c in comps[:4]] == [pusht.SUCCESS_POS] * 4
    assert comps[4].unit == "deg" and comps[4].tolerance == pytest.approx(math.degrees(pusht.SUCCESS_ANGLE))
    with pytest.raises(ValueError, match="env must be one of"):
        state_components("cartpole")
    with pytest.raises(ValueError, match="StateComponent.unit"):
        StateComponent("x", 0, "m", 1.0)


def test_targets_put_angles_on_the_circle():
    states = np.array([[1.0, 2.0, 3.0, 4.0, np.pi / 2, 0.0, 0.0]])
    np.testing.assert_allclose(state_targets(states, state_components("pusht")), [[1, 2, 3, 4, 1, 0]], atol=1e-12)


def test_errors_hand_derived():
    comps = state_components("pusht")
    truth = np.zeros((2, 7))
    truth[:, 0] = [0.0, 2.0]  # agent_x: spread 1
    truth[:, 4] = [0.1, 2 * np.pi - 0.1]
    guess = state_targets(truth, comps)
    guess[:, 0] += [3.0, -4.0]  # RMS error sqrt((9 + 16) / 2)
    guess[:, 4:6] = np.column_stack([np.sin([-0.1, 0.1]), np.cos([-0.1, 0.1])])  # each 0.2 rad off, across 0
    table = probe_errors(guess, truth, comps).set_index("component")
    assert list(table.reset_index().columns) == list(PROBE_COLUMNS)
    assert table.loc["agent_x", "error"] == pytest.approx(math.sqrt(12.5))
    assert table.loc["agent_x", "spread"] == pytest.approx(1.0)
    assert table.loc["agent_x", "error_over_tolerance"] == pytest.approx(math.sqrt(12.5) / pusht.SUCCESS_POS)
    assert table.loc["agent_y", "error"] == 0 and table.loc["agent_y", "spread"] == 0
    assert table.loc["block_angle", "error"] == pytest.approx(math.degrees(0.2))
    assert table.loc["block_angle", "spread"] == pytest.approx(math.degrees(0.1))  # circular mean is 0
    assert table.loc["block_angle", "error_over_tolerance"] == pytest.approx(0.2 / pusht.SUCCESS_ANGLE)
    assert (table["frames"] == 2).all()


# ----- ridge on synthetic latents -------------------------------------------------------------------------------

@pytest.mark.parametrize("features", [40, 900])  # primal (F <= N) and dual (F > N) solutions
def test_latents_linear_in_the_state_give_zero_error(features):
    comps = state_components("pusht")
    train_states, train_traj = _pusht_states(30, 20, seed=0)
    test_states, _ = _pusht_states(10, 20, seed=1)
    mix = np.random.default_rng(2).normal(size=(6, features))
    latents = lambda s: state_targets(s, comps) @ mix + 5.0  # noqa: E731
    probe = fit_probe(latents(train_states), train_states, train_traj, comps)
    table = probe.score(latents(test_states), test_states)
    assert probe.penalty == PENALTY_GRID[0]
    assert (table["error_over_tolerance"] < 1e-3).all(), table
    assert (table["spread_over_tolerance"] > 1).all()


def test_latents_independent_of_the_state_give_the_spread():
    comps = state_components("pusht")
    train_states, train_traj = _pusht_states(40, 25, seed=0)
    test_states, _ = _pusht_states(20, 25, seed=1)
    rng = np.random.default_rng(3)
    probe = fit_probe(rng.normal(size=(len(train_states), 64)), train_states, train_traj, comps)
    table = probe.score(rng.normal(size=(len(test_states), 64)), test_states)
    ratio = table["error"] / table["spread"]
    assert ((ratio > 0.97) & (ratio < 1.25)).all(), table


def test_fit_is_deterministic_and_validates_by_trajectory():
    comps = state_components("wall")
    states = np.random.default_rng(0).uniform(0, 64, (60, 2))
    traj = np.repeat(np.arange(6), 10)
    x = np.random.default_rng(1).normal(size=(60, 8)) + states[:, :1]
    a, b = fit_probe(x, states, traj, comps, seed=4), fit_probe(x, states, traj, comps, seed=4)
    assert a.penalty == b.penalty and torch.equal(a.weight, b.weight)
    assert a.weight.shape == (8, 2) and a.penalty in PENALTY_GRID
    with pytest.raises(ValueError, match="at least 2 trajectories"):
        fit_probe(x, states, np.zeros(60), comps)
    with pytest.raises(ValueError, match="same rows"):
        fit_probe(x[:10], states, traj, comps)
    with pytest.raises(ValueError, match="val_fraction"):
        fit_probe(x, states, traj, comps, val_fraction=0.0)
    with pytest.raises(ValueError, match="finite"):
        fit_probe(np.full((60, 8), np.nan), states, traj, comps)
    with pytest.raises(ValueError, match="fitted on 8"):
        a.predict(np.zeros((3, 5)))


# ----- a tiny trained world model -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Wall world model trained end to end by wmqlib.train (seconds), in eval mode."""
    root = tmp_path_factory.mktemp("probe")
    torch.set_num_threads(1)
    return train(PRESETS["tiny"], root / "tiny", progress=False, evaluate_fp=False, data_dir=root / "data").eval()


@pytest.fixture(scope="module")
def frames(tiny):
    size = tiny.config.img_size
    return probe_frames("wall", 6, 8, seed=0, img_size=size), probe_frames("wall", 4, 8, seed=1, img_size=size)


def test_frames_are_whole_trajectories_of_distinct_seeds(frames):
    train_frames, test_frames = frames
    assert len(train_frames) == 6 * 9 and len(test_frames) == 4 * 9
    assert train_frames.frames.shape[1:] == (32, 32, 3) and train_frames.frames.dtype == np.uint8
    np.testing.assert_array_equal(train_frames.trajectory, np.repeat(np.arange(6), 9))
    np.testing.assert_allclose(train_frames.proprio, train_frames.states.astype(np.float32))  # Wall proprio = state
    assert not np.isin(test_frames.states[::9], train_frames.states[::9]).all(axis=1).any()
    with pytest.raises(ValueError, match="ProbeFrames.states must have"):
        ProbeFrames("wall", train_frames.frames, train_frames.proprio, train_frames.states[:3], train_frames.trajectory)


def test_encode_frames_flattens_the_patch_tokens(tiny, frames):
    data = frames[1]
    latents = encode_frames(tiny, data, chunk=7)
    c = tiny.config
    assert latents.shape == (len(data), c.grid_size ** 2 * c.encoder_dim) and latents.dtype == torch.float32
    with torch.no_grad():
        visual, proprio = tiny.prepare_obs(torch.from_numpy(data.frames[:3, None]),
                                           torch.from_numpy(data.proprio[:3, None]))
        ref = tiny.encode_obs(visual, proprio)["visual"].reshape(3, -1)
    torch.testing.assert_close(latents[:3], ref)


def test_probe_model_on_fp_and_quantized_encoders(tiny, frames):
    train_frames, test_frames = frames
    fp = probe_model(tiny, train_frames, test_frames)
    assert list(fp.columns) == list(PROBE_COLUMNS) and list(fp["component"]) == ["agent_x", "agent_y"]
    assert np.isfinite(fp[["error", "spread"]].to_numpy()).all() and (fp["frames"] == len(test_frames)).all()
    np.testing.assert_allclose(fp["error_over_tolerance"], fp["error"] / wall.SUCCESS_RADIUS)
    pd.testing.assert_frame_equal(fp, probe_model(tiny, train_frames, test_frames))  # deterministic
    w8, _ = quantize(tiny, RTN(8, PerChannel()), None, scope="encoder")
    np.testing.assert_allclose(probe_model(w8, train_frames, test_frames)["error"], fp["error"], rtol=0.05)
    w2, _ = quantize(tiny, RTN(2, PerChannel()), None, scope="encoder")
    assert np.isfinite(probe_model(w2, train_frames, test_frames)["error"]).all()
    with pytest.raises(ValueError, match="different envs"):
        probe_model(tiny, train_frames, ProbeFrames("pusht", test_frames.frames, test_frames.proprio,
                                                    test_frames.states, test_frames.trajectory))


def test_probe_fitted_on_fp_scores_other_latents(tiny, frames):
    """Fit once on FP latents; score them and a quantized copy's latents of the same held-out frames."""
    train_frames, test_frames = frames
    probe = fit_probe(encode_frames(tiny, train_frames), train_frames.states, train_frames.trajectory,
                      state_components("wall"))
    fp = probe.score(encode_frames(tiny, test_frames), test_frames.states)
    pd.testing.assert_frame_equal(fp, probe_model(tiny, train_frames, test_frames))
    w8, _ = quantize(tiny, RTN(8, PerChannel()), None, scope="encoder")
    np.testing.assert_allclose(probe.score(encode_frames(w8, test_frames), test_frames.states)["error"],
                               fp["error"], rtol=0.05)


# ----- outliers -------------------------------------------------------------------------------------------------

def test_outlier_measures_hand_derived():
    assert max_over_median(torch.tensor([10.0, 1.0, 1.0, 1.0, 2.0])) == 10.0
    assert max_over_median(torch.tensor([3.0, 0.0, 0.0])) == math.inf
    x = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    assert kurtosis(x) == 1.0  # two-point distribution
    assert math.isnan(kurtosis(torch.ones(3, 2)))
    assert kurtosis(torch.randn(200_000, generator=torch.Generator().manual_seed(0))) == pytest.approx(3.0, abs=0.05)


def test_outlier_stats_on_one_outlier_channel(tiny):
    """Every linear sees +-1 activations with channel 0 at +-10 (C channels): max over median 10, and over all
    entries m2 = (100 + C - 1) / C, m4 = (10^4 + C - 1) / C, so kurtosis = C (10^4 + C - 1) / (100 + C - 1)^2."""
    points = find_points(tiny)
    calib = Calibration(max_tokens=64)
    modules = dict(tiny.named_modules())
    for name in points.linears:
        channels = modules[name].in_features
        signs = torch.tensor([1.0, -1.0] * 4)[:, None]  # 8 rows, every channel has mean 0
        x = signs * torch.ones(8, channels)
        x[:, 0] *= 10.0
        calib.observe_linear(name, x)
    table = outlier_stats(tiny, calib)
    assert list(table.columns) == list(OUTLIER_COLUMNS) and list(table["linear"]) == points.linears
    assert (table["max_over_median"] == 10.0).all() and (table["tokens"] == 8).all()
    c = table["channels"].to_numpy().astype(float)
    np.testing.assert_allclose(table["kurtosis"], c * (1e4 + c - 1) / (100 + c - 1) ** 2)
    assert set(table["part"]) == {"encoder", "predictor"}
    assert set(table["layer"]) == {"qkv", "proj", "fc1", "fc2"}
    assert (table["block"] == 0).all()  # the tiny recipe has one encoder block and one predictor layer


def test_outlier_stats_from_a_real_capture(tiny, frames):
    data = frames[1]
    with capture_calibration(tiny, max_tokens=256, max_sequences=0) as calib:
        visual, proprio = tiny.prepare_obs(torch.from_numpy(data.frames[:, None]),
                                           torch.from_numpy(data.proprio[:, None]))
        z = tiny.encode(visual, proprio, torch.zeros(len(data), 1, tiny.action_dim))
        with torch.no_grad():
            tiny.predict(z)
    table = outlier_stats(tiny, calib)
    assert len(table) == len(find_points(tiny).linears)
    assert (table["max_over_median"] >= 1).all() and (table["kurtosis"] >= 1).all()
    assert np.isfinite(table[["max_over_median", "kurtosis"]].to_numpy()).all()
    with pytest.raises(ValueError, match="none of the model's"):
        other = Calibration()
        other.observe_linear("elsewhere.fc", torch.ones(2, 3))
        outlier_stats(tiny, other)
