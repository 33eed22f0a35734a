"""Which modules are quantized: the ONE place that declares the quantization points of every architecture.

An architecture's *layout* (``LAYOUTS``, chosen by the model's ``architecture`` attribute; "dinowm" when it has
none) lists its units, their points by role, the scale pairs between them, and what the scopes "encoder" and
"predictor" mean.  A point is an ``nn.Linear`` or an ``nn.Conv2d``; a convolution is quantized as the linear on its
unfolded input patches (``qlinear.QuantConv2d``): its weight ``(O, C, k, k)`` is the matrix ``(O, C k k)``, so
per-channel means per output channel.

DINO-WM ("dinowm").  Following the paper's released code (QuantWM in huawei-noah/noah-research: linear layers
only), the quantization points are the four linears of every transformer block and their inputs:

=====================  ===========================  ===========================
role                   DINOv2-style ``blocks.{i}``  predictor ``layers.{i}.{0,1}``
=====================  ===========================  ===========================
qkv (input: post-LN)   ``attn.qkv``                 ``0.to_qkv`` (no bias)
proj (input: attn out) ``attn.proj``                ``0.to_out.0``
fc1 (input: post-LN)   ``mlp.fc1``                  ``1.net.1``
fc2 (input: post-GELU) ``mlp.fc2``                  ``1.net.4``
=====================  ===========================  ===========================

Everything else stays in floating point: patch embedding, CLS / position / mask tokens, every LayerNorm,
LayerScale, softmax, both attention matmuls, the action / proprio encoders and the decoder.  Scopes: "encoder" and
"predictor" are the modules of those names.

Blocks are recognised by the names and types of their children (never by class name), so any model that uses
these conventions works.  A *unit* is the smallest module holding a norm and the linears it feeds, and whose
``forward(x)`` is self-contained: ``blocks.{i}`` (one unit per DINOv2 block), ``layers.{i}.0`` (attention) and
``layers.{i}.1`` (feed-forward).  OmniQuant trains unit by unit; calibration records unit inputs.

A *scale pair* ``prev -> linear`` says that input channel ``j`` of ``linear`` is output channel ``j`` of ``prev``,
so a per-channel scale can move between them exactly (SmoothQuant, AWQ, OmniQuant's LET):
``norm`` (LayerNorm weight/bias), ``act`` (the GELU, replaced by a scaled activation) or ``v`` (the value rows,
the last third, of the fused qkv linear feeding ``proj``).

RSSM ("rssm", ``wmqlib.models.rssm``).  Every convolution and linear of the state-space model:

=====================================  =======  =================  ==========================
points                                 role     input              scale pair
=====================================  =======  =================  ==========================
``encoder.convs.{i}`` (Conv2d)         conv     image / SiLU maps  none (per output channel)
``encoder.fc``                         embed    flattened map      none
``{mlp}.fc1``                          fc1      ``{mlp}.norm``     norm (exact)
``{mlp}.fc2``                          fc2      ``{mlp}.act``      act (exact)
``cell.ih`` (GRU input matrix)         ih       ``transition.act`` act (exact: its only input)
``cell.hh`` (GRU recurrent matrix)     hh       the state ``h``    none (h feeds the gates too)
=====================================  =======  =================  ==========================

with ``{mlp}`` in posterior, transition (no fc2), prior, visual_head, proprio_head.  Units: each MLP (trainable);
each convolution, ``encoder.fc`` and ``cell`` are units that are not trainable (a point alone, or a forward of two
inputs).  The proprio encoder and the decoder stay in floating point, as DINO-WM's.  Scopes: "encoder" = the
conv encoder and the posterior (the observation side: they run once per observed frame and the planner cannot
undo their error); "predictor" = transition, GRU cell, prior and the two heads (what runs at every imagined
step).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import torch.nn.functional as F
from torch import Tensor, nn

ROLES = ("qkv", "proj", "fc1", "fc2")  # DINO-WM's roles (AWQ searches their scales by default)
ALL_ROLES = (*ROLES, "conv", "embed", "ih", "hh")  # with the RSSM's
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
    """A block: its module name, its points (linears or convolutions) by role, and its scale pairs.

    ``trainable``: its ``forward(x)`` takes one tensor and holds its points as children, so OmniQuant trains it on
    its recorded inputs (calibration records them); False for a point that is a unit alone or a GRU cell.
    """

    name: str
    linears: dict[str, str]
    pairs: tuple[ScalePair, ...]
    trainable: bool = True


@dataclass(frozen=True)
class QuantPoints:
    """All quantization points of a model, found by ``find_points``; ``scopes`` maps the scope names "encoder" and
    "predictor" to the module-name patterns they stand for in this architecture."""

    units: tuple[Unit, ...]
    scopes: Mapping[str, tuple[str, ...]]

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

    def part(self, linear: str) -> str:
        """The scope ``linear`` belongs to ("encoder" / "predictor"), else the first component of its name."""
        return next((scope for scope, pats in self.scopes.items() if any(matches(linear, p) for p in pats)),
                    linear.split(".")[0])

    def select(self, scope: Scope, field: str = "scope") -> list[str]:
        """The points in ``scope`` (scope names expanded by ``scopes``), in model order; see ``select``."""
        return select(self.linears, scope, field, self.scopes)


def weight_matrix(point: nn.Module) -> Tensor:
    """The weight of a point as a matrix ``(O, I)``: a linear's own; a convolution's ``(O, C, k, k)`` viewed as
    ``(O, C k k)`` (a view: writing to it writes the convolution's weight)."""
    weight = point.weight
    return weight if weight.ndim == 2 else weight.view(weight.shape[0], -1)


def check_conv(conv: nn.Conv2d) -> None:
    """``ValueError`` unless ``conv`` is a linear map of its unfolded patches: groups 1, zero padding by numbers."""
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"a convolution quantization point needs groups=1, zero padding given as numbers, got "
                         f"groups={conv.groups}, padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")


def input_rows(point: nn.Module, x: Tensor) -> Tensor:
    """The input of a point as rows matching its matrix's columns: a linear's ``x (..., I)`` as it is; a
    convolution's ``x (N, C, H, W)`` as its unfolded patches ``(N, L, C k k)``, one row per output position."""
    if not isinstance(point, nn.Conv2d):
        return x
    check_conv(point)
    return F.unfold(x, point.kernel_size, point.dilation, point.padding, point.stride).transpose(1, 2)


def _child(module: nn.Module, path: str) -> Optional[nn.Module]:
    for part in path.split("."):
        module = module._modules.get(part) if module is not None else None
    return module


def _is(module: nn.Module, path: str, kind: type) -> bool:
    return isinstance(_child(module, path), kind)


def _affine_norm(module: nn.Module, path: str) -> bool:
    norm = _child(module, path)
    return isinstance(norm, nn.LayerNorm) and norm.weight is not None and norm.bias is not None


def _dinowm_unit(name: str, module: nn.Module) -> Optional[Unit]:
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


def _dinowm_units(model: nn.Module) -> list[Unit]:
    """Every DINOv2 block, predictor Attention and FeedForward of ``model``, recognised by child names and types."""
    return [u for name, m in model.named_modules() if (u := _dinowm_unit(name, m)) is not None]


def _mlp_unit(model: nn.Module, name: str) -> Optional[Unit]:
    """An RSSM MLP ``name`` (norm LayerNorm, fc1 Linear, act, optional fc2 Linear), or None."""
    if not (_is(model, f"{name}.norm", nn.LayerNorm) and _is(model, f"{name}.fc1", nn.Linear)):
        return None
    linears = {"fc1": f"{name}.fc1"}
    pairs = [ScalePair(f"{name}.norm", "norm", f"{name}.fc1")] if _affine_norm(model, f"{name}.norm") else []
    if _is(model, f"{name}.fc2", nn.Linear) and _child(model, f"{name}.act") is not None:
        linears["fc2"] = f"{name}.fc2"
        pairs.append(ScalePair(f"{name}.act", "act", f"{name}.fc2"))
    return Unit(name, linears, tuple(pairs))


RSSM_MLPS = ("posterior", "transition", "prior", "visual_head", "proprio_head")


def _rssm_units(model: nn.Module) -> list[Unit]:
    """The RSSM's units in model order (module docstring), recognised by child names and types."""
    units = []
    convs = _child(model, "encoder.convs")
    for index, conv in (convs.named_children() if convs is not None else ()):
        if isinstance(conv, nn.Conv2d):
            units.append(Unit(f"encoder.convs.{index}", {"conv": f"encoder.convs.{index}"}, (), trainable=False))
    if _is(model, "encoder.fc", nn.Linear):
        units.append(Unit("encoder.fc", {"embed": "encoder.fc"}, (), trainable=False))
    mlps = {name: unit for name in RSSM_MLPS if (unit := _mlp_unit(model, name)) is not None}
    units += [mlps[name] for name in ("posterior", "transition") if name in mlps]
    if _is(model, "cell.ih", nn.Linear) and _is(model, "cell.hh", nn.Linear):
        # the transition MLP ends at its activation, whose output is the GRU's input and nothing else
        feeds_ih = "transition" in mlps and "fc2" not in mlps["transition"].linears
        pairs = (ScalePair("transition.act", "act", "cell.ih"),) if feeds_ih else ()
        units.append(Unit("cell", {"ih": "cell.ih", "hh": "cell.hh"}, pairs, trainable=False))
    return units + [mlps[name] for name in ("prior", "visual_head", "proprio_head") if name in mlps]


@dataclass(frozen=True)
class Layout:
    """One architecture's declaration: ``units(model)`` in model order, its scopes, and what it looks for."""

    units: Callable[[nn.Module], list[Unit]]
    scopes: Mapping[str, tuple[str, ...]]
    expected: str


LAYOUTS: dict[str, Layout] = {
    "dinowm": Layout(
        _dinowm_units, {"encoder": ("encoder",), "predictor": ("predictor",)},
        "DINOv2-style blocks (norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2) or predictor layers (norm + "
        "to_qkv + to_out.0; net.0 LayerNorm + net.1 + net.4)"),
    "rssm": Layout(
        _rssm_units, {"encoder": ("encoder", "posterior"),
                      "predictor": ("transition", "cell", "prior", "visual_head", "proprio_head")},
        "the RSSM's encoder.convs.{i} / encoder.fc, MLPs (norm + fc1 [+ act + fc2]) and cell (ih + hh)"),
}


def find_points(model: nn.Module) -> QuantPoints:
    """Every unit of ``model`` by the layout of its ``architecture`` attribute ("dinowm" when absent; see the
    module docstring); ``ValueError`` for an unknown architecture or when there is none."""
    architecture = getattr(model, "architecture", "dinowm")
    if architecture not in LAYOUTS:
        raise ValueError(f"{type(model).__name__}.architecture must be one of {sorted(LAYOUTS)} (the layouts that "
                         f"declare quantization points), got {architecture!r}")
    layout = LAYOUTS[architecture]
    units = layout.units(model)
    if not units:
        raise ValueError(f"no quantization points found: expected {layout.expected}")
    return QuantPoints(tuple(units), layout.scopes)


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


def select(names: Iterable[str], scope: Scope, field: str = "scope",
           scopes: Optional[Mapping[str, tuple[str, ...]]] = None) -> list[str]:
    """The names matched by any pattern of ``scope``, a pattern named in ``scopes`` (a layout's "encoder" /
    "predictor") standing for its patterns; ``ValueError`` naming ``field`` when nothing matches."""
    names = list(names)
    pats = [p for pattern in patterns(scope, field) for p in (scopes or {}).get(pattern, (pattern,))]
    chosen = [n for n in names if any(matches(n, p) for p in pats)]
    if not chosen:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise ValueError(f"{field}={scope!r} matches none of the {len(names)} quantization points ({shown})")
    return chosen
