"""wmqlib.train: the end-to-end pipeline on the seconds-long ``tiny`` recipe, recipe validation, and a checkpoint's
training data regenerated."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from wmqlib.envs import TrajectoryData, generate_dataset
from wmqlib.models import CheckpointError, load_world_model
from wmqlib.recipes import PRESETS, TrainConfig
from wmqlib.train import main, train
from wmqlib.training_data import training_data_recipe, training_sample


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
    assert card["recipe"]["model"]["env"] == "wall" and card["recipe"]["model"] == PRESETS["tiny"].model.to_dict()
    assert TrainConfig.from_dict(card["recipe"]) == PRESETS["tiny"]
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
    ("n_traj", -1, "TrainConfig.n_traj must be an int >= 0"),
    ("encoder_lr", float("nan"), "TrainConfig.encoder_lr must be"),
    ("traj_len", 5, r"traj_len \(5\) must be >= .* = 10"),
    ("data_policy", "demo", "data policy .*must be one of .*'walks'"),
    ("model", {"env": "wall"}, "TrainConfig.model must be a WorldModelConfig"),
])
def test_invalid_recipes_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(PRESETS["tiny"], **{field: value})


def test_the_architecture_is_one_nested_world_model_config():
    from wmqlib.envs.base import env_class

    cfg = PRESETS["mini-pusht-v2"]
    assert cfg.model.proprio_dim == env_class("pusht").proprio_dim == 4 and cfg.env == "pusht"
    assert PRESETS["mini-wall"].model.proprio_dim == 2 and cfg.model_config() is cfg.model
    with pytest.raises(ValueError, match="encoder_dim"):  # the architecture's own validation still applies
        dataclasses.replace(cfg, model=cfg.model.replace(encoder_heads=3))
    # num_hist 3 needs windows of 4 frames 5 env steps apart
    with pytest.raises(ValueError, match=r"traj_len \(15\) must be >= .* = 20"):
        dataclasses.replace(cfg, traj_len=15, model=cfg.model.replace(num_hist=env_class("pusht").num_hist))


def test_cli_rejects_contradicting_env_and_preset(capsys):
    with pytest.raises(SystemExit):
        main(["--preset", "mini-wall", "--env", "pusht", "--out", "x"])
    assert "contradicts" in capsys.readouterr().err


def test_cli_overrides_are_typed_and_checked(capsys):
    from wmqlib.recipes import parse_overrides

    from wmqlib.recipes import apply_overrides

    parsed = parse_overrides(["predictor_steps=9", "encoder_lr=5e-4", "model.encoder_dim=32", "data_policy=walks"])
    assert parsed == {"predictor_steps": 9, "encoder_lr": 5e-4, "data_policy": "walks", "model": {"encoder_dim": 32}}
    cfg = apply_overrides(PRESETS["tiny"], parsed)
    assert cfg.model.encoder_dim == 32 and cfg.predictor_steps == 9 and cfg.model.img_size == 32
    with pytest.raises(ValueError, match="FIELD one of"):
        parse_overrides(["no_such_field=1"])
    with pytest.raises(ValueError, match="FIELD one of"):
        parse_overrides(["encoder_dim=32"])  # architecture fields live under model.
    with pytest.raises(ValueError, match="needs a int"):
        parse_overrides(["model.num_hist=many"])


def test_the_model_card_says_how_to_regenerate_the_model():
    from pathlib import Path

    from wmqlib.recipes import regenerate_command

    assert regenerate_command(PRESETS["mini-wall"], Path("out")) == "python -m wmqlib.train --preset mini-wall --out out"
    base = PRESETS["mini-wall"]
    changed = dataclasses.replace(base, predictor_steps=7, seed=3, model=base.model.replace(num_hist=2))
    assert regenerate_command(changed, Path("o")) == (
        "python -m wmqlib.train --preset mini-wall --set seed=3 --set predictor_steps=7 --set model.num_hist=2 "
        "--out o")


def test_foreground_weights_single_out_what_moves():
    import numpy as np

    from wmqlib.fitting import background_frame, foreground_weights

    frames = np.full((9, 4, 4, 3), 255, np.uint8)
    frames[:, 0, 0] = 0  # drawn in every frame: background
    for k in range(9):
        frames[k, 1 + k % 3, 2] = (0, 0, 255)  # a moving blue dot
    bg = background_frame(frames)
    assert bg[0, 0].tolist() == [0, 0, 0] and bg[2, 2].tolist() == [255, 255, 255]
    w = foreground_weights(torch.from_numpy(frames[:1]), torch.from_numpy(bg), 4.0)
    assert w.shape == (1, 1, 1, 4, 4) and w[0, 0, 0, 1, 2] == 5.0 and w.sum() == 16 + 4.0


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


def test_foreground_and_state_losses_shape_only_the_encoder_stage(tiny_run, tmp_path):
    root, model = tiny_run
    cfg = dataclasses.replace(PRESETS["tiny"], foreground_weight=5.0, state_weight=1.0)
    shaped = train(cfg, tmp_path / "shaped", progress=False, evaluate_fp=False, data_dir=root / "data")
    assert set(shaped.state_dict()) == set(model.state_dict())  # the state read-out is not saved
    changed = [n for n, p in shaped.state_dict().items() if n.startswith("encoder.")
               and not torch.equal(p, model.state_dict()[n])]
    assert changed  # a different encoder objective gives a different encoder
    again = train(cfg, tmp_path / "again", progress=False, evaluate_fp=False, data_dir=root / "data")
    for (name, a), (_, b) in zip(shaped.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_the_state_read_out_also_shapes_the_joint_stage(tiny_run, tmp_path):
    root, _ = tiny_run
    plain = train(PRESETS["tiny-joint"], tmp_path / "plain", progress=False, evaluate_fp=False,
                  data_dir=root / "data")
    cfg = dataclasses.replace(PRESETS["tiny-joint"], state_weight=1.0)
    read = train(cfg, tmp_path / "read", progress=False, evaluate_fp=False, data_dir=root / "data")
    assert set(read.state_dict()) == set(plain.state_dict())  # the read-out is not saved
    assert any(not torch.equal(p, plain.state_dict()[n]) for n, p in read.state_dict().items()
               if n.startswith("encoder."))
    again = train(cfg, tmp_path / "again", progress=False, evaluate_fp=False, data_dir=root / "data")
    for (name, a), (_, b) in zip(read.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


# ----- a checkpoint's training data, regenerated -----

def test_training_sample_is_the_checkpoints_training_data(tiny, tmp_path):
    model = load_world_model(tiny)
    recipe = training_data_recipe(model.provenance, tiny)
    cfg = PRESETS["tiny"]
    assert recipe == {"env": "wall", "n_traj": cfg.n_traj, "traj_len": cfg.traj_len, "seed": cfg.seed,
                      "img_size": cfg.img_size, "policy": "walks"}
    sample = training_sample(model, tiny, 3, seed=99)
    again = training_sample(model, tiny, 3, seed=99)
    np.testing.assert_array_equal(sample.frames, again.frames)  # deterministic
    full = TrajectoryData.load(generate_dataset("wall", cfg.n_traj, cfg.traj_len, cfg.seed, cfg.img_size,
                                                tmp_path / "train.npz", progress=False))
    pick = sample.meta["trajectories"]
    assert len(pick) == 3 and pick == sorted(pick)
    np.testing.assert_array_equal(sample.frames, full.frames[pick])
    np.testing.assert_array_equal(sample.actions, full.actions[pick])
    np.testing.assert_allclose(sample.action_std, full.action_std)
    assert training_sample(model, tiny, 3, seed=100).meta["trajectories"] != pick
    with pytest.raises(ValueError, match=r"n \(Setting.n_calib\) must be an int in 1..8"):
        training_sample(model, tiny, 9, seed=99)
    model.set_normalization(action_std=[2 * x for x in model.normalization()["action_std"]])
    with pytest.raises(CheckpointError, match="action_std"):
        training_sample(model, tiny, 2, seed=99)


def test_training_data_recipes_of_fine_tuned_and_early_checkpoints(tiny):
    provenance = load_world_model(tiny).provenance
    expected = training_data_recipe(provenance, tiny)
    nested = provenance["recipe"]
    cfg = PRESETS["tiny"]
    flat = {"env": "wall", "n_traj": cfg.n_traj, "traj_len": cfg.traj_len, "seed": cfg.seed, "img_size": cfg.img_size}
    # a fine-tuned copy names its base's recipe; an early (flat) recipe is the preset named like the folder / base
    assert training_data_recipe({"base_checkpoint": "x", "base_provenance": {"recipe": nested}}, "qat") == expected
    assert training_data_recipe({"recipe": flat}, "some/where/tiny") == expected
    assert training_data_recipe({"base_checkpoint": "tiny", "base_provenance": {"recipe": flat}}, "qat-of-tiny") \
        == expected
    for name, prov in [("no-recipe", {"converted_from": "somewhere"}), ("other-name", {"recipe": flat}),
                       ("other/tiny", {"recipe": {**flat, "n_traj": 9}})]:  # not the preset's data
        with pytest.raises(CheckpointError, match="its training data cannot be regenerated"):
            training_data_recipe(prov, name)
