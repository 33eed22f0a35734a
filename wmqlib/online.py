"""Rounds of retraining on the model's own plans (online world modelling, against exploitation by the planner).

A planner that searches a learned model finds the plans the model scores well but gets wrong: they lead where the
training data never went. Each round here plans ``online_episodes`` training episodes (split "online", never
evaluated) open loop with ``recipes.ONLINE_PLANNER``, executes the plans in the simulator, renders what really
happened, and trains the predictor (encoder frozen) on those transitions together with the recipe's data, so that the
model learns the outcome of the actions its planner prefers (the idea of online world modelling; arXiv 2512.09929
for the reference setting). Round k trains ``online_steps`` steps on the recipe's data cut into pieces of the plans'
length plus the plans of rounds 1..k.

    model = retrain(model, data, cfg, gen, run)            # the last stage of ``wmqlib.train`` when online_rounds > 0
    python -m wmqlib.online BASE --set online_rounds=2 --out OUT   # the same stage on a finished checkpoint

``extend`` (the CLI) continues a finished checkpoint of the same recipe without online rounds: its weights are what
that recipe's run holds before this stage, so the result equals training the whole recipe from scratch, and its
card says how to do that. Plans are stored with the run's resumable state (``RunState.keep``), so a killed run
re-renders them instead of re-planning with a model that has moved on.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmqlib.card import read_card, write_model_card
from wmqlib.envs import TrajectoryData, generate_dataset, make_env, sample_episodes
from wmqlib.evaluate import planned_actions
from wmqlib.fitting import freeze_encoder
from wmqlib.models import WorldModel, load_world_model, save_world_model
from wmqlib.paths import DATASETS_DIR
from wmqlib.recipes import (ONLINE_PLANNER, TrainConfig, apply_overrides, data_policy, dataset_path, online_seed,
                            parse_overrides, regenerate_command)
from wmqlib.resume import RunState
from wmqlib.stages import train_predictor

EPISODE_SEED = 99  # the study's episode seed: the online split's offset keeps its episodes apart from eval and calib
STAGE = "online round {k}"
FIELDS = ("online_rounds", "online_episodes", "online_steps", "online_lr")  # the recipe's fields of this stage


def chop(data: TrajectoryData, length: int) -> TrajectoryData:
    """``data``'s trajectories cut into consecutive pieces of ``length`` actions (the last frame of a piece is the
    first of the next; a remainder shorter than ``length`` is dropped), statistics unchanged."""
    pieces = data.traj_len // length
    if pieces < 1:
        raise ValueError(f"trajectories of {data.traj_len} actions hold no piece of {length}")
    cut = lambda x, extra: np.concatenate([x[:, k * length:k * length + length + extra]  # noqa: E731
                                           for k in range(pieces)])
    return dataclasses.replace(data, frames=cut(data.frames, 1), actions=cut(data.actions, 0),
                               proprio=cut(data.proprio, 1), states=cut(data.states, 1))


def collect(model: WorldModel, data: TrajectoryData, n: int, round_: int) -> tuple[np.ndarray, np.ndarray]:
    """Plan round ``round_``'s ``n`` episodes of the online split (seed ``EPISODE_SEED``, episodes n * (round_ - 1)
    on, the env's default sampler) open loop with ``ONLINE_PLANNER`` and execute them: visited states (n, H*f+1, S)
    and raw actions (n, H*f, A)."""
    env = make_env(data.env, render_size=data.img_size)
    episodes = sample_episodes(data.env, n * round_, seed=EPISODE_SEED, split="online")[n * (round_ - 1):]
    actions = planned_actions(model, env, ONLINE_PLANNER, episodes, render_size=data.img_size)
    starts = np.stack([e.start_state for e in episodes])
    return env.rollout_states(starts, actions), actions


def as_data(base: TrajectoryData, states: np.ndarray, actions: np.ndarray) -> TrajectoryData:
    """Executed plans as a dataset with ``base``'s frame size, dtypes and statistics (frames rendered here)."""
    env = make_env(base.env, render_size=base.img_size)
    n, t1 = states.shape[:2]
    frames = env.observe(states.reshape(n * t1, -1), base.img_size)["visual"].reshape(n, t1, *base.frames.shape[2:])
    return dataclasses.replace(base, frames=frames, actions=actions.astype(base.actions.dtype),
                               proprio=env.proprio_of(states).astype(base.proprio.dtype),
                               states=states.astype(base.states.dtype), meta={"source": "online plans"})


def retrain(model: WorldModel, data: TrajectoryData, cfg: Any, gen: torch.Generator, run: RunState | None = None,
            progress: bool = True) -> list[float]:
    """``cfg.online_rounds`` rounds (module docstring) on ``model`` (trained in place; its predictor and action
    encoder) with ``cfg`` (a ``recipes.TrainConfig``) and the batch generator ``gen``; returns every round's losses."""

    horizon = ONLINE_PLANNER.horizon * model.config.frameskip
    parts, losses = [chop(data, horizon)], []
    for k in range(1, cfg.online_rounds + 1):
        stage = STAGE.format(k=k)
        kept = run.kept(stage) if run is not None else None
        if kept is None:
            model.requires_grad_(False)
            model.eval()
            states, actions = collect(model, data, cfg.online_episodes, k)
            kept = {"states": torch.from_numpy(states), "actions": torch.from_numpy(actions)}
            if run is not None:
                run.keep(model, stage, kept)
        parts.append(as_data(data, kept["states"].numpy(), kept["actions"].numpy()))
        mixed = dataclasses.replace(parts[0], **{f: np.concatenate([getattr(p, f) for p in parts])
                                                 for f in ("frames", "actions", "proprio", "states")})
        latents = freeze_encoder(model, mixed)
        step = dataclasses.replace(cfg, predictor_steps=cfg.online_steps, predictor_lr=cfg.online_lr,
                                   rollout_steps=min(cfg.rollout_steps, ONLINE_PLANNER.horizon - 1))  # a plan's window
        losses += train_predictor(model, mixed, latents, step, gen, progress, run, stage)
    model.requires_grad_(False)
    model.eval()
    return losses


def extend(base: str | Path, cfg: Any, out: str | Path, progress: bool = True, resume: bool = False,
           data_dir: str | Path = DATASETS_DIR, save_every_s: float = 120.0) -> WorldModel:
    """Run the online rounds of ``cfg`` on the finished checkpoint ``base``, trained with ``cfg`` less its online
    rounds (checked against its card), and write the result with its card to ``out`` (module docstring)."""

    base = Path(base)
    card = read_card(base)
    if card is None or "recipe" not in card:
        raise FileNotFoundError(f"{base}: no card.json with a recipe (a checkpoint written by wmqlib.train)")
    trained = TrainConfig.from_dict(card["recipe"])
    offline = lambda c: dataclasses.replace(c, **{f: getattr(TrainConfig, f) for f in FIELDS})  # noqa: E731
    if not cfg.online_rounds or offline(cfg) != offline(trained):
        raise ValueError(f"{base} was trained with another recipe: extend runs only the online rounds "
                         f"(online_rounds > 0, every other field as in its card)")
    if trained.online_rounds:
        raise ValueError(f"{base} already ran {trained.online_rounds} online rounds; extend a checkpoint without")
    t0 = time.perf_counter()
    path = dataset_path(cfg, data_dir)
    if not path.exists():
        generate_dataset(cfg.env, cfg.n_traj, cfg.traj_len, cfg.seed, cfg.img_size, path, progress=progress,
                         policy=data_policy(cfg))
    data = TrajectoryData.load(path)
    model = load_world_model(base)
    gen = torch.Generator().manual_seed(online_seed(cfg))
    run = RunState(out, {"online batches": gen}, cfg.to_dict(), save_every_s, resume)
    if run.model_state() is not None:
        model.load_state_dict(run.model_state())
    losses = retrain(model, data, cfg, gen, run, progress)
    seconds = sum(run.seconds(STAGE.format(k=k)) for k in range(1, cfg.online_rounds + 1))
    kept = {k: v for k, v in card.items() if k not in ("diagnostics", "planning", "probe", "regenerate",
                                                         "fp_planning")}
    kept["seconds"] = {**card["seconds"], "online": round(seconds, 1),
                       "total": round(card["seconds"]["total"] + time.perf_counter() - t0, 1)}
    kept["losses"] = {**card["losses"], "online_first": losses[0], "online_last100": float(np.mean(losses[-100:]))}
    kept["recipe"] = cfg.to_dict()
    model.provenance = {"trained_by": "wmqlib.train", "recipe": cfg.to_dict()}
    save_world_model(model.cpu(), Path(out))
    write_model_card(kept, Path(out), regenerate_command(cfg, Path(out)))
    run.remove()
    return model


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(prog="python -m wmqlib.online", description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="a finished checkpoint folder of wmqlib.train (its card holds the recipe)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help=f"online fields of the recipe ({', '.join(FIELDS)})")
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--resume", action="store_true", help="continue a killed run from OUT/training_state.pt")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    card = read_card(Path(args.base))
    if card is None:
        parser.error(f"{args.base}: no card.json (a checkpoint written by wmqlib.train)")
    cfg = apply_overrides(TrainConfig.from_dict(card["recipe"]), parse_overrides(args.set))
    extend(args.base, cfg, args.out, progress=not args.quiet, resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
