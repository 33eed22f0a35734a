"""wmqlib.pairs: every committed notebook has an up-to-date py:percent text pair; a source change makes it stale,
an output-only change does not."""

import shutil

import nbformat

from wmqlib import pairs
from wmqlib.paths import NOTEBOOKS_DIR


def test_every_committed_notebook_has_its_text_pair_in_sync():
    assert [p.name for p in pairs.stale(NOTEBOOKS_DIR)] == [], "run: python -m wmqlib.pairs"


def test_a_source_change_makes_the_pair_stale_and_sync_repairs_it(tmp_path):
    nb_path = tmp_path / "03_objective_misalignment.ipynb"
    shutil.copy(NOTEBOOKS_DIR / nb_path.name, nb_path)
    pairs.sync(nb_path)
    assert pairs.stale(tmp_path) == []

    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:  # outputs and execution counts do not belong to the text
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, nb_path)
    assert pairs.stale(tmp_path) == []

    code = next(c for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", []))
    code.source += "\nx = 1"
    nbformat.write(nb, nb_path)
    assert pairs.stale(tmp_path) == [nb_path]
    assert "x = 1" in pairs.text_of(nb_path)
    pairs.sync(nb_path)
    assert pairs.stale(tmp_path) == []


def test_the_parameters_tag_survives_in_the_text():
    assert '# %% tags=["parameters"]' in pairs.text_path(NOTEBOOKS_DIR / "01_granularity.ipynb").read_text()


def test_check_reports_a_missing_pair(tmp_path, capsys):
    shutil.copy(NOTEBOOKS_DIR / "03_objective_misalignment.ipynb", tmp_path)
    assert pairs.main(["--notebooks", str(tmp_path), "--check"]) == 1
    assert "stale text pair" in capsys.readouterr().out
    assert pairs.main(["--notebooks", str(tmp_path)]) == 0
    assert pairs.main(["--notebooks", str(tmp_path), "--check"]) == 0
