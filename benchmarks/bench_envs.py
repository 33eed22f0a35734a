"""Environment speed: batched plan execution (the planners' load) and dataset generation.

Planning executes 50 episodes x 300 plans x 25 env steps. Wall runs that whole batch vectorised; PushT loops over
pymunk spaces, so it runs ``--pusht-plans`` plans per episode and extrapolates linearly to 300 (said in the output).
Each is compared with stepping one env action at a time (``env.advance``), measured in the same run.

    .venv/bin/python benchmarks/bench_envs.py            # full: also generates the two small-model datasets
    .venv/bin/python benchmarks/bench_envs.py --quick    # rollouts only, smaller dataset runs
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from wmqlib.envs import generate_dataset, make_env, sample_episodes

EPISODES, PLANS, STEPS = 50, 300, 25


def timed(fn, repeat: int = 1) -> float:
    """Best wall-clock seconds of ``repeat`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def plans(env_name: str, n_plans: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Start states (EPISODES * n_plans, S) from the eval episodes and random raw actions (.., STEPS, 2)."""
    starts = np.stack([e.start_state for e in sample_episodes(env_name, EPISODES)])
    scale = 0.8 if env_name == "wall" else 0.2  # about the datasets' action std
    return np.repeat(starts, n_plans, axis=0), rng.normal(0.0, scale, (EPISODES * n_plans, STEPS, 2))


def stepwise(env, states: np.ndarray, actions: np.ndarray) -> None:
    """The unbatched reference: reset to each start, then one ``advance`` per action."""
    for s, acts in zip(states, actions):
        env.set_state(s)
        for a in acts:
            env.advance(a)


def bench_rollouts(pusht_plans: int) -> None:
    rng = np.random.default_rng(0)
    print(f"batched plan execution: {EPISODES} episodes x {PLANS} plans x {STEPS} steps")

    wall = make_env("wall")
    states, actions = plans("wall", PLANS, rng)
    t_batch = timed(lambda: wall.rollout_actions(states, actions), repeat=3)
    ref = slice(0, 300)
    t_ref = timed(lambda: stepwise(wall, states[ref], actions[ref])) * len(states) / 300
    print(f"  wall : {t_batch:7.3f} s for all {len(states)} plans ({t_batch / len(states) / STEPS * 1e6:.2f} us/step)"
          f"; stepping one by one ~{t_ref:.1f} s (extrapolated from 300 plans) -> x{t_ref / t_batch:.0f}")
    t_frames = timed(lambda: wall.rollout_actions(states[:EPISODES], actions[:EPISODES], render_size=64))
    print(f"  wall : with 64 px frames, {EPISODES} plans x {STEPS + 1} frames: {t_frames:.3f} s")

    pusht = make_env("pusht")
    states, actions = plans("pusht", pusht_plans, rng)
    t_batch = timed(lambda: pusht.rollout_actions(states, actions))
    full = t_batch * PLANS / pusht_plans
    ref = slice(0, min(len(states), 100))
    t_ref = timed(lambda: stepwise(pusht, states[ref], actions[ref])) * len(states) / (ref.stop - ref.start)
    print(f"  pusht: {t_batch:7.3f} s for {len(states)} plans ({pusht_plans} per episode, "
          f"{t_batch / len(states) / STEPS * 1e6:.1f} us/control step = 10 pymunk ticks); "
          f"EXTRAPOLATED to {PLANS} plans/episode: {full:.1f} s; stepping one by one x{t_ref / t_batch:.2f} slower")
    t_obs = timed(lambda: pusht.observe(states[:EPISODES], 224))
    print(f"  pusht: rendering {EPISODES} frames at 224 px: {t_obs:.3f} s; at 64 px: "
          f"{timed(lambda: pusht.observe(states[:EPISODES], 64)):.3f} s")


def bench_datasets(wall_traj: int, pusht_traj: int) -> None:
    print("dataset generation (render at 64 px, compressed npz):")
    with tempfile.TemporaryDirectory() as tmp:
        for env_name, n, horizon in (("wall", wall_traj, 25), ("pusht", pusht_traj, 50)):
            path = Path(tmp) / f"{env_name}.npz"
            seconds = timed(lambda: generate_dataset(env_name, n, horizon, 0, 64, path, progress=False))
            print(f"  {env_name:5s}: {n} x {horizon} steps in {seconds:.1f} s "
                  f"({path.stat().st_size / 2 ** 20:.1f} MiB on disk)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small dataset runs (200 / 50 trajectories)")
    parser.add_argument("--pusht-plans", type=int, default=20, help="PushT plans per episode actually executed")
    args = parser.parse_args()
    bench_rollouts(args.pusht_plans)
    bench_datasets(200 if args.quick else 2000, 50 if args.quick else 1000)


if __name__ == "__main__":
    main()
