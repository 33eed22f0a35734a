"""Every figure has exactly one producing notebook, and every figure a notebook draws exists in figures/.

Figures are written only by ``wmqlib.plots.savefig(fig, "<notebook stem>", "<panel>", ...)`` as
``figures/<stem>__<panel>.png`` and ``.pdf``, with the provenance sidecar ``.json``; panels are string literals in
the notebooks' sources, so both directions can be checked without running anything.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from wmqlib.paths import FIGURES_DIR, NOTEBOOKS_DIR
from wmqlib import plots
from wmqlib.plots import FORMATS
from wmqlib.reproduce import declared_parameters, discover

FIGURE = re.compile(r"^(?P<stem>\d\d_[a-z0-9_]+)__(?P<panel>[a-z0-9][a-z0-9_-]*)\.(?P<ext>\w+)$")


def notebook_figures(path: Path) -> list[tuple[str, str]]:
    """(stem, panel) of every ``savefig`` call in the notebook's code cells (``plots.savefig_calls``)."""
    return plots.savefig_calls("\n".join(c.source for c in nbformat.read(path, as_version=4).cells
                                          if c.cell_type == "code"))


NOTEBOOKS = discover(NOTEBOOKS_DIR)
PANELS = {path.stem: notebook_figures(path) for path in NOTEBOOKS}


def test_savefig_pattern_reads_calls():
    text = ('x = 1\n_ = plots.savefig(grid.figure, "01_granularity", "weight_only", figures_dir=figures_dir)\n'
            "plots.savefig( fig, '02_encoder_vs_predictor', 'probe_vs_bits')\nsavefig(fig, name, 'x')")
    assert plots.savefig_calls(text) == [("01_granularity", "weight_only"), ("02_encoder_vs_predictor", "probe_vs_bits")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_names_its_own_figures(path):
    calls = PANELS[path.stem]
    assert calls, f"{path.name} draws no figure through plots.savefig"
    foreign = [stem for stem, _ in calls if stem != path.stem]
    assert not foreign, f"{path.name} saves figures under another notebook's name: {foreign}"
    panels = [panel for _, panel in calls]
    assert len(panels) == len(set(panels)), f"{path.name} writes a panel twice: {panels}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_draws_into_the_folder_the_runner_passes(path):
    """The runner sends any run but the published one to ``<output>/figures`` through ``figures_dir``."""
    assert declared_parameters(path).get("figures_dir") == "../figures"
    source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    calls = re.findall(r"savefig\([^)]*\)", source)  # a call's arguments (none of them calls anything)
    assert calls and all(re.search(r"figures_dir=figures_dir[,)]", call) for call in calls), calls


def executed_profile(path: Path) -> str | None:
    """The profile a committed notebook was last executed with by papermill, or None if it holds no run."""
    nb = nbformat.read(path, as_version=4)
    params = nb.metadata.get("papermill", {}).get("parameters", {})
    ran = any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
    return params.get("profile", "full") if ran else None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_drawn_figure_exists(path):
    if executed_profile(path) != "full":
        pytest.skip(f"{path.name} is committed without a full-profile run, so figures/ has none of its panels yet "
                    f"(`make figures` or the runner with --only {path.stem[:2]} draws them)")
    missing = [f"{stem}__{panel}.{ext}" for stem, panel in PANELS[path.stem] for ext in FORMATS
               if not (FIGURES_DIR / f"{stem}__{panel}.{ext}").is_file()]
    assert not missing, f"figures/ lacks {missing}: run `make figures` (or the runner with --only {path.stem[:2]})"


def test_every_figure_file_has_a_producing_notebook():
    orphans = []
    for path in sorted(FIGURES_DIR.glob("*")):
        if path.name.startswith("."):
            continue
        match = FIGURE.match(path.name)
        if match is None or match["ext"] not in (*FORMATS, "json"):
            orphans.append(f"{path.name} (not <notebook>__<panel>.png|pdf|json)")
        elif (match["stem"], match["panel"]) not in PANELS.get(match["stem"], []):
            orphans.append(f"{path.name} (no notebook {match['stem']} drawing panel {match['panel']!r})")
    assert not orphans, f"figures without a producing notebook: {orphans}"
