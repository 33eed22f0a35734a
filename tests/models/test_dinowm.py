"""Released DINO-WM folders: strict loading of the pickled-module layout, reproduced outputs, clear errors."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from wmqlib.models import CheckpointError, load_world_model, save_world_model
from wmqlib.envs import PushT
from wmqlib.models.safe_pickle import PickledMethod, load_pickled_checkpoint


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
    stats = PushT.released_normalization
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
                                         r"\('pusht', 'wall'\)"):
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


def test_mixed_precision_release_loads_and_agrees(released: dict, released_builder, tmp_path: Path) -> None:
    """accelerate's mixed precision pickles getattr(module, "forward") twice per module: inert, and the same model."""
    mixed = released_builder(tmp_path, mixed_precision=True)
    payload = load_pickled_checkpoint(mixed["folder"] / "checkpoints" / "model_latest.pth")
    for name in ("predictor", "decoder", "action_encoder", "proprio_encoder"):
        for attribute in ("forward", "_original_forward"):
            method = payload[name].attribute(attribute)
            assert isinstance(method, PickledMethod) and (method.owner, method.name) == (
                payload[name].qualname, "forward")
    model = load_world_model(mixed["folder"], dinov2_weights=mixed["dinov2_path"])
    plain = load_world_model(released["folder"], dinov2_weights=released["dinov2_path"])
    assert model.config == plain.config
    for key, value in plain.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(model.predictor(released["inputs"]["tokens"]), released["expected"]["predictor"],
                                   atol=1e-5, rtol=1e-5)


def test_partial_normalization_is_filled_from_the_checkpoint_or_refused(copy: Path, released: dict,
                                                                       tmp_path: Path) -> None:
    """One rule for both paths: given statistics win, the checkpoint's own fill the rest, none at all is an error."""
    model = load_world_model(copy, dinov2_weights=released["dinov2_path"], normalization={"action_mean": [1.0, 2.0]})
    published = PushT.released_normalization
    assert model.action_mean.tolist() == [1.0, 2.0]
    torch.testing.assert_close(model.proprio_std, torch.tensor(published["proprio_std"]))  # not silently 1
    assert model.provenance["normalization"] == ("action_mean: given by the caller; action_std, proprio_mean, "
                                                 "proprio_std: DINO-WM published constants")
    converted = save_world_model(model, tmp_path / "converted")
    again = load_world_model(converted, normalization={"action_std": [3.0, 4.0]})
    assert again.action_mean.tolist() == [1.0, 2.0] and again.action_std.tolist() == [3.0, 4.0]
    assert again.provenance["normalization"].startswith(
        "action_std: given by the caller; action_mean, proprio_mean, proprio_std: stored in ")
    edit_hydra(copy, env__name="wall")
    with pytest.raises(ValueError, match=r"normalization is missing \['action_std', 'proprio_mean', 'proprio_std'\] "
                                         r"and the checkpoint carries no value for them: released 'wall' models"):
        load_world_model(copy, dinov2_weights=released["dinov2_path"], normalization={"action_mean": [0.0, 0.0]})


def test_fp16_dinov2_weights_are_cast_to_the_model_dtype(released: dict, tmp_path: Path) -> None:
    torch.save({k: v.half() for k, v in released["dinov2"].items()}, tmp_path / "dinov2_fp16.pth")
    model = load_world_model(released["folder"], dinov2_weights=tmp_path / "dinov2_fp16.pth")
    assert model.encoder.cls_token.dtype == torch.float32 and model.dtype == torch.float32
    assert model.provenance["dinov2_dtype"] == "float16, cast to float32"
    torch.testing.assert_close(model.encoder.cls_token, released["dinov2"]["cls_token"].half().float())
    s = released["sizes"]
    with torch.no_grad():
        out = model.encode_obs(torch.zeros(1, 1, 3, s["img_size"], s["img_size"]), torch.zeros(1, 1, 4))
    assert out["visual"].dtype == torch.float32 and torch.isfinite(out["visual"]).all()
