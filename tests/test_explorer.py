"""The explorer's widget logic, driven from code: cached numbers as the cache files hold them, an uncached setting
run once (smoke size, into a test folder) and then read, and bad input shown as a message, never raised."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from wmqlib import study as st
from wmqlib.explore import Explorer
from wmqlib.paths import NOTEBOOKS_DIR, RESULTS_DIR
from wmqlib.profiles import PROFILES

STUDY = RESULTS_DIR / "study-full"  # the committed cache of notebooks 00-03
FULL = PROFILES["full"]


def cached_rows(checkpoint: str, recipe: tuple | None, scope: str = "all", opt_steps: int = 20,
                planner: str = "CEMConfig", mpc: bool = False) -> pd.DataFrame:
    """The rows of the cached run the explorer reads (planner seed 0, DINO-WM's objective; CEM with 100 samples, GD's
    1; MPC ones traced per round) matching ``recipe`` = (method, w_bits, granularity type) or None for FP, found by
    reading the files' configs: a key comparison's run (``FULL.key_evals`` episodes) when one is cached, else the one
    of ``FULL.n_evals``."""
    found = {}
    for path in sorted(STUDY.glob("*.json")):
        payload = json.loads(path.read_text())["payload"]
        if payload["config"].get("__type__") != "Setting":  # the trivial baselines' and alignments' results
            continue
        c, p = payload["config"], payload["config"]["planner"]
        r = c["recipe"]
        same = (None if r is None else (r["__type__"], r["w_bits"], r["w_granularity"]["__type__"], r["a_bits"]))
        want = None if recipe is None else (*recipe, None)
        mine = (c["checkpoint"], same, c["scope"], c["mpc"] is not None, p["__type__"], p["opt_steps"])
        if mine == (checkpoint, want, scope, mpc, planner, opt_steps) and c["n_evals"] in (FULL.n_evals, FULL.key_evals) \
                and p.get("samples") in (100, 1) and (c["trace"] or not mpc) and "planner_seed" not in c \
                and "objective" not in c:
            assert c["n_evals"] not in found, f"two cached runs of {checkpoint} {recipe} {scope} on {c['n_evals']}"
            found[c["n_evals"]] = pd.DataFrame(payload["data"], columns=payload["columns"])
    assert found, f"expected a cached run of {checkpoint} {recipe} {scope}, found none"
    return found[max(found)]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% interval written out (Wilson 1927)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def expected(rows: pd.DataFrame, budget: int) -> tuple[int, int]:
    at = rows[rows["iteration"] == budget - 1]  # iteration k - 1 of a traced run = the run with budget k
    return int(at["success"].sum()), len(at)


def check_shown(ex: Explorer, k: int, n: int) -> None:
    shown = ex.result["success"]
    assert (shown["successes"], shown["episodes"]) == (k, n)
    assert shown["ci95"] == pytest.approx(wilson(k, n), abs=1e-4)
    assert f"success {k}/{n} = {k / n:.0%}" in ex.summary.value
    assert ex.message.value == ""
    assert ex.buttons["run"].layout.display == "none"  # nothing to offer


def test_cached_settings_show_the_cache_files_numbers():
    ex = Explorer(live=True)  # full profile, the notebooks' cache; controls refresh the view themselves
    ex.refresh()  # the default: FP mini-wall, CEM at the profile's budget (10), read from the 20-iteration trace
    k, n = expected(cached_rows("mini-wall", None), 10)
    check_shown(ex, k, n)
    assert ex.result["cached"].parent == STUDY
    assert set(ex.result["baselines"]) == {"no_action", "straight_line", "random"}
    assert all(b["episodes"] == n for b in ex.result["baselines"].values())
    assert bytes(ex.curve.value).startswith(b"\x89PNG")

    ex.controls["budget"].value = 5  # live: the same trace at iteration 4
    check_shown(ex, *expected(cached_rows("mini-wall", None), 5))

    ex.controls["budget"].value = 10
    ex.controls["method"].value = "RTN"
    ex.controls["bits"].value = 3
    rows = cached_rows("mini-wall", ("RTN", 3, "PerChannel"))
    check_shown(ex, *expected(rows, 10))
    assert ex.result["effective_bits"] == pytest.approx(rows["effective_bits"].iloc[0])
    assert "<td>3</td>" in ex.report.value  # RTN needs no calibration: its per-layer report is shown at once

    ex.controls["scope"].value = "predictor"
    ex.controls["bits"].value = 4
    check_shown(ex, *expected(cached_rows("mini-wall", ("RTN", 4, "PerChannel"), "predictor"), 10))

    ex.controls["method"].value = "FP"
    ex.controls["planner"].value = "MPC-CEM"  # live: the budget goes to the profile's CEM iterations per round
    rounds = cached_rows("mini-wall", None, opt_steps=10, mpc=True)
    last = rounds[rounds["round"] == rounds["round"].max()]
    check_shown(ex, int(last["success"].sum()), len(last))
    ex.controls["planner"].value = "GD"  # ... and to the profile's gradient steps
    assert ex.controls["budget"].value == ex.profile.gd_steps == 1000
    gd = cached_rows("mini-wall", None, opt_steps=1000, planner="GDConfig")
    check_shown(ex, int(gd["success"].sum()), len(gd))

    ex.controls["planner"].value = "CEM"
    ex.controls["model"].value = "mini-pusht"  # the other shipped model, its episodes drawn as the notebooks draw them
    check_shown(ex, *expected(cached_rows("mini-pusht", None), 10))
    ex.controls["method"].value = "RTN"
    ex.controls["budget"].value = 25  # beyond the traced 20 iterations: not cached, offered to run
    assert ex.result["cached"] is None and "success" not in ex.result
    assert ex.buttons["run"].layout.display != "none" and "not in the cache" in ex.summary.value


def test_uncached_setting_runs_once_into_the_cache_then_is_read(tmp_path, monkeypatch):
    calls = []
    run_setting = st.run_setting
    monkeypatch.setattr(st, "run_setting", lambda *a, **kw: calls.append(a[0]) or run_setting(*a, **kw))
    ex = Explorer("smoke", cache_dir=tmp_path, live=False)
    ex.controls["method"].value = "RTN"
    ex.controls["bits"].value = 4
    assert ex.refresh()["cached"] is None and ex.buttons["run"].layout.display != "none"
    ex.run()
    assert len(calls) == 1
    path = ex.result["cached"]
    assert path.parent == tmp_path / "study-smoke" and path.is_file()
    assert calls[0] == ex.setting() and calls[0].planner.opt_steps == ex.profile.steps("wall")
    shown = ex.result["success"]
    assert shown["episodes"] == ex.profile.n_evals == 3
    stamp = path.stat().st_mtime_ns

    ex.run()  # cached: nothing runs
    again = Explorer("smoke", cache_dir=tmp_path, live=False)
    again.controls["method"].value = "RTN"
    again.controls["bits"].value = 4
    assert again.refresh()["cached"] == path and again.result["success"] == shown
    assert len(calls) == 1 and path.stat().st_mtime_ns == stamp

    frames = again.show_episode()
    assert again.message.value == "" and bytes(again.frames.value).startswith(b"\x89PNG")
    h = again.setting().planner.horizon
    for name in ("FP:real", "FP:imagined", "W4A16:real", "W4A16:imagined"):
        assert frames[name].shape[0] == h + 1 and frames[name].shape[-1] == 3
    assert "per-layer report" in again.report.value

    elsewhere = tmp_path / "another-sweep" / path.name  # the same key in another sweep folder is the same result
    elsewhere.parent.mkdir()
    path.rename(elsewhere)
    assert again.refresh()["cached"] == elsewhere and again.result["success"] == shown and len(calls) == 1


@pytest.mark.parametrize(("control", "value", "says"), [
    ("model", "no-such-model", "no checkpoint 'no-such-model'"),
    ("model", "TMP", "is not a wmq checkpoint folder"),
    ("bits", 9, "RTN.w_bits must be an int in 2..8"),
    ("group_size", 0, "group size must be an int >= 1"),
    ("group_size", 1000, "group size 1000 is wider than every weight row"),
    ("budget", 0, "budget must be an int >= 1"),
    ("episode", 3, "episode shown must be an int in 0..2"),
])
def test_bad_input_shows_a_message_and_raises_nothing(tmp_path, control, value, says):
    ex = Explorer("smoke", cache_dir=tmp_path, live=True)
    ex.controls["method"].value = "RTN"
    ex.controls["granularity"].value = "per-group"
    ex.controls[control].value = str(tmp_path) if value == "TMP" else value  # live: refreshes here
    assert ex.result is None and says in ex.message.value.replace("&#x27;", "'").replace("&gt;", ">")
    ex.buttons["run"].click()
    ex.buttons["episode"].click()  # the buttons catch it too
    assert ex.result is None and says in ex.message.value.replace("&#x27;", "'").replace("&gt;", ">")
    assert ex.buttons["run"].layout.display == "none"


@pytest.mark.slow
def test_notebook_runs_headless_on_the_committed_cache(tmp_path):
    papermill = pytest.importorskip("papermill")
    out = tmp_path / "explorer.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS_DIR / "explorer.ipynb"), str(out), cwd=str(NOTEBOOKS_DIR),
                               kernel_name="python3", progress_bar=False)
    cells = json.loads(out.read_text())["cells"]
    outputs = [o for cell in cells if cell["cell_type"] == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert "application/vnd.jupyter.widget-view+json" in outputs[-1]["data"]  # the explorer's box, last


def test_the_default_episode_count_reads_a_key_comparisons_run_first(tmp_path):
    ex = Explorer("smoke", cache_dir=tmp_path, live=False)
    ex.controls["method"].value = "RTN"
    ex.controls["bits"].value = 4
    options = [s for s, _ in ex.candidates()]
    assert [s.n_evals for s in options] == [ex.profile.key_evals, ex.profile.n_evals, ex.profile.n_evals]
    assert options[0].planner.opt_steps == options[1].planner.opt_steps == ex.profile.trace_steps  # both traced
    assert ex.setting() == options[-1]  # nothing cached: the run of exactly the budget is offered
    ex.controls["n_evals"].value = 2  # another count: only runs of that many episodes answer it
    assert [s.n_evals for s, _ in ex.candidates()] == [2, 2]
