"""wmqlib.book: the static site of the executed notebooks (pages, links, landing page); the browser test in
tests/browser/test_book_pages.py opens it in Chromium."""

import re
import shutil

import nbformat
import pytest

from wmqlib import book
from wmqlib.paths import NOTEBOOKS_DIR


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    notebooks = tmp_path_factory.mktemp("nbs")
    for name in ("01_granularity.ipynb", "03_objective_misalignment.ipynb", "explorer.ipynb"):
        shutil.copy(NOTEBOOKS_DIR / name, notebooks)
    out = tmp_path_factory.mktemp("site")
    return notebooks, out, book.build(notebooks, out)


def test_one_page_per_notebook_in_runner_order_then_the_explorer(site):
    _, out, pages = site
    assert [p.name for p in pages] == ["index.html", "01_granularity.html", "03_objective_misalignment.html",
                                       "explorer.html"]


def test_pages_link_to_contents_and_their_neighbours(site):
    _, out, _ = site
    page = (out / "03_objective_misalignment.html").read_text()
    nav = re.search(r'<nav class="wmq-nav">(.*?)</nav>', page).group(1)
    assert re.findall(r'href="([^"]+)"', nav) == ["index.html", "01_granularity.html", "explorer.html"]
    index = (out / "index.html").read_text()
    assert [h for h in re.findall(r'href="([^"]+)"', index)] == ["01_granularity.html",
                                                                 "03_objective_misalignment.html", "explorer.html"]


def test_the_landing_page_quotes_each_question_and_verdict_summary(site):
    notebooks, out, _ = site
    index = (out / "index.html").read_text()
    assert "make figures" in index and "make test" in index
    nb = nbformat.read(notebooks / "01_granularity.ipynb", as_version=4)
    summary = book.verdict_summary(nb)
    assert summary is not None and summary.startswith("verdict") and "F1a W8 close to FP" in summary
    assert "F1a W8 close to FP" in index
    assert "<b>Question.</b>" in index


def test_the_explorer_page_says_how_to_run_it_live(site):
    _, out, _ = site
    assert "Static view." in (out / "explorer.html").read_text()
    assert "Static view." not in (out / "01_granularity.html").read_text()


def test_figures_are_embedded_not_linked(site):
    _, out, _ = site
    page = (out / "01_granularity.html").read_text()
    assert "data:image/png;base64," in page


def test_a_folder_without_notebooks_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no notebooks matching"):
        book.build(tmp_path, tmp_path / "out")
