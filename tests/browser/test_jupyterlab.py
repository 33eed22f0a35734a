"""The notebooks in JupyterLab, in a real headless Chromium: run all cells, no cell errors, widgets and images shown.

Runs on copies of the notebooks in a sandbox (``labdriver.sandbox``): results load from a copy of the repository's
cache, figures land in the sandbox, and the test checks that nothing under notebooks/, data/ or figures/ changed.
Screenshots go to tests/browser/output/ (ignored by git). Skipped, with the reason, when Playwright or a system
Chromium is missing - unless ``WMQ_REQUIRE_BROWSER=1`` (CI sets it), which turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest

import labdriver

OUTPUT = Path(__file__).resolve().parent / "output"
NUMBERED = "03_objective_misalignment.ipynb"  # the numbered notebook that re-runs fastest from the committed cache
EXPLORER = "explorer.ipynb"
# The explorer's controls by their labels (wmqlib.explore.Explorer.controls): the list.
CONTROLS = ("model", "method", "weight bits", "weights", "group size", "activation bits", "activations", "scope",
            "planner", "budget (iters)", "episodes (n)", "episode shown")


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab(browser, tmp_path_factory):
    """JupyterLab serving a sandbox with the notebooks under test; the repository's state recorded before."""
    before = labdriver.tree_state()
    root = labdriver.sandbox(tmp_path_factory.mktemp("lab-root"), [NUMBERED, EXPLORER])
    with labdriver.lab_server(root, tmp_path_factory.mktemp("lab-state")) as server:
        yield server, before


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


@contextlib.contextmanager
def opened(page, server, notebook: str):
    """``notebooks/<notebook>`` open in the page with an idle kernel; yields its path; stops the kernel after."""
    path = f"notebooks/{notebook}"
    labdriver.open_notebook(page, server, path)
    try:
        yield path
    finally:
        labdriver.shutdown_kernel(page, path)


def run(page, path: str) -> labdriver.Outcome:
    """Run all cells of the open ``path`` and return what the page shows; the kernel must be the test's."""
    labdriver.run_all(page, path)
    outcome = labdriver.inspect(page, path)
    assert outcome.kernel == labdriver.KERNEL_NAME, f"{path} ran in {outcome.kernel!r}"
    return outcome


def screenshot(page, name: str) -> None:
    """The whole notebook as tests/browser/output/<name>.png."""
    OUTPUT.mkdir(exist_ok=True)
    labdriver.show_whole_notebook(page)
    page.screenshot(path=OUTPUT / f"{name}.png")


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
    with opened(page, server, "raises.ipynb") as path:
        outcome = run(page, path)
    assert outcome.errors == ["cell 1: ValueError: deliberate failure"]
    assert len(outcome.tracebacks) == 1 and "deliberate failure" in outcome.tracebacks[0]
    assert outcome.unexecuted == [2]
    assert len(outcome.problems()) == 3


def test_numbered_notebook_runs(lab, page):
    server, before = lab
    with opened(page, server, NUMBERED) as path:
        outcome = run(page, path)
        screenshot(page, Path(NUMBERED).stem)
    assert outcome.problems() == [], "\n".join(outcome.problems())
    assert outcome.code_cells >= 5
    assert outcome.widgets >= 1, "the run_study progress bar (an ipywidgets view) did not render"
    assert len(outcome.images) >= 2 and all(im["width"] > 100 for im in outcome.images), outcome.images
    assert any((server.root / "figures").iterdir()), "the notebook saved no figure into the sandbox"
    assert labdriver.tree_state() == before, "running in the browser changed files in the repository"


def test_explorer_runs_and_answers_its_controls(lab, page):
    """Run all (mini-wall, FP, from the cache): every control, the success summary, the curve and the episode's
    frames are shown. Then as a user: a model path that is not a checkpoint shows the explorer's message and no
    traceback; the other shipped model, mini-pusht, shows its cached success; Show episode draws its frames."""
    server, before = lab
    html = lambda: page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .widget-html-content").all_inner_texts()
    with opened(page, server, EXPLORER) as path:
        outcome = run(page, path)
        assert outcome.problems() == [], "\n".join(outcome.problems())
        missing = [label for label in CONTROLS if labdriver.control(page, label).count() != 1]
        assert missing == [], f"controls not on the page: {missing}"
        shown = [im for im in outcome.images if im["in_widget"]]
        assert len(shown) == 2 and all(im["width"] > 100 for im in shown), shown  # curve, episode frames
        wall = [t for t in html() if "success" in t]
        assert len(wall) == 1, html()

        labdriver.set_control(page, path, "model", "/no/such/checkpoint")
        assert any("no checkpoint '/no/such/checkpoint'" in t for t in html()), html()
        assert labdriver.inspect(page, path).problems() == []

        labdriver.set_control(page, path, "model", "mini-pusht")
        assert not any("no checkpoint" in t for t in html()), html()
        pusht = [t for t in html() if "success" in t]
        assert len(pusht) == 1 and pusht != wall, html()
        labdriver.click_button(page, path, "Show episode")
        outcome = labdriver.inspect(page, path)
        assert outcome.problems() == [], "\n".join(outcome.problems())
        assert len([im for im in outcome.images if im["in_widget"]]) == 2, outcome.images
        screenshot(page, "explorer")
    assert labdriver.tree_state() == before, "running in the browser changed files in the repository"
