"""Golden float tolerance: nbval compares the golden notebooks' checked cells number by number.

The golden notebooks in this folder are smoke runs; ``pytest --nbval-lax`` re-executes them and compares every cell
marked ``# NBVAL_CHECK_OUTPUT`` with its stored output (after tests/notebooks/sanitize.cfg). A float computed by a
regression or a planner moves in its last printed digit from one CPU to another (torch's CPU wheel dispatches MKL
and oneDNN kernels by instruction set, and the order of a float reduction changes the rounding), so a byte-exact
comparison fails on a machine other than the one that made the goldens. This conftest, loaded by pytest for every
notebook collected from this folder, replaces nbval's ``reference == fresh`` test of a checked output by:

    split both texts into text, integers (no "." and no exponent) and decimals (``14.538``, ``1.2e-03``);
    text       identical, except that any run of whitespace equals any other (a column widens by a digit);
    integers   identical, sign included (counts, "33%", "+0 [-56, +56] pts", sizes, bit widths, seeds);
    decimals   |a - b| <= u + REL_TOL * max(|a|, |b|), u = one unit in the last printed digit (the coarser of the
               two): a value on a rounding boundary may flip by u, and the underlying float may drift by REL_TOL.

With REL_TOL = 1e-4 a success rate over 50 episodes printed with two decimals may move by 0.01 + 0.0001, and one
episode more or less moves it by 0.02, so it fails; verdict words, labels and counts still fail on any change.
A number glued to a word or a dot (``W4A8``, ``layers.2.1``, ``2.13.0``) is text. See README "Tests".
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest
from nbval.plugin import IPyNbCell

HERE = Path(__file__).resolve().parent
REL_TOL = Decimal("1e-4")  # drift of the float behind a decimal; measured up to 8e-6 across float paths (README)
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?!\w|\.\d)")
WHITESPACE = re.compile(r"\s+")


def tokens(text: str) -> list[tuple[str, str, int]]:
    """``text`` as ``(kind, token, line)`` triples, kind "text", "int" or "float", text and numbers alternating.

    Text tokens have their whitespace runs squeezed to one space; ``line`` counts from 1.
    """
    text, found, pos = text.strip(), [], 0
    for match in NUMBER.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        found.append(("text", WHITESPACE.sub(" ", text[pos:match.start()]), line))
        kind = "int" if re.fullmatch(r"[-+]?\d+", match[0]) else "float"
        found.append((kind, match[0], line))
        pos = match.end()
    found.append(("text", WHITESPACE.sub(" ", text[pos:]), text.count("\n", 0, pos) + 1))
    return found


def allowed(a: str, b: str) -> Decimal:
    """The largest difference tolerated between the printed decimals ``a`` and ``b``: u + REL_TOL * max(|a|, |b|)."""
    unit = max(Decimal(1).scaleb(Decimal(x).as_tuple().exponent) for x in (a, b))
    return unit + REL_TOL * max(abs(Decimal(a)), abs(Decimal(b)))


def disagreement(reference: str, fresh: str) -> str | None:
    """None when ``fresh`` matches ``reference`` under the rule above, else one line naming the first difference."""
    ref, new = tokens(reference), tokens(fresh)
    first = next((why for a, b in zip(ref, new) if (why := _differ(a, b))), None)
    if len(ref) != len(new):
        counts = f"{len(ref) // 2} numbers in the reference vs {len(new) // 2} in the fresh output"
        return f"{counts}; first difference {first}"
    return first


def _differ(a: tuple[str, str, int], b: tuple[str, str, int]) -> str | None:
    """None when the tokens ``a`` (reference) and ``b`` (fresh) match, else where and how they differ."""
    (kind, x, line), (other, y, _) = a, b
    if kind == other == "float":
        if abs(Decimal(x) - Decimal(y)) <= allowed(x, y):
            return None
        return f"line {line}: {x} vs {y} differ by more than {allowed(x, y).normalize()} (tolerance)"
    if (kind, x) == (other, y):
        return None
    if kind == other == "text":  # show from the word where they first differ
        first = next(i for i, (p, q) in enumerate(zip(x + "\0", y + "\1")) if p != q)
        start = x.rfind(" ", 0, first) + 1
        x, y = x[start:start + 40], y[start:start + 40]
    return f"line {line}: {kind} {x!r} vs {other} {y!r} (text and integers must be identical)"


class GoldenText(str):
    """A sanitized output whose ``==`` is ``disagreement(...) is None`` (nbval compares outputs with ``!=``)."""

    __hash__ = str.__hash__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and disagreement(str(self), str(other)) is None

    def __ne__(self, other: object) -> bool:
        return not self == other


def tolerate_floats(item: IPyNbCell) -> None:
    """Make nbval compare ``item``'s outputs as GoldenText and name the first difference when they disagree."""
    sanitize, report = item.sanitize, item.format_output_compare

    def sanitize_golden(text):
        text = sanitize(text)
        return GoldenText(text) if isinstance(text, str) else text

    def report_golden(key, reference, fresh):
        report(key, reference, fresh)
        item.comparison_traceback.append(f"golden float tolerance: {disagreement(reference, fresh)}")

    item.sanitize, item.format_output_compare = sanitize_golden, report_golden


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Apply the tolerance to the nbval cells of the notebooks in this folder (not to other notebooks)."""
    for item in items:
        if isinstance(item, IPyNbCell) and item.path.resolve().is_relative_to(HERE):
            tolerate_floats(item)
