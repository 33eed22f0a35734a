"""Reading torch pickle files without running code from them, in bounded time and memory.

DINO-WM checkpoints are ``torch.save`` dumps of whole pickled modules, so a plain ``torch.load`` imports the
original source tree and runs whatever the pickle names. ``load_pickled_checkpoint`` instead 1. checks the container first: only torch's zip format (torch >= 1.6) is read; the legacy formats (a bare pickle
   stream, or the tar archive of torch < 0.4) are refused before any byte is unpickled, and so is a zip whose
   members are compressed, symbolic links, outside one top folder or larger than the file;
2. unpickles through ``RestrictedUnpickler``: every global the file names is resolved BY NAME against an
   allowlist, before anything is imported (a refused name never triggers an import):
   - the released model classes, torch.nn layers, optimizers, grad scalers and accelerate state become inert
     ``PickledObject`` stand-ins that only record their pickled state (no constructor, no library code runs);
   - torch's tensor-rebuild functions, ``torch.device``/``torch.Size``/dtypes, ``OrderedDict``/``defaultdict``
     and a few builtin constructors are returned as themselves, the builtins wrapped so that no argument can make
     them allocate more than the file holds (``bytes(10**11)`` is refused);
   - ``builtins.getattr`` applied to a pickled module for ``forward`` / ``_original_forward`` (how a run
     trained through accelerate with mixed precision pickles its patched forwards) gives an inert
     ``PickledMethod``; any other use of ``getattr`` is refused;
   and any other global raises ``UnsafeCheckpointError`` naming it before it can be called;
3. checks what came out: nesting at most ``MAX_DEPTH`` levels, no function left as data (what a BUILD trick on an
   allowlisted function leaves; the torch functions handed out are per-file wrappers, so such a trick never
   changes them), and no tensor that views more elements than its storage holds (an expanded view a later copy
   would blow up).

Whatever else goes wrong (truncation, malformed persistent ids, exhausted memory, ...) ends in a ``CheckpointError``
naming the file. Tensors saved on CUDA are mapped to the requested device. ``module_state_dict`` then reads a
state_dict out of a stand-in module tree, iteratively and with the same bounds.
"""

from __future__ import annotations

import _codecs
import _compat_pickle
import builtins
import collections
import pickle
import stat
import types
import zipfile
from pathlib import Path
from typing import Any, Callable, ClassVar

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
# DINO-WM's encoder wrapper and the torch.hub DINOv2 code it pickles when trained with train_encoder=True.
ENCODER_NAMESPACES = ("models.dino", "dinov2", "hubconf")
# Attribute names accelerate's mixed-precision wrapper stores as bound methods in a module's __dict__.
BOUND_METHOD_NAMES = frozenset({"forward", "_original_forward"})
_TORCH_REBUILD = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                  "_rebuild_parameter_with_state")
_CONTAINERS = ("set", "frozenset", "dict", "list", "tuple")
_SCALARS = ("int", "float", "bool", "complex", "slice")
_TORCH_DTYPES = {name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}

MAX_DEPTH = 100  # nesting levels of containers and pickled objects (a released checkpoint has about 25)
MAX_MODULE_DEPTH = 32  # levels of submodules in a pickled module tree (DINO-WM's predictor has 6)
MAX_MODULE_VISITS = 100_000  # submodules visited by module_state_dict (shared submodules count each time)
MAX_BUILTIN_SIZE = 1 << 20  # largest size a pickled bytes()/bytearray() call may ask for, in bytes
MAX_NUMBER_TEXT = 100  # longest text a pickled int()/float()/complex() call may parse, in characters
MAX_EXPANDED_BYTES = 1 << 24  # an overlapping (expanded) tensor view may cover at most this many bytes


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
        state = self.state[0] if isinstance(self.state, tuple) and self.state else self.state
        return state.get(name, default) if isinstance(state, dict) else default

    def __repr__(self) -> str:
        return f"<pickled {self.qualname}>"


class PickledMethod:
    """Inert stand-in for a bound method ``<owner>.<name>`` pickled as ``getattr(owner, name)``; it holds only the
    owner's class path and the name (never the owner, never a looked-up attribute) and cannot be called."""

    def __init__(self, owner: str, name: str) -> None:
        self.owner, self.name = owner, name

    def __repr__(self) -> str:
        return f"<pickled method {self.owner}.{self.name}>"


_STANDINS: dict[str, type[PickledObject]] = {}


def standin_class(qualname: str) -> type[PickledObject]:
    """The (cached) PickledObject subclass standing in for the class ``qualname``."""
    if qualname not in _STANDINS:
        _STANDINS[qualname] = type(qualname.rsplit(".", 1)[-1], (PickledObject,), {"qualname": qualname})
    return _STANDINS[qualname]


def _in_namespace(module: str, namespaces: tuple[str, ...]) -> bool:
    return any(module == ns or module.startswith(ns + ".") for ns in namespaces)


def _is_standin(module: str, name: str) -> bool:
    return f"{module}.{name}" in RELEASED_CLASSES or _in_namespace(module, STANDIN_NAMESPACES)


def _is_module_standin(obj: Any) -> bool:
    """True for a stand-in of a released DINO-WM class or a torch.nn layer (what accelerate patches)."""
    return isinstance(obj, PickledObject) and (
        obj.qualname in RELEASED_CLASSES or _in_namespace(obj.qualname.rsplit(".", 1)[0], ("torch.nn.modules",)))


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _describe(value: Any) -> str:
    """A bounded description of a pickled value for messages (never its repr: that could be huge or deep)."""
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**12 else f"an int of {value.bit_length()} bits"
    if isinstance(value, str):
        return repr(_short(value, 60))
    if isinstance(value, (bytes, bytearray)):
        return f"{type(value).__name__} of {len(value)} bytes"
    return f"a {type(value).__name__}"


def _private(function: Callable[..., Any]) -> Callable[..., Any]:
    """A per-file wrapper of a torch function: a pickle's BUILD on it (which can set attributes such as
    ``__defaults__``) changes only this wrapper, never the function every later load uses."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    call.__qualname__ = call.__name__ = function.__name__
    return call


class _Guard:
    """Builds the guarded versions of the allowlisted builtins for one file (``source`` names it in refusals)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def refuse(self, name: str, detail: str) -> UnsafeCheckpointError:
        return UnsafeCheckpointError(name, self.source, detail)

    def container(self, name: str) -> Callable[..., Any]:
        build = getattr(builtins, name)

        def guarded(*args: Any) -> Any:
            # Only pickled data (already in memory) may be converted: a string or bytes would be exploded into
            # one object per character, and anything else would run code (iterators) or allocate.
            if len(args) > 1 or (args and not isinstance(args[0], (list, tuple, set, frozenset, dict))):
                raise self.refuse(f"builtins.{name}", f"called with {', '.join(map(_describe, args))}; a "
                                                      f"checkpoint only rebuilds containers from pickled data")
            return build(*args)

        return guarded

    def scalar(self, name: str) -> Callable[..., Any]:
        build = getattr(builtins, name)

        def guarded(*args: Any) -> Any:
            for arg in args:
                if isinstance(arg, (str, bytes, bytearray)) and len(arg) > MAX_NUMBER_TEXT:
                    raise self.refuse(f"builtins.{name}", f"called with {_describe(arg)} to parse (at most "
                                                          f"{MAX_NUMBER_TEXT} characters)")
                if not isinstance(arg, (str, bytes, bytearray, int, float, complex, type(None))):
                    raise self.refuse(f"builtins.{name}", f"called with {_describe(arg)}")
            return build(*args)

        return guarded

    def binary(self, name: str) -> Callable[..., Any]:
        build = getattr(builtins, name)

        def guarded(*args: Any) -> Any:
            if args and isinstance(args[0], int) and not 0 <= args[0] <= MAX_BUILTIN_SIZE:
                raise self.refuse(f"builtins.{name}", f"asked to allocate {_describe(args[0])} bytes (at most "
                                                      f"{MAX_BUILTIN_SIZE})")
            if any(not isinstance(a, (int, str, bytes, bytearray, list, tuple)) for a in args):
                raise self.refuse(f"builtins.{name}", f"called with {', '.join(map(_describe, args))}")
            return build(*args)

        return guarded

    def encode(self, text: Any, encoding: Any = "utf-8", *rest: Any) -> bytes:
        # Protocol-2 pickles spell a bytes object as _codecs.encode(<latin-1 text>, "latin1"); nothing else is used.
        if rest or not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise self.refuse("_codecs.encode", f"called with {_describe(text)} and encoding {_describe(encoding)};"
                                                f" only encode(text, 'latin1') (a protocol-2 bytes object) is read")
        return _codecs.encode(text, encoding)

    def getattr(self, obj: Any, name: Any, *default: Any) -> PickledMethod:
        # accelerate's mixed precision replaces module.forward by a bound method, pickled as getattr(module,
        # "forward"); it stays a name, never an attribute lookup.
        if not default and isinstance(name, str) and name in BOUND_METHOD_NAMES and _is_module_standin(obj):
            return PickledMethod(obj.qualname, name)
        target = obj.qualname if isinstance(obj, PickledObject) else _describe(obj)
        raise self.refuse("builtins.getattr", f"getattr({target}, {_describe(name)}) is not a bound method "
                                              f"{sorted(BOUND_METHOD_NAMES)} of a pickled module (the only use "
                                              f"of getattr wmq accepts)")

    def globals(self) -> dict[tuple[str, str], Any]:
        allowed: dict[tuple[str, str], Any] = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("collections", "defaultdict"): collections.defaultdict,
            ("_codecs", "encode"): self.encode,
            ("builtins", "getattr"): self.getattr,
            ("builtins", "bytes"): self.binary("bytes"),
            ("builtins", "bytearray"): self.binary("bytearray"),
            ("torch", "device"): torch.device,
            ("torch", "Size"): torch.Size,
            ("torch._tensor", "_rebuild_from_type_v2"): _private(torch._tensor._rebuild_from_type_v2),
        }
        allowed.update({("builtins", name): self.container(name) for name in _CONTAINERS})
        allowed.update({("builtins", name): self.scalar(name) for name in _SCALARS})
        allowed.update({("torch._utils", name): _private(getattr(torch._utils, name))
                        for name in _TORCH_REBUILD if hasattr(torch._utils, name)})
        allowed.update({("torch", name): dtype for name, dtype in _TORCH_DTYPES.items()})
        return allowed


def _encoder_hint(qualname: str) -> str:
    return (
        f"{qualname!r} belongs to the DINOv2 encoder DINO-WM pickles under the key 'encoder' when trained with "
        f"train_encoder=True. wmq takes the encoder from dinov2_weights instead and cannot skip one key of a pickle "
        f"safely: in an environment you trust, with DINO-WM's code, save the encoder's weights as a DINOv2 file "
        f"(torch.save(ckpt['encoder'].base_model.state_dict(), 'dinov2_finetuned.pth'); pass it as "
        f"dinov2_weights), then delete the key and re-save (del ckpt['encoder']; torch.save(ckpt, path))"
    )


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` resolving globals only through the allowlist; ``source`` names the file in errors."""

    source: ClassVar[str] = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._allowed = _Guard(self.source).globals()

    def find_class(self, module: str, name: str) -> Any:
        # Resolved by name only: nothing is imported, not even for a refusal.
        if not isinstance(module, str) or not isinstance(name, str):
            raise UnsafeCheckpointError(f"{_describe(module)}.{_describe(name)}", self.source)
        # Protocol-2 pickles spell Python 3 names the Python 2 way (__builtin__.set); translate as pickle does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        if _is_standin(module, name):
            return standin_class(f"{module}.{name}")
        qualname = _short(f"{module}.{name}")
        if _in_namespace(module, ENCODER_NAMESPACES):
            raise UnsafeCheckpointError(qualname, self.source, _encoder_hint(qualname))
        raise UnsafeCheckpointError(qualname, self.source)


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
    cause = f"{type(error).__name__}: {_short(str(error), 300)}"
    if isinstance(error, MemoryError):
        cause = "it asks for more memory than this machine has"
    return CheckpointError(
        f"{what} {path} could not be read ({cause}); the file is truncated, corrupt or not a torch checkpoint"
    )


_TAR_MAGIC_OFFSET = 257


def check_torch_zip(path: Path, what: str = "checkpoint") -> None:
    """Refuse anything but torch's zip format before unpickling a byte of it (see the module docstring)."""
    with open(path, "rb") as fh:
        head = fh.read(_TAR_MAGIC_OFFSET + 8)
    size = path.stat().st_size
    if not head.startswith(b"PK\x03\x04"):
        legacy = head[:1] == b"\x80" or head[_TAR_MAGIC_OFFSET:_TAR_MAGIC_OFFSET + 5] == b"ustar"
        if legacy:
            raise CheckpointError(
                f"{what} {path} is in torch's legacy serialization format (a bare pickle or a tar archive, "
                f"written by torch < 1.6 or with _use_new_zipfile_serialization=False); wmq reads only the zip "
                f"format. Re-save it in an environment you trust: torch.save(torch.load(old, weights_only=False), "
                f"new)"
            )
        raise CheckpointError(f"{what} {path} is not a torch checkpoint (it does not start like a zip archive)")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise _unreadable(path, what, error) from error
    tops = {info.filename.split("/", 1)[0] for info in members}
    for info in members:
        name = info.filename
        if info.compress_type != zipfile.ZIP_STORED:
            problem = "is compressed (torch.save stores members uncompressed)"
        elif name.startswith("/") or ".." in name.split("/") or "\\" in name:
            problem = "has a path outside the archive's folder"
        elif stat.S_ISLNK(info.external_attr >> 16):
            problem = "is a symbolic link"
        elif info.file_size > size:
            problem = f"claims {info.file_size} bytes, more than the whole file ({size})"
        else:
            continue
        raise CheckpointError(f"{what} {path}: zip member {_short(name)!r} {problem}; not a file torch.save wrote")
    if len(tops) != 1 or f"{next(iter(tops))}/data.pkl" not in {info.filename for info in members}:
        raise CheckpointError(f"{what} {path}: the zip archive does not hold one folder with a data.pkl; not a file "
                              f"torch.save wrote")


def _children(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, PickledObject):
        return [obj.args, obj.kwargs, obj.state, obj.entries]
    return []


def _check_tensor(tensor: torch.Tensor, path: Path, what: str) -> None:
    if tensor.device.type == "meta":
        return
    covered = tensor.numel() * tensor.element_size()
    if covered > MAX_EXPANDED_BYTES and covered > tensor.untyped_storage().nbytes():
        raise CheckpointError(
            f"{what} {path} holds a tensor of shape {tuple(tensor.shape)} that views only "
            f"{tensor.untyped_storage().nbytes()} bytes of storage (an overlapping or expanded view); copying it "
            f"would allocate {covered} bytes, so wmq refuses it"
        )


def check_loaded(obj: Any, path: Path, what: str = "checkpoint") -> None:
    """Walk an unpickled object graph once (iteratively, shared objects once) and refuse nesting deeper than
    ``MAX_DEPTH`` and tensors viewing more than their storage; ``path`` and ``what`` name the file."""
    height: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(obj, False)]
    while stack:
        node, expanded = stack.pop()
        key = id(node)
        if not expanded:
            if key in height or key in on_path:
                continue
            if isinstance(node, torch.Tensor):
                _check_tensor(node, path, what)
            elif isinstance(node, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
                raise CheckpointError(f"{what} {path} holds a bare reference to the function "
                                      f"{getattr(node, '__name__', '?')!r} as data; a checkpoint holds data and "
                                      f"module state, never functions, so wmq refuses it")
            children = _children(node)
            if not children:
                height[key] = 0
                continue
            on_path.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children)
        else:
            on_path.discard(key)
            height[key] = 1 + max(height.get(id(child), 0) for child in _children(node))
            if height[key] > MAX_DEPTH:
                raise CheckpointError(f"{what} {path} nests objects more than {MAX_DEPTH} levels deep; a DINO-WM "
                                      f"checkpoint has about 25, so wmq refuses it")


def load_pickled_checkpoint(path: str | Path, map_location: torch.device | str = "cpu",
                            what: str = "checkpoint") -> Any:
    """Unpickle a ``torch.save`` file through the allowlist; tensors land on ``map_location``.

    Raises UnsafeCheckpointError for a global outside the allowlist (before it can run) and CheckpointError
    for anything else: missing, empty, legacy-format, truncated, malformed, too deeply nested or oversized files.
    """
    path = _existing_file(path, what)
    check_torch_zip(path, what)
    module = _restricted_pickle_module(str(path))
    try:
        payload = torch.load(path, map_location=map_location, pickle_module=module, weights_only=False)
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure inside torch.load means the file is unreadable
        raise _unreadable(path, what, error) from error
    check_loaded(payload, path, what)
    return payload


def load_tensor_dict(path: str | Path, map_location: torch.device | str = "cpu",
                     what: str = "weights file") -> dict[str, torch.Tensor]:
    """Load a plain state_dict (str -> tensor) with torch's own weights-only unpickler (zip format only)."""
    path = _existing_file(path, what)
    check_torch_zip(path, what)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure inside torch.load means the file is unreadable
        raise _unreadable(path, what, error) from error
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                             for k, v in data.items()):
        found = [_short(k, 40) if isinstance(k, str) else _describe(k) for k in list(data)[:8]] \
            if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{what} {path} is not a plain state_dict of tensors (found {found})")
    for tensor in data.values():
        _check_tensor(tensor, path, what)
    return data


def module_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The state_dict a pickled nn.Module stand-in would produce: parameters and persistent buffers, recursively.

    ``where`` names the object in error messages (e.g. "checkpoint['predictor']"). The tree is walked iteratively,
    at most ``MAX_MODULE_DEPTH`` levels and ``MAX_MODULE_VISITS`` submodules (a shared submodule is visited, and
    its tensors listed, under every name, as torch does).
    """
    out: dict[str, torch.Tensor] = {}
    stack: list[tuple[Any, str, int]] = [(obj, "", 0)]
    visits = 0
    while stack:
        module, prefix, depth = stack.pop()
        name = f"{where}.{prefix.rstrip('.')}" if prefix else where
        children = module.attribute("_modules") if isinstance(module, PickledObject) else None
        if not isinstance(children, dict):
            found = module.qualname if isinstance(module, PickledObject) else type(module).__name__
            raise CheckpointError(f"{name} is not a pickled torch module (got {found})")
        visits += 1
        if depth > MAX_MODULE_DEPTH or visits > MAX_MODULE_VISITS:
            raise CheckpointError(f"{where} nests more than {MAX_MODULE_DEPTH} levels of submodules or holds more "
                                  f"than {MAX_MODULE_VISITS} of them; not a DINO-WM module")
        skip = module.attribute("_non_persistent_buffers_set") or set()
        groups = [module.attribute("_parameters") or {}, module.attribute("_buffers") or {}]
        if not all(isinstance(group, dict) for group in groups) or not isinstance(skip, (set, frozenset)):
            raise CheckpointError(f"{name} has malformed _parameters / _buffers; not a pickled torch module")
        tensors = {**groups[0], **{k: v for k, v in groups[1].items() if k not in skip}}
        for key, tensor in tensors.items():
            if tensor is None:
                continue
            if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
                raise CheckpointError(f"{name} lists a parameter or buffer {_describe(key)} that is "
                                      f"{_describe(tensor)}, not a tensor")
            out[prefix + key] = tensor.detach()
        for child_name, child in reversed(list(children.items())):
            if child is not None:
                if not isinstance(child_name, str):
                    raise CheckpointError(f"{name} has a submodule named by {_describe(child_name)}")
                stack.append((child, f"{prefix}{child_name}.", depth + 1))
    return out
