"""Released DINO-WM folders: strict loading of the pickled-module layout, reproduced outputs, clear errors."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from wmqlib.models import CheckpointError, load_world_model
from wmqlib.models.dinowm import RELEASED_NORMALIZATION


@pytest.fixture
def copy(released: dict, tmp_path: Path) -> Path:
    """A private copy of the released folder, for tests that damage it."""
    return Path(shutil.copytree(released["folder"], tmp_path / "pusht"))


def edit_hydra(folder: Path, **changes) -> None:
    hydra = yaml.safe_load((folder / "hydra.yaml").read_text())
    for dotted, value in changes.items():
        node = hydra
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    (folder / "hydra.yaml").write_text(yaml.safe_dump(hydra))


def test_loads_strictly_and_reproduces_the_fixture_modules(released: dict) -> None:
    model = load_world_model(released["folder"], dinov2_weights=released["dinov2_path"])
    fixture_modules = [name for name, module in sys.modules.items()
                       if str(released["root"]) in str(getattr(module, "__file__", None))]
    assert "models" not in sys.modules and not fixture_modules  # the fixture packages stay unimported
    s, c = released["sizes"], model.config
    assert (c.env, c.num_hist, c.frameskip, c.env_action_dim, c.proprio_dim) == ("pusht", 3, 5, 2, 4)
    assert (c.img_size, c.grid_size, c.patch_size, c.encoder_dim, c.encoder_heads, c.encoder_pos_grid) == (
        64, 4, 4, 64, 1, 5)
    assert (c.predictor_depth, c.predictor_heads, c.predictor_dim_head, c.latent_dim) == (2, 2, 8, 84)
    assert not model.training and model.provenance["epoch"] == 7
    inputs, expected = released["inputs"], released["expected"]
    with torch.no_grad():
        torch.testing.assert_close(model.predictor(inputs["tokens"]), expected["predictor"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.action_encoder(inputs["action"]), expected["action_encoder"])
        torch.testing.assert_close(model.proprio_encoder(inputs["proprio"]), expected["proprio_encoder"])
        decoded = model.decode(inputs["latents"])[:, 0]
    torch.testing.assert_close(decoded, expected["decoder"], atol=1e-5, rtol=1e-5)
    encoder = model.encoder.state_dict()
    assert all(torch.equal(encoder[k], v) for k, v in released["dinov2"].items())
    stats = RELEASED_NORMALIZATION["pusht"]
    torch.testing.assert_close(model.proprio_mean, torch.tensor(stats["proprio_mean"]))
    visual = torch.rand(1, 1, 3, s["img_size"], s["img_size"]) * 2 - 1
    with torch.no_grad():
        out = model.rollout(model.encode_obs(visual, torch.zeros(1, 1, 4)), torch.zeros(2, 3, 10))
    assert out["visual"].shape == (2, 4, 16, 64)


def test_epochs_and_checkpoint_paths(released: dict) -> None:
    folder, dinov2 = released["folder"], released["dinov2_path"]
    by_epoch = load_world_model(folder, dinov2_weights=dinov2, epoch=7)
    by_file = load_world_model(folder / "checkpoints" / "model_7.pth", dinov2_weights=dinov2)
    assert by_epoch.provenance["checkpoint"] == by_file.provenance["checkpoint"] == "model_7.pth"
    with pytest.raises(CheckpointError, match=r"no checkpoint model_3.pth .*available: \['model_7.pth', "
                                              r"'model_8.pth', 'model_latest.pth'\]"):
        load_world_model(folder, dinov2_weights=dinov2, epoch=3)
    with pytest.raises(ValueError, match="epoch must be 'latest' or a non-negative int, got 'last'"):
        load_world_model(folder, dinov2_weights=dinov2, epoch="last")


def test_missing_dinov2_weights_say_what_to_provide(released: dict, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="do not contain the DINOv2 encoder: pass dinov2_weights="):
        load_world_model(released["folder"])
    with pytest.raises(CheckpointError, match="DINOv2 weights not found"):
        load_world_model(released["folder"], dinov2_weights=tmp_path / "nope.pth")
    torch.save({"cls_token": torch.zeros(1, 1, 64)}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="have no 'pos_embed': not a DINOv2 ViT state_dict"):
        load_world_model(released["folder"], dinov2_weights=tmp_path / "partial.pth")


def test_mismatched_dinov2_weights_fail_with_shapes(released: dict, make_dinov2_state, tmp_path: Path) -> None:
    torch.save(make_dinov2_state(128, 1, 96, 4, 5), tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match=r"(?s)shape mismatch: predictor.pos_embedding: weights \(1, 48, 84\) vs "
                                              r"model \(1, 48, 148\).*check that they belong to this checkpoint"):
        load_world_model(released["folder"], dinov2_weights=tmp_path / "wide.pth")


def test_missing_hydra_and_unknown_env(copy: Path, released: dict) -> None:
    edit_hydra(copy, env__name="point_maze")
    with pytest.raises(ValueError, match=r"env.name is 'point_maze'; wmq supports released models for envs "
                                         r"\('wall', 'pusht'\)"):
        load_world_model(copy, dinov2_weights=released["dinov2_path"])
    (copy / "hydra.yaml").unlink()
    with pytest.raises(CheckpointError, match="missing .*hydra.yaml: a released DINO-WM folder holds hydra.yaml"):
        load_world_model(copy, dinov2_weights=released["dinov2_path"])


def test_wall_needs_its_dataset_statistics(copy: Path, released: dict) -> None:
    edit_hydra(copy, env__name="wall")
    with pytest.raises(ValueError, match=r"released 'wall' models need normalization="):
        load_world_model(copy, dinov2_weights=released["dinov2_path"])
    stats = {"action_mean": [0.0, 0.1], "action_std": [1.0, 2.0], "proprio_mean": [30, 30, 0, 0],
             "proprio_std": [10, 10, 1, 1]}
    model = load_world_model(copy, dinov2_weights=released["dinov2_path"], normalization=stats)
    assert model.config.env == "wall" and model.action_std.tolist() == [1.0, 2.0]
    assert model.provenance["normalization"] == "given by the caller"


def test_hydra_fields_wmq_cannot_honour_are_refused(copy: Path, released: dict) -> None:
    edit_hydra(copy, concat_dim=0)
    with pytest.raises(CheckpointError, match="concat_dim is 0; wmq supports only concat_dim = 1"):
        load_world_model(copy, dinov2_weights=released["dinov2_path"])


def test_damaged_checkpoint_files(copy: Path, released: dict) -> None:
    path = copy / "checkpoints" / "model_latest.pth"
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="model_latest.pth could not be read .*truncated"):
        load_world_model(copy, dinov2_weights=released["dinov2_path"])
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"model_latest.pth is empty \(0 bytes\)"):
        load_world_model(copy, dinov2_weights=released["dinov2_path"])
    torch.save({"epoch": 1, "predictor": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(CheckpointError, match="'predictor' is a torch.nn.modules.linear.Linear, expected a pickled "
                                              "models.vit.ViTPredictor"):
        load_world_model(copy, dinov2_weights=released["dinov2_path"])


def test_checkpoint_without_decoder_warns(released: dict) -> None:
    with pytest.warns(UserWarning, match="model_8.pth has no decoder"):
        model = load_world_model(released["folder"], dinov2_weights=released["dinov2_path"], epoch=8)
    assert model.provenance["decoder"].startswith("absent")
    assert model.decode(torch.zeros(1, 1, 16, 64)).shape == (1, 1, 3, 64, 64)
