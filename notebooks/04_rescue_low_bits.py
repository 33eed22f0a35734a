# %% [markdown] tags=[]
# # 04 Rescue: what brings W4 and W3 planning back to FP?
#
# **Question.** Notebooks 01-03 describe the damage: on the shipped Wall model uniform weight-only RTN at W4 and W3
# loses planning success decisively. The paper and its follow-up ("Where Bits Matter in World-Model Planning",
# arXiv 2602.11882: DINO-WM on Wall, weight-only RTN) stop there. This notebook tries the methods nobody has tried on
# a world model that plans, at the same bit widths, on the same episodes and planner draws:
#
# - **GPTQ** (`wmqlib.quant.GPTQ`): weights rounded column by column, each rounding error compensated on the columns
#   not yet rounded, using the Hessian of the layer's inputs from the same FP-planning calibration the other methods
#   use;
# - **rotations** (`rotation="hadamard"` on RTN or GPTQ, QuaRot-style): every quantized linear's input is multiplied
#   by a randomised Hadamard matrix R online and its weight by R (W x = (W R)(R^T x) with R orthogonal), so the FP
#   model is unchanged while outlier channels are spread over all channels before rounding;
# - **sensitivity-driven mixed precision** (`wmqlib.quant.mixed`): each linear quantized alone at 2, 3 and 4 bits,
#   its effect on the planning objective of candidate plans on calibration episodes measured, and bits spent where
#   that effect is largest, at the SAME parameter-weighted average bits as the uniform setting;
# - **QAT** (`wmqlib.qat`): a short quantization-aware fine-tune (straight-through rounding, learned LSQ step sizes)
#   on DINO-WM's own latent-prediction loss; the shipped `*-qat-w4` / `*-qat-w3` checkpoints hold its weights on the
#   learned grid, so planning with them as they are IS the quantized model.
#
# And it asks the paper's stated limitation: **does success depend on the calibration** (its horizon in MPC rounds,
# its number of episodes, its source)?
#
# Every comparison is paired (same episodes, same planner draws): exact McNemar, the paired difference with its 95%
# Tango interval, and the equivalence test (TOST, 10 points) for "within 10 points of FP". The Wall settings of the
# methods run with every planner seed of the profile and a verdict must hold for every seed. PushT is run too, but
# its FP model plans few episodes (see 00), so most of its cells are *not testable*.

# %% tags=["parameters"]
checkpoint = ["mini-wall", "mini-pusht"]  # shipped model names or wmq checkpoint folders, one per environment
device = "auto"            # "auto" (CUDA when available), "cpu", "cuda"
profile = "full"           # "full": the study sized for 2 CPU cores; "paper": DINO-WM protocol (GPU); "smoke": tiny
executor = None            # None: settings run here, one after another; "local:N" or "dask://HOST:PORT" (README)
n_evals = None             # evaluation episodes per setting; None: from the profile (full 50, smoke 3)
seed = 99                  # episode seed (DINO-WM protocol)
opt_steps = None           # CEM iterations (the budget); None: from the profile (full 10)
planner_seeds = None       # planner seeds; None: from the profile (full 0, 1, 2; smoke 0, 1)
seeded_envs = ["wall"]     # envs whose method settings run every planner seed (PushT's FP sits near the floor)
rescue_bits = [4, 3]       # weight-only bit widths (per channel) every method is tried at
methods = ["RTN", "RTN+hadamard", "GPTQ", "GPTQ+hadamard", "mixed", "QAT"]  # in order of cost
act_bits = [[4, 4]]        # [weight, activation] bits of the weight + activation rows (per-token activations) ...
act_methods = ["RTN", "RTN+hadamard", "GPTQ+hadamard"]  # ... with these methods
mixed_choices = [2, 3, 4, 8]  # bit widths the allocator may give a linear (its budget: each of rescue_bits)
sensitivity_sequences = None  # candidate plans per calibration episode scored for the sensitivity; None: the
                           # profile's CEM samples (then they are exactly CEM's first iteration of the calibration run)
qat_checkpoints = {"wall": "mini-wall-qat-w{bits}", "pusht": "mini-pusht-qat-w{bits}"}  # env -> QAT checkpoint
calib_envs = ["wall"]      # envs of the calibration-sensitivity panel
calib_methods = [["GPTQ", 4, None], ["AWQ", 4, None], ["SmoothQuant", 4, 8]]  # [method, w bits, a bits (per tensor)]
calib_rounds = [1, 5]      # calibration horizons (MPC rounds) tried besides the protocol's 2 ...
calib_episodes = [3, 25]   # ... numbers of calibration episodes besides the profile's ...
calib_sources = ["dataset", "random"]  # ... and sources besides FP planning ("planning")
margin = 0.10              # "within this many points of FP" (equivalence margin of the closing table)
figures_dir = "../figures"  # where plots.savefig writes <notebook>__<panel>.png/.pdf
results_name = "study"     # results cache: data/results/<results_name>-<profile>/ (shared by all notebooks)
recompute = False          # True: rerun every setting instead of reading the cache (smoke always recomputes)
samplers = {"pusht": "scripted"}  # env -> episode sampler ({}: the env's default; see 00)

# %% tags=["injected-parameters"]
# Parameters
profile = "full"
device = "auto"


# %% tags=[]
import dataclasses
import json
import time

import matplotlib.pyplot as plt
import pandas as pd

from wmqlib import plots, stats, verdicts
from wmqlib import study as st
from wmqlib.caches import CACHES
from wmqlib.mixed_study import sensitivity_for
from wmqlib.paths import RESULTS_DIR
from wmqlib.quant import PerToken, RTN, quantize
from wmqlib.quant.mixed import allocate_bits, average_bits, mixed_overrides
from wmqlib.sweep import config_key, sweep
from wmqlib.validate import atomic_write, check_choice

started = time.perf_counter()
S = st.setup(profile, checkpoint, device, seed, results_name, recompute, samplers, n_evals=n_evals,
             opt_steps=opt_steps, planner_seeds=planner_seeds)
P = S.profile
plots.set_style()
for m in methods + act_methods:
    check_choice("methods entry", m, ["RTN", "RTN+hadamard", "GPTQ", "GPTQ+hadamard", "mixed", "QAT"])


def recipe(method, w_bits, a_bits=None):
    """A per-channel recipe from a name like "GPTQ+hadamard" (the method, then an optional rotation)."""
    name, _, rotation = method.partition("+")
    r = P.recipe(name, w_bits, "per-channel", a_bits=a_bits, a_granularity=None if a_bits is None else "per-token")
    return dataclasses.replace(r, rotation=rotation) if rotation else r


# FP and RTN per channel as traced long in 01 (the same runs: a trace's iteration k is the k-iteration plan)
fp_settings = {env: S.setting(ck, long=True) for ck, env in zip(S.checkpoints, S.envs)}
seeds = {env: P.planner_seeds if env in seeded_envs else P.planner_seeds[:1] for env in S.envs}


# %% [markdown] tags=[]
# ## Sensitivity: which layers the planning objective feels
#
# For every quantized linear alone at 2, 3 and 4 bits (RTN, per channel; `wmqlib.quant.mixed.layer_sensitivity`):
# how much the planning objective of CEM's first-iteration candidate plans on the calibration episodes changes, in
# the part that can reorder an episode's candidates (each episode's mean shift removed; it cannot change a CEM plan
# and is reported as `shift`), over the within-episode variance of FP's objective (1.0 = the perturbation is as large
# as the spread CEM ranks by); and the rank correlation of the objective with FP's (what CEM's top-k sees). Start and
# goal are encoded by the model being scored, so encoder layers count. The allocator then meets each budget (average
# bits per weight, parameter-weighted) by greedily upgrading the linear with the largest drop in sensitivity per
# extra bit. The tables are cached like the settings, and each allocation is saved under `data/results/`.

# %% tags=[]
def run_sensitivity(config):
    """The sensitivity table of one env's FP model (RTN per channel at each of ``bits``), with its seconds."""
    t0 = time.perf_counter()
    table = sensitivity_for(fp_settings[config["env"]], tuple(config["bit_widths"]), config["n_sequences"],
                            recipe_for_bits=lambda b: RTN(b))
    return table.drop(columns=["env", "n_sequences"]).assign(seconds=time.perf_counter() - t0)


sens_configs = [{"env": env, "fp": CACHES.identity(fp_settings[env]), "bit_widths": [b for b in mixed_choices if b < 8],
                 "n_sequences": sensitivity_sequences or P.samples} for env in S.envs]
sensitivity = sweep(sens_configs, run_sensitivity, f"sensitivity-{P.name}", cache_dir=RESULTS_DIR,
                    recompute=S.recompute, progress=False, key_config=lambda c: {k: v for k, v in c.items()})
allocations, alloc_dir = {}, RESULTS_DIR / f"allocations-{P.name}"
for env in S.envs:
    table = sensitivity[sensitivity["env"] == env]
    for budget in rescue_bits:
        bits = allocate_bits(table, float(budget), tuple(mixed_choices))
        allocations[env, budget] = bits
        atomic_write(alloc_dir / f"{env}-{budget}bits.json", json.dumps(
            {"env": env, "budget": budget, "average_bits": average_bits(bits, table), "bits": bits}, indent=1))

# %% tags=[]
# NBVAL_CHECK_OUTPUT
low = min(mixed_choices)
top = (sensitivity[sensitivity["bits"] == low].sort_values(["env", "sensitivity"], ascending=[True, False])
       .groupby("env").head(6))
print(f"most sensitive linears at {low} bits:")
print(top[["env", "name", "part", "params", "sensitivity", "rank_corr"]].to_string(index=False,
                                                                                float_format="%.3f"))
share = sensitivity[sensitivity["bits"] == low].groupby(["env", "part"])["sensitivity"].sum().unstack()
print("\nsummed sensitivity by part:\n" + share.to_string(float_format="%.3f"))
rows = []
for (env, budget), bits in allocations.items():
    t = sensitivity[(sensitivity["env"] == env) & (sensitivity["bits"] == low)].set_index("name")
    alloc = pd.Series(bits).rename("bits").to_frame().join(t[["part"]])
    counts = alloc.groupby(["part", "bits"]).size().unstack(fill_value=0)
    rows.append(f"{env}, budget {budget} bits (average {average_bits(bits, t.reset_index()):.2f}):\n"
                + counts.to_string())
print("\nlinears per bit width in each allocation:\n" + "\n".join(rows))

# %% tags=[]
fig, axes = plt.subplots(1, len(S.envs), figsize=(6.5 * len(S.envs), 3.6), squeeze=False)
for ax, env in zip(axes[0], S.envs):
    t = sensitivity[(sensitivity["env"] == env)].pivot_table(index="name", columns="bits", values="sensitivity",
                                                                aggfunc="first")
    order = sensitivity[(sensitivity["env"] == env)].drop_duplicates("name")["name"]
    t = t.loc[list(order)]
    for b in t.columns:
        ax.plot(range(len(t)), t[b].clip(lower=1e-6), marker="o", ms=3, lw=1, label=f"{b} bits")
    ax.set_yscale("log")
    ax.set_xticks(range(len(t)))
    ax.set_xticklabels([n.replace("transformer.layers.", "L").replace("blocks.", "B") for n in t.index],
                       rotation=90, fontsize=6)
    ax.set_xlabel("quantized linear (model order: encoder, then predictor)")
    ax.set_ylabel("objective change / FP spread")
    ax.set_title(env)
    ax.legend(fontsize=7)
fig.tight_layout()
_ = plots.savefig(fig, "04_rescue_low_bits", "sensitivity", figures_dir=figures_dir)

# %% [markdown] tags=[]
# ## Success at W4 and W3: every method against FP, on the same episodes
#
# One bar per method and bit width (weights per channel; W4A4 with per-token activations), FP as the black line with
# its band, the trivial baselines in grey. `mixed` has the same average bits as the uniform setting it stands beside;
# `QAT` plans with the fine-tuned checkpoint. Cells: `successes/n rate [95% interval]` on the first planner seed.

# %% tags=[]
settings, meta = [], []
for ck, env in zip(S.checkpoints, S.envs):
    fp = fp_settings[env]
    for k in seeds[env]:
        settings.append(dataclasses.replace(fp, planner_seed=k))
        meta.append(dict(env=env, method="FP", bits="FP", planner_seed=k))
    for b in rescue_bits:
        for m in methods:
            for k in seeds[env]:
                if m == "QAT":
                    qat = qat_checkpoints[env].format(bits=b)
                    s = P.setting(qat, S.device, S.seed, sampler=S.samplers[env], planner_seed=k)
                elif m == "mixed":
                    bits = allocations[env, b]
                    s = S.setting(ck, recipe=RTN(min(bits.values())), planner_seed=k)
                    s = dataclasses.replace(s, overrides=mixed_overrides(bits, lambda n: RTN(n)))
                else:
                    s = S.setting(ck, recipe=recipe(m, b), planner_seed=k, long=m == "RTN")
                settings.append(s)
                meta.append(dict(env=env, method=m, bits=f"W{b}", planner_seed=k))
    for wb, ab in act_bits:
        for m in act_methods:
            settings.append(S.setting(ck, recipe=recipe(m, wb, ab)))
            meta.append(dict(env=env, method=m, bits=f"W{wb}A{ab}", planner_seed=P.planner_seeds[0]))
table = st.run_study(settings, S.results, recompute=S.recompute, executor=executor)
keys = pd.DataFrame([{"config_key": config_key(CACHES.identity(s)), **m} for s, m in zip(settings, meta)])
runs = st.per_episode(table, S.budget).drop(columns=["env", "method", "bits"]).merge(keys, on=["config_key",
                                                                                                  "planner_seed"])
first = runs[runs["planner_seed"] == P.planner_seeds[0]]
base_rates = stats.success_table(pd.concat([st.baseline_table(s) for s in fp_settings.values()]), ["env", "baseline"])
rates = stats.success_table(first, ["env", "method", "bits"])
fp_rates = rates[rates["method"] == "FP"]

# %% tags=[]
# NBVAL_CHECK_OUTPUT
print(pd.concat([fp_rates[["env", "method", "success"]],
                 base_rates.rename(columns={"baseline": "method"})[["env", "method", "success"]]]).to_string(index=False))
cells = rates[rates["method"] != "FP"].pivot_table(index=["env", "method"], columns="bits", values="success",
                                                   aggfunc="first")
print(cells.reindex([(e, m) for e in S.envs for m in methods if (e, m) in cells.index]).to_string())
bits_used = first[first["method"] == "mixed"].groupby(["env", "bits"])["effective_bits"].first().round(2)
print("storage bits per weight of the mixed settings (scales included):", bits_used.to_dict())

# %% tags=[]
order = {m: i for i, m in enumerate(methods)}
env_order = {e: i for i, e in enumerate(S.envs)}
shown = rates[rates["method"] != "FP"].sort_values(
    ["env", "method"], key=lambda c: c.map(env_order if c.name == "env" else order).fillna(len(order)))
grid = plots.success_bars(shown, x="method", hue="bits", col="env", baselines=base_rates, reference=fp_rates,
                          xlabel="method (weights per channel)", title="rescuing low-bit planning")
_ = plots.savefig(grid.figure, "04_rescue_low_bits", "success", figures_dir=figures_dir)

# %% [markdown] tags=[]
# ## Against the follow-up's numbers
#
# The follow-up quantized DINO-WM itself (weight-only RTN on Wall, two planner budgets) and reports FP 0.53 / 0.65,
# uniform W4 0.07 / 0.20, W4 with the encoder kept in FP16 0.27 / 0.50, encoder 6-bit + predictor 4-bit 0.30, W3 0.00.
# Absolute rates of a different model and planner are not comparable, so both are shown as the share of FP's success
# that a setting keeps (FP = 1.00). Notebook 02 has wmq's encoder-only / predictor-only rows.

# %% tags=[]
# NBVAL_CHECK_OUTPUT
anchors = pd.DataFrame({"setting": ["uniform W4 RTN", "W4, encoder FP16", "encoder W6 + predictor W4", "uniform W3 RTN"],
                        "follow-up (budget 1)": [0.07 / 0.53, 0.27 / 0.53, 0.30 / 0.53, 0.0],
                        "follow-up (budget 2)": [0.20 / 0.65, 0.50 / 0.65, None, 0.0]})
print(anchors.to_string(index=False, float_format="%.2f"))
kept = rates.merge(fp_rates[["env", "success_rate"]].rename(columns={"success_rate": "fp"}), on="env")
kept["kept"] = kept["success_rate"] / kept["fp"]
print("\nwmq, share of FP's success kept (first planner seed):")
print(kept[kept["method"] != "FP"].pivot_table(index=["env", "method"], columns="bits", values="kept",
                                               aggfunc="first").to_string(float_format="%.2f"))

# %% [markdown] tags=[]
# ## Calibration sensitivity (the paper's stated limitation)
#
# For the calibrated methods, one calibration choice at a time is changed from the protocol's (FP planning on the
# profile's calibration episodes for 2 MPC rounds): the horizon (`calib_rounds`), the number of episodes
# (`calib_episodes`) and the source (`calib_sources`: frames and action windows of the model's training data, or
# rollouts of random actions). Paired against the protocol calibration of the same method: does success move?

# %% tags=[]
calib_settings, calib_meta = [], []
for ck, env in zip(S.checkpoints, S.envs):
    if env not in calib_envs:
        continue
    for m, wb, ab in calib_methods:
        r = P.recipe(m, wb, "per-channel", a_bits=ab, a_granularity=None if ab is None else "per-tensor")
        base = S.setting(ck, recipe=r)
        variants = [("protocol", base)]
        variants += [(f"{k} rounds", dataclasses.replace(base, calib_rounds=k)) for k in calib_rounds]
        variants += [(f"{k} episodes", dataclasses.replace(base, n_calib=k)) for k in calib_episodes]
        variants += [(f"source {k}", dataclasses.replace(base, calib_source=k)) for k in calib_sources]
        for name, s in variants:
            calib_settings.append(s)
            calib_meta.append(dict(env=env, method=f"{m} {r.label}", calibration=name))
calib_table = st.run_study(calib_settings, S.results, recompute=S.recompute, executor=executor)
ckeys = pd.DataFrame([{"config_key": config_key(CACHES.identity(s)), **m}
                      for s, m in zip(calib_settings, calib_meta)])
calib_runs = st.per_episode(calib_table, S.budget).drop(columns=["env", "method", "calibration"]).merge(ckeys,
                                                                                                  on="config_key")

# %% tags=[]
# NBVAL_CHECK_OUTPUT
calib_order = {name: i for i, name in enumerate(dict.fromkeys(m["calibration"] for m in calib_meta))}
calib_rates = stats.success_table(calib_runs, ["env", "method", "calibration"]).sort_values(
    ["env", "calibration"], key=lambda c: c.map(calib_order) if c.name == "calibration" else c, kind="stable")
print(calib_rates.pivot_table(index=["env", "calibration"], columns="method", values="success", aggfunc="first",
                              sort=False).to_string())
moves = []
for (env, m), group in calib_runs.groupby(["env", "method"]):
    ref = verdicts.outcomes(group, st.UNITS, calibration="protocol")
    for name in group["calibration"].unique():
        if name == "protocol":
            continue
        x, y = verdicts.common(verdicts.outcomes(group, st.UNITS, calibration=name), ref)
        t = stats.mcnemar(x.to_numpy(), y.to_numpy())
        low, high = stats.paired_interval(x.to_numpy(), y.to_numpy())
        moves.append({"env": env, "method": m, "calibration": name, "effect": f"{t.effect * 100:+.0f}",
                      "95% interval": f"[{low * 100:+.0f}, {high * 100:+.0f}]", "p": f"{t.p:.2g}"})
print("\npaired against the protocol calibration (points):")
print(pd.DataFrame(moves).to_string(index=False))

# %% tags=[]
fp_calib = fp_rates[fp_rates["env"].isin(calib_envs)]
grid = plots.success_bars(calib_rates, x="calibration", hue="method", col="env",
                          baselines=base_rates[base_rates["env"].isin(calib_envs)], reference=fp_calib,
                          xlabel="calibration (one choice changed from the protocol's)",
                          title="success vs calibration")
_ = plots.savefig(grid.figure, "04_rescue_low_bits", "calibration", figures_dir=figures_dir)

# %% [markdown] tags=[]
# ## Cost of each method
#
# Seconds to produce the quantized model once its inputs exist, measured here (so they depend on the machine and
# its load; the order is what matters): the quantization search on the protocol calibration (RTN and rotations:
# no search), the sensitivity measurement for `mixed` (when it was computed), the fine-tune recorded in the QAT
# checkpoint's card. The calibration run itself (FP planning on the calibration episodes, shared by every calibrated
# method and cached) is not counted.

# %% tags=[]
costs = []
for ck, env in zip(S.checkpoints, S.envs):
    fp_model = CACHES.model(fp_settings[env])
    calib = CACHES.calibration(fp_settings[env])
    for m in [m for m in methods if m not in ("mixed", "QAT")]:
        t0 = time.perf_counter()
        quantize(fp_model, recipe(m, max(rescue_bits)), calib)
        costs.append({"env": env, "method": m, "seconds": time.perf_counter() - t0})
    if "mixed" in methods:
        costs.append({"env": env, "method": "mixed (sensitivity)",
                      "seconds": float(sensitivity[sensitivity["env"] == env]["seconds"].iloc[0])})
    if "QAT" in methods:
        for b in rescue_bits:
            card = json.loads((CACHES.checkpoint(qat_checkpoints[env].format(bits=b))[0] / "card.json").read_text())
            costs.append({"env": env, "method": f"QAT W{b} (fine-tune; its card)",
                          "seconds": card["seconds"]["training"]})
print(pd.DataFrame(costs).pivot_table(index="method", columns="env", values="seconds").round(1).to_string())

# %% [markdown] tags=[]
# ## Conclusion: the cheapest method within 10 points of FP
#
# For every env and bit width, the methods in order of cost; each judged by `verdicts.within_margin_of_fp` on the
# paired outcomes (every planner seed the settings share; with several seeds it must hold for every seed):
# *reproduced* = equivalent to FP within `margin` (TOST), *not reproduced* = decisively below FP (McNemar) and not
# equivalent, otherwise *inconclusive*; *not testable* where FP does not beat the best trivial baseline. The table
# names the cheapest method that is within the margin, or says that none is: first as decided (every planner seed on
# its own, 50 episodes each, which can rarely show equivalence within 10 points), then on the units pooled over the
# seeds (150 on Wall; one episode counts once per seed, which overstates the evidence when the episode rather than the
# draws decides its outcome, so the pooled column is the weaker claim).

# %% tags=[]
# NBVAL_CHECK_OUTPUT
found, best = [], []
for env in S.envs:
    base = st.baseline_outcomes(fp_settings[env])
    fp = verdicts.outcomes(runs, st.UNITS, env=env, method="FP")
    for b in [f"W{b}" for b in rescue_bits] + [f"W{w}A{a}" for w, a in act_bits]:
        chosen, pooled_choice, outcomes = None, None, []
        for m in methods:
            x = runs[(runs["env"] == env) & (runs["method"] == m) & (runs["bits"] == b)]
            if x.empty:
                continue
            pair = verdicts.common(verdicts.outcomes(x, st.UNITS), fp)
            v = verdicts.every_stratum(verdicts.within_margin_of_fp, "planner_seed", *pair,
                                       baselines=base, comparison=f"{env}: {m} {b} vs FP", margin=margin)
            pooled = verdicts.within_margin_of_fp(*pair, baselines=base, margin=margin)
            if pooled_choice is None and pooled.outcome == "reproduced":
                pooled_choice = m
            found.append(v)
            outcomes.append(v.outcome)
            if chosen is None and v.outcome == "reproduced":
                chosen = m
        untestable = bool(outcomes) and all(o == "not testable" for o in outcomes)
        none = "not testable" if untestable else "none"
        best.append({"env": env, "bits": b, "cheapest within margin (every seed)": chosen or none,
                     "(pooled over seeds)": pooled_choice or none})
verdict_table = verdicts.verdict_table(found)
print(pd.DataFrame(best).to_string(index=False))
print("\nwhy:")
print("\n".join(f"  {r.comparison}: {r.verdict} - {r.why}" for r in verdict_table.itertuples()))

# %% tags=[]
print(f"04_rescue_low_bits: {time.perf_counter() - started:.0f} s wall time, profile {P.name}, "
      f"{len(settings) + len(calib_settings)} settings, torch threads {__import__('torch').get_num_threads()}")
