"""Sweeps: run a list of configurations, one tidy table back, every finished configuration cached on disk.

    table = sweep(configs, run_fn, name="granularity")    # cached under data/results/granularity/

The engine knows nothing of the study: a configuration is any dataclass / dict / scalar tree, ``run_fn`` any
deterministic function of it. ``key_config`` maps a configuration to what identifies its result (default: itself;
the study adds the weights fingerprint there, so building a setting needs no file).

Cache layout: ``<cache_dir>/<name>/<key>.json``, one file per finished configuration, where ``key`` is a stable
hash of the configuration's canonical JSON (dataclasses become dicts tagged with their type name, so
``RTN(w_bits=4)`` and ``OMSE(w_bits=4)`` differ). Files are written to a temporary name and moved into place with
``os.replace``, so a file either holds a whole result or does not exist: a sweep killed at any moment (even
SIGKILL) resumes where it stopped, without losing or duplicating rows. Files are never appended to or edited;
a file that fails its checksum is moved aside to ``<key>.json.corrupt``, reported with a warning and recomputed.
The returned table is always read back from the cache files, so a resumed sweep returns exactly the table an
uninterrupted one would. Temporary files left by a killed run (``<key>.json.<pid>@<host>.tmp`` of a process of this
host that no longer runs) are removed when a sweep starts on the folder.

Configurations run one by one in this process, or as tasks of a ``concurrent.futures.Executor`` (or a Dask cluster,
``"local:2"`` / ``"dask://HOST:PORT"``, see ``wmqlib.cluster``) whose results come back: only this process writes.

Inventory: every sweep remembers, per cache folder, the keys this process asked for (``served``);
``record_reads(reader)`` writes them to ``<folder>/reads/<reader>.json`` (each notebook does at its end, through
``profiles.Setup.footer``), and ``python -m wmqlib.sweep --inventory FOLDER`` lists the cache files of a folder that
no recorded reader asked for: stale results a cleanup can remove.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import json
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, as_completed
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from wmqlib.paths import RESULTS_DIR
from wmqlib.validate import atomic_write, remove_stale_tmp

FORMAT_VERSION = 1
TYPE_KEY = "__type__"
PROVENANCE = "provenance"  # column prefix of where a result was computed (not part of its key)
# The one way old keys stay stable: a field added to a configuration after results were cached is left out of the
# canonical form (so of keys and config columns) while it holds its default. A dataclass declares it with
# ``added_field(default)`` (metadata ``OMIT_AT_DEFAULT``); a plain dict of key fields with ``without_defaults``.
OMIT_AT_DEFAULT = "wmq_omit_at_default"
RunResult = pd.DataFrame | Mapping[str, Any] | Sequence[Mapping[str, Any]]


def added_field(default: Any, **kwargs: Any) -> Any:
    """``dataclasses.field(default=default, **kwargs)`` marked ``OMIT_AT_DEFAULT``: a field added after results were
    cached, left out of their keys while it holds ``default`` (the value they were computed with)."""
    return dataclasses.field(default=default, metadata={OMIT_AT_DEFAULT: True}, **kwargs)


def without_defaults(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` without the entries equal to their entry in ``defaults`` (fields added after results were cached,
    left out while at their default), in ``values``' order."""
    return {k: v for k, v in values.items() if not (k in defaults and v == defaults[k])}


def canonical(config: Any) -> Any:
    """A JSON-able, canonical form of a configuration: dataclasses -> dicts with a ``__type__`` entry (``added_field``
    fields left out while at their default), tuples -> lists, Paths -> str, enums -> value, numpy
    scalars -> Python scalars; dict keys must be strings.

    Raises TypeError naming the offending type for anything else (a model object, a tensor, ...).
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        fields = dataclasses.fields(config)
        values = without_defaults({f.name: getattr(config, f.name) for f in fields},
                                  {f.name: f.default for f in fields if f.metadata.get(OMIT_AT_DEFAULT)})
        return {TYPE_KEY: type(config).__name__, **{name: canonical(value) for name, value in values.items()}}
    if isinstance(config, Mapping):
        bad = [k for k in config if not isinstance(k, str)]
        if bad:
            raise TypeError(f"config dict keys must be str, got {bad[0]!r}")
        return {k: canonical(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [canonical(v) for v in config]
    if isinstance(config, enum.Enum):
        return canonical(config.value)
    if isinstance(config, Path):
        return str(config)
    if isinstance(config, np.generic):
        return config.item()
    if config is None or isinstance(config, (bool, int, float, str)):
        return config
    raise TypeError(f"config values must be dataclasses, dicts, lists or scalars, got {type(config).__name__}")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)


def config_key(config: Any) -> str:
    """Stable 16-hex-digit key of a configuration: sha256 of its canonical JSON (same on every machine/run)."""
    return hashlib.sha256(_dumps(canonical(config)).encode()).hexdigest()[:16]


def flatten_config(config: Any) -> dict[str, Any]:
    """One table row's worth of config columns: nested fields joined with ".", a nested dataclass also gives a
    column with its type name (``recipe`` -> "RTN", ``recipe.w_bits`` -> 4), lists become JSON strings."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k == TYPE_KEY:
                    if prefix:
                        flat[prefix] = v
                else:
                    walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, list):
            flat[prefix or "config"] = _dumps(value)
        else:
            flat[prefix or "config"] = value

    walk("", canonical(config))
    return flat


def _rows(result: RunResult, key: str) -> pd.DataFrame:
    if isinstance(result, pd.DataFrame):
        return result.reset_index(drop=True)
    if isinstance(result, Mapping):
        return pd.DataFrame([dict(result)])
    if isinstance(result, Sequence) and all(isinstance(r, Mapping) for r in result):
        return pd.DataFrame([dict(r) for r in result])
    raise TypeError(f"run_fn must return a DataFrame, a dict or a list of dicts; got {type(result).__name__} "
                    f"for config {key}")


def _jsonable_cell(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    raise TypeError(f"result cells must be numbers, bools, strings or None, got {type(value).__name__}")


def _payload(key: str, config: Any, rows: pd.DataFrame, provenance: Mapping[str, Any]) -> dict[str, Any]:
    data = [[_jsonable_cell(v) for v in row] for row in rows.astype(object).itertuples(index=False, name=None)]
    return {"format": FORMAT_VERSION, "key": key, "config": canonical(config),
            "columns": [str(c) for c in rows.columns], "data": data,
            "provenance": {str(k): _jsonable_cell(v) for k, v in provenance.items()}}


def _read(path: Path, key: str, config: Any) -> pd.DataFrame:
    """The rows cached in ``path``; ValueError (with the reason) if the file is corrupt or belongs elsewhere."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        payload, digest = record["payload"], record["sha256"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"unreadable ({type(err).__name__}: {err})") from None
    if hashlib.sha256(_dumps(payload).encode()).hexdigest() != digest:
        raise ValueError("checksum mismatch")
    same_config = _dumps(payload.get("config")) == _dumps(canonical(config))
    if payload.get("format") != FORMAT_VERSION or payload.get("key") != key or not same_config:
        raise ValueError("written for another configuration or format")
    rows = pd.DataFrame(payload["data"], columns=payload["columns"])
    for name, value in payload.get("provenance", {}).items():  # files written before provenance have none
        rows[f"{PROVENANCE}.{name}"] = value
    return rows


def _table(config: Any, rows: pd.DataFrame, key: str) -> pd.DataFrame:
    flat = flatten_config(config)
    clash = sorted(set(flat) & set(rows.columns))
    if clash:
        raise ValueError(f"run_fn result columns {clash} collide with config fields; rename them")
    out = rows.copy()
    for i, (col, value) in enumerate(flat.items()):
        out.insert(i, col, [value] * len(out))
    out.insert(0, "config_key", key)
    return out


class SweepError(RuntimeError):
    """Configurations whose run raised; every other configuration finished and is cached.

    failures: ``{key: (label, exception)}`` in config order (label: the caller's ``label(config)``, else "").
    """

    def __init__(self, name: str, failures: dict[str, tuple[str, BaseException]], total: int) -> None:
        self.failures = failures
        super().__init__(f"sweep {name!r}: {len(failures)} of {total} configurations failed (the others are "
                         f"cached; rerun to retry only these):" + "".join(
                             f"\n  {key}{f' ({label})' if label else ''}: {type(err).__name__}: {err}"
                             for key, (label, err) in failures.items()))


def _task(run_fn: Callable[[Any], RunResult], provenance: Any, config: Any) -> tuple[RunResult, Mapping[str, Any]]:
    """What one executor task runs: the result and, when ``provenance`` is a function, where it was computed."""
    return run_fn(config), provenance() if callable(provenance) else (provenance or {})  # after the run


def _outcomes(executor: Executor | None, task: Callable[[Any], Any], jobs: dict[int, Any]
              ) -> Iterator[tuple[int, Any, BaseException | None]]:
    """(index, result, None) or (index, None, error) per job as each finishes; leaving early cancels the rest."""
    if executor is None:
        for i, config in jobs.items():
            try:
                yield i, task(config), None
            except Exception as err:  # reported by sweep; KeyboardInterrupt still stops the run
                yield i, None, err
        return
    futures = {executor.submit(task, config): i for i, config in jobs.items()}
    try:
        for future in as_completed(futures):
            error = future.exception()
            yield futures[future], None if error else future.result(), error
    finally:
        for future in futures:
            future.cancel()


@contextlib.contextmanager
def _opened(executor: Executor | str | None, idle: bool) -> Iterator[Executor | None]:
    """The executor itself, or the Dask cluster a spec string names, opened for the sweep (unless ``idle``: nothing
    to run) and closed after it."""
    if isinstance(executor, str):
        from wmqlib.cluster import open_executor, parse_spec  # Dask itself is imported only to open a cluster

        parse_spec(executor)
        with contextlib.nullcontext() if idle else open_executor(executor) as opened:
            yield opened
    elif executor is None or isinstance(executor, Executor):
        yield executor
    else:
        raise TypeError(f"executor must be None, a concurrent.futures.Executor or a spec string, got "
                        f"{type(executor).__name__}")


_SERVED: dict[Path, set[str]] = {}  # cache folder -> the keys sweeps of this process asked for
READS = "reads"  # subfolder of a cache folder holding each reader's keys


def served(folder: str | os.PathLike) -> set[str]:
    """The keys that sweeps of this process asked for in the cache folder ``folder`` (cached or computed)."""
    return set(_SERVED.get(Path(folder).resolve(), ()))


def record_reads(reader: str, folders: Sequence[str | os.PathLike]) -> list[Path]:
    """Write, for each of the cache ``folders`` a sweep of this process used, ``<folder>/reads/<reader>.json``: the
    sorted keys it asked for there (replacing the reader's earlier record). Returns the files written."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", reader):
        raise ValueError(f"reader must be letters, digits, '.', '_' or '-' (a file name), got {reader!r}")
    written = []
    for folder in sorted({Path(f).resolve() for f in folders} & set(_SERVED)):
        keys = _SERVED[folder]
        path = folder / READS / f"{reader}.json"
        path.parent.mkdir(exist_ok=True)
        written.append(atomic_write(path, json.dumps(sorted(keys), indent=0) + "\n"))
    return written


def inventory(folder: str | os.PathLike) -> pd.DataFrame:
    """The cache files of ``folder`` and who reads them: columns file, key, readers (the ``reads/*.json`` records
    naming the key, comma-separated; "" for a file no recorded reader asked for), sorted by file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"inventory: no cache folder {folder}")
    readers: dict[str, list[str]] = {}
    for record in sorted((folder / READS).glob("*.json")):
        for key in json.loads(record.read_text()):
            readers.setdefault(key, []).append(record.stem)
    rows = [{"file": path.name, "key": path.stem, "readers": ",".join(readers.get(path.stem, []))}
            for path in sorted(folder.glob("*.json"))]
    return pd.DataFrame(rows, columns=["file", "key", "readers"])


def cached(configs: Sequence[Any], name: str, cache_dir: str | os.PathLike = RESULTS_DIR,
           key_config: Callable[[Any], Any] | None = None) -> list[bool]:
    """Per config, whether ``sweep(configs, ..., name, cache_dir, key_config=key_config)`` would read it from its
    cache file instead of running it (the file exists; its contents are checked when it is read)."""
    folder = Path(cache_dir) / name
    return [(folder / f"{config_key(c if key_config is None else key_config(c))}.json").exists() for c in configs]


def sweep(configs: Sequence[Any], run_fn: Callable[[Any], RunResult], name: str,
          cache_dir: str | os.PathLike = RESULTS_DIR, recompute: bool = False, progress: bool = True,
          key_config: Callable[[Any], Any] | None = None,
          provenance: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
          executor: Executor | str | None = None, label: Callable[[Any], str] | None = None) -> pd.DataFrame:
    """Run ``run_fn(config)`` for every configuration not cached yet and return all rows as one tidy table.

    configs: dataclasses / dicts / scalars (see ``canonical``); duplicates are an error.
    run_fn: config -> DataFrame, dict (one row) or list of dicts; must be deterministic in the config (and, with an
        executor, picklable: a top-level function or a ``functools.partial`` of one).
    name: sweep name, a folder under ``cache_dir`` (letters, digits, ``._-``).
    recompute: rerun every configuration and replace its cache file.
    key_config: config -> what its cache key and config columns are made of (default: the config itself); called
        once per config, before anything runs.
    provenance: scalars recorded with every result computed now (e.g. the torch version, thread count and CPU),
        returned as ``provenance.<name>`` columns, so a table computed elsewhere is recognisable; never part of
        the key (missing in files written without it). A function () -> scalars is called where each result is
        computed (on the worker), after the run.
    executor: None runs the configs one after another in this process; a ``concurrent.futures.Executor`` gets one
        task per uncached config; a spec string "local:N" / "dask://HOST:PORT" opens a Dask cluster for this call
        (``wmqlib.cluster``). Results come back here and are written in completion order, by this process only.
    label: config -> a readable name, used in failure reports next to the key.
    A config whose run raises is reported (a RuntimeWarning) and the others go on; then SweepError names every
    failed config (the finished ones stay cached). The progress bar counts finished configs.
    Returns: columns ``config_key``, the flattened key config, then run_fn's columns; rows in config order, read
    back from the cache files (so the same for any executor and for a resumed run).
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"name must be letters, digits, '.', '_' or '-' (a folder name), got {name!r}")
    identities = [c if key_config is None else key_config(c) for c in configs]
    keys = [config_key(c) for c in identities]
    seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in seen:
            raise ValueError(f"configs[{i}] duplicates configs[{seen[key]}] (key {key}); each config runs once")
        seen[key] = i
    folder = Path(cache_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(folder)
    _SERVED.setdefault(folder.resolve(), set()).update(keys)
    paths = [folder / f"{key}.json" for key in keys]
    rows: dict[int, pd.DataFrame] = {}
    for i, (path, identity, key) in enumerate(zip(paths, identities, keys)):
        if path.exists() and not recompute:
            try:
                rows[i] = _read(path, key, identity)
            except ValueError as err:
                aside = path.with_name(path.name + ".corrupt")
                os.replace(path, aside)
                warnings.warn(f"sweep {name!r}: corrupt cache file {path} ({err}); moved to {aside.name} and "
                              f"recomputing", RuntimeWarning, stacklevel=2)
    jobs = {i: configs[i] for i in range(len(configs)) if i not in rows}
    failures: dict[int, BaseException] = {}
    bar = tqdm(total=len(configs), initial=len(rows), desc=name, disable=not progress, unit="config")
    with _opened(executor, idle=not jobs) as opened:
        for i, outcome, error in _outcomes(opened, partial(_task, run_fn, provenance), jobs):
            if error is None:
                try:  # a result that cannot be stored (bad types) fails its config like a raising run
                    payload = _payload(keys[i], identities[i], _rows(outcome[0], keys[i]), outcome[1])
                    atomic_write(paths[i], _dumps({"payload": payload,
                                                   "sha256": hashlib.sha256(_dumps(payload).encode()).hexdigest()}))
                    rows[i] = _read(paths[i], keys[i], identities[i])
                except Exception as err:
                    error = err
            if error is not None:
                failures[i] = error
                shown = f" ({label(configs[i])})" if label is not None else ""
                warnings.warn(f"sweep {name!r}: config {keys[i]}{shown} failed ({type(error).__name__}: {error}); "
                              f"going on with the others", RuntimeWarning, stacklevel=2)
            bar.update(1)
    bar.close()
    if failures:
        report = {keys[i]: (label(configs[i]) if label is not None else "", failures[i]) for i in sorted(failures)}
        raise SweepError(name, report, len(configs)) from failures[min(failures)]
    if not configs:
        return pd.DataFrame(columns=["config_key"])
    return pd.concat([_table(identities[i], rows[i], keys[i]) for i in range(len(configs))], ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m wmqlib.sweep", description="The cache folders' inventory.")
    parser.add_argument("--inventory", type=Path, required=True, metavar="FOLDER",
                        help="a cache folder (e.g. data/results/study-full): list the files no recorded reader asks for")
    args = parser.parse_args(argv)
    try:
        table = inventory(args.inventory)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    unread = table[table["readers"] == ""]
    readers = sorted({r for cell in table["readers"] for r in cell.split(",") if r})
    print(f"{args.inventory}: {len(table)} files, read by {readers or 'no recorded reader'}; "
          f"{len(unread)} read by none" + (":" if len(unread) else ""))
    for name in unread["file"]:
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
