"""The study as a book: the committed, executed notebooks rendered to a static HTML site (``make book``).

Nothing is re-executed: each page is nbconvert's HTML export ("lab" template, images embedded) of a notebook as
committed, with a navigation bar (contents, previous, next). The landing page gives the question, the two
commands, and per notebook its question and its findings as the notebook printed them (``verdict_summary``). The
explorer is shown as a static page that says how to run it live. Under each cell that saves a figure
(``plots.savefig``), the page says where that figure came from (``wmqlib.provenance``, read from its sidecar).
``python -m wmqlib.book --out DIR`` writes ``DIR/index.html`` and one ``<stem>.html`` per notebook; open
``DIR/index.html`` in a browser.

Why nbconvert rather than Jupyter Book 2: the site only has to show notebooks that already carry their outputs,
in order, with links between them; nbconvert ships with Jupyter (no Node.js toolchain, no second configuration
of the table of contents, which the runner's notebook pattern already defines) and renders a notebook exactly as
JupyterLab shows it.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

from wmqlib.paths import REPO_ROOT
from wmqlib.plots import savefig_calls
from wmqlib.provenance import describe as describe_provenance
from wmqlib.provenance import read_provenance
from wmqlib.validate import atomic_write

NOTEBOOK_PATTERN = "[0-9][0-9]_*.ipynb"  # the runner's pattern (wmqlib.reproduce)
EXPLORER = "explorer.ipynb"
OUTCOME_WORDS = ("reproduced", "inconclusive", "not testable")
LIVE = ("This page is a static view of the explorer: its controls do nothing here. To use it, run "
        "`make install`, then `.venv/bin/jupyter lab notebooks/explorer.ipynb`, and run all cells.")
STYLE = ("<style>.wmq-nav{position:sticky;top:0;z-index:10;background:#f6f6f6;border-bottom:1px solid #ddd;"
         "padding:6px 16px;font:14px sans-serif}.wmq-nav a{margin-right:16px}</style>")


@dataclass(frozen=True)
class Page:
    """One notebook of the book: its file, the page name (``<stem>.html``), title and question."""
    path: Path
    name: str
    title: str
    question: str


def notebooks(folder: Path) -> list[Path]:
    """The numbered notebooks in runner order, then the explorer when present."""
    found = sorted(folder.glob(NOTEBOOK_PATTERN))
    return found + ([folder / EXPLORER] if (folder / EXPLORER).is_file() else [])


def describe(path: Path, nb: nbformat.NotebookNode) -> Page:
    """Title (the first markdown heading) and question (the paragraph starting "**Question.**", else the first
    paragraph after the title) of a notebook."""
    first = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
    lines = first.strip().splitlines()
    title = lines[0].lstrip("# ").strip() if lines and lines[0].startswith("#") else path.stem
    paragraphs = [p.strip() for p in "\n".join(lines[1:]).split("\n\n") if p.strip()]
    question = next((p for p in paragraphs if p.startswith("**Question")), paragraphs[0] if paragraphs else "")
    return Page(path, f"{path.stem}.html", title, " ".join(question.split()))


def verdict_summary(nb: nbformat.NotebookNode) -> str | None:
    """The notebook's findings as it printed them: its summary of the verdict table (the first text output whose
    first line starts with "verdict" and names an outcome), else the last text output that names an outcome (a
    verdict table, or a table of what the verdicts decided), cut before its "why:" lines; None when it printed
    neither."""
    texts = [out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
             for out in cell.get("outputs", []) if out.get("output_type") == "stream"]
    for text in texts:
        head = text.lstrip().splitlines()[0] if text.strip() else ""
        if head.startswith("verdict") and any(word in head for word in OUTCOME_WORDS):
            return text.split("\n\nwhy:")[0].rstrip()
    named = [t for t in texts if any(word in t for word in OUTCOME_WORDS)]
    return re.split(r"\n\s*why:", named[-1])[0].rstrip() if named else None


def _markdown_inline(text: str) -> str:
    """Escaped ``text`` with **bold** and `code` turned into HTML (the landing page's only markdown)."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _nav(pages: list[Page], i: int | None) -> str:
    links = ['<a href="index.html">Contents</a>']
    if i is not None and i > 0:
        links.append(f'<a href="{pages[i - 1].name}">&larr; {html.escape(pages[i - 1].title)}</a>')
    if i is not None and i + 1 < len(pages):
        links.append(f'<a href="{pages[i + 1].name}">{html.escape(pages[i + 1].title)} &rarr;</a>')
    return f'{STYLE}<nav class="wmq-nav">{"".join(links)}</nav>'


def with_provenance(nb: nbformat.NotebookNode, figures: Path) -> nbformat.NotebookNode:
    """A copy of ``nb`` with, after every code cell that calls ``plots.savefig``, a note per saved figure: the
    figure file and its provenance record from ``figures`` (or that it has none)."""
    nb = nbformat.from_dict(nb)
    cells = []
    for cell in nb.cells:
        cells.append(cell)
        for stem, panel in savefig_calls(cell.source) if cell.cell_type == "code" else []:
            png = figures / f"{stem}__{panel}.png"
            record = read_provenance(png)
            text = "no provenance recorded" if record is None else describe_provenance(record)
            cells.append(nbformat.v4.new_markdown_cell(f"<small>Figure `figures/{png.name}`: {text}.</small>"))
    nb.cells = cells
    return nb


def render(nb: nbformat.NotebookNode, nav: str, live_note: bool, figures: Path | None = None) -> str:
    """One notebook as a standalone HTML page with ``nav`` at the top; ``live_note`` puts ``LIVE`` first;
    ``figures``: the folder of its figure files, whose provenance is shown under each saving cell."""
    nb = nbformat.from_dict(nb) if figures is None else with_provenance(nb, figures)  # the caller's stays as is
    if live_note:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(f"> **Static view.** {LIVE}"))
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    return re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + nav, body, count=1)


def landing(pages: list[Page], summaries: dict[str, str | None]) -> str:
    """The index page: the question, how to run the study, and each notebook with its question and findings."""
    items = []
    for page in pages:
        summary = summaries[page.name]
        findings = (f"<pre>{html.escape(summary)}</pre>" if summary else "")
        items.append(f'<li><a href="{page.name}"><b>{html.escape(page.title)}</b></a>'
                     f"<p>{_markdown_inline(page.question)}</p>{findings}</li>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>wmq: the study</title>"
            f"{STYLE}</head><body style='font:15px sans-serif;max-width:980px;margin:24px auto'>"
            "<h1>wmq: what post-training quantization does to a world model that plans</h1>"
            "<p>The study of <i>An Empirical Study of World Model Quantization</i> (arXiv 2602.02110) rerun on small "
            "DINO-WM-architecture world models that run on a CPU. Each page below is a notebook as committed, with "
            "the outputs of its last full run; the verdict summaries are the notebooks' own tables.</p>"
            "<h2>Run it</h2><pre>make figures   # runs the study (notebooks/, figures/)\n"
            "make test      # unit tests and the golden notebooks</pre>"
            f"<h2>Notebooks</h2><ol>{''.join(items)}</ol></body></html>")


def build(notebooks_dir: Path | str = REPO_ROOT / "notebooks", out: Path | str = REPO_ROOT / "build" / "book",
          figures: Path | str | None = None) -> list[Path]:
    """Write the site into ``out``; returns the written pages (index first). ``figures``: where the notebooks'
    figures are (default ``figures/`` beside ``notebooks_dir``, as the notebooks' ``figures_dir`` says).
    FileNotFoundError when ``notebooks_dir`` holds no numbered notebook."""
    paths = notebooks(Path(notebooks_dir))
    if not any(p.name != EXPLORER for p in paths):
        raise FileNotFoundError(f"{notebooks_dir}: no notebooks matching {NOTEBOOK_PATTERN} to build the book from")
    out = Path(out)
    figures = Path(notebooks_dir).parent / "figures" if figures is None else Path(figures)
    out.mkdir(parents=True, exist_ok=True)
    loaded = {p: nbformat.read(p, as_version=4) for p in paths}
    pages = [describe(p, nb) for p, nb in loaded.items()]
    written = []
    for i, page in enumerate(pages):
        target = out / page.name
        atomic_write(target, render(loaded[page.path], _nav(pages, i), page.path.name == EXPLORER, figures))
        written.append(target)
    index = out / "index.html"
    atomic_write(index, landing(pages, {p.name: verdict_summary(loaded[p.path]) for p in pages}))
    return [index, *written]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wmqlib.book", description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", default=str(REPO_ROOT / "notebooks"), help="folder of executed notebooks")
    parser.add_argument("--out", default=str(REPO_ROOT / "build" / "book"), help="site folder to write")
    args = parser.parse_args(argv)
    pages = build(args.notebooks, args.out)
    print(f"wrote {len(pages)} pages; open {pages[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
