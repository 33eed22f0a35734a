"""Cross-entropy method (CEM) over z-scored model-step actions, batched over episodes and samples.

Per episode and iteration (DINO-WM's CEM, Rubinstein's cross-entropy method):
    candidates_s = mean + std * eps_s,  eps_s ~ N(0, I),  candidate 0 := mean       (S, H, Da)
    elite = the top-k candidates by cost;  mean, std := elite.mean(0), elite.std(0) (unbiased)
No smoothing, no clipping, no early stop. Costs that are NaN count as +inf, so a model that blows up on some
candidates never makes them elite.

Reported loss: ``losses[k]`` is the cost of ``plans[k]``, the mean after iteration k's refit. It is read from
candidate 0 of iteration k + 1 (which IS that mean) and, for the last iteration, from one extra evaluation of E
sequences - so the per-iteration loss costs nothing beyond one extra (E, 1) call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from wmqlib.plan.base import CostFn, PlanResult, check_generators, randn_per_episode
from wmqlib.validate import check_float, check_int


@dataclass(frozen=True)
class CEMConfig:
    """CEM settings (defaults: DINO-WM's released planner; opt_steps 30 for PushT, 10 for Wall).

    horizon: plan length H in model steps (each = frameskip env steps).
    samples: candidates S per episode and iteration (candidate 0 is the current mean).
    topk: elite size k used to refit mean and std; 2 <= topk <= samples (std needs two elites).
    opt_steps: CEM iterations.
    var_scale: initial std in z-scored action units (initial mean 0).
    """

    horizon: int = 5
    samples: int = 300
    topk: int = 30
    opt_steps: int = 30
    var_scale: float = 1.0

    def __post_init__(self) -> None:
        check_int("CEMConfig.horizon", self.horizon, 1)
        check_int("CEMConfig.samples", self.samples, 2)
        check_int("CEMConfig.topk", self.topk, 2)
        check_int("CEMConfig.opt_steps", self.opt_steps, 1)
        check_float("CEMConfig.var_scale", self.var_scale, 0.0, strict=True)
        if self.topk > self.samples:
            raise ValueError(f"CEMConfig.topk must be <= samples ({self.samples}), got {self.topk}")


def cem(cost_fn: CostFn, cfg: CEMConfig, generators: Sequence[torch.Generator], action_dim: int,
        init: Tensor | None = None, device: torch.device | str | None = None) -> PlanResult:
    """Plan E = len(generators) episodes at once with CEM.

    cost_fn: ``(E, S, H, Da) -> (E, S)`` z-scored actions to costs (lower is better).
    generators: one per episode (see ``make_generators``); episode e draws only from ``generators[e]``.
    action_dim: Da, the model-step action size.
    init: optional (E, h, Da) warm start for the first h <= H steps of the initial mean (MPC's leftover plan);
        the remaining steps start at 0.
    device: planning device; default the generators' device.
    Returns a PlanResult with plans (opt_steps, E, H, Da) and losses (opt_steps, E) as described in the module.
    """
    if not isinstance(cfg, CEMConfig):
        raise TypeError(f"cfg must be a CEMConfig, got {type(cfg).__name__}")
    check_int("cem.action_dim", action_dim, 1)
    dev = torch.device(device) if device is not None else generators[0].device if generators else torch.device("cpu")
    check_generators(generators, dev)
    n_ep, horizon, n_samp = len(generators), cfg.horizon, cfg.samples
    mean = torch.zeros(n_ep, horizon, action_dim, device=dev)
    if init is not None:
        if init.ndim != 3 or init.shape[0] != n_ep or init.shape[1] > horizon or init.shape[2] != action_dim:
            raise ValueError(f"init must be (E={n_ep}, h<={horizon}, Da={action_dim}), got {tuple(init.shape)}")
        mean[:, : init.shape[1]] = init.to(dev, torch.float32)
    std = torch.full_like(mean, cfg.var_scale)
    plans = torch.empty(cfg.opt_steps, n_ep, horizon, action_dim, device=dev)
    losses = torch.empty(cfg.opt_steps, n_ep, device=dev)
    with torch.no_grad():
        for it in range(cfg.opt_steps):
            eps = randn_per_episode(generators, (n_samp, horizon, action_dim), dev)  # (E, S, H, Da)
            cand = mean[:, None] + std[:, None] * eps
            cand[:, 0] = mean
            cost = cost_fn(cand).float()  # (E, S)
            if it > 0:
                losses[it - 1] = cost[:, 0]
            cost = torch.nan_to_num(cost, nan=float("inf"))
            elite_idx = torch.topk(cost, cfg.topk, dim=1, largest=False).indices  # (E, k)
            elite = torch.gather(cand, 1, elite_idx[:, :, None, None].expand(-1, -1, horizon, action_dim))
            mean, std = elite.mean(dim=1), elite.std(dim=1)
            plans[it] = mean
        losses[-1] = cost_fn(mean[:, None]).float()[:, 0]
    return PlanResult(plan=plans[-1].clone(), plans=plans, losses=losses)
