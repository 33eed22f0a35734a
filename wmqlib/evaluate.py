"""Plans in the real environment: per-episode scores, per-iteration traces, trivial baselines, calibration runs.

``evaluate`` plans ALL episodes at once (one batched planner call per MPC round), executes the plans with the
environment's batched ``rollout_actions`` and scores the final states with ``eval_state``:

    success        reached the goal (latched over MPC rounds; False whenever the model produced NaN/inf)
    state_dist     the environment's distance to the goal state (Wall: pixels; PushT: see wmqlib.envs)
    visual_dist    latent MSE between the encoded final real frame and the encoded goal frame
    proprio_dist   Euclidean distance between final and goal raw proprio (env units, as DINO-WM reports)
    plan_loss      planning loss of the episode's last plan (the objective's cost of that plan)
    nan            the model produced NaN/inf (plan, loss or latents); such episodes count as failed and their
                   non-finite plans are replaced by "no action" so evaluation always continues

Two iteration axes, both free (no extra planning):

- ``trace=True`` (CEM / GD iterations, open loop): the plan after EVERY planner iteration k of the first planning
  round is executed open-loop (all H steps, from the start state) in one batched ``rollout_actions`` call. Because
  the planners draw their noise iteration by iteration, the plan of iteration k equals the final plan of a run with
  opt_steps = k + 1.
- ``per_round=True`` (MPC rounds, closed loop; the paper's "planning iterations"): one row per (episode, round
  r = 1..max_rounds) with the success latched after r rounds (as the protocol counts it), the state distance after
  r rounds and the planning loss of the episode's latest plan. Round r of a run with max_rounds = R equals the
  final result of a run with max_rounds = r; the last round equals the untraced table bit for bit.

Between MPC rounds the executor follows ``MPCConfig.replay``: by default it replays every action taken so far from
the episode's start state, as DINO-WM's evaluator does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from wmqlib.envs import Episode, TrajectoryData, WmqEnv
from wmqlib.models import RSSM, WorldModel, WorldModelBase
from wmqlib.plan import (
    CHUNK, CEMConfig, Latents, MPCConfig, Objective, ObjectiveConfig, PlannerConfig, PlanningModel, check_planner,
    encode_observations, make_generators, model_device_dtype, plan,
)
from wmqlib.plan import mpc as run_mpc
from wmqlib.quant import Calibration, capture_calibration
from wmqlib.validate import check_bool, check_choice, check_int, check_type

EPISODE_COLUMNS = ("episode", "seed", "success", "state_dist", "visual_dist", "proprio_dist", "plan_loss",
                   "rounds", "nan")
ROUND_COLUMNS = ("episode", "seed", "round", "planned", "success", "state_dist", "plan_loss", "nan", "episode_success")
SEED_STRIDE = 1_000_003  # keeps generator seeds of different `seed` values apart for any realistic episode seed


@contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Dropout off while planning (DINO-WM plans in eval mode); the caller's train/eval state is restored."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _episode_states(env: Any, episodes: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(E, S) start and goal states (float64) and the seeds; ValueError for an empty list or another env's."""
    if len(episodes) == 0:
        raise ValueError("episodes must hold at least one Episode, got none")
    names = {ep.env for ep in episodes}
    if names != {env.name}:
        raise ValueError(f"episodes are for env {sorted(names)} but env is {env.name!r}")
    starts = np.stack([np.asarray(ep.start_state, dtype=np.float64) for ep in episodes])
    goals = np.stack([np.asarray(ep.goal_state, dtype=np.float64) for ep in episodes])
    return starts, goals, [int(ep.seed) for ep in episodes]


def _to_env_actions(model: PlanningModel, actions: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """z-scored plans (N, k, Da) -> raw env actions float64 (N, k * frameskip, A) and a finite mask (N,).

    A plan with a non-finite entry becomes all-zero raw actions ("no action"), so the env never sees NaN.
    """
    finite = torch.isfinite(actions).flatten(1).all(dim=1)
    with torch.no_grad():
        raw = model.actions_to_env(torch.nan_to_num(actions.detach(), nan=0.0, posinf=0.0, neginf=0.0))
    raw = raw.float().cpu().numpy().astype(np.float64)
    finite_np = finite.cpu().numpy()
    raw[~finite_np] = 0.0
    raw[~np.isfinite(raw)] = 0.0
    return raw, finite_np


def _select(latents: Latents, index: np.ndarray) -> Latents:
    idx = torch.as_tensor(index, dtype=torch.long, device=latents["visual"].device)
    return {key: value[idx] for key, value in latents.items()}


def _score(model: PlanningModel, env: Any, states: np.ndarray, goals: np.ndarray, goal_obs: dict,
           z_goal: Latents, size: int) -> dict[str, np.ndarray]:
    """Success, state / visual / proprio distance of N final states against their goals (all arrays (N,))."""
    success, state_dist = env.eval_state(goals, states)
    obs = env.observe(states, size)
    z = encode_observations(model, obs)
    visual = (z["visual"].float() - z_goal["visual"].float()).pow(2).mean(dim=(1, 2, 3)).cpu().numpy()
    proprio = np.linalg.norm(np.asarray(obs["proprio"], np.float64) - np.asarray(goal_obs["proprio"], np.float64),
                             axis=1)
    return {"success": np.asarray(success, dtype=bool), "state_dist": np.asarray(state_dist, dtype=np.float64),
            "visual_dist": visual.astype(np.float64), "proprio_dist": proprio}


def evaluate(model: PlanningModel, env: WmqEnv, planner: PlannerConfig, episodes: Sequence[Episode],
             mpc: MPCConfig | None = None, trace: bool = False, objective: ObjectiveConfig = ObjectiveConfig(),
             chunk: int = CHUNK, render_size: int | None = None, seed: int = 0, per_round: bool = False
             ) -> pd.DataFrame:
    """Plan every episode with ``model`` and score the result in ``env``.

    model: a PlanningModel (WorldModel, a quantized copy, ...); planning runs on its device and dtype.
    env: a wmqlib.envs WmqEnv matching the episodes' env name.
    planner: a planner's config (``wmqlib.plan.PLANNERS``). episodes: wmqlib.envs Episode list (start_state,
    goal_state, seed, env).
    mpc: receding-horizon settings; None = open loop (plan once, execute the whole plan).
    trace: return one row per (episode, iteration) of the first planning round instead of one per episode.
    objective: planning objective settings. chunk: max sequences per model rollout call.
    render_size: observation size fed to the model (default env.render_size).
    seed: planner seed; episode e's generator is seeded with ``episodes[e].seed + 1_000_003 * seed``.
    per_round: return one row per (episode, MPC round) instead of one per episode (not with ``trace``).
    Returns a DataFrame with EPISODE_COLUMNS (one row per episode); traced, columns episode, seed, iteration,
    plan_loss, success, state_dist, visual_dist, proprio_dist, nan, episode_success (the episode's final outcome);
    per round, ROUND_COLUMNS: round 1..max_rounds, planned (the episode was planned in that round; False once it
    has succeeded), success (latched), state_dist and plan_loss after that round (carried over once the episode
    stopped), nan (the run produced NaN/inf by then), episode_success (the final outcome).
    """
    check_planner("planner", planner)
    if mpc is not None and not isinstance(mpc, MPCConfig):
        raise TypeError(f"mpc must be an MPCConfig or None, got {type(mpc).__name__}")
    check_bool("evaluate trace", trace)
    check_bool("evaluate per_round", per_round)
    if trace and per_round:
        raise ValueError("evaluate: trace=True (rows per CEM/GD iteration) and per_round=True (rows per MPC round) "
                         "are two views of different runs; ask for one")
    mpc = mpc or MPCConfig(max_rounds=1)
    starts, goals, seeds = _episode_states(env, episodes)
    size = env.render_size if render_size is None else render_size
    device, _ = model_device_dtype(model)
    n_ep = len(episodes)
    with _eval_mode(model):
        goal_obs = env.observe(goals, size)
        z_goal = encode_observations(model, goal_obs)
        generators = make_generators([s + SEED_STRIDE * seed for s in seeds], device)
        states = starts.copy()
        nan = np.zeros(n_ep, dtype=bool)
        taken = np.zeros((n_ep, 0, env.action_dim))  # raw env actions executed so far (for replay)
        rounds_seen: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # per round: (episodes, dist, nan so far)

        def plan_fn(index: Tensor, init: Tensor | None):
            i = index.numpy()
            start = encode_observations(model, env.observe(states[i], size))
            cost_fn = Objective(model, start, _select(z_goal, i), objective, chunk)
            return plan(cost_fn, planner, [generators[j] for j in i], model.action_dim, init=init, device=device)

        def execute_fn(index: Tensor, actions: Tensor) -> np.ndarray:
            nonlocal taken
            i = index.numpy()
            raw, finite = _to_env_actions(model, actions)
            nan[i] |= ~finite
            if mpc.replay:  # every action so far from the start (episodes that stopped get zeros, never executed)
                block = np.zeros((n_ep,) + raw.shape[1:])
                block[i] = raw
                taken = np.concatenate([taken, block], axis=1)
                states[i] = env.rollout_actions(starts[i], taken[i])
            else:
                states[i] = env.rollout_actions(states[i], raw)
            reached, dist = env.eval_state(goals[i], states[i])
            rounds_seen.append((i, np.asarray(dist, dtype=np.float64), nan[i].copy()))
            return np.asarray(reached, dtype=bool) & ~nan[i]

        outcome = run_mpc(plan_fn, execute_fn, n_ep, mpc)
        for index, result in outcome.history:
            nan[index.numpy()] |= ~torch.isfinite(result.losses).all(dim=0).cpu().numpy()
        final = _score(model, env, states, goals, goal_obs, z_goal, size)
        scored_nan = ~np.isfinite(final["visual_dist"])
        nan |= scored_nan
        success = outcome.success.numpy() & ~nan
        if trace:
            return _trace(model, env, outcome.history[0][1], starts, goals, goal_obs, z_goal, size, seeds, success)
        if per_round:
            return _per_round(outcome, rounds_seen, mpc.max_rounds, scored_nan, seeds, success)
    return pd.DataFrame({
        "episode": np.arange(n_ep), "seed": seeds, "success": success, "state_dist": final["state_dist"],
        "visual_dist": final["visual_dist"], "proprio_dist": final["proprio_dist"],
        "plan_loss": outcome.final_loss.numpy().astype(np.float64), "rounds": outcome.rounds.numpy(), "nan": nan,
    }, columns=list(EPISODE_COLUMNS))


def planned_actions(model: PlanningModel, env: WmqEnv, planner: PlannerConfig, episodes: Sequence[Episode],
                    objective: ObjectiveConfig = ObjectiveConfig(), chunk: int = CHUNK, render_size: int | None = None,
                    seed: int = 0) -> np.ndarray:
    """The open-loop plan of every episode as raw env actions float64 (E, horizon * frameskip, A), the plan
    ``evaluate`` executes with the same arguments (a non-finite plan becomes zeros, "no action")."""
    check_planner("planner", planner)
    starts, goals, seeds = _episode_states(env, episodes)
    size = env.render_size if render_size is None else render_size
    device, _ = model_device_dtype(model)
    with _eval_mode(model):
        cost_fn = Objective(model, encode_observations(model, env.observe(starts, size)),
                            encode_observations(model, env.observe(goals, size)), objective, chunk)
        result = plan(cost_fn, planner, make_generators([s + SEED_STRIDE * seed for s in seeds], device),
                      model.action_dim, device=device)
    return _to_env_actions(model, result.plan)[0]


def _per_round(outcome: Any, rounds_seen: list[tuple[np.ndarray, np.ndarray, np.ndarray]], max_rounds: int,
               scored_nan: np.ndarray, seeds: list[int], episode_success: np.ndarray) -> pd.DataFrame:
    """One row per (episode, round 1..max_rounds) from the MPC outcome and the executor's per-round records.

    An episode's values after its last planned round are carried over (it no longer moves). ``nan`` at round r is
    what was known after r rounds: non-finite plans (executor) and planning losses up to r, plus a non-finite
    encoding of the final state from the episode's last round on (that state is its state from then on), so
    success stays monotone in r and round max_rounds equals the untraced table.
    """
    n_ep = len(seeds)
    last_round = outcome.rounds.numpy()  # rounds each episode was planned in (>= 1)
    dist = np.full(n_ep, np.nan)
    loss = np.full(n_ep, np.nan)
    nan = np.zeros(n_ep, dtype=bool)
    tables = []
    for r in range(max_rounds):
        planned = np.zeros(n_ep, dtype=bool)
        if r < len(rounds_seen):
            index, round_dist, round_nan = rounds_seen[r]
            result = outcome.history[r][1]
            planned[index] = True
            dist[index] = round_dist
            loss[index] = result.final_loss.detach().float().cpu().numpy().astype(np.float64)
            nan[index] |= round_nan | ~torch.isfinite(result.losses).all(dim=0).cpu().numpy()
            latched = outcome.success_per_round[r].numpy()
        else:  # every episode had succeeded: nothing changes any more
            latched = outcome.success_per_round[-1].numpy()
        nan_now = nan | (scored_nan & (r + 1 >= last_round))
        tables.append(pd.DataFrame({
            "episode": np.arange(n_ep), "seed": seeds, "round": r + 1, "planned": planned,
            "success": latched & ~nan_now, "state_dist": dist.copy(), "plan_loss": loss.copy(), "nan": nan_now,
            "episode_success": episode_success,
        }, columns=list(ROUND_COLUMNS)))
    return pd.concat(tables).sort_values(["episode", "round"], ignore_index=True)


def _trace(model: PlanningModel, env: Any, result: Any, starts: np.ndarray, goals: np.ndarray, goal_obs: dict,
           z_goal: Latents, size: int, seeds: list[int], episode_success: np.ndarray) -> pd.DataFrame:
    """Score the plan of every iteration (iters, E, H, Da) open-loop from the starts, in one batched env call."""
    iters, n_ep = result.losses.shape
    raw, finite = _to_env_actions(model, result.plans.flatten(0, 1))  # rows ordered (iteration, episode)
    reached = env.rollout_actions(np.tile(starts, (iters, 1)), raw)
    rep_goal_obs = {key: np.tile(np.asarray(value), (iters,) + (1,) * (np.asarray(value).ndim - 1))
                    for key, value in goal_obs.items()}
    rep_z_goal = {key: value.repeat(iters, *([1] * (value.ndim - 1))) for key, value in z_goal.items()}
    scores = _score(model, env, reached, np.tile(goals, (iters, 1)), rep_goal_obs, rep_z_goal, size)
    losses = result.losses.flatten().cpu().numpy().astype(np.float64)
    nan = ~finite | ~np.isfinite(losses) | ~np.isfinite(scores["visual_dist"])
    return pd.DataFrame({
        "episode": np.tile(np.arange(n_ep), iters), "seed": np.tile(seeds, iters),
        "iteration": np.repeat(np.arange(iters), n_ep), "plan_loss": losses,
        "success": scores["success"] & ~nan, "state_dist": scores["state_dist"],
        "visual_dist": scores["visual_dist"], "proprio_dist": scores["proprio_dist"], "nan": nan,
        "episode_success": np.tile(episode_success, iters),
    }).sort_values(["episode", "iteration"], ignore_index=True)


BASELINES = ("no_action", "straight_line", "random")


def _straight_line(env: Any, starts: np.ndarray, goals: np.ndarray, steps: int) -> np.ndarray:
    """Constant raw actions (N, steps, 2) moving the agent (state[:2]) along the start->goal line.

    The env's response to an action is measured, not assumed: one small probe step (a tenth of the action bound)
    from each start gives the displacement per unit action; the constant action then covers the distance in
    ``steps`` steps, clipped to the action space. (Wall: exactly 2 px per unit; PushT: the PD controller's lag.)
    """
    limit = np.minimum(np.abs(env.action_space.low), np.abs(env.action_space.high)).astype(np.float64)
    delta = goals[:, :2] - starts[:, :2]
    dist = np.linalg.norm(delta, axis=1, keepdims=True)
    unit = np.divide(delta, dist, out=np.zeros_like(delta), where=dist > 0)
    probe = 0.1 * unit * limit
    moved = env.rollout_actions(starts, probe[:, None])[:, :2] - starts[:, :2]
    gain = np.abs((moved * unit).sum(axis=1, keepdims=True)) / np.maximum(np.linalg.norm(probe, axis=1,
                                                                                           keepdims=True), 1e-12)
    gain = np.where(gain > 1e-9, gain, 1.0)  # blocked probe: fall back to unit gain
    action = np.clip(unit * dist / (gain * steps), -limit, limit)
    return np.repeat(action[:, None], steps, axis=1)


def baselines(env: WmqEnv, episodes: Sequence[Episode], steps: int, seed: int = 0,
              kinds: Sequence[str] = BASELINES) -> pd.DataFrame:
    """Model-free reference plans on the same episodes, executed open-loop for ``steps`` env steps.

    kinds: any of "no_action" (zero actions), "straight_line" (a constant action toward the goal's agent
        position, see ``_straight_line``), "random" (uniform in the env's action box; episode e's draws come from
        ``np.random.default_rng([seed, episodes[e].seed])``).
    steps: env steps per plan; give the planner's budget (horizon * frameskip * MPC rounds) for a fair comparison.
    Returns one row per (episode, baseline): episode, seed, baseline, success, state_dist.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1 (env steps), got {steps!r}")
    unknown = [k for k in kinds if k not in BASELINES]
    if unknown or len(kinds) == 0:
        raise ValueError(f"kinds must be a non-empty subset of {list(BASELINES)}, got {list(kinds)}")
    starts, goals, seeds = _episode_states(env, episodes)
    low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)
    tables = []
    for kind in kinds:
        if kind == "no_action":
            actions = np.zeros((len(starts), steps, 2))
        elif kind == "straight_line":
            actions = _straight_line(env, starts, goals, steps)
        else:
            actions = np.stack([np.random.default_rng([seed, s]).uniform(low, high, size=(steps, len(low)))
                                for s in seeds])
        success, dist = env.eval_state(goals, env.rollout_actions(starts, actions))
        tables.append(pd.DataFrame({"episode": np.arange(len(starts)), "seed": seeds, "baseline": kind,
                                    "success": np.asarray(success, dtype=bool),
                                    "state_dist": np.asarray(dist, dtype=np.float64)}))
    return pd.concat(tables, ignore_index=True)


CALIB_SOURCES = ("planning", "dataset", "random")  # what collect_calibration records (Setting.calib_source)


def collect_calibration(model: PlanningModel, env: WmqEnv | None = None, episodes: Sequence[Episode] = (),
                        planner: PlannerConfig | None = None, mpc_rounds: int = 2, max_tokens: int = 1024,
                        max_sequences: int = 32, seed: int = 0, source: str = "planning",
                        data: TrajectoryData | None = None, **evaluate_kwargs: Any) -> Calibration:
    """Calibration statistics: the inputs of every quantization point of ``model`` (the FP model), recorded with
    ``wmqlib.quant.capture_calibration`` while it runs on one of three sources:

    - "planning" (the reference protocol): FP planning with ``planner`` on the calibration ``episodes`` (split
      "calib") for ``mpc_rounds`` MPC rounds; every encoder and predictor forward of planning and scoring is seen.
    - "random": the same episodes, but for each of ``mpc_rounds`` rounds the predictor rolls out ``samples *
      opt_steps`` action sequences of ``horizon`` model steps (as many as CEM ``planner`` evaluates in a round),
      drawn uniformly from the env's action box (episode e, round r: ``np.random.default_rng([episodes[e].seed,
      r])``), from the encoded current state; one of them (the first) is then executed in ``env`` (from the
      state the last round ended in) to give the next round's state. The encoder sees the goals once, the states of
      every round and the final states, as in planning. ``planner`` must be a CEMConfig.
    - "dataset": ``data`` alone (trajectories of the model's training data, e.g. ``wmqlib.training_data.training_sample``):
      every frame through the encoder once, then every teacher-forcing window of DINO-WM's training (``num_hist``
      frames ``frameskip`` env steps apart, with their actions, at every start) through the predictor; for an RSSM
      (num_hist 1) every frame's one-step ``rollout`` with the data's next model-step action (start state from the
      posterior, transition, cell, prior and heads, as planning runs them). ``env``, ``episodes``, ``planner`` and
      ``evaluate_kwargs`` are not used and must not be given.

    max_tokens, max_sequences, seed: reservoir sizes and sampling seed of ``capture_calibration``.
    evaluate_kwargs: passed to ``evaluate`` ("planning": objective, chunk, render_size, ...); "random" takes
    ``chunk`` (sequences per rollout call, default ``CHUNK``) and ``render_size`` (default ``env.render_size``).
    model: "random" and "dataset" use ``WorldModel`` or ``RSSM`` methods (config, env_to_actions, rollout, encode_obs;
    DINO-WM's predict and action_encoder).
    Returns the filled ``wmqlib.quant.Calibration``.
    """
    check_choice("collect_calibration source", source, CALIB_SOURCES)
    check_int("collect_calibration mpc_rounds", mpc_rounds, 1)
    if source == "dataset":
        given = [name for name, value in (("env", env), ("episodes", len(episodes) or None), ("planner", planner))
                 if value is not None] + sorted(evaluate_kwargs)
        if given:
            raise ValueError(f"collect_calibration: source='dataset' records the trajectories in `data` alone; "
                             f"do not pass {given}")
        check_type("collect_calibration data", data, TrajectoryData, "a wmqlib.envs TrajectoryData")
    else:
        if data is not None:
            raise ValueError(f"collect_calibration: data is the source='dataset' input; source={source!r} runs on "
                             "env, episodes and planner")
        if env is None or planner is None:
            raise ValueError(f"collect_calibration: source={source!r} needs env, episodes and planner")
        if source == "random":
            check_type("collect_calibration planner (source='random')", planner, CEMConfig,
                       "a CEMConfig (its samples * opt_steps sequences per round are drawn at random)")
        bad = sorted({getattr(ep, "split", "calib") for ep in episodes} - {"calib"})
        if bad:
            raise ValueError(f"calibration episodes must come from split 'calib' (sample_episodes(..., "
                             f"split='calib')); got split {bad} - calibrating on evaluation episodes would leak them")
    with capture_calibration(model, max_tokens=max_tokens, max_sequences=max_sequences, seed=seed) as calib:
        if source == "planning":
            evaluate(model, env, planner, episodes, mpc=MPCConfig(max_rounds=mpc_rounds), **evaluate_kwargs)
        else:
            with _eval_mode(model), torch.no_grad():
                if source == "random":
                    _random_rollouts(model, env, episodes, planner, mpc_rounds, **evaluate_kwargs)
                else:
                    _dataset_forwards(model, data)
    return calib


def _random_rollouts(model: WorldModel, env: WmqEnv, episodes: Sequence[Episode], planner: CEMConfig, rounds: int,
                     chunk: int = CHUNK, render_size: int | None = None) -> None:
    """The forwards of the "random" calibration source (see ``collect_calibration``); returns nothing."""
    check_int("collect_calibration chunk", chunk, 1)
    starts, goals, seeds = _episode_states(env, episodes)
    size = env.render_size if render_size is None else render_size
    low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)
    n_seq, steps = planner.samples * planner.opt_steps, planner.horizon * model.config.frameskip
    encode_observations(model, env.observe(goals, size))  # planning encodes the goals once
    states = starts.copy()
    for r in range(rounds):
        z0 = encode_observations(model, env.observe(states, size))  # (E, 1, P, Dv), (E, 1, Ep)
        executed = np.empty((len(seeds), steps, len(low)))
        for e, episode_seed in enumerate(seeds):
            raw = np.random.default_rng([episode_seed, r]).uniform(low, high, size=(n_seq, steps, len(low)))
            actions = model.env_to_actions(raw)  # (n_seq, H, Da) z-scored
            start = {key: value[e:e + 1] for key, value in z0.items()}
            for lo in range(0, n_seq, chunk):
                model.rollout(start, actions[lo:lo + chunk])
            executed[e] = raw[0]
        states = env.rollout_actions(states, executed)
    encode_observations(model, env.observe(states, size))  # scoring encodes the final states


def _dataset_forwards(model: WorldModelBase, data: TrajectoryData, chunk: int = 256) -> None:
    """The forwards of the "dataset" calibration source (see ``collect_calibration``): each frame of ``data``
    (N, T+1) through the encoder once, then the N * (T - (num_hist + 1) * frameskip + 1) teacher-forcing windows
    (num_hist frames with their stacked actions) through the model's dynamics (``_WINDOW_FORWARDS`` by its
    architecture), ``chunk`` at a time."""
    c = model.config
    if data.env != c.env or data.img_size != c.img_size:
        raise ValueError(f"collect_calibration data are {data.env!r} frames of {data.img_size} px; the model is a "
                         f"{c.env!r} model of {c.img_size} px frames")
    h, f = c.num_hist, c.frameskip
    n_starts = data.traj_len - (h + 1) * f + 1
    if n_starts < 1:
        raise ValueError(f"collect_calibration data: trajectories of {data.traj_len} steps hold no training window "
                         f"of (num_hist + 1) * frameskip = {(h + 1) * f} steps")
    n, t1 = data.frames.shape[:2]
    flat_frames = data.frames.reshape(n * t1, 1, *data.frames.shape[2:])
    flat_proprio = data.proprio.reshape(n * t1, 1, -1)
    visual, proprio = [], []
    for lo in range(0, n * t1, chunk):
        z = model.encode_obs(*model.prepare_obs(flat_frames[lo:lo + chunk], flat_proprio[lo:lo + chunk]))
        visual.append(z["visual"][:, 0])
        proprio.append(z["proprio"][:, 0])
    visual = torch.cat(visual).reshape(n, t1, *visual[0].shape[1:])  # (N, T+1, P, Dv)
    proprio = torch.cat(proprio).reshape(n, t1, -1)  # (N, T+1, Ep)
    frames = np.arange(n_starts)[:, None] + f * np.arange(h)  # (S, h) frame indices of each window's inputs
    raw = np.stack([data.actions[:, s:s + h * f] for s in range(n_starts)], axis=1)  # (N, S, h*f, 2)
    actions = model.env_to_actions(raw.reshape(n * n_starts, h * f, -1))  # (N*S, h, Da)
    _WINDOW_FORWARDS[model.architecture](model, visual[:, frames].flatten(0, 1), proprio[:, frames].flatten(0, 1),
                                         actions, chunk)


def _predict_windows(model: WorldModel, visual: Tensor, proprio: Tensor, actions: Tensor, chunk: int) -> None:
    """DINO-WM: the windows (visual (W, h, P, Dv), proprio embeddings (W, h, Ep), z-scored actions (W, h, Da)) as
    latents (W, h, P, D) through ``predict``."""
    actions = model.action_encoder(actions)  # (W, h, Ea)
    p = visual.shape[2]
    z = torch.cat([visual, proprio[:, :, None].expand(-1, -1, p, -1), actions[:, :, None].expand(-1, -1, p, -1)],
                  dim=-1)  # (W, h, P, D)
    for lo in range(0, len(z), chunk):
        model.predict(z[lo:lo + chunk])


def _rollout_windows(model: RSSM, visual: Tensor, proprio: Tensor, actions: Tensor, chunk: int) -> None:
    """RSSM (h = 1): each window's one-step ``rollout`` from its frame (visual (W, 1, 1, Dv), proprio (W, 1, Ep))
    with its action (W, 1, Da)."""
    for lo in range(0, len(visual), chunk):
        model.rollout({"visual": visual[lo:lo + chunk], "proprio": proprio[lo:lo + chunk]}, actions[lo:lo + chunk])


# a model's ``architecture`` -> how its dynamics see the "dataset" calibration source's windows
_WINDOW_FORWARDS = {"dinowm": _predict_windows, "rssm": _rollout_windows}


# ----- what the model sees and imagines (model level; the study wraps these per setting) ---------------------------

@torch.no_grad()
def encoder_error(fp_model: WorldModel, model: PlanningModel, env: WmqEnv, episodes: Sequence[Episode]) -> float:
    """Relative squared error of the visual latents of the episodes' start and goal frames, ``model`` vs the FP
    ``fp_model``: sum ||z_q - z_fp||^2 / sum ||z_fp||^2 (0 when the encoder is untouched; ~1 or more when it
    collapsed). Frames are rendered at ``fp_model.config.img_size``."""
    states = np.concatenate([np.stack([e.start_state for e in episodes]), np.stack([e.goal_state for e in episodes])])
    obs = env.observe(states, fp_model.config.img_size)
    ref = encode_observations(fp_model, obs)["visual"].float()
    got = encode_observations(model, obs)["visual"].float()
    return float((got - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-30))


def _images(x: Tensor) -> np.ndarray:
    """(T, 3, H, W) in [-1, 1] -> float32 (T, H, W, 3) in [-1, 1] for ``plots.frame_strip``."""
    return x.detach().float().clamp(-1, 1).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def imagine(model: PlanningModel, fp_model: WorldModel, env: WmqEnv, episode: Episode, planner: PlannerConfig,
            seed: int = 0, objective: ObjectiveConfig = ObjectiveConfig()) -> dict[str, np.ndarray]:
    """What ``model`` sees and imagines for one episode, one frame per model step.

    Plans the episode open loop exactly as ``evaluate`` does (same generator seed; planning is per-episode
    independent), executes the plan in ``env`` and returns, each (H + 1, img, img, 3): ``real`` (uint8 env frames),
    ``seen`` (``model``'s encoder + the FP decoder on the real frames: representation damage shows here) and
    ``imagined`` (the FP decoder on ``model``'s rollout of the plan from the encoded start: geometric drift shows as
    a mismatch with ``real``); plus ``goal`` (1, img, img, 3) uint8. ``fp_model`` is the full-precision WorldModel
    (its decoder draws both rows); seed, objective: as in ``evaluate``.
    """
    size, fs = fp_model.config.img_size, fp_model.config.frameskip
    device = fp_model.device
    start_obs, goal_obs = env.observe(episode.start_state[None], size), env.observe(episode.goal_state[None], size)
    with _eval_mode(model), torch.enable_grad():  # gradient planners need autograd; CEM ignores it
        cost = Objective(model, encode_observations(model, start_obs), encode_observations(model, goal_obs), objective)
        result = plan(cost, planner, make_generators([episode.seed + SEED_STRIDE * seed], device),
                      model.action_dim, device=device)
    actions = result.plan.detach()  # (1, H, Da)
    raw = model.actions_to_env(actions).float().cpu().numpy().astype(np.float64)
    _, frames = env.rollout_actions(episode.start_state[None], raw, render_size=size)
    real = frames[0, ::fs]  # (H + 1, img, img, 3)
    visual, proprio = model.prepare_obs(torch.as_tensor(real[None], device=device),
                                        torch.zeros(1, len(real), fp_model.config.proprio_dim, device=device))
    seen = fp_model.decode(model.encode_obs(visual, proprio)["visual"])[0]
    rollout = model.rollout(encode_observations(model, start_obs), actions)
    imagined = fp_model.decode(rollout["visual"])[0]
    return {"real": real, "seen": _images(seen), "imagined": _images(imagined), "goal": goal_obs["visual"]}
