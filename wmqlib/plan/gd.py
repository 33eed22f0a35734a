"""Gradient-descent planning: optimise z-scored actions by autograd through the world model.

DINO-WM's released GD planner: actions start as N(0, I) draws, then per step
    a <- a - lr * d(sum_e cost_e)/da + action_noise * N(0, I)      (lr 1, noise 0.003, 1000 steps)
i.e. plain SGD on the summed cost (episodes are independent, so each gets its own gradient) plus Gaussian
noise. The optimiser is configurable ("sgd" as released, or "adam"). S > 1 samples optimise S independent
starts per episode; the reported plan of an iteration is the episode's best start.

Gradients are taken with ``torch.autograd.grad`` w.r.t. the actions only, so the model's parameters never
accumulate ``.grad``; fake-quantized models pass gradients straight through their rounding.

Reported loss: ``losses[k]`` is the cost of ``plans[k]``, the actions after k + 1 updates. It is read from the
forward pass of update k + 1 (and one extra no-grad evaluation after the last update).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from wmqlib.plan.base import CostFn, PlanResult, check_generators, randn_per_episode
from wmqlib.validate import check_choice, check_float, check_int

OPTIMIZERS = ("sgd", "adam")
INITS = ("randn", "zeros")


@dataclass(frozen=True)
class GDConfig:
    """Gradient planner settings (defaults: DINO-WM's released GD planner).

    horizon: plan length H in model steps.
    opt_steps: gradient updates.
    lr: optimiser learning rate (SGD lr 1 as released).
    action_noise: std of the Gaussian noise added to the actions after every update (z-scored units).
    optimizer: "sgd" (plain, no momentum, as released) or "adam".
    init: "randn" (N(0, var_scale^2) draws, as released) or "zeros" (the dataset-mean action).
    samples: independent starts S per episode (1 as released); the best one is reported.
    var_scale: std of the "randn" initialisation.
    """

    horizon: int = 5
    opt_steps: int = 1000
    lr: float = 1.0
    action_noise: float = 0.003
    optimizer: str = "sgd"
    init: str = "randn"
    samples: int = 1
    var_scale: float = 1.0

    def __post_init__(self) -> None:
        check_int("GDConfig.horizon", self.horizon, 1)
        check_int("GDConfig.opt_steps", self.opt_steps, 1)
        check_float("GDConfig.lr", self.lr, 0.0, strict=True)
        check_float("GDConfig.action_noise", self.action_noise, 0.0)
        check_choice("GDConfig.optimizer", self.optimizer, OPTIMIZERS)
        check_choice("GDConfig.init", self.init, INITS)
        check_int("GDConfig.samples", self.samples, 1)
        check_float("GDConfig.var_scale", self.var_scale, 0.0, strict=True)


def _best(actions: Tensor, cost: Tensor) -> tuple[Tensor, Tensor]:
    """Per episode the lowest-cost start: actions (E, S, H, Da), cost (E, S) -> (E, H, Da), (E,)."""
    idx = torch.nan_to_num(cost, nan=float("inf")).argmin(dim=1)
    rows = torch.arange(cost.shape[0], device=cost.device)
    return actions[rows, idx], cost[rows, idx]


def _sgd(grad: Tensor, lr: float) -> Tensor:
    """The released update: a <- a - lr * grad."""
    return lr * grad


class _Adam:
    """Adam (Kingma & Ba 2015, default betas 0.9 / 0.999, eps 1e-8) as an update rule, elementwise, so each
    episode's update depends on its own gradients only. Written out: torch.optim's first import costs seconds."""

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.betas, self.eps, self.t = betas, eps, 0
        self.m: Tensor | None = None
        self.v: Tensor | None = None

    def __call__(self, grad: Tensor, lr: float) -> Tensor:
        b1, b2 = self.betas
        self.t += 1
        self.m = (1 - b1) * grad if self.m is None else b1 * self.m + (1 - b1) * grad
        self.v = (1 - b2) * grad * grad if self.v is None else b2 * self.v + (1 - b2) * grad * grad
        m_hat, v_hat = self.m / (1 - b1**self.t), self.v / (1 - b2**self.t)
        return lr * m_hat / (v_hat.sqrt() + self.eps)


def gd(cost_fn: CostFn, cfg: GDConfig, generators: Sequence[torch.Generator], action_dim: int,
       init: Tensor | None = None, device: torch.device | str | None = None) -> PlanResult:
    """Plan E = len(generators) episodes at once by gradient descent on the actions.

    cost_fn: differentiable ``(E, S, H, Da) -> (E, S)``.
    generators: one per episode; episode e's initialisation and noise come only from ``generators[e]``.
    action_dim: Da. init: optional (E, h, Da) warm start overwriting the first h <= H initial steps of every start.
    device: planning device; default the generators' device.
    Returns a PlanResult with plans (opt_steps, E, H, Da) and losses (opt_steps, E).
    """
    if not isinstance(cfg, GDConfig):
        raise TypeError(f"cfg must be a GDConfig, got {type(cfg).__name__}")
    check_int("gd.action_dim", action_dim, 1)
    dev = torch.device(device) if device is not None else generators[0].device if generators else torch.device("cpu")
    check_generators(generators, dev)
    n_ep, shape = len(generators), (cfg.samples, cfg.horizon, action_dim)
    if cfg.init == "randn":
        start = randn_per_episode(generators, shape, dev) * cfg.var_scale
    else:
        start = torch.zeros(n_ep, *shape, device=dev)
    if init is not None:
        if init.ndim != 3 or init.shape[0] != n_ep or init.shape[1] > cfg.horizon or init.shape[2] != action_dim:
            raise ValueError(f"init must be (E={n_ep}, h<={cfg.horizon}, Da={action_dim}), got {tuple(init.shape)}")
        start[:, :, : init.shape[1]] = init.to(dev, torch.float32)[:, None]
    actions = start.requires_grad_(True)  # (E, S, H, Da)
    step = _sgd if cfg.optimizer == "sgd" else _Adam(cfg.lr)
    plans = torch.empty(cfg.opt_steps, n_ep, cfg.horizon, action_dim, device=dev)
    losses = torch.empty(cfg.opt_steps, n_ep, device=dev)
    for it in range(cfg.opt_steps):
        cost = cost_fn(actions).float()  # (E, S)
        if not cost.requires_grad:
            raise TypeError("gd needs a cost_fn differentiable in the actions (autograd through the model); this "
                            "one returned costs without a graph - use CEM for non-differentiable models")
        if it > 0:
            plans[it - 1], losses[it - 1] = _best(actions.detach(), cost.detach())
        (grad,) = torch.autograd.grad(cost.sum(), actions)
        with torch.no_grad():
            actions -= step(grad, cfg.lr)
            actions += cfg.action_noise * randn_per_episode(generators, shape, dev)
    with torch.no_grad():
        plans[-1], losses[-1] = _best(actions.detach(), cost_fn(actions).float())
    return PlanResult(plan=plans[-1].clone(), plans=plans, losses=losses)
