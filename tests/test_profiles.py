"""wmqlib.profiles: group sizes, profiles, settings sized by a profile (no file read), the notebook setup."""

from __future__ import annotations

import dataclasses
import json

import pytest

from wmqlib import diagnostics
from wmqlib import profiles as pr
from wmqlib.envs import Wall, sample_episodes
from wmqlib.plan import CEMConfig, GDConfig, MPCConfig
from wmqlib.quant import RTN
from wmqlib.sweep import config_key, sweep
from wmqlib.recipes import PRESETS


@pytest.mark.parametrize("width, group", [(384, 128), (1024, 128), (64, 32), (84, 32), (16, 8), (3, 1), (2, 1)])
def test_group_size_keeps_about_three_groups_per_row(width, group):
    g = pr.group_size_for(width)
    assert g == group
    assert g & (g - 1) == 0 and g <= max(1, width // 2)


@pytest.mark.parametrize("bad", [1, 0, -4, 64.0, True, "64"])
def test_group_size_rejects_bad_width(bad):
    with pytest.raises(ValueError, match="encoder_dim"):
        pr.group_size_for(bad)


def test_make_profile_overrides_and_ignores_none():
    p = pr.make_profile("smoke", n_evals=None, samples=40)
    assert p.n_evals == pr.PROFILES["smoke"].n_evals and p.samples == 40
    full = pr.make_profile("full")
    assert (full.n_evals, full.samples, full.topk, full.key_evals, full.mpc_rounds) == (50, 100, 10, 150, 10)
    assert full.mpc_rounds == diagnostics.MPC_ROUNDS  # a model card's MPC is the study's
    assert full.steps("wall") == full.steps("pusht") == 10
    assert full.cem("pusht", trace=True).opt_steps == full.trace_steps
    with pytest.raises(ValueError, match="profile must be one of"):
        pr.make_profile("huge")
    with pytest.raises(ValueError, match="unknown profile fields"):
        pr.make_profile("full", episodes=3)
    with pytest.raises(ValueError, match="topk"):
        pr.make_profile("smoke", samples=3, topk=5)


def test_profile_setting_sizes_everything(tiny):
    p = pr.make_profile("smoke")
    s = p.setting(tiny, "wall", device="cpu", long=True, recipe=p.recipe("OmniQuant", 4))
    assert s.planner == CEMConfig(samples=p.samples, topk=p.topk, opt_steps=p.trace_steps) and s.trace
    assert s.calib_planner == CEMConfig(samples=p.samples, topk=p.topk, opt_steps=p.opt_steps)
    assert (s.n_evals, s.n_calib, s.recipe.epochs) == (p.n_evals, p.n_calib, p.method_options["OmniQuant"]["epochs"])
    short = p.setting(tiny, "wall", device="cpu")
    assert short.trace and short.planner.opt_steps == p.steps("wall")  # open-loop CEM is always traced
    gd = p.setting(tiny, "wall", device="cpu", planner="GD", mpc=True)
    assert gd.planner == GDConfig(opt_steps=p.gd_steps) and gd.mpc == MPCConfig(max_rounds=p.mpc_rounds)
    assert gd.trace  # MPC settings give one row per round
    assert not p.setting(tiny, "wall", device="cpu", planner="GD").trace  # open-loop GD is not traced
    with pytest.raises(ValueError, match=r"planner must be one of \['CEM', 'GD'\]"):  # the planner table's names
        p.setting(tiny, "wall", planner="MPPI")
    with pytest.raises(ValueError, match="long=True applies to open-loop CEM"):
        p.setting(tiny, "wall", planner="GD", long=True)
    with pytest.raises(ValueError, match="planner 'GD' has no protocol"):
        p.setting(tiny, "wall", planner="GD", protocol=True)
    protocol = p.setting(tiny, "wall", device="cpu", protocol=True)
    assert protocol.planner == CEMConfig(samples=300, topk=30, opt_steps=Wall.plan_opt_steps)
    assert protocol.trace and protocol.calib_planner == short.calib_planner


def test_default_group_size_reads_the_encoder_width(tiny):
    assert pr.default_group_size(tiny) == pr.group_size_for(PRESETS["tiny"].model.encoder_dim) == 8


def test_profile_setting_passes_the_mixed_precision_and_calibration_options(tiny):
    P = pr.PROFILES["smoke"]
    s = P.setting(tiny, "wall", recipe=RTN(4), overrides={"encoder": RTN(8)}, calib_rounds=5, calib_source="dataset")
    assert s.overrides == (("encoder", RTN(8)),) and (s.calib_rounds, s.calib_source) == (5, "dataset")
    plain = P.setting(tiny, "wall")
    assert (plain.overrides, plain.calib_rounds, plain.calib_source) == (None, 2, "planning")


def test_a_profile_builds_a_setting_without_reading_its_checkpoint(tmp_path):
    s = pr.PROFILES["smoke"].setting(str(tmp_path / "not-yet-there"), "pusht", device="cpu", protocol=True)
    assert s.planner.opt_steps == 30 and s.checkpoint.endswith("not-yet-there")  # sized by the env given


def test_setup_resolves_samplers_and_settings_carry_them(tiny, capsys):
    S = pr.setup("smoke", [tiny], device="cpu")
    assert S.samplers == {"wall": "random_state"} and "episodes: {'wall': 'random_state'}" in capsys.readouterr().out
    assert S.setting(tiny).sampler == "random_state"
    with pytest.raises(ValueError, match=r"samplers names envs \['pusht'\]"):
        pr.setup("smoke", [tiny], samplers={"pusht": "demo"})
    with pytest.raises(ValueError, match="sampler .*must be one of"):
        pr.setup("smoke", [tiny], samplers={"wall": "demo"})


def test_key_comparisons_run_more_distinct_episodes_with_the_first_planner_seed(tiny, capsys):
    p = pr.make_profile("smoke", key_evals=5, planner_seeds=(3, 4))
    assert [p.evals(key, k) for key in (False, True) for k in (3, 4)] == [3, 3, 5, 3]  # the others: their spread
    assert dataclasses.replace(p, key_evals=None).evals(True, 3) == 3  # None: n_evals
    assert pr.make_profile("smoke", n_evals=9).evals(True, 0) == 9  # never fewer than n_evals
    S = pr.setup("smoke", [tiny], device="cpu", key_evals=5)
    seeded = S.seeded(tiny, S.profile.planner_seeds, recipe=RTN(4))
    assert [(s.planner_seed, s.n_evals) for s in seeded] == [(0, 5), (1, 3)]
    assert seeded[0] == S.setting(tiny, recipe=RTN(4), key=True)
    assert [s.n_evals for s in S.seeded(tiny, S.profile.planner_seeds, key=False)] == [3, 3]
    first = sample_episodes("wall", 3, seed=S.seed)
    assert [e.seed for e in sample_episodes("wall", 5, seed=S.seed)[:3]] == [e.seed for e in first]  # shared prefix


def test_setup_gives_the_fp_references_the_seeds_and_the_footer(tiny, capsys):
    S = pr.setup("smoke", [tiny], device="cpu")
    assert S.fp_settings() == {"wall": S.setting(tiny, long=True, key=True)}
    assert S.fp_settings()["wall"].n_evals == S.profile.key_evals > S.profile.n_evals
    assert S.planner_seeds("wall", ["wall"]) == S.profile.planner_seeds
    assert S.planner_seeds("wall", []) == S.profile.planner_seeds[:1]
    assert S.footer("00_baseline", 7).startswith("00_baseline: ") and ", profile smoke, 7 settings, torch threads " \
        in S.footer("00_baseline", 7)


def test_a_kept_profiles_footer_records_the_notebooks_reads(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pr, "RESULTS_DIR", tmp_path)
    sweep([1, 2], lambda c: {"v": c}, "study-full", cache_dir=tmp_path, progress=False)
    sweep([3], lambda c: {"v": c}, "study-smoke", cache_dir=tmp_path, progress=False)
    pr.setup("full", [tiny], device="cpu").footer("01_x", 2)
    assert json.loads((tmp_path / "study-full" / "reads" / "01_x.json").read_text()) == \
        sorted(config_key(c) for c in (1, 2))
    assert not (tmp_path / "study-smoke" / "reads").exists()  # another profile's folder
    pr.setup("smoke", [tiny], device="cpu").footer("02_y", 2)  # smoke recomputes everything: nothing recorded
    assert not (tmp_path / "study-full" / "reads" / "02_y.json").exists()


def test_a_setup_narrowed_to_one_checkpoint_builds_its_settings(tiny, tiny_rssm_trained, capsys):
    S = pr.setup("smoke", [tiny, tiny_rssm_trained], device="cpu")
    one = S.only(tiny_rssm_trained)
    assert (one.checkpoints, one.envs, one.budget, one.results) == ((tiny_rssm_trained,), ("wall",), S.budget,
                                                                     S.results)
    assert one.fp_settings() == {"wall": S.setting(tiny_rssm_trained, long=True, key=True)}
    assert S.fp_settings()["wall"].checkpoint == tiny_rssm_trained  # two checkpoints of one env: the last wins
    with pytest.raises(ValueError, match=r"checkpoint must be one of \[.*\], got 'other'"):
        S.only("other")
    assert [pr.architecture_of(ck) for ck in S.checkpoints] == ["dinowm", "rssm"]
