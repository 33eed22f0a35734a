"""wmqlib.train: the end-to-end pipeline on the seconds-long ``tiny`` recipe, and recipe validation."""

import dataclasses
import json

import pytest
import torch

from wmqlib.models import load_world_model
from wmqlib.train import PRESETS, TrainConfig, main, train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    model = train(PRESETS["tiny"], root / "tiny", progress=False, data_dir=root / "data")
    return root, model


def test_tiny_pipeline_writes_a_loadable_checkpoint_with_a_model_card(tiny_run):
    root, model = tiny_run
    loaded = load_world_model(root / "tiny")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    card = json.loads((root / "tiny" / "card.json").read_text())
    assert card["recipe"]["env"] == "wall"
    fp = card["fp_planning"]
    assert fp["episodes"] == 2 and 0 <= fp["successes"] <= 2
    assert fp["ci95"][0] <= fp["success_rate"] <= fp["ci95"][1]
    assert "FP CEM success" in (root / "tiny" / "MODEL_CARD.md").read_text()
    # the frozen encoder and the fixed proprio embedding are untouched by predictor training; the predictor learned
    assert card["losses"]["predictor_first"] > 0


def test_training_is_deterministic_for_a_seed(tiny_run, tmp_path):
    root, model = tiny_run
    again = train(PRESETS["tiny"], tmp_path / "again", progress=False, evaluate_fp=False, data_dir=root / "data")
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_the_normalisation_statistics_come_from_the_dataset(tiny_run):
    _, model = tiny_run
    assert not torch.equal(model.action_std, torch.ones_like(model.action_std))
    assert model.proprio_mean.abs().sum() > 0


@pytest.mark.parametrize("field,value,match", [
    ("env", "maze", "env must be one of"),
    ("n_traj", -1, "n_traj must be a non-negative int"),
    ("encoder_lr", float("nan"), "encoder_lr must be a finite float"),
    ("traj_len", 5, r"traj_len \(5\) must be >= .* = 10"),
    ("encoder_heads", 3, "encoder_dim"),
])
def test_invalid_recipes_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(PRESETS["tiny"], **{field: value})


def test_cli_rejects_contradicting_env_and_preset(capsys):
    with pytest.raises(SystemExit):
        main(["--preset", "mini-wall", "--env", "pusht", "--out", "x"])
    assert "contradicts" in capsys.readouterr().err


def test_cli_overrides_are_typed_and_checked(capsys):
    from wmqlib.train import parse_overrides

    assert parse_overrides(["predictor_steps=9", "encoder_lr=5e-4", "env=pusht"]) == {
        "predictor_steps": 9, "encoder_lr": 5e-4, "env": "pusht"}
    with pytest.raises(ValueError, match="FIELD one of"):
        parse_overrides(["no_such_field=1"])
    with pytest.raises(ValueError, match="needs a int"):
        parse_overrides(["predictor_steps=many"])


def test_the_model_card_says_how_to_regenerate_the_model():
    from pathlib import Path

    from wmqlib.train import regenerate_command

    assert regenerate_command(PRESETS["mini-wall"], Path("out")) == "python -m wmqlib.train --preset mini-wall --out out"
    changed = dataclasses.replace(PRESETS["mini-wall"], predictor_steps=7, seed=3)
    assert regenerate_command(changed, Path("o")) == (
        "python -m wmqlib.train --preset mini-wall --set seed=3 --set predictor_steps=7 --out o")


def test_rollout_finetune_stage_trains_only_the_predictor_side(tiny_run, tmp_path):
    root, model = tiny_run
    cfg = dataclasses.replace(PRESETS["tiny"], rollout_steps=1, finetune_steps=3)
    tuned = train(cfg, tmp_path / "tuned", progress=False, evaluate_fp=False, data_dir=root / "data")
    before, after = model.state_dict(), tuned.state_dict()
    for name in before:
        same = torch.equal(before[name], after[name])
        if name.startswith(("encoder.", "decoder.", "proprio_encoder.")) or "_mean" in name or "_std" in name:
            assert same, f"{name} changed by the rollout stage"
    assert not all(torch.equal(before[n], after[n]) for n in before if n.startswith("predictor."))
    card = json.loads((tmp_path / "tuned" / "card.json").read_text())
    assert card["losses"]["finetune_first"] > 0


def test_rollout_steps_and_finetune_steps_go_together():
    with pytest.raises(ValueError, match="rollout_steps and finetune_steps"):
        dataclasses.replace(PRESETS["tiny"], rollout_steps=1)
