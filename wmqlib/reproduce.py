"""Run the study notebooks in order with papermill: ``python -m wmqlib.reproduce``.

The runner finds ``notebooks/[0-9][0-9]_*.ipynb`` by pattern (sorted by name, never a hand-kept list), checks every
selected notebook before executing any of them, then executes them one by one and stops at the first failure.

Parameters. Every notebook has one cell tagged ``parameters`` holding plain literals. The runner always passes
``profile`` and ``device``, ``checkpoint`` only when ``--checkpoint`` is given, ``executor`` (a Dask spec,
``local:N`` or ``dask://HOST:PORT``, see ``wmqlib.cluster``) only when ``--executor`` is, and ``figures_dir`` when the
notebook declares it and the run is not the published one (below); each other passed name must be
declared in the notebook's parameters cell (papermill would otherwise inject a variable nothing reads, so a
checkpoint could be silently ignored). A checkpoint that exists as a path is passed as an absolute path, anything
else (a short name such as ``mini-wall``) as given. A notebook whose declared ``checkpoint`` default is a list
receives a list; any other notebook takes exactly one checkpoint.

Profiles: the study's table (``wmqlib.study.PROFILES``: ``full``, ``paper``, ``smoke``). Each executed notebook is
written back in place, except for ``smoke``, written to ``tests/notebooks`` (the golden notebooks that
``pytest --nbval-lax`` checks) and run on ``cpu`` unless ``--device`` says otherwise, so the goldens hold the same
numbers on every machine (up to a float's last printed digit, which tests/notebooks/conftest.py tolerates).

Working directory and figures. A notebook runs in the folder its executed copy is written to, as JupyterLab and
nbval run it. Only the published run - the full profile written back in place - keeps the notebooks' own
``figures_dir = "../figures"``, the repository's ``figures/``. Every other run (smoke, paper, any ``--output``
elsewhere) passes ``figures_dir = "figures"``, relative to that folder, so its figures land in ``<output>/figures/``
beside its notebooks and never overwrite the published ones. The runner reports the files in that folder that a
notebook created or changed.

Text pairs. A notebook written back in place also gets its ``py:percent`` text pair rewritten (``wmqlib.pairs``).

Cost. Before each study notebook the runner prints its settings, how many are not cached and the predicted time
(``wmqlib.cost``: the notebook's design from ``wmqlib.designs`` priced with this machine's measured rates, measured
once per model and sizes when something is to compute), and after it the measured time beside the prediction; a
notebook written in place that computed something has its run recorded (``cost.record_run``: the README's measured
times).
``--dry-run`` prints the predictions of every selected notebook (what an earlier one computes counted as cached for
the later ones) and executes nothing.

Exit status: 0 when every notebook ran (or there were none), 1 when a notebook failed, 2 for a bad invocation, a
notebook that fails the checks or a ``dask://`` executor that cannot be reached (nothing is executed then).
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from wmqlib import pairs
from wmqlib.profiles import PROFILES

NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
GOLDEN_PROFILE = "smoke"  # the profile whose executions are the golden notebooks
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_NOTEBOOKS = Path("notebooks")
DEFAULT_GOLDENS = Path("tests/notebooks")
DEFAULT_KERNEL = "python3"
PUBLISHED_PROFILE = "full"  # the only profile whose run in place writes the repository's figures/
OWN_FIGURES = "figures"  # figures_dir of every other run: relative to the notebook's working directory, its output
# Lines of the failing cell's source shown in the failure report.
EXCERPT_LINES = 6


class ReproduceError(Exception):
    """A problem found before executing anything (bad folder, selection, parameters cell, kernel or device).

    The message is written for the user and names the notebook or option at fault.
    """


@dataclass(frozen=True)
class NotebookRun:
    """One executed notebook: its output path, wall time in seconds and the figure files it created or changed."""

    output: Path
    seconds: float
    figures: tuple[Path, ...]


def discover(folder: str | Path) -> list[Path]:
    """Return the notebooks ``folder/[0-9][0-9]_*.ipynb`` sorted by file name (so ``00_`` runs before ``01_``).

    Raises ReproduceError when ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReproduceError(f"--notebooks: {folder} is not a directory")
    return sorted((p for p in folder.glob(NOTEBOOK_GLOB) if p.is_file()), key=lambda p: p.name)


def select(notebooks: Sequence[Path], only: Sequence[str] | None) -> list[Path]:
    """Keep the notebooks named by ``only`` (two-digit prefixes such as ``01``, or full stems), in discovery order.

    ``only=None`` keeps all. Raises ReproduceError naming every selector that matches no notebook.
    """
    if only is None:
        return list(notebooks)

    def matches(path: Path, token: str) -> bool:
        return path.stem == token or path.stem.startswith(f"{token}_")

    unknown = [token for token in only if not any(matches(p, token) for p in notebooks)]
    if unknown:
        available = ", ".join(p.stem for p in notebooks)
        raise ReproduceError(f"--only: no notebook matches {', '.join(unknown)}; available: {available}")
    return [p for p in notebooks if any(matches(p, token) for token in only)]


def declared_parameters(path: str | Path) -> dict[str, object]:
    """Return the names assigned in the notebook's cell tagged ``parameters``, mapped to their literal defaults.

    A default that is not a Python literal maps to None. Raises ReproduceError when the notebook has no such cell,
    has several, or the cell is not valid Python.
    """
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        found = "no cell" if not cells else f"{len(cells)} cells"
        raise ReproduceError(
            f"{path.name}: needs exactly one cell tagged 'parameters' (found {found}); "
            "tag the cell of plain literals that papermill overrides"
        )
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError as err:
        raise ReproduceError(f"{path.name}: the parameters cell is not valid Python ({err.msg}, line {err.lineno})")
    declared: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        try:
            default = ast.literal_eval(value)
        except ValueError:
            default = None
        for target in targets:
            if isinstance(target, ast.Name):
                declared[target.id] = default
    return declared


def notebook_parameters(
    path: Path, profile: str, device: str, checkpoints: Sequence[str] | None, executor: str | None = None,
    figures_dir: str | None = None,
) -> dict[str, object]:
    """Build the papermill parameters for one notebook, checked against its parameters cell.

    ``executor`` (a spec string) is passed only when given, like the checkpoints; ``figures_dir`` only when given and
    declared (a notebook that declares none draws no figure through it).

    Raises ReproduceError naming the notebook and every parameter it does not declare, or when several
    checkpoints are given to a notebook whose ``checkpoint`` is a single value.
    """
    declared = declared_parameters(path)
    parameters: dict[str, object] = {"profile": profile, "device": device}
    if checkpoints:
        if isinstance(declared.get("checkpoint"), (list, tuple)):
            parameters["checkpoint"] = list(checkpoints)
        elif len(checkpoints) > 1 and "checkpoint" in declared:
            raise ReproduceError(
                f"{path.name}: declares a single checkpoint but --checkpoint got {len(checkpoints)}; "
                "pass one, or select notebooks with --only"
            )
        else:
            parameters["checkpoint"] = checkpoints[0]
    if executor is not None:
        parameters["executor"] = executor
    missing = [name for name in parameters if name not in declared]
    if figures_dir is not None and "figures_dir" in declared:
        parameters["figures_dir"] = figures_dir
    if missing:
        raise ReproduceError(
            f"{path.name}: its parameters cell does not declare {', '.join(missing)} "
            f"(declared: {', '.join(declared) or 'nothing'}); add them, or leave this notebook out with --only"
        )
    return parameters


def resolve_checkpoints(checkpoints: Sequence[str] | None) -> list[str] | None:
    """Make checkpoints that exist as paths absolute (notebooks run in another folder); keep names as given."""
    if not checkpoints:
        return None
    return [str(Path(c).resolve()) if Path(c).exists() else c for c in checkpoints]


def check_executor(spec: str | None) -> None:
    """Fail early on a malformed ``--executor`` spec, one given where Dask distributed is not installed, or a
    ``dask://`` scheduler that cannot be reached (``wmqlib.cluster.check_scheduler``: seconds, not minutes)."""
    if spec is None:
        return
    import importlib.util

    from wmqlib.cluster import check_scheduler, parse_spec

    try:
        parse_spec(spec)
    except ValueError as err:
        raise ReproduceError(f"--executor: {err}")
    if importlib.util.find_spec("distributed") is None:
        raise ReproduceError(f"--executor {spec}: Dask distributed is not installed; pip install 'wmq[cluster]'")
    try:
        check_scheduler(spec)
    except OSError as err:
        raise ReproduceError(f"--executor {spec}: {err}")


def figures_folder(profile: str, notebooks: Path, output: Path) -> tuple[Path, str | None]:
    """(where this run's figures go, the ``figures_dir`` to pass or None to keep the notebooks' ``../figures``).

    Only the published run, profile ``full`` written back into its notebooks folder, writes ``<notebooks>/../figures``
    (the repository's ``figures/``); any other run writes ``<output>/figures``.
    """
    if profile == PUBLISHED_PROFILE and output.resolve() == notebooks.resolve():
        return output.resolve().parent / "figures", None
    return output.resolve() / OWN_FIGURES, OWN_FIGURES


def kernel_interpreter(kernel_name: str) -> str:
    """Return the interpreter the Jupyter kernel ``kernel_name`` starts (``python`` in a kernelspec means this one).

    Raises ReproduceError listing the installed kernels when ``kernel_name`` is not one of them.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    try:
        spec = manager.get_kernel_spec(kernel_name)
    except NoSuchKernel:
        available = ", ".join(sorted(manager.find_kernel_specs()))
        raise ReproduceError(f"--kernel: no Jupyter kernel named {kernel_name!r}; installed: {available}")
    program = spec.argv[0]
    # jupyter_client launches a kernelspec whose program is python/python3/python3.X with sys.executable.
    if program in {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}:
        return sys.executable
    return program


def check_device(device: str) -> None:
    """Fail early when ``device`` is cuda and torch sees no CUDA device (notebooks would fail deep inside)."""
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise ReproduceError("--device cuda: torch sees no CUDA device; use --device cpu or --device auto")


def _snapshot(folder: Path) -> dict[Path, int]:
    """Map every file under ``folder`` to its modification time in nanoseconds (empty when it does not exist)."""
    if not folder.is_dir():
        return {}
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def run_notebook(
    source: Path, output: Path, parameters: dict[str, object], kernel_name: str, figures_dir: Path
) -> NotebookRun:
    """Execute ``source`` with papermill into ``output``, in ``output``'s folder; papermill saves after every cell.

    Returns the wall time and the files under ``figures_dir`` created or changed meanwhile. Papermill's and
    nbclient's errors propagate; ``output`` then holds the partial execution.
    """
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    before = _snapshot(figures_dir)
    start = time.perf_counter()
    papermill.execute_notebook(
        source,
        output,
        parameters=parameters,
        kernel_name=kernel_name,
        # Parameters cells are Python (declared_parameters parses them); papermill needs the language to write
        # its injected cell and would otherwise demand it in the notebook's metadata.
        language="python",
        cwd=output.parent,
        progress_bar=sys.stderr.isatty(),
        # The kernel shares our stderr; its warnings (e.g. "running over TCP without encryption") are noise here,
        # while errors in cells come back through the notebook and papermill.
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )
    seconds = time.perf_counter() - start
    after = _snapshot(figures_dir)
    figures = tuple(sorted(p for p, mtime in after.items() if before.get(p) != mtime))
    return NotebookRun(output=output, seconds=seconds, figures=figures)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute (for messages)."""
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def describe_failure(source: Path, output: Path, error: BaseException) -> str:
    """The failure report: notebook, failing cell (position, execution count, source excerpt), error, partial output."""
    import nbformat
    from papermill.exceptions import PapermillExecutionError

    lines = [f"FAILED {source.name}"]
    if isinstance(error, PapermillExecutionError):
        # papermill's cell_index counts the cells it inserted (injected parameters, error banners): locate the
        # failing cell in the source notebook instead, by its text.
        cells = nbformat.read(source, as_version=4).cells
        number = next((i + 1 for i, c in enumerate(cells) if c.source == error.source), None)
        where = f"cell {number} of {len(cells)}" if number else "a cell"
        lines[0] += f" at {where} (In [{error.exec_count}]):"
        source_lines = error.source.splitlines()
        lines += [f"    {line}" for line in source_lines[:EXCERPT_LINES]]
        if len(source_lines) > EXCERPT_LINES:
            lines.append(f"    ... ({len(source_lines) - EXCERPT_LINES} more lines)")
        lines.append(f"{error.ename}: {error.evalue}")
    else:
        # A dead kernel or a timeout happens outside any one cell's code.
        lines[0] += ":"
        lines.append(f"{type(error).__name__}: {error}")
    lines.append(f"partial output: {_shown(output)}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wmqlib.reproduce",
        description="Execute notebooks/[0-9][0-9]_*.ipynb in order with papermill.",
    )
    parser.add_argument(
        "--profile", choices=list(PROFILES), default="full",
        help=f"one of the study's profiles ({', '.join(PROFILES)}): executed notebooks are written back in place, "
             f"except {GOLDEN_PROFILE!r} (tiny sizes), written to --output (default full)",
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NN", help="run only these notebooks (two-digit prefixes or stems)"
    )
    parser.add_argument(
        "--device", choices=DEVICES, default=None,
        help="device parameter passed to every notebook (default: auto for full, cpu for smoke)",
    )
    parser.add_argument(
        "--checkpoint", nargs="+", metavar="PATH",
        help="checkpoint parameter (a path, or a shipped model name); a notebook must declare it",
    )
    parser.add_argument(
        "--executor", metavar="SPEC",
        help="run each notebook's settings on a Dask cluster: local:N (N worker processes here) or "
             "dask://HOST:PORT (a running scheduler); a notebook must declare it (default: serial, in the kernel)",
    )
    parser.add_argument(
        "--notebooks", type=Path, default=DEFAULT_NOTEBOOKS, help="folder of NN_name.ipynb (default notebooks)"
    )
    parser.add_argument(
        "--output", type=Path, default=None,
        help=f"folder for executed notebooks (default: the notebooks folder for full, {DEFAULT_GOLDENS} for smoke); "
             f"figures go to its figures/ subfolder, except for the full profile in place (the repository's figures/)",
    )
    parser.add_argument(
        "--dry-run", action="store_true",
        help="execute nothing: print per notebook its settings, how many are not cached and the predicted time "
             "(wmqlib.cost; measures this machine's rates first when it has none for the models)",
    )
    parser.add_argument(
        "--kernel", default=DEFAULT_KERNEL,
        help=f"Jupyter kernel name (default {DEFAULT_KERNEL}, which runs this interpreter)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ran, 1 a notebook failed, 2 bad invocation)."""
    args = _parser().parse_args(argv)
    golden = args.profile == GOLDEN_PROFILE
    device = args.device or ("cpu" if golden else "auto")
    output_dir = args.output or (DEFAULT_GOLDENS if golden else args.notebooks)
    figures_dir, figures_parameter = figures_folder(args.profile, args.notebooks, output_dir)
    try:
        notebooks = discover(args.notebooks)
        if not notebooks:
            print(f"no notebooks match {args.notebooks / NOTEBOOK_GLOB}: nothing to run")
            return 0
        notebooks = select(notebooks, args.only)
        checkpoints = resolve_checkpoints(args.checkpoint)
        problems, plan = [], []
        for path in notebooks:
            try:
                plan.append((path, notebook_parameters(path, args.profile, device, checkpoints, args.executor,
                                                       figures_parameter)))
            except ReproduceError as err:
                problems.append(str(err))
        if problems:
            raise ReproduceError("\n".join(problems))
        check_device(device)
        check_executor(args.executor)
        interpreter = kernel_interpreter(args.kernel)
    except ReproduceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    print(
        f"{len(plan)} notebook(s), profile {args.profile}, device {device}, "
        f"kernel {args.kernel} ({interpreter}), output {_shown(output_dir)}, figures {_shown(figures_dir)}"
    )
    if Path(interpreter).resolve() != Path(sys.executable).resolve():
        print(f"warning: kernel {args.kernel} runs {interpreter}, not {sys.executable}", file=sys.stderr)

    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    import pandas as pd

    from wmqlib import cost

    if args.dry_run:  # every notebook priced up front; what an earlier one computes counts as cached after it
        planned: set[str] = set()
        tables = [cost.price_notebook(path.stem, {**declared_parameters(path), **parameters}, planned)
                  for path, parameters in plan]
        for (path, _), table in zip(plan, tables):
            print(f"{path.name}: {cost.summary(table)}")
        total = pd.Series([cost.predicted(t) for t in tables], dtype=float).sum()  # the unpriced left out
        print(f"dry run: {len(plan)} notebook(s), predicted {total:.0f} s in all; nothing executed")
        return 0

    total = time.perf_counter()
    for i, (path, parameters) in enumerate(plan, start=1):
        output = output_dir / path.name
        print(f"[{i}/{len(plan)}] {path.name} ...", flush=True)
        table = cost.price_notebook(path.stem, {**declared_parameters(path), **parameters})
        print(f"      {cost.summary(table)}", flush=True)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")  # not on Windows
        try:
            run = run_notebook(path, output, parameters, args.kernel, figures_dir)
        except (PapermillExecutionError, DeadKernelError, CellTimeoutError) as err:
            print(describe_failure(path, output, err), file=sys.stderr)
            return 1
        print(f"      {run.seconds:.1f} s (predicted {cost.predicted(table):.0f} s) -> {_shown(run.output)}")
        if output_dir.resolve() == args.notebooks.resolve():  # written in place: keep its text pair and its time
            print(f"      text pair {_shown(pairs.sync(run.output))}")
            if cost.record_run(args.profile, path.stem, table, run.seconds, args.executor, load):
                print(f"      run recorded in {_shown(cost.RUNS_DIR / (args.profile + '.json'))}")
        for figure in run.figures:
            print(f"      figure {_shown(figure)}")
    print(f"done: {len(plan)} notebook(s) in {time.perf_counter() - total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
