"""The planner's ceiling: the same CEM and MPC, planning on the true simulator instead of a world model.

Each candidate plan is executed in the env from the episode's true state and costs the env's own success
distance between the state it ends in and the goal (``env.eval_state``). No world model can plan better than this
with the same planner, horizon and action normalisation, so a model's success is read against it: where the
ceiling itself misses a target, the target is out of reach of the planner, not of the model. (Wall: a straight
pull toward a goal behind the wall meets the wall; the simulator planner fails those episodes too.)

MPC here replays every action taken so far from the episode's start state, as ``wmqlib.evaluate`` does by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from wmqlib.envs import WmqEnv
from wmqlib.envs.episodes import Episode
from wmqlib.evaluate import SEED_STRIDE
from wmqlib.plan import CEMConfig, MPCConfig, cem, make_generators, mpc
from wmqlib.plan.objective import PlanningModel


def simulator_plan(model: PlanningModel, env: WmqEnv, episodes: Sequence[Episode], planner: CEMConfig,
                   mpc_config: MPCConfig | None = None, seed: int = 0) -> pd.DataFrame:
    """Plan every episode with CEM on the true simulator (see the module) and score it in ``env``.

    model: only its action normalisation and frameskip are used (``actions_to_env``), so the search space is the
        world model's. mpc_config: None = open loop (one plan, executed whole).
    Returns one row per episode: episode, seed, success, state_dist (after the last round), rounds.
    """
    if not isinstance(planner, CEMConfig):
        raise TypeError(f"planner must be a CEMConfig, got {type(planner).__name__}")
    if not episodes:
        raise ValueError("episodes must be a non-empty sequence of Episode")
    starts = env.check_states(np.stack([e.start_state for e in episodes]), "episodes' start_state")
    goals = env.check_states(np.stack([e.goal_state for e in episodes]), "episodes' goal_state")
    seeds = [int(e.seed) for e in episodes]
    generators = make_generators([s + SEED_STRIDE * seed for s in seeds])
    taken = [np.zeros((0, env.action_dim)) for _ in episodes]  # raw env actions executed so far, per episode
    dist = np.zeros(len(episodes))

    def raw(actions: torch.Tensor) -> np.ndarray:
        return model.actions_to_env(actions).detach().double().cpu().numpy()

    def plan_fn(active: torch.Tensor, init: torch.Tensor | None):
        index = active.numpy()
        history = [taken[i] for i in index]

        def cost(actions: torch.Tensor) -> torch.Tensor:  # (A, S, H, Da) -> (A, S)
            n_act, n_samp = actions.shape[:2]
            plans = raw(actions)  # (A, S, H * frameskip, 2)
            before = np.repeat(np.stack(history), n_samp, axis=0)
            ends = env.rollout_states(np.repeat(starts[index], n_samp, axis=0),
                                      np.concatenate([before, plans.reshape(n_act * n_samp, *plans.shape[2:])],
                                                     axis=1))[:, -1]
            _, d = env.eval_state(np.repeat(goals[index], n_samp, axis=0), ends)
            return torch.as_tensor(np.asarray(d, dtype=np.float64).reshape(n_act, n_samp), dtype=torch.float32)

        return cem(cost, planner, [generators[i] for i in index], model.action_dim, init=init)

    def execute_fn(active: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        index = active.numpy()
        plans = raw(actions)
        for k, i in enumerate(index):
            taken[i] = np.concatenate([taken[i], plans[k]])
        ends = env.rollout_states(starts[index], np.stack([taken[i] for i in index]))[:, -1]
        success, d = env.eval_state(goals[index], ends)
        dist[index] = np.asarray(d, dtype=np.float64)
        return torch.as_tensor(np.asarray(success, dtype=bool))

    outcome = mpc(plan_fn, execute_fn, len(episodes), mpc_config or MPCConfig(max_rounds=1))
    return pd.DataFrame({"episode": np.arange(len(episodes)), "seed": seeds, "success": outcome.success.numpy(),
                         "state_dist": dist, "rounds": outcome.rounds.numpy()})
