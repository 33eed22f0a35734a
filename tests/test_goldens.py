"""Tests for the nbval golden harness: tests/notebooks/sanitize.cfg, the float tolerance of tests/notebooks/conftest.py,
and `pytest --nbval-lax` on smoke executions.

The comparator is checked on values written by hand. The golden check then runs exactly as `make test` runs it, on
the fixture notebook executed by the runner: the golden passes, a copy whose stored float drifted by one unit in
its last printed digit passes, and copies with a float just beyond the tolerance or a changed count fail.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from nbval.plugin import get_sanitize_patterns

from wmqlib import reproduce

TESTS = Path(__file__).parent
SANITIZE = TESTS / "notebooks" / "sanitize.cfg"
TOLERANCE = TESTS / "notebooks" / "conftest.py"
FIXTURE = TESTS / "fixtures" / "00_fixture.ipynb"


def _load_tolerance():
    """tests/notebooks/conftest.py as a plain module (pytest loads it as a conftest only for that folder)."""
    spec = importlib.util.spec_from_file_location("golden_tolerance", TOLERANCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


golden = _load_tolerance()


def sanitize(text: str) -> str:
    """Apply the sanitize file's rules in order, as nbval does to every checked output."""
    for regex, replace in get_sanitize_patterns(SANITIZE.read_text()):
        text = re.sub(regex, replace, text)
    return text


def test_sanitize_file_hides_volatile_text():
    assert sanitize("took 0.0042 s with <torch._C.Generator object at 0x7f044c79be90>") == (
        "took DURATION with <torch._C.Generator object at 0xADDRESS>"
    )
    assert sanitize("planning: 1.2e-03s per step, 350 ms total, 2 min") == (
        "planning: DURATION per step, DURATION total, DURATION"
    )
    assert sanitize("sweep:  40%|####      | 4/10 [00:01<00:02,  2.50it/s]") == "sweep:  PROGRESS-BAR"
    assert sanitize("cached at 2025-11-28 08:37:12.5") == "cached at TIMESTAMP"
    assert sanitize("loaded /tmp/ci-clone/data/checkpoints/mini-wall") == "loaded ROOT/data/checkpoints/mini-wall"
    assert sanitize("calibration in /tmp/tmpab12cd/calib.pt") == "calibration in TMPPATH"


def test_sanitize_file_keeps_key_numbers():
    for text in [
        "seeded mean: 0.005398, 99th percentile: 2.408376",
        "success 0.85 [0.71, 0.93], 5 seeds, 30 steps, 300 samples, 1st and 2nd",
        "effective bits 4.25, weight bytes 123456, n=1000",
    ]:
        assert sanitize(text) == text


@pytest.mark.parametrize("reference, fresh", [
    ("89   14.538", "89   14.537"),  # the probe value: one unit in the last digit
    ("error  9.999\nspread 1.000", "error 10.000\nspread 1.000"),  # a column widens by a digit
    ("rho +0.00 [-2.00, +2.00]", "rho -0.00 [-2.00, +2.00]"),  # the sign of a zero
    ("loss 1.2e-03", "loss 1.3e-03"),  # one unit of the mantissa's last digit
    ("dist 1234567.8", "dist 1234600.0"),  # within 1e-4 relative
    ("p 0.1", "p 0.10000000000000002"),  # a repr's noise, at the coarser side's precision
])
def test_float_drift_within_the_tolerance_passes(reference, fresh):
    assert golden.disagreement(reference, fresh) is None
    assert golden.GoldenText(reference) == fresh and not golden.GoldenText(reference) != fresh


@pytest.mark.parametrize("reference, fresh, named", [
    ("wall 0/3 0% [0, 56]", "wall 1/3 33% [6, 79]", "line 1: int '0' vs int '1'"),  # a count
    ("success 86.0%", "success 88.0%", "86.0 vs 88.0"),  # one episode more of 50
    ("success 0.86", "success 0.88", "0.86 vs 0.88"),
    ("14.538", "14.541", "14.538 vs 14.541 differ by more than 0.0024541"),  # 3 units: beyond 1 unit + 1e-4 rel
    ("dist 1234567.8", "dist 1234800.0", "1234567.8 vs 1234800.0"),
    ("F1b W4 loses success inconclusive", "F1b W4 loses success not testable",  # a verdict
     "text 'inconclusive' vs text 'not testable'"),
    ("RTN W4A8 per-token", "RTN W4A4 per-token", "text 'W4A8 per-token' vs text 'W4A4 per-token'"),  # glued: text
    ("layers.2.1.net.4", "layers.2.1.net.3", "text 'layers.2.1.net.4' vs text 'layers.2.1.net.3'"),
    ("torch 2.13.0", "torch 2.13.1", "text '2.13.0' vs text '2.13.1'"),
    ("p 1", "p 1.0", "int '1' vs float '1.0'"),
    ("mde nan pts", "mde 0.5 pts",
     "0 numbers in the reference vs 1 in the fresh output; first difference line 1: text 'nan pts' vs text ''"),
    ("seeds 1 2", "seeds 1 2 3", "2 numbers in the reference vs 3"),
    ("a  b", "ab", "text 'a b' vs text 'ab'"),
])
def test_a_real_change_fails_and_is_named(reference, fresh, named):
    why = golden.disagreement(reference, fresh)
    assert why is not None and named in why, why
    assert golden.GoldenText(reference) != fresh


def test_the_tolerance_is_one_unit_in_the_last_digit_plus_a_relative_part():
    assert golden.REL_TOL == Decimal("1e-4")
    assert golden.allowed("14.538", "14.537") == Decimal("0.001") + Decimal("1e-4") * Decimal("14.538")
    repr_noise = Decimal("0.10000000000000002")  # the coarser side's unit, the larger side's magnitude
    assert golden.allowed("0.1", str(repr_noise)) == Decimal("0.1") + Decimal("1e-4") * repr_noise
    assert golden.allowed("1.2e-03", "1.3e-03") == Decimal("1e-4") + Decimal("1e-4") * Decimal("1.3e-03")


def _checked_cell(nb: dict) -> dict:
    (cell,) = [c for c in nb["cells"] if "".join(c["source"]).startswith("# NBVAL_CHECK_OUTPUT")]
    return cell


def _tampered(golden_nb: dict, old: str, new: str) -> dict:
    """A copy of the golden whose checked cell's stored output says ``new`` where it said ``old``."""
    copy = json.loads(json.dumps(golden_nb))
    stored = "".join(_checked_cell(copy)["outputs"][0]["text"])
    assert old in stored
    _checked_cell(copy)["outputs"][0]["text"] = stored.replace(old, new)
    return copy


def test_nbval_passes_the_golden_and_a_drift_and_catches_a_changed_number(tmp_path):
    notebooks, goldens = tmp_path / "notebooks", tmp_path / "goldens"
    notebooks.mkdir()
    shutil.copy(FIXTURE, notebooks)
    assert reproduce.main(["--profile", "smoke", "--notebooks", str(notebooks), "--output", str(goldens)]) == 0
    shutil.copy(TOLERANCE, goldens)  # the tolerance, as it sits beside the real goldens

    nb = json.loads((goldens / FIXTURE.name).read_text())
    stored = "".join(_checked_cell(nb)["outputs"][0]["text"])
    # The stored output holds an address and a timing, so the golden passes only through the sanitize file.
    assert re.search(r"at 0x[0-9a-f]+>", stored) and re.search(r"took \d\.\d{4} s", stored)
    mean = re.search(r"seeded mean: (-?\d\.\d{6})", stored).group(1)
    count = re.search(r"draws above 2: (\d+) of", stored).group(1)
    drift = f"{Decimal(mean) + Decimal('1e-6'):.6f}"  # one unit in the last printed digit
    beyond = f"{Decimal(mean) + golden.allowed(mean, mean) + Decimal('1e-6'):.6f}"  # just beyond the tolerance
    copies = {
        "00_drift.ipynb": _tampered(nb, f"seeded mean: {mean}", f"seeded mean: {drift}"),
        "00_beyond.ipynb": _tampered(nb, f"seeded mean: {mean}", f"seeded mean: {beyond}"),
        "00_count.ipynb": _tampered(nb, f"draws above 2: {count} of", f"draws above 2: {int(count) + 1} of"),
    }
    for name, copy in copies.items():
        (goldens / name).write_text(json.dumps(copy))

    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # isolate from the project's pytest configuration
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(tmp_path / "pytest.ini"), "-p", "no:cacheprovider", "-rA",
         "--nbval-lax", "--nbval-current-env", "--nbval-sanitize-with", str(SANITIZE), str(goldens)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    summary = re.findall(r"^(PASSED|FAILED) (\S+ \d+)", result.stdout, flags=re.M)  # "-rA" lines: outcome item
    failed = sorted(item for outcome, item in summary if outcome == "FAILED")
    # nbval numbers code cells from 0: the checked cell is the 4th (parameters, injected, imports, checked, figure).
    assert failed == ["goldens/00_beyond.ipynb::Cell 3", "goldens/00_count.ipynb::Cell 3"], result.stdout
    code_cells = sum(c["cell_type"] == "code" for c in nb["cells"])
    for name in [FIXTURE.name, "00_drift.ipynb"]:
        assert [f"goldens/{name}::Cell {i}" for i in range(code_cells)] == [
            item for outcome, item in summary if outcome == "PASSED" and name in item
        ], result.stdout
    assert result.returncode == 1
    assert f"golden float tolerance: line 1: {beyond} vs {mean} differ by more than" in result.stdout
    assert f"golden float tolerance: line 2: int '{int(count) + 1}' vs int '{count}'" in result.stdout
