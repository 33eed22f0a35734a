"""Calibration capture: statistics of the inputs of every quantization point, with bounded memory.

``capture_calibration(model)`` puts forward pre-hooks on the quantization points (``points.find_points``) and
yields a ``Calibration`` that fills while forwards run inside the ``with`` block:

A convolution's input rows are its unfolded patches (``points.input_rows``), one row of ``C k k`` values per output
position, as the linear on patches it is quantized as sees them.

- per quantized linear, over ALL tokens seen (running statistics, O(C) memory each): per-input-channel
  mean ``|x|`` (AWQ), per-channel min and max (SmoothQuant uses ``max(|min|, |max|)``; static per-tensor activation
  ranges are the min / max over channels, which stays exact after a per-channel scale or shift is folded in);
- per quantized linear, a uniform reservoir sample of at most ``max_tokens`` input rows ``(max_tokens, C)``
  (AWQ's searches measure linear outputs on them);
- per trainable unit, a uniform reservoir sample of at most ``max_sequences`` whole inputs ``(N, D)`` (OmniQuant
  trains on them; attention mixes tokens, so whole sequences are kept; an RSSM MLP's input is one vector ``(D,)``
  per sample).  ``max_sequences=0`` skips them.

Memory bound (float32, on the CPU): ``4 * (max_tokens * sum_linears C_in + max_sequences * sum_units N * D)``
bytes plus ``O(sum C_in)`` for the running statistics.  For a DINOv2 ViT-S encoder (12 blocks, C_in
384 / 384 / 384 / 1536, 196 tokens) the defaults (1024 tokens, 32 sequences) hold about 130 MB + 116 MB.

Sampling is priority (bottom-k) reservoir sampling: every row gets a uniform key from a seeded
``torch.Generator`` and the ``k`` smallest keys are kept, a uniform sample without replacement of the stream.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from wmqlib.models.errors import CheckpointError
from wmqlib.validate import atomic_path

from wmqlib.validate import check_int
from .points import find_points, input_rows

FORMAT = "wmq-calibration-1"


def _keep(old_keys: Tensor, new_keys: Tensor, capacity: int) -> tuple[Tensor, Tensor, Tensor]:
    """Bottom-k selection over old + new keys -> (kept keys, indices into old, indices into new).

    The kept keys are ordered as the caller stores the kept items: the kept old ones, then the kept new ones.
    """
    keys = torch.cat([old_keys, new_keys])
    kept = torch.topk(keys, min(capacity, keys.numel()), largest=False, sorted=True).indices
    n_old = old_keys.numel()
    old, new = kept[kept < n_old], kept[kept >= n_old] - n_old
    return torch.cat([old_keys[old], new_keys[new]]), old, new


@dataclass
class _LinearStats:
    """Running statistics of one linear's input; ``rows`` is the reservoir sample ``(k, C)``."""

    abs_sum: Tensor
    count: int
    ch_min: Tensor
    ch_max: Tensor
    rows: Tensor
    row_keys: Tensor


@dataclass
class _UnitSample:
    """Reservoir sample of whole unit inputs: a list of ``(N, D)`` tensors and their keys."""

    sequences: list[Tensor] = field(default_factory=list)
    keys: Tensor = field(default_factory=lambda: torch.empty(0))


class Calibration:
    """Statistics of the inputs of the quantization points of one model (module names as in that model).

    Args:
        max_tokens: reservoir size in rows per quantized linear (>= 1).
        max_sequences: reservoir size in whole sequences per unit (>= 0; 0 keeps none, OmniQuant then refuses).
        seed: seed of the reservoir's ``torch.Generator``.
    """

    def __init__(self, max_tokens: int = 1024, max_sequences: int = 32, seed: int = 0) -> None:
        check_int("max_tokens", max_tokens, 1)
        check_int("max_sequences", max_sequences, 0)
        check_int("seed", seed, 0)
        self.max_tokens, self.max_sequences, self.seed = max_tokens, max_sequences, seed
        self.generator = torch.Generator().manual_seed(seed)
        self._linears: dict[str, _LinearStats] = {}
        self._units: dict[str, _UnitSample] = {}

    # ---- filling (called by the hooks) ----
    def observe_linear(self, name: str, x: Tensor) -> None:
        """Add the input ``x (..., C)`` of linear ``name`` to its statistics and reservoir."""
        rows = x.detach().reshape(-1, x.shape[-1]).float()
        absum, lo, hi = rows.abs().sum(0, dtype=torch.float64).cpu(), rows.amin(0).cpu(), rows.amax(0).cpu()
        st = self._linears.get(name)
        if st is None:
            empty = torch.empty(0, rows.shape[1])
            st = self._linears[name] = _LinearStats(torch.zeros_like(absum), 0, lo, hi, empty, torch.empty(0))
        elif st.ch_min.shape != lo.shape:
            raise ValueError(f"calibration input of {name!r} has {lo.numel()} channels, before {st.ch_min.numel()}")
        st.abs_sum += absum
        st.count += rows.shape[0]
        st.ch_min, st.ch_max = torch.minimum(st.ch_min, lo), torch.maximum(st.ch_max, hi)
        new_keys = torch.rand(rows.shape[0], generator=self.generator)
        st.row_keys, old, new = _keep(st.row_keys, new_keys, self.max_tokens)
        st.rows = torch.cat([st.rows[old], rows[new.to(rows.device)].cpu()])

    def observe_unit(self, name: str, x: Tensor) -> None:
        """Add the input ``x (B, ...)`` of unit ``name`` (B sequences ``(N, D)`` or vectors ``(D,)``) to its
        reservoir."""
        x = x.detach().float()
        sample = self._units.setdefault(name, _UnitSample())
        new_keys = torch.rand(x.shape[0], generator=self.generator)
        sample.keys, old, new = _keep(sample.keys, new_keys, self.max_sequences)
        sample.sequences = [sample.sequences[i] for i in old.tolist()] + [x[j].cpu() for j in new.tolist()]

    # ---- reading ----
    @property
    def linears(self) -> list[str]:
        """Names of the linears with statistics."""
        return list(self._linears)

    @property
    def units(self) -> list[str]:
        """Names of the units with sampled inputs."""
        return list(self._units)

    def require(self, names: Sequence[str], why: str) -> None:
        """Raise ``ValueError`` if any linear in ``names`` has no statistics (``why`` says who needs them)."""
        missing = [n for n in names if n not in self._linears]
        if missing:
            have = ", ".join(self.linears[:3]) or "nothing"
            raise ValueError(
                f"{why}: calibration has no statistics for {missing[:3]} ({len(missing)} missing); it holds {have} - "
                "capture it on the same model you quantize, with forwards inside capture_calibration(model)"
            )

    def _stats(self, name: str) -> _LinearStats:
        self.require([name], "calibration lookup")
        return self._linears[name]

    def absmean(self, name: str) -> Tensor:
        """Per-input-channel mean ``|x|`` over all calibration tokens, ``(C,)`` float32."""
        st = self._stats(name)
        return (st.abs_sum / max(st.count, 1)).float()

    def absmax(self, name: str) -> Tensor:
        """Per-input-channel max ``|x|``, ``(C,)``."""
        st = self._stats(name)
        return torch.maximum(st.ch_min.abs(), st.ch_max.abs())

    def channel_range(self, name: str) -> tuple[Tensor, Tensor]:
        """Per-input-channel ``(min, max)``, each ``(C,)``."""
        st = self._stats(name)
        return st.ch_min, st.ch_max

    def rows(self, name: str) -> Tensor:
        """The reservoir sample of input rows of linear ``name``, ``(k, C)`` with ``k <= max_tokens``."""
        return self._stats(name).rows

    def tokens_seen(self, name: str) -> int:
        """How many input rows of linear ``name`` the running statistics cover."""
        return self._stats(name).count

    def sequences(self, unit: str) -> list[Tensor]:
        """The reservoir sample of whole inputs of ``unit``: a list of ``(N, D)`` tensors (possibly of several N)."""
        if unit not in self._units or not self._units[unit].sequences:
            raise ValueError(
                f"calibration has no input sequences for unit {unit!r}; capture with max_sequences > 0 "
                f"(this one has max_sequences={self.max_sequences})"
            )
        return list(self._units[unit].sequences)

    # ---- persistence ----
    def save(self, path: str | Path) -> Path:
        """Write everything (including the generator state) to one safetensors file; returns the path."""
        path = Path(path)
        tensors = {"generator_state": self.generator.get_state()}
        for name, st in self._linears.items():
            for key in ("abs_sum", "ch_min", "ch_max", "rows", "row_keys"):
                tensors[f"linear/{name}/{key}"] = getattr(st, key).contiguous()
            tensors[f"linear/{name}/count"] = torch.tensor([st.count])
        for name, sample in self._units.items():
            tensors[f"unit/{name}/keys"] = sample.keys.contiguous()
            for k, seq in enumerate(sample.sequences):
                tensors[f"unit/{name}/{k}"] = seq.contiguous()
        meta = {
            "format": FORMAT,
            "config": json.dumps({"max_tokens": self.max_tokens, "max_sequences": self.max_sequences, "seed": self.seed}),
            "linears": json.dumps(self.linears),
            "units": json.dumps({n: len(s.sequences) for n, s in self._units.items()}),
        }
        seen: set[int] = set()  # units fed the same tensor (an RSSM's heads read one state) are saved apart
        for key, tensor in tensors.items():
            if tensor.numel() and tensor.untyped_storage().data_ptr() in seen:
                tensors[key] = tensor.clone()
            seen.add(tensors[key].untyped_storage().data_ptr())
        with atomic_path(path) as tmp:  # whole or absent: worker processes may load it while another writes it
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        """Read a file written by ``save``.

        ``FileNotFoundError`` when ``path`` does not exist; any other problem (not a safetensors file, a foreign,
        truncated or edited one, missing or malformed entries, inconsistent shapes) raises ``CheckpointError``
        (a ``ValueError``) naming the file and the cause.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"calibration file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as error:  # noqa: BLE001 - safetensors raises its own and OS errors for a bad header
            raise CheckpointError(f"calibration file {path} could not be read ({type(error).__name__}: "
                                  f"{str(error)[:200]}); it is truncated, corrupt or not a safetensors file") from None
        if meta.get("format") != FORMAT:
            found = str(meta.get("format"))[:40]
            raise CheckpointError(f"{path} is not a wmq calibration file (format {found!r}, expected {FORMAT})")
        try:
            tensors = load_file(str(path))
            return cls._from_tensors(meta, tensors)
        except CheckpointError:
            raise
        except Exception as error:  # noqa: BLE001 - any inconsistency means the file was damaged or edited
            raise CheckpointError(f"calibration file {path} is damaged or was edited ({type(error).__name__}: "
                                  f"{str(error)[:200]}); delete it to recollect") from None

    @classmethod
    def _from_tensors(cls, meta: dict[str, str], tensors: dict[str, Tensor]) -> "Calibration":
        config = json.loads(meta["config"])
        if not isinstance(config, dict) or set(config) != {"max_tokens", "max_sequences", "seed"}:
            raise ValueError(f"config must hold max_tokens, max_sequences and seed, got {str(config)[:80]}")
        calib = cls(**config)
        calib.generator.set_state(tensors["generator_state"])
        linears, units = json.loads(meta["linears"]), json.loads(meta["units"])
        if not isinstance(linears, list) or not isinstance(units, dict):
            raise ValueError("linears must be a list and units a mapping")
        for name in linears:
            get = lambda key: tensors[f"linear/{name}/{key}"]  # noqa: E731
            st = _LinearStats(get("abs_sum"), int(get("count")[0]), get("ch_min"), get("ch_max"), get("rows"),
                              get("row_keys"))
            channels = st.ch_min.shape
            if st.abs_sum.shape != channels or st.ch_max.shape != channels or st.rows.ndim != 2 or \
                    st.rows.shape[1:] != channels or st.row_keys.shape != st.rows.shape[:1] or st.count < 0:
                raise ValueError(f"the statistics of linear {str(name)[:80]!r} have inconsistent shapes")
            calib._linears[name] = st
        for name, n in units.items():
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= calib.max_sequences:
                raise ValueError(f"unit {str(name)[:80]!r} claims {str(n)[:20]} sequences "
                                 f"(max_sequences={calib.max_sequences})")
            seqs = [tensors[f"unit/{name}/{k}"] for k in range(n)]
            calib._units[name] = _UnitSample(seqs, tensors[f"unit/{name}/keys"])
        return calib


def _linear_hook(calib: Calibration, name: str, module: nn.Module, args: tuple) -> None:
    calib.observe_linear(name, input_rows(module, args[0]))


def _unit_hook(calib: Calibration, name: str, module: nn.Module, args: tuple) -> None:
    calib.observe_unit(name, args[0])


@contextmanager
def capture_calibration(
    model: nn.Module, max_tokens: int = 1024, max_sequences: int = 32, seed: int = 0
) -> Iterator[Calibration]:
    """Record the inputs of ``model``'s quantization points during the forwards run inside the ``with`` block.

    Args:
        model: any model with quantization points (see ``points``); it is not modified (hooks are removed on exit).
        max_tokens: reservoir rows per linear; max_sequences: reservoir sequences per unit; seed: sampling seed.

    Yields:
        a ``Calibration``, filled as forwards run.  Units must be called as ``unit(x)`` with ``x (B, N, D)``.
    """
    calib = Calibration(max_tokens, max_sequences, seed)
    points = find_points(model)
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_pre_hook(partial(_linear_hook, calib, n)) for n in points.linears]
    if max_sequences:
        handles += [modules[u.name].register_forward_pre_hook(partial(_unit_hook, calib, u.name))
                    for u in points.units if u.trainable]
    try:
        yield calib
    finally:
        for handle in handles:
            handle.remove()
