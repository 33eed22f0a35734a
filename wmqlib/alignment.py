"""Does the model's planning loss still rank candidate plans by their true outcome? The paper's "objective
misalignment" measured within episodes.

For each episode, S candidate plans are drawn from CEM's first-iteration distribution (z-scored actions
N(0, var_scale^2), seeded per episode), scored by the model's planning objective, and executed in the env from
the episode's start; their true outcome is the env's state distance to the goal after the plan. The per-episode
Spearman correlation between loss and true distance is the alignment of that episode's loss landscape with
success. The same candidates are scored by every model (same seeds), so an FP and a quantized model are compared
episode by episode (paired); comparing final loss with final distance across episodes instead mixes alignment
with how far each model's planner gets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from wmqlib.envs import Episode, WmqEnv
from wmqlib.plan import CEMConfig, Objective, ObjectiveConfig, PlanningModel
from wmqlib.stats import spearman
from wmqlib.validate import check_int

ALIGNMENT_COLUMNS = ("episode", "seed", "candidates", "rho", "best_loss_distance", "best_distance")


def candidate_plans(model: PlanningModel, episodes: Sequence[Episode], planner: CEMConfig, samples: int,
                    seed: int = 0) -> torch.Tensor:
    """z-scored candidate plans (E, S, H, Da) from CEM's first-iteration distribution N(0, var_scale^2), episode
    e's drawn from a generator seeded ``episodes[e].seed + 1_000_003 * seed`` (the same plans for every model)."""
    check_int("samples", samples, 2)
    plans = [torch.randn(samples, planner.horizon, model.action_dim,
                         generator=torch.Generator().manual_seed(e.seed + 1_000_003 * seed)) * planner.var_scale
             for e in episodes]
    return torch.stack(plans)


def candidate_alignment(model: PlanningModel, env: WmqEnv, episodes: Sequence[Episode], planner: CEMConfig,
                        samples: int = 64, seed: int = 0, objective: ObjectiveConfig = ObjectiveConfig()
                        ) -> pd.DataFrame:
    """Per episode: Spearman(model loss, true final state distance) over ``samples`` candidate plans
    (``candidate_plans``), plus the true distance reached by the plan the model scores best and the best true
    distance among the candidates. One row per episode (``ALIGNMENT_COLUMNS``)."""
    starts = np.stack([e.start_state for e in episodes])
    goals = np.stack([e.goal_state for e in episodes])
    plans = candidate_plans(model, episodes, planner, samples, seed)  # (E, S, H, Da)
    with torch.no_grad():
        cost = Objective.of_states(model, env, starts, goals, objective)
        loss = cost(plans).double().cpu().numpy()  # (E, S)
        raw = model.actions_to_env(plans).double().cpu().numpy()  # (E, S, H * frameskip, 2)
    e, s = loss.shape
    final = env.rollout_actions(np.repeat(starts, s, axis=0), raw.reshape(e * s, *raw.shape[2:]))
    _, dist = env.eval_state(np.repeat(goals, s, axis=0), final)
    dist = np.asarray(dist, dtype=np.float64).reshape(e, s)
    rows = [{"episode": i, "seed": ep.seed, "candidates": s, "rho": spearman(loss[i], dist[i]).rho,
             "best_loss_distance": dist[i, np.argmin(loss[i])], "best_distance": dist[i].min()}
            for i, ep in enumerate(episodes)]
    return pd.DataFrame(rows, columns=list(ALIGNMENT_COLUMNS))
