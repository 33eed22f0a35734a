"""Write the README's screenshot of the explorer: run ``notebooks/explorer.ipynb`` in JupyterLab in headless Chromium
(the browser test's machinery, ``labdriver``: a sandbox copy, nothing in the repository changes but the PNG) and
crop to the output of the cell that shows the explorer's controls.

    .venv/bin/python tests/browser/screenshot.py                 # -> docs/explorer.png
    .venv/bin/python tests/browser/screenshot.py --out /tmp/x.png --notebook 03_objective_misalignment.ipynb \\
        --cell-with .widget-hprogress                           # any notebook, any cell output

Exits non-zero (and writes nothing) when the run shows an error, or no cell output holds ``--cell-with``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import labdriver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", default="explorer.ipynb", help="file name in notebooks/ (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=labdriver.REPO / "docs" / "explorer.png",
                        help="PNG to write (default: docs/explorer.png)")
    parser.add_argument("--cell-with", default=".widget-dropdown",
                        help="CSS selector; the last cell output containing it is shot (default: %(default)s)")
    parser.add_argument("--width", type=int, default=1200, help="browser width in CSS pixels (default: %(default)s)")
    args = parser.parse_args(argv)
    if not (labdriver.REPO / "notebooks" / args.notebook).is_file():
        parser.error(f"--notebook {args.notebook!r}: no such file in {labdriver.REPO / 'notebooks'}")
    chromium = labdriver.find_chromium()
    if chromium is None:
        parser.error(f"no Chromium found: set WMQ_CHROMIUM or install one of {', '.join(labdriver.CHROMIUM_NAMES)}")
    from playwright.sync_api import sync_playwright

    from wmqlib.validate import atomic_path

    path = f"notebooks/{args.notebook}"
    with tempfile.TemporaryDirectory(prefix="wmq-screenshot-") as tmp:
        root = labdriver.sandbox(Path(tmp) / "root", [args.notebook])
        with labdriver.lab_server(root, Path(tmp) / "state") as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=list(labdriver.CHROMIUM_ARGS))
            page = browser.new_page(viewport={"width": args.width, "height": 900})
            labdriver.open_notebook(page, server, path, mode="doc")
            try:
                labdriver.run_all(page, path)
                problems = labdriver.inspect(page, path).problems()
                if problems:
                    print(f"{args.notebook} did not run cleanly:\n  " + "\n  ".join(problems), file=sys.stderr)
                    return 1
                labdriver.show_whole_notebook(page, width=args.width)
                top_level = ".jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output"  # not in widgets
                outputs = page.locator(top_level).filter(has=page.locator(args.cell_with))
                if outputs.count() == 0:
                    print(f"no cell output of {args.notebook} holds {args.cell_with!r}", file=sys.stderr)
                    return 1
                with atomic_path(args.out) as partial:
                    outputs.last.screenshot(path=partial, type="png", animations="disabled")
            finally:
                labdriver.shutdown_kernel(page, path)
                browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
