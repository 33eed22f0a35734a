# %% [markdown]
# # Explorer: one setting at a time
#
# Pick a model, a quantization method and its bits / granularity / scope, a planner and its budget, and an episode.
# The explorer shows the success rate with its Wilson 95% interval next to the trivial baselines (no action, a
# straight line toward the goal, random plans) when the study's cache holds the setting - the same
# `data/results/study-<profile>/` the notebooks read and write - and otherwise offers to run it there (fewer
# episodes `n` give a quick, separately cached answer). *Show episode* plans one episode with the FP and the
# quantized model and draws the real frames of each executed plan beside what the model imagined; below it, the
# per-layer quantization report. Not numbered: it draws no published figure and `make figures` does not run it.

# %% tags=["parameters"]
profile = "full"           # "full" (the notebooks' cache, data/results/study-full), "paper" or "smoke"
checkpoint = "mini-wall"   # the model selected first: a shipped name or a wmq checkpoint folder
device = "auto"            # "auto" (CUDA when available), "cpu", "cuda"; part of the cache key
seed = 99                  # episode seed, as the notebooks'
results_name = "study"     # results cache: data/results/<results_name>-<profile>/ (shared by all notebooks)
samplers = {}              # env -> episode sampler, as the notebooks' parameters cells

# %%
from wmqlib.explore import Explorer

ex = Explorer(profile, results_name=results_name, device=device, seed=seed, samplers=samplers, checkpoint=checkpoint)
ex.refresh()
ex.show_episode();

# %%
ex.widget
