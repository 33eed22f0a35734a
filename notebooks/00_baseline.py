# %% [markdown] tags=[]
# # 00 Baseline: how well does each full-precision world model plan, and what does its encoder carry?
#
# **Question.** Before quantizing anything: how often does planning with the full-precision (FP) world model reach
# the goal, with CEM, gradient descent (GD) and MPC around CEM, and how much of that is the model's doing rather than
# the task's? Every success rate is shown with its Wilson 95% interval and next to three trivial baselines on the
# same episodes (no action, a straight line toward the goal, random actions) with the same number of env steps.
# Two more checks of the premise: **ablations** of the planning objective (the visual latent only, the proprio latent
# only, both as DINO-WM plans) on the same episodes and planner draws, and a **state probe** (a ridge regression from
# the encoder's patch tokens to the state that decides success, scored on held-out trajectories, in units of the
# env's success tolerance): a model whose encoder does not carry the state cannot be judged by quantizing it.
#
# Protocol (DINO-WM): evaluation episodes of seed 99 (`seed * k + 1`), goal horizon 5, CEM with 300 samples / top 30,
# Wall 10 and PushT 30 iterations ("CEM 300/30"); GD with SGD lr 1 + noise 0.003 (1000 steps, as released). The
# study's notebooks plan with the profile's CEM (full profile: 100 samples / top 10, 10 iterations in both envs - the
# CPU budget), shown here next to the protocol's so the cost of that choice is visible. MPC wraps the study's CEM for
# up to `mpc_rounds` rounds; between rounds the executor replays every action so far from the start state, as
# DINO-WM's evaluator does, and success is latched per round. Open-loop CEM runs are traced, so success and planning
# loss at every smaller budget come from the same run. The last figure decodes the model's imagined rollout of its
# chosen plan (with the FP decoder) next to the frames of executing that plan in the real environment.

# %% tags=["parameters"]
checkpoint = ["mini-wall", "mini-pusht"]  # shipped model names or wmq checkpoint folders, one per environment
device = "auto"            # "auto" (CUDA when available), "cpu", "cuda"
profile = "full"           # "full": the study sized for 2 CPU cores; "paper": DINO-WM protocol (GPU); "smoke": tiny
executor = None            # None: settings run here, one after another; "local:N" or "dask://HOST:PORT" (README)
n_evals = None             # evaluation episodes per setting; None: from the profile (full 50, smoke 3)
key_evals = None           # distinct episodes of the key comparisons (first planner seed); None: the profile's
                           # (full and paper 150, smoke 4)
seed = 99                  # episode seed (DINO-WM protocol)
opt_steps = None           # CEM iterations (the budget); None: from the profile (full 10; paper: Wall 10, PushT 30)
trace_steps = None         # CEM iterations of the long traced runs; None: from the profile (full 20, paper 50)
gd_steps = None            # gradient-descent updates; None: from the profile (full 1000, as DINO-WM)
mpc_rounds = None          # MPC rounds at most; None: from the profile (full and paper 10, smoke 2)
show_episodes = [0, 1]     # evaluation episodes whose imagined rollouts are drawn
figures_dir = "../figures"  # where plots.savefig writes <notebook>__<panel>.png/.pdf
results_name = "study"     # results cache: data/results/<results_name>-<profile>/ (shared by all notebooks)
recompute = False          # True: rerun every setting instead of reading the cache (smoke always recomputes)
samplers = {}              # env -> episode sampler ({}: each env's default; PushT's is "demo", DINO-WM-like windows
                           # of demonstrations, the episodes the shipped mini-pusht's card measures)

# %% tags=["injected-parameters"]
# Parameters
profile = "full"
device = "auto"


# %% tags=[]
import pandas as pd

from wmqlib import designs, findings, plots, stats, verdicts
from wmqlib import profiles as pr
from wmqlib import study as st

S = pr.setup(profile, checkpoint, device, seed, results_name, recompute, samplers, n_evals=n_evals,
             key_evals=key_evals, opt_steps=opt_steps, trace_steps=trace_steps, gd_steps=gd_steps,
             mpc_rounds=mpc_rounds)
P = S.profile
plots.set_style()
design = designs.baseline(S)  # FP: DINO-WM's CEM, the study's CEM (traced, long), GD, MPC, objective ablations
settings, protocol, study, mpc = design.settings, *(design.parts[k] for k in ("protocol", "study", "mpc"))
print(len(settings), "settings")

# %% tags=[]
table = st.run_study(settings, S.results, recompute=S.recompute, executor=executor)
cem = table[(table["planning"] == "CEM") & (table["latents"] == "visual+proprio")]
rounds = table[table["planning"] == "MPC-CEM"].astype({"round": int})
cached = dict(results=S.results, recompute=S.recompute)
base = pd.concat([st.baseline_table(s, **cached) for s in study.values()] +
                 [st.baseline_table(s, **cached).assign(baseline=lambda d: d["baseline"] + " (mpc)")
                  for s in mpc.values()])
base_rates = stats.success_table(base, ["env", "baseline"])

# %% [markdown] tags=[]
# ## Success rates
#
# `planner` names the search (CEM samples / elites) and its iterations: DINO-WM's CEM 300/30, the study's CEM at its
# budget and at `trace_steps` iterations (one traced run), GD, MPC-CEM (after its last round), the objective ablations
# (marked by the latents they score) and the baselines with the open-loop budget (`horizon * frameskip` env steps)
# and, marked `mpc`, with the MPC budget (`rounds` times more). `success` is `successes/n rate [95% interval]`;
# `mean_state_dist` the mean final distance to the goal state (Wall: pixels; PushT: see `wmqlib.envs`).

# %% tags=[]
# NBVAL_CHECK_OUTPUT
runs = pd.concat([st.per_episode(cem, S.budget), st.per_episode(cem), st.per_episode(table[table["planning"] != "CEM"]),
                  st.per_episode(table[(table["planning"] == "CEM") & (table["latents"] != "visual+proprio")])])
runs = runs.drop_duplicates(["config_key", "episode", "opt_steps"])
runs["planner"] = runs["search"] + " " + runs["opt_steps"].astype(str) + " it" + \
    runs["latents"].map(lambda latents: "" if latents == "visual+proprio" else f" ({latents} only)")
rates = stats.success_table(pd.concat([runs, base.rename(columns={"baseline": "planner"})]), ["env", "planner"])
print(rates[["env", "planner", "success", "mean_state_dist"]].to_string(index=False, float_format="%.2f"))

# %% [markdown] tags=[]
# ## What each part of the objective contributes
#
# The same episodes and planner draws, with the study's CEM at its budget: the objective on the visual latent only
# and on the proprio latent only, each against both (DINO-WM's). `effect` is the paired difference in success
# (ablation - both) with its 95% Tango interval and the exact McNemar p.

# %% tags=[]
# NBVAL_CHECK_OUTPUT
ablation = st.per_episode(table[table["planning"] == "CEM"], S.budget)
rows = []
for env in S.envs:
    both = findings.units(ablation, env=env, latents="visual+proprio",
                          **{"planner.opt_steps": P.trace_steps, "planner.samples": P.samples})
    for latents in designs.ABLATIONS:  # on the episodes both ran (FP is a key setting: it may run more)
        only, same = verdicts.common(findings.units(ablation, env=env, latents=latents), both)
        test, (low, high) = stats.mcnemar(only, same), stats.paired_interval(only, same)
        rows.append({"env": env, "objective": f"{latents} only", "success": f"{only.mean():.0%}",
                     "both": f"{same.mean():.0%}", "effect": f"{test.effect * 100:+.0f} [{low * 100:+.0f}, "
                     f"{high * 100:+.0f}] pts", "p": f"{test.p:.2g}"})
print(pd.DataFrame(rows).to_string(index=False))

# %% [markdown] tags=[]
# ## Success over MPC rounds
#
# The paper's "planning iterations" are MPC rounds: success latched after each round (an episode that reached the goal
# stays a success), FP with the study's CEM in every round.

# %% tags=[]
# NBVAL_CHECK_OUTPUT
per_round = stats.success_table(rounds, ["env", "round"])
print(per_round.pivot_table(index="round", columns="env", values="success", aggfunc="first").to_string())

# %% [markdown] tags=[]
# ## What the encoder carries: the state probe
#
# A ridge probe from a frame's visual latent (patch tokens, flattened) to the state that decides success, fitted on
# `probe_trajectories[0]` scripted trajectories and scored on `probe_trajectories[1]` others (`wmqlib.probe`).
# `error` is the held-out RMS error in env units, `spread` the error of the best constant guess on the same frames,
# `error_over_tolerance` the error in units of the env's success tolerance for that component: at most 0.5 means the
# latent places that part of the state well inside what success asks; near `spread` the encoder does not see it.

# %% tags=[]
# NBVAL_CHECK_OUTPUT
probe = pd.concat([st.probe_table(s, *P.probe_trajectories) for s in design.probes])
print(probe[["env", "component", "unit", "error", "spread", "tolerance", "error_over_tolerance"]]
      .to_string(index=False, float_format="%.3f"))

# %% [markdown] tags=[]
# ## Figures: success, success vs CEM iterations and MPC rounds, planning loss, imagined rollouts

# %% tags=[]
BASELINES = list(base_rates["baseline"].unique())
planners = rates[~rates["planner"].isin(BASELINES)]
open_loop = base_rates[~base_rates["baseline"].str.endswith("(mpc)")]
grid = plots.success_bars(planners, x="planner", col="env", baselines=open_loop, xlabel="planner",
                          title="FP planning vs trivial baselines (open-loop budget)")
_ = plots.savefig(grid.figure, "00_baseline", "success", figures_dir=figures_dir,
                  profile=P.name, results=S.results, sources=runs)

curve = stats.success_curve(cem, ["env", "search"])
grid = plots.curves(curve, x="opt_steps", y="success_rate", hue="search", col="env", band=("ci_low", "ci_high"),
                    baselines=open_loop, xlabel="CEM iterations (open loop)")
_ = plots.savefig(grid.figure, "00_baseline", "success_vs_iterations", figures_dir=figures_dir,
                  profile=P.name, results=S.results, sources=cem)

curve_r = stats.success_curve(rounds, ["env", "search"], step="round")
grid = plots.curves(curve_r, x="round", y="success_rate", hue="search", col="env", band=("ci_low", "ci_high"),
                    baselines=base_rates[base_rates["baseline"].str.endswith("(mpc)")], xlabel="MPC rounds")
_ = plots.savefig(grid.figure, "00_baseline", "success_vs_rounds", figures_dir=figures_dir,
                  profile=P.name, results=S.results, sources=rounds)

grid = plots.curves(curve, x="opt_steps", y="plan_loss", hue="search", col="env", logy=True,
                    band=("plan_loss_q25", "plan_loss_q75"),
                    xlabel="CEM iterations (open loop)", ylabel="planning loss (median, quartiles)")
_ = plots.savefig(grid.figure, "00_baseline", "planning_loss", figures_dir=figures_dir,
                  profile=P.name, results=S.results, sources=cem)

# %% tags=[]
rows, labels = [], []
for env, s in study.items():
    for e in show_episodes:
        frames = st.imagine(s, e)
        rows += [list(frames["real"]) + list(frames["goal"]), frames["seen"], frames["imagined"]]
        labels += [f"{env} {e}: real + goal", f"{env} {e}: encoded", f"{env} {e}: imagined"]
horizon = len(rows[0]) - 1
fig = plots.frame_strip(rows, labels, title="real frames of the executed plan vs the FP model's imagined rollout",
                        columns=[f"t={t}" for t in range(horizon)] + ["goal"])
_ = plots.savefig(fig, "00_baseline", "imagined_rollouts", figures_dir=figures_dir,
                  profile=P.name, results=S.results)

# %% [markdown] tags=[]
# ## Conclusion: the premise of the study
#
# This notebook covers no quantization finding; it checks the premise of the study (DINO-WM's): planning with the FP
# world model reaches goals that the trivial baselines do not (rule `verdicts.fp_beats_baselines`: *reproduced* when
# FP is decisively above the best baseline on the same episodes, exact McNemar p < 0.05; *not reproduced* when it is
# equivalent to it (TOST, 10 points) or below; *inconclusive* otherwise). A model that fails it here makes every
# quantization verdict on that env "not testable" in the notebooks that follow.

# %% tags=[]
# NBVAL_CHECK_OUTPUT
found = findings.fp_verdicts(cem, [s for env in S.envs for s in (protocol[env], study[env])], S.budget,
                             S.results)
print(verdicts.verdict_table(found).to_string(index=False))

# %% [markdown] tags=[]
# The findings as the README quotes them (`python -m wmqlib.readme` copies this cell's output into README.md).

# %% tags=["findings"]
# NBVAL_CHECK_OUTPUT
print(findings.markdown(found))

# %% tags=[]
print(S.footer("00_baseline", len(settings)))
