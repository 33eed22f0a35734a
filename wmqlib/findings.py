"""Each notebook's findings: the settings of its tidy table paired with the verdict rules of ``wmqlib.verdicts``.

    found = granularity_verdicts(runs, longest, baselines)          # 01: the rule each setting meets
    best, found = rescue_verdicts(runs, baselines, ["W4"], methods, margin=0.1)  # 04: cheapest within the margin
    print(report(found))                                            # the table a notebook ends with, and why

A unit is one (planner seed, episode) pair (``wmqlib.study.UNITS``) and the episode is the unit of inference:
``units`` selects one setting's outcomes from a table, ``judge`` applies a rule on the units its settings share
(tests clustered by episode) and adds the planner seeds' spread (``verdicts.with_strata``). Each function below
returns one notebook's family of verdicts, Holm-adjusted within it (``verdicts.holm_adjusted``). ``baselines`` is
per env the trivial baselines' outcomes on the FP setting's episodes (``study.baseline_outcomes``). What is decided
here, by name:

- the rule a weight-only setting meets, by its weight bits (``W_BITS_RULES``: W8 close to FP, W4 loses success,
  W3 breaks planning; other widths have no finding), and the rule of a per-group / per-channel pair (``GROUP_RULES``);
- the cheapest method within the margin of FP (``cheapest``): methods in order of cost, the first that rule R
  (``verdicts.within_margin_of_fp``, ``cheapest_within_margin``) reproduces after the Holm adjustment; "none" when
  no method does, "not testable" when none can be tested;
- whether a finding transfers across architectures (``transfers``, notebook 05): the same decided outcome on every
  architecture transfers, different decided outcomes do not, an inconclusive one leaves it undecided and a
  not-testable one (or a checkpoint below its card's planning bar, ``gated``) makes it not testable.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from wmqlib import verdicts
from wmqlib.caches import CACHES, Caches
from wmqlib.episode_verdicts import iterations_repair, loss_misaligned, loss_stalls
from wmqlib.setting import Setting
from wmqlib.study import UNITS, baseline_outcomes, describe, loss_drop, per_episode, result_key
from wmqlib.validate import InvalidValue
from wmqlib.verdicts import Verdict

Baselines = Mapping[str, Mapping[str, pd.Series]]  # env -> trivial baseline -> outcomes by episode seed
W_BITS_RULES: dict[int, Callable[..., Verdict]] = {
    8: verdicts.w8_close_to_fp, 4: verdicts.w4_loses_success, 3: verdicts.w3_breaks_planning}
GROUP_RULES: dict[int, Callable[..., Verdict]] = {4: verdicts.groups_stabilise_w4, 3: verdicts.groups_do_not_rescue_w3}
# the paper on more planning iterations (F4): errors of a quantized predictor are partly repaired, of an encoder not
SCOPE_CLAIMS = {"predictor": "repaired", "encoder": "irreversible"}


def units(frame: pd.DataFrame, value: str = "success", **match: Any) -> pd.Series:
    """``verdicts.outcomes`` by ``UNITS``: the ``value`` column of the one setting whose columns equal ``match``."""
    return verdicts.outcomes(frame, UNITS, value=value, **match)


def judge(rule: Callable[..., Verdict], comparison: str, *series: pd.Series, **kwargs: Any) -> Verdict:
    """``rule`` on the units all its settings share (``verdicts.common``), with the planner seeds' spread
    (``verdicts.with_strata``)."""
    return verdicts.with_strata(rule, "planner_seed", *verdicts.common(*series), comparison=comparison, **kwargs)


def baselines_of(settings: Mapping[str, Setting], results: str | None = None, caches: Caches = CACHES,
                 recompute: bool = False) -> dict[str, dict[str, pd.Series]]:
    """Per env, ``study.baseline_outcomes`` of its setting (the FP reference: the episodes every setting shares),
    cached in the sweep ``results`` when given (``recompute``: computed again)."""
    return {env: baseline_outcomes(s, caches, results, recompute) for env, s in settings.items()}


def report(found: Sequence[Verdict]) -> str:
    """``verdicts.verdict_table`` without its why column, then "why:" and one line per verdict."""
    table = verdicts.verdict_table(found)
    return f"{table.drop(columns='why').to_string(index=False)}\n\n{why(found)}"


def why(found: Sequence[Verdict]) -> str:
    """"why:" and, per verdict, "  <comparison>: <outcome> - <why>"."""
    return "why:\n" + "\n".join(f"  {v.comparison}: {v.outcome} - {v.why}" for v in found)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a GitHub markdown table (header, separator, one line per row; "|" in cells escaped)."""
    lines = ["| " + " | ".join(_cell(c) for c in frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def markdown(found: Sequence[Verdict], decided: pd.DataFrame | None = None) -> str:
    """A notebook's findings for the README (``wmqlib.readme``): the count of each outcome, ``decided`` (a table of
    what the verdicts decided, e.g. 04's cheapest method) when given, then the verdict table without its why
    column. Every number in it is the verdicts' own."""
    table = verdicts.verdict_table(found)
    counts = ", ".join(f"{n} {o}" for o in verdicts.OUTCOMES if (n := int((table["verdict"] == o).sum())))
    episodes = sorted(set(table["episodes"]))
    parts = [f"{len(table)} verdicts ({counts}); episodes per comparison: {', '.join(episodes)}; each decided on "
             f"its Holm-adjusted p within this table."]
    if decided is not None:
        parts.append(markdown_table(decided))
    parts.append(markdown_table(table.drop(columns="why")))
    return "\n\n".join(parts)


# ----- 00: FP against the trivial baselines ------------------------------------------------------------------------

def fp_verdicts(table: pd.DataFrame, settings: Sequence[Setting], budget: Mapping[str, int],
                results: str | None = None, caches: Caches = CACHES) -> list[Verdict]:
    """F0 (``verdicts.fp_beats_baselines``) for each FP setting of ``table`` (traced CEM runs), read at its env's
    ``budget`` (or its own iterations when fewer), against the baselines on its episodes; in the order given."""
    found = []
    for s in settings:
        env = caches.resolved(s).env
        k, search = min(budget[env], s.planner.opt_steps), describe(s)["search"]
        fp = units(per_episode(table, k), env=env, search=search, **{"planner.opt_steps": s.planner.opt_steps})
        found.append(verdicts.fp_beats_baselines(fp, baseline_outcomes(s, caches, results),
                                                 comparison=f"{env}: FP {search} {k} it vs best baseline"))
    return verdicts.holm_adjusted(found)


# ----- 01: granularity -------------------------------------------------------------------------------------------

def granularity_verdicts(runs: pd.DataFrame, longest: pd.DataFrame, baselines: Baselines) -> list[Verdict]:
    """Per env of ``baselines``: every weight-only setting of ``runs`` against FP by the rule of its weight bits
    (``W_BITS_RULES``), every per-group / per-channel pair of one method, configuration and width by ``GROUP_RULES``,
    then F3 over the per-token / per-tensor pairs of ``longest`` (weight + activation settings at their longest
    budget), against FP's units of the first pair."""
    found = []
    for env, base in baselines.items():
        fp = units(runs, env=env, method="FP")
        wo = runs[(runs["env"] == env) & (runs["a_bits"] == 16) & (runs["method"] != "FP")]
        at = {label: units(wo, label=label) for label in wo["label"].unique()}
        meta = wo.drop_duplicates("label").set_index("label")
        for label, x in at.items():
            rule = W_BITS_RULES.get(int(meta.loc[label, "w_bits"]))
            if rule is not None:
                found.append(judge(rule, f"{env}: {label} vs FP", x, fp, baselines=base))
        pairs = meta.reset_index().pivot_table(index=["method", "configuration", "w_bits"], columns="w_kind",
                                               values="label", aggfunc="first").dropna()
        for (_, _, b), row in pairs.iterrows():
            rule = GROUP_RULES.get(int(b))
            if rule is not None:
                versus = f"FP (rescue of {row['per-channel']})" if rule is verdicts.groups_do_not_rescue_w3 \
                    else row["per-channel"]  # the rule's key comparison
                found.append(judge(rule, f"{env}: {row['per-group']} vs {versus}", at[row["per-group"]],
                                   at[row["per-channel"]], fp, baselines=base))
        wa = longest[longest["env"] == env]
        tensor_token = wa.pivot_table(index=["method", "configuration", "bits"], columns="acts", values="label",
                                      aggfunc="first").dropna()
        act_pairs = {f"{env}: {m} {b}{' (QuantWM)' if c == 'QuantWM' else ''}": verdicts.common(
                     units(wa, label=row["per-token"]), units(wa, label=row["per-tensor"]))
                     for (m, c, b), row in tensor_token.iterrows()}
        if act_pairs:
            fp0 = verdicts.common(fp, next(iter(act_pairs.values()))[0])[0]
            found.append(verdicts.per_token_no_benefit(act_pairs, fp0, base))
    return verdicts.holm_adjusted(found)


# ----- 02 and 03: encoder vs predictor, MPC rounds, the objective ---------------------------------------------------

def round_verdicts(mpc: pd.DataFrame, fp: Mapping[str, Any], settings: Mapping[str, tuple[Mapping[str, Any], str]],
                   base: Mapping[str, pd.Series]) -> list[Verdict]:
    """F4 as an interaction (``episode_verdicts.iterations_repair``) for each of ``settings`` (comparison name ->
    (the columns that select it in ``mpc``, one env's per-round MPC table; the paper's claim for it, "repaired" or
    "irreversible")): the change of its per-episode deficit to FP (selected by ``fp``) from round 1 to the last."""
    if not settings:
        return []
    last = int(mpc["round"].max())
    fp_first, fp_last = (units(mpc, round=r, **fp) for r in (1, last))
    found = []
    for name, (match, claim) in settings.items():
        q_first, q_last = (units(mpc, round=r, **match) for r in (1, last))
        found.append(iterations_repair(*verdicts.common(fp_first, q_first, fp_last, q_last), base, claim,
                                       comparison=f"{name} deficit round {last} vs 1"))
    return found


def scope_verdicts(runs: pd.DataFrame, rounds: pd.DataFrame, baselines: Baselines, method: str,
                   bits: Sequence[int], round_bits: Sequence[int]) -> list[Verdict]:
    """Per env: F5 (encoder more sensitive) at each of ``bits``, then F4 for each scope at each of ``round_bits``
    (the paper's claim per scope: ``SCOPE_CLAIMS``)."""
    found = []
    for env, base in baselines.items():
        fp = units(runs, env=env, method="FP")
        for b in bits:
            enc, pred = (units(runs, env=env, w_bits=b, scope=scope) for scope in ("encoder", "predictor"))
            found.append(judge(verdicts.encoder_more_sensitive, f"{env}: {method} W{b} encoder-only vs predictor-only",
                               enc, pred, fp, baselines=base))
        low = {f"{env}: W{b} {scope}-only": ({"w_bits": b, "scope": scope}, SCOPE_CLAIMS[scope])
               for b in round_bits for scope in ("encoder", "predictor")}
        found += round_verdicts(rounds[rounds["env"] == env], {"method": "FP"}, low, base)
    return verdicts.holm_adjusted(found)


def misalignment_verdicts(alignment: pd.DataFrame, drops: pd.DataFrame, final: pd.DataFrame, rounds: pd.DataFrame,
                          baselines: Baselines, low: str, round_bits: Sequence[int]) -> list[Verdict]:
    """Per env: F6 within episodes (``episode_verdicts.loss_misaligned``: the per-episode rho of ``alignment``,
    ``study.alignment_table``, of the ``low`` bits label against FP's, with FP's successes in ``final`` for
    testability), F6 over iterations (``episode_verdicts.loss_stalls``: the per-episode loss drop of ``drops``,
    ``study.loss_drop`` by env and bits, ``low`` against FP on their common episodes), then F4 for the whole model
    at each of ``round_bits`` (the paper's claim at low bits: "irreversible")."""
    found = []
    for env, base in baselines.items():
        fp = units(final, env=env, bits="FP")
        at = alignment[alignment["env"] == env].set_index("episode_seed")
        q_rho, fp_rho = (at.loc[at["bits"] == bits, "rho"].sort_index() for bits in (low, "FP"))
        found.append(loss_misaligned(q_rho, fp_rho, fp, base,
                                     comparison=f"{env}: rho(loss, outcome) within episodes {low} - FP"))
        at = drops[drops["env"] == env].set_index("episode_seed")
        q_drop, fp_drop = verdicts.common(*(at.loc[at["bits"] == bits, "loss_drop"] for bits in (low, "FP")))
        found.append(loss_stalls(q_drop, fp_drop, fp, base,
                                 comparison=f"{env}: loss drop over CEM iterations {low} - FP"))
        found += round_verdicts(rounds[rounds["env"] == env], {"bits": "FP"},
                                {f"{env}: W{b}": ({"bits": f"W{b}A16"}, "irreversible") for b in round_bits}, base)
    return verdicts.holm_adjusted(found)


# ----- 04: rescuing low bits ---------------------------------------------------------------------------------------

def cheapest_within_margin(candidates: Mapping[str, pd.Series], fp: pd.Series, base: Mapping[str, pd.Series],
                           margin: float, comparison: str = "{method} vs FP") -> list[Verdict]:
    """Rule R (``verdicts.within_margin_of_fp``) for each of ``candidates`` (method -> its per-unit outcomes, in
    order of cost) on the units it shares with ``fp`` (``judge``), named by ``comparison`` with the method."""
    return [judge(verdicts.within_margin_of_fp, comparison.format(method=method), *verdicts.common(x, fp),
                  baselines=base, margin=margin) for method, x in candidates.items()]


def cheapest(judged: Sequence[Verdict], methods: Sequence[str]) -> str:
    """The first of ``methods`` (in order of cost) whose verdict in ``judged`` (aligned) is reproduced; "none" when
    none is, "not testable" when every verdict is not testable."""
    if judged and all(v.outcome == "not testable" for v in judged):
        return "not testable"
    return next((m for m, v in zip(methods, judged) if v.outcome == "reproduced"), "none")


def rescue_verdicts(runs: pd.DataFrame, baselines: Baselines, bits: Sequence[str], methods: Sequence[str],
                    margin: float) -> tuple[pd.DataFrame, list[Verdict]]:
    """Per env and bits label ("W4", "W4A4"): rule R for each of the ``methods`` (in order of cost) that ``runs``
    holds at those bits, Holm-adjusted over all of them, and the cheapest method it reproduces (``cheapest``).
    Returns the table (env, bits, cheapest within margin) and every verdict."""
    cells, found = [], []
    for env, base in baselines.items():
        fp = units(runs, env=env, method="FP")
        for b in bits:
            at = runs[(runs["env"] == env) & (runs["bits"] == b)]
            candidates = {m: units(at, method=m) for m in methods if (at["method"] == m).any()}
            cells.append((env, b, list(candidates)))
            found += cheapest_within_margin(candidates, fp, base, margin, comparison=f"{env}: {{method}} {b} vs FP")
    found = verdicts.holm_adjusted(found)
    best, start = [], 0
    for env, b, names in cells:
        best.append({"env": env, "bits": b, "cheapest within margin": cheapest(found[start:start + len(names)], names)})
        start += len(names)
    return pd.DataFrame(best), found


# ----- 05: do the findings transfer to another architecture? ---------------------------------------------------------

# outcomes of one comparison on two or more architectures -> whether the finding transfers (``transfers``)
TRANSFERS = ("transfers", "does not transfer", "undecided", "not testable")
GROUP_SIZE = re.compile(r"\bg\d+\b")  # a weight group size in a label ("g32")


def architecture_verdicts(table: pd.DataFrame, parts: Mapping[str, Sequence[Setting]], alignment: pd.DataFrame,
                          baselines: Baselines, budget: Mapping[str, int], method: str, bits: Sequence[int],
                          scope_round_bits: Sequence[int], loss_round_bits: Sequence[int],
                          caches: Caches = CACHES) -> list[Verdict]:
    """One checkpoint's verdicts of 01's weight-only findings, 02's and 03's, each read from the rows of ``table``
    (``study.run_study``) that its part's settings gave (``parts``: "granularity" | "scope" | "misalignment" ->
    settings, ``designs.architecture_transfer``'s parts of one checkpoint), exactly as those notebooks read theirs;
    ``alignment``: ``study.alignment_table`` of its misalignment part. Not adjusted: the caller adjusts the whole
    table (``verdicts.holm_adjusted``)."""
    def rows(part: str) -> pd.DataFrame:
        keys = {result_key(s, caches) for s in parts[part]}
        return table[table["config_key"].isin(keys)]

    weight = rows("granularity")
    acts = weight[weight["a_bits"] < 16]
    found = granularity_verdicts(per_episode(weight, budget), per_episode(acts) if len(acts) else acts, baselines)
    scoped = rows("scope")
    found += scope_verdicts(per_episode(scoped[scoped["planning"] == "CEM"], budget),
                            scoped[scoped["planning"] == "MPC-CEM"].astype({"round": int}), baselines, method, bits,
                            scope_round_bits)
    whole = rows("misalignment")
    open_loop = whole[whole["planning"] == "CEM"]
    found += misalignment_verdicts(alignment, loss_drop(open_loop, ["env", "bits"]), per_episode(open_loop, budget),
                                   whole[whole["planning"] == "MPC-CEM"].astype({"round": int}), baselines,
                                   f"W{min(bits)}A16", loss_round_bits)
    return found


def holm_within(found: Mapping[str, Sequence[Verdict]]) -> dict[str, list[Verdict]]:
    """The verdicts of every name of ``found`` (e.g. per architecture) Holm-adjusted as one table
    (``verdicts.holm_adjusted``), returned under their names in their order."""
    flat = verdicts.holm_adjusted([v for judged in found.values() for v in judged])
    out, start = {}, 0
    for name, judged in found.items():
        out[name], start = flat[start:start + len(judged)], start + len(judged)
    return out


def gated(found: Sequence[Verdict], reason: str | None) -> list[Verdict]:
    """``found`` as it is when ``reason`` is None, else every verdict "not testable" because of ``reason`` (e.g.
    ``card.planning_gate``'s: the model does not plan well enough for its findings to count)."""
    if reason is None:
        return list(found)
    return [dataclasses.replace(v, outcome="not testable", why=f"not testable: {reason}") for v in found]


def transfers(outcomes: Sequence[str]) -> str:
    """Whether one comparison's finding transfers across architectures, from its outcome on each
    (``verdicts.OUTCOMES``): "not testable" when any is; "undecided" when any is inconclusive; "transfers" when every
    decided outcome is the same (reproduced everywhere, or not reproduced everywhere); else "does not transfer"."""
    unknown = sorted(set(outcomes) - set(verdicts.OUTCOMES))
    if unknown or not outcomes:
        raise InvalidValue(f"transfers: outcomes must be some of {list(verdicts.OUTCOMES)}, got {list(outcomes)}")
    if "not testable" in outcomes:
        return "not testable"
    if "inconclusive" in outcomes:
        return "undecided"
    return "transfers" if len(set(outcomes)) == 1 else "does not transfer"


def transfer_table(found: Mapping[str, Sequence[Verdict]]) -> pd.DataFrame:
    """One row per finding and comparison (its "<env>: " prefix dropped and a group size "g32" read "per-group": each
    architecture groups by its own width, ``profiles.group_size_for``, so their comparisons meet):
    finding, comparison, per architecture of ``found`` (name -> its verdicts) its outcome and effect "+0.12 [+0.02,
    +0.22]" (p_adjusted in the verdict tables), then ``transfer`` (``transfers``). A comparison missing on an
    architecture reads "not testable" there."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for name, judged in found.items():
        for v in judged:
            comparison = GROUP_SIZE.sub("per-group", v.comparison.split(": ", 1)[-1])
            row = rows.setdefault((v.finding, comparison), {"finding": v.finding, "comparison": comparison})
            row[name] = v.outcome
            row[f"{name} effect"] = f"{v.effect:+.2f} [{v.ci_low:+.2f}, {v.ci_high:+.2f}]"
    table = pd.DataFrame(list(rows.values()))
    for name in found:
        table[name] = table[name].fillna("not testable") if name in table else "not testable"
        table[f"{name} effect"] = table[f"{name} effect"].fillna("-") if f"{name} effect" in table else "-"
    table["transfer"] = [transfers([row[name] for name in found]) for _, row in table.iterrows()]
    return table[["finding", "comparison", *[c for name in found for c in (name, f"{name} effect")], "transfer"]]


def transfer_markdown(transfer: pd.DataFrame) -> str:
    """05's findings for the README: the count of each ``transfer`` outcome, then ``transfer_table``'s table."""
    counts = ", ".join(f"{n} {o}" for o in TRANSFERS if (n := int((transfer["transfer"] == o).sum())))
    return (f"{len(transfer)} comparisons, each judged on every architecture ({counts}); the verdicts decided on "
            f"their Holm-adjusted p within this table.\n\n{markdown_table(transfer)}")
