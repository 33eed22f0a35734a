"""wmqlib.designs: each study notebook's settings from its parameters (counts derived by hand), the key
comparisons sized by key_evals, the named groups, and every study notebook's parameters cell builds its design."""

from __future__ import annotations

from pathlib import Path

import pytest

from wmqlib import designs, rescue
from wmqlib import profiles as pr
from wmqlib.reproduce import declared_parameters

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture()
def S(tiny, capsys):
    return pr.setup("smoke", [tiny], device="cpu")  # planner seeds (0, 1), n_evals 3, key_evals 4


GRANULARITY = dict(seeded_envs=["wall"], extended_envs=[], weight_bits=[8, 6, 4], weight_methods=["OMSE"],
                   method_bits=[4], weight_granularities=["per-channel", "per-group"], key_weight_bits=[8],
                   act_bits={"RTN": [[8, 8], [4, 4]]}, act_granularities=["per-token"], reference_bits={"RTN": [4]},
                   reference_act_bits={}, long_weight=[["RTN", 4, "per-group"]], long_act=[])


def test_granularity_builds_the_grid_counted_by_hand(S):
    # FP x 2 seeds; RTN W8 (key) x 2 granularities x 2 seeds; W6 only where extended; RTN W4 and OMSE W4 x 2
    # granularities; W8A8 per token (W4A4 only where extended); QuantWM's rows only where extended
    plain = designs.granularity(S, **GRANULARITY).settings
    assert len(plain) == 2 + 4 + 2 + 2 + 1
    extended = designs.granularity(S, **{**GRANULARITY, "extended_envs": ["wall"]}).settings
    assert len(extended) == len(plain) + 1 + 1 + 1  # + W6 per channel, W4A4, RTN W4 (QuantWM)
    P = S.profile
    key = [s for s in plain if s.recipe is not None and s.recipe.w_bits == 8 and s.recipe.a_bits is None]
    assert [(s.planner_seed, s.n_evals) for s in key] == [(0, P.key_evals), (1, P.n_evals)] * 2
    traced = [s for s in plain if s.planner.opt_steps == P.trace_steps]
    assert [s.recipe for s in traced[2:]] == [P.recipe("RTN", 4, "per-group", pr.default_group_size(S.checkpoints[0]))]


def test_baseline_names_its_groups_and_probes_the_fp_reference(S):
    d = designs.baseline(S)
    assert len(d.settings) == 6
    assert d.parts["study"] == S.fp_settings() and d.probes == list(S.fp_settings().values())
    assert d.parts["mpc"]["wall"].mpc.max_rounds == S.profile.mpc_rounds
    assert {s.objective for s in d.settings} >= set(designs.ABLATIONS.values())


def test_encoder_vs_predictor_scopes_every_bit_width_and_probes_the_encoder_settings(S):
    d = designs.encoder_vs_predictor(S, ["wall"], "RTN", "per-channel", [8, 3], [8], [3], [3])
    # FP x 2 seeds + MPC; W8 (key) x 2 scopes x 2 seeds; W3 x 2 scopes x 1 seed + its MPC per scope
    assert len(d.settings) == 3 + 4 + 2 + 2
    assert sorted(d.parts["scoped"]) == [("wall", b, scope) for b in (3, 8) for scope in ("encoder", "predictor")]
    assert [s.scope for s in d.probes] == ["all", "encoder", "encoder"]


def test_misalignment_aligns_fp_and_each_bit_width_on_the_common_episodes(S):
    d = designs.misalignment(S, "RTN", "per-channel", "all", [8, 4], [8], [4], [4], candidates=7)
    assert len(d.settings) == 2 + 2 + 1 and d.candidates == 7
    assert len(d.alignment) == 3 and {s.n_evals for s in d.alignment} == {S.profile.n_evals}


TRANSFER = dict(seeded_envs=["wall"], bits=[8, 3], key_bits=[8], weight_granularities=["per-channel", "per-group"],
                long_weight=[["RTN", 3, "per-channel"]], scope_long_bits=[3], scope_round_bits=[3],
                loss_long_bits=[3], loss_round_bits=[3], candidates=5)


def test_architecture_transfer_runs_01_02_03s_settings_per_checkpoint_each_once(tiny, tiny_rssm_trained, capsys):
    S = pr.setup("smoke", [tiny, tiny_rssm_trained], device="cpu")
    assert S.envs == ("wall", "wall")
    d = designs.architecture_transfer(S, **TRANSFER)
    for ck in S.checkpoints:
        one, parts = S.only(ck), d.parts[ck]
        assert parts["granularity"].settings == designs.granularity(
            one, ["wall"], [], [8, 3], [], [], ["per-channel", "per-group"], [8], {}, [], {}, {},
            [["RTN", 3, "per-channel"]], []).settings
        assert parts["scope"].settings == designs.encoder_vs_predictor(one, ["wall"], "RTN", "per-channel", [8, 3],
                                                                       [8], [3], [3]).settings
        assert parts["misalignment"].settings == designs.misalignment(one, "RTN", "per-channel", "all", [8, 3], [8],
                                                                      [3], [3], 5).settings
        assert {s.checkpoint for p in parts.values() for s in p.settings} == {ck}
    # per checkpoint: 01 FP x 2 seeds, W8 (key) x 2 granularities x 2 seeds, W3 x 2 granularities (8); 02 FP x 2
    # seeds + MPC, W8 x 2 scopes x 2 seeds, W3 x 2 scopes + their MPC (11); 03 FP, FP MPC, W8, W3 (long), W3 MPC (5).
    # Shared: 02's FP seeds (01's), 03's FP, W8 and W3 per channel (01's) and FP MPC (02's)
    assert len(d.settings) == 2 * (8 + 11 + 5 - 2 - 4) and len(set(d.settings)) == len(d.settings)
    assert d.alignment == [s for ck in S.checkpoints for s in d.parts[ck]["misalignment"].alignment]
    assert d.candidates == 5


def test_rescue_design_prices_unmeasured_allocations_with_the_same_settings(S, tiny):
    parameters = {**declared_parameters(NOTEBOOKS / "04_rescue_low_bits.ipynb"), "qat_checkpoints": {"wall": tiny},
                  "calib_envs": ["wall"]}
    d = designs.of_notebook("04_rescue_low_bits", S, parameters)  # smoke recomputes: nothing counts as measured
    assert [s for s, _, _ in d.sensitivity] == list(S.fp_settings().values())
    settings, _ = rescue.rescue_settings(S, parameters["methods"], parameters["rescue_bits"], parameters["act_bits"],
                                         parameters["act_methods"], parameters["seeded_envs"],
                                         parameters["key_methods"], {("wall", b): {"*": b} for b in (3, 4)},
                                         {"wall": tiny})
    assert d.parts["rescue"][0] == settings
    assert len(d.timed) == len([m for m in parameters["methods"] if m not in rescue.KINDS])


def test_unknown_notebooks_and_missing_parameters_are_named(S):
    with pytest.raises(ValueError, match=r"no design for notebook '05_new'; the study notebooks: \['00_baseline'"):
        designs.of_notebook("05_new", S, {})
    with pytest.raises(KeyError, match=r"encoder_vs_predictor needs the notebook parameters \['seeded_envs', "):
        designs.of_notebook("02_encoder_vs_predictor", S, {"method": "RTN"})


@pytest.mark.parametrize("stem", sorted(designs.DESIGNS))
def test_every_study_notebook_builds_its_design_from_its_parameters_cell(stem, capsys):
    parameters = {**declared_parameters(NOTEBOOKS / f"{stem}.ipynb"), "profile": "smoke", "device": "cpu"}
    S = designs.setup_of(parameters)
    d = designs.of_notebook(stem, S, parameters)
    runs = d.parts["rescue"][0] if stem == "04_rescue_low_bits" else d.settings  # 04: two tables, which may share
    assert runs and len({str(s) for s in runs}) == len(runs)
    # every notebook covers both envs, but 05, which compares architectures on one
    assert set(S.envs) == ({"wall"} if stem == "05_architecture_transfer" else {"wall", "pusht"})
