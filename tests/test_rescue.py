"""wmqlib.rescue (notebook 04): methods read from the registry, their settings and labels, allocations written as
JSON, relabelled tables, the share of FP kept, calibration moves."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from wmqlib import profiles as pr
from wmqlib import rescue
from wmqlib import study as st
from wmqlib.models import load_world_model
from wmqlib.quant import GPTQ, RTN, PerChannel, PerToken, find_points


def test_methods_are_registered_recipes_with_a_rotation_or_the_rescue_kinds():
    methods = ["RTN", "RTN+hadamard", "GPTQ+random", "mixed", "QAT"]
    assert rescue.check_methods(methods) == methods
    with pytest.raises(ValueError, match=r"methods entry must be one of \[.*'RTN'.*'mixed', 'QAT'\], got 'SpinQuant'"):
        rescue.check_methods(["SpinQuant"])
    with pytest.raises(ValueError, match=r"rotation must be one of \['hadamard', 'random'\], got 'spin'"):
        rescue.check_methods(["RTN+spin"])


def test_rescue_settings_build_every_method_with_its_labels(tiny, capsys):
    S = pr.setup("smoke", [tiny], device="cpu")
    names = find_points(load_world_model(tiny)).linears
    allocations = {("wall", 4): {name: 2 if i % 2 else 8 for i, name in enumerate(names)}}
    settings, labels = rescue.rescue_settings(S, ["RTN", "GPTQ+hadamard", "mixed", "QAT"], [4], [[4, 4]],
                                              ["RTN"], ["wall"], ["RTN", "GPTQ+hadamard", "QAT"], allocations,
                                              {"wall": tiny})
    seeds = S.profile.planner_seeds
    assert list(labels["method"]) == ["FP"] * len(seeds) + [m for m in ["RTN", "GPTQ+hadamard", "mixed", "QAT"]
                                                            for _ in (seeds if m != "mixed" else seeds[:1])] + ["RTN"]
    key, other = S.profile.key_evals, S.profile.n_evals  # key methods: key_evals episodes with the first seed
    assert [s.n_evals for s in settings] == [key, other] * 3 + [other] + [key, other] + [other]
    assert list(labels["bits"].unique()) == ["FP", "W4", "W4A4"] and len(settings) == len(labels)
    by = dict(zip(zip(labels["method"], labels["bits"], labels["planner_seed"]), settings))
    assert by["RTN", "W4", 0].recipe == RTN(4, PerChannel()) and by["RTN", "W4", 0].planner.opt_steps == \
        S.profile.trace_steps  # traced long, as notebook 01's RTN
    assert by["GPTQ+hadamard", "W4", 1].recipe == GPTQ(4, rotation="hadamard") and by["GPTQ+hadamard", "W4", 1] \
        .planner_seed == 1
    assert by["mixed", "W4", 0].recipe == RTN(2) and len(by["mixed", "W4", 0].overrides) == len(names)
    assert by["QAT", "W4", 0].recipe is None and by["QAT", "W4", 0].checkpoint == tiny
    assert by["RTN", "W4A4", 0].recipe == RTN(4, a_bits=4, a_granularity=PerToken())


def test_allocations_are_written_as_json(tmp_path):
    table = pd.DataFrame([{"env": "wall", "name": name, "params": 100, "bits": b, "sensitivity": s}
                          for name, curve in {"a": {2: 10.0, 3: 5.0, 4: 1.0}, "b": {2: 1.0, 3: 0.5, 4: 0.1}}.items()
                          for b, s in curve.items()])
    allocations = rescue.allocate(table, [3], (2, 3, 4), tmp_path)
    assert allocations == {("wall", 3): {"a": 4, "b": 2}}
    written = json.loads((tmp_path / "wall-3bits.json").read_text())
    assert written == {"env": "wall", "budget": 3, "average_bits": 3.0, "bits": {"a": 4, "b": 2}}


def test_relabel_puts_the_labels_in_place_of_the_describe_columns(tiny):
    S = pr.setup("smoke", [tiny], device="cpu")
    settings = [S.setting(tiny, planner="GD"), S.setting(tiny, planner="GD", recipe=RTN(4))]
    keys = [st.result_key(s) for s in settings]
    table = pd.DataFrame({"config_key": np.repeat(keys, 2), "env": "wall", "method": ["FP", "FP", "RTN", "RTN"],
                          "bits": ["FP", "FP", "W4A16", "W4A16"], "planner_seed": 0, "episode": [0, 1, 0, 1],
                          "planner.opt_steps": 3, "success": [True, False, False, False]})
    labels = pd.DataFrame({"env": "wall", "method": ["FP", "rescued"], "bits": ["FP", "W4"], "planner_seed": 0})
    runs = rescue.relabel(table, settings, labels, S.budget)
    assert list(runs["method"]) == ["FP", "FP", "rescued", "rescued"] and list(runs["bits"].unique()) == ["FP", "W4"]


def test_kept_share_is_success_over_fp_per_env():
    rates = pd.DataFrame({"env": ["wall"] * 3, "method": ["FP", "RTN", "GPTQ"], "bits": ["FP", "W4", "W4"],
                          "success_rate": [0.5, 0.25, 0.5]})
    kept = rescue.kept_share(rates)
    assert kept.loc[("wall", "RTN"), "W4"] == 0.5 and kept.loc[("wall", "GPTQ"), "W4"] == 1.0


def test_calibration_moves_pair_each_calibration_with_the_protocols():
    ok = np.r_[np.ones(60, bool), np.zeros(40, bool)]
    worse = np.r_[np.ones(30, bool), np.zeros(70, bool)]
    runs = pd.DataFrame({"env": "wall", "method": "GPTQ W4A16", "planner_seed": 0,
                         "calibration": ["protocol"] * 100 + ["5 rounds"] * 100,
                         "episode_seed": list(range(100)) * 2, "success": np.r_[ok, worse]})
    moves = rescue.calibration_moves(runs)
    assert moves.to_dict("records") == [{"env": "wall", "method": "GPTQ W4A16", "calibration": "5 rounds",
                                         "effect": "-30", "95% interval": moves["95% interval"][0],
                                         "p": moves["p"][0]}]
    assert float(moves["p"][0]) < 1e-6


def test_method_seconds_are_timed_once_and_read_back(tiny, tmp_path, monkeypatch, caches, capsys):
    S = pr.setup("full", [tiny], device="cpu", n_evals=2, samples=6, topk=2, opt_steps=1, trace_steps=2, n_calib=2,
                 planner_seeds=[0])
    monkeypatch.setattr(rescue, "RESULTS_DIR", tmp_path)
    sensitivity = pd.DataFrame({"env": ["wall"], "seconds": [12.5]})
    first = rescue.method_seconds(S, ["RTN", "GPTQ", "mixed"], [4, 3], sensitivity, {}, caches)
    assert list(first.index) == ["GPTQ", "RTN", "mixed (sensitivity)"] and list(first.columns) == ["wall"]
    assert first.loc["mixed (sensitivity)", "wall"] == 12.5 and (first["wall"] > 0).all()
    assert len(list((tmp_path / "method-seconds-full").glob("*.json"))) == 2
    monkeypatch.setattr(rescue, "quantize", lambda *a, **k: pytest.fail("a recorded time is read, not measured"))
    pd.testing.assert_frame_equal(rescue.method_seconds(S, ["RTN", "GPTQ", "mixed"], [4, 3], sensitivity, {}, caches),
                                  first)
