"""wmqlib.caches: a checkpoint's identity (env, fingerprint) found once per version of its files, the stores (the
calibrations' in memory and on disk, the last quantized copies), provenance."""

from __future__ import annotations

import shutil

import pytest
import torch

from wmqlib import study as st
from wmqlib.caches import CalibrationStore, Recent, provenance
from wmqlib.models import CheckpointError, load_world_model, save_world_model
from wmqlib.quant import Calibration


def test_the_caches_find_env_and_fingerprint_and_resolve_a_setting_once(tiny, caches):
    ck = caches.checkpoint(tiny)
    assert ck.env == "wall" and len(ck.model_sha) == 16 and ck.folder.name == "tiny-wall"
    run = caches.resolved(st.Setting(tiny, device="cpu"))
    assert (run.folder, run.env, run.model_sha) == ck and run.identity["model_sha"] == ck.model_sha


def test_fingerprint_follows_the_weights(tiny, tmp_path, caches):
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    assert caches.checkpoint(copy).model_sha == caches.checkpoint(tiny).model_sha
    model = load_world_model(copy)
    with torch.no_grad():
        model.predictor.transformer.layers[0][1].net[1].weight.add_(1e-3)
    save_world_model(model, copy)
    assert caches.checkpoint(copy).model_sha != caches.checkpoint(tiny).model_sha


def test_unknown_and_foreign_checkpoints_fail_when_a_run_needs_them(tmp_path, caches):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        caches.resolved(st.Setting("no-such-model"))
    (tmp_path / "hydra.yaml").write_text("env: {name: wall}\n")
    with pytest.raises(CheckpointError, match="convert"):
        st.run_setting(st.Setting(str(tmp_path)), caches)


def test_calibration_store_keeps_memory_and_whole_files(tmp_path, stale_tmp):
    calib = Calibration(max_tokens=4, seed=0)
    leftover = stale_tmp(tmp_path / "calibration" / "0123456789abcdef.safetensors")  # a write killed midway
    store = CalibrationStore(tmp_path / "calibration")
    assert "k" not in store
    store["k"] = calib
    assert not leftover.exists()
    assert "k" in store and store["k"] is calib and store.fresh == {"k"}
    assert [p.name for p in (tmp_path / "calibration").iterdir()] == ["k.safetensors"]  # no temporary file left
    again = CalibrationStore(tmp_path / "calibration")  # another process: from the file
    assert "k" in again and isinstance(again["k"], Calibration) and again["k"] is again["k"] and not again.fresh


def test_recent_keeps_the_entries_used_last():
    recent = Recent(2)
    recent["a"], recent["b"] = 1, 2
    assert recent["a"] == 1  # "a" is now the newest
    recent["c"] = 3
    assert list(recent) == ["a", "c"]


def test_provenance_names_torch_threads_and_cpu():
    info = provenance()
    assert info["torch"] == torch.__version__ and info["threads"] == torch.get_num_threads()
    assert isinstance(info["cpu"], str) and info["cpu"]
