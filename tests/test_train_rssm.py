"""wmqlib.train on the RSSM (``tiny-rssm``): a loadable checkpoint with its card, what each stage trains, the recipe's
validation and command line, and what runs on the trained checkpoint: the diagnostics' screen, the "dataset"
calibration source, the default group size, and QAT's refusal."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from wmqlib.models import RSSM, CheckpointError, RSSMConfig, load_world_model
from wmqlib.recipes import (PRESETS, TrainConfig, apply_overrides, base_preset, parse_overrides,
                            regenerate_command)
from wmqlib.train import main, train

TINY = PRESETS["tiny-rssm"]


def test_tiny_rssm_trains_to_a_loadable_checkpoint_with_a_card(tiny_rssm_trained):
    folder = Path(tiny_rssm_trained)
    model = load_world_model(folder)
    assert isinstance(model, RSSM) and model.config == TINY.model
    card = json.loads((folder / "card.json").read_text())
    assert TrainConfig.from_dict(card["recipe"]) == TINY
    assert card["architecture"]["architecture"] == "rssm"
    assert set(card["parameters"]) == {name for name, _ in model.named_children()}
    for stage in ("encoder", "predictor", "decoder"):  # joint, dynamics, decoder: each ran and recorded its loss
        assert card["losses"][f"{stage}_first"] > 0 and stage in card["seconds"]
    assert card["regenerate"] == f"python -m wmqlib.train --preset tiny-rssm --out {folder}"
    text = (folder / "MODEL_CARD.md").read_text()
    assert "recurrent state-space" in text and "| latent | embedding 12 per frame" in text and "tokens" not in text
    assert not (folder / "training_state.pt").exists()


def test_each_rssm_stage_trains_its_own_parts(tiny_rssm_trained, tmp_path):
    data = Path(tiny_rssm_trained).parent / "data"
    full = load_world_model(tiny_rssm_trained).state_dict()
    joint_only = train(dataclasses.replace(TINY, predictor_steps=0, decoder_steps=0), tmp_path / "joint",
                       progress=False, evaluate_fp=False, data_dir=data).state_dict()
    init = RSSM(TINY.model, seed=TINY.seed).state_dict()
    for name, value in full.items():
        part = name.split(".")[0]
        if part in ("encoder", "proprio_encoder"):  # the dynamics and decoder stages leave the encoder alone
            assert torch.equal(value, joint_only[name]), name
        if part in ("proprio_encoder", "decoder"):  # the proprio embedding is fixed; the joint stage has no decoder
            assert torch.equal(joint_only[name], init[name]), name
    changed = lambda a, b, part: any(not torch.equal(a[n], b[n]) for n in a if n.startswith(part))  # noqa: E731
    assert changed(joint_only, init, "encoder.") and changed(joint_only, init, "cell.")
    assert changed(full, joint_only, "prior.") and changed(full, joint_only, "decoder.")


def test_training_an_rssm_is_deterministic(tiny_rssm_trained, tmp_path):
    again = train(TINY, tmp_path / "again", progress=False, evaluate_fp=False,
                  data_dir=Path(tiny_rssm_trained).parent / "data")
    for (name, a), (_, b) in zip(load_world_model(tiny_rssm_trained).state_dict().items(),
                                 again.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("changes,match", [
    (dict(objective="joint"), "objective must be 'rssm' for an RSSMConfig model"),
    (dict(rollout_steps=0), "needs rollout_steps >= 1"),
    (dict(finetune_steps=2), "finetune_steps=2"),
    (dict(online_rounds=1), "online_rounds=1"),
    (dict(joint_batch=1), "needs joint_steps > 0 and joint_batch > 1"),
    (dict(kl_weight=-0.1), "TrainConfig.kl_weight must be"),
])
def test_invalid_rssm_recipes_name_the_field(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY, **changes)
    with pytest.raises(ValueError, match="objective must be 'rssm' for an RSSMConfig model and one of"):
        dataclasses.replace(PRESETS["tiny"], objective="rssm")


def test_the_rssm_command_line_round_trips():
    base = PRESETS["mini-wall-rssm"]
    assert base_preset(TINY) == "mini-wall-rssm" and base_preset(PRESETS["tiny"]) == "mini-wall"
    assert regenerate_command(base, Path("out")) == "python -m wmqlib.train --preset mini-wall-rssm --out out"
    changed = dataclasses.replace(base, kl_weight=0.5, joint_steps=10, model=base.model.replace(embed_dim=64))
    command = regenerate_command(changed, Path("o"))
    assert command == ("python -m wmqlib.train --preset mini-wall-rssm --set joint_steps=10 --set kl_weight=0.5 "
                       "--set model.embed_dim=64 --out o")
    words = command.split()
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    preset = PRESETS[words[words.index("--preset") + 1]]
    assert apply_overrides(preset, parse_overrides(sets, type(preset.model))) == changed
    with pytest.raises(ValueError, match="FIELD one of"):  # an RSSM has no encoder_dim
        parse_overrides(["model.encoder_dim=8"], RSSMConfig)


def test_the_cli_trains_the_rssm_preset_with_overrides(tiny_rssm_trained, tmp_path, monkeypatch, capsys):
    import wmqlib.train as train_module

    seen = {}
    monkeypatch.setattr(train_module, "train", lambda cfg, out, **kwargs: seen.update(cfg=cfg, out=out))
    monkeypatch.setattr(Path, "read_text", lambda self: "card")
    assert main(["--preset", "tiny-rssm", "--set", "model.stoch_dim=6", "--set", "free_bits=0.5", "--out", "x",
                 "--quiet"]) == 0
    assert seen["cfg"] == dataclasses.replace(TINY, free_bits=0.5, model=TINY.model.replace(stoch_dim=6))


# ----- what runs on a trained RSSM checkpoint -----

def test_diagnostics_screen_runs_on_the_rssm(tiny_rssm_trained, tmp_path, monkeypatch):
    import shutil

    import wmqlib.diagnostics as diagnostics
    from wmqlib.card import recipe_record

    folder = tmp_path / "tiny-rssm"
    shutil.copytree(tiny_rssm_trained, folder)
    monkeypatch.setattr(diagnostics, "KEEP", tmp_path / "results" / "diagnostics")
    assert diagnostics.main([str(folder), "--level", "screen", "--episodes", "2", "--no-ceiling"]) == 0
    card = json.loads((folder / "card.json").read_text())
    d = card["diagnostics"]
    assert d["level"] == "screen" and set(d["planning"]) == {"open_loop", "open_loop_visual_only"}
    assert all(run["episodes"] == 2 for run in d["planning"].values())
    assert set(d["probe"]["components"]) and len(d["latent_alignment"]) == len(diagnostics.DISTANCE_BINS) - 1
    assert "planning: open loop" in (folder / "MODEL_CARD.md").read_text()
    record = recipe_record([folder])  # the record of candidates reads an RSSM's card too
    assert record["name"].tolist() == ["tiny-rssm"] and record["env"].tolist() == ["wall"]


def test_dataset_calibration_sees_every_rssm_quantization_point(tiny_rssm_trained):
    from wmqlib.evaluate import collect_calibration
    from wmqlib.quant import find_points
    from wmqlib.training_data import training_sample

    model = load_world_model(tiny_rssm_trained)
    calib = collect_calibration(model, source="dataset", data=training_sample(model, tiny_rssm_trained, 2, seed=0),
                                max_tokens=32)
    assert set(calib.linears) == set(find_points(model).linears)
    # every window of 2 frames frameskip apart in the 2 trajectories reaches the transition's fc1 once
    assert calib.tokens_seen("transition.fc1") == 2 * (TINY.traj_len - 2 * TINY.model.frameskip + 1)


def test_group_size_and_qat_on_an_rssm_checkpoint(tiny_rssm_trained):
    from wmqlib.profiles import default_group_size, group_size_for
    from wmqlib.qat import finetune

    assert default_group_size(tiny_rssm_trained) == group_size_for(TINY.model.embed_dim) == 4
    with pytest.raises(CheckpointError, match="architecture 'rssm'.*only takes architecture 'dinowm'"):
        finetune(tiny_rssm_trained, 4, 1, progress=False)
