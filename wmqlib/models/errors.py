"""Exceptions and warnings raised while finding, reading or converting world-model checkpoints."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint (or any file wmq reads next to one) is missing, truncated, malformed, hostile, of an unknown
    layout, too large or too deeply nested to read safely, or does not fit the architecture it claims. The message
    names the file and the cause."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint references a global outside the allowlist (or uses an allowlisted one in a way wmq does
    not accept); nothing in it was run.

    ``global_name`` is the refused ``module.qualname``; ``detail`` (optional) says why or what to do instead.
    """

    def __init__(self, global_name: str, path: str = "", detail: str = "") -> None:
        self.global_name = global_name
        where = f" in {path}" if path else ""
        reason = detail or (
            "it is not a DINO-WM model class, a torch.nn layer, a torch tensor-rebuild function or "
            "optimizer/accelerate state, so loading it could run arbitrary code"
        )
        super().__init__(
            f"refused to unpickle {global_name!r}{where}: {reason}. Only load checkpoints from sources you trust; "
            f"wmq never unpickles unknown globals."
        )


class NonFiniteWeightsWarning(UserWarning):
    """A loaded or saved model holds NaN or inf weights (``python -m wmqlib.models.convert`` refuses them)."""
