"""wmqlib.experiment on a tiny world model trained in seconds (session fixture): settings, runs, caches, tables."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from wmqlib import experiment as ex
from wmqlib.models import CheckpointError, load_world_model, save_world_model
from wmqlib.plan import CEMConfig, GDConfig, MPCConfig
from wmqlib.quant import AWQ, RTN, OmniQuant, PerChannel, PerGroup, PerTensor, PerToken, SmoothQuant
from wmqlib.study import config_key
from wmqlib.train import PRESETS, train

SMALL = CEMConfig(samples=12, topk=3, opt_steps=2)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> str:
    """A tiny Wall world model trained end to end by wmqlib.train (a few seconds)."""
    out = tmp_path_factory.mktemp("tiny") / "tiny-wall"
    torch.set_num_threads(1)
    train(PRESETS["tiny"], out, progress=False, evaluate_fp=False)
    return str(out)


@pytest.fixture()
def calib_dir(tmp_path):
    return tmp_path / "calibration"


def setting(tiny: str, **kw) -> ex.Setting:
    base = dict(planner=SMALL, n_evals=3, n_calib=2, calib_planner=SMALL, device="cpu")
    return ex.Setting(tiny, **{**base, **kw})


# ----- group size, recipes, profiles -----

@pytest.mark.parametrize("width, group", [(384, 128), (1024, 128), (64, 32), (84, 32), (16, 8), (3, 1), (2, 1)])
def test_group_size_keeps_about_three_groups_per_row(width, group):
    g = ex.group_size_for(width)
    assert g == group
    assert g & (g - 1) == 0 and g <= max(1, width // 2)


@pytest.mark.parametrize("bad", [1, 0, -4, 64.0, True, "64"])
def test_group_size_rejects_bad_width(bad):
    with pytest.raises(ValueError, match="encoder_dim"):
        ex.group_size_for(bad)


def test_recipe_builds_each_method_from_names():
    assert ex.recipe("RTN", 4) == RTN(4, PerChannel())
    assert ex.recipe("AWQ", 3, "per-group", 32) == AWQ(3, PerGroup(32))
    sq = ex.recipe("SmoothQuant", 8, a_bits=8, a_granularity="per-tensor")
    assert sq == SmoothQuant(8, PerChannel(), a_bits=8, a_granularity=PerTensor())
    om = ex.recipe("OmniQuant", 4, a_bits=4, a_granularity="per-token", epochs=0)
    assert isinstance(om, OmniQuant) and om.epochs == 0 and om.a_granularity == PerToken()


@pytest.mark.parametrize("args, match", [
    (("GPTQ", 4), "method must be one of"),
    (("RTN", 4, "per-row"), "w_granularity must be"),
    (("RTN", 4, "per-group"), "needs group_size"),
    (("RTN", 4, "per-channel", None, 8, "per-channel"), "a_granularity must be"),
    (("RTN", 9), "w_bits"),
])
def test_recipe_rejects_bad_names(args, match):
    with pytest.raises(ValueError, match=match):
        ex.recipe(*args)


def test_make_profile_overrides_and_ignores_none():
    p = ex.make_profile("smoke", n_evals=None, samples=40)
    assert p.n_evals == ex.PROFILES["smoke"].n_evals and p.samples == 40
    full = ex.make_profile("full")
    assert (full.n_evals, full.samples, full.topk) == (50, 100, 10)
    assert full.steps("wall") == full.steps("pusht") == 10
    assert full.cem("pusht", trace=True).opt_steps == full.trace_steps
    with pytest.raises(ValueError, match="profile must be one of"):
        ex.make_profile("huge")
    with pytest.raises(ValueError, match="unknown profile fields"):
        ex.make_profile("full", episodes=3)
    with pytest.raises(ValueError, match="topk"):
        ex.make_profile("smoke", samples=3, topk=5)


def test_profile_setting_sizes_everything(tiny):
    p = ex.make_profile("smoke")
    s = p.setting(tiny, device="cpu", long=True, recipe=p.recipe("OmniQuant", 4))
    assert s.planner == CEMConfig(samples=p.samples, topk=p.topk, opt_steps=p.trace_steps) and s.trace
    assert s.calib_planner == CEMConfig(samples=p.samples, topk=p.topk, opt_steps=p.opt_steps)
    assert (s.n_evals, s.n_calib, s.recipe.epochs) == (p.n_evals, p.n_calib, p.omniquant_epochs)
    short = p.setting(tiny, device="cpu")
    assert short.trace and short.planner.opt_steps == p.steps("wall")  # open-loop CEM is always traced
    gd = p.setting(tiny, device="cpu", planner="GD", mpc=True)
    assert gd.planner == GDConfig(opt_steps=p.gd_steps) and gd.mpc == MPCConfig(max_rounds=p.mpc_rounds)
    assert not gd.trace
    with pytest.raises(ValueError, match="planner must be .CEM., .CEM-protocol. or .GD."):
        p.setting(tiny, planner="MPPI")
    with pytest.raises(ValueError, match="long=True applies to open-loop CEM"):
        p.setting(tiny, planner="GD", long=True)
    protocol = p.setting(tiny, device="cpu", planner="CEM-protocol")
    assert protocol.planner == CEMConfig(samples=300, topk=30, opt_steps=ex.PROTOCOL_OPT_STEPS["wall"])
    assert protocol.trace and protocol.calib_planner == short.calib_planner


def test_default_group_size_reads_the_encoder_width(tiny):
    assert ex.default_group_size(tiny) == ex.group_size_for(PRESETS["tiny"].model.encoder_dim) == 8


# ----- Setting -----

def test_setting_derives_env_fingerprint_and_device(tiny):
    s = ex.Setting(tiny)
    assert s.env == "wall" and len(s.model_sha) == 16
    assert s.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert s.calib_planner == s.planner  # a CEM planner calibrates with itself
    assert ex.Setting(tiny, planner=GDConfig()).calib_planner == CEMConfig(opt_steps=ex.PROTOCOL_OPT_STEPS["wall"])
    assert config_key(ex.Setting(tiny)) == config_key(ex.Setting(tiny))
    assert dataclasses.replace(s, n_evals=7).model_sha == s.model_sha


def test_fingerprint_follows_the_weights(tiny, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    assert ex.Setting(str(copy)).model_sha == ex.Setting(tiny).model_sha
    model = load_world_model(copy)
    with torch.no_grad():
        model.predictor.transformer.layers[0][1].net[1].weight.add_(1e-3)
    save_world_model(model, copy)
    assert ex.Setting(str(copy)).model_sha != ex.Setting(tiny).model_sha


@pytest.mark.parametrize("kw, error, match", [
    (dict(scope="decoder"), ValueError, "scope must be one of"),
    (dict(scope="encoder"), ValueError, "must be 'all' for the full-precision"),
    (dict(recipe="RTN"), TypeError, "recipe must be"),
    (dict(planner="CEM"), TypeError, "planner must be"),
    (dict(mpc=5), TypeError, "mpc must be"),
    (dict(n_evals=0), ValueError, "n_evals"),
    (dict(seed=1), ValueError, "seed"),
    (dict(trace=1), TypeError, "trace"),
    (dict(calib_planner=GDConfig()), TypeError, "calib_planner"),
    (dict(device="tpu"), ValueError, "device"),
])
def test_setting_rejects_bad_fields(tiny, kw, error, match):
    with pytest.raises(error, match=match):
        ex.Setting(tiny, **kw)


def test_setting_rejects_unknown_and_foreign_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        ex.Setting("no-such-model")
    (tmp_path / "hydra.yaml").write_text("env: {name: wall}\n")
    with pytest.raises(CheckpointError, match="convert"):
        ex.Setting(str(tmp_path))


# ----- running settings -----

def test_run_setting_fp_table_is_per_episode_and_deterministic(tiny, calib_dir):
    s = setting(tiny)
    a = ex.run_setting(s, calib_dir=calib_dir)
    b = ex.run_setting(s, calib_dir=calib_dir)
    assert len(a) == s.n_evals and list(a["episode"]) == [0, 1, 2]
    assert {"success", "state_dist", "plan_loss", "episode_seed", "effective_bits", "encoder_error"} <= set(a.columns)
    assert "seed" not in a.columns  # renamed: it would collide with the Setting's seed column in a sweep
    assert (a["effective_bits"] == 32).all() and (a["encoder_error"] == 0).all()
    volatile = ["seconds"]
    pd.testing.assert_frame_equal(a.drop(columns=volatile), b.drop(columns=volatile))
    assert not calib_dir.exists()  # FP needs no calibration


def test_traced_run_gives_every_shorter_budget(tiny, calib_dir):
    """The plan of iteration k of a traced run IS the final plan of a run with opt_steps = k + 1."""
    traced = ex.run_setting(setting(tiny, planner=dataclasses.replace(SMALL, opt_steps=3), trace=True), calib_dir)
    assert len(traced) == 3 * 3
    plain = ex.run_setting(setting(tiny, planner=SMALL), calib_dir)
    derived = ex.at_opt_steps(traced, 2)
    assert list(derived["opt_steps"].unique()) == [2]
    for col in ("success", "state_dist", "plan_loss"):
        np.testing.assert_allclose(derived[col].astype(float), plain[col].astype(float), rtol=1e-6)
    with pytest.raises(ValueError, match="exceeds the traced iterations"):
        ex.at_opt_steps(traced, 4)
    with pytest.raises(ValueError, match="traced table"):
        ex.at_opt_steps(plain, 1)


def test_quantized_run_reports_bits_and_encoder_damage(tiny, calib_dir):
    pred = ex.run_setting(setting(tiny, recipe=RTN(8), scope="predictor"), calib_dir)
    assert (pred["encoder_error"] == 0).all()  # the encoder was not touched
    bits = pred["effective_bits"].iloc[0]
    assert 8 < bits < 8 + 16 / 8  # 8 bits per weight plus one 16-bit scale per row of >= 8 inputs
    enc = ex.run_setting(setting(tiny, recipe=RTN(3), scope="encoder"), calib_dir)
    assert enc["encoder_error"].iloc[0] > 0
    assert not calib_dir.exists()  # weight-only RTN needs no calibration


def test_calibration_is_cached_on_disk_and_recomputed_on_request(tiny, calib_dir):
    s = setting(tiny, recipe=SmoothQuant(8, a_bits=8, a_granularity=PerTensor()))
    ex._CALIBRATIONS.clear()
    first = ex.calibration(s, calib_dir)
    files = list(calib_dir.glob("*.safetensors"))
    assert len(files) == 1 and not list(calib_dir.glob("*.tmp"))
    ex._CALIBRATIONS.clear()
    loaded = ex.calibration(s, calib_dir)  # from the file
    assert loaded is not first and loaded.linears == first.linears
    name = first.linears[0]
    torch.testing.assert_close(loaded.absmax(name), first.absmax(name))
    # another recipe with the same model, episodes and calibration planner shares the file
    ex.calibration(dataclasses.replace(s, recipe=AWQ(4, PerGroup(8))), calib_dir)
    assert list(calib_dir.glob("*.safetensors")) == files
    mtime = files[0].stat().st_mtime_ns
    ex._FRESH_CALIBRATIONS.discard(files[0].stem)
    again = ex.calibration(s, calib_dir, recompute=True)
    assert files[0].stat().st_mtime_ns != mtime
    torch.testing.assert_close(again.absmax(name), first.absmax(name))  # collection is deterministic
    assert ex.calibration(s, calib_dir, recompute=True) is again  # recomputed once per process


def test_run_study_adds_labels_and_reads_back_from_cache(tiny, tmp_path, monkeypatch):
    settings = [setting(tiny), setting(tiny, recipe=RTN(4, PerGroup(8)), scope="predictor"),
                setting(tiny, planner=GDConfig(opt_steps=2), mpc=MPCConfig(max_rounds=2))]
    table = ex.run_study(settings, "unit", cache_dir=tmp_path, progress=False)
    assert len(table) == 9
    labels = table.drop_duplicates("config_key")
    assert list(labels["label"]) == ["FP", "RTN W4A16 g8 [predictor]", "FP"]
    assert list(labels["planning"]) == ["CEM", "CEM", "MPC-GD"]
    assert list(labels["search"]) == ["CEM 12/3", "CEM 12/3", "MPC-GD"]
    assert list(labels["w_bits"]) == [32, 4, 32] and list(labels["a_bits"]) == [32, 16, 32]
    assert list(labels["weights"]) == ["-", "g8", "-"] and list(labels["w_kind"]) == ["-", "per-group", "-"]

    def boom(*args, **kwargs):
        raise AssertionError("a cached setting was run again")

    monkeypatch.setattr(ex, "run_setting", boom)
    cached = ex.run_study(settings, "unit", cache_dir=tmp_path, progress=False)
    pd.testing.assert_frame_equal(cached, table)


# ----- derived tables and verdicts -----

def test_success_table_and_curve():
    trace = pd.DataFrame({"m": ["a"] * 4 + ["b"] * 4, "episode": [0, 0, 1, 1] * 2, "iteration": [0, 1] * 4,
                          "success": [False, True, False, True, False, False, True, True],
                          "state_dist": [9.0, 1.0, 9.0, 3.0, 8.0, 8.0, 2.0, 2.0],
                          "plan_loss": [4.0, 2.0, 6.0, 1.0, 1.0, 1.0, 3.0, 3.0]})
    table = ex.success_table(ex.at_opt_steps(trace, 2), "m")
    assert list(table["successes"]) == [2, 1]
    assert list(table["mean_state_dist"]) == [2.0, 5.0]
    assert table["success"].iloc[0] == "2/2 100% [34, 100]"  # Wilson 95% for 2/2: [0.342, 1]
    curve = ex.success_curve(trace, "m")
    assert list(curve["opt_steps"]) == [1, 2, 1, 2]
    assert list(curve["success_rate"]) == [0.0, 1.0, 0.5, 0.5]
    assert list(curve["plan_loss"]) == [5.0, 1.5, 2.0, 2.0]


def test_per_episode_reads_each_traced_setting_at_its_budget():
    traced = pd.DataFrame({"config_key": ["w"] * 6 + ["p"] * 4, "env": ["wall"] * 6 + ["pusht"] * 4,
                           "episode": [0, 0, 0, 1, 1, 1, 0, 0, 1, 1], "iteration": [0, 1, 2] * 2 + [0, 1] * 2,
                           "success": [False, False, True, False, True, True, False, True, True, True],
                           "planner.opt_steps": [3] * 6 + [2] * 4})
    plain = pd.DataFrame({"config_key": ["g", "g"], "env": ["wall"] * 2, "episode": [0, 1],
                          "success": [True, False], "planner.opt_steps": [7, 7]})
    table = pd.concat([traced, plain], ignore_index=True)
    out = ex.per_episode(table, {"wall": 2, "pusht": 5})
    assert list(out["config_key"]) == ["w", "w", "p", "p", "g", "g"]
    assert list(out["opt_steps"]) == [2, 2, 2, 2, 7, 7]  # pusht's trace is shorter than 5: its last iteration
    assert list(out["success"]) == [False, True, True, True, True, False]
    last = ex.per_episode(table)
    assert list(last["opt_steps"]) == [3, 3, 2, 2, 7, 7] and list(last["success"][:2]) == [True, True]


def test_pick_finds_exactly_one_row():
    rates = pd.DataFrame({"env": ["wall", "wall", "pusht"], "bits": ["FP", "W4A16", "FP"], "x": [1, 2, 3]})
    assert ex.pick(rates, env="wall", bits="W4A16")["x"] == 2
    with pytest.raises(ValueError, match="found 2"):
        ex.pick(rates, env="wall")
    with pytest.raises(ValueError, match="found 0"):
        ex.pick(rates, env="wall", bits="W3A16")


def test_compare_similar_and_verdict():
    hi, lo, mid = {"ci_low": 0.7, "ci_high": 0.9}, {"ci_low": 0.1, "ci_high": 0.3}, {"ci_low": 0.2, "ci_high": 0.8}
    assert ex.compare(hi, lo) == 1 and ex.compare(lo, hi) == -1 and ex.compare(mid, hi) == 0
    a = {"success_rate": 0.80, "ci_low": 0.66, "ci_high": 0.89}
    close = {"success_rate": 0.74, "ci_low": 0.60, "ci_high": 0.84}
    apart = {"success_rate": 0.62, "ci_low": 0.48, "ci_high": 0.74}
    far = {"success_rate": 0.20, "ci_low": 0.11, "ci_high": 0.33}
    assert (ex.similar(a, close), ex.similar(a, apart), ex.similar(a, far)) == (1, 0, -1)
    assert ex.verdict([1, 0]) == "reproduced"
    assert ex.verdict([-1, 0, 0]) == "not reproduced"
    assert ex.verdict([1, -1]) == "inconclusive" and ex.verdict([0, 0]) == "inconclusive"
    assert ex.verdict([]) == "inconclusive"
    with pytest.raises(ValueError, match="decisions"):
        ex.verdict([2])


def test_rank_correlation_matches_hand_values():
    df = pd.DataFrame({"g": ["a"] * 4 + ["b"] * 4, "x": [1, 2, 3, 4, 1, 2, 3, 4],
                       "y": [10, 20, 30, 1000, 4, 3, 2, 1]})
    out = ex.rank_correlation(df, "x", "y", "g")
    assert list(out["n"]) == [4, 4]
    np.testing.assert_allclose(out["rho"], [1.0, -1.0])
    assert out["ci_low"].isna().all()  # no interval for a perfect correlation


def test_rank_correlation_interval_is_fisher_z():
    x = np.arange(20.0)
    y = x + np.where(x % 3 == 0, 6.0, 0.0)  # a monotone trend with ties broken by bumps
    out = ex.rank_correlation(pd.DataFrame({"g": "a", "x": x, "y": y}), "x", "y", "g").iloc[0]
    d = pd.Series(x).rank() - pd.Series(y).rank()  # no ties: the textbook formula holds
    rho = 1 - 6 * (d**2).sum() / (20 * (20**2 - 1))
    half = 1.96 * np.sqrt(1.06 / 17)
    assert out["rho"] == pytest.approx(rho) and 0 < rho < 1
    assert out["ci_low"] == pytest.approx(np.tanh(np.arctanh(rho) - half))
    assert out["ci_high"] == pytest.approx(np.tanh(np.arctanh(rho) + half))


def test_baselines_use_the_setting_episodes_and_budget(tiny):
    s = setting(tiny, mpc=MPCConfig(max_rounds=2))
    table = ex.baseline_table(s)
    assert len(table) == 3 * s.n_evals and set(table["baseline"]) == {"no_action", "straight_line", "random"}
    assert (table["steps"] == s.planner.horizon * 5 * 2).all()  # horizon * frameskip * MPC rounds
    assert list(table["seed"].unique()) == [e.seed for e in ex.episodes(s)]
    no_action = table[table["baseline"] == "no_action"]
    env = ex.make_setting_env(s)
    expected = [env.eval_state(e.goal_state, e.start_state)[1] for e in ex.episodes(s)]
    np.testing.assert_allclose(no_action["state_dist"], np.ravel(expected))


def test_imagine_returns_real_seen_and_imagined_frames(tiny, calib_dir):
    s = setting(tiny, recipe=RTN(4), scope="encoder")
    frames = ex.imagine(s, episode=1, calib_dir=calib_dir)
    size = ex.load_model(s).config.img_size
    horizon = s.planner.horizon + 1
    assert frames["real"].shape == (horizon, size, size, 3) and frames["real"].dtype == np.uint8
    for key in ("seen", "imagined"):
        assert frames[key].shape == (horizon, size, size, 3) and np.abs(frames[key]).max() <= 1
    start = ex.episodes(s)[1].start_state
    np.testing.assert_array_equal(frames["real"][0], ex.make_setting_env(s).observe(start[None], size)["visual"][0])
    assert frames["goal"].shape == (1, size, size, 3)


def test_configure_torch_checks_threads():
    before = torch.get_num_threads()
    ex.configure_torch(None)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        ex.configure_torch(0)
