"""Reading torch pickle files without running code from them.

DINO-WM checkpoints are ``torch.save`` dumps of whole pickled modules, so a plain ``torch.load`` imports the
original source tree and runs whatever the pickle names. ``load_pickled_checkpoint`` instead unpickles through
``RestrictedUnpickler``: every global the file names is looked up in an allowlist,

- the released model classes, torch.nn layers, optimizers, grad scalers and accelerate state become inert
  ``PickledObject`` stand-ins that only record their pickled state (no constructor, no library code runs);
- torch's tensor-rebuild functions, ``torch.device``/``torch.Size``/dtypes, ``OrderedDict``/``defaultdict``
  and a few builtin containers are returned as themselves (they build data, nothing else);

and any other global raises ``UnsafeCheckpointError`` naming it before it can be called. Tensors saved on CUDA are
mapped to the requested device. ``module_state_dict`` then reads a state_dict out of a stand-in module tree.
"""

from __future__ import annotations

import _codecs
import _compat_pickle
import builtins
import collections
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import torch

from wmqlib.models.errors import CheckpointError, UnsafeCheckpointError

# Released DINO-WM classes (pickled by reference as models.<file>.<class>), mapped to inert stand-ins.
RELEASED_CLASSES = frozenset({
    "models.vit.ViTPredictor", "models.vit.Transformer", "models.vit.Attention", "models.vit.FeedForward",
    "models.vqvae.VQVAE", "models.vqvae.Quantize", "models.vqvae.Decoder", "models.vqvae.ResBlock",
    "models.proprio.ProprioceptiveEmbedding",
})
# Whole namespaces whose classes only ever become stand-ins: layers, optimizer and accelerate state.
STANDIN_NAMESPACES = ("torch.nn.modules", "torch.optim", "torch.amp.grad_scaler", "torch.cuda.amp.grad_scaler",
                      "accelerate")
_TORCH_REBUILD = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                  "_rebuild_parameter_with_state")
_BUILTINS = ("set", "frozenset", "dict", "list", "tuple", "int", "float", "bool", "complex", "slice", "bytes",
             "bytearray")


def _data_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): collections.defaultdict,
        ("_codecs", "encode"): _codecs.encode,  # how protocol-2 pickles spell bytes objects
        ("torch", "device"): torch.device,
        ("torch", "Size"): torch.Size,
        ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
    }
    allowed.update({("builtins", name): getattr(builtins, name) for name in _BUILTINS})
    allowed.update({("torch._utils", name): getattr(torch._utils, name)
                    for name in _TORCH_REBUILD if hasattr(torch._utils, name)})
    return allowed


_DATA_GLOBALS = _data_globals()


class PickledObject:
    """Inert stand-in for an instance of an allowlisted class: it stores what the pickle hands it, runs nothing.

    ``qualname`` is the pickled class path; ``state`` the object's pickled state (a module's ``__dict__``);
    ``args`` the constructor arguments of objects pickled by reduction (e.g. enum members).
    """

    qualname: ClassVar[str] = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.entries = args, kwargs, None, {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # __new__ recorded everything; never call the real constructor

    def __setstate__(self, state: Any) -> None:
        self.state = state

    # Instances of dict / list subclasses are rebuilt with SETITEMS / APPENDS.
    def __setitem__(self, key: Any, value: Any) -> None:
        self.entries[key] = value

    def append(self, value: Any) -> None:
        self.entries[len(self.entries)] = value

    def extend(self, values: Any) -> None:
        for value in values:
            self.append(value)

    def attribute(self, name: str, default: Any = None) -> Any:
        """A pickled attribute of the original object (from its ``__dict__`` state), or ``default``."""
        state = self.state[0] if isinstance(self.state, tuple) else self.state
        return state.get(name, default) if isinstance(state, dict) else default

    def __repr__(self) -> str:
        return f"<pickled {self.qualname}>"


_STANDINS: dict[str, type[PickledObject]] = {}


def standin_class(qualname: str) -> type[PickledObject]:
    """The (cached) PickledObject subclass standing in for the class ``qualname``."""
    if qualname not in _STANDINS:
        _STANDINS[qualname] = type(qualname.rsplit(".", 1)[-1], (PickledObject,), {"qualname": qualname})
    return _STANDINS[qualname]


def _is_standin(module: str, name: str) -> bool:
    if f"{module}.{name}" in RELEASED_CLASSES:
        return True
    return any(module == ns or module.startswith(ns + ".") for ns in STANDIN_NAMESPACES)


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` resolving globals only through the allowlist; ``source`` names the file in errors."""

    source: ClassVar[str] = ""

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles spell Python 3 names the Python 2 way (__builtin__.set); translate as pickle does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _DATA_GLOBALS:
            return _DATA_GLOBALS[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if _is_standin(module, name):
            return standin_class(f"{module}.{name}")
        raise UnsafeCheckpointError(f"{module}.{name}", self.source)


def _restricted_pickle_module(source: str) -> types.ModuleType:
    """A module object torch.load accepts as ``pickle_module``, unpickling through RestrictedUnpickler."""
    unpickler = type("RestrictedUnpickler", (RestrictedUnpickler,), {"source": source})
    module = types.ModuleType("wmq_restricted_pickle")
    module.Unpickler = unpickler
    module.load = lambda file, **kwargs: unpickler(file, **kwargs).load()
    return module


def _existing_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes); re-download or re-save it")
    return path


def _unreadable(path: Path, what: str, error: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{what} {path} could not be read ({type(error).__name__}: {error}); the file is truncated, corrupt or not "
        f"a torch checkpoint"
    )


_READ_ERRORS = (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, TypeError,
                AttributeError, IndexError, KeyError)


def load_pickled_checkpoint(path: str | Path, map_location: torch.device | str = "cpu",
                            what: str = "checkpoint") -> Any:
    """Unpickle a ``torch.save`` file through the allowlist; tensors land on ``map_location``.

    Raises UnsafeCheckpointError for a global outside the allowlist (before it can run) and CheckpointError
    for missing, empty, truncated or unreadable files.
    """
    path = _existing_file(path, what)
    module = _restricted_pickle_module(str(path))
    try:
        return torch.load(path, map_location=map_location, pickle_module=module, weights_only=False)
    except UnsafeCheckpointError:
        raise
    except _READ_ERRORS as error:
        raise _unreadable(path, what, error) from error


def load_tensor_dict(path: str | Path, map_location: torch.device | str = "cpu",
                     what: str = "weights file") -> dict[str, torch.Tensor]:
    """Load a plain state_dict (str -> tensor) with torch's own weights-only unpickler."""
    path = _existing_file(path, what)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except _READ_ERRORS as error:
        raise _unreadable(path, what, error) from error
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                             for k, v in data.items()):
        found = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{what} {path} is not a plain state_dict of tensors (found {found})")
    return data


def module_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The state_dict a pickled nn.Module stand-in would produce: parameters and persistent buffers, recursively.

    ``where`` names the object in error messages (e.g. "checkpoint['predictor']").
    """
    out: dict[str, torch.Tensor] = {}

    def walk(module: Any, prefix: str) -> None:
        state = module.attribute("_modules") if isinstance(module, PickledObject) else None
        if state is None:
            name = f"{where}.{prefix.rstrip('.')}" if prefix else where
            raise CheckpointError(f"{name} is not a pickled torch module (got {module!r})")
        skip = module.attribute("_non_persistent_buffers_set") or set()
        tensors = {**(module.attribute("_parameters") or {}),
                   **{k: v for k, v in (module.attribute("_buffers") or {}).items() if k not in skip}}
        for key, tensor in tensors.items():
            if tensor is not None:
                out[prefix + key] = tensor.detach()
        for name, child in state.items():
            if child is not None:
                walk(child, f"{prefix}{name}.")

    walk(obj, "")
    return out
