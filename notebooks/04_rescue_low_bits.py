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
# methods run with every planner seed of the profile; the episode is the unit of inference (tests cluster by
# episode) and the seeds' spread is shown. The verdicts of each table are one family, Holm-adjusted. PushT runs the
# same methods with the first planner seed only (the CPU budget).

# %% tags=["parameters"]
checkpoint = ["mini-wall", "mini-pusht"]  # shipped model names or wmq checkpoint folders, one per environment
device = "auto"            # "auto" (CUDA when available), "cpu", "cuda"
profile = "full"           # "full": the study sized for 2 CPU cores; "paper": DINO-WM protocol (GPU); "smoke": tiny
executor = None            # None: settings run here, one after another; "local:N" or "dask://HOST:PORT" (README)
n_evals = None             # evaluation episodes per setting; None: from the profile (full 50, smoke 3)
key_evals = None           # distinct episodes of the key comparisons (first planner seed); None: the profile's
                           # (full and paper 150, smoke 4)
seed = 99                  # episode seed (DINO-WM protocol)
opt_steps = None           # CEM iterations (the budget); None: from the profile (full 10)
planner_seeds = None       # planner seeds; None: from the profile (full 0, 1, 2; smoke 0, 1)
seeded_envs = ["wall"]     # envs whose key settings also run the other planner seeds (their spread, on n_evals)
rescue_bits = [4, 3]       # weight-only bit widths (per channel) every method is tried at
methods = ["RTN", "RTN+hadamard", "GPTQ", "GPTQ+hadamard", "mixed", "QAT"]  # in order of cost
key_methods = ["RTN", "GPTQ", "QAT"]  # of these, the key comparisons (key_evals episodes; every seed in seeded_envs)
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
samplers = {}              # env -> episode sampler ({}: each env's default; see 00)

# %% tags=["injected-parameters"]
# Parameters
profile = "full"
device = "auto"


# %% tags=[]
import pandas as pd

from wmqlib import designs, findings, plots, rescue, stats
from wmqlib import profiles as pr
from wmqlib import study as st
from wmqlib.paths import RESULTS_DIR

S = pr.setup(profile, checkpoint, device, seed, results_name, recompute, samplers, n_evals=n_evals,
             key_evals=key_evals, opt_steps=opt_steps, planner_seeds=planner_seeds)
P = S.profile
plots.set_style()
rescue.check_methods(methods + act_methods)  # registered recipes (with +rotation) or rescue.KINDS
fp_settings = S.fp_settings()  # FP and RTN per channel are traced long, as in 01 (the same runs)

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
sensitivity = rescue.sensitivity(S, fp_settings, [b for b in mixed_choices if b < 8],
                                 sensitivity_sequences or P.samples)
allocations = rescue.allocate(sensitivity, rescue_bits, mixed_choices, RESULTS_DIR / f"allocations-{P.name}")

# %% tags=[]
# NBVAL_CHECK_OUTPUT
print(rescue.sensitivity_summary(sensitivity, allocations, min(mixed_choices)))

# %% tags=[]
fig = plots.layer_sensitivity(sensitivity, S.envs)
_ = plots.savefig(fig, "04_rescue_low_bits", "sensitivity", figures_dir=figures_dir,
                  profile=P.name, results=S.results)

# %% [markdown] tags=[]
# ## Success at W4 and W3: every method against FP, on the same episodes
#
# One bar per method and bit width (weights per channel; W4A4 with per-token activations), FP as the black line with
# its band, the trivial baselines in grey. `mixed` has the same average bits as the uniform setting it stands beside;
# `QAT` plans with the fine-tuned checkpoint. Cells: `successes/n rate [95% interval]` on the first planner seed.

# %% tags=[]
design = designs.rescue_low_bits(S, allocations, methods, rescue_bits, act_bits, act_methods, seeded_envs, key_methods,
                                 qat_checkpoints, calib_envs, calib_methods, calib_rounds, calib_episodes, calib_sources)
settings, labels = design.parts["rescue"]
table = st.run_study(settings, S.results, recompute=S.recompute, executor=executor)
runs = rescue.relabel(table, settings, labels, S.budget)
first = runs[runs["planner_seed"] == P.planner_seeds[0]]
base_rates = st.baseline_rates(fp_settings.values(), results=S.results, recompute=S.recompute)
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
                          xlabel="method (weights per channel)", title="rescuing low-bit planning (first planner seed)")
_ = plots.savefig(grid.figure, "04_rescue_low_bits", "success", figures_dir=figures_dir,
                  profile=P.name, results=S.results, sources=runs)

# %% [markdown] tags=[]
# ## Against the follow-up's numbers
#
# The follow-up quantized DINO-WM itself (weight-only RTN on Wall, two planner budgets) and reports FP 0.53 / 0.65,
# uniform W4 0.07 / 0.20, W4 with the encoder kept in FP16 0.27 / 0.50, encoder 6-bit + predictor 4-bit 0.30, W3 0.00.
# Absolute rates of a different model and planner are not comparable, so both are shown as the share of FP's success
# that a setting keeps (FP = 1.00). Notebook 02 has wmq's encoder-only / predictor-only rows.

# %% tags=[]
# NBVAL_CHECK_OUTPUT
print(rescue.FOLLOW_UP.to_string(index=False, float_format="%.2f"))
print("\nwmq, share of FP's success kept (first planner seed):")
print(rescue.kept_share(rates).to_string(float_format="%.2f"))

# %% [markdown] tags=[]
# ## Calibration sensitivity (the paper's stated limitation)
#
# For the calibrated methods, one calibration choice at a time is changed from the protocol's (FP planning on the
# profile's calibration episodes for 2 MPC rounds): the horizon (`calib_rounds`), the number of episodes
# (`calib_episodes`) and the source (`calib_sources`: frames and action windows of the model's training data, or
# rollouts of random actions). Paired against the protocol calibration of the same method: does success move?

# %% tags=[]
calib_settings, calib_labels = design.parts["calibration"]
calib_table = st.run_study(calib_settings, S.results, recompute=S.recompute, executor=executor)
calib_runs = rescue.relabel(calib_table, calib_settings, calib_labels, S.budget)

# %% tags=[]
# NBVAL_CHECK_OUTPUT
calib_rates = rescue.calibration_rates(calib_runs, calib_labels)
print(calib_rates.pivot_table(index=["env", "calibration"], columns="method", values="success", aggfunc="first",
                              sort=False).to_string())
print("\npaired against the protocol calibration (points):")
print(rescue.calibration_moves(calib_runs).to_string(index=False))

# %% tags=[]
fp_calib = fp_rates[fp_rates["env"].isin(calib_envs)]
grid = plots.success_bars(calib_rates, x="calibration", hue="method", col="env",
                          baselines=base_rates[base_rates["env"].isin(calib_envs)], reference=fp_calib,
                          xlabel="calibration (one choice changed from the protocol's)",
                          title="success vs calibration")
_ = plots.savefig(grid.figure, "04_rescue_low_bits", "calibration", figures_dir=figures_dir,
                  profile=P.name, results=S.results, sources=calib_runs)

# %% [markdown] tags=[]
# ## Cost of each method
#
# Seconds to produce the quantized model once its inputs exist, timed once on the machine that computed the results
# and kept with them (so they depend on that machine and its load; the order is what matters): the quantization
# search on the protocol calibration (RTN and rotations: no search), the sensitivity measurement for `mixed`, the
# fine-tune recorded in the QAT checkpoint's card. The calibration run itself (FP planning on the calibration episodes, shared by every calibrated
# method and cached) is not counted.

# %% tags=[]
seconds = rescue.method_seconds(S, methods, rescue_bits, sensitivity, qat_checkpoints)
print(seconds.round(1).to_string())

# %% [markdown] tags=[]
# ## Conclusion: the cheapest method within 10 points of FP
#
# For every env and bit width, the methods in order of cost; each judged by `verdicts.within_margin_of_fp` on the
# paired outcomes of every planner seed the settings share, clustered by episode: *reproduced* = equivalent to FP
# within `margin` (TOST), *not reproduced* = decisively below FP and not equivalent, otherwise *inconclusive*; *not
# testable* where FP does not beat the best trivial baseline. All of them form one family, Holm-adjusted. The table
# names the cheapest method that is within the margin, or says that none is. Planner seeds replicate the planner, not
# the episodes: three seeds on 50 episodes are worth fewer than 150 episodes, and `episodes` says so.

# %% tags=[]
# NBVAL_CHECK_OUTPUT
bits = [f"W{b}" for b in rescue_bits] + [f"W{w}A{a}" for w, a in act_bits]
baselines = findings.baselines_of(fp_settings, S.results, recompute=S.recompute)
best, found = findings.rescue_verdicts(runs, baselines, bits, methods, margin)
print(best.to_string(index=False))
print("\n" + findings.why(found))

# %% [markdown] tags=[]
# The findings as the README quotes them (`python -m wmqlib.readme` copies this cell's output into README.md).

# %% tags=["findings"]
# NBVAL_CHECK_OUTPUT
print(findings.markdown(found, decided=best))

# %% tags=[]
print(S.footer("04_rescue_low_bits", len(settings) + len(calib_settings)))
