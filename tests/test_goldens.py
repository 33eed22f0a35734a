"""Tests for the nbval golden harness: tests/notebooks/sanitize.cfg and `pytest --nbval-lax` on smoke executions.

The golden check runs exactly as `make test` runs it, on the fixture notebook executed by the runner: the golden
passes, and a copy whose stored key number was tampered with fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from nbval.plugin import get_sanitize_patterns

from wmqlib import reproduce

TESTS = Path(__file__).parent
SANITIZE = TESTS / "notebooks" / "sanitize.cfg"
FIXTURE = TESTS / "fixtures" / "00_fixture.ipynb"


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


def _checked_cell(nb: dict) -> dict:
    (cell,) = [c for c in nb["cells"] if "".join(c["source"]).startswith("# NBVAL_CHECK_OUTPUT")]
    return cell


def test_nbval_passes_the_golden_and_catches_a_changed_number(tmp_path):
    notebooks, goldens = tmp_path / "notebooks", tmp_path / "goldens"
    notebooks.mkdir()
    shutil.copy(FIXTURE, notebooks)
    assert reproduce.main(["--profile", "smoke", "--notebooks", str(notebooks), "--output", str(goldens)]) == 0

    golden = json.loads((goldens / FIXTURE.name).read_text())
    stored = "".join(_checked_cell(golden)["outputs"][0]["text"])
    # The stored output holds an address and a timing, so the golden passes only through the sanitize file.
    assert re.search(r"at 0x[0-9a-f]+>", stored) and re.search(r"took \d\.\d{4} s", stored)
    number = re.search(r"seeded mean: (-?\d\.\d{6})", stored).group(1)
    changed = f"{float(number) + 1e-6:.6f}"
    tampered = stored.replace(f"seeded mean: {number}", f"seeded mean: {changed}")
    _checked_cell(golden)["outputs"][0]["text"] = tampered
    (goldens / "00_tampered.ipynb").write_text(json.dumps(golden))

    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # isolate from the project's pytest configuration
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(tmp_path / "pytest.ini"), "-p", "no:cacheprovider", "-rA",
         "--nbval-lax", "--nbval-current-env", "--nbval-sanitize-with", str(SANITIZE), str(goldens)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    summary = re.findall(r"^(PASSED|FAILED) (\S+ \d+)", result.stdout, flags=re.M)  # "-rA" lines: outcome item
    outcomes = {item: outcome for outcome, item in summary}
    code_cells = sum(c["cell_type"] == "code" for c in golden["cells"])
    # nbval numbers code cells from 0: the checked cell is the 4th (parameters, injected, imports, checked, figure).
    assert [item for item, outcome in outcomes.items() if outcome == "FAILED"] == ["goldens/00_tampered.ipynb::Cell 3"]
    assert [f"goldens/{FIXTURE.name}::Cell {i}" for i in range(code_cells)] == [
        item for item, outcome in outcomes.items() if outcome == "PASSED" and FIXTURE.name in item
    ], result.stdout
    assert result.returncode == 1
    assert f"seeded mean: {changed}" in result.stdout and f"seeded mean: {number}" in result.stdout
