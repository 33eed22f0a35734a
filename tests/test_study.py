"""wmqlib.study on a tiny world model trained in seconds (session fixture): what a run plans with (models,
calibrations, quantized copies, episodes from the caches), runs, tables, baselines."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from wmqlib import stats
from wmqlib import study as st
from wmqlib.caches import Caches
from wmqlib.plan import CEMConfig, GDConfig, MPCConfig, ObjectiveConfig
from wmqlib.quant import AWQ, RTN, PerGroup, PerTensor, SmoothQuant, find_points
from wmqlib.sweep import SweepError

SMALL = CEMConfig(samples=12, topk=3, opt_steps=2)


def setting(tiny: str, **kw) -> st.Setting:
    base = dict(planner=SMALL, n_evals=3, n_calib=2, calib_planner=SMALL, device="cpu")
    return st.Setting(tiny, **{**base, **kw})


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


# ----- what a run plans with: models, calibrations, quantized copies -----

def test_the_calibration_is_cached_on_disk_and_recomputed_on_request(tiny, calib_dir):
    s = setting(tiny, recipe=SmoothQuant(8, a_bits=8, a_granularity=PerTensor()))
    first = st.prepare(s, Caches(calib_dir)).calibration
    files = list(calib_dir.glob("*.safetensors"))
    assert len(files) == 1 and not list(calib_dir.glob("*.tmp"))
    caches = Caches(calib_dir)
    loaded = st.prepare(s, caches).calibration  # from the file
    assert loaded is not first and loaded.linears == first.linears
    name = first.linears[0]
    torch.testing.assert_close(loaded.absmax(name), first.absmax(name))
    # another recipe with the same model, episodes and calibration planner shares the file
    st.prepare(dataclasses.replace(s, recipe=AWQ(4, PerGroup(8))), caches)
    assert list(calib_dir.glob("*.safetensors")) == files
    mtime = files[0].stat().st_mtime_ns
    again = st.prepare(s, caches, recompute_calibration=True).calibration
    assert files[0].stat().st_mtime_ns != mtime
    torch.testing.assert_close(again.absmax(name), first.absmax(name))  # collection is deterministic
    assert st.prepare(s, caches, recompute_calibration=True).calibration is again  # recomputed once per process


def test_a_setting_with_overrides_quantizes_those_layers_with_their_recipe(tiny, caches):
    s = setting(tiny, recipe=RTN(4, PerGroup(8)), overrides=[("encoder", RTN(8)), ("encoder.blocks.0.mlp", RTN(3))])
    p = st.prepare(s, caches)
    model, report = p.model, p.report
    bits = dict(zip(report.table["module"], report.table["w_bits"]))
    names = list(bits)
    assert all(bits[n] == 4 for n in names if n.startswith("predictor."))
    encoder = [n for n in names if n.startswith("encoder.")]
    assert all(bits[n] == (3 if n.startswith("encoder.blocks.0.mlp.") else 8) for n in encoder)
    assert any(n.startswith("encoder.blocks.0.mlp.") for n in names)  # the later pattern won where both match
    plain = st.prepare(dataclasses.replace(s, overrides=None), caches)
    assert plain.model is not model and set(plain.report.table["w_bits"]) == {4}
    assert st.prepare(s, caches).model is model  # the in-memory copy is keyed by its overrides
    # an override pattern outside the scope matches nothing: quantize's message names it
    with pytest.raises(ValueError, match=r"overrides key \(within the scope\)='encoder' matches none"):
        st.prepare(dataclasses.replace(s, scope="predictor", overrides={"encoder": RTN(8)}), caches)
    with pytest.raises(ValueError, match="overrides key .*'decoder.*' matches none"):
        st.prepare(dataclasses.replace(s, overrides={"decoder.*": RTN(8)}), caches)


def test_an_override_that_needs_calibration_calibrates(tiny, caches, calib_dir):
    s = setting(tiny, recipe=RTN(4), n_calib=1, overrides={"predictor": AWQ(4, PerGroup(8))})
    report = st.prepare(s, caches).report
    assert set(report.table.loc[report.table["module"].str.startswith("predictor."), "method"]) == {"AWQ"}
    assert len(list(calib_dir.glob("*.safetensors"))) == 1


def encoder_and_predictor_qkv(calib) -> tuple[str, str]:
    enc = next(n for n in calib.linears if n.startswith("encoder.") and n.endswith("attn.qkv"))
    pred = next(n for n in calib.linears if n.startswith("predictor.") and n.endswith("to_qkv"))
    return enc, pred


def test_each_calibration_source_covers_every_linear_with_the_tokens_it_should(tiny, caches):
    base = setting(tiny, recipe=AWQ(4, PerGroup(8)), n_calib=2)
    model = st.prepare(base, caches).fp
    c = model.config
    enc_tokens, pred_tokens = c.num_patches + 1, c.num_patches  # the encoder adds its CLS token
    calibs = {src: st.prepare(dataclasses.replace(base, calib_source=src), caches).calibration
              for src in ("planning", "random", "dataset")}
    for src, calib in calibs.items():
        assert calib.linears == find_points(model).linears, src
    enc, pred = encoder_and_predictor_qkv(calibs["planning"])
    # random: goals + starts of both rounds + final states through the encoder; samples * opt_steps sequences of
    # horizon steps per episode and round through the predictor (num_hist 1: one frame of tokens per step)
    frames = 2 * (1 + 2 + 1)
    assert calibs["random"].tokens_seen(enc) == frames * enc_tokens
    assert calibs["random"].tokens_seen(pred) == 2 * 2 * SMALL.samples * SMALL.opt_steps * SMALL.horizon * pred_tokens
    # planning sees as many encoder frames and about as many predictor sequences
    assert calibs["planning"].tokens_seen(enc) == frames * enc_tokens
    assert 0.5 < calibs["planning"].tokens_seen(pred) / calibs["random"].tokens_seen(pred) < 2
    # dataset: every frame of 2 training trajectories once; every teacher-forcing window's input frame
    data = caches.samples[caches.resolved(base).model_sha, 2, base.seed]  # regenerated for the dataset source
    assert len(data) == 2 and data.img_size == c.img_size
    windows = data.traj_len - (c.num_hist + 1) * c.frameskip + 1
    assert calibs["dataset"].tokens_seen(enc) == 2 * (data.traj_len + 1) * enc_tokens
    assert calibs["dataset"].tokens_seen(pred) == 2 * windows * c.num_hist * pred_tokens
    for src in ("random", "dataset"):
        for name in (enc, pred):
            assert not torch.allclose(calibs[src].absmean(name), calibs["planning"].absmean(name)), (src, name)


def test_calibration_rounds_record_more_planning(tiny, caches):
    base = setting(tiny, recipe=AWQ(4, PerGroup(8)), n_calib=1, calib_rounds=1)
    one, three = (st.prepare(s, caches).calibration for s in (base, dataclasses.replace(base, calib_rounds=3)))
    enc, pred = encoder_and_predictor_qkv(one)
    assert three.tokens_seen(enc) > one.tokens_seen(enc) and three.tokens_seen(pred) > one.tokens_seen(pred)


def test_prepare_asks_for_a_calibration_or_the_calib_episodes(tiny, caches, calib_dir):
    fp = setting(tiny)
    assert st.prepare(fp, caches).calibration is None and not calib_dir.exists()  # FP needs none
    asked = st.prepare(fp, caches, calibrate=True)
    assert asked.calibration is not None and len(list(calib_dir.glob("*.safetensors"))) == 1
    calib = st.prepare(fp, caches, split="calib")
    assert len(calib.episodes) == fp.n_calib and {e.split for e in calib.episodes} == {"calib"}


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
    seeds = [e.seed for e in st.prepare(s, caches).episodes]
    for series in out.values():
        assert series.index.name == "episode_seed" and list(series.index) == seeds
        assert series.dtype == bool


def test_baseline_rates_are_the_success_table_of_each_settings_baselines(tiny, caches):
    settings = [setting(tiny), setting(tiny, seed=3)]
    rates = st.baseline_rates(settings, caches)
    tables = pd.concat([st.baseline_table(s, caches=caches) for s in settings])
    pd.testing.assert_frame_equal(rates, stats.success_table(tables, ["env", "baseline"]))


def test_baselines_use_the_setting_episodes_and_budget(tiny, caches):
    s = setting(tiny, mpc=MPCConfig(max_rounds=2))
    table = st.baseline_table(s, caches=caches)
    assert len(table) == 3 * s.n_evals and set(table["baseline"]) == {"no_action", "straight_line", "random"}
    assert (table["steps"] == s.planner.horizon * 5 * 2).all()  # horizon * frameskip * MPC rounds
    p = st.prepare(s, caches)
    assert list(table["seed"].unique()) == [e.seed for e in p.episodes]
    no_action = table[table["baseline"] == "no_action"]
    expected = [p.env.eval_state(e.goal_state, e.start_state)[1] for e in p.episodes]
    np.testing.assert_allclose(no_action["state_dist"], np.ravel(expected))


def test_imagine_returns_real_seen_and_imagined_frames(tiny, caches):
    s = setting(tiny, recipe=RTN(4), scope="encoder")
    frames = st.imagine(s, episode=1, caches=caches)
    p = st.prepare(s, caches)
    size = p.fp.config.img_size
    horizon = s.planner.horizon + 1
    assert frames["real"].shape == (horizon, size, size, 3) and frames["real"].dtype == np.uint8
    for key in ("seen", "imagined"):
        assert frames[key].shape == (horizon, size, size, 3) and np.abs(frames[key]).max() <= 1
    start = p.episodes[1].start_state
    np.testing.assert_array_equal(frames["real"][0], p.env.observe(start[None], size)["visual"][0])
    assert frames["goal"].shape == (1, size, size, 3)




def test_planner_seed_and_objective_change_the_plans(tiny, caches):
    base = setting(tiny)
    seeded = dataclasses.replace(base, planner_seed=1)
    visual = dataclasses.replace(base, objective=ObjectiveConfig(alpha=0.0))
    assert len({st.result_key(s, caches) for s in (base, seeded, visual)}) == 3
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


def test_baselines_are_cached_like_any_setting(tiny, caches, tmp_path, monkeypatch):
    s = setting(tiny, mpc=MPCConfig(max_rounds=2))
    live = st.baseline_table(s, caches=caches)
    cached = st.baseline_table(s, caches=caches, results="unit", cache_dir=tmp_path)
    files = list((tmp_path / "unit").glob("*.json"))
    assert len(files) == 1 and set(cached["config_key"]) == {files[0].stem}
    pd.testing.assert_frame_equal(cached.drop(columns="config_key"), live)

    def boom(*args, **kwargs):
        raise AssertionError("cached baselines were computed again")

    monkeypatch.setattr(st.ev, "baselines", boom)
    again = st.baseline_table(s, caches=caches, results="unit", cache_dir=tmp_path)
    pd.testing.assert_frame_equal(again, cached)
    with pytest.raises(SweepError, match="computed again"):  # a recomputing profile (the goldens') never reads it
        st.baseline_table(s, caches=caches, results="unit", cache_dir=tmp_path, recompute=True)


def test_alignment_is_cached_per_setting_and_pairs_episodes(tiny, caches, tmp_path, monkeypatch):
    fp, low = setting(tiny), setting(tiny, recipe=RTN(3))
    table = st.alignment_table([fp, low], "unit", samples=8, caches=caches, cache_dir=tmp_path)
    seeds = [e.seed for e in st.prepare(fp, caches).episodes]
    assert len(table) == 2 * len(seeds) and list(table["bits"].unique()) == ["FP", "W3A16"]
    for _, rows in table.groupby("bits"):
        assert list(rows["episode_seed"]) == seeds and (rows["candidates"] == 8).all()
    assert set(table["env"]) == {"wall"} and len(list((tmp_path / "unit").glob("*.json"))) == 2
    monkeypatch.setattr(st, "candidate_alignment", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rerun")))
    again = st.alignment_table([fp, low], "unit", samples=8, caches=caches, cache_dir=tmp_path)
    pd.testing.assert_frame_equal(again, table)
    with pytest.raises(SweepError, match="rerun"):
        st.alignment_table([fp, low], "unit", samples=8, caches=caches, cache_dir=tmp_path, recompute=True)


def test_contrast_episodes_prefer_what_fp_solves_and_quantization_breaks():
    def rows(label, success):
        return pd.DataFrame({"label": label, "episode": range(len(success)), "success": success})
    runs = pd.concat([rows("FP", [0, 1, 1, 1, 1]), rows("enc", [0, 1, 0, 1, 0]), rows("pred", [1, 1, 1, 0, 0])])
    others = [{"label": "enc"}, {"label": "pred"}]
    assert st.contrast_episodes(runs, {"label": "FP"}, others, k=3) == [4, 2, 3]  # both fail, then one, then one
    assert st.contrast_episodes(runs, {"label": "FP"}, others, k=5) == [4, 2, 3, 1, 0]
    with pytest.raises(ValueError, match=r"no rows with \{'label': 'W2'\}"):
        st.contrast_episodes(runs, {"label": "W2"}, others)
    with pytest.raises(ValueError, match="repeat a unit"):  # two settings' rows: select one
        st.contrast_episodes(runs, {}, others)
