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


def test_each_saved_figure_shows_its_provenance_under_its_cell(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from wmqlib import plots

    notebooks, figures = tmp_path / "notebooks", tmp_path / "figures"
    notebooks.mkdir()
    fig, _ = plt.subplots()
    plots.savefig(fig, "01_granularity", "weight_only", figures_dir=figures, profile="full", results="study-full",
                  sources=pd.DataFrame({"config_key": ["k2", "k1"]}))
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Granularity\n\n**Question.** Which?"),
        nbformat.v4.new_code_cell('_ = plots.savefig(grid.figure, "01_granularity", "weight_only", '
                                  'figures_dir=figures_dir, profile=P.name)'),
        nbformat.v4.new_code_cell('_ = plots.savefig(fig, "01_granularity", "never_saved", figures_dir=figures_dir)'),
        nbformat.v4.new_code_cell("print('no figure here')")])
    nbformat.write(nb, notebooks / "01_granularity.ipynb")
    book.build(notebooks, tmp_path / "site")
    page = (tmp_path / "site" / "01_granularity.html").read_text()
    saved = page.index("figures/01_granularity__weight_only.png")
    assert page.index("grid") < saved < page.index("never_saved") < page.index("no figure here")  # under its cell
    assert "profile full, results study-full: 2 cached results (k1, k2)" in page
    assert "figures/01_granularity__never_saved.png</code>: no provenance recorded" in page
    assert page.count("Figure <code>") == 2


def _printed(*texts):
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print()", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text=t)]) for t in texts])


def test_the_findings_shown_are_the_summary_else_the_last_output_naming_a_verdict():
    summary = "verdict  reproduced  inconclusive\nF1  2  1\n"
    table = "finding comparison verdict\nF0 wall: FP vs baseline reproduced\n"
    best = " env bits cheapest within margin\nwall W4 GPTQ\n\nwhy:\n  wall W4: not reproduced - below FP\n"
    assert book.verdict_summary(_printed(table, summary, "done")) == summary.rstrip()  # the summary first
    assert book.verdict_summary(_printed("rates 3/50", table, best, "footer")) == " env bits cheapest within margin\n" \
                                                                               "wall W4 GPTQ"  # cut before why
    assert book.verdict_summary(_printed(table, "footer: 3 settings")) == table.rstrip()
    assert book.verdict_summary(_printed("rates 3/50", "footer")) is None
