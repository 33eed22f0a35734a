"""Which modules are quantized: the ONE place that defines the default quantization points.

Following the paper's released code (QuantWM in huawei-noah/noah-research: linear layers only), the
quantization points are the four linears of every transformer block and their inputs:

=====================  ===========================  ===========================
role                   DINOv2-style ``blocks.{i}``  predictor ``layers.{i}.{0,1}``
=====================  ===========================  ===========================
qkv (input: post-LN)   ``attn.qkv``                 ``0.to_qkv`` (no bias)
proj (input: attn out) ``attn.proj``                ``0.to_out.0``
fc1 (input: post-LN)   ``mlp.fc1``                  ``1.net.1``
fc2 (input: post-GELU) ``mlp.fc2``                  ``1.net.4``
=====================  ===========================  ===========================

Everything else stays in floating point: patch embedding, CLS / position / mask tokens, every LayerNorm,
LayerScale, softmax, both attention matmuls, the action / proprio encoders and the decoder.

Blocks are recognised by the names and types of their children (never by class name), so any model that uses
these conventions works.  A *unit* is the smallest module holding a norm and the linears it feeds, and whose
``forward(x)`` is self-contained: ``blocks.{i}`` (one unit per DINOv2 block), ``layers.{i}.0`` (attention) and
``layers.{i}.1`` (feed-forward).  OmniQuant trains unit by unit; calibration records unit inputs.

A *scale pair* ``prev -> linear`` says that input channel ``j`` of ``linear`` is output channel ``j`` of ``prev``,
so a per-channel scale can move between them exactly (SmoothQuant, AWQ, OmniQuant's LET):
``norm`` (LayerNorm weight/bias), ``act`` (the GELU, replaced by a scaled activation) or ``v`` (the value rows,
the last third, of the fused qkv linear feeding ``proj``).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

from torch import nn

ROLES = ("qkv", "proj", "fc1", "fc2")
PAIR_KINDS = ("norm", "act", "v")
Scope = Union[str, Sequence[str]]


@dataclass(frozen=True)
class ScalePair:
    """``prev -> linear``: a per-input-channel scale of ``linear`` can be folded into ``prev`` (kind in PAIR_KINDS)."""

    prev: str
    kind: str
    linear: str


@dataclass(frozen=True)
class Unit:
    """A self-contained block: its module name, its linears by role, and its scale pairs."""

    name: str
    linears: dict[str, str]
    pairs: tuple[ScalePair, ...]


@dataclass(frozen=True)
class QuantPoints:
    """All quantization points of a model, found by ``find_points``."""

    units: tuple[Unit, ...]

    @property
    def linears(self) -> list[str]:
        """Names of every quantized linear, in model order."""
        return [name for unit in self.units for name in unit.linears.values()]

    def role(self, linear: str) -> str:
        """Role of ``linear`` in its unit: one of ROLES."""
        return next(role for unit in self.units for role, name in unit.linears.items() if name == linear)

    def unit_of(self, linear: str) -> Unit:
        """The unit holding ``linear``."""
        return next(unit for unit in self.units if linear in unit.linears.values())

    def pair_into(self, linear: str) -> Optional[ScalePair]:
        """The scale pair whose target is ``linear``, or None."""
        return next((p for u in self.units for p in u.pairs if p.linear == linear), None)

    def pairs_from(self, prev: str) -> list[ScalePair]:
        """The scale pairs whose predecessor is ``prev`` (the qkv linear is the predecessor of proj's v pair)."""
        return [p for u in self.units for p in u.pairs if p.prev == prev]


def _child(module: nn.Module, path: str) -> Optional[nn.Module]:
    for part in path.split("."):
        module = module._modules.get(part) if module is not None else None
    return module


def _is(module: nn.Module, path: str, kind: type) -> bool:
    return isinstance(_child(module, path), kind)


def _affine_norm(module: nn.Module, path: str) -> bool:
    norm = _child(module, path)
    return isinstance(norm, nn.LayerNorm) and norm.weight is not None and norm.bias is not None


def _unit(name: str, module: nn.Module) -> Optional[Unit]:
    """Recognise a DINOv2 block, a predictor Attention or a predictor FeedForward; None otherwise."""
    join = (lambda path: f"{name}.{path}") if name else (lambda path: path)
    if all(_is(module, p, nn.Linear) for p in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")) and all(
        _is(module, p, nn.LayerNorm) for p in ("norm1", "norm2")
    ):
        paths = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
        norms = {"qkv": "norm1", "fc1": "norm2"}
        act = "mlp.act" if _child(module, "mlp.act") is not None else None
    elif _is(module, "norm", nn.LayerNorm) and _is(module, "to_qkv", nn.Linear):
        paths = {"qkv": "to_qkv"} | ({"proj": "to_out.0"} if _is(module, "to_out.0", nn.Linear) else {})
        norms, act = {"qkv": "norm"}, None
    elif isinstance(_child(module, "net"), nn.Sequential) and _is(module, "net.0", nn.LayerNorm) and all(
        _is(module, p, nn.Linear) for p in ("net.1", "net.4")
    ):
        paths, norms, act = {"fc1": "net.1", "fc2": "net.4"}, {"fc1": "net.0"}, "net.2"
    else:
        return None
    pairs = [ScalePair(join(norms[r]), "norm", join(paths[r])) for r in norms if _affine_norm(module, norms[r])]
    if act is not None:
        pairs.append(ScalePair(join(act), "act", join(paths["fc2"])))
    if "proj" in paths and _child(module, paths["proj"]).in_features * 3 == _child(module, paths["qkv"]).out_features:
        pairs.append(ScalePair(join(paths["qkv"]), "v", join(paths["proj"])))
    return Unit(name, {role: join(path) for role, path in paths.items()}, tuple(pairs))


def find_points(model: nn.Module) -> QuantPoints:
    """Find every unit of ``model`` (see module docstring); raise ``ValueError`` if there is none."""
    units = [u for name, m in model.named_modules() if (u := _unit(name, m)) is not None]
    if not units:
        raise ValueError(
            "no quantization points found: expected DINOv2-style blocks (norm1, attn.qkv, attn.proj, norm2, mlp.fc1, "
            "mlp.fc2) or predictor layers (norm + to_qkv + to_out.0; net.0 LayerNorm + net.1 + net.4)"
        )
    return QuantPoints(tuple(units))


def matches(name: str, pattern: str) -> bool:
    """True when ``pattern`` matches ``name`` or one of its dotted ancestors ("encoder" matches "encoder.blocks.0").

    ``"all"`` matches everything; a pattern starting with ``re:`` is a regular expression (full match); any other
    pattern is an ``fnmatch`` glob ("encoder.blocks.*.attn.qkv").
    """
    if pattern == "all":
        return True
    parts = name.split(".")
    candidates = [".".join(parts[:k]) for k in range(1, len(parts) + 1)]
    if pattern.startswith("re:"):
        try:
            regex = re.compile(pattern[3:])
        except re.error as err:
            raise ValueError(f"scope/override pattern {pattern!r} is not a valid regular expression: {err}") from err
        return any(regex.fullmatch(c) for c in candidates)
    return any(fnmatch.fnmatchcase(c, pattern) for c in candidates)


def patterns(scope: Scope, field: str = "scope") -> list[str]:
    """Normalise a scope ("all" | "encoder" | "predictor" | a pattern | list of patterns) to a list of patterns."""
    if isinstance(scope, str):
        return [scope]
    if isinstance(scope, (list, tuple)) and scope and all(isinstance(p, str) for p in scope):
        return list(scope)
    raise TypeError(
        f"{field} must be 'all', 'encoder', 'predictor', a module-name pattern or a non-empty list of patterns, "
        f"got {scope!r}"
    )


def select(names: Iterable[str], scope: Scope, field: str = "scope") -> list[str]:
    """The names matched by any pattern of ``scope``; ``ValueError`` naming ``field`` when nothing matches."""
    names = list(names)
    pats = patterns(scope, field)
    chosen = [n for n in names if any(matches(n, p) for p in pats)]
    if not chosen:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise ValueError(f"{field}={scope!r} matches none of the {len(names)} quantization points ({shown})")
    return chosen
