"""The README's generated blocks: each notebook's findings as the notebook printed them, so every number in them is
the notebook's own, and a stale one fails a test (tests/test_readme.py).

A block is the text between the lines ``<!-- findings NN -->`` and ``<!-- /findings NN -->``, NN a numbered
notebook's two-digit prefix; its content is the text output of that notebook's cell tagged ``findings`` (which
prints ``findings.markdown`` of its verdicts), read from the executed notebook in ``notebooks/`` (the full
profile's, committed).

    python -m wmqlib.readme            # rewrite the README's blocks from the executed notebooks
    python -m wmqlib.readme --check    # exit 1 naming every stale block, change nothing
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

from wmqlib.validate import InvalidValue, atomic_write

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the checkout: README.md and the committed notebooks
TAG = "findings"
BLOCK = re.compile(r"^<!-- findings (\d\d) -->\n(.*?)^<!-- /findings \1 -->$", re.M | re.S)
OPEN = re.compile(r"^<!-- (/?)findings (\d\d) -->$", re.M)


def notebook_findings(path: Path) -> str:
    """The text printed by the cell tagged ``findings`` of the executed notebook ``path`` (stream outputs joined).
    InvalidValue naming the file when it has no such cell or the cell printed nothing (not executed)."""
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and TAG in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise InvalidValue(f"{path}: expected one code cell tagged {TAG!r}, found {len(cells)}")
    text = "".join(o.get("text", "") for o in cells[0].get("outputs", []) if o.get("output_type") == "stream")
    if not text.strip():
        raise InvalidValue(f"{path}: the cell tagged {TAG!r} printed nothing; execute the notebook first")
    return text.rstrip("\n") + "\n"


def _notebook(folder: Path, prefix: str) -> Path:
    found = sorted(folder.glob(f"{prefix}_*.ipynb"))
    if len(found) != 1:
        raise InvalidValue(f"README block 'findings {prefix}': expected one notebook {folder}/{prefix}_*.ipynb, "
                           f"found {[p.name for p in found]}")
    return found[0]


def _check_markers(text: str) -> None:
    """InvalidValue unless every opening marker is closed by its own closing marker before the next one."""
    markers = [(m.group(1) == "/", m.group(2), text.count("\n", 0, m.start()) + 1) for m in OPEN.finditer(text)]
    for i, (closing, prefix, line) in enumerate(markers):
        expected_closing = i % 2 == 1
        if closing != expected_closing or (closing and markers[i - 1][1] != prefix):
            raise InvalidValue(f"README line {line}: unmatched marker '<!-- {'/' if closing else ''}findings "
                               f"{prefix} -->'; blocks are '<!-- findings NN -->' ... '<!-- /findings NN -->'")
    if len(markers) % 2:
        raise InvalidValue(f"README line {markers[-1][2]}: 'findings {markers[-1][1]}' is never closed")


def render(text: str, notebooks: Path) -> str:
    """``text`` (a README) with every block's content replaced by its notebook's findings."""
    _check_markers(text)
    return BLOCK.sub(lambda m: f"<!-- findings {m.group(1)} -->\n"
                               f"{notebook_findings(_notebook(notebooks, m.group(1)))}<!-- /findings {m.group(1)} -->",
                     text)


def stale(text: str, notebooks: Path) -> list[str]:
    """The prefixes of the blocks of ``text`` whose content differs from their notebook's findings."""
    _check_markers(text)
    return [m.group(1) for m in BLOCK.finditer(text)
            if m.group(2) != notebook_findings(_notebook(notebooks, m.group(1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wmqlib.readme", description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", type=Path, default=PACKAGE_ROOT / "README.md")
    parser.add_argument("--notebooks", type=Path, default=PACKAGE_ROOT / "notebooks")
    parser.add_argument("--check", action="store_true", help="exit 1 naming the stale blocks; change nothing")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    try:
        if args.check:
            old = stale(text, args.notebooks)
            if old:
                print(f"{args.readme}: stale findings blocks {old}; run python -m wmqlib.readme", file=sys.stderr)
                return 1
            return 0
        new = render(text, args.notebooks)
    except InvalidValue as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if new != text:
        atomic_write(args.readme, new)
    print(f"{args.readme}: {len(BLOCK.findall(new))} findings blocks up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
