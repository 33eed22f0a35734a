"""Where a figure came from: the notebook and panel, the git commit of the checkout, the profile, and the cache keys
of the results it plots. ``wmqlib.plots.savefig`` writes it into the PNG / PDF metadata and into a sidecar
``<notebook>__<panel>.json`` beside the figure; the book (``wmqlib.book``) shows it under each figure.

The commit is the checkout's ``HEAD``; ``library_modified`` says whether ``wmqlib/`` differed from it when the
figure was drawn (then the commit alone does not reproduce it). Outside a git checkout both are None.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from wmqlib.paths import REPO_ROOT

KEY_COLUMN = "config_key"  # the column of a study table (wmqlib.study.run_study) holding each row's cache key
FIELDS = ("notebook", "panel", "commit", "library_modified", "profile", "results", "cache_keys")


def _git(*args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None


def git_state() -> tuple[str | None, bool | None]:
    """(HEAD's full commit hash, whether wmqlib/ differs from it), or (None, None) outside a git checkout."""
    head = _git("rev-parse", "HEAD")
    if head is None or head.returncode != 0:
        return None, None
    diff = _git("diff", "--quiet", "HEAD", "--", "wmqlib")
    return head.stdout.strip(), None if diff is None or diff.returncode not in (0, 1) else diff.returncode == 1


def cache_keys(sources: pd.DataFrame | Iterable[pd.DataFrame]) -> list[str]:
    """The sorted distinct cache keys in the ``config_key`` column of ``sources`` (a table or several); tables
    without that column (values computed live, not cached) contribute none."""
    frames = [sources] if isinstance(sources, pd.DataFrame) else list(sources)
    for i, frame in enumerate(frames):
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"sources[{i}] must be a pandas DataFrame (a table the figure plots), got "
                            f"{type(frame).__name__}")
    return sorted({str(k) for f in frames if KEY_COLUMN in f.columns for k in f[KEY_COLUMN].dropna()})


def figure_provenance(notebook: str, panel: str, profile: str | None, results: str | None,
                      sources: pd.DataFrame | Iterable[pd.DataFrame] = ()) -> dict[str, Any]:
    """The provenance record of one figure (keys ``FIELDS``): ``profile`` the study profile's name, ``results``
    the results cache folder name (``Setup.results``), ``sources`` the tables the figure plots."""
    commit, modified = git_state()
    return {"notebook": notebook, "panel": panel, "commit": commit, "library_modified": modified,
            "profile": profile, "results": results, "cache_keys": cache_keys(sources)}


def sidecar(figure: Path) -> Path:
    """The provenance file of a figure file: ``<notebook>__<panel>.json`` beside it."""
    return Path(figure).with_suffix(".json")


def read_provenance(figure: Path) -> dict[str, Any] | None:
    """The provenance record beside ``figure`` (any of its formats), or None when it has none."""
    path = sidecar(figure)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    missing = [f for f in FIELDS if f not in record]
    if missing:
        raise ValueError(f"{path}: provenance lacks {missing}; expected the fields {list(FIELDS)}")
    return record


def describe(record: dict[str, Any]) -> str:
    """One line for readers: notebook, commit (short; "+ modified library" when so), profile, results, keys."""
    commit = "no git commit" if record["commit"] is None else f"commit {record['commit'][:10]}" + (
        " + modified library" if record["library_modified"] else "")
    keys = record["cache_keys"]
    shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    return (f"{record['notebook']}.ipynb, {commit}, profile {record['profile']}, results "
            f"{record['results']}: {len(keys)} cached result{'s' if len(keys) != 1 else ''}"
            f"{' (' + shown + ')' if keys else ' (computed live)'}")
