"""Every verdict rule on constructed per-unit outcomes, for each of its outcomes (including "not testable")."""

import math

import numpy as np
import pandas as pd
import pytest

from wmqlib import verdicts as v
from wmqlib.multiplicity import holm
from wmqlib.validate import InvalidValue

N = 100


def units(*spans, n=N):
    """Outcomes over units 0..n-1: True on each half-open span (start, stop), False elsewhere."""
    out = np.zeros(n, dtype=bool)
    for start, stop in spans:
        out[start:stop] = True
    return pd.Series(out, index=pd.RangeIndex(n, name="episode_seed"))


FP = units((0, 60))          # 60%
BASE = units((0, 5))         # best trivial baseline 5%
BASELINES = {"no_action": units(), "straight_line": BASE}
WEAK_FP = units((0, 8))      # 3 units over the baseline: p 0.25, not decisive


def outcome(result):
    assert isinstance(result, v.Verdict)
    return result.outcome


def test_w8_close_to_fp_each_outcome():
    assert outcome(v.w8_close_to_fp(FP, FP, BASELINES)) == "reproduced"
    assert outcome(v.w8_close_to_fp(units((0, 30)), FP, BASELINES)) == "not reproduced"
    assert outcome(v.w8_close_to_fp(units((10, 66)), FP, BASELINES)) == "inconclusive"
    assert outcome(v.w8_close_to_fp(WEAK_FP, WEAK_FP, BASELINES)) == "not testable"
    ceiling = v.w8_close_to_fp(units((0, 98)), units((0, 100)), BASELINES)
    assert ceiling.outcome == "not testable" and "ceiling" in ceiling.why


def test_w4_loses_success_each_outcome():
    assert outcome(v.w4_loses_success(units((0, 30)), FP, BASELINES)) == "reproduced"
    assert outcome(v.w4_loses_success(FP, FP, BASELINES)) == "not reproduced"
    above = v.w4_loses_success(units((0, 80)), FP, BASELINES)
    assert above.outcome == "not reproduced" and "above" in above.why
    assert outcome(v.w4_loses_success(units((10, 66)), FP, BASELINES)) == "inconclusive"
    untestable = v.w4_loses_success(WEAK_FP, WEAK_FP, BASELINES)
    assert untestable.outcome == "not testable" and "baseline" in untestable.why


def test_w3_breaks_planning_each_outcome():
    assert outcome(v.w3_breaks_planning(units((0, 5)), FP, BASELINES)) == "reproduced"
    plans = v.w3_breaks_planning(units((0, 30)), FP, BASELINES)
    assert plans.outcome == "not reproduced" and "still plans" in plans.why
    assert outcome(v.w3_breaks_planning(FP, FP, BASELINES)) == "not reproduced"
    # FP 14% is decisively above the 5% baseline (9 units, p 2/512); W3 sits in between, decided neither way
    fp = units((0, 14))
    assert outcome(v.w3_breaks_planning(units((0, 5), (14, 18)), fp, BASELINES)) == "inconclusive"
    assert outcome(v.w3_breaks_planning(units((0, 5)), WEAK_FP, BASELINES)) == "not testable"


def test_within_margin_of_fp_each_outcome():
    assert outcome(v.within_margin_of_fp(FP, FP, BASELINES)) == "reproduced"
    below = v.within_margin_of_fp(units((0, 30)), FP, BASELINES)
    assert below.outcome == "not reproduced" and "below" in below.why
    assert outcome(v.within_margin_of_fp(units((10, 66)), FP, BASELINES)) == "inconclusive"
    assert outcome(v.within_margin_of_fp(WEAK_FP, WEAK_FP, BASELINES)) == "not testable"


def test_groups_stabilise_w4_each_outcome():
    assert outcome(v.groups_stabilise_w4(units((0, 50)), units((0, 20)), FP, BASELINES)) == "reproduced"
    assert outcome(v.groups_stabilise_w4(units((0, 40)), units((0, 40)), FP, BASELINES)) == "not reproduced"
    assert outcome(v.groups_stabilise_w4(units((0, 20)), units((0, 50)), FP, BASELINES)) == "not reproduced"
    assert outcome(v.groups_stabilise_w4(units((0, 30)), units((20, 54)), FP, BASELINES)) == "inconclusive"
    floor = v.groups_stabilise_w4(units((0, 3)), units((0, 2)), FP, BASELINES)
    assert floor.outcome == "not testable" and "floor" in floor.why


def test_groups_do_not_rescue_w3_each_outcome():
    assert outcome(v.groups_do_not_rescue_w3(units((0, 10)), units((0, 8)), FP, BASELINES)) == "reproduced"
    # per-group 32% vs per-channel 2%: a large recovery, but still 28 points below FP - not a rescue
    partial = v.groups_do_not_rescue_w3(units((0, 32)), units((0, 2)), FP, BASELINES)
    assert partial.outcome == "reproduced" and partial.effect == pytest.approx(-0.28)
    assert "per-group vs per-channel +30 points, 30 units gained vs 0 lost" in partial.why
    assert outcome(v.groups_do_not_rescue_w3(FP, units((0, 2)), FP, BASELINES)) == "not reproduced"  # back to FP
    # per-group 56% vs FP 60%: 6 gained, 10 lost - neither equivalent nor decisively below
    grouped = units((0, 50), (60, 66))
    assert outcome(v.groups_do_not_rescue_w3(grouped, grouped, FP, BASELINES)) == "inconclusive"
    assert outcome(v.groups_do_not_rescue_w3(units((0, 5)), units((0, 2)), WEAK_FP, BASELINES)) == "not testable"


def test_encoder_more_sensitive_each_outcome():
    assert outcome(v.encoder_more_sensitive(units((0, 10)), units((0, 50)), FP, BASELINES)) == "reproduced"
    assert outcome(v.encoder_more_sensitive(units((0, 40)), units((0, 40)), FP, BASELINES)) == "not reproduced"
    assert outcome(v.encoder_more_sensitive(units((0, 50)), units((0, 10)), FP, BASELINES)) == "not reproduced"
    assert outcome(v.encoder_more_sensitive(units((20, 54)), units((0, 30)), FP, BASELINES)) == "inconclusive"
    full = units((0, 100))
    assert outcome(v.encoder_more_sensitive(units((0, 98)), full, full, BASELINES)) == "not testable"


def test_per_token_no_benefit_each_outcome():
    same = units((0, 40))
    assert outcome(v.per_token_no_benefit({"W4A8": (same, same), "W8A8": (units((0, 20)), units((0, 50)))},
                                          FP, BASELINES)) == "reproduced"
    better = v.per_token_no_benefit({"W4A8": (same, same), "W4A4": (units((0, 50)), units((0, 20)))}, FP, BASELINES)
    assert better.outcome == "not reproduced" and "W4A4" in better.comparison and better.effect == pytest.approx(0.3)
    # one pair undecided (null result): not support
    assert outcome(v.per_token_no_benefit({"W4A8": (same, same), "W4A4": (units((0, 30)), units((20, 54)))},
                                          FP, BASELINES)) == "inconclusive"
    # 10 gained vs 2 lost: p = 2 * 79/4096 = 0.039 < 0.05 alone, but not below the Bonferroni 0.05 / 2
    gain = (units((0, 40)), units((10, 42)))
    assert outcome(v.per_token_no_benefit({"W4A4": gain}, FP, BASELINES)) == "not reproduced"
    assert outcome(v.per_token_no_benefit({"W4A4": gain, "W8A8": (same, same)}, FP, BASELINES)) == "inconclusive"
    floor = v.per_token_no_benefit({"W4A4": (units((0, 1)), units()), "W6A6": (units(), units())}, FP, BASELINES)
    assert floor.outcome == "not testable"
    assert outcome(v.per_token_no_benefit({"W4A8": (same, same)}, WEAK_FP, BASELINES)) == "not testable"


def test_baselines_broadcast_over_planner_seeds_and_units_must_match():
    index = pd.MultiIndex.from_product([[0, 1, 2], range(N)], names=["planner_seed", "episode_seed"])
    fp = pd.Series(np.tile(FP.to_numpy(), 3), index=index)
    w4 = pd.Series(np.tile(units((0, 30)).to_numpy(), 3), index=index)
    base = pd.Series(BASE.to_numpy(), index=pd.RangeIndex(N, name="episode_seed"))
    result = v.w4_loses_success(w4, fp, {"straight_line": base})
    # 90 discordant units, but 30 episodes each lost under all 3 seeds: the exact sign-flip test over episodes
    assert result.outcome == "reproduced" and result.p == pytest.approx(2 * 0.5**30)
    assert (result.episodes, result.units) == (N, 3 * N)
    with pytest.raises(InvalidValue, match="same units"):
        v.w4_loses_success(w4.iloc[:-1], fp, {"straight_line": base})
    with pytest.raises(InvalidValue, match="pd.Series"):
        v.w4_loses_success(w4.to_numpy(), fp, base)


def test_outcomes_selects_one_setting_by_unit():
    table = pd.DataFrame({"label": ["FP"] * 4 + ["W4"] * 4, "planner_seed": [0, 0, 1, 1] * 2,
                          "episode_seed": [5, 6] * 4, "success": [1, 1, 1, 0, 0, 1, 0, 0]})
    w4 = v.outcomes(table, ["planner_seed", "episode_seed"], label="W4")
    assert w4.tolist() == [0, 1, 0, 0] and w4.index.names == ["planner_seed", "episode_seed"]
    with pytest.raises(InvalidValue, match="repeat a unit"):
        v.outcomes(table, ["episode_seed"], label="W4")
    with pytest.raises(InvalidValue, match="no rows"):
        v.outcomes(table, ["episode_seed"], label="W2")


def test_verdict_table_columns_and_formatting():
    rows = [v.w4_loses_success(units((0, 30)), FP, BASELINES, comparison="RTN W4 vs FP"),
            v.w8_close_to_fp(FP, FP, BASELINES)]
    table = v.verdict_table(rows)
    assert list(table.columns) == ["finding", "comparison", "episodes", "effect", "p", "p equiv", "p Holm", "mde",
                                   "verdict", "why"]
    assert table["episodes"].tolist() == [str(N), str(N)] and table["p Holm"].tolist() == ["-", "-"]
    adjusted = v.verdict_table(v.holm_adjusted(rows))
    assert adjusted["p Holm"][0] == "3.7e-09"  # 2 tests: twice the smaller p
    assert table["effect"].tolist() == ["-30 [-40, -22] pts (95%)", "+0 [-4, +4] pts (95%)"]
    assert table["p equiv"][1] != "-" and float(table["p equiv"][1]) < 0.001  # W8 = FP: equivalent
    assert table["p"][0] == "1.9e-09"  # 2 * 0.5**30
    assert table["verdict"].tolist() == ["reproduced", "reproduced"]
    assert table["mde"][0].endswith(" pts")
    with pytest.raises(InvalidValue, match="outcome"):
        v.Verdict("F", "c", 0, 0, 0, 0.95, 1, 0.1, "maybe", "")


def test_outcomes_must_be_successes():
    counts = pd.Series(np.arange(N), index=FP.index)
    with pytest.raises(InvalidValue, match="per-unit successes"):
        v.w4_loses_success(counts, FP, BASELINES)


def _seeds(*per_seed):
    """One Series over (planner_seed, unit) from one Series per seed."""
    return pd.concat({seed: s for seed, s in enumerate(per_seed)}, names=["planner_seed"])


def test_planner_seeds_add_their_spread_but_the_episode_decides():
    fp = _seeds(FP, FP, FP)
    w4 = _seeds(units((0, 30)), units((0, 30)), units((0, 30)))
    held = v.with_strata(v.w4_loses_success, "planner_seed", w4, fp, BASELINES)
    assert held.outcome == "reproduced" and held.why.endswith("spread over 3 planner_seeds (each alone): 3 reproduced")
    assert (held.episodes, held.units) == (N, 3 * N)
    one_seed_off = _seeds(units((0, 30)), units((0, 30)), FP)  # the third seed: W4 equivalent to FP
    split = v.with_strata(v.w4_loses_success, "planner_seed", one_seed_off, fp, BASELINES)
    assert split.outcome == v.w4_loses_success(one_seed_off, fp, BASELINES).outcome == "reproduced"
    assert "2 reproduced, 1 not reproduced" in split.why
    # 30 episodes each lost under 2 of 3 seeds: the sign-flip test over episodes, not 60 pooled units
    assert split.p == pytest.approx(2 * 0.5**30)
    weak = _seeds(units((0, 7)), units((0, 7)))  # FP 2 episodes over the baseline (twice): p 0.5, not testable
    assert v.with_strata(v.w4_loses_success, "planner_seed", weak, weak, BASELINES).outcome == "not testable"
    # Series inside mappings and tuples are split too
    pairs = {"W4A4": (_seeds(FP, FP), _seeds(FP, FP))}
    assert v.with_strata(v.per_token_no_benefit, "planner_seed", pairs, _seeds(FP, FP), BASELINES).outcome == \
        "reproduced"
    with pytest.raises(InvalidValue, match="planner_seed"):
        v.with_strata(v.w4_loses_success, "planner_seed", FP, FP, BASELINES)


def test_repeated_episodes_widen_the_interval_and_the_mde():
    once = v.w4_loses_success(units((12, 60)), FP, BASELINES)
    thrice = v.w4_loses_success(_seeds(units((12, 60)), units((12, 60)), units((12, 60))), _seeds(FP, FP, FP),
                                BASELINES)
    assert thrice.effect == once.effect and thrice.p == once.p  # the same 100 episodes: no new evidence
    assert thrice.ci_high - thrice.ci_low >= once.ci_high - once.ci_low - 1e-9
    assert thrice.mde >= once.mde - 1e-9


def test_holm_decides_each_way():
    # one table of 3: W4 losing 12 of FP's episodes (raw p 2 / 2^12, adjusted 3 times that) stays reproduced; W4
    # losing 6 (raw p 2 / 2^6 = 0.031) passes alpha alone but not after Holm (2 x 0.031): inconclusive; a noisy
    # pair (14 lost, 6 gained: p 2 P(Bin(20, 1/2) <= 6)) decides nothing either way
    strong = v.w4_loses_success(units((12, 60)), FP, BASELINES, comparison="strong")
    weak = v.w4_loses_success(units((6, 60)), FP, BASELINES, comparison="weak")
    noise = v.w4_loses_success(units((14, 66)), FP, BASELINES, comparison="noise")
    p_noise = 2 * sum(math.comb(20, k) for k in range(7)) / 2**20
    assert weak.outcome == "reproduced" and weak.p == pytest.approx(2 * 0.5**6)
    assert noise.p == pytest.approx(p_noise) and noise.outcome == "inconclusive"
    assert all(x.p_equivalence > x.p for x in (strong, weak, noise))  # Holm takes the difference p here
    table = v.holm_adjusted([strong, weak, noise])
    assert [t.p_adjusted for t in table] == pytest.approx([3 * 2 * 0.5**12, 2 * 2 * 0.5**6, p_noise])
    assert [t.outcome for t in table] == ["reproduced", "inconclusive", "inconclusive"]
    assert [t.p for t in table] == [strong.p, weak.p, noise.p]  # the raw p stays
    assert table[1].level > 0.95  # judged again at the stricter level alpha * p / p_adjusted
    alone = v.holm_adjusted([weak])  # a family of one: nothing to adjust
    assert alone[0].outcome == "reproduced" and alone[0].p_adjusted == weak.p
    with pytest.raises(InvalidValue, match="from a rule"):
        v.holm_adjusted([v.Verdict("F", "c", 0, 0, 0, 0.95, 0.5, 0.1, "inconclusive", "")])


def test_holm_adjusts_an_equivalence_claim_by_its_tost_p():
    close = v.w8_close_to_fp(units((0, 58)), FP, BASELINES, comparison="W8")  # 2 lost of 100: equivalent
    assert close.outcome == "reproduced" and close.p_equivalence < 0.05 < close.p
    others = [v.w4_loses_success(units((k, 60)), FP, BASELINES) for k in (12, 30, 40)]
    family = v.holm_adjusted([close] + others)
    smaller = [min(x.p, x.p_equivalence) for x in [close] + others]
    assert smaller[0] == close.p_equivalence
    assert [x.p_adjusted for x in family] == pytest.approx(list(holm(smaller)))
    assert family[0].outcome == ("reproduced" if family[0].p_adjusted < 0.05 else "inconclusive")
    assert family[0].p_adjusted >= close.p_equivalence  # never below its own TOST p


@pytest.mark.parametrize("seed", range(6))
def test_holm_only_ever_takes_a_decision_back(seed):
    """Judged again at a stricter level, a verdict keeps its outcome or becomes inconclusive: testability and the
    conditions that argue against a claim stay at alpha, so no claim gets easier (e.g. "W3 still plans")."""
    rng = np.random.default_rng(seed)
    rules = [v.w8_close_to_fp, v.w4_loses_success, v.w3_breaks_planning, v.within_margin_of_fp,
             v.encoder_more_sensitive, v.groups_do_not_rescue_w3, v.fp_beats_baselines]
    found = []
    for rule in rules * 3:
        x, y = (pd.Series(rng.random(N) < rng.uniform(0.05, 0.7), index=FP.index) for _ in range(2))
        args = (x, BASELINES) if rule is v.fp_beats_baselines else (x, y, FP, BASELINES) \
            if rule in (v.encoder_more_sensitive, v.groups_do_not_rescue_w3) else (x, FP, BASELINES)
        found.append(rule(*args))
    for raw, adjusted in zip(found, v.holm_adjusted(found)):
        assert adjusted.outcome in (raw.outcome, "inconclusive"), (raw, adjusted)
        assert (raw.outcome == "not testable") == (adjusted.outcome == "not testable")


def test_common_restricts_to_shared_units():
    index = pd.MultiIndex.from_product([[0, 1, 2], [1, 100, 199]], names=["planner_seed", "episode_seed"])
    fp = pd.Series([True, False, True] * 3, index=index)
    one_seed = pd.Series([False, False, True], index=index[:3])
    a, b = v.common(fp, one_seed)
    assert list(a.index) == list(one_seed.index) and list(a) == [True, False, True]
    with pytest.raises(InvalidValue, match="share no unit"):
        v.common(fp, pd.Series([True], index=pd.MultiIndex.from_tuples([(9, 9)], names=index.names)))


def _units(values):
    return pd.Series(np.asarray(values, dtype=bool), index=pd.Index(range(len(values)), name="episode_seed"))


def test_fp_beats_baselines_every_outcome():
    n = 40
    fp = _units([True] * 30 + [False] * 10)
    none = _units([False] * n)
    assert v.fp_beats_baselines(fp, {"no_action": none}).outcome == "reproduced"
    assert v.fp_beats_baselines(fp, {"no_action": none, "line": fp}).outcome == "not reproduced"  # equal to a baseline
    above = _units([True] * 38 + [False] * 2)
    assert v.fp_beats_baselines(_units([False] * 20 + [True] * 20), {"line": above}).outcome == "not reproduced"
    close = _units([True] * 26 + [False] * 14)  # 4 points below FP: neither decisive nor equivalent at n = 40
    shuffled = _units([True] * 22 + [False] * 4 + [True] * 4 + [False] * 10)
    assert v.fp_beats_baselines(shuffled, {"line": close}).outcome == "inconclusive"


def test_baselines_of_a_key_fp_are_read_on_the_compared_episodes():
    fp = pd.Series([True] * 20, index=pd.Index(range(20), name="episode_seed"))
    q = pd.Series([False] * 20, index=fp.index)
    wider = pd.Series([False] * 20 + [True] * 40, index=pd.Index(range(60), name="episode_seed"))  # 60 episodes
    out = v.w4_loses_success(q, fp, {"none": wider}, comparison="W4 vs FP")
    assert out.outcome == "reproduced" and out.episodes == 20  # the baseline's other 40 episodes do not count
    lost = wider.copy()
    lost.index = pd.Index(range(40, 100), name="episode_seed")  # misses the compared episodes: refused
    with pytest.raises(InvalidValue, match="does not hold the same units"):
        v.w4_loses_success(q, fp, {"none": lost}, comparison="W4 vs FP")
