"""Does a world model plan by sight? The diagnostics every shipped model's card reports (``python -m
wmqlib.diagnostics CHECKPOINT``).

- **State probe** (``wmqlib.probe``): a ridge regression from a frame's visual latent to the state that decides
  success; its error over the env's success tolerance, per component and the largest.
- **Latent alignment**: on random pairs of rendered states, Spearman(visual-latent MSE, true state distance),
  binned by the true distance. CEM ranks plans by the latent distance of their end state to the goal: where the
  correlation vanishes (far from the goal), the planner has no signal.
- **Planning** on the DINO-WM protocol episodes (seed 99, goal_H 5, the env's default sampler) with the protocol
  CEM (300 samples, top 30, the env's iterations): open loop; MPC; MPC on the visual latent only (alpha = 0) and
  on the proprio latent only (visual_weight = 0). Each with its successes, Wilson 95% interval and seconds;
  ``screen`` runs the open-loop ones only (both latents, and visual only), for comparing candidate recipes.
- **Exploitation**: how often CEM's open-loop plan beats the episode's demonstrated plan under the model's own loss
  while failing in the env: the planner found a hole in the model, not a better plan (None where the episodes have
  no demonstrated plan: Wall's sampler draws start and goal independently).
- **Planning cost**: seconds per CEM iteration over all episodes x samples of the open-loop run.
- **References** on the same episodes: the planner's ceiling (``wmqlib.ceiling``: the same CEM on the true
  simulator, open loop, and at ``card`` level with MPC) and the trivial baselines of ``wmqlib.evaluate.baselines``
  (no action, a straight line toward the goal, random actions) over the open-loop plan's env steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from wmqlib.card import add_diagnostics, recipe_record
from wmqlib.ceiling import simulator_plan
from wmqlib.envs import env_class, make_env, sample_episodes
from wmqlib.envs.episodes import Episode
from wmqlib.evaluate import baselines, evaluate
from wmqlib.models import WorldModel, load_world_model
from wmqlib.plan import CEMConfig, MPCConfig, ObjectiveConfig
from wmqlib.plan.objective import Objective
from wmqlib.paths import RESULTS_DIR
from wmqlib.probe import encode_frames, probe_frames, probe_model, state_components
from wmqlib.stats import spearman, success_summary
from wmqlib.sweep import cached, sweep
from wmqlib.validate import check_choice, check_int

DISTANCE_BINS = (0.0, 1.0, 2.0, 4.0, 8.0, math.inf)  # in units of the env's position success tolerance
LEVELS = ("screen", "card")
KEEP = RESULTS_DIR / "diagnostics"  # the CLI's finished planning runs (a sweep folder): a killed card resumes
MPC_ROUNDS = 10  # MPC rounds of the card level: the full profile's (profiles.PROFILES["full"].mpc_rounds)
PIECE = 10  # episodes per kept piece of a planning run: the most a killed card loses is one piece of one run
# name -> (closed loop?, objective) of the planning runs; "screen" runs the open-loop ones
PLANNING_RUNS = {
    "open_loop": (False, ObjectiveConfig()),
    "open_loop_visual_only": (False, ObjectiveConfig(alpha=0.0)),
    "mpc": (True, ObjectiveConfig()),
    "visual_only": (True, ObjectiveConfig(alpha=0.0)),
    "proprio_only": (True, ObjectiveConfig(visual_weight=0.0)),
}


def latent_alignment(model: WorldModel, env: str, n_traj: int = 100, traj_len: int = 20, n_pairs: int = 4000,
                     seed: int = 7, bins: tuple[float, ...] = DISTANCE_BINS) -> pd.DataFrame:
    """Spearman(visual-latent MSE, true position distance) on ``n_pairs`` pairs of frames of ``n_traj`` scripted
    trajectories (``probe_frames``, trajectories and pairs from ``seed``): half of the pairs from anywhere, half
    from within one trajectory (so short distances are represented too). The true distance is the norm of the
    difference of the env's success-deciding positions (``probe.state_components`` in px: Wall's dot, PushT's
    agent and block); ``bins`` are in units of the first position's success tolerance. One row per bin [low,
    high): low, high (px), pairs, spearman (NaN under 10 pairs), latent_mse (mean)."""
    check_int("n_pairs", n_pairs, 2)
    frames = probe_frames(env, n_traj, traj_len, seed, model.config.img_size)
    latents = encode_frames(model, frames)  # (N, P * Dv)
    rng = np.random.default_rng(seed)
    half = n_pairs // 2
    i = rng.integers(0, len(frames), n_pairs)
    j = np.concatenate([rng.integers(0, len(frames), half),  # anywhere, then inside i's trajectory
                        (i[half:] // (traj_len + 1)) * (traj_len + 1) + rng.integers(0, traj_len + 1, n_pairs - half)])
    mse = ((latents[i] - latents[j]) ** 2).mean(dim=1).numpy()
    positions = [c for c in state_components(env) if c.unit == "px"]
    columns = [c.column for c in positions]
    dist = np.linalg.norm(frames.states[i][:, columns] - frames.states[j][:, columns], axis=1)
    edges = np.asarray(bins) * positions[0].tolerance
    rows = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (dist >= low) & (dist < high)
        rho = spearman(mse[inside], dist[inside]).rho if inside.sum() >= 10 else float("nan")
        rows.append({"low": float(low), "high": float(high), "pairs": int(inside.sum()), "spearman": float(rho),
                     "latent_mse": float(mse[inside].mean()) if inside.any() else float("nan")})
    return pd.DataFrame(rows)


def demonstrated_plan_loss(model: WorldModel, env: str, episodes: list[Episode],
                           objective: ObjectiveConfig = ObjectiveConfig()) -> np.ndarray:
    """The model's planning loss of each episode's demonstrated (replayed) actions: float64 (E,)."""
    renderer = make_env(env, render_size=model.config.img_size)
    starts = np.stack([e.start_state for e in episodes])
    goals = np.stack([e.goal_state for e in episodes])
    actions = model.env_to_actions(np.stack([e.actions for e in episodes]))  # (E, H, Da)
    with torch.no_grad():
        cost = Objective.of_states(model, renderer, starts, goals, objective)
        return cost(actions[:, None]).reshape(-1).double().cpu().numpy()


def exploitation(table: pd.DataFrame, demo_loss: np.ndarray) -> dict[str, Any]:
    """From an open-loop ``evaluate`` table (its final plan_loss and success per episode) and the demonstrated
    plans' losses (E,): the share of episodes whose CEM plan the model scores below the demonstrated plan
    (beats_demo), and the share that does so while failing in the env (rate, the exploitation rate)."""
    beats = table["plan_loss"].to_numpy() < demo_loss
    failed = ~table["success"].to_numpy(dtype=bool)
    n = len(table)
    return {"episodes": n, "beats_demo": float(beats.mean()), "rate": float((beats & failed).mean()),
            "exploited": int((beats & failed).sum())}


def protocol_episodes(model: WorldModel, env: str, n: int) -> list[Episode]:
    """The DINO-WM protocol episodes: seed 99, eval split, goal_H 5, the env's default sampler."""
    return sample_episodes(env, n, seed=99, split="eval", goal_H=5, frameskip=model.config.frameskip)


def planning(model: WorldModel, env: str, episodes: list[Episode], planner: CEMConfig, mpc: MPCConfig | None,
             objective: ObjectiveConfig) -> pd.DataFrame:
    """One planning run: its per-episode ``evaluate`` table with the run's wall time ``seconds`` on every row."""
    t0 = time.perf_counter()
    table = evaluate(model, make_env(env, render_size=model.config.img_size), planner, episodes, mpc=mpc,
                     objective=objective)
    return table.assign(seconds=time.perf_counter() - t0)


def summary(table: pd.DataFrame, planner: CEMConfig, mpc: MPCConfig | None) -> dict[str, Any]:
    """A planning run's card entry: ``rate`` of its successes plus seconds (summed over the pieces of a kept run,
    ``kept_planning``) and seconds per CEM iteration (open loop: all episodes x samples in one iteration)."""
    pieces = table.drop_duplicates("config_key") if "config_key" in table.columns else table.iloc[:1]
    seconds = float(pieces["seconds"].sum())
    out = {**success_summary(int(table["success"].sum()), len(table)), "seconds": round(seconds, 1)}
    if mpc is None:
        out["seconds_per_cem_iteration"] = round(seconds / planner.opt_steps, 2)
    return out


def kept_planning(model: WorldModel, env: str, episodes: list[Episode], planner: CEMConfig,
                  runs: dict[str, tuple[MPCConfig | None, ObjectiveConfig]], keep: Path | None
                  ) -> dict[str, pd.DataFrame]:
    """``planning`` of each named run (name -> (mpc, objective)), the finished work kept: with ``keep`` a results
    folder, each run is planned in pieces of at most ``PIECE`` episodes, each piece a ``wmqlib.sweep`` cache file
    there (keyed by the model's weights, the piece's episodes, planner, MPC and objective), written as it finishes
    and read back by a later call, so a killed card loses at most the piece it was in. Each episode plans with its
    own random stream (``make_generators``), so the pieces give the episodes' outcomes of one run of them all
    (tested); a run kept whole by an earlier card is read whole. Returns name -> table (episodes in the given order;
    ``seconds``: its piece's wall time)."""
    if keep is None:
        return {name: planning(model, env, episodes, planner, mpc, objective)
                for name, (mpc, objective) in runs.items()}
    weights = hashlib.sha256(b"".join(t.detach().cpu().numpy().tobytes() for t in model.state_dict().values()))
    seeds = [e.seed for e in episodes]
    by_seed = dict(zip(seeds, episodes))
    wholes = [{"run": name, "weights": weights.hexdigest()[:16], "env": env, "episodes": seeds, "planner": planner,
               "mpc": mpc, "objective": objective} for name, (mpc, objective) in runs.items()]
    configs = [piece for whole, kept in zip(wholes, cached(wholes, keep.name, keep.parent))
               for piece in ([whole] if kept else [{**whole, "episodes": seeds[i:i + PIECE]}
                                                   for i in range(0, len(seeds), PIECE)])]
    table = sweep(configs, lambda c: planning(model, env, [by_seed[s] for s in c["episodes"]], planner, c["mpc"],
                                              c["objective"]), keep.name, cache_dir=keep.parent, progress=False)
    order = {s: i for i, s in enumerate(seeds)}
    out = {}
    for whole in wholes:
        rows = table[table["run"] == whole["run"]].assign(episode=lambda t: t["seed"].map(order))
        out[whole["run"]] = rows.sort_values("episode", kind="stable").reset_index(drop=True)
    return out


def references(model: WorldModel, env: str, episodes: list[Episode], planner: CEMConfig, mpc: MPCConfig | None,
               ceiling: bool = True) -> dict[str, Any]:
    """What the model's planning success is read against, by name -> ``rate``: "simulator_open_loop" and (with
    ``mpc``) "simulator_mpc", each with its seconds (``wmqlib.ceiling``; skipped when ``ceiling`` is False), then
    the trivial baselines "no_action", "straight_line" and "random" over the open-loop plan's horizon * frameskip
    env steps and, with ``mpc``, as "<name>_mpc" over the MPC run's budget (times its rounds, as the study's)."""
    out: dict[str, Any] = {}
    renderer = make_env(env, render_size=model.config.img_size)
    for name, closed in (("simulator_open_loop", None), ("simulator_mpc", mpc)):
        if not ceiling or (name == "simulator_mpc" and mpc is None):
            continue
        t0 = time.perf_counter()
        table = simulator_plan(model, renderer, episodes, planner, closed)
        out[name] = {**success_summary(int(table["success"].sum()), len(table)), "seconds": round(time.perf_counter() - t0, 1)}
    budgets = {"": 1} if mpc is None else {"": 1, "_mpc": mpc.max_rounds}
    for suffix, rounds in budgets.items():
        table = baselines(renderer, episodes, steps=planner.horizon * model.config.frameskip * rounds)
        for name, group in table.groupby("baseline", sort=False):
            out[f"{name}{suffix}"] = success_summary(int(group["success"].sum()), len(group))
    return out


def diagnose(model: WorldModel, env: str, level: str = "card", episodes: int = 50, mpc_rounds: int = MPC_ROUNDS,
             probe_trajectories: tuple[int, int] = (300, 40), ceiling: bool = True, keep: Path | None = None
             ) -> dict[str, Any]:
    """All diagnostics of the module docstring for ``model`` in ``env``, as a JSON-able dict for card.json:
    probe, latent_alignment, planning (by ``PLANNING_RUNS`` name; ``level`` "screen" = the open-loop runs),
    exploitation, references (``references``; ``ceiling`` False skips the simulator planner, slow in PushT),
    planner, mpc_rounds, level. keep: a results folder where each finished planning run is kept
    (``kept_planning``; the CLI's is ``KEEP``), None to keep nothing."""
    check_choice("level", level, LEVELS)
    check_int("episodes", episodes, 1)
    check_int("mpc_rounds", mpc_rounds, 1)
    model = model.eval()
    probe = probe_model(model, probe_frames(env, probe_trajectories[0], 20, 0, model.config.img_size),
                        probe_frames(env, probe_trajectories[1], 20, 1, model.config.img_size))
    planner = CEMConfig(samples=300, topk=30, opt_steps=env_class(env).plan_opt_steps)
    eps = protocol_episodes(model, env, episodes)
    chosen = {name: (MPCConfig(max_rounds=mpc_rounds) if closed else None, objective)
              for name, (closed, objective) in PLANNING_RUNS.items() if level == "card" or not closed}
    tables = kept_planning(model, env, eps, planner, chosen, keep)
    runs = {name: summary(table, planner, chosen[name][0]) for name, table in tables.items()}
    return {
        "level": level,
        "probe": {"components": {row.component: round(float(row.error_over_tolerance), 4)
                                 for row in probe.itertuples()},
                  "error_over_tolerance": round(float(probe["error_over_tolerance"].max()), 4)},
        "latent_alignment": latent_alignment(model, env).round(4).to_dict(orient="records"),
        "planning": runs,
        # samplers that draw start and goal states independently (Wall's) have no demonstrated plan to compare with
        "exploitation": (exploitation(tables["open_loop"], demonstrated_plan_loss(model, env, eps))
                         if all(e.actions is not None for e in eps) else None),
        "references": references(model, env, eps, planner, MPCConfig(max_rounds=mpc_rounds) if level == "card"
                                 else None, ceiling),
        "planner": dataclasses.asdict(planner), "mpc_rounds": mpc_rounds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wmqlib.diagnostics", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a wmq checkpoint folder (its card.json receives the diagnostics); with "
                                           "--record, a folder of checkpoint folders")
    parser.add_argument("--record", action="store_true",
                        help="print the record of every checkpoint under CHECKPOINT whose card has diagnostics")
    parser.add_argument("--level", choices=LEVELS, default="card")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--mpc-rounds", type=int, default=MPC_ROUNDS,
                        help=f"MPC rounds of the card level (default {MPC_ROUNDS}, the full profile's)")
    parser.add_argument("--no-ceiling", action="store_true",
                        help="skip the simulator planner (wmqlib.ceiling; PushT's physics makes it slow)")
    args = parser.parse_args(argv)
    folder = Path(args.checkpoint)
    if args.record:
        print(recipe_record(sorted(p for p in folder.iterdir() if p.is_dir())).to_string(index=False))
        return 0
    model = load_world_model(folder)
    result = diagnose(model, model.config.env, args.level, args.episodes, args.mpc_rounds,
                      ceiling=not args.no_ceiling, keep=KEEP)
    add_diagnostics(folder, result)
    print((folder / "MODEL_CARD.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
