"""A training run's saved state, so a killed run continues where it stopped (``python -m wmqlib.train --resume``).

A run is a fixed sequence of named stages, each a loop of optimiser steps (``wmqlib.fitting.fit``). ``RunState``
saves, at most every ``every_s`` seconds and at the end of every stage, everything the remaining steps depend on:

- the whole model's ``state_dict`` and the values of the stage's extra parameters (heads that are not part of the
  saved model, e.g. a state read-out or an inverse-dynamics head), in the order the stage lists them;
- the optimiser's state, the step reached, the losses so far, and the state of every registered random generator;
- the losses of the finished stages, and the seconds each took.

Restoring all of it and replaying the same stages gives the weights an uninterrupted run gives, bit for bit on the
same machine (tested on the ``tiny`` recipe). The file is written atomically (``validate.atomic_path``) and read
with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only, never pickled code.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from wmqlib.validate import atomic_path, check_float, remove_stale_tmp

STATE_FILE = "training_state.pt"


class RunState:
    """The saved state of one training run in ``folder/training_state.pt``.

    generators: the run's ``torch.Generator`` objects by name; their states are saved and restored with the rest.
    every_s: least seconds between two saves inside a stage (0 = after every step; stage ends always save).
    resume: False starts afresh (an existing state file is ignored and overwritten); True loads it if present.
    recipe: the run's recipe as a JSON-able dict; resuming a state saved by another recipe raises ValueError.
    same_recipe: whether a saved recipe dict is this run's recipe (default: equal dicts; a trainer passes a test
        that also accepts a recipe saved before a field with a default was added).
    """

    def __init__(self, folder: str | Path, generators: dict[str, torch.Generator], recipe: dict[str, Any],
                 every_s: float = 120.0, resume: bool = False,
                 same_recipe: Callable[[dict[str, Any]], bool] | None = None) -> None:
        check_float("RunState.every_s", every_s, minimum=0.0)
        self.path = Path(folder) / STATE_FILE
        self.generators = generators
        self.recipe = recipe
        self.every_s = every_s
        self._last_save = time.monotonic()
        self.data: dict[str, Any] = {"recipe": recipe, "finished": {}, "seconds": {}, "current": None}
        if resume and self.path.is_file():
            remove_stale_tmp(self.path.parent)
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            if not (same_recipe or recipe.__eq__)(saved.get("recipe")):
                raise ValueError(f"{self.path}: the saved training state belongs to another recipe; start afresh "
                                 "without --resume (or delete the file) to train this one")
            self.data = saved
            for name, gen in generators.items():  # a generator the saved run never had has not drawn yet
                if name in saved["generators"]:
                    gen.set_state(saved["generators"][name])

    @property
    def resumed(self) -> bool:
        """Whether a saved state was loaded (some stage finished or started before)."""
        return bool(self.data["finished"]) or self.data["current"] is not None

    def model_state(self) -> dict[str, torch.Tensor] | None:
        """The saved model ``state_dict`` to load before replaying the stages, or None for a fresh run."""
        return self.data.get("model")

    def finished(self, stage: str) -> list[float] | None:
        """The losses of ``stage`` when it already finished, else None."""
        return self.data["finished"].get(stage)

    def started(self, stage: str) -> dict[str, Any] | None:
        """The saved mid-stage state of ``stage`` ({"step", "losses", "params", "optimizer"}), or None."""
        current = self.data["current"]
        return current if current is not None and current["stage"] == stage else None

    def seconds(self, stage: str) -> float:
        """Seconds spent in ``stage`` by earlier processes of this run (0 for a fresh run)."""
        return float(self.data["seconds"].get(stage, 0.0))

    def step_done(self, model: torch.nn.Module, stage: str, step: int, losses: list[float],
                  params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, seconds: float) -> None:
        """Record that ``step`` steps of ``stage`` are done; saves when ``every_s`` seconds passed since the last."""
        if time.monotonic() - self._last_save < self.every_s:
            return
        self.data["current"] = {"stage": stage, "step": step, "losses": list(losses),
                                "params": [p.detach().cpu().clone() for p in params],
                                "optimizer": optimizer.state_dict()}
        self.data["seconds"][stage] = seconds
        self._save(model)

    def kept(self, name: str) -> Any:
        """What ``keep`` stored under ``name`` (tensors, numbers, lists, dicts), or None."""
        return self.data.get("kept", {}).get(name)

    def keep(self, model: torch.nn.Module, name: str, value: Any) -> None:
        """Store ``value`` (tensors, numbers, lists, dicts) under ``name`` with the run and save at once: what a
        later stage needs and cannot recompute once the model has moved on (e.g. data collected with it)."""
        self.data.setdefault("kept", {})[name] = value
        self._save(model)

    def stage_done(self, model: torch.nn.Module, stage: str, losses: list[float], seconds: float) -> None:
        """Record that ``stage`` finished with ``losses`` after ``seconds`` in all; always saves."""
        self.data["finished"][stage] = list(losses)
        self.data["seconds"][stage] = seconds
        self.data["current"] = None
        self._save(model)

    def _save(self, model: torch.nn.Module) -> None:
        self.data["model"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        self.data["generators"] = {name: gen.get_state() for name, gen in self.generators.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            torch.save(self.data, tmp)
        self._last_save = time.monotonic()

    def remove(self) -> None:
        """Delete the state file (the run finished and its model is saved)."""
        self.path.unlink(missing_ok=True)
