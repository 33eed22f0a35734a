"""The built book (``make book``) in a real headless Chromium: the landing page and every notebook page load with
no broken image, no broken internal link and no error output; a deliberately broken link is caught."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from wmqlib import book
from wmqlib.paths import NOTEBOOKS_DIR

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    book.build(NOTEBOOKS_DIR, out)
    return out


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


def problems(page, path: Path) -> list[str]:
    """What is wrong with the page at ``path`` as Chromium shows it: images that did not load, links to files of
    the site that do not exist, error tracebacks among the outputs."""
    page.goto(path.as_uri(), wait_until="load")
    found = [f"broken image: {src[:80]}" for src in page.eval_on_selector_all(
        "img", "els => els.filter(e => !(e.complete && e.naturalWidth > 0)).map(e => e.src)")]
    for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
        url = urlparse(href)
        if url.scheme == "file" and not Path(unquote(url.path)).is_file():
            found.append(f"broken link: {href}")
    if "Traceback (most recent call last)" in page.inner_text("body"):
        found.append("an error traceback is shown")
    return found


def test_every_page_loads_whole(site, page):
    pages = sorted(site.glob("*.html"))
    assert {p.name for p in pages} >= {"index.html", "00_baseline.html", "explorer.html"}
    for path in pages:
        assert problems(page, path) == [], path.name
    page.goto((site / "index.html").as_uri())
    links = page.eval_on_selector_all("ol a[href]", "els => els.map(e => e.getAttribute('href'))")
    assert links == [f"{nb.stem}.html" for nb in book.notebooks(NOTEBOOKS_DIR)]
    page.goto((site / "01_granularity.html").as_uri())
    widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
    assert len(widths) >= 3 and min(widths) > 100  # the figures, shown


def test_a_broken_link_is_caught(site, page, tmp_path):
    tampered = tmp_path / "index.html"
    shutil.copy(site / "index.html", tampered)
    tampered.write_text(tampered.read_text().replace("</body>", '<a href="missing.html">gone</a></body>'))
    assert [p for p in problems(page, tampered) if "missing.html" in p]
