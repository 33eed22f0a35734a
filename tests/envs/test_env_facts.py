"""Per-env facts live on the env classes, reached through the env registry."""


import pytest

from wmqlib.envs import PushT, Wall
from wmqlib.envs.base import env_class, env_names
from wmqlib.models import dinowm_config


def test_registry_returns_the_classes_without_building_an_env():
    assert env_class("wall") is Wall and env_class("pusht") is PushT
    with pytest.raises(ValueError, match="unknown env 'maze'"):
        env_class("maze")
    with pytest.raises(TypeError, match="env name must be a str"):
        env_class(3)


def test_protocol_facts_match_dino_wm():
    assert (Wall.plan_opt_steps, PushT.plan_opt_steps) == (10, 30)
    assert (Wall.mpc_max_rounds, PushT.mpc_max_rounds) == (50, 30)
    for name in env_names():
        cls = env_class(name)
        released = dinowm_config(name)
        assert cls.num_hist == released.num_hist and cls.proprio_dim == released.proprio_dim
        assert cls.predictor_emb_dropout == released.predictor_emb_dropout
    assert Wall.success_components == (("agent_x", 0, "px", 4.5), ("agent_y", 1, "px", 4.5))
    assert [c[:3] for c in PushT.success_components] == [("agent_x", 0, "px"), ("agent_y", 1, "px"), ("block_x", 2, "px"),
                                                         ("block_y", 3, "px"), ("block_angle", 4, "deg")]
    assert [c[3] for c in PushT.success_components] == pytest.approx([20.0] * 4 + [20.0])  # pi / 9 rad = 20 degrees
    assert Wall.released_normalization is None and len(PushT.released_normalization["proprio_mean"]) == 4


@pytest.mark.parametrize("cls", [Wall, PushT])
def test_samplers_and_data_policies_are_named_and_checked(cls):
    assert cls.default_sampler in cls.episode_samplers and cls.default_data_policy in cls.data_policies
    assert cls.check_sampler(None) == cls.default_sampler and cls.check_data_policy(None) == cls.default_data_policy
    with pytest.raises(ValueError, match=rf"sampler \(env '{cls.name}'\) must be one of .*, got 'nope'"):
        cls.check_sampler("nope")
    with pytest.raises(ValueError, match=rf"data policy \(env '{cls.name}'\) must be one of .*, got 'nope'"):
        cls.check_data_policy("nope")


def test_pusht_keeps_the_first_sampler_and_policy_by_name():
    assert PushT.episode_samplers == ("demo", "scripted") and PushT.default_sampler == "demo"
    assert set(PushT.data_policies) == {"demo", "pusher", "mixed"}
