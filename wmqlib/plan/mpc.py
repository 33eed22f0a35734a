"""Model-predictive control around any planner: plan, execute (part of) the plan, replan from where you landed.

The loop owns only the control logic - which episodes are still running, how much of each plan is executed,
success latched once reached, the round limit, warm starts. Planning and execution enter as callables, so the
environment stays out of ``wmqlib.plan`` (``wmqlib.evaluate`` supplies an env-backed ``execute``).
DINO-WM's MPC: execute the first ``n_taken_actions`` steps, warm-start the next plan with the unexecuted rest,
stop an episode once it has succeeded.  Its evaluator executes a round by replaying EVERY action taken so far from
the episode's start state (``MPCConfig.replay``, honoured by the executor, since only it knows the environment);
success after each round is latched and kept per round (``MPCResult.success_per_round``), the iteration axis of the
paper's "more planning iterations" findings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from wmqlib.plan.base import PlanResult
from wmqlib.validate import check_bool, check_int

PlanFn = Callable[[Tensor, Tensor | None], PlanResult]
"""``plan_fn(episodes (A,) long, init (A, h, Da) | None) -> PlanResult`` for the A still-running episodes."""
ExecuteFn = Callable[[Tensor, Tensor], Tensor]
"""``execute_fn(episodes (A,) long, actions (A, k, Da) z-scored) -> success (A,) bool`` after executing them."""


@dataclass(frozen=True)
class MPCConfig:
    """Receding-horizon settings.

    max_rounds: planning rounds per episode at most (Wall protocol: 50; the published FP rerun: 5).
    execute_steps: model steps of each plan executed before replanning; None = the whole plan.
    warm_start: seed the next round's plan with the unexecuted rest of the current one (as DINO-WM does).
    replay: how the executor reaches the state after a round: True = replay every action taken so far from the
        episode's start state (DINO-WM's evaluator); False = execute only this round's actions from the state the
        last round ended in.  The two agree wherever re-entering a state is exact (Wall); in PushT re-entering
        restarts the physics (one extra 10 ms tick, contacts forgotten).  ``mpc`` always hands the executor
        this round's actions; the executor (``wmqlib.evaluate``) keeps what was taken before and honours the flag.
    """

    max_rounds: int = 5
    execute_steps: int | None = None
    warm_start: bool = True
    replay: bool = True

    def __post_init__(self) -> None:
        check_int("MPCConfig.max_rounds", self.max_rounds, 1)
        if self.execute_steps is not None:
            check_int("MPCConfig.execute_steps", self.execute_steps, 1)
        check_bool("MPCConfig.warm_start", self.warm_start)
        check_bool("MPCConfig.replay", self.replay)


@dataclass(frozen=True)
class MPCResult:
    """Outcome of an MPC run over E episodes.

    success: (E,) bool, latched (True once any round ended in success).
    rounds: (E,) long, planning rounds each episode used.
    final_loss: (E,) float32 planning loss of each episode's last plan.
    history: per round, (episodes planned (A,) long, their PlanResult); round 0 holds every episode.
    success_per_round: (R, E) bool, the latched success after rounds 1..R (R = rounds run, <= max_rounds; the
        loop stops early once every episode succeeded); ``success_per_round[-1]`` equals ``success``.
    """

    success: Tensor
    rounds: Tensor
    final_loss: Tensor
    history: list[tuple[Tensor, PlanResult]]
    success_per_round: Tensor


def mpc(plan_fn: PlanFn, execute_fn: ExecuteFn, n_episodes: int, cfg: MPCConfig = MPCConfig()) -> MPCResult:
    """Run receding-horizon control for ``n_episodes`` episodes (all CPU bookkeeping; plans stay on their device).

    Each round plans every not-yet-successful episode in ONE batched ``plan_fn`` call, executes the first
    ``cfg.execute_steps`` steps of each plan with ``execute_fn`` and latches the returned successes.
    """
    if not isinstance(cfg, MPCConfig):
        raise TypeError(f"cfg must be an MPCConfig, got {type(cfg).__name__}")
    check_int("mpc n_episodes", n_episodes, 1)
    success = torch.zeros(n_episodes, dtype=torch.bool)
    rounds = torch.zeros(n_episodes, dtype=torch.long)
    final_loss = torch.full((n_episodes,), float("nan"))
    leftover: Tensor | None = None  # (E, h, Da) unexecuted rest of every episode's last plan
    history: list[tuple[Tensor, PlanResult]] = []
    per_round: list[Tensor] = []
    for _ in range(cfg.max_rounds):
        active = torch.nonzero(~success).flatten()
        if active.numel() == 0:
            break
        init = leftover[active] if (cfg.warm_start and leftover is not None) else None
        result = plan_fn(active, init)
        horizon = result.plan.shape[1]
        steps = horizon if cfg.execute_steps is None else cfg.execute_steps
        if steps > horizon:
            raise ValueError(f"MPCConfig.execute_steps must be <= the planner horizon ({horizon}), got {steps}")
        reached = torch.as_tensor(execute_fn(active, result.plan[:, :steps]), dtype=torch.bool).cpu()
        success[active] = reached
        rounds[active] += 1
        final_loss[active] = result.final_loss.detach().float().cpu()
        if steps < horizon:
            if leftover is None:
                leftover = torch.zeros(n_episodes, horizon - steps, result.plan.shape[2], device=result.plan.device)
            leftover[active] = result.plan[:, steps:]
        history.append((active, result))
        per_round.append(success.clone())
    return MPCResult(success=success, rounds=rounds, final_loss=final_loss, history=history,
                     success_per_round=torch.stack(per_round))
