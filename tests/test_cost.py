"""wmqlib.cost: designs priced by hand-derived formulas from given rates, cached and planned work for free,
quantization and calibration once per model, the measured rates of a tiny model, kept and read back."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from wmqlib import cost, designs
from wmqlib import profiles as pr
from wmqlib import study as st
from wmqlib.quant import recipe_types

RATES = cost.Rates(rollout=0.001, episode=0.05, gd_step=0.002, act={"per-tensor": 1.5, "per-token": 2.0},
                   active=(1.0, 0.5), quantize={"RTN": 0.1, "GPTQ": 3.0}, execute=0.01, probe=4.0, linears=10,
                   notebook=7.0)


@pytest.fixture()
def S(tiny, capsys):
    return pr.setup("smoke", [tiny], device="cpu")  # recomputes; n_evals 3, samples 30, budget 2, trace 3


def _priced(S, settings, tiny, **kw):
    return cost.price(designs.Design(list(settings), **kw), S, {tiny: RATES})


def test_planning_is_episodes_times_rollouts_plus_the_episode_work(S, tiny):
    P = S.profile
    open_loop, mpc, gd = S.setting(tiny), S.setting(tiny, mpc=True), S.setting(tiny, planner="GD")
    table = _priced(S, [open_loop, mpc, gd], tiny)
    plan = P.samples * P.opt_steps * RATES.rollout + RATES.episode
    expected = [P.n_evals * plan, P.n_evals * plan * (1.0 + 0.5), P.n_evals * (P.gd_steps * RATES.gd_step + 0.05)]
    assert table[table["kind"] == "setting"]["seconds"].tolist() == pytest.approx(expected)
    assert table.iloc[-1].tolist() == ["notebook", "kernel, imports, figures", False, 7.0, -1]
    longer = dataclasses.replace(mpc, mpc=dataclasses.replace(mpc.mpc, max_rounds=4))  # rounds past the measured ones
    assert _priced(S, [longer], tiny)["seconds"].iloc[0] == pytest.approx(P.n_evals * plan * (1.0 + 0.5 * 3))


def test_mpc_rounds_cost_the_measured_mpc_factor_over_an_open_loop_plan(S, tiny):
    """``Rates.mpc`` (FP's measured MPC run over its open-loop price) multiplies MPC settings and the calibration's
    MPC run, and nothing else."""
    open_loop, mpc, gd = S.setting(tiny), S.setting(tiny, mpc=True), S.setting(tiny, planner="GD")
    base, slow = RATES, dataclasses.replace(RATES, mpc=2.5)
    for setting, factor in ((open_loop, 1.0), (mpc, 2.5), (gd, 1.0)):
        assert cost._planning(setting, slow) == pytest.approx(factor * cost._planning(setting, base))
    calibrated = S.setting(tiny, recipe=S.profile.recipe("RTN", 8, a_bits=8, a_granularity="per-tensor"))
    planner = S.profile.cem(S.envs[0])
    assert cost._calibration(calibrated, planner, slow) == pytest.approx(2.5 * cost._calibration(calibrated, planner,
                                                                                                  base))


def test_quantization_and_calibration_are_paid_once_per_model_and_calibration(S, tiny):
    P = S.profile
    gptq = [S.setting(tiny, recipe=P.recipe("GPTQ", 4), planner_seed=k) for k in (0, 1)]  # one quantized model
    act = S.setting(tiny, recipe=P.recipe("RTN", 8, a_bits=8, a_granularity="per-token"))
    table = _priced(S, gptq + [act], tiny)
    assert table.groupby("kind")["seconds"].count().to_dict() == {"calibration": 1, "notebook": 1, "quantize": 2,
                                                                  "setting": 3}
    assert table[table["kind"] == "quantize"]["seconds"].tolist() == [3.0, 0.1]
    plan = P.samples * P.opt_steps * RATES.rollout + RATES.episode
    # FP planning on the calibration episodes over 2 MPC rounds
    assert table[table["kind"] == "calibration"]["seconds"].iloc[0] == pytest.approx(P.n_calib * plan * 1.5)
    planned = table[table["kind"] == "setting"]["seconds"].tolist()
    assert planned[2] == pytest.approx(P.n_evals * (P.samples * P.opt_steps * RATES.rollout * 2.0 + RATES.episode))


def test_cached_and_planned_work_is_free_and_a_cached_notebook_measures_nothing(tiny, tmp_path, monkeypatch, caches,
                                                                                capsys):
    S = pr.setup("full", [tiny], device="cpu", n_evals=2, key_evals=2, samples=6, topk=2, opt_steps=1,
                 trace_steps=2, n_calib=2, planner_seeds=[0])
    setting = S.setting(tiny)
    st.run_study([setting], S.results, cache_dir=tmp_path, caches=caches, progress=False)
    monkeypatch.setattr(cost, "rates", lambda *a, **k: pytest.fail("nothing to compute: no rates needed"))
    table = cost.price(designs.Design([setting], probes=[setting]), S, cache_dir=tmp_path, caches=caches)
    assert table["cached"].tolist() == [True, False, False] and table["seconds"].iloc[0] == 0.0
    assert math.isnan(table["seconds"].iloc[1:].sum(min_count=1))
    assert cost.summary(table) == "1 settings, 0 to compute; a re-plot (everything cached)"
    other = S.setting(tiny, mpc=True)
    planned: set[str] = set()
    first = cost.price(designs.Design([other, other]), S, {tiny: RATES}, planned, caches, tmp_path)
    assert first[first["kind"] == "setting"]["cached"].tolist() == [False, True]  # the same setting runs once
    again = cost.price(designs.Design([other]), S, {tiny: RATES}, planned, caches, tmp_path)
    assert again["cached"].iloc[0] and again["seconds"].iloc[0] == 0.0  # an earlier notebook computes it


def test_a_quantized_mpc_setting_keeps_more_episodes_planning_by_its_open_loop_success(tiny, tmp_path, caches,
                                                                                          monkeypatch, capsys):
    S = pr.setup("full", [tiny], device="cpu", n_evals=4, key_evals=4, samples=6, topk=2, opt_steps=1,
                 trace_steps=2, planner_seeds=[0], mpc_rounds=2)
    w3 = S.profile.recipe("RTN", 3)
    fp_open, w3_open, w3_mpc = S.setting(tiny), S.setting(tiny, recipe=w3), S.setting(tiny, recipe=w3, mpc=True)
    rates = dataclasses.replace(RATES, active=(1.0, 0.5))  # FP: half the episodes succeed in round 1
    plan = S.profile.samples * S.profile.opt_steps * RATES.rollout + RATES.episode
    before = cost.price(designs.Design([fp_open, w3_open, w3_mpc]), S, {tiny: rates}, caches=caches,
                        cache_dir=tmp_path)
    assert before[before["kind"] == "setting"]["seconds"].iloc[-1] == pytest.approx(4 * plan * (1.0 + 0.5))  # FP's
    outcomes = {fp_open: [True, True, False, False], w3_open: [True, False, False, False]}
    monkeypatch.setattr(cost, "_open_loop_success", lambda m, *a: (
        next((sum(v) / 4 for s, v in outcomes.items() if s.recipe == m.recipe), None)))
    after = cost.price(designs.Design([w3_mpc]), S, {tiny: rates}, caches=caches, cache_dir=tmp_path)
    # W3 succeeds half as often as FP open loop: a quarter of its episodes succeed in round 1, three quarters plan on
    assert after[after["kind"] == "setting"]["seconds"].iloc[0] == pytest.approx(4 * plan * (1.0 + 0.75))
    assert cost._planning(w3_mpc, rates, success_ratio=3.0) == pytest.approx(4 * plan * 1.0)  # never below 0


def test_the_open_loop_success_is_read_from_a_kept_setting_of_the_same_model(tiny, tmp_path, caches, capsys):
    S = pr.setup("full", [tiny], device="cpu", n_evals=2, key_evals=2, samples=6, topk=2, opt_steps=1,
                 trace_steps=2, planner_seeds=[0])
    w3 = S.profile.recipe("RTN", 3)
    kept, other = S.setting(tiny, recipe=w3), S.setting(tiny, recipe=S.profile.recipe("RTN", 4))
    table = st.run_study([kept], S.results, cache_dir=tmp_path, caches=caches, progress=False)
    success = float(st.per_episode(table, S.budget)["success"].mean())
    mpc = S.setting(tiny, recipe=w3, mpc=True)
    assert cost._open_loop_success(mpc, [other, kept], [True, True], S, caches, tmp_path) == success
    assert cost._open_loop_success(mpc, [kept], [False], S, caches, tmp_path) is None  # not on disk
    assert cost._open_loop_success(mpc, [other], [True], S, caches, tmp_path) is None  # another model


def test_a_recomputing_profile_pays_for_every_setting_again(S, tiny):
    fp = S.setting(tiny)
    table = cost.price(designs.Design([fp, fp]), S, {tiny: RATES}, planned={"anything"})
    assert table[table["kind"] == "setting"]["cached"].tolist() == [False, False]


def test_summary_names_what_is_to_compute():
    import pandas as pd

    table = pd.DataFrame([("setting", "a", True, 0.0, 0), ("setting", "b", False, 10.4, 1),
                          ("quantize", "RTN", False, 2.0, 1), ("notebook", "kernel", False, 5.0, -1)],
                         columns=["kind", "what", "cached", "seconds", "task"])
    assert cost.summary(table) == "2 settings, 1 to compute; predicted 17 s (setting 10 s, quantize 2 s, notebook 5 s)"
    table.attrs["workers"] = 2
    assert cost.summary(table) == ("2 settings, 1 to compute; predicted 17 s on 2 workers (setting 10 s, quantize 2 s, "
                                   "notebook 5 s)")
    assert cost.summary(None) == "not priced (no design in wmqlib.designs)"


def test_rates_are_measured_on_the_tiny_model_and_kept(S, tiny, tmp_path, monkeypatch):
    measured = cost.rates(S, tiny, folder=tmp_path)
    assert measured.rollout > 0 and measured.episode >= 0 and measured.gd_step > 0 and measured.probe > 0
    assert measured.active[0] == 1.0 and len(measured.active) == S.profile.mpc_rounds
    assert all(0.0 <= a <= 1.0 for a in measured.active) and set(measured.act) == {"per-tensor", "per-token"}
    assert 0.0 < measured.mpc < math.inf  # its MPC run's time over that run's open-loop price
    assert set(measured.quantize) == {*recipe_types(), *cost.ROTATED} and measured.linears > 0
    (kept,) = tmp_path.glob("*.json")
    assert json.loads(kept.read_text())["identity"]["model_sha"] == st.CACHES.checkpoint(tiny).model_sha
    monkeypatch.setattr(cost, "measure", lambda *a: pytest.fail("kept rates are read back, not measured again"))
    assert cost.rates(S, tiny, folder=tmp_path) == measured


def test_a_notebook_that_cannot_be_priced_says_why_and_stops_nothing():
    table = cost.price_notebook("02_encoder_vs_predictor", {"profile": "smoke", "checkpoint": ["no-such-model"]})
    assert isinstance(table, str) and "no-such-model" in table
    assert cost.summary(table).startswith("not priced (CheckpointError: ") and math.isnan(cost.predicted(table))
    assert cost.price_notebook("05_new", {}) is None and math.isnan(cost.predicted(None))


def test_tasks_are_list_scheduled_in_design_order_on_the_workers():
    import pandas as pd

    # tasks 0..3 take 10 (a setting of 8 and its quantization of 2), 4, 3, 3 seconds; the kernel's work 5 s
    rows = [("setting", "a", False, 8.0, 0), ("quantize", "RTN", False, 2.0, 0), ("setting", "b", False, 4.0, 1),
            ("setting", "c", False, 3.0, 2), ("setting", "d", False, 3.0, 3), ("probe", "FP", False, 5.0, -1)]
    table = pd.DataFrame(rows, columns=["kind", "what", "cached", "seconds", "task"])
    assert cost.predicted(table) == 5 + 20  # one worker: everything one after another
    table.attrs["workers"] = 2  # worker 1 takes a (10); worker 2 takes b (4), then c (7), then d (10)
    assert cost.predicted(table) == 5 + 10
    table.attrs["workers"] = 3  # a (10) | b (4), then d (7) | c (3)
    assert cost.predicted(table) == 5 + 10
    table.attrs["workers"] = 1
    assert cost.predicted(table[table["task"] < 0]) == 5 and cost.predicted(table[table["task"] >= 0]) == 20


def test_on_workers_the_settings_are_priced_at_the_workers_rates_and_the_kernels_work_at_its_own(S, tiny):
    fp = S.setting(tiny)
    workers = dataclasses.replace(RATES, rollout=2 * RATES.rollout, episode=0.0)
    table = cost.price(designs.Design([fp], probes=[fp]), S, {tiny: RATES}, workers=2,
                       task_measured={tiny: workers})
    assert table.attrs["workers"] == 2
    setting = table[table["kind"] == "setting"].iloc[0]
    p = fp.planner
    assert setting["task"] == 0 and setting["seconds"] == pytest.approx(
        fp.n_evals * p.samples * p.opt_steps * workers.rollout)
    assert (table[table["kind"] != "setting"]["task"] == -1).all()
    assert table[table["kind"] == "probe"]["seconds"].iloc[0] == RATES.probe


def test_a_computing_run_is_recorded_and_a_replot_leaves_the_record_alone(tmp_path):
    import pandas as pd

    columns = ["kind", "what", "cached", "seconds", "task"]
    computing = pd.DataFrame([("setting", "a", False, 30.0, 0), ("setting", "b", True, 0.0, 1),
                              ("notebook", "kernel", False, 10.0, -1)], columns=columns)
    assert cost.record_run("full", "01_x", computing, 50.0, None, 0.2, tmp_path)
    replot = computing.assign(cached=[True, True, False], seconds=[0.0, 0.0, float("nan")])
    assert not cost.record_run("full", "01_x", replot, 3.0, None, 0.1, tmp_path)  # the computing run stays
    assert not cost.record_run("full", "05_no_design", None, 3.0, None, 0.1, tmp_path)
    assert cost.record_run("full", "00_y", "ValueError: bad", 7.0, "local:2", 1.5, tmp_path)
    table = cost.run_table("full", tmp_path)
    assert list(table["notebook"]) == ["00_y", "01_x"]
    x = table.set_index("notebook").loc["01_x"]
    assert (x["settings"], x["computed"], x["predicted_s"], x["measured_s"]) == (2, 1, 40.0, 50.0)
    assert x["measured / predicted"] == 1.25 and x["executor"] == "serial" and x["load"] == 0.2
    assert x["cost model"] == cost.RATES_VERSION
    runs = json.loads((tmp_path / "full.json").read_text())  # a record kept before the field: cost model 1
    del runs["00_y"]["cost_model"]
    (tmp_path / "full.json").write_text(json.dumps(runs))
    assert cost.run_table("full", tmp_path).set_index("notebook").loc["00_y", "cost model"] == 1
    y = table.set_index("notebook").loc["00_y"]
    assert pd.isna(y["predicted_s"]) and pd.isna(y["measured / predicted"]) and y["executor"] == "local:2"
    assert cost.run_table("paper", tmp_path).empty
