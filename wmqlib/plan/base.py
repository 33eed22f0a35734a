"""What every planner shares: the cost-callable type, the result record and per-episode random generators.

A planner is a pure function of a cost callable ``cost_fn(actions (E, S, H, Da)) -> (E, S)`` (E episodes, S
candidate plans each, horizon H, model-step action dim Da, actions z-scored). It draws its randomness from one
``torch.Generator`` per episode, so an episode planned inside a batch gets exactly the numbers it would get when
planned alone with the same generator seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

CostFn = Callable[[Tensor], Tensor]
"""``cost_fn(actions (E, S, H, Da)) -> costs (E, S)``; lower is better; differentiable for gradient planners."""


@dataclass(frozen=True)
class PlanResult:
    """What a planner returns for E episodes (all tensors float32 on the planning device).

    plan: (E, H, Da) the final plan (z-scored model-step actions); equals ``plans[-1]``.
    plans: (iters, E, H, Da) the plan after every iteration k = 0..iters-1.
    losses: (iters, E) the planning loss ``cost_fn(plans[k])`` of the plan after iteration k, so
        ``losses[-1]`` is the cost of the returned plan.
    """

    plan: Tensor
    plans: Tensor
    losses: Tensor

    @property
    def final_loss(self) -> Tensor:
        """(E,) planning loss of the returned plan."""
        return self.losses[-1]

    def select(self, index: Tensor | Sequence[int]) -> PlanResult:
        """The result restricted to the episodes ``index`` (in that order)."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.plan.device)
        return PlanResult(plan=self.plan[idx], plans=self.plans[:, idx], losses=self.losses[:, idx])


def make_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per episode seeded with ``seeds[e]``, living on ``device`` (CUDA draws need a CUDA
    generator). Keep them across MPC rounds: each round then continues the episode's own random stream."""
    gens = []
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seeds must be ints, got {seed!r} ({type(seed).__name__})")
        gen = torch.Generator(device=torch.device(device))
        gen.manual_seed(seed)
        gens.append(gen)
    return gens


def randn_per_episode(generators: Sequence[torch.Generator], shape: tuple[int, ...], device: torch.device) -> Tensor:
    """(E, *shape) standard normal float32 draws, row e taken from ``generators[e]`` only.

    Drawing row by row (instead of one (E, ...) draw) is what makes batched planning equal solo planning.
    """
    return torch.stack([torch.randn(shape, generator=g, device=device) for g in generators])


def check_generators(generators: Sequence[torch.Generator], device: torch.device) -> None:
    """Raise ValueError when there are no generators or one lives on another device type than ``device``."""
    if len(generators) == 0:
        raise ValueError("generators must hold one torch.Generator per episode, got an empty sequence")
    for g in generators:
        if not isinstance(g, torch.Generator):
            raise TypeError(f"generators must be torch.Generator objects, got {type(g).__name__}")
        if g.device.type != device.type:
            raise ValueError(
                f"generator on {g.device.type!r} but planning on {device.type!r}: build them with "
                f"make_generators(seeds, device={str(device)!r})"
            )
