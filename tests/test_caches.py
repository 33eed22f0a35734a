"""wmqlib.caches: what a run derives from a checkpoint (env, fingerprint), calibrations on disk, provenance."""

from __future__ import annotations

import dataclasses
import shutil

import torch
import pytest

from wmqlib import study as st
from wmqlib.caches import Caches, provenance
from wmqlib.envs import Wall
from wmqlib.models import CheckpointError, load_world_model, save_world_model
from wmqlib.plan import CEMConfig, GDConfig
from wmqlib.quant import AWQ, PerGroup, PerTensor, SmoothQuant
from wmqlib.sweep import config_key

SMALL = CEMConfig(samples=12, topk=3, opt_steps=2)


def setting(tiny: str, **kw) -> st.Setting:
    base = dict(planner=SMALL, n_evals=3, n_calib=2, calib_planner=SMALL, device="cpu")
    return st.Setting(tiny, **{**base, **kw})


def test_setting_reads_no_file_and_the_caches_derive_env_and_fingerprint(tiny, caches, tmp_path):
    assert st.Setting(str(tmp_path / "not-yet-there")).checkpoint.endswith("not-yet-there")  # building reads nothing
    s = st.Setting(tiny)
    identity = caches.identity(s)
    assert identity["env"] == "wall" and len(identity["model_sha"]) == 16
    assert s.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert s.calib_planner == s.planner  # a CEM planner calibrates with itself
    assert caches.calib_planner(st.Setting(tiny, planner=GDConfig())) == CEMConfig(opt_steps=Wall.plan_opt_steps)
    assert config_key(caches.identity(st.Setting(tiny))) == config_key(identity)
    assert caches.identity(dataclasses.replace(s, n_evals=7))["model_sha"] == identity["model_sha"]


def test_fingerprint_follows_the_weights(tiny, tmp_path, caches):
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    assert caches.checkpoint(copy)[2] == caches.checkpoint(tiny)[2]
    model = load_world_model(copy)
    with torch.no_grad():
        model.predictor.transformer.layers[0][1].net[1].weight.add_(1e-3)
    save_world_model(model, copy)
    assert caches.checkpoint(copy)[2] != caches.checkpoint(tiny)[2]


def test_unknown_and_foreign_checkpoints_fail_when_a_run_needs_them(tmp_path, caches):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        caches.identity(st.Setting("no-such-model"))
    (tmp_path / "hydra.yaml").write_text("env: {name: wall}\n")
    with pytest.raises(CheckpointError, match="convert"):
        st.run_setting(st.Setting(str(tmp_path)), caches)


def test_calibration_is_cached_on_disk_and_recomputed_on_request(tiny, calib_dir):
    s = setting(tiny, recipe=SmoothQuant(8, a_bits=8, a_granularity=PerTensor()))
    first = Caches(calib_dir).calibration(s)
    files = list(calib_dir.glob("*.safetensors"))
    assert len(files) == 1 and not list(calib_dir.glob("*.tmp"))
    caches = Caches(calib_dir)
    loaded = caches.calibration(s)  # from the file
    assert loaded is not first and loaded.linears == first.linears
    name = first.linears[0]
    torch.testing.assert_close(loaded.absmax(name), first.absmax(name))
    # another recipe with the same model, episodes and calibration planner shares the file
    caches.calibration(dataclasses.replace(s, recipe=AWQ(4, PerGroup(8))))
    assert list(calib_dir.glob("*.safetensors")) == files
    mtime = files[0].stat().st_mtime_ns
    again = caches.calibration(s, recompute=True)
    assert files[0].stat().st_mtime_ns != mtime
    torch.testing.assert_close(again.absmax(name), first.absmax(name))  # collection is deterministic
    assert caches.calibration(s, recompute=True) is again  # recomputed once per process


def test_provenance_names_torch_threads_and_cpu():
    info = provenance()
    assert info["torch"] == torch.__version__ and info["threads"] == torch.get_num_threads()
    assert isinstance(info["cpu"], str) and info["cpu"]
