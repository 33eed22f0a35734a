"""Write the README's screenshot of the explorer, ``docs/explorer.png``.

Runs ``notebooks/explorer.ipynb`` in JupyterLab in headless Chromium with the browser test's machinery
(``labdriver``: a sandbox copy, so nothing in the repository changes but the PNG), sets controls and clicks buttons
as a user would (by default: RTN, 3 weight bits - a setting the notebooks cached - then Show episode, so FP's and
the quantized model's imagined rollouts stand side by side), and crops to the explorer's output (its top
``--max-height`` pixels).

    .venv/bin/python tests/browser/screenshot.py
    .venv/bin/python tests/browser/screenshot.py --out /tmp/x.png --set model=mini-pusht --set method=FP --click ""

Exits non-zero (and writes nothing) when the run or an interaction shows an error.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import labdriver

NOTEBOOK = "notebooks/explorer.ipynb"
README_VIEW = {"set": ["method=RTN", "weight bits=3"], "click": ["Show episode"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=labdriver.REPO / "docs" / "explorer.png",
                        help="PNG to write (default: docs/explorer.png)")
    parser.add_argument("--set", action="append", metavar="LABEL=VALUE",
                        help=f"set the control described LABEL, in order (default: {README_VIEW['set']})")
    parser.add_argument("--click", action="append", metavar="TEXT",
                        help=f"then click the button showing TEXT ('' for none; default: {README_VIEW['click']})")
    parser.add_argument("--width", type=int, default=1200, help="browser width in CSS pixels (default: %(default)s)")
    parser.add_argument("--max-height", type=int, default=1800,
                        help="crop below this many CSS pixels (the per-layer report is long; default: %(default)s)")
    args = parser.parse_args(argv)
    changes = [item.partition("=") for item in (README_VIEW["set"] if args.set is None else args.set)]
    if bad := [label for label, eq, _ in changes if not eq or not label]:
        parser.error(f"--set takes LABEL=VALUE (e.g. 'weight bits=3'), got {bad}")
    clicks = [text for text in (README_VIEW["click"] if args.click is None else args.click) if text]
    chromium = labdriver.find_chromium()
    if chromium is None:
        parser.error(f"no Chromium found: set WMQ_CHROMIUM or install one of {', '.join(labdriver.CHROMIUM_NAMES)}")
    from playwright.sync_api import sync_playwright

    from wmqlib.validate import atomic_path

    with tempfile.TemporaryDirectory(prefix="wmq-screenshot-") as tmp:
        root = labdriver.sandbox(Path(tmp) / "root", [Path(NOTEBOOK).name])
        with labdriver.lab_server(root, Path(tmp) / "state") as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=list(labdriver.CHROMIUM_ARGS))
            page = browser.new_page(viewport={"width": args.width, "height": 900})
            labdriver.open_notebook(page, server, NOTEBOOK, mode="doc")
            try:
                labdriver.run_all(page, NOTEBOOK)
                for label, _, value in changes:
                    labdriver.set_control(page, NOTEBOOK, label, value)
                for text in clicks:
                    labdriver.click_button(page, NOTEBOOK, text)
                problems = labdriver.inspect(page, NOTEBOOK).problems()
                messages = page.locator(".widget-html-content b[style*='color']").all_inner_texts()  # explorer's
                if problems or messages:
                    print(f"{NOTEBOOK} did not run cleanly:\n  " + "\n  ".join(problems + messages), file=sys.stderr)
                    return 1
                labdriver.show_whole_notebook(page, width=args.width)
                top_level = ".jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output"  # not in widgets
                box = page.locator(top_level).filter(has=page.locator(".widget-dropdown")).last.bounding_box()
                box["height"] = min(box["height"], args.max_height)
                with atomic_path(args.out) as partial:
                    page.screenshot(path=partial, type="png", clip=box, animations="disabled")
            finally:
                labdriver.shutdown_kernel(page, NOTEBOOK)
                browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
