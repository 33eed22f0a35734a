"""wmqlib.study on a tiny world model trained in seconds (session fixture): settings, runs, caches, tables."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from wmqlib import study as st
from wmqlib.caches import Caches
from wmqlib.envs import Wall
from wmqlib.plan import CEMConfig, GDConfig, MPCConfig, ObjectiveConfig
from wmqlib.quant import AWQ, RTN, PerGroup
from wmqlib.sweep import config_key
from wmqlib.train import PRESETS

SMALL = CEMConfig(samples=12, topk=3, opt_steps=2)


def setting(tiny: str, **kw) -> st.Setting:
    base = dict(planner=SMALL, n_evals=3, n_calib=2, calib_planner=SMALL, device="cpu")
    return st.Setting(tiny, **{**base, **kw})


# ----- group size, recipes, profiles -----

@pytest.mark.parametrize("width, group", [(384, 128), (1024, 128), (64, 32), (84, 32), (16, 8), (3, 1), (2, 1)])
def test_group_size_keeps_about_three_groups_per_row(width, group):
    g = st.group_size_for(width)
    assert g == group
    assert g & (g - 1) == 0 and g <= max(1, width // 2)


@pytest.mark.parametrize("bad", [1, 0, -4, 64.0, True, "64"])
def test_group_size_rejects_bad_width(bad):
    with pytest.raises(ValueError, match="encoder_dim"):
        st.group_size_for(bad)


def test_make_profile_overrides_and_ignores_none():
    p = st.make_profile("smoke", n_evals=None, samples=40)
    assert p.n_evals == st.PROFILES["smoke"].n_evals and p.samples == 40
    full = st.make_profile("full")
    assert (full.n_evals, full.samples, full.topk) == (50, 100, 10)
    assert full.steps("wall") == full.steps("pusht") == 10
    assert full.cem("pusht", trace=True).opt_steps == full.trace_steps
    with pytest.raises(ValueError, match="profile must be one of"):
        st.make_profile("huge")
    with pytest.raises(ValueError, match="unknown profile fields"):
        st.make_profile("full", episodes=3)
    with pytest.raises(ValueError, match="topk"):
        st.make_profile("smoke", samples=3, topk=5)


def test_profile_setting_sizes_everything(tiny):
    p = st.make_profile("smoke")
    s = p.setting(tiny, device="cpu", long=True, recipe=p.recipe("OmniQuant", 4))
    assert s.planner == CEMConfig(samples=p.samples, topk=p.topk, opt_steps=p.trace_steps) and s.trace
    assert s.calib_planner == CEMConfig(samples=p.samples, topk=p.topk, opt_steps=p.opt_steps)
    assert (s.n_evals, s.n_calib, s.recipe.epochs) == (p.n_evals, p.n_calib, p.method_options["OmniQuant"]["epochs"])
    short = p.setting(tiny, device="cpu")
    assert short.trace and short.planner.opt_steps == p.steps("wall")  # open-loop CEM is always traced
    gd = p.setting(tiny, device="cpu", planner="GD", mpc=True)
    assert gd.planner == GDConfig(opt_steps=p.gd_steps) and gd.mpc == MPCConfig(max_rounds=p.mpc_rounds)
    assert gd.trace  # MPC settings give one row per round
    assert not p.setting(tiny, device="cpu", planner="GD").trace  # open-loop GD is not traced
    with pytest.raises(ValueError, match=r"planner must be one of \['CEM', 'GD'\]"):  # the planner table's names
        p.setting(tiny, planner="MPPI")
    with pytest.raises(ValueError, match="long=True applies to open-loop CEM"):
        p.setting(tiny, planner="GD", long=True)
    with pytest.raises(ValueError, match="planner 'GD' has no protocol"):
        p.setting(tiny, planner="GD", protocol=True)
    protocol = p.setting(tiny, device="cpu", protocol=True)
    assert protocol.planner == CEMConfig(samples=300, topk=30, opt_steps=Wall.plan_opt_steps)
    assert protocol.trace and protocol.calib_planner == short.calib_planner


def test_default_group_size_reads_the_encoder_width(tiny):
    assert st.default_group_size(tiny) == st.group_size_for(PRESETS["tiny"].model.encoder_dim) == 8


# ----- Setting -----

@pytest.mark.parametrize("kw, error, match", [
    (dict(scope="decoder"), ValueError, "scope must be one of"),
    (dict(scope="encoder"), ValueError, "must be 'all' for the full-precision"),
    (dict(recipe="RTN"), TypeError, "recipe must be"),
    (dict(checkpoint=3), TypeError, "checkpoint must be"),
    (dict(planner="CEM"), TypeError, "planner must be"),
    (dict(mpc=5), TypeError, "mpc must be"),
    (dict(n_evals=0), ValueError, "n_evals"),
    (dict(seed=1), ValueError, "seed"),
    (dict(trace=1), TypeError, "trace"),
    (dict(calib_planner=GDConfig()), TypeError, "calib_planner"),
    (dict(device="tpu"), ValueError, "device"),
    (dict(calib_source="x"), ValueError, r"calib_source must be one of \['planning', 'dataset', 'random'\], got 'x'"),
    (dict(calib_rounds=0), ValueError, "calib_rounds must be an int >= 1, got 0"),
    (dict(calib_rounds=2.0), TypeError, "calib_rounds must be an int"),
    (dict(overrides={"encoder": RTN(8)}), ValueError, "overrides needs a recipe: recipe=None is the full-precision"),
    (dict(recipe=RTN(4), overrides={"encoder": "RTN"}), TypeError,
     r"overrides\['encoder'\] must be a wmqlib.quant recipe \(AWQ, .*RTN.*\), got str"),
    (dict(recipe=RTN(4), overrides={3: RTN(8)}), TypeError, "overrides pattern must be a module-name pattern"),
    (dict(recipe=RTN(4), overrides=RTN(8)), TypeError, "overrides must be a mapping from module-name pattern"),
    (dict(recipe=RTN(4), overrides=[("encoder", RTN(8), 1)]), TypeError, "not a pair"),
    (dict(recipe=RTN(4), overrides=[("encoder", RTN(8)), ("encoder", RTN(6))]), ValueError, "more than once"),
])
def test_setting_rejects_bad_fields(tiny, kw, error, match):
    with pytest.raises(error, match=match):
        st.Setting(**{"checkpoint": tiny, **kw})


def test_overrides_are_stored_as_ordered_pairs_and_keep_the_setting_hashable(tiny):
    pairs = (("encoder", RTN(8)), ("encoder.blocks.0", RTN(3)))
    from_dict = st.Setting(tiny, recipe=RTN(4), overrides=dict(pairs))
    from_list = st.Setting(tiny, recipe=RTN(4), overrides=[list(p) for p in pairs])
    assert from_dict.overrides == from_list.overrides == pairs
    assert hash(from_dict) == hash(from_list) and len({from_dict, from_list}) == 1
    assert st.Setting(tiny, recipe=RTN(4), overrides={}).overrides is None  # nothing overridden = the default
    assert dataclasses.replace(from_dict, n_evals=3).overrides == pairs  # re-validated from the stored form
    s = st.Setting(tiny, calib_rounds=5, calib_source="random")
    assert (s.calib_rounds, s.calib_source) == (5, "random")


def test_describe_shows_overrides_and_calibration(tiny):
    awq = setting(tiny, recipe=AWQ(4, PerGroup(8)))
    assert st.describe(awq)["calibration"] == "planning x2" and st.describe(awq)["n_overrides"] == 0
    assert st.describe(dataclasses.replace(awq, calib_source="random", calib_rounds=5))["calibration"] == "random x5"
    assert st.describe(dataclasses.replace(awq, calib_source="dataset"))["calibration"] == "dataset"
    mixed = setting(tiny, recipe=RTN(4, PerGroup(8)), scope="predictor",
                    overrides={"predictor.transformer.layers.0": RTN(8)})
    described = st.describe(mixed)
    assert described["label"] == "RTN W4A16 g8 +1 override [predictor]" and described["n_overrides"] == 1
    assert described["calibration"] == "-"  # nothing calibrated: RTN weights only
    two = dataclasses.replace(mixed, overrides=[("predictor.transformer.layers.0", RTN(8)),
                                                ("predictor.transformer.layers.1", AWQ(4, PerGroup(8)))])
    assert st.describe(two)["label"].endswith("+2 overrides [predictor]")
    assert st.describe(two)["calibration"] == "planning x2"  # an override needs it
    assert st.describe(setting(tiny))["calibration"] == "-" and st.describe(setting(tiny))["n_overrides"] == 0


def test_profile_setting_passes_the_mixed_precision_and_calibration_options(tiny):
    P = st.PROFILES["smoke"]
    s = P.setting(tiny, recipe=RTN(4), overrides={"encoder": RTN(8)}, calib_rounds=5, calib_source="dataset")
    assert s.overrides == (("encoder", RTN(8)),) and (s.calib_rounds, s.calib_source) == (5, "dataset")
    plain = P.setting(tiny)
    assert (plain.overrides, plain.calib_rounds, plain.calib_source) == (None, 2, "planning")


# ----- running settings -----

def test_run_setting_fp_table_is_per_episode_and_deterministic(tiny, caches, calib_dir):
    s = setting(tiny)
    a = st.run_setting(s, caches)
    b = st.run_setting(s, caches)
    assert len(a) == s.n_evals and list(a["episode"]) == [0, 1, 2]
    assert {"success", "state_dist", "plan_loss", "episode_seed", "effective_bits", "encoder_error"} <= set(a.columns)
    assert "seed" not in a.columns  # renamed: it would collide with the Setting's seed column in a sweep
    assert (a["effective_bits"] == 32).all() and (a["encoder_error"] == 0).all()
    volatile = ["seconds"]
    pd.testing.assert_frame_equal(a.drop(columns=volatile), b.drop(columns=volatile))
    assert not calib_dir.exists()  # FP needs no calibration


def test_traced_run_gives_every_shorter_budget(tiny, caches):
    """The plan of iteration k of a traced run IS the final plan of a run with opt_steps = k + 1."""
    traced = st.run_setting(setting(tiny, planner=dataclasses.replace(SMALL, opt_steps=3), trace=True), caches)
    assert len(traced) == 3 * 3
    plain = st.run_setting(setting(tiny, planner=SMALL), caches)
    derived = st.at_opt_steps(traced, 2)
    assert list(derived["opt_steps"].unique()) == [2]
    for col in ("success", "state_dist", "plan_loss"):
        np.testing.assert_allclose(derived[col].astype(float), plain[col].astype(float), rtol=1e-6)
    with pytest.raises(ValueError, match="exceeds the traced iterations"):
        st.at_opt_steps(traced, 4)
    with pytest.raises(ValueError, match="traced table"):
        st.at_opt_steps(plain, 1)


def test_quantized_run_reports_bits_and_encoder_damage(tiny, caches, calib_dir):
    pred = st.run_setting(setting(tiny, recipe=RTN(8), scope="predictor"), caches)
    assert (pred["encoder_error"] == 0).all()  # the encoder was not touched
    bits = pred["effective_bits"].iloc[0]
    assert 8 < bits < 8 + 16 / 8  # 8 bits per weight plus one 16-bit scale per row of >= 8 inputs
    enc = st.run_setting(setting(tiny, recipe=RTN(3), scope="encoder"), caches)
    assert enc["encoder_error"].iloc[0] > 0
    assert not calib_dir.exists()  # weight-only RTN needs no calibration


def test_run_study_adds_labels_and_reads_back_from_cache(tiny, tmp_path, monkeypatch):
    settings = [setting(tiny), setting(tiny, recipe=RTN(4, PerGroup(8)), scope="predictor"),
                setting(tiny, planner=GDConfig(opt_steps=2), mpc=MPCConfig(max_rounds=2))]
    caches = Caches(tmp_path / "calibration")
    table = st.run_study(settings, "unit", cache_dir=tmp_path, progress=False, caches=caches)
    assert len(table) == 9
    labels = table.drop_duplicates("config_key")
    assert list(labels["label"]) == ["FP", "RTN W4A16 g8 [predictor]", "FP"]
    assert list(labels["planning"]) == ["CEM", "CEM", "MPC-GD"]
    assert list(labels["search"]) == ["CEM 12/3", "CEM 12/3", "MPC-GD"]
    assert list(labels["w_bits"]) == [32, 4, 32] and list(labels["a_bits"]) == [32, 16, 32]
    assert list(labels["weights"]) == ["-", "g8", "-"] and list(labels["w_kind"]) == ["-", "per-group", "-"]
    assert (table["planner_seed"] == 0).all()  # filled in: seed 0 is not part of the keys

    def boom(*args, **kwargs):
        raise AssertionError("a cached setting was run again")

    monkeypatch.setattr(st, "run_setting", boom)
    cached = st.run_study(settings, "unit", cache_dir=tmp_path, progress=False, caches=caches)
    pd.testing.assert_frame_equal(cached, table)


def test_baseline_outcomes_are_series_by_episode_seed(tiny, caches):
    s = setting(tiny)
    out = st.baseline_outcomes(s, caches)
    assert sorted(out) == ["no_action", "random", "straight_line"]
    for series in out.values():
        assert series.index.name == "episode_seed" and list(series.index) == [e.seed for e in caches.episodes(s)]
        assert series.dtype == bool


def test_baselines_use_the_setting_episodes_and_budget(tiny, caches):
    s = setting(tiny, mpc=MPCConfig(max_rounds=2))
    table = st.baseline_table(s, caches=caches)
    assert len(table) == 3 * s.n_evals and set(table["baseline"]) == {"no_action", "straight_line", "random"}
    assert (table["steps"] == s.planner.horizon * 5 * 2).all()  # horizon * frameskip * MPC rounds
    assert list(table["seed"].unique()) == [e.seed for e in caches.episodes(s)]
    no_action = table[table["baseline"] == "no_action"]
    env = caches.env(s)
    expected = [env.eval_state(e.goal_state, e.start_state)[1] for e in caches.episodes(s)]
    np.testing.assert_allclose(no_action["state_dist"], np.ravel(expected))


def test_imagine_returns_real_seen_and_imagined_frames(tiny, caches):
    s = setting(tiny, recipe=RTN(4), scope="encoder")
    frames = st.imagine(s, episode=1, caches=caches)
    size = caches.model(s).config.img_size
    horizon = s.planner.horizon + 1
    assert frames["real"].shape == (horizon, size, size, 3) and frames["real"].dtype == np.uint8
    for key in ("seen", "imagined"):
        assert frames[key].shape == (horizon, size, size, 3) and np.abs(frames[key]).max() <= 1
    start = caches.episodes(s)[1].start_state
    np.testing.assert_array_equal(frames["real"][0], caches.env(s).observe(start[None], size)["visual"][0])
    assert frames["goal"].shape == (1, size, size, 3)




def test_planner_seed_and_objective_change_the_plans_not_the_old_keys(tiny, caches):
    base = setting(tiny)
    identity = caches.identity(base)
    assert "planner_seed" not in identity and "objective" not in identity  # keys of results from before the fields
    seeded = dataclasses.replace(base, planner_seed=1)
    visual = dataclasses.replace(base, objective=ObjectiveConfig(alpha=0.0))
    keys = {config_key(caches.identity(s)) for s in (base, seeded, visual)}
    assert len(keys) == 3
    a, b = st.run_setting(base, caches), st.run_setting(seeded, caches)
    assert not np.array_equal(a["plan_loss"], b["plan_loss"])  # other draws on the same episodes
    assert list(a["episode_seed"]) == list(b["episode_seed"])
    assert st.describe(visual)["latents"] == "visual" and st.describe(base)["latents"] == "visual+proprio"
    assert st.describe(dataclasses.replace(base, objective=ObjectiveConfig(visual_weight=0.0)))["latents"] == "proprio"
    with pytest.raises(ValueError, match="planner_seed"):
        dataclasses.replace(base, planner_seed=-1)
    with pytest.raises(TypeError, match="objective must be"):
        dataclasses.replace(base, objective="visual")


def test_per_episode_reads_each_traced_setting_at_its_budget():
    traced = pd.DataFrame({"config_key": ["w"] * 6 + ["p"] * 4, "env": ["wall"] * 6 + ["pusht"] * 4,
                           "episode": [0, 0, 0, 1, 1, 1, 0, 0, 1, 1], "iteration": [0, 1, 2] * 2 + [0, 1] * 2,
                           "success": [False, False, True, False, True, True, False, True, True, True],
                           "planner.opt_steps": [3] * 6 + [2] * 4})
    plain = pd.DataFrame({"config_key": ["g", "g"], "env": ["wall"] * 2, "episode": [0, 1],
                          "success": [True, False], "planner.opt_steps": [7, 7]})
    table = pd.concat([traced, plain], ignore_index=True)
    out = st.per_episode(table, {"wall": 2, "pusht": 5})
    assert list(out["config_key"]) == ["w", "w", "p", "p", "g", "g"]
    assert list(out["opt_steps"]) == [2, 2, 2, 2, 7, 7]  # pusht's trace is shorter than 5: its last iteration
    assert list(out["success"]) == [False, True, True, True, True, False]
    last = st.per_episode(table)
    assert list(last["opt_steps"]) == [3, 3, 2, 2, 7, 7] and list(last["success"][:2]) == [True, True]


def test_setup_resolves_samplers_and_settings_carry_them(tiny, capsys):
    S = st.setup("smoke", [tiny], device="cpu")
    assert S.samplers == {"wall": "random_state"} and "episodes: {'wall': 'random_state'}" in capsys.readouterr().out
    assert S.setting(tiny).sampler == "random_state"
    with pytest.raises(ValueError, match=r"samplers names envs \['pusht'\]"):
        st.setup("smoke", [tiny], samplers={"pusht": "demo"})
    with pytest.raises(ValueError, match="sampler .*must be one of"):
        st.setup("smoke", [tiny], samplers={"wall": "demo"})


def test_sampler_is_keyed_unless_it_is_the_unkeyed_one(tiny, caches):
    base = setting(tiny)
    assert "sampler" not in caches.identity(base)  # Wall's only sampler: results from before keep their keys
    assert config_key(caches.identity(dataclasses.replace(base, sampler="random_state"))) == \
        config_key(caches.identity(base))
    with pytest.raises(ValueError, match="sampler .*must be one of"):
        caches.identity(dataclasses.replace(base, sampler="demo"))
