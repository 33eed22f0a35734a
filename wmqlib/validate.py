"""Shared building blocks below every other module: input checks that name the field, and atomic file writes.

Every check raises :class:`InvalidValue` (a ``ValueError`` and a ``TypeError`` at once, so callers may catch either)
with a message of one shape: ``<field> must be <what is allowed>, got <value>``. Every check returns the value
normalised (numpy integers -> int, ints -> float where a float is asked for), so it can be used inline.

Atomic writes: ``atomic_write(path, data)`` writes to ``<name>.<pid>@<host>.tmp`` in the same folder, fsyncs and
renames, so a reader (or a run killed at any moment, even by SIGKILL) sees the whole old file, the whole new file or
none; ``atomic_path(path)`` does the same for writers that need a path of their own (safetensors, numpy).
``remove_stale_tmp(folder)`` removes the temporary files such writes leave when their process was killed; every
atomic write calls it on its folder first, so calibrations, checkpoints, datasets, cards and sweep results never
keep a killed writer's leftovers. The host in the name keeps a folder shared by machines safe: only this machine's
temporaries are judged by their pid, since another machine's pid cannot be checked from here.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
TMP_SUFFIX = ".tmp"
HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "localhost"  # as written in temporary names
_TMP_NAME = re.compile(r"^(?P<stem>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9._-]+)\.tmp$")


class InvalidValue(TypeError, ValueError):
    """A value outside what a field allows; the message names the field, the allowed values and the value given."""


def check_int(field: str, value: object, minimum: int | None = None, maximum: int | None = None,
              why: str = "") -> int:
    """``value`` as an int in ``[minimum, maximum]`` (either bound may be None), else InvalidValue naming ``field``.

    Bools are refused (``True`` is not a count); numpy integers are accepted. ``why`` explains the bound.
    """
    bounds = _bounds(minimum, maximum)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidValue(f"{field} must be an int{bounds}{why}, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise InvalidValue(f"{field} must be an int{bounds}{why}, got {value}")
    return int(value)


def check_float(field: str, value: object, minimum: float | None = None, maximum: float | None = None,
                strict: bool = False) -> float:
    """``value`` as a finite float in ``[minimum, maximum]`` (``(minimum, maximum]`` when ``strict``), else
    InvalidValue naming ``field``. Ints are accepted, bools and NaN / inf are not."""
    if minimum is not None and maximum is not None:
        what = f"{field} must be a number in {'(' if strict else '['}{minimum}, {maximum}]"
    else:
        low = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
        what = f"{field} must be a finite number{low}{'' if maximum is None else f' <= {maximum}'}"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidValue(f"{what}, got {value!r}")
    x = float(value)
    if not math.isfinite(x) or (minimum is not None and (x <= minimum if strict else x < minimum)) or \
            (maximum is not None and x > maximum):
        raise InvalidValue(f"{what}, got {value!r}")
    return x


def check_bool(field: str, value: object) -> bool:
    """``value`` if it is True or False, else InvalidValue naming ``field``."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidValue(f"{field} must be True or False, got {value!r}")
    return bool(value)


def check_choice(field: str, value: T, allowed: Collection[Any]) -> T:
    """``value`` if it is one of ``allowed``, else InvalidValue naming ``field`` and listing the allowed values."""
    try:
        ok = value in allowed
    except TypeError:  # an unhashable value asked of a set or dict
        ok = False
    if not ok:
        raise InvalidValue(f"{field} must be one of {list(allowed)}, got {value!r}")
    return value


def check_type(field: str, value: T, kinds: type | tuple[type, ...], what: str) -> T:
    """``value`` if it is an instance of ``kinds``, else InvalidValue naming ``field`` and ``what`` is allowed."""
    if not isinstance(value, kinds):
        raise InvalidValue(f"{field} must be {what}, got {type(value).__name__}")
    return value


def _bounds(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in {minimum}..{maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    return "" if maximum is None else f" <= {maximum}"


# ----- atomic files -------------------------------------------------------------------------------------------------

def tmp_path(path: Path) -> Path:
    """The temporary name ``atomic_path`` writes ``path`` under: ``<name>.<pid>@<host>.tmp`` (same folder and disk)."""
    return path.with_name(f"{path.name}.{os.getpid()}@{HOST}{TMP_SUFFIX}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; on success it is fsynced and renamed onto ``path``,
    on an exception it is removed. The folder is created when missing, else cleared of stale temporaries first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path.parent)
    tmp = tmp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def remove_stale_tmp(folder: str | os.PathLike) -> list[Path]:
    """Remove ``<name>.<pid>@<host>.tmp`` files in ``folder`` written on this host by a process that no longer runs
    (killed mid-write).

    Files of a live process (another run writing into the same folder now) and of other hosts are left alone.
    Returns what was removed.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TMP_NAME.match(entry.name)
        if match is None or match["host"] != HOST or not entry.is_file() or _alive(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OverflowError:
        return False
    return True
