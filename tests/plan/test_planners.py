"""wmqlib.plan.planners: the one planner table (name -> config type -> function), planning names and dispatch."""

from __future__ import annotations

import pytest
import torch

from wmqlib.plan import (
    PLANNERS, CEMConfig, GDConfig, MPCConfig, cem, check_planner, gd, make_generators, parse_planning, plan,
    planner_of, planning_name,
)
from wmqlib.validate import InvalidValue


def test_the_table_names_each_planner_its_config_and_function():
    assert {name: (p.config, p.run) for name, p in PLANNERS.items()} == {"CEM": (CEMConfig, cem), "GD": (GDConfig, gd)}
    assert planner_of(CEMConfig()).name == "CEM" and planner_of(GDConfig()).name == "GD"
    assert check_planner("Setting.planner", GDConfig()) == GDConfig()


def test_a_config_outside_the_table_is_refused_with_the_field_and_the_allowed_types():
    with pytest.raises(InvalidValue, match="Setting.planner must be a CEMConfig or GDConfig, got MPCConfig"):
        check_planner("Setting.planner", MPCConfig())


def test_planning_names_round_trip():
    assert planning_name(CEMConfig()) == "CEM" and planning_name(GDConfig(), mpc=True) == "MPC-GD"
    for name in ("CEM", "MPC-CEM", "GD", "MPC-GD"):
        planner, mpc = parse_planning(name)
        assert planning_name(planner.config(), mpc) == name
    with pytest.raises(ValueError, match=r"planner must be one of \['CEM', 'GD', 'MPC-CEM', 'MPC-GD'\], got 'MPPI'"):
        parse_planning("MPPI")


def test_plan_dispatches_on_the_config_type(quadratic):
    seeds = [3, 11, 42]
    cost = quadratic(seeds)
    cfg = CEMConfig(opt_steps=3, samples=20, topk=4)
    assert torch.equal(plan(cost, cfg, make_generators(seeds), 4).plans,
                       cem(cost, cfg, make_generators(seeds), 4).plans)
    assert torch.equal(plan(cost, GDConfig(opt_steps=2), make_generators(seeds), 4).plans,
                       gd(cost, GDConfig(opt_steps=2), make_generators(seeds), 4).plans)
    with pytest.raises(TypeError, match="cfg must be a CEMConfig or GDConfig, got dict"):
        plan(cost, {"opt_steps": 3}, make_generators(seeds), 4)
