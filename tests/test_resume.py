"""wmqlib.resume through wmqlib.train: a killed run resumed from its saved state ends with the weights of an
uninterrupted run, on both objectives of the ``tiny`` recipes and on the RSSM's (``tiny-rssm``); a state of another
recipe is refused."""

import dataclasses

import pytest
import torch

import wmqlib.fitting as fitting
from wmqlib.resume import STATE_FILE
from wmqlib.recipes import PRESETS
from wmqlib.train import train


class Killed(Exception):
    """Stands for the process being killed between two optimiser steps."""


def _kill_at(monkeypatch, call: int) -> None:
    """Make the ``call``-th optimiser step of the run (counted over all stages, from 1) raise ``Killed``."""
    seen = {"n": 0}
    real = fitting.lr_at

    def lr_at(step: int, total: int, peak: float) -> float:
        seen["n"] += 1
        if seen["n"] == call:
            raise Killed
        return real(step, total, peak)

    monkeypatch.setattr(fitting, "lr_at", lr_at)


def _killed_run(monkeypatch, call: int, name: str, out, data_dir) -> None:
    """Train ``PRESETS[name]`` into ``out``, saving after every step, until its ``call``-th step kills it."""
    with monkeypatch.context() as patch:
        _kill_at(patch, call)
        with pytest.raises(Killed):
            train(PRESETS[name], out, progress=False, evaluate_fp=False, data_dir=data_dir, save_every_s=0)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return root, {name: train(PRESETS[name], root / name, progress=False, evaluate_fp=False, data_dir=root / "data")
                  for name in ("tiny", "tiny-joint", "tiny-rssm")}


# tiny: 3 encoder + 3 predictor steps; tiny-joint: 3 joint + 3 predictor + 2 fine-tune + 2 decoder steps;
# tiny-rssm: 3 joint + 2 dynamics + 2 decoder steps
@pytest.mark.parametrize("name,call", [("tiny", 2), ("tiny", 4), ("tiny", 6),
                                       ("tiny-joint", 1), ("tiny-joint", 3), ("tiny-joint", 4), ("tiny-joint", 7),
                                       ("tiny-joint", 10),
                                       ("tiny-rssm", 2), ("tiny-rssm", 4), ("tiny-rssm", 5), ("tiny-rssm", 6),
                                       ("tiny-rssm", 7)])
def test_a_killed_run_resumes_to_the_uninterrupted_weights(uninterrupted, tmp_path, monkeypatch, name, call):
    root, models = uninterrupted
    out = tmp_path / name
    _killed_run(monkeypatch, call, name, out, root / "data")
    assert (out / STATE_FILE).is_file() or call == 1  # killed before any step: nothing to save yet
    resumed = train(PRESETS[name], out, progress=False, evaluate_fp=False, data_dir=root / "data", resume=True)
    for (key, a), (_, b) in zip(models[name].state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), key
    assert not (out / STATE_FILE).exists()  # removed once the model is saved


def test_without_resume_a_saved_state_is_ignored(uninterrupted, tmp_path, monkeypatch):
    root, models = uninterrupted
    _killed_run(monkeypatch, 5, "tiny", tmp_path / "run", root / "data")
    fresh = train(PRESETS["tiny"], tmp_path / "run", progress=False, evaluate_fp=False, data_dir=root / "data")
    for (key, a), (_, b) in zip(models["tiny"].state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), key


def test_a_state_of_another_recipe_is_refused(uninterrupted, tmp_path, monkeypatch):
    root, _ = uninterrupted
    _killed_run(monkeypatch, 2, "tiny", tmp_path / "run", root / "data")
    other = dataclasses.replace(PRESETS["tiny"], encoder_lr=5e-4)
    with pytest.raises(ValueError, match="another recipe"):
        train(other, tmp_path / "run", progress=False, evaluate_fp=False, data_dir=root / "data", resume=True)


def test_save_every_must_be_a_non_negative_number(tmp_path):
    with pytest.raises(ValueError, match="RunState.every_s"):
        train(PRESETS["tiny"], tmp_path / "run", progress=False, evaluate_fp=False, data_dir=tmp_path / "data",
              save_every_s=-1.0)


def test_a_state_saved_before_a_field_was_added_still_resumes(uninterrupted, tmp_path, monkeypatch):
    root, models = uninterrupted
    out = tmp_path / "run"
    _killed_run(monkeypatch, 4, "tiny", out, root / "data")
    state = torch.load(out / STATE_FILE, weights_only=True)
    del state["recipe"]["rank_weight"]  # as written by a wmq without that field (its default applies)
    torch.save(state, out / STATE_FILE)
    resumed = train(PRESETS["tiny"], out, progress=False, evaluate_fp=False, data_dir=root / "data", resume=True)
    for (key, a), (_, b) in zip(models["tiny"].state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), key
