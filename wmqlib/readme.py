"""The README's generated blocks, so every number in them comes from the data and a stale one fails a test
(tests/test_readme.py).

A block is the text between the lines ``<!-- NAME -->`` and ``<!-- /NAME -->``:

- ``findings NN`` (NN a numbered notebook's two-digit prefix): the text output of that notebook's cell tagged
  ``findings`` (which prints ``findings.markdown`` of its verdicts), read from the executed notebook in
  ``notebooks/`` (the full profile's, committed);
- ``record``: the record of every candidate model diagnosed under ``data/candidates/`` (``card.recipe_record``) as
  a markdown table;
- ``shipped``: the shipped models (``SHIPPED`` under ``data/checkpoints/``) side by side from their cards
  (``card.shipped_table``: training time, probe, planning with intervals, baselines, targets met or missed);
- ``qat``: the QAT checkpoints (``data/checkpoints/*-qat-w*``) and their held-out losses (``card.qat_table``);
- ``timings``: the full profile's recorded runs (``cost.run_table``): per notebook, the latest run that computed
  something, its predicted and measured seconds and the machine;
- ``planning``: what ``benchmarks/bench_plan.py --record`` measured (``planning_cost``);
- ``floor``: the study's compute floor ``benchmarks/bench_floor.py --record`` counted and measured (``floor_table``).

    python -m wmqlib.readme            # rewrite the README's blocks
    python -m wmqlib.readme --check    # exit 1 naming every stale block, change nothing
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

import nbformat
import pandas as pd

from wmqlib.card import qat_table, recipe_record, shipped_table
from wmqlib.cost import RUNS_DIR, machine_name, run_table
from wmqlib.findings import markdown_table
from wmqlib.paths import CHECKPOINTS_DIR, RESULTS_DIR
from wmqlib.validate import InvalidValue, atomic_write

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the checkout: README.md and the committed notebooks
TAG = "findings"
NAMES = r"findings \d\d|record|shipped|qat|timings|planning|floor"
SHIPPED = ("mini-wall", "mini-pusht", "mini-wall-rssm")
BLOCK = re.compile(rf"^<!-- ({NAMES}) -->\n(.*?)^<!-- /\1 -->$", re.M | re.S)
OPEN = re.compile(rf"^<!-- (/?)({NAMES}) -->$", re.M)
RECORD_COLUMNS = ("name", "env", "train_s", "probe", "spearman", "open_loop", "open_loop_visual_only", "mpc",
                  "visual_only", "proprio_only", "exploitation", "straight_line", "simulator_open_loop",
                  "simulator_mpc", "changes")


def notebook_findings(path: Path) -> str:
    """The text printed by the cell tagged ``findings`` of the executed notebook ``path`` (stream outputs joined).
    InvalidValue naming the file when it has no such cell or the cell printed nothing (not executed)."""
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and TAG in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise InvalidValue(f"{path}: expected one code cell tagged {TAG!r}, found {len(cells)}")
    text = "".join(o.get("text", "") for o in cells[0].get("outputs", []) if o.get("output_type") == "stream")
    if not text.strip():
        raise InvalidValue(f"{path}: the cell tagged {TAG!r} printed nothing; execute the notebook first")
    return text.rstrip("\n") + "\n"


def _notebook(folder: Path, prefix: str) -> Path:
    found = sorted(folder.glob(f"{prefix}_*.ipynb"))
    if len(found) != 1:
        raise InvalidValue(f"README block 'findings {prefix}': expected one notebook {folder}/{prefix}_*.ipynb, "
                           f"found {[p.name for p in found]}")
    return found[0]


def _check_markers(text: str) -> None:
    """InvalidValue unless every opening marker is closed by its own closing marker before the next one."""
    markers = [(m.group(1) == "/", m.group(2), text.count("\n", 0, m.start()) + 1) for m in OPEN.finditer(text)]
    for i, (closing, name, line) in enumerate(markers):
        if closing != (i % 2 == 1) or (closing and markers[i - 1][1] != name):
            raise InvalidValue(f"README line {line}: unmatched marker '<!-- {'/' if closing else ''}{name} -->'; "
                               f"blocks are '<!-- NAME -->' ... '<!-- /NAME -->', NAME one of {NAMES!r}")
    if len(markers) % 2:
        raise InvalidValue(f"README line {markers[-1][2]}: '{markers[-1][1]}' is never closed")


def record(candidates: Path) -> str:
    """The ``record`` block: ``card.recipe_record`` of the folders under ``candidates`` (sorted by name) as a
    markdown table; "-" where a candidate lacks a run."""
    table = recipe_record(sorted(p for p in Path(candidates).iterdir() if p.is_dir()))
    table = table.reindex(columns=list(RECORD_COLUMNS)).astype(object).fillna("-")
    return markdown_table(table) + "\n"


BENCH_COMMAND = ("python benchmarks/bench_plan.py --device cpu --model mini-wall --episodes 8 --opt-steps 3 "
                 "--paths eager,compiled --record data/results/bench/plan.json")


def planning_cost(path: Path) -> str:
    """The ``planning`` block: the record ``bench_plan.py --record`` wrote at ``path`` as a measure / value table
    (machine and sizes, the large-GEMM and same-shape matmul peaks, the predictor's FLOP rate while planning and its
    share of the same-shape peak, each quantized model's planning time over FP's, per speed path, the batched
    planner over a DINO-WM-style loop), or a line saying how to measure it when there is none."""
    if not Path(path).is_file():
        return f"Not measured yet: `{BENCH_COMMAND}`.\n"
    r = json.loads(Path(path).read_text())
    rows = [("machine", f"{machine_name(r['machine'])}, {r['device']}, measured {r['date']}"),
            ("planning measured", f"{r['model']}: {r['episodes']} episodes x CEM {r['samples']} samples x "
                                  f"{r['opt_steps']} iterations, rollout chunk {r['chunk']}"),
            ("large-GEMM fp32 / same-shape matmul peak", f"{r['gemm_gflops']:.1f} / {r['same_shape_gflops']:.1f} "
                                                          f"GFLOP/s")]
    for path_name, p in r["paths"].items():
        rows.append((f"predictor while planning ({path_name})",
                     f"{p['achieved_gflops']:.1f} GFLOP/s = {p['achieved_gflops'] / r['same_shape_gflops']:.0%} of "
                     f"the same-shape peak"))
        rows += [(f"{label} / FP ({path_name})", f"{ratio:.2f}x") for label, ratio in p["over_fp"].items()
                 if label != "FP"]
    if r["batched_over_loop"] is not None:
        rows.append(("DINO-WM-style loop / batched planner", f"{r['batched_over_loop']:.2f}x"))
    return markdown_table(pd.DataFrame(rows, columns=["measure", "value"])) + "\n"


FLOOR_COMMAND = "python benchmarks/bench_floor.py --record data/results/bench/floor.json"


def floor_table(path: Path) -> str:
    """The ``floor`` block: the record ``bench_floor.py --record`` wrote at ``path`` as a table (per notebook: the
    settings it computes, their candidate rollouts, predictor GFLOP, the floor's seconds at the same-shape matmul
    peak, the runner's measured seconds and the floor's share of them; then all together) and a line naming the
    machine, the FLOPs per rollout and the peak of each model; or a line saying how to measure it."""
    if not Path(path).is_file():
        return f"Not measured yet: `{FLOOR_COMMAND}`.\n"
    r = json.loads(Path(path).read_text())
    table = pd.DataFrame(r["notebooks"])
    total = {"notebook": "all", "settings": table["settings"].sum(), "candidate_calls": table["candidate_calls"].sum(),
             "gflop": table["gflop"].sum(), "floor_s": table["floor_s"].sum(), "measured_s": table["measured_s"].sum()}
    table = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    shown = pd.DataFrame({
        "notebook": table["notebook"], "settings": table["settings"].astype(int),
        "candidate rollouts": [f"{x / 1e6:.2f} M" for x in table["candidate_calls"]],
        "predictor GFLOP": [f"{x:,.0f}" for x in table["gflop"]],
        "floor s": [f"{x:,.0f}" for x in table["floor_s"]],
        "measured s": [f"{x:,.0f}" for x in table["measured_s"]],
        "floor / measured": [f"{f / m:.2f}" for f, m in zip(table["floor_s"], table["measured_s"])]})
    alike: dict[tuple[float, float], list[str]] = {}  # models of one size share their figures: named together
    for name, m in r["models"].items():
        alike.setdefault((m["mflop_per_rollout"], m["same_shape_gflops"]), []).append(name)
    models = "; ".join(f"{', '.join(names)} {mflop:.1f} MFLOP per rollout at {gflops:.1f} GFLOP/s"
                       for (mflop, gflops), names in alike.items())
    return (markdown_table(shown) + f"\n{machine_name(r['machine'])}, measured {r['date']} (large-GEMM fp32 "
            f"{r['gemm_gflops']:.1f} GFLOP/s); {models}.\n")


@dataclasses.dataclass(frozen=True)
class Sources:
    """Where the blocks are read from: the executed notebooks, the candidates' cards, the shipped checkpoints' cards
    the runner's records, the planning benchmark's record and the floor benchmark's (default: the checkout's)."""

    notebooks: Path = PACKAGE_ROOT / "notebooks"
    candidates: Path = PACKAGE_ROOT / "data" / "candidates"
    checkpoints: Path = CHECKPOINTS_DIR
    runs: Path = RUNS_DIR
    bench: Path = RESULTS_DIR / "bench" / "plan.json"
    floor: Path = RESULTS_DIR / "bench" / "floor.json"


def content(name: str, sources: Sources) -> str:
    """What the block ``name`` holds now."""
    if name == "record":
        return record(sources.candidates)
    if name == "shipped":
        table = shipped_table([Path(sources.checkpoints) / n for n in SHIPPED])
        return markdown_table(table.rename_axis("").reset_index()) + "\n"
    if name == "qat":
        return markdown_table(qat_table(sorted(Path(sources.checkpoints).glob("*-qat-w*")))) + "\n"
    if name == "timings":
        return markdown_table(run_table("full", sources.runs).astype(object).fillna("-")) + "\n"
    if name == "planning":
        return planning_cost(sources.bench)
    if name == "floor":
        return floor_table(sources.floor)
    return notebook_findings(_notebook(sources.notebooks, name.split()[1]))


def render(text: str, sources: Sources) -> str:
    """``text`` (a README) with every block's content replaced by what it holds now (``content``)."""
    _check_markers(text)
    return BLOCK.sub(lambda m: f"<!-- {m.group(1)} -->\n{content(m.group(1), sources)}<!-- /{m.group(1)} -->", text)


def stale(text: str, sources: Sources) -> list[str]:
    """The names of the blocks of ``text`` whose content differs from what they hold now."""
    _check_markers(text)
    return [m.group(1) for m in BLOCK.finditer(text) if m.group(2) != content(m.group(1), sources)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wmqlib.readme", description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", type=Path, default=PACKAGE_ROOT / "README.md")
    for field in dataclasses.fields(Sources):
        parser.add_argument(f"--{field.name}", type=Path, default=field.default)
    parser.add_argument("--check", action="store_true", help="exit 1 naming the stale blocks; change nothing")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    sources = Sources(**{field.name: getattr(args, field.name) for field in dataclasses.fields(Sources)})
    try:
        if args.check:
            old = stale(text, sources)
            if old:
                print(f"{args.readme}: stale generated blocks {old}; run python -m wmqlib.readme", file=sys.stderr)
                return 1
            return 0
        new = render(text, sources)
    except InvalidValue as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if new != text:
        atomic_write(args.readme, new)
    print(f"{args.readme}: {len(BLOCK.findall(new))} generated blocks up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
