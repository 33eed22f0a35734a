"""The planner table: each planner's name, its config type and its function, the one list every caller reads.

    PLANNERS["CEM"].config is CEMConfig; planner_of(GDConfig()).name == "GD"
    plan(cost_fn, CEMConfig(opt_steps=10), generators, action_dim)      # the planner the config's type names
    planning_name(CEMConfig(), mpc=True) == "MPC-CEM"; parse_planning("MPC-CEM") == (PLANNERS["CEM"], True)

A planner name ("CEM", "GD") is what tables, settings and the explorer call it; inside MPC (``mpc``, closed loop)
the planning is called ``MPC-<name>``. Adding a planner is one module (a config dataclass and a pure batched
function of a cost, as ``cem.py``) plus its row in ``PLANNERS`` and in ``PlannerConfig``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from wmqlib.plan.base import CostFn, PlanResult
from wmqlib.plan.cem import CEMConfig, cem
from wmqlib.plan.gd import GDConfig, gd
from wmqlib.validate import InvalidValue, check_choice

PlannerConfig = CEMConfig | GDConfig
MPC_PREFIX = "MPC-"  # a planner's name inside MPC: "MPC-CEM"


@dataclass(frozen=True)
class Planner:
    """One row of the table: ``name`` ("CEM"), its validated ``config`` dataclass and ``run``, the pure batched
    function ``run(cost_fn, cfg, generators, action_dim, init=None, device=None) -> PlanResult``."""

    name: str
    config: type
    run: Callable[..., PlanResult]


PLANNERS: dict[str, Planner] = {p.name: p for p in (Planner("CEM", CEMConfig, cem), Planner("GD", GDConfig, gd))}


def config_types() -> tuple[type, ...]:
    """The planners' config types in table order: (CEMConfig, GDConfig)."""
    return tuple(p.config for p in PLANNERS.values())


def planner_of(cfg: object, field: str = "planner") -> Planner:
    """The table row whose config type ``cfg`` is; InvalidValue naming ``field`` and the config types otherwise."""
    for p in PLANNERS.values():
        if isinstance(cfg, p.config):
            return p
    allowed = " or ".join(t.__name__ for t in config_types())
    raise InvalidValue(f"{field} must be a {allowed}, got {type(cfg).__name__}")


def check_planner(field: str, cfg: PlannerConfig) -> PlannerConfig:
    """``cfg`` if it is one of the planners' configs, else InvalidValue naming ``field`` (see ``planner_of``)."""
    planner_of(cfg, field)
    return cfg


def planning_name(cfg: PlannerConfig, mpc: bool = False) -> str:
    """What tables call the planning ``cfg`` does: its planner's name ("CEM"), ``MPC-<name>`` inside MPC."""
    name = planner_of(cfg).name
    return f"{MPC_PREFIX}{name}" if mpc else name


def parse_planning(name: str, field: str = "planner") -> tuple[Planner, bool]:
    """(the planner, whether it runs inside MPC) of a planning name ("CEM", "MPC-CEM", "GD", ...); InvalidValue
    naming ``field`` and every planning name otherwise."""
    mpc = isinstance(name, str) and name.startswith(MPC_PREFIX)
    allowed = [*PLANNERS, *(f"{MPC_PREFIX}{n}" for n in PLANNERS)]
    check_choice(field, name, allowed)
    return PLANNERS[name.removeprefix(MPC_PREFIX) if mpc else name], mpc


def plan(cost_fn: CostFn, cfg: PlannerConfig, generators: Sequence[torch.Generator], action_dim: int,
         init: Tensor | None = None, device: torch.device | str | None = None) -> PlanResult:
    """Run the planner that ``cfg``'s type names (CEMConfig -> ``cem``, GDConfig -> ``gd``); same arguments."""
    return planner_of(cfg, "cfg").run(cost_fn, cfg, generators, action_dim, init=init, device=device)
