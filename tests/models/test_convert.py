"""The convert CLI: released folder -> wmq format, loading back to the same model without unpickling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from wmqlib.models import load_world_model
from wmqlib.models.convert import main


def test_convert_round_trip(released: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dst = tmp_path / "dinowm-pusht"
    status = main([str(released["folder"]), str(dst), "--dinov2-weights", str(released["dinov2_path"]),
                   "--epoch", "7"])
    assert status == 0 and f"wrote {dst}" in capsys.readouterr().out
    direct = load_world_model(released["folder"], dinov2_weights=released["dinov2_path"], epoch=7)
    converted = load_world_model(dst)
    assert converted.config == direct.config
    for key, value in direct.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key
    assert converted.provenance["source"] == "DINO-WM release"
    assert converted.provenance["converted_from"] == str(released["folder"].resolve())


def test_convert_with_statistics_file(released: dict, tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"action_mean": [1.0, 2.0]}))
    assert main([str(released["folder"]), str(tmp_path / "out"), "--dinov2-weights", str(released["dinov2_path"]),
                 "--normalization", str(stats)]) == 0
    assert load_world_model(tmp_path / "out").action_mean.tolist() == [1.0, 2.0]


def test_convert_reports_errors(released: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(released["folder"]), str(tmp_path / "out")]) == 2
    assert "error: released DINO-WM checkpoints do not contain the DINOv2 encoder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
