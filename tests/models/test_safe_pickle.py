"""Restricted unpickling: hostile payloads never run, released classes are never imported, bad files are named."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from wmqlib.models import CheckpointError, UnsafeCheckpointError
from wmqlib.models.safe_pickle import PickledObject, load_pickled_checkpoint, load_tensor_dict, module_state_dict


class Payload:
    """Pickles as a call of ``function(*args)``: what an attacker puts in a checkpoint."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def hostile_payloads(marker: Path) -> dict[str, Payload]:
    write = f"open({str(marker)!r}, 'w').write('pwned')"
    return {
        "posix.system": Payload(os.system, f"touch {marker}"),
        "builtins.eval": Payload(builtins.eval, write),
        "subprocess.call": Payload(subprocess.call, ["touch", str(marker)]),
        "builtins.exec": Payload(builtins.exec, write),
    }


@pytest.mark.parametrize("name", ["posix.system", "builtins.eval", "subprocess.call", "builtins.exec"])
@pytest.mark.parametrize("nesting", ["top", "inside a module"])
def test_hostile_checkpoints_are_refused_before_running(tmp_path: Path, name: str, nesting: str) -> None:
    marker = tmp_path / "marker"
    payload = hostile_payloads(marker)[name]
    if nesting == "inside a module":
        module = nn.Linear(2, 2)
        module.extra = [1, {"x": payload}]  # hidden in a pickled layer's __dict__
        payload = module
    path = tmp_path / "model_latest.pth"
    torch.save({"epoch": 1, "predictor": payload}, path)
    with pytest.raises(UnsafeCheckpointError, match=name.replace(".", r"\.")) as caught:
        load_pickled_checkpoint(path)
    assert caught.value.global_name == name and str(path) in str(caught.value)
    assert not marker.exists()


def test_legacy_formats_are_refused_before_unpickling(tmp_path: Path) -> None:
    """A bare pickle stream (torch < 1.6's format) is refused up front, with how to re-save it; nothing runs."""
    marker = tmp_path / "marker"
    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps(hostile_payloads(marker)["posix.system"], protocol=2))
    for loader in (load_pickled_checkpoint, load_tensor_dict):
        with pytest.raises(CheckpointError, match=r"legacy.pth is in torch's legacy serialization format.*"
                                                  r"Re-save it in an environment you trust"):
            loader(path)
    assert not marker.exists()


def test_released_class_paths_are_never_imported(tmp_path: Path) -> None:
    """Even with an importable package named ``models`` on sys.path, loading only builds inert stand-ins."""
    marker = tmp_path / "imported"
    package = tmp_path / "src" / "models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (package / "vit.py").write_text("from torch import nn\nclass ViTPredictor(nn.Module):\n"
                                    "    def __init__(self):\n        super().__init__()\n"
                                    "        self.proj = nn.Linear(3, 2)\n")
    sys.path.insert(0, str(tmp_path / "src"))
    try:
        import models.vit

        torch.save({"predictor": models.vit.ViTPredictor()}, tmp_path / "ckpt.pth")
    finally:
        del sys.modules["models"], sys.modules["models.vit"]
    try:
        marker.unlink()
        loaded = load_pickled_checkpoint(tmp_path / "ckpt.pth")
        assert not marker.exists() and "models" not in sys.modules
    finally:
        sys.path.remove(str(tmp_path / "src"))
    predictor = loaded["predictor"]
    assert isinstance(predictor, PickledObject) and predictor.qualname == "models.vit.ViTPredictor"
    state = module_state_dict(predictor, "predictor")
    assert sorted(state) == ["proj.bias", "proj.weight"] and state["proj.weight"].shape == (2, 3)


def test_state_dict_of_standins_matches_torch(tmp_path: Path) -> None:
    """Parameters and persistent buffers, recursively; non-persistent buffers and None entries left out."""
    module = nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4))
    module[1].register_buffer("scratch", torch.ones(2), persistent=False)
    torch.save(module, tmp_path / "m.pth")
    state = module_state_dict(load_pickled_checkpoint(tmp_path / "m.pth"), "m")
    assert state.keys() == module.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())


def test_data_globals_round_trip(tmp_path: Path) -> None:
    data = {"a": OrderedDict(x=torch.arange(3)), "s": {1, 2}, "b": b"\x00\x01", "d": torch.device("cpu"),
            "t": torch.float16, "size": torch.Size([2, 3]), "p": nn.Parameter(torch.ones(2))}
    torch.save(data, tmp_path / "d.pth")
    loaded = load_pickled_checkpoint(tmp_path / "d.pth")
    assert loaded["s"] == {1, 2} and loaded["b"] == b"\x00\x01" and loaded["t"] is torch.float16
    assert loaded["size"] == torch.Size([2, 3]) and torch.equal(loaded["a"]["x"], torch.arange(3))


def test_non_module_standins_are_reported(tmp_path: Path) -> None:
    torch.save({"predictor": torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)}, tmp_path / "o.pth")
    with pytest.raises(CheckpointError, match=r"checkpoint\['predictor'\] is not a pickled torch module"):
        module_state_dict(load_pickled_checkpoint(tmp_path / "o.pth")["predictor"], "checkpoint['predictor']")


def test_truncated_empty_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "full.pth"
    torch.save({"w": torch.randn(64, 64)}, path)
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (tmp_path / "empty.pth").write_bytes(b"")
    for loader in (load_pickled_checkpoint, load_tensor_dict):
        with pytest.raises(CheckpointError, match="cut.pth could not be read .*truncated"):
            loader(tmp_path / "cut.pth")
        with pytest.raises(CheckpointError, match=r"empty.pth is empty \(0 bytes\)"):
            loader(tmp_path / "empty.pth")
        with pytest.raises(CheckpointError, match="not found: .*absent.pth is not a file"):
            loader(tmp_path / "absent.pth")


def test_tensor_dict_loader_refuses_objects(tmp_path: Path) -> None:
    torch.save(nn.Linear(2, 2), tmp_path / "module.pth")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_tensor_dict(tmp_path / "module.pth")
    torch.save({"w": torch.ones(1), "step": 3}, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="not a plain state_dict of tensors"):
        load_tensor_dict(tmp_path / "mixed.pth")
