"""wmq checkpoint format: bit-exact round trips, short names, and clear errors for broken folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from wmqlib.models import CheckpointError, WorldModel, load_world_model, save_world_model
from wmqlib.models.errors import NonFiniteWeightsWarning
from wmqlib.models import checkpoint as ckpt


def assert_same_weights(a: WorldModel, b: WorldModel) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


def test_round_trip_is_bit_exact(tiny_model: WorldModel, tmp_path: Path) -> None:
    tiny_model.provenance = {"trained_on": "unit test", "steps": 3}
    folder = save_world_model(tiny_model, tmp_path / "m", provenance={"note": "round trip"})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_world_model(folder)
    assert loaded.config == tiny_model.config and not loaded.training
    assert_same_weights(tiny_model, loaded)
    assert loaded.provenance["trained_on"] == "unit test" and loaded.provenance["note"] == "round trip"
    meta = json.loads((folder / "config.json").read_text())
    assert meta["config"]["num_hist"] == 3 and meta["config"]["frameskip"] == 2 and meta["config"]["env"] == "pusht"
    assert meta["normalization"]["proprio_std"] == [1.0, 0.5, 2.0, 4.0]
    actions = torch.randn(2, 3, 4)
    z0 = {"visual": torch.randn(1, 1, 4, 16), "proprio": torch.randn(1, 1, 3)}
    with torch.no_grad():
        assert torch.equal(tiny_model.rollout(z0, actions)["visual"], loaded.rollout(z0, actions)["visual"])


def test_saving_removes_the_leftover_of_a_killed_save(tiny_model: WorldModel, tmp_path: Path, stale_tmp) -> None:
    leftover = stale_tmp(tmp_path / "m" / "model.safetensors")
    folder = save_world_model(tiny_model, tmp_path / "m")
    assert not leftover.exists() and sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_bf16_round_trip_keeps_dtypes(tiny_model: WorldModel, tmp_path: Path) -> None:
    model = tiny_model.to(torch.bfloat16)
    loaded = load_world_model(save_world_model(model, tmp_path / "bf16"))
    assert loaded.dtype == torch.bfloat16 and loaded.proprio_std.dtype == torch.float32
    assert_same_weights(model, loaded)
    assert load_world_model(tmp_path / "bf16", dtype=torch.float32).dtype == torch.float32


def test_short_names_resolve_under_the_checkpoint_folder(tiny_model: WorldModel, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ckpt, "CHECKPOINTS_DIR", tmp_path)
    save_world_model(tiny_model, tmp_path / "mini-test")
    assert ckpt.available_checkpoints() == ["mini-test"]
    assert_same_weights(tiny_model, load_world_model("mini-test", device="auto").cpu())
    with pytest.raises(CheckpointError, match=r"no checkpoint 'mini-nope'.*available: \['mini-test'\]"):
        load_world_model("mini-nope")


def test_normalization_override(tiny_model: WorldModel, tmp_path: Path) -> None:
    folder = save_world_model(tiny_model, tmp_path / "m")
    loaded = load_world_model(folder, normalization={"action_mean": [5.0, 6.0]})
    assert loaded.action_mean.tolist() == [5.0, 6.0] and loaded.action_std.tolist() == [0.5, 2.0]


def test_released_only_arguments_are_refused(tiny_model: WorldModel, tmp_path: Path) -> None:
    folder = save_world_model(tiny_model, tmp_path / "m")
    with pytest.raises(ValueError, match="dinov2_weights applies to released DINO-WM folders only"):
        load_world_model(folder, dinov2_weights="x.pth")
    with pytest.raises(ValueError, match="epoch applies to released DINO-WM folders only"):
        load_world_model(folder, epoch=3)


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:300]),
     "model.safetensors could not be read"),
    (lambda f: (f / "model.safetensors").write_bytes(b""), "model.safetensors could not be read"),
    (lambda f: (f / "model.safetensors").unlink(), "missing .*model.safetensors"),
    (lambda f: (f / "config.json").write_text((f / "config.json").read_text()[:40]), "is not valid JSON"),
    (lambda f: (f / "config.json").write_text("{}"), "is not a wmq checkpoint config"),
    (lambda f: (f / "config.json").write_text((f / "config.json").read_text().replace('"num_hist": 3',
                                                                                      '"num_hist": 0')),
     "invalid config: WorldModelConfig.num_hist must be a positive int"),
    (lambda f: (f / "config.json").write_text((f / "config.json").read_text().replace('"num_hist": 3',
                                                                                      '"num_hist": 2')),
     r"shape mismatch: predictor.pos_embedding: weights \(1, 12, 24\) vs model \(1, 8, 24\)"),
    (lambda f: (f / "config.json").write_text((f / "config.json").read_text().replace("0.5", "0.25")),
     "normalization differs from the statistics"),
])
def test_damaged_folders_give_clear_errors(tiny_model: WorldModel, tmp_path: Path, damage, message: str) -> None:
    folder = save_world_model(tiny_model, tmp_path / "m")
    damage(folder)
    with pytest.raises(CheckpointError, match=message):
        load_world_model(folder)


def test_unknown_layout_and_device(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a wmq checkpoint .* nor a released DINO-WM folder"):
        load_world_model(tmp_path / "empty")
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu0'"):
        load_world_model(tmp_path / "empty", device="gpu0")


def test_cuda_without_cuda_fails_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Checked before any file: not a "corrupt file" or a pin_memory error from the reader."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device='cuda': CUDA requested but not available"):
        load_world_model(tmp_path / "does-not-exist", device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"CUDA device 3 requested but only 1 available"):
        load_world_model(tmp_path / "does-not-exist", device="cuda:3")


def test_nonfinite_weights_warn_at_save_and_load(tiny_model: WorldModel, tmp_path: Path) -> None:
    with torch.no_grad():
        tiny_model.decoder.upsample_b.blocks[0].weight[0, 0, 0, 0] = float("inf")
        tiny_model.predictor.pos_embedding[0, :2, 0] = float("nan")
    with pytest.warns(NonFiniteWeightsWarning, match=r"2 weight tensors hold NaN or inf values: "
                                                     r"predictor.pos_embedding \(2\), decoder.upsample_b.blocks.0.weight \(1\)"):
        folder = save_world_model(tiny_model, tmp_path / "m")
    with pytest.warns(NonFiniteWeightsWarning, match=r"model.safetensors: 2 weight tensors hold NaN or inf"):
        load_world_model(folder)


def test_weights_must_be_one_floating_dtype(tiny_model: WorldModel, tiny_config, tmp_path: Path) -> None:
    state = tiny_model.state_dict()
    with pytest.raises(CheckpointError, match=r"mixed dtypes \(a model holds one\): float32 .*, float16 \(e.g. "
                                              r"predictor.pos_embedding\)"):
        WorldModel.from_state_dict(tiny_config, {**state, "predictor.pos_embedding": state[
            "predictor.pos_embedding"].half()})
    with pytest.raises(CheckpointError, match=r"not floating point: predictor.pos_embedding: torch.int64"):
        WorldModel.from_state_dict(tiny_config, {**state, "predictor.pos_embedding": state[
            "predictor.pos_embedding"].long()})


def test_loaded_weights_live_in_fresh_aligned_memory(tiny_model: WorldModel, tmp_path: Path) -> None:
    # tensors read from a file sit at its byte offsets; the CPU kernels round differently on unaligned data, so a
    # model must not train or plan differently for where its weights happened to lie in the file
    save_world_model(tiny_model, tmp_path / "m")
    loaded = load_world_model(tmp_path / "m")
    assert all(t.data_ptr() % 64 == 0 for t in [*loaded.parameters(), *loaded.buffers()])
    assert_same_weights(tiny_model, loaded)
