"""wmqlib.online: retraining on the model's own plans - the data it collects, the mixture, resumability and the
continuation of a finished checkpoint, on the seconds-long ``tiny-joint`` recipe."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from wmqlib import online
from wmqlib.envs import TrajectoryData, make_env, sample_episodes
from wmqlib.evaluate import evaluate, planned_actions
from wmqlib.models import load_world_model
from wmqlib.recipes import ONLINE_PLANNER, PRESETS, TrainConfig
from wmqlib.train import train

PLANNER = dataclasses.replace(ONLINE_PLANNER, samples=8, topk=2, opt_steps=1)
RECIPE = dataclasses.replace(PRESETS["tiny-joint"], traj_len=25)  # one online plan: 5 model steps x frameskip 5
ONLINE = dataclasses.replace(RECIPE, online_rounds=2, online_episodes=3, online_steps=2)


@pytest.fixture(autouse=True)
def small_planner(monkeypatch):
    monkeypatch.setattr(online, "ONLINE_PLANNER", PLANNER)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("online")
    train(RECIPE, root / "base", progress=False, evaluate_fp=False, data_dir=root / "data")
    return root


def test_chop_cuts_consecutive_pieces_sharing_their_boundary_frame(base):
    data = TrajectoryData.load(next((base / "data").glob("*.npz")))
    pieces = online.chop(data, 10)
    assert len(pieces) == 2 * len(data) and pieces.traj_len == 10  # 25 actions: two pieces, 5 dropped
    np.testing.assert_array_equal(pieces.frames[len(data) + 1], data.frames[1, 10:21])  # piece 2 of trajectory 1
    np.testing.assert_array_equal(pieces.actions[1], data.actions[1, :10])
    assert pieces.frames[1, -1].tobytes() == pieces.frames[len(data) + 1, 0].tobytes()
    with pytest.raises(ValueError, match="trajectories of 25 actions hold no piece of 30"):
        online.chop(data, 30)


def test_collected_plans_are_the_plans_evaluate_executes(base):
    model = load_world_model(base / "base")
    data = TrajectoryData.load(next((base / "data").glob("*.npz")))
    states, actions = online.collect(model, data, 3, 2)
    episodes = sample_episodes("wall", 6, seed=online.EPISODE_SEED, split="online")[3:]  # round 2: episodes 3-5
    env = make_env("wall", render_size=data.img_size)
    np.testing.assert_array_equal(actions, planned_actions(model, env, PLANNER, episodes, render_size=data.img_size))
    np.testing.assert_array_equal(states[:, 0], np.stack([e.start_state for e in episodes]))
    np.testing.assert_array_equal(states[:, -1], env.rollout_actions(states[:, 0], actions))
    reached, _ = env.eval_state(np.stack([e.goal_state for e in episodes]), states[:, -1])
    scored = evaluate(model, env, PLANNER, episodes, render_size=data.img_size)
    assert list(reached) == list(scored["success"])  # the same plans, the same outcomes
    as_data = online.as_data(data, states, actions)
    assert as_data.traj_len == 25 and as_data.frames.shape[1:] == data.frames.shape[1:] and \
        as_data.action_mean is data.action_mean  # the recipe's statistics z-score the new data
    np.testing.assert_array_equal(as_data.frames[0, 7], env.observe(states[0, 7:8], data.img_size)["visual"][0])


def test_online_rounds_train_only_the_predictor_and_a_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    base = tmp_path  # trained here, beside the whole recipe: both at this test's torch thread count
    train(RECIPE, base / "base", progress=False, evaluate_fp=False, data_dir=base / "data")
    whole = train(ONLINE, base / "whole", progress=False, evaluate_fp=False, data_dir=base / "data")
    before = load_world_model(base / "base")
    card = json.loads((base / "whole" / "card.json").read_text())
    assert card["recipe"]["online_rounds"] == 2 and "online" in card["seconds"] and "online_first" in card["losses"]
    changed = [n for n, p in whole.state_dict().items() if not torch.equal(p, before.state_dict()[n])]
    assert changed and all(n.startswith(("predictor.", "action_encoder.")) for n in changed)

    calls = []
    real = online.collect

    def killed_in_round_2(model, data, n, round_):  # the first run dies while planning round 2
        calls.append(round_)
        if round_ == 2 and calls.count(2) == 1:
            raise KeyboardInterrupt
        return real(model, data, n, round_)
    monkeypatch.setattr(online, "collect", killed_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        online.extend(base / "base", ONLINE, base / "ext", progress=False, data_dir=base / "data")
    extended = online.extend(base / "base", ONLINE, base / "ext", progress=False, resume=True, data_dir=base / "data")
    assert calls == [1, 2, 2]  # round 1's plans were kept with the run, not planned again
    for name, weight in whole.state_dict().items():  # = the whole recipe trained from scratch
        assert torch.equal(weight, extended.state_dict()[name]), name
    ext_card = json.loads((base / "ext" / "card.json").read_text())
    assert ext_card["recipe"] == card["recipe"] and "--set online_rounds=2" in ext_card["regenerate"]
    assert not (base / "ext" / "training_state.pt").exists()


def test_extend_refuses_another_recipe(base):
    with pytest.raises(ValueError, match="trained with another recipe"):
        online.extend(base / "base", dataclasses.replace(ONLINE, joint_steps=4), base / "x", progress=False,
                      data_dir=base / "data")
    with pytest.raises(ValueError, match=r"online_rounds > 0, every other field as in its card"):
        online.main([str(base / "base"), "--set", "online_episodes=2", "--out", str(base / "x"), "--quiet"])
    with pytest.raises(ValueError, match="online_rounds > 0 needs online_episodes and online_steps > 0"):
        TrainConfig.from_dict({**ONLINE.to_dict(), "online_steps": 0})
    with pytest.raises(ValueError, match=r"those plans \(25 env steps\) no longer than traj_len \(20\)"):
        dataclasses.replace(ONLINE, traj_len=20)
    longer = dataclasses.replace(ONLINE, rollout_steps=5, traj_len=30)  # windows of 30 env steps: capped to a plan's
    train(longer, base / "longer", progress=False, evaluate_fp=False, data_dir=base / "data")
    card = json.loads((base / "longer" / "card.json").read_text())
    assert card["recipe"]["rollout_steps"] == 5 and len(card["losses"]) > 0 and "online" in card["seconds"]
