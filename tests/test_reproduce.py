"""Tests for wmqlib/reproduce.py: discovery, selection, parameter checks, parameter passing, where figures go, the
executor check, failure reporting.

Only three tests start kernels (parameter passing and the figures on the fixture notebook, and the failing notebook).
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from wmqlib import pairs, reproduce
from wmqlib.paths import FIGURES_DIR, REPO_ROOT
from wmqlib.provenance import read_provenance
from wmqlib.reproduce import ReproduceError

FIXTURE = Path(__file__).parent / "fixtures" / "00_fixture.ipynb"


def write_notebook(path: Path, parameters: str | None, *cells: str) -> Path:
    """Write a python3 notebook: an optional cell tagged ``parameters``, then plain code cells."""
    nb_cells = [] if parameters is None else [new_code_cell(parameters, metadata={"tags": ["parameters"]})]
    nb_cells += [new_code_cell(source) for source in cells]
    nb = new_notebook(cells=nb_cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


PARAMS = 'profile = "full"\ndevice = "auto"'


def test_discover_sorts_by_name_and_skips_names_off_pattern(tmp_path):
    for name in ["02_b.ipynb", "00_a.ipynb", "10_c.ipynb", "README.ipynb", "1_bad.ipynb", "03_notes.md"]:
        (tmp_path / name).write_text("{}")
    (tmp_path / "04_folder.ipynb").mkdir()
    assert [p.name for p in reproduce.discover(tmp_path)] == ["00_a.ipynb", "02_b.ipynb", "10_c.ipynb"]


def test_discover_rejects_a_missing_folder(tmp_path):
    with pytest.raises(ReproduceError, match="--notebooks: .*missing is not a directory"):
        reproduce.discover(tmp_path / "missing")


def test_select_by_prefix_or_stem_keeps_discovery_order(tmp_path):
    paths = [tmp_path / n for n in ["00_a.ipynb", "01_b.ipynb", "01_c.ipynb", "03_d.ipynb"]]
    assert reproduce.select(paths, None) == paths
    assert [p.stem for p in reproduce.select(paths, ["03", "00"])] == ["00_a", "03_d"]
    assert [p.stem for p in reproduce.select(paths, ["01"])] == ["01_b", "01_c"]
    assert [p.stem for p in reproduce.select(paths, ["01_c"])] == ["01_c"]
    with pytest.raises(ReproduceError, match="--only: no notebook matches 02, 0; available: 00_a, 01_b, 01_c, 03_d"):
        reproduce.select(paths, ["02", "0"])


def test_declared_parameters_reads_literal_defaults(tmp_path):
    path = write_notebook(tmp_path / "00_a.ipynb", 'profile = "full"\nseed: int = 3\nsizes = [1, 2]\nx = y = f(2)', "1")
    assert reproduce.declared_parameters(path) == {"profile": "full", "seed": 3, "sizes": [1, 2], "x": None, "y": None}


def test_declared_parameters_needs_exactly_one_valid_parameters_cell(tmp_path):
    with pytest.raises(ReproduceError, match=r"00_a.ipynb: needs exactly one cell tagged 'parameters' \(found no"):
        reproduce.declared_parameters(write_notebook(tmp_path / "00_a.ipynb", None, PARAMS))
    two = write_notebook(tmp_path / "01_b.ipynb", PARAMS, "1")
    nb = nbformat.read(two, as_version=4)
    nb.cells[1].metadata["tags"] = ["parameters"]
    nbformat.write(nb, two)
    with pytest.raises(ReproduceError, match="found 2 cells"):
        reproduce.declared_parameters(two)
    with pytest.raises(ReproduceError, match="02_c.ipynb: the parameters cell is not valid Python"):
        reproduce.declared_parameters(write_notebook(tmp_path / "02_c.ipynb", "profile = ", "1"))


def test_notebook_parameters_passes_checkpoint_only_when_given(tmp_path):
    path = write_notebook(tmp_path / "00_a.ipynb", PARAMS + '\ncheckpoint = "mini-wall"')
    assert reproduce.notebook_parameters(path, "smoke", "cpu", None) == {"profile": "smoke", "device": "cpu"}
    assert reproduce.notebook_parameters(path, "full", "cuda", ["/w/wall"]) == {
        "profile": "full", "device": "cuda", "checkpoint": "/w/wall"
    }
    with pytest.raises(ReproduceError, match="00_a.ipynb: declares a single checkpoint but --checkpoint got 2"):
        reproduce.notebook_parameters(path, "full", "cpu", ["a", "b"])


def test_notebook_parameters_passes_a_list_to_a_list_checkpoint(tmp_path):
    path = write_notebook(tmp_path / "00_a.ipynb", PARAMS + '\ncheckpoint = ["mini-wall", "mini-pusht"]')
    assert reproduce.notebook_parameters(path, "full", "cpu", ["a"])["checkpoint"] == ["a"]
    assert reproduce.notebook_parameters(path, "full", "cpu", ["a", "b"])["checkpoint"] == ["a", "b"]


def test_notebook_parameters_names_undeclared_parameters(tmp_path):
    path = write_notebook(tmp_path / "00_a.ipynb", 'profile = "full"\nseed = 0')
    expected = r"00_a.ipynb: .* does not declare device, checkpoint \(declared: profile, seed\)"
    with pytest.raises(ReproduceError, match=expected):
        reproduce.notebook_parameters(path, "full", "cpu", ["wall"])


def test_notebook_parameters_passes_executor_only_when_given_and_declared(tmp_path):
    path = write_notebook(tmp_path / "00_a.ipynb", PARAMS + "\nexecutor = None")
    assert "executor" not in reproduce.notebook_parameters(path, "full", "cpu", None)
    assert reproduce.notebook_parameters(path, "full", "cpu", None, "local:2")["executor"] == "local:2"
    plain = write_notebook(tmp_path / "01_b.ipynb", PARAMS)
    with pytest.raises(ReproduceError, match=r"01_b.ipynb: .* does not declare executor"):
        reproduce.notebook_parameters(plain, "full", "cpu", None, "dask://sched:8786")


def test_notebook_parameters_passes_figures_dir_only_to_notebooks_that_declare_it(tmp_path):
    path = write_notebook(tmp_path / "00_a.ipynb", PARAMS + '\nfigures_dir = "../figures"')
    assert "figures_dir" not in reproduce.notebook_parameters(path, "full", "cpu", None)
    assert reproduce.notebook_parameters(path, "smoke", "cpu", None, figures_dir="figures")["figures_dir"] == "figures"
    plain = write_notebook(tmp_path / "01_b.ipynb", PARAMS)
    assert "figures_dir" not in reproduce.notebook_parameters(plain, "smoke", "cpu", None, figures_dir="figures")


def test_only_the_full_profile_in_place_writes_the_figures_folder_above_the_notebooks(tmp_path):
    notebooks, elsewhere = tmp_path / "notebooks", tmp_path / "out"
    assert reproduce.figures_folder("full", notebooks, notebooks) == (tmp_path / "figures", None)
    for profile, output in [("full", elsewhere), ("smoke", elsewhere), ("smoke", notebooks), ("paper", notebooks)]:
        assert reproduce.figures_folder(profile, notebooks, output) == (output / "figures", "figures")


def test_a_bad_executor_spec_fails_before_running(tmp_path, capsys):
    write_notebook(tmp_path / "00_a.ipynb", PARAMS + "\nexecutor = None")
    argv = ["--notebooks", str(tmp_path), "--output", str(tmp_path / "out"), "--device", "cpu"]
    assert reproduce.main(argv + ["--executor", "local:zero"]) == 2
    assert "--executor: executor must be 'local:N'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_unreachable_dask_scheduler_fails_in_seconds_with_one_line_before_running(tmp_path, capsys):
    pytest.importorskip("distributed")
    write_notebook(tmp_path / "00_a.ipynb", PARAMS + "\nexecutor = None", "print('ran')")
    argv = ["--notebooks", str(tmp_path), "--output", str(tmp_path / "out"), "--executor", "dask://127.0.0.1:1"]
    start = time.perf_counter()
    code = reproduce.main(argv)
    seconds = time.perf_counter() - start
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --executor dask://127.0.0.1:1: cannot connect to 127.0.0.1:1: Connection refused"
    ]
    assert not (tmp_path / "out").exists()
    assert seconds < 10, f"the check took {seconds:.1f} s"  # the ceiling the runner promises, not a benchmark


def test_resolve_checkpoints_makes_existing_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    assert reproduce.resolve_checkpoints(None) is None
    assert reproduce.resolve_checkpoints(["ckpt", "mini-wall"]) == [str(tmp_path / "ckpt"), "mini-wall"]


def test_kernel_interpreter_of_python3_is_this_interpreter_and_unknown_kernels_fail():
    import sys

    assert Path(reproduce.kernel_interpreter("python3")).resolve() == Path(sys.executable).resolve()
    with pytest.raises(ReproduceError, match="--kernel: no Jupyter kernel named 'no-such-kernel'; installed: .*py"):
        reproduce.kernel_interpreter("no-such-kernel")


@pytest.mark.cuda
def test_cuda_passes_the_device_check_where_torch_sees_a_device():
    reproduce.check_device("cuda")


def test_cuda_without_a_device_fails_before_running(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    write_notebook(tmp_path / "00_a.ipynb", PARAMS)
    assert reproduce.main(["--notebooks", str(tmp_path), "--device", "cuda", "--output", str(tmp_path / "out")]) == 2
    assert "--device cuda: torch sees no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_zero_notebooks_is_not_an_error(tmp_path, capsys):
    assert reproduce.main(["--notebooks", str(tmp_path)]) == 0
    assert "nothing to run" in capsys.readouterr().out


def test_problems_in_any_notebook_stop_the_run_before_executing(tmp_path, capsys):
    write_notebook(tmp_path / "nb" / "00_a.ipynb", PARAMS, "print(1)")
    write_notebook(tmp_path / "nb" / "01_b.ipynb", None, "print(2)")
    write_notebook(tmp_path / "nb" / "02_c.ipynb", 'profile = "full"', "print(3)")
    code = reproduce.main(["--notebooks", str(tmp_path / "nb"), "--profile", "smoke", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "01_b.ipynb: needs exactly one cell tagged 'parameters'" in err
    assert "02_c.ipynb: its parameters cell does not declare device" in err
    assert not (tmp_path / "o").exists()


def test_runs_the_fixture_with_the_given_parameters(tmp_path, monkeypatch, capsys):
    """The executed copy holds papermill's injected values, and the notebook's own output used them."""
    monkeypatch.chdir(tmp_path)
    write_notebook(tmp_path / "notebooks" / "01_other.ipynb", PARAMS)
    shutil.copy(FIXTURE, tmp_path / "notebooks")
    (tmp_path / "wall_single").mkdir()
    code = reproduce.main(
        ["--profile", "smoke", "--only", "00", "--checkpoint", "wall_single", "--output", "golden"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    executed = nbformat.read(tmp_path / "golden" / "00_fixture.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    checkpoint = str(tmp_path / "wall_single")
    assert len(injected) == 1
    assert f'profile = "smoke"\ndevice = "cpu"\ncheckpoint = "{checkpoint}"' in injected[0].source
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert f"profile=smoke device=cpu checkpoint={checkpoint} n=1000" in printed
    assert not (tmp_path / "golden" / "01_other.ipynb").exists()
    # A smoke run writes its figures beside its notebooks: figures_dir "figures", relative to the output folder.
    assert 'figures_dir = "figures"' in injected[0].source
    figure = tmp_path / "golden" / "figures" / "00_fixture__histogram.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", figure.read_bytes()[16:24])
    assert (width, height) == (4 * 72, 3 * 72)
    # plots.savefig recorded where the figure came from: the notebook, the checkout's commit, the run's profile
    record = read_provenance(figure)
    assert (record["notebook"], record["profile"], record["cache_keys"]) == ("00_fixture", "smoke", ["fixture-seed-0"])
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert record["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert not (tmp_path / "figures").exists()
    assert "1 notebook(s), profile smoke, device cpu, kernel python3" in out
    assert "figures golden/figures" in out and "figure golden/figures/00_fixture__histogram.png" in out
    assert "-> golden/00_fixture.ipynb" in out


def digests(folder: Path) -> dict[str, str]:
    """File name -> sha256 of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_with_output_elsewhere_leaves_the_published_figures_byte_identical(tmp_path, monkeypatch):
    """The issue's trap: --output one folder below the checkout made ``../figures`` the published figures/.

    Here a copy of that layout (notebooks/, figures/ with a published figure, --output out) and the repository's own
    figures/ both stay byte-identical; the run's figure lands in out/figures/.
    """
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notebooks").mkdir()
    shutil.copy(FIXTURE, tmp_path / "notebooks")
    published = tmp_path / "figures" / "00_fixture__histogram.png"
    published.parent.mkdir()
    published.write_bytes(b"the published full-profile figure")
    before, repository = digests(tmp_path / "figures"), digests(FIGURES_DIR)
    for profile in ["smoke", "full"]:
        assert reproduce.main(["--profile", profile, "--output", "out", "--device", "cpu"]) == 0
        assert digests(tmp_path / "figures") == before, f"--profile {profile} --output out wrote into figures/"
    assert digests(FIGURES_DIR) == repository
    assert (tmp_path / "out" / "figures" / "00_fixture__histogram.png").read_bytes()[:4] == b"\x89PNG"


def test_a_failing_notebook_stops_the_run_and_names_cell_error_and_partial_output(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    notebooks, output = tmp_path / "nb", tmp_path / "out"
    write_notebook(notebooks / "00_ok.ipynb", PARAMS, "print('fine')")
    raising = "x = 3\nraise ValueError(f'boom at x={x}')"
    write_notebook(notebooks / "01_raises.ipynb", PARAMS, "print('before')", raising, "print('never')")
    write_notebook(notebooks / "02_after.ipynb", PARAMS, "print('after')")
    code = reproduce.main(["--notebooks", str(notebooks), "--profile", "smoke", "--output", str(output)])
    err = capsys.readouterr().err
    assert code == 1
    # Source cells: parameters, print, raise, print. The kernel also ran papermill's injected cell: In [4].
    assert "FAILED 01_raises.ipynb at cell 3 of 4 (In [4]):" in err
    assert "    x = 3\n    raise ValueError(f'boom at x={x}')\n" in err
    assert "ValueError: boom at x=3" in err
    assert "partial output: out/01_raises.ipynb" in err
    partial = nbformat.read(output / "01_raises.ipynb", as_version=4)
    outputs = [o for c in partial.cells for o in c.get("outputs", [])]
    assert any(o.get("text") == "before\n" for o in outputs)
    assert any(o.get("ename") == "ValueError" for o in outputs)
    assert (output / "00_ok.ipynb").exists() and not (output / "02_after.ipynb").exists()


def test_profiles_come_from_the_study_table(tmp_path, capsys):
    from wmqlib.profiles import PROFILES
    (tmp_path / "nb").mkdir()
    for name in PROFILES:  # every profile of the study is accepted, "paper" included
        assert reproduce.main(["--notebooks", str(tmp_path / "nb"), "--profile", name]) == 0
    with pytest.raises(SystemExit) as bad:
        reproduce.main(["--notebooks", str(tmp_path / "nb"), "--profile", "huge"])
    assert bad.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err


def test_a_notebook_written_in_place_gets_its_text_pair(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    shutil.copy(FIXTURE, notebooks)
    assert reproduce.main(["--profile", "smoke", "--output", "elsewhere"]) == 0
    assert not list((tmp_path / "elsewhere").glob("*.py"))  # a copy elsewhere is not a committed notebook
    assert reproduce.main(["--profile", "smoke", "--output", "notebooks"]) == 0
    pair = notebooks / "00_fixture.py"
    assert pair.read_text() == pairs.text_of(notebooks / "00_fixture.ipynb")
    assert "injected-parameters" in pair.read_text()


def test_a_dry_run_prices_the_study_notebooks_and_executes_nothing(tmp_path, monkeypatch, capsys):
    from wmqlib import cost

    rates = cost.Rates(rollout=0.001, episode=0.05, gd_step=0.002, act={"per-tensor": 1.5, "per-token": 2.0},
                       active=(1.0, 0.5), quantize={}, execute=0.01, probe=4.0, linears=10, notebook=7.0)
    monkeypatch.setattr(cost, "rates", lambda S, checkpoint: rates)
    shutil.copy(FIXTURE, tmp_path)
    shutil.copy(REPO_ROOT / "notebooks" / "03_objective_misalignment.ipynb", tmp_path)
    code = reproduce.main(["--notebooks", str(tmp_path), "--profile", "smoke", "--dry-run", "--output",
                           str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "00_fixture.ipynb: not priced (no design in wmqlib.designs)" in out
    assert "03_objective_misalignment.ipynb: 14 settings, 14 to compute; predicted " in out
    assert "nothing executed" in out and not (tmp_path / "out").exists()
