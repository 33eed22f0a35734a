"""Reviewable notebooks: every notebook under notebooks/ has a committed text pair, ``<stem>.py`` in jupytext's
``py:percent`` form, beside it (``python -m wmqlib.pairs`` writes them; ``--check`` lists stale ones).

A change to a notebook's code or prose then shows up in review as a plain diff of the ``.py`` file, while the
``.ipynb`` keeps the outputs. The text holds the cells and their tags only (no outputs, no execution metadata,
no jupytext version), so re-running a notebook changes its pair only when a cell's source changes - e.g. the
parameters papermill injects. The runner (``wmqlib.reproduce``) rewrites the pair of every notebook it writes
into notebooks/; ``tests/test_pairs.py`` fails when a committed pair is out of sync.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext

from wmqlib.paths import NOTEBOOKS_DIR
from wmqlib.validate import atomic_write

TEXT_FORMAT = "py:percent"
# keep each cell's tags (papermill's "parameters"); drop every other cell and notebook field
FILTERS = {"notebook_metadata_filter": "-all", "cell_metadata_filter": "tags,-all"}


def text_path(notebook: Path) -> Path:
    """Where the text pair of ``notebook`` lives: the same folder and stem, ``.py``."""
    return Path(notebook).with_suffix(".py")


def text_of(notebook: Path) -> str:
    """The ``py:percent`` text of ``notebook`` (cells and their tags)."""
    nb = jupytext.read(notebook)
    nb.metadata["jupytext"] = dict(FILTERS)
    return jupytext.writes(nb, fmt=TEXT_FORMAT)


def sync(notebook: Path) -> Path:
    """Write the text pair of ``notebook``; returns its path."""
    path = text_path(notebook)
    atomic_write(path, text_of(notebook))
    return path


def stale(folder: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The notebooks in ``folder`` whose text pair is missing or differs from the notebook."""
    return [nb for nb in sorted(Path(folder).glob("*.ipynb"))
            if not text_path(nb).is_file() or text_path(nb).read_text() != text_of(nb)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wmqlib.pairs", description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", default=str(NOTEBOOKS_DIR), help="folder of notebooks")
    parser.add_argument("--check", action="store_true", help="only list stale pairs; exit status 1 if any")
    args = parser.parse_args(argv)
    out = stale(Path(args.notebooks))
    if args.check:
        for nb in out:
            print(f"stale text pair: {text_path(nb)} (run python -m wmqlib.pairs)")
        return 1 if out else 0
    for nb in out:
        print(f"wrote {sync(nb)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
