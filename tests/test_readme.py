"""wmqlib.readme: the README's findings blocks are the notebooks' own printed findings, and a stale one is caught."""

from pathlib import Path

import nbformat
import pytest

from wmqlib import readme
from wmqlib.validate import InvalidValue


def notebook(folder: Path, name: str, printed: str | None, tagged: bool = True) -> Path:
    cell = nbformat.v4.new_code_cell("print(findings.markdown(found))",
                                     metadata={"tags": ["findings"] if tagged else []})
    if printed is not None:
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=printed)]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# x"), cell])
    path = folder / name
    nbformat.write(nb, path)
    return path


TEXT = "intro\n<!-- findings 01 -->\nold numbers\n<!-- /findings 01 -->\nmiddle\n<!-- findings 02 -->\n" \
       "| a |\n<!-- /findings 02 -->\nend\n"


def test_blocks_are_rewritten_from_the_tagged_cells_and_staleness_is_caught(tmp_path):
    notebook(tmp_path, "01_one.ipynb", "| verdict | 3 |\n")
    notebook(tmp_path, "02_two.ipynb", "| a |\n")
    assert readme.stale(TEXT, tmp_path) == ["01"]
    new = readme.render(TEXT, tmp_path)
    assert new == TEXT.replace("old numbers\n", "| verdict | 3 |\n")
    assert readme.stale(new, tmp_path) == [] and readme.render(new, tmp_path) == new  # idempotent


def test_cli_check_exits_1_on_a_stale_block_and_the_rewrite_fixes_it(tmp_path, capsys):
    notebook(tmp_path, "01_one.ipynb", "fresh\n")
    notebook(tmp_path, "02_two.ipynb", "| a |\n")
    path = tmp_path / "README.md"
    path.write_text(TEXT)
    args = ["--readme", str(path), "--notebooks", str(tmp_path)]
    assert readme.main(args + ["--check"]) == 1 and "['01']" in capsys.readouterr().err
    assert path.read_text() == TEXT  # check changes nothing
    assert readme.main(args) == 0
    assert readme.main(args + ["--check"]) == 0 and "fresh\n" in path.read_text()


@pytest.mark.parametrize("text, match", [
    ("<!-- findings 01 -->\nx\n", "never closed"),
    ("<!-- /findings 01 -->\n", "unmatched"),
    ("<!-- findings 01 -->\n<!-- /findings 02 -->\n", "unmatched"),
    ("<!-- findings 07 -->\nx\n<!-- /findings 07 -->\n", "07_"),
])
def test_malformed_blocks_and_missing_notebooks_are_named(tmp_path, text, match):
    notebook(tmp_path, "01_one.ipynb", "x\n")
    with pytest.raises(InvalidValue, match=match):
        readme.render(text, tmp_path)


def test_a_notebook_without_its_findings_cell_or_not_executed_is_named(tmp_path):
    notebook(tmp_path, "01_one.ipynb", "x\n", tagged=False)
    with pytest.raises(InvalidValue, match="01_one.ipynb: expected one code cell tagged 'findings', found 0"):
        readme.render(TEXT[:TEXT.index("middle")], tmp_path)
    notebook(tmp_path, "01_one.ipynb", None)
    with pytest.raises(InvalidValue, match="printed nothing"):
        readme.render(TEXT[:TEXT.index("middle")], tmp_path)


def test_the_readme_quotes_the_committed_notebooks():
    """The stale-number test: every findings block of README.md is what its executed notebook printed."""
    text = (readme.PACKAGE_ROOT / "README.md").read_text()
    assert len(readme.BLOCK.findall(text)) == 5
    assert readme.stale(text, readme.PACKAGE_ROOT / "notebooks") == [], "run python -m wmqlib.readme"
