"""The browser test's plumbing that needs no browser: finding Chromium, the stripped notebook copies, the sandbox."""

from __future__ import annotations

import json
import os
import stat

import nbformat
import pytest

import labdriver


def test_find_chromium_prefers_wmq_chromium(tmp_path, monkeypatch):
    fake = tmp_path / "my-chromium"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("WMQ_CHROMIUM", str(fake))
    assert labdriver.find_chromium() == str(fake)


def test_find_chromium_rejects_a_bad_wmq_chromium(tmp_path, monkeypatch):
    not_executable = tmp_path / "chromium"
    not_executable.write_text("")
    for value in (str(tmp_path / "missing"), str(not_executable)):
        monkeypatch.setenv("WMQ_CHROMIUM", value)
        with pytest.raises(ValueError, match="WMQ_CHROMIUM=.*not an executable file"):
            labdriver.find_chromium()


def test_find_chromium_searches_path_in_order(tmp_path, monkeypatch):
    monkeypatch.delenv("WMQ_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert labdriver.find_chromium() is None
    for name in reversed(labdriver.CHROMIUM_NAMES):  # the later name first: the earlier one must still win
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    assert labdriver.find_chromium() == str(tmp_path / labdriver.CHROMIUM_NAMES[0])


def executed_notebook() -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell("print(1)", execution_count=3,
                                     outputs=[nbformat.v4.new_output("stream", text="1\n")])
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# title"), cell])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def test_strip_notebook_drops_outputs_counts_and_widget_state(tmp_path):
    nbformat.write(executed_notebook(), tmp_path / "in.ipynb")
    labdriver.strip_notebook(tmp_path / "in.ipynb", tmp_path / "out.ipynb")
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    nbformat.validate(out)
    assert [c.source for c in out.cells] == ["# title", "print(1)"]
    assert out.cells[1].outputs == [] and out.cells[1].execution_count is None
    assert "widgets" not in out.metadata and out.metadata.kernelspec.name == "python3"


def test_sandbox_copies_what_runs_write_and_links_the_checkpoints(tmp_path):
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    nbformat.write(executed_notebook(), repo / "notebooks" / "a.ipynb")
    (repo / "notebooks" / "b.ipynb").write_text("not asked for")
    (repo / "data" / "results" / "study-full").mkdir(parents=True)
    (repo / "data" / "results" / "study-full" / "k.json").write_text("{}")
    (repo / "data" / "results" / "study-full" / "k.json.123.tmp").write_text("partial")
    (repo / "data" / "checkpoints" / "mini").mkdir(parents=True)

    root = labdriver.sandbox(tmp_path / "box", ["a.ipynb"], repo=repo)
    assert sorted(p.name for p in (root / "notebooks").iterdir()) == ["a.ipynb"]
    assert json.loads((root / "notebooks" / "a.ipynb").read_text())["cells"][1]["outputs"] == []
    copied = root / "data" / "results" / "study-full"
    assert sorted(p.name for p in copied.iterdir()) == ["k.json"] and not copied.is_symlink()
    assert os.path.realpath(root / "data" / "checkpoints") == str((repo / "data" / "checkpoints").resolve())
    assert list((root / "figures").iterdir()) == []

    before = labdriver.tree_state(repo)
    (copied / "new.json").write_text("{}")  # what a run of an uncached setting would write
    (root / "figures" / "x.png").write_bytes(b"")
    assert labdriver.tree_state(repo) == before
    (repo / "data" / "results" / "study-full" / "k.json").write_text('{"changed": 1}')
    assert labdriver.tree_state(repo) != before
