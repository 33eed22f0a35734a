"""What every world-model architecture shares, whatever its latent: the z-score statistics in env units, the
conversions between env units and model units, strict loading from a state_dict, and input checks.

A subclass builds its modules in ``__init__(config, seed)`` after ``super().__init__(config)``, and defines
``device`` / ``dtype`` and the planning API (``encode_obs``, ``rollout``, ``decode``; see
``wmqlib.plan.objective.PlanningModel``). ``config`` must have ``env_action_dim``, ``proprio_dim`` and
``frameskip``, and ``action_dim`` (= frameskip * env_action_dim).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from wmqlib.models.errors import CheckpointError
from wmqlib.models.preprocess import frames_to_visual, stack_frameskip, unstack_frameskip, unzscore, zscore

STAT_NAMES = ("action_mean", "action_std", "proprio_mean", "proprio_std")
# Largest part of a model ``from_state_dict`` initialises itself (a decoder absent from a released checkpoint, sized
# by hydra.yaml): 2^27 elements, 512 MiB in float32, 13x DINO-WM's decoder.
MAX_FRESH_ELEMENTS = 1 << 27


class WorldModelBase(nn.Module):
    """Buffers ``action_mean``/``action_std`` (env_action_dim,) and ``proprio_mean``/``proprio_std`` (proprio_dim,)
    hold the z-score statistics in env units; they stay float32 when the model is cast to another dtype, so a bf16
    model normalises exactly like fp32. ``provenance`` is a JSON-able dict saved with the model (where its weights
    came from).
    """

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.provenance: dict[str, Any] = {}
        self.register_buffer("action_mean", torch.zeros(config.env_action_dim))
        self.register_buffer("action_std", torch.ones(config.env_action_dim))
        self.register_buffer("proprio_mean", torch.zeros(config.proprio_dim))
        self.register_buffer("proprio_std", torch.ones(config.proprio_dim))

    @classmethod
    def from_state_dict(cls, config: Any, state_dict: dict[str, torch.Tensor], *,
                        fresh_prefixes: tuple[str, ...] = (), seed: int = 0) -> WorldModelBase:
        """A model holding exactly ``state_dict``'s tensors (their device and dtype), with strict key matching.

        Built on the meta device and filled by assignment, so no random init is spent on loaded weights. Keys
        under ``fresh_prefixes`` (e.g. ``("decoder.",)``) may be absent and keep the seeded initialisation.
        Missing, unexpected, mis-shaped or non-floating keys, or weights mixing floating dtypes (the statistics,
        always float32, aside) raise CheckpointError listing them.
        """
        with torch.device("meta"):
            model = cls(config, seed)
        expected = model.state_dict()
        fresh = {k for k in expected if k not in state_dict and fresh_prefixes and k.startswith(fresh_prefixes)}
        problems = _mismatches({k: v for k, v in expected.items() if k not in fresh}, state_dict)
        if problems:
            raise CheckpointError(f"weights do not fit {config}:\n  " + "\n  ".join(problems))
        fresh_elements = sum(expected[k].numel() for k in fresh)
        if fresh_elements > MAX_FRESH_ELEMENTS:
            raise CheckpointError(f"the parts absent from the weights ({sorted({k.split('.')[0] for k in fresh})}) "
                                  f"would be initialised with {fresh_elements} elements, more than the "
                                  f"{MAX_FRESH_ELEMENTS} wmq builds without weights; check the config's sizes")
        if fresh:
            model = cls(config, seed)
            state_dict = {**{k: v for k, v in model.state_dict().items() if k in fresh}, **state_dict}
        # fresh (allocator-aligned) memory: tensors read from a file sit at the file's byte offsets, and the CPU
        # kernels round differently on unaligned data, so the same weights would plan differently by file layout
        model.load_state_dict({k: v.clone() for k, v in state_dict.items()}, strict=True, assign=True)
        return model

    # ----- properties and normalisation statistics -----

    @property
    def action_dim(self) -> int:
        """Model-step action width Da = frameskip * env_action_dim."""
        return self.config.action_dim

    def set_normalization(self, action_mean: Any = None, action_std: Any = None, proprio_mean: Any = None,
                          proprio_std: Any = None) -> WorldModelBase:
        """Set z-score statistics in env units (arrays of shape (env_action_dim,) / (proprio_dim,)); returns self.

        Statistics left as None keep their value. Standard deviations must be finite and > 0.
        """
        given = dict(action_mean=action_mean, action_std=action_std, proprio_mean=proprio_mean,
                     proprio_std=proprio_std)
        for name, value in given.items():
            if value is None:
                continue
            buffer = getattr(self, name)
            try:
                stat = torch.as_tensor(value).detach().to("cpu", torch.float64).float()
            except (TypeError, ValueError, RuntimeError) as error:
                raise ValueError(f"{type(self).__name__}.{name} must be numbers of shape {tuple(buffer.shape)}, got "
                                 f"{type(value).__name__} ({error})") from None
            if stat.shape != buffer.shape:
                raise ValueError(f"{type(self).__name__}.{name} must have shape {tuple(buffer.shape)}, got "
                                 f"{tuple(stat.shape)}")
            if not torch.isfinite(stat).all() or (name.endswith("_std") and not (stat > 0).all()):
                positive = " and > 0" if name.endswith("_std") else ""
                raise ValueError(f"{type(self).__name__}.{name} must be finite{positive}, got {stat.tolist()}")
            with torch.no_grad():
                buffer.copy_(stat)
        return self

    def normalization(self) -> dict[str, list[float]]:
        """The z-score statistics as plain lists (env units), keyed by STAT_NAMES."""
        return {name: getattr(self, name).detach().cpu().tolist() for name in STAT_NAMES}

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> WorldModelBase:
        # Keep the statistics float32 under .to(dtype) / .half() / .bfloat16(): rounding a proprio mean of 236.6
        # to bf16 would shift every z-score of a bf16 model relative to its fp32 reference.
        before = {name: self._buffers[name] for name in STAT_NAMES}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if new.dtype != torch.float32:
                source = new if old.device.type == "meta" else old
                self._buffers[name] = source.to(device=new.device, dtype=torch.float32)
        return self

    # ----- env units <-> model units -----

    def prepare_obs(self, frames: torch.Tensor | np.ndarray, proprio: torch.Tensor | np.ndarray
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw observations -> model inputs on the model's device and dtype.

        frames: uint8 (B, T, H, H, 3); proprio: raw (B, T, proprio_dim).
        Returns visual (B, T, 3, img_size, img_size) in [-1, 1] and z-scored proprio (B, T, proprio_dim).
        """
        visual = frames_to_visual(frames, self.config.img_size, self.dtype, self.device)
        return visual, self.normalize_proprio(proprio)

    def normalize_proprio(self, proprio: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Raw proprio (..., proprio_dim) -> z-scored, model device and dtype."""
        proprio = torch.as_tensor(proprio, device=self.device)
        _check_trailing("proprio", proprio, self.config.proprio_dim)
        return zscore(proprio, self.proprio_mean, self.proprio_std).to(self.dtype)

    def actions_to_env(self, actions: torch.Tensor) -> torch.Tensor:
        """z-scored model actions (..., H, Da) -> raw env actions (..., H*frameskip, env_action_dim), float32."""
        _check_trailing("actions", actions, self.action_dim)
        raw = unstack_frameskip(actions, self.config.frameskip)
        return unzscore(raw, self.action_mean.to(raw.device), self.action_std.to(raw.device))

    def env_to_actions(self, raw: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Raw env actions (..., H*frameskip, env_action_dim) -> z-scored model actions (..., H, Da).

        The result is on the model's device and in its dtype, ready for ``encode`` / ``rollout``.
        """
        raw = torch.as_tensor(raw, device=self.device)
        _check_trailing("raw actions", raw, self.config.env_action_dim)
        z = zscore(raw, self.action_mean, self.action_std)
        return stack_frameskip(z, self.config.frameskip).to(self.dtype)

    # ----- input checks -----

    def _input(self, name: str, x: torch.Tensor, shape: tuple[int | None, ...]) -> torch.Tensor:
        """Check x's shape (None = any size) and device, and cast it to the model's dtype."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__}: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, x.shape)):
            want = ", ".join("*" if s is None else str(s) for s in shape)
            raise ValueError(f"{type(self).__name__}: {name} must have shape ({want}), got {tuple(x.shape)}")
        if x.device != self.device:
            raise ValueError(f"{type(self).__name__}: {name} is on {x.device} but the model is on {self.device}")
        return x.to(self.dtype)


def _mismatches(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], limit: int = 6) -> list[str]:
    """Human-readable differences between two state_dicts' keys, shapes and dtypes (at most ``limit`` per kind)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = [f"{k}: weights {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in given and given[k].shape != expected[k].shape]
    dtypes = [f"{k}: {given[k].dtype}" for k in expected
              if k in given and expected[k].is_floating_point() and not given[k].is_floating_point()]
    problems = []
    for kind, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes),
                        ("not floating point", dtypes)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            problems.append(f"{kind}: {', '.join(items[:limit])}{more}")
    floating = {}
    for k, v in given.items():
        if k in expected and k not in STAT_NAMES and v.is_floating_point():
            floating.setdefault(str(v.dtype).removeprefix("torch."), k)
    if len(floating) > 1:
        listed = ", ".join(f"{d} (e.g. {k})" for d, k in floating.items())
        problems.append(f"mixed dtypes (a model holds one): {listed}")
    return problems


def _check_trailing(name: str, x: torch.Tensor, width: int) -> None:
    if x.ndim < 2 or x.shape[-1] != width:
        raise ValueError(f"{name} must have shape (..., T, {width}), got {tuple(x.shape)}")
