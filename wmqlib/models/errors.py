"""Exceptions raised while finding, reading or converting world-model checkpoints."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, of an unknown layout, or does not fit the architecture it claims."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint references a global outside the allowlist; nothing in it was run.

    ``global_name`` is the refused ``module.qualname``.
    """

    def __init__(self, global_name: str, path: str = "") -> None:
        self.global_name = global_name
        where = f" in {path}" if path else ""
        super().__init__(
            f"refused to unpickle {global_name!r}{where}: it is not a DINO-WM model class, a torch.nn layer, a torch "
            f"tensor-rebuild function or optimizer/accelerate state, so loading it could run arbitrary code. "
            f"Only load checkpoints from sources you trust; wmq never unpickles unknown globals."
        )
