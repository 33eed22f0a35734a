"""The planning objective: how far a world model's imagined end state lies from the goal, one cost per candidate plan.

DINO-WM's objective (mode "last"): MSE(pred_visual[:, -1], goal_visual) + alpha * MSE(pred_proprio[:, -1],
goal_proprio), each averaged over all non-batch dimensions, alpha = 1. ``visual_weight`` (1 in DINO-WM) scales the
visual term, so the ablations "visual only" (alpha = 0) and "proprio only" (visual_weight = 0) are expressible.
Mode "all" weights every predicted frame t = 1..H with base**t, normalised to sum 1. (DINO-WM's "all" also weights
the start frame, which every candidate shares, and divides once more by H + 1; both only shift and scale the cost,
so CEM ranks candidates identically.)

Start and goal are encoded ONCE per episode; every candidate of that episode reuses those latents (the
original re-encodes the start image for each of the 300 CEM samples). The E * S candidate rollouts go to the model
in blocks of at most ``chunk`` sequences, so memory stays bounded whatever E and S are; a block holds whole episodes
(one is split only when its S samples alone exceed ``chunk``) and passes one start latent per episode, which the
model broadcasts over that episode's samples instead of copying it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from wmqlib import validate

Latents = dict[str, Tensor]
"""``{"visual": (B, T, P, Dv), "proprio": (B, T, Ep)}`` as returned by ``encode_obs`` and ``rollout``."""


@runtime_checkable
class PlanningModel(Protocol):
    """The part of ``wmqlib.models.WorldModel`` that planning and evaluation use (the methods listed here).

    Anything implementing it can be planned with: the real world model, a fake-quantized copy, or a test oracle.
    """

    @property
    def action_dim(self) -> int:
        """Model-step action size Da = frameskip * env action dim."""
        ...

    def prepare_obs(self, frames: Tensor, proprio: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 frames (B, T, H, W, 3) and raw proprio (B, T, p) -> visual (B, T, 3, img, img), proprio z-scored."""
        ...

    def encode_obs(self, visual: Tensor, proprio: Tensor) -> Latents:
        """-> {"visual": (B, T, P, Dv), "proprio": (B, T, Ep)}."""
        ...

    def rollout(self, z0: Latents, actions: Tensor) -> Latents:
        """z0 (B0, 1, ...) with B0 dividing B (episode-major: sequence b starts from z0[b // (B // B0)]), actions
        (B, H, Da) z-scored -> latents of H + 1 frames (index 0 = the start), differentiable in ``actions``."""
        ...

    def actions_to_env(self, actions: Tensor) -> Tensor:
        """z-scored (..., H, Da) -> raw env actions (..., H * frameskip, env_action_dim)."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[Tensor]: ...

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]: ...


def model_device_dtype(model: PlanningModel) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first floating parameter (else buffer); CPU float32 if it has none."""
    for source in (model.parameters(), model.buffers()):
        for t in source:
            if t.is_floating_point():
                return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def _check_model(model: object) -> None:
    if not isinstance(model, PlanningModel):
        missing = [name for name in ("action_dim", "prepare_obs", "encode_obs", "rollout", "actions_to_env",
                                     "parameters", "buffers") if not hasattr(model, name)]
        raise TypeError(f"model must implement the PlanningModel protocol; {type(model).__name__} lacks {missing}")


@torch.no_grad()
def encode_observations(model: PlanningModel, obs: Mapping[str, object], chunk: int = 256) -> Latents:
    """Encode single observations of E episodes: {"visual": uint8 (E, H, W, 3), "proprio": raw (E, p)}
    (numpy or torch) -> {"visual": (E, 1, P, Dv), "proprio": (E, 1, Ep)} on the model's device and dtype.

    Runs ``prepare_obs`` + ``encode_obs`` in chunks of at most ``chunk`` images (the encoder dominates memory).
    """
    _check_model(model)
    validate.check_int("encode_observations.chunk", chunk, 1)
    if "visual" not in obs or "proprio" not in obs:
        raise ValueError(f"obs must have keys 'visual' and 'proprio', got {sorted(obs)}")
    device, dtype = model_device_dtype(model)
    frames = torch.as_tensor(np.asarray(obs["visual"]), device=device)
    proprio = torch.as_tensor(np.asarray(obs["proprio"], dtype=np.float32), device=device)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"obs['visual'] must be uint8 (E, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    if proprio.ndim != 2 or proprio.shape[0] != frames.shape[0]:
        raise ValueError(f"obs['proprio'] must be (E, p) with E = {frames.shape[0]}, got {tuple(proprio.shape)}")
    parts = []
    for lo in range(0, frames.shape[0], chunk):
        visual, prop = model.prepare_obs(frames[lo:lo + chunk, None], proprio[lo:lo + chunk, None])
        parts.append(model.encode_obs(visual.to(dtype), prop.to(dtype)))
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


@dataclass(frozen=True)
class ObjectiveConfig:
    """How a predicted latent trajectory is scored against the goal.

    mode: "last" (only the final predicted frame, DINO-WM's default) or "all" (every predicted frame, weights
        base**t normalised to sum 1, so later frames count more for base > 1).
    alpha: weight of the proprio MSE (1 in DINO-WM for PushT and Wall); 0 plans with the visual latent only.
    base: geometric weight base for mode "all" (DINO-WM: 2); ignored by mode "last".
    visual_weight: weight of the visual MSE (1 in DINO-WM); 0 plans with the proprio latent only. At least one of
        visual_weight and alpha must be positive (else every plan costs the same).
    """

    mode: str = "last"
    alpha: float = 1.0
    base: float = 2.0
    visual_weight: float = 1.0

    def __post_init__(self) -> None:
        validate.check_choice("ObjectiveConfig.mode", self.mode, ("last", "all"))
        validate.check_float("ObjectiveConfig.alpha", self.alpha, 0.0)
        validate.check_float("ObjectiveConfig.base", self.base, 0.0, strict=True)
        validate.check_float("ObjectiveConfig.visual_weight", self.visual_weight, 0.0)
        if self.visual_weight == 0 and self.alpha == 0:
            raise validate.InvalidValue("ObjectiveConfig.visual_weight and ObjectiveConfig.alpha must not both be 0 "
                                        "(every plan would cost the same), got visual_weight=0 and alpha=0")


def latent_mse(pred: Latents, goal: Latents, cfg: ObjectiveConfig = ObjectiveConfig()) -> Tensor:
    """Objective value per sequence, float32 (B,).

    pred: {"visual": (B, T, P, Dv), "proprio": (B, T, Ep)} with T = H + 1 (frame 0 = start);
    goal: {"visual": (G, 1, P, Dv), "proprio": (G, 1, Ep)} with G dividing B, episode-major: sequence b is scored
    against goal b // (B // G) (G = B: one goal per sequence; G = 1: one goal for all).
    """
    n_goals, n_seq = goal["visual"].shape[0], pred["visual"].shape[0]
    if n_seq % n_goals:
        raise ValueError(f"latent_mse: {n_goals} goals do not divide {n_seq} predicted sequences")

    def grouped(x: Tensor) -> Tensor:  # (N, ...) -> (G, N // G, ...) float32
        return x.float().reshape(n_goals, x.shape[0] // n_goals, *x.shape[1:])

    vis = (grouped(pred["visual"]) - grouped(goal["visual"])).pow(2).mean(dim=(3, 4)).reshape(n_seq, -1)  # (B, T)
    pro = (grouped(pred["proprio"]) - grouped(goal["proprio"])).pow(2).mean(dim=3).reshape(n_seq, -1)  # (B, T)
    per_frame = cfg.visual_weight * vis + cfg.alpha * pro  # 1.0 * vis is exact: the default is DINO-WM's bit for bit
    if cfg.mode == "last":
        return per_frame[:, -1]
    steps = per_frame.shape[1] - 1
    weights = cfg.base ** torch.arange(1, steps + 1, device=per_frame.device, dtype=torch.float64)
    weights = (weights / weights.sum()).to(per_frame.dtype)
    return per_frame[:, 1:] @ weights


# Candidate sequences per ``model.rollout`` call (whole episodes per block). Measured on the 2-core CPU, mini-pusht,
# 8 episodes x CEM 300 x 3 iterations (benchmarks/bench_plan.py --chunk-sweep 256,1024,4096): FP 3.12 / 3.19 / 4.16 s,
# W8A8 per-token 4.37 / 4.01 / 5.54 s - the activations of a 4096-sequence block outgrow the caches. Rollouts in
# blocks of >= 64 sequences gave bit-identical outputs to one batch there (1 and 2 threads).
CHUNK = 1024


class Objective:
    """``cost_fn(actions (E, S, H, Da)) -> costs (E, S)`` for E episodes whose start and goal are encoded once.

    start, goal: latents with batch E and one frame, e.g. from ``encode_observations``.
    chunk: at most this many candidate sequences go through ``model.rollout`` at a time.
    Costs are float32 on the device of ``actions``; gradients flow to ``actions`` (for gradient planners).
    """

    def __init__(self, model: PlanningModel, start: Latents, goal: Latents,
                 cfg: ObjectiveConfig = ObjectiveConfig(), chunk: int = CHUNK) -> None:
        _check_model(model)
        validate.check_int("Objective.chunk", chunk, 1)
        if not isinstance(cfg, ObjectiveConfig):
            raise TypeError(f"cfg must be an ObjectiveConfig, got {type(cfg).__name__}")
        n_start, n_goal = start["visual"].shape[0], goal["visual"].shape[0]
        if n_start != n_goal:
            raise ValueError(f"start and goal must hold the same number of episodes, got {n_start} and {n_goal}")
        self.model, self.start, self.goal, self.cfg, self.chunk = model, start, goal, cfg, chunk
        self.device, self.dtype = model_device_dtype(model)
        self.n_episodes = n_start

    @classmethod
    def of_states(cls, model: PlanningModel, env: Any, starts: Any, goals: Any,
                  cfg: ObjectiveConfig = ObjectiveConfig()) -> "Objective":
        """The objective of E episodes given by env states: starts and goals (E, state_dim) observed by ``env``
        (a ``wmqlib.envs`` environment, at its render size) and encoded by ``model``."""
        return cls(model, encode_observations(model, env.observe(starts)), encode_observations(model, env.observe(goals)),
                   cfg)

    def _pieces(self, n_ep: int, n_samples: int) -> list[tuple[slice, slice]]:
        """(episodes, samples) blocks of at most ``chunk`` sequences that never split an episode's samples across
        blocks unless one episode alone exceeds ``chunk`` - so every block's starts are whole episodes."""
        if n_samples <= self.chunk:
            per = self.chunk // n_samples
            return [(slice(e, min(e + per, n_ep)), slice(0, n_samples)) for e in range(0, n_ep, per)]
        return [(slice(e, e + 1), slice(s, min(s + self.chunk, n_samples)))
                for e in range(n_ep) for s in range(0, n_samples, self.chunk)]

    def __call__(self, actions: Tensor) -> Tensor:
        if actions.ndim != 4 or actions.shape[0] != self.n_episodes or actions.shape[-1] != self.model.action_dim:
            raise ValueError(
                f"actions must be (E={self.n_episodes}, S, H, Da={self.model.action_dim}), got {tuple(actions.shape)}"
            )
        n_ep, n_samples = actions.shape[:2]
        cast = actions.to(self.device, self.dtype)
        parts = []
        for eps, samples in self._pieces(n_ep, n_samples):
            block = cast[eps, samples]  # (e, s, H, Da)
            # Start latents of whole episodes: the model broadcasts each over its samples (no per-sample copy).
            z0 = {key: value[eps] for key, value in self.start.items()}
            goal = {key: value[eps] for key, value in self.goal.items()}
            pred = self.model.rollout(z0, block.reshape(-1, *block.shape[2:]))
            parts.append(latent_mse(pred, goal, self.cfg).reshape(block.shape[:2]))
        return self._assemble(parts, n_ep, n_samples).to(actions.device)

    def _assemble(self, parts: list[Tensor], n_ep: int, n_samples: int) -> Tensor:
        """(E, S) from the blocks of ``_pieces``, by concatenation so gradients flow to every block."""
        if n_samples <= self.chunk:
            return torch.cat(parts, dim=0)
        per_ep = -(-n_samples // self.chunk)
        return torch.cat([torch.cat(parts[e * per_ep:(e + 1) * per_ep], dim=1) for e in range(n_ep)], dim=0)
