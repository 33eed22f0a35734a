"""wmqlib.findings: which rule each setting meets (by its bit width), the cheapest method within the margin of FP
for each of its outcomes, and the text a notebook ends with; on constructed per-unit outcomes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wmqlib import findings, verdicts

N = 100
BASELINES = {"no_action": np.zeros(N, bool), "straight_line": np.r_[np.ones(5, bool), np.zeros(N - 5, bool)]}


def successes(*spans: tuple[int, int], n: int = N) -> np.ndarray:
    """True on each half-open span (start, stop) of n units, False elsewhere."""
    out = np.zeros(n, dtype=bool)
    for start, stop in spans:
        out[start:stop] = True
    return out


def by_unit(values: np.ndarray, seed: int = 0) -> pd.Series:
    return pd.Series(values, index=pd.MultiIndex.from_product([[seed], range(len(values))],
                                                              names=["planner_seed", "episode_seed"]))


def base() -> dict[str, pd.Series]:
    return {k: pd.Series(v, index=pd.Index(range(N), name="episode_seed")) for k, v in BASELINES.items()}


def rows(label: str, method: str, w_bits: int, w_kind: str, values: np.ndarray, seed: int = 0) -> pd.DataFrame:
    """One weight-only setting's rows of a tidy table (env wall, wmq's configuration)."""
    quantized = w_bits < 32
    return pd.DataFrame({"env": "wall", "label": label, "method": method, "w_bits": w_bits,
                         "a_bits": 16 if quantized else 32, "bits": f"W{w_bits}A16" if quantized else "FP",
                         "w_kind": w_kind, "acts": "-", "configuration": "wmq" if quantized else "-",
                         "planner_seed": seed, "episode_seed": range(len(values)), "success": values})


FP = successes((0, 60))


def test_the_rule_a_weight_only_setting_meets_is_chosen_by_its_bit_width():
    assert {b: rule.__name__ for b, rule in findings.W_BITS_RULES.items()} == {
        8: "w8_close_to_fp", 4: "w4_loses_success", 3: "w3_breaks_planning"}
    assert {b: rule.__name__ for b, rule in findings.GROUP_RULES.items()} == {
        4: "groups_stabilise_w4", 3: "groups_do_not_rescue_w3"}
    runs = pd.concat([rows("FP", "FP", 32, "-", FP), rows("RTN W8A16 per-channel", "RTN", 8, "per-channel", FP),
                      rows("RTN W6A16 per-channel", "RTN", 6, "per-channel", FP),  # no finding at 6 bits
                      rows("RTN W4A16 per-channel", "RTN", 4, "per-channel", successes((0, 30))),
                      rows("RTN W4A16 g32", "RTN", 4, "per-group", successes((0, 50))),
                      rows("RTN W3A16 per-channel", "RTN", 3, "per-channel", successes((0, 5)))])
    found = findings.granularity_verdicts(runs, runs.iloc[:0], {"wall": base()})
    assert [(v.finding.split()[0], v.comparison, v.outcome) for v in found] == [
        ("F1a", "wall: RTN W8A16 per-channel vs FP", "reproduced"),
        ("F1b", "wall: RTN W4A16 per-channel vs FP", "reproduced"),
        ("F1b", "wall: RTN W4A16 g32 vs FP", "reproduced"),
        ("F1c", "wall: RTN W3A16 per-channel vs FP", "reproduced"),
        ("F2a", "wall: RTN W4A16 g32 vs RTN W4A16 per-channel", "reproduced")]


def cheapest(candidates: dict[str, np.ndarray], fp: np.ndarray = FP, seeds: int = 1):
    if seeds == 1:
        series = {m: by_unit(v) for m, v in candidates.items()}
        reference = by_unit(fp)
    else:
        series = {m: pd.concat([by_unit(v[i], i) for i in range(seeds)]) for m, v in candidates.items()}
        reference = pd.concat([by_unit(fp, i) for i in range(seeds)])
    return findings.cheapest_within_margin(series, reference, base(), margin=0.10)


def test_the_cheapest_method_within_the_margin_is_the_first_that_reproduces():
    found = cheapest({"RTN": successes((0, 30)), "GPTQ": FP, "QAT": FP})
    assert findings.cheapest(found, ["RTN", "GPTQ", "QAT"]) == "GPTQ"  # QAT also holds, but costs more
    assert [v.outcome for v in found] == ["not reproduced", "reproduced", "reproduced"]
    assert [v.comparison for v in found] == ["RTN vs FP", "GPTQ vs FP", "QAT vs FP"]


def test_no_method_within_the_margin_says_none():
    found = cheapest({"RTN": successes((0, 30)), "GPTQ": successes((10, 66))})
    assert findings.cheapest(found, ["RTN", "GPTQ"]) == "none"
    assert [v.outcome for v in found] == ["not reproduced", "inconclusive"]


def test_no_testable_method_says_not_testable():
    weak = successes((0, 8))  # FP 3 units above the best baseline: not decisively above it
    found = cheapest({"RTN": weak, "GPTQ": weak}, fp=weak)
    assert findings.cheapest(found, ["RTN", "GPTQ"]) == "not testable"
    assert {v.outcome for v in found} == {"not testable"}


def test_a_method_off_on_one_seed_is_judged_on_its_episodes_with_the_seeds_spread():
    off = successes((0, 52))  # 8 points below FP on one seed, equal on the other
    found = cheapest({"RTN": [FP, off]}, seeds=2)
    assert (found[0].episodes, found[0].units) == (N, 2 * N)
    assert found[0].p == pytest.approx(2 * 0.5**8)  # 8 episodes lost once each, counted as 8 episodes
    assert "spread over 2 planner_seeds" in found[0].why


def test_rescue_verdicts_choose_per_env_and_bits_among_the_methods_run():
    def table(method: str, bits: str, values: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"env": "wall", "method": method, "bits": bits, "planner_seed": 0,
                             "episode_seed": range(N), "success": values})
    runs = pd.concat([table("FP", "FP", FP), table("RTN", "W4", successes((0, 30))), table("GPTQ", "W4", FP),
                      table("RTN", "W4A4", successes((0, 5)))])
    best, found = findings.rescue_verdicts(runs, {"wall": base()}, ["W4", "W4A4"], ["RTN", "GPTQ", "QAT"], 0.10)
    assert best.to_dict("records") == [{"env": "wall", "bits": "W4", "cheapest within margin": "GPTQ"},
                                       {"env": "wall", "bits": "W4A4", "cheapest within margin": "none"}]
    assert all(not np.isnan(v.p_adjusted) for v in found)  # one family: Holm over the three
    assert [v.comparison for v in found] == ["wall: RTN W4 vs FP", "wall: GPTQ W4 vs FP", "wall: RTN W4A4 vs FP"]


def test_report_is_the_table_without_why_then_why():
    found = [verdicts.w4_loses_success(by_unit(successes((0, 30))), by_unit(FP), base(), comparison="wall: W4")]
    text = findings.report(found)
    table = verdicts.verdict_table(found).drop(columns="why").to_string(index=False)
    assert text == f"{table}\n\nwhy:\n  wall: W4: reproduced - {found[0].why}"
    assert findings.why(found) == text.split("\n\n", 1)[1]


def test_units_select_one_setting_by_planner_seed_and_episode():
    runs = pd.concat([rows("FP", "FP", 32, "-", FP), rows("FP", "FP", 32, "-", FP, seed=1)])
    assert list(findings.units(runs, label="FP").index.names) == ["planner_seed", "episode_seed"]
    with pytest.raises(ValueError, match="no rows"):
        findings.units(runs, label="W4")


def test_f4_rounds_judge_the_change_of_the_deficit_against_each_scopes_claim():
    def rounds(scope: str, first: np.ndarray, last: np.ndarray) -> pd.DataFrame:
        return pd.concat([pd.DataFrame({"env": "wall", "scope": scope, "w_bits": 4, "round": r, "planner_seed": 0,
                                        "episode_seed": range(N), "success": v}) for r, v in ((1, first), (5, last))])
    fp = successes((0, 60))
    mpc = pd.concat([rounds("-", fp, fp).assign(method="FP"),
                     rounds("encoder", successes((0, 20)), successes((0, 20))).assign(method="RTN"),  # deficit kept
                     rounds("predictor", successes((0, 20)), successes((0, 58))).assign(method="RTN")])  # repaired
    settings = {f"wall: W4 {scope}-only": ({"w_bits": 4, "scope": scope, "method": "RTN"},
                                           findings.SCOPE_CLAIMS[scope]) for scope in ("encoder", "predictor")}
    found = findings.round_verdicts(mpc, {"method": "FP"}, settings, base())
    assert [v.outcome for v in found] == ["reproduced", "reproduced"]
    assert [v.comparison for v in found] == ["wall: W4 encoder-only deficit round 5 vs 1",
                                             "wall: W4 predictor-only deficit round 5 vs 1"]
    assert found[1].effect == pytest.approx(-0.38) and found[0].effect == 0
    # the claims swapped, the same data say the opposite
    swapped = {name: (match, "repaired" if claim == "irreversible" else "irreversible")
               for name, (match, claim) in settings.items()}
    assert [v.outcome for v in findings.round_verdicts(mpc, {"method": "FP"}, swapped, base())] == \
        ["not reproduced", "not reproduced"]


def test_markdown_counts_the_outcomes_and_quotes_the_table():
    found = verdicts.holm_adjusted([verdicts.w4_loses_success(by_unit(successes((0, 30))), by_unit(FP), base(),
                                                              comparison="wall: W4 | per-channel"),
                                    verdicts.w8_close_to_fp(by_unit(FP), by_unit(FP), base(), comparison="wall: W8")])
    text = findings.markdown(found, decided=pd.DataFrame({"env": ["wall"], "cheapest": ["GPTQ"]}))
    head, decided, table = text.split("\n\n")
    assert head.startswith("2 verdicts (2 reproduced); episodes per comparison: 100;")
    assert decided == "| env | cheapest |\n| --- | --- |\n| wall | GPTQ |"
    lines = table.splitlines()
    assert lines[0] == "| finding | comparison | episodes | effect | p | p equiv | p Holm | mde | verdict |"
    assert "wall: W4 \\| per-channel" in lines[2] and lines[2].endswith("| reproduced |")
    assert len(lines) == 4


def test_f6_reads_the_per_episode_alignment_of_the_low_bits_against_fp():
    rng = np.random.default_rng(0)
    fp_rho = np.clip(0.8 + 0.05 * rng.normal(size=N), -1, 1)

    def alignment(low_rho: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"env": "wall", "bits": np.repeat(["FP", "W3A16"], N),
                             "episode_seed": np.tile(np.arange(N), 2), "rho": np.r_[fp_rho, low_rho]})
    def drops(low_drop: np.ndarray) -> pd.DataFrame:  # the low bits ran 10 more episodes than FP: common ones count
        return pd.DataFrame({"env": "wall", "bits": np.repeat(["FP", "W3A16"], [N, N + 10]),
                             "episode_seed": np.r_[np.arange(N), np.arange(N + 10)],
                             "loss_drop": np.r_[fp_rho, low_drop]})
    final = pd.concat([rows("FP", "FP", 32, "-", FP), rows("RTN W3A16", "RTN", 3, "per-channel", successes((0, 5)))])
    empty = final.iloc[:0].assign(round=1)
    lost = findings.misalignment_verdicts(alignment(fp_rho - 0.5), drops(np.zeros(N + 10)), final, empty,
                                          {"wall": base()}, "W3A16", [])
    kept = findings.misalignment_verdicts(alignment(fp_rho + 0.01 * rng.normal(size=N)),
                                          drops(np.r_[fp_rho, np.zeros(10)]), final, empty, {"wall": base()}, "W3A16",
                                          [])
    assert [(v.finding, v.outcome) for v in lost] == [("F6 loss misaligned within episodes", "reproduced"),
                                                      ("F6 loss stalls over iterations", "reproduced")]
    assert lost[0].effect == pytest.approx(-0.5) and lost[0].episodes == N
    assert lost[1].effect == pytest.approx(-fp_rho.mean()) and lost[1].episodes == N
    assert [v.outcome for v in kept] == ["not reproduced"] * 2  # within +-0.1 of FP's


# ----- 05: transfer across architectures -----

def made(finding: str, comparison: str, outcome: str, effect: float = 0.0) -> verdicts.Verdict:
    return verdicts.Verdict(finding, comparison, effect, effect - 0.1, effect + 0.1, 0.95, 0.5, 0.2, outcome, "why")


@pytest.mark.parametrize(("outcomes", "transfer"), [
    (["reproduced", "reproduced"], "transfers"),
    (["not reproduced", "not reproduced"], "transfers"),
    (["reproduced", "not reproduced"], "does not transfer"),
    (["reproduced", "inconclusive"], "undecided"),
    (["inconclusive", "not testable"], "not testable"),
    (["not reproduced", "not testable"], "not testable")])
def test_a_finding_transfers_only_when_every_architecture_decides_it_alike(outcomes, transfer):
    assert findings.transfers(outcomes) == transfer


def test_transfers_names_an_unknown_outcome():
    with pytest.raises(ValueError, match=r"transfers: outcomes must be some of \['reproduced'.*got \['maybe'\]"):
        findings.transfers(["maybe"])
    with pytest.raises(ValueError, match="got \\[\\]"):
        findings.transfers([])


def test_the_transfer_table_meets_comparisons_across_envs_and_group_sizes():
    found = {"vit": [made("F1a", "wall: RTN W8A16 g32 vs FP", "reproduced", 0.02),
                     made("F5", "wall: RTN W4 encoder-only vs predictor-only", "not reproduced")],
             "rssm": [made("F1a", "wall: RTN W8A16 g64 vs FP", "reproduced", -0.04)]}
    table = findings.transfer_table(found)
    assert list(table.columns) == ["finding", "comparison", "vit", "vit effect", "rssm", "rssm effect", "transfer"]
    assert table.to_dict("records") == [
        {"finding": "F1a", "comparison": "RTN W8A16 per-group vs FP", "vit": "reproduced",
         "vit effect": "+0.02 [-0.08, +0.12]", "rssm": "reproduced", "rssm effect": "-0.04 [-0.14, +0.06]",
         "transfer": "transfers"},
        {"finding": "F5", "comparison": "RTN W4 encoder-only vs predictor-only", "vit": "not reproduced",
         "vit effect": "+0.00 [-0.10, +0.10]", "rssm": "not testable", "rssm effect": "-",
         "transfer": "not testable"}]  # a comparison one architecture lacks cannot transfer
    text = findings.transfer_markdown(table)
    assert text.startswith("2 comparisons, each judged on every architecture (1 transfers, 1 not testable);")
    assert text.count("\n| F") == 2


def test_a_gate_makes_every_verdict_not_testable_and_says_why():
    found = [made("F1a", "wall: W8", "reproduced"), made("F5", "wall: W4", "not reproduced")]
    assert findings.gated(found, None) == found
    gated = findings.gated(found, "its card's MPC success 62% is below 80%")
    assert [v.outcome for v in gated] == ["not testable"] * 2
    assert all(v.why == "not testable: its card's MPC success 62% is below 80%" for v in gated)
    assert [(v.effect, v.p) for v in gated] == [(v.effect, v.p) for v in found]  # the numbers stay shown


def test_holm_within_adjusts_the_architectures_as_one_table():
    w4 = verdicts.w4_loses_success(by_unit(successes((0, 45))), by_unit(FP), base(), comparison="wall: W4")
    w8 = verdicts.w8_close_to_fp(by_unit(successes((0, 58))), by_unit(FP), base(), comparison="wall: W8")
    w3 = verdicts.w3_breaks_planning(by_unit(successes((0, 57))), by_unit(FP), base(), comparison="wall: W3")
    both = findings.holm_within({"a": [w4, w8], "b": [w3]})
    flat = verdicts.holm_adjusted([w4, w8, w3])
    assert [v.comparison for v in both["a"]] == ["wall: W4", "wall: W8"] and len(both["b"]) == 1
    assert [v.p_adjusted for v in both["a"] + both["b"]] == [v.p_adjusted for v in flat]
    alone = verdicts.holm_adjusted([w4, w8])
    assert all(x.p_adjusted >= y.p_adjusted for x, y in zip(both["a"], alone))
    assert any(x.p_adjusted > y.p_adjusted for x, y in zip(both["a"], alone))
