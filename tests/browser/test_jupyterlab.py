"""The notebooks in JupyterLab, in a real headless Chromium: run all cells, no cell errors, widgets and images shown.

Runs on copies of the notebooks in a sandbox (``labdriver.sandbox``): results load from a copy of the repository's
cache, figures land in the sandbox, and the test checks that nothing under notebooks/, data/ or figures/ changed.
Screenshots go to tests/browser/output/ (ignored by git). Skipped, with the reason, when Playwright or a system
Chromium is missing - unless ``WMQ_REQUIRE_BROWSER=1`` (CI sets it), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import labdriver

OUTPUT = Path(__file__).resolve().parent / "output"
NUMBERED = "03_objective_misalignment.ipynb"  # the numbered notebook that re-runs fastest from the committed cache
EXPLORER = "explorer.ipynb"
NOTEBOOKS = [name for name in (NUMBERED, EXPLORER) if (labdriver.REPO / "notebooks" / name).is_file()]


def _missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[dev]')"
    if labdriver.find_chromium() is None:
        return (f"no Chromium: none of {', '.join(labdriver.CHROMIUM_NAMES)} on PATH and WMQ_CHROMIUM unset "
                f"(apt-get install chromium)")
    return None


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    """Headless system Chromium driven by Playwright (module-wide)."""
    reason = _missing()
    if reason:
        if os.environ.get("WMQ_REQUIRE_BROWSER") == "1":
            pytest.fail(f"WMQ_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=labdriver.find_chromium(), headless=True,
                                     args=list(labdriver.CHROMIUM_ARGS))
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def lab(browser, tmp_path_factory):
    """JupyterLab serving a sandbox with the notebooks under test; the repository's state recorded before."""
    before = labdriver.tree_state()
    root = labdriver.sandbox(tmp_path_factory.mktemp("lab-root"), NOTEBOOKS)
    with labdriver.lab_server(root, tmp_path_factory.mktemp("lab-state")) as server:
        yield server, before


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


def run_in_lab(page, server, notebook: str) -> labdriver.Outcome:
    """Open ``notebooks/<notebook>``, run all cells, screenshot the whole notebook, stop its kernel."""
    path = f"notebooks/{notebook}"
    labdriver.open_notebook(page, server, path)
    try:
        labdriver.run_all(page, path)
        outcome = labdriver.inspect(page, path)
        assert outcome.kernel == labdriver.KERNEL_NAME, f"{notebook} ran in {outcome.kernel!r}"
        OUTPUT.mkdir(exist_ok=True)
        labdriver.show_whole_notebook(page)
        page.screenshot(path=OUTPUT / f"{Path(notebook).stem}.png")
    finally:
        labdriver.shutdown_kernel(page, path)
    return outcome


def test_kernel_is_this_venv(lab):
    """The notebooks' kernelspec, python3 (also the default), is the interpreter running pytest."""
    server, _ = lab
    specs = server.api("/api/kernelspecs")
    assert specs["default"] == "python3"
    assert specs["kernelspecs"]["python3"]["spec"]["argv"][0] == sys.executable
    assert specs["kernelspecs"]["python3"]["spec"]["display_name"] == labdriver.KERNEL_NAME


def test_an_error_is_reported(lab, page):
    """A cell that raises is found (error output, traceback on the page) and the cells after it never ran."""
    import nbformat

    server, _ = lab
    cells = ["print('before')", "raise ValueError('deliberate failure')", "print('after')"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nbformat.write(nb, server.root / "notebooks" / "raises.ipynb")
    outcome = run_in_lab(page, server, "raises.ipynb")
    assert outcome.errors == ["cell 1: ValueError: deliberate failure"]
    assert len(outcome.tracebacks) == 1 and "deliberate failure" in outcome.tracebacks[0]
    assert outcome.unexecuted == [2]
    assert len(outcome.problems()) == 3


def test_numbered_notebook_runs(lab, page):
    server, before = lab
    outcome = run_in_lab(page, server, NUMBERED)
    assert outcome.problems() == [], "\n".join(outcome.problems())
    assert outcome.unexecuted == [] and outcome.code_cells >= 5
    assert outcome.widgets >= 1, "the run_study progress bar (an ipywidgets view) did not render"
    assert len(outcome.images) >= 2 and all(im["width"] > 100 for im in outcome.images), outcome.images
    assert any((server.root / "figures").iterdir()), "the notebook saved no figure into the sandbox"
    assert labdriver.tree_state() == before, "running in the browser changed files in the repository"


@pytest.mark.skipif(EXPLORER not in NOTEBOOKS, reason=f"notebooks/{EXPLORER} does not exist yet")
def test_explorer_runs(lab, page):
    server, before = lab
    outcome = run_in_lab(page, server, EXPLORER)
    assert outcome.problems() == [], "\n".join(outcome.problems())
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    assert panel.locator(".widget-dropdown select").count() >= 3, "the explorer's dropdown controls are missing"
    assert any(im["loaded"] and im["width"] > 100 for im in outcome.images), outcome.images
    assert labdriver.tree_state() == before, "running in the browser changed files in the repository"
