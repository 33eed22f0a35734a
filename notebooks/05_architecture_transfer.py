# %% [markdown] tags=[]
# # 05 Architecture transfer: do the findings hold for a recurrent world model?
#
# **Question.** The paper quantizes one architecture (DINO-WM: a ViT encoder over patch tokens, a ViT predictor)
# and asks whether its sensitivity patterns "generalize beyond DINO-WM to other world model architectures (e.g.
# recurrent models like Dreamer)". Here a recurrent state-space model in the PlaNet / Dreamer line
# (`wmqlib.models.rssm`: a convolutional encoder, a GRU with a stochastic latent, an action-conditioned
# transition) goes through the same weight-only study as the DINO-WM-style model of the same env, on the same
# episodes and planner draws, judged by the same rules:
#
# - 01's weight-only findings: W8 close to FP, W4 loses success, W3 breaks planning, groups vs per channel;
# - 02's: the encoder more sensitive than the predictor (for the RSSM the predictor is the transition and the
#   recurrent cell), more planning rounds repairing predictor errors but not encoder errors;
# - 03's: the planning loss no longer ranking candidate plans by their outcome, the loss stalling over CEM
#   iterations, low bits not repaired by more rounds.
#
# Each checkpoint's settings are the ones notebooks 01-03 compute with the same parameters (`Setup.only`), so the
# DINO-WM-style model's rows come from their cache. A checkpoint whose card plans below the bar
# (`card.TRANSFER_TARGET`, MPC on the protocol episodes) has every finding "not testable".

# %% tags=["parameters"]
checkpoint = ["mini-wall", "mini-wall-rssm"]  # shipped model names or wmq checkpoint folders: the architectures
device = "auto"            # "auto" (CUDA when available), "cpu", "cuda"
profile = "full"           # "full": the study sized for 2 CPU cores; "paper": DINO-WM protocol (GPU); "smoke": tiny
executor = None            # None: settings run here, one after another; "local:N" or "dask://HOST:PORT" (README)
n_evals = None             # evaluation episodes per setting; None: from the profile (full 50, smoke 3)
key_evals = None           # distinct episodes of the key comparisons (first planner seed); None: the profile's
                           # (full and paper 150, smoke 4)
seed = 99                  # episode seed (DINO-WM protocol)
opt_steps = None           # CEM iterations (the budget); None: from the profile (full 10; paper: Wall 10, PushT 30)
trace_steps = None         # CEM iterations of the long traced runs; None: from the profile (full 20, paper 50)
mpc_rounds = None          # MPC rounds at most; None: from the profile (full and paper 10, smoke 2)
planner_seeds = None       # planner seeds of the key settings; None: from the profile (full 0, 1, 2; smoke 0, 1)
seeded_envs = ["wall"]     # envs whose key settings also run the other planner seeds (as in 01 and 02)
bits = [8, 4, 3]           # RTN weight bits, on the whole model per granularity (01), on each part (02) and 03
key_bits = [8, 4, 3]       # of these, key comparisons (key_evals episodes)
weight_granularities = ["per-channel", "per-group"]
long_weight = [["RTN", 4, "per-channel"], ["RTN", 4, "per-group"], ["RTN", 3, "per-channel"]]  # 01's long traces
scope_long_bits = [4]      # 02's: bit widths traced long on each part ...
scope_round_bits = [4]     # ... and run with MPC on each part
loss_long_bits = [4, 3]    # 03's: whole-model bit widths traced long ...
loss_round_bits = [4, 3]   # ... and run with MPC
candidates = 64            # 03's candidate plans per episode scored by each model and executed in the env
group_size = None          # for "per-group"; None: profiles.group_size_for(the visual latent's width)
figures_dir = "../figures"  # where plots.savefig writes <notebook>__<panel>.png/.pdf
results_name = "study"     # results cache: data/results/<results_name>-<profile>/ (shared by all notebooks)
recompute = False          # True: rerun every setting instead of reading the cache (smoke always recomputes)
samplers = {}              # env -> episode sampler ({}: each env's default)

# %% tags=["injected-parameters"]
# Parameters
profile = "full"
device = "auto"


# %% tags=[]
import pandas as pd

from wmqlib import card, designs, findings, plots, stats
from wmqlib import profiles as pr
from wmqlib import study as st
from wmqlib.caches import CACHES

S = pr.setup(profile, checkpoint, device, seed, results_name, recompute, samplers, n_evals=n_evals,
             key_evals=key_evals, opt_steps=opt_steps, trace_steps=trace_steps, mpc_rounds=mpc_rounds,
             planner_seeds=planner_seeds)
P = S.profile
plots.set_style()
design = designs.architecture_transfer(S, seeded_envs, bits, key_bits, weight_granularities, long_weight,
                                       scope_long_bits, scope_round_bits, loss_long_bits, loss_round_bits, candidates,
                                       group_size)
names = {ck: f"{pr.architecture_of(ck)} ({ck})" for ck in S.checkpoints}  # the architecture, as tables name it
gates = {names[ck]: card.planning_gate(card.read_card(CACHES.checkpoint(ck).folder)) for ck in S.checkpoints}
print(len(design.settings), "settings;", {name: gate or "testable" for name, gate in gates.items()})

# %% tags=[]
table = st.run_study(design.settings, S.results, recompute=S.recompute, executor=executor)
table["architecture"] = table["checkpoint"].map(names)
runs = st.per_episode(table[table["planning"] == "CEM"], S.budget)
first = runs[runs["planner_seed"] == P.planner_seeds[0]]
rounds = table[table["planning"] == "MPC-CEM"].astype({"round": int})
fp_settings = {ck: S.only(ck).fp_settings() for ck in S.checkpoints}
base_rates = pd.concat([st.baseline_rates(fp_settings[ck].values(), results=S.results, recompute=S.recompute)
                        .assign(architecture=names[ck]) for ck in S.checkpoints])

# %% [markdown] tags=[]
# ## Success per architecture (first planner seed)
#
# FP and RTN weight-only on the whole model per granularity and on each part, at the budget, with the trivial
# baselines on the same episodes. Each architecture groups weights by its own size (`profiles.group_size_for` its
# visual latent's width: g32 for the 64-wide ViT, g64 for the RSSM's 128-wide embedding).

# %% tags=[]
# NBVAL_CHECK_OUTPUT
rates = stats.success_table(first, ["architecture", "scope", "w_kind", "w_bits"])
print(rates.pivot_table(index=["scope", "w_kind", "w_bits"], columns="architecture", values="success",
                        aggfunc="first").sort_index(ascending=[True, True, False]).to_string())
print(base_rates[["architecture", "baseline", "success"]].to_string(index=False))

# %% [markdown] tags=[]
# ## Success over MPC rounds (success latched)

# %% tags=[]
# NBVAL_CHECK_OUTPUT
per_round = stats.success_table(rounds, ["architecture", "label", "round"])
print(per_round.pivot_table(index=["architecture", "label"], columns="round", values="success",
                            aggfunc="first").to_string())

# %% tags=[]
whole = stats.success_table(first[first["scope"] == "all"], ["architecture", "w_kind", "w_bits"])
grid = plots.success_bars(whole[whole["w_bits"] < 32].astype({"w_bits": str}), x="w_bits", hue="w_kind",
                          col="architecture", baselines=base_rates,
                          reference=whole[whole["w_bits"] == 32], xlabel="weight bits",
                          title="RTN weights on the whole model (first planner seed)")
_ = plots.savefig(grid.figure, "05_architecture_transfer", "success_by_bits", figures_dir=figures_dir,
                  profile=P.name, results=S.results, sources=runs)
parts = stats.success_table(first[first["scope"] != "all"], ["architecture", "scope", "w_bits"])
grid = plots.success_bars(parts.astype({"w_bits": str}), x="w_bits", hue="scope", col="architecture",
                          baselines=base_rates, reference=whole[whole["w_bits"] == 32],
                          xlabel="weight bits", title="RTN per-channel weights on one part (first planner seed)")
_ = plots.savefig(grid.figure, "05_architecture_transfer", "success_by_scope", figures_dir=figures_dir,
                  profile=P.name, results=S.results, sources=runs)
curve = stats.success_curve(rounds, ["architecture", "label"], step="round")
grid = plots.curves(curve, x="round", y="success_rate", hue="label", col="architecture", band=("ci_low", "ci_high"),
                    band_levels=["FP"], marker="o", xlabel="MPC rounds (success latched)",
                    title="success over MPC rounds (FP's 95% interval shaded)")
_ = plots.savefig(grid.figure, "05_architecture_transfer", "success_vs_rounds", figures_dir=figures_dir,
                  profile=P.name, results=S.results, sources=rounds)

# %% [markdown] tags=[]
# ## Conclusion: does each finding transfer?
#
# Per architecture, the verdicts of 01 (weight only), 02 and 03 by their rules, read from the rows of the settings
# each of those notebooks would run for that checkpoint; the verdicts of both architectures form one family (Holm
# within this table). A finding **transfers** when both architectures decide it the same way (reproduced on both, or
# not reproduced on both), **does not transfer** when they decide it differently, is **undecided** when either is
# inconclusive and **not testable** when either is (a model at the floor, no deficit to repair, or a checkpoint
# below the card's planning bar).

# %% tags=[]
# NBVAL_CHECK_OUTPUT
found = {}
for ck in S.checkpoints:
    alignment = st.alignment_table(design.parts[ck]["misalignment"].alignment, S.results, samples=candidates,
                                   recompute=S.recompute)
    found[names[ck]] = findings.architecture_verdicts(
        table, {part: d.settings for part, d in design.parts[ck].items()}, alignment,
        findings.baselines_of(fp_settings[ck], S.results, recompute=S.recompute), S.budget,
        designs.TRANSFER_METHOD, bits, scope_round_bits, loss_round_bits)
found = {name: findings.gated(judged, gates[name]) for name, judged in findings.holm_within(found).items()}
transfer = findings.transfer_table(found)
print(transfer.to_string(index=False))
print()
print(findings.why([v for judged in found.values() for v in judged]))

# %% [markdown] tags=[]
# The closing table as the README quotes it (`python -m wmqlib.readme` copies this cell's output into README.md).

# %% tags=["findings"]
# NBVAL_CHECK_OUTPUT
print(findings.transfer_markdown(transfer))

# %% tags=[]
print(S.footer("05_architecture_transfer", len(design.settings)))
