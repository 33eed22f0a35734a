"""wmqlib.diagnostics: the model card's diagnostics, on the seconds-long ``tiny`` model and on values by hand."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from wmqlib import diagnostics
from wmqlib.card import add_diagnostics, read_card, recipe_record
from wmqlib.diagnostics import DISTANCE_BINS, diagnose, exploitation, latent_alignment, main
from wmqlib.envs import env_class, sample_episodes
from wmqlib.plan import CEMConfig, MPCConfig, ObjectiveConfig
from wmqlib.stats import success_summary
from wmqlib.recipes import PRESETS
from wmqlib.train import train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    model = train(PRESETS["tiny-joint"], root / "tiny", progress=False, evaluate_fp=False, data_dir=root / "data")
    return root / "tiny", model


def test_success_summary_is_the_share_with_its_wilson_interval():
    r = success_summary(3, 4)
    assert r["success_rate"] == 0.75 and r["successes"] == 3 and r["episodes"] == 4
    # Wilson: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 1.96, by hand for 3 of 4
    z, n, p = 1.96, 4, 0.75
    centre, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert r["ci95"] == pytest.approx([(centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)], abs=1e-4)


def test_exploitation_counts_plans_below_the_demo_that_fail():
    table = pd.DataFrame({"plan_loss": [0.1, 0.1, 0.5, 0.5], "success": [False, True, False, True]})
    out = exploitation(table, np.array([0.2, 0.2, 0.2, 0.2]))
    assert out == {"episodes": 4, "beats_demo": 0.5, "rate": 0.25, "exploited": 1}


def test_latent_alignment_bins_every_pair_by_the_tolerance(tiny):
    _, model = tiny
    table = latent_alignment(model, "wall", n_traj=6, traj_len=10, n_pairs=400)
    tol = env_class("wall").success_components[0][3]
    assert list(table["low"]) == pytest.approx([b * tol for b in DISTANCE_BINS[:-1]])
    assert table["pairs"].sum() == 400
    assert ((table["spearman"].abs() <= 1) | table["spearman"].isna()).all()
    assert table.loc[table["pairs"] < 10, "spearman"].isna().all()


def test_screen_diagnostics_go_into_the_card(tiny):
    folder, model = tiny
    result = diagnose(model, "wall", level="screen", episodes=2, probe_trajectories=(4, 2))
    assert set(result["planning"]) == {"open_loop", "open_loop_visual_only"}
    assert result["exploitation"] is None  # Wall's episodes have no demonstrated plan
    # the ceiling and the trivial baselines on the same episodes; MPC's ceiling only at card level
    assert list(result["references"]) == ["simulator_open_loop", "no_action", "straight_line", "random"]
    assert all(r["episodes"] == 2 for r in result["references"].values())
    assert "seconds" in result["references"]["simulator_open_loop"]
    add_diagnostics(folder, result)
    card = read_card(folder)
    assert card["planning"]["open_loop"]["episodes"] == 2
    assert card["probe"]["error_over_tolerance"] == max(card["probe"]["components"].values())
    assert json.loads(json.dumps(card["diagnostics"])) == card["diagnostics"]
    text = (folder / "MODEL_CARD.md").read_text()
    assert "planning: open loop visual only" in text and "Spearman(latent MSE" in text
    assert "reference: simulator open loop" in text and "reference: straight line" in text
    assert "Regenerate: `python -m wmqlib.train --preset tiny-joint" in text


def test_card_level_adds_the_closed_loop_runs_and_their_ceiling(tiny):
    _, model = tiny
    result = diagnose(model, "wall", level="card", episodes=2, mpc_rounds=2, probe_trajectories=(4, 2))
    assert list(result["planning"]) == ["open_loop", "open_loop_visual_only", "mpc", "visual_only", "proprio_only"]
    assert list(result["references"]) == ["simulator_open_loop", "simulator_mpc", "no_action", "straight_line",
                                          "random", "no_action_mpc", "straight_line_mpc", "random_mpc"]
    # MPC replans only what open loop failed: its ceiling is at least the open-loop ceiling
    refs = result["references"]
    assert refs["simulator_mpc"]["successes"] >= refs["simulator_open_loop"]["successes"]


def test_without_the_ceiling_only_the_trivial_baselines_are_references(tiny):
    _, model = tiny
    result = diagnose(model, "wall", level="screen", episodes=2, probe_trajectories=(4, 2), ceiling=False)
    assert list(result["references"]) == ["no_action", "straight_line", "random"]


def test_unknown_level_is_refused(tiny):
    _, model = tiny
    with pytest.raises(ValueError, match="level"):
        diagnose(model, "wall", level="everything")


def test_the_record_lists_each_diagnosed_recipe_and_what_it_changed(tiny, tmp_path, capsys):
    folder, model = tiny
    add_diagnostics(folder, diagnose(model, "wall", level="screen", episodes=2, probe_trajectories=(4, 2)))
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    card = read_card(other)
    card["recipe"]["joint_steps"] = 9
    (other / "card.json").write_text(json.dumps(card))
    (tmp_path / "untrained").mkdir()
    record = recipe_record([folder, other, tmp_path / "untrained"])
    assert list(record["name"]) == ["tiny", "other"]
    assert list(record["changes"]) == ["-", "joint_steps=9"]
    assert record["open_loop"].str.match(r"\d+% \[\d+%, \d+%\]").all()
    assert list(record["mpc_rounds"]) == ["-", "-"]  # screened: no MPC runs
    shutil.copytree(folder, tmp_path / "tiny")
    assert main([str(tmp_path), "--record"]) == 0  # folders sorted: "other" is the base, "tiny" differs from it
    assert "joint_steps=3" in capsys.readouterr().out
    flat = tmp_path / "flat"  # a first shipped recipe: no nested model, the architecture only in the card
    shutil.copytree(folder, flat)
    card = read_card(flat)
    card["architecture"] = card["recipe"].pop("model")
    (flat / "card.json").write_text(json.dumps(card))
    assert list(recipe_record([flat, folder])["changes"]) == ["-", "-"]


def test_the_mpc_rows_baselines_get_the_mpc_runs_env_step_budget(tiny, monkeypatch):
    _, model = tiny
    steps = []

    def fake(renderer, episodes, steps_):
        steps.append(steps_)
        return pd.DataFrame({"baseline": ["straight_line"] * len(episodes), "success": [True] * len(episodes)})
    monkeypatch.setattr(diagnostics, "baselines", lambda renderer, episodes, steps: fake(renderer, episodes, steps))
    planner = CEMConfig(samples=4, topk=2, opt_steps=1, horizon=5)
    eps = sample_episodes("wall", 2)
    refs = diagnostics.references(model, "wall", eps, planner, MPCConfig(max_rounds=3), ceiling=False)
    per_plan = planner.horizon * model.config.frameskip
    assert steps == [per_plan, 3 * per_plan] and list(refs) == ["straight_line", "straight_line_mpc"]
    assert list(diagnostics.references(model, "wall", eps, planner, None, ceiling=False)) == ["straight_line"]


def test_a_killed_card_resumes_at_the_run_it_was_in(tiny, tmp_path, monkeypatch):
    _, model = tiny
    keep = tmp_path / "diagnostics"
    real, calls = diagnostics.planning, []

    def dies_at_mpc(model, env, episodes, planner, mpc, objective):
        calls.append(mpc is not None)
        if mpc is not None:
            raise KeyboardInterrupt("killed in the first MPC run")
        return real(model, env, episodes, planner, mpc, objective)

    monkeypatch.setattr(diagnostics, "planning", dies_at_mpc)
    with pytest.raises(KeyboardInterrupt):
        diagnose(model, "wall", level="card", episodes=2, mpc_rounds=2, probe_trajectories=(4, 2), keep=keep)
    assert calls == [False, False, True] and len(list(keep.glob("*.json"))) == 2  # both open-loop runs kept
    monkeypatch.setattr(diagnostics, "planning", lambda *a: (calls.append(a[4] is not None), real(*a))[1])
    resumed = diagnose(model, "wall", level="card", episodes=2, mpc_rounds=2, probe_trajectories=(4, 2), keep=keep)
    assert calls[3:] == [True, True, True]  # only the three MPC runs ran again
    monkeypatch.setattr(diagnostics, "planning", real)
    fresh = diagnose(model, "wall", level="card", episodes=2, mpc_rounds=2, probe_trajectories=(4, 2))
    assert {k: v["successes"] for k, v in resumed["planning"].items()} == {
        k: v["successes"] for k, v in fresh["planning"].items()}
    assert resumed["exploitation"] == fresh["exploitation"]


def test_a_run_kept_in_pieces_gives_the_episodes_outcomes_of_one_run(tiny, tmp_path, monkeypatch):
    _, model = tiny
    eps = diagnostics.protocol_episodes(model, "wall", 3)
    planner = CEMConfig(samples=8, topk=2, opt_steps=2)
    runs = {"open_loop": (None, ObjectiveConfig()), "mpc": (MPCConfig(max_rounds=2), ObjectiveConfig())}
    whole = diagnostics.kept_planning(model, "wall", eps, planner, runs, keep=None)
    monkeypatch.setattr(diagnostics, "PIECE", 2)  # pieces of episodes 0-1 and 2
    pieced = diagnostics.kept_planning(model, "wall", eps, planner, runs, keep=tmp_path / "kept")
    assert len(list((tmp_path / "kept").glob("*.json"))) == 4  # two pieces per run
    columns = ["episode", "seed", "success", "state_dist", "plan_loss", "rounds"]
    for name in runs:
        pd.testing.assert_frame_equal(pieced[name][columns], whole[name][columns])
    pieces = pieced["mpc"].drop_duplicates("config_key")["seconds"]
    assert len(pieces) == 2 and diagnostics.summary(pieced["mpc"], planner, runs["mpc"][0])["seconds"] == round(
        float(pieces.sum()), 1)


def test_a_run_kept_whole_by_an_earlier_card_is_read_whole(tiny, tmp_path, monkeypatch):
    _, model = tiny
    eps = diagnostics.protocol_episodes(model, "wall", 3)
    planner = CEMConfig(samples=8, topk=2, opt_steps=1)
    runs = {"open_loop": (None, ObjectiveConfig())}
    first = diagnostics.kept_planning(model, "wall", eps, planner, runs, keep=tmp_path / "kept")  # PIECE 10: whole
    monkeypatch.setattr(diagnostics, "PIECE", 2)
    monkeypatch.setattr(diagnostics, "planning", lambda *a: pytest.fail("a kept run was planned again"))
    again = diagnostics.kept_planning(model, "wall", eps, planner, runs, keep=tmp_path / "kept")
    pd.testing.assert_frame_equal(again["open_loop"], first["open_loop"])
