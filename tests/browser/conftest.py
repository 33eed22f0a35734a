"""Shared by the browser tests: the headless system Chromium, or a skip (a failure under WMQ_REQUIRE_BROWSER=1)."""

from __future__ import annotations

import importlib.util
import os

import pytest

import labdriver


def _missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    if importlib.util.find_spec("playwright") is None:
        return "Playwright is not installed (pip install -e '.[dev]')"
    if labdriver.find_chromium() is None:
        return (f"no Chromium: none of {', '.join(labdriver.CHROMIUM_NAMES)} on PATH and WMQ_CHROMIUM unset "
                f"(apt-get install chromium)")
    return None


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


