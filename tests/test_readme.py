"""wmqlib.readme: the README's generated blocks are the notebooks' own printed findings and the candidates' record,
and a stale one is caught."""

import json
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


def here(folder: Path) -> readme.Sources:
    """Every block read from ``folder``."""
    return readme.Sources(notebooks=folder, candidates=folder, checkpoints=folder, runs=folder,
                          bench=folder / "plan.json", floor=folder / "floor.json")


TEXT = "intro\n<!-- findings 01 -->\nold numbers\n<!-- /findings 01 -->\nmiddle\n<!-- findings 02 -->\n" \
       "| a |\n<!-- /findings 02 -->\nend\n"


def test_blocks_are_rewritten_from_the_tagged_cells_and_staleness_is_caught(tmp_path):
    notebook(tmp_path, "01_one.ipynb", "| verdict | 3 |\n")
    notebook(tmp_path, "02_two.ipynb", "| a |\n")
    assert readme.stale(TEXT, here(tmp_path)) == ["findings 01"]
    new = readme.render(TEXT, here(tmp_path))
    assert new == TEXT.replace("old numbers\n", "| verdict | 3 |\n")
    assert readme.stale(new, here(tmp_path)) == [] and readme.render(new, here(tmp_path)) == new


def test_cli_check_exits_1_on_a_stale_block_and_the_rewrite_fixes_it(tmp_path, capsys):
    notebook(tmp_path, "01_one.ipynb", "fresh\n")
    notebook(tmp_path, "02_two.ipynb", "| a |\n")
    path = tmp_path / "README.md"
    path.write_text(TEXT)
    args = ["--readme", str(path), "--notebooks", str(tmp_path), "--candidates", str(tmp_path)]
    assert readme.main(args + ["--check"]) == 1 and "['findings 01']" in capsys.readouterr().err
    assert path.read_text() == TEXT  # check changes nothing
    assert readme.main(args) == 0
    assert readme.main(args + ["--check"]) == 0 and "fresh\n" in path.read_text()


@pytest.mark.parametrize("text, match", [
    ("<!-- findings 01 -->\nx\n", "never closed"),
    ("<!-- record -->\n<!-- /findings 01 -->\n", "unmatched"),
    ("<!-- /findings 01 -->\n", "unmatched"),
    ("<!-- findings 01 -->\n<!-- /findings 02 -->\n", "unmatched"),
    ("<!-- findings 07 -->\nx\n<!-- /findings 07 -->\n", "07_"),
])
def test_malformed_blocks_and_missing_notebooks_are_named(tmp_path, text, match):
    notebook(tmp_path, "01_one.ipynb", "x\n")
    with pytest.raises(InvalidValue, match=match):
        readme.render(text, here(tmp_path))


def test_a_notebook_without_its_findings_cell_or_not_executed_is_named(tmp_path):
    notebook(tmp_path, "01_one.ipynb", "x\n", tagged=False)
    with pytest.raises(InvalidValue, match="01_one.ipynb: expected one code cell tagged 'findings', found 0"):
        readme.render(TEXT[:TEXT.index("middle")], here(tmp_path))
    notebook(tmp_path, "01_one.ipynb", None)
    with pytest.raises(InvalidValue, match="printed nothing"):
        readme.render(TEXT[:TEXT.index("middle")], here(tmp_path))


def test_the_readme_quotes_the_committed_notebooks():
    """The stale-number test: every generated block of README.md is what its executed notebook printed, and the
    record is the candidates' cards."""
    text = (readme.PACKAGE_ROOT / "README.md").read_text()
    names = [name for name, _ in readme.BLOCK.findall(text)]
    assert sorted(names) == sorted([f"findings 0{k}" for k in range(6)] + ["record", "shipped", "qat", "timings",
                                                                           "planning", "floor"])
    assert readme.stale(text, readme.Sources()) == [], "run python -m wmqlib.readme"


def card(folder: Path, recipe: dict, open_loop: int) -> None:
    folder.mkdir()
    planning = {"open_loop": {"successes": open_loop, "episodes": 50, "success_rate": open_loop / 50,
                              "ci95": [0.1, 0.9]}}
    (folder / "card.json").write_text(json.dumps({
        "recipe": recipe, "architecture": {"env": "wall"}, "seconds": {"total": 60.0},
        "diagnostics": {"probe": {"error_over_tolerance": 0.5}, "planning": planning, "exploitation": None,
                        "latent_alignment": [{"low": 0, "high": 4.5, "spearman": 0.9}]}}))


def test_the_record_block_is_the_candidates_cards(tmp_path):
    card(tmp_path / "a", {"seed": 0, "joint_steps": 10}, 20)
    card(tmp_path / "b", {"seed": 0, "joint_steps": 20}, 40)
    (tmp_path / "c").mkdir()  # no card: not a diagnosed candidate
    text = readme.record(tmp_path)
    lines = text.splitlines()
    assert lines[0].startswith("| name | env | train_s | probe | spearman | open_loop |") and len(lines) == 4
    assert lines[2].startswith("| a | wall | 60.0 | 0.5 | 0-4.5: 0.90 | 40% [10%, 90%] | - |")
    assert lines[3].endswith("| - | - | - | - | - | joint_steps=20 |")
    block = "x\n<!-- record -->\nold\n<!-- /record -->\n"
    assert readme.stale(block, here(tmp_path)) == ["record"]
    assert readme.render(block, here(tmp_path)) == f"x\n<!-- record -->\n{text}<!-- /record -->\n"


def test_the_timings_block_is_the_recorded_runs(tmp_path):
    import pandas as pd

    from wmqlib import cost

    table = pd.DataFrame([("setting", "a", False, 30.0, 0)], columns=["kind", "what", "cached", "seconds", "task"])
    cost.record_run("full", "01_x", table, 45.0, None, 0.0, tmp_path)
    block = "<!-- timings -->\nold\n<!-- /timings -->\n"
    assert readme.stale(block, here(tmp_path)) == ["timings"]
    new = readme.render(block, here(tmp_path))
    lines = new.splitlines()
    assert lines[1].startswith("| notebook | settings | computed | predicted_s | measured_s | measured / predicted |")
    assert lines[3].startswith("| 01_x | 1 | 1 | 30.0 | 45.0 | 1.5 | serial |")
    assert readme.stale(new, here(tmp_path)) == []


def test_the_shipped_and_qat_blocks_are_the_checkpoints_cards(tmp_path):
    planning = {"open_loop": {"successes": 36, "episodes": 50, "success_rate": 0.72, "ci95": [0.58, 0.83]}}
    for name, architecture in (("mini-wall", {"env": "wall"}), ("mini-pusht", {"env": "pusht"}),
                               ("mini-wall-rssm", {"env": "wall", "architecture": "rssm"})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "card.json").write_text(json.dumps({
            "architecture": architecture, "seconds": {"total": 60.0}, "threads": 1, "device": "cpu",
            "diagnostics": {"probe": {"error_over_tolerance": 0.2}, "planning": planning}}))
    (tmp_path / "mini-wall-qat-w4").mkdir()
    (tmp_path / "mini-wall-qat-w4" / "card.json").write_text(json.dumps({
        "kind": "qat", "w_bits": 4, "base": {"checkpoint": "mini-wall"}, "seconds": {"total": 5.0},
        "heldout_loss": {"fp": {"prediction": 1.0}, "rtn_w4": {"prediction": 2.0}, "qat_w4": {"prediction": 1.5}}}))
    block = "<!-- shipped -->\nold\n<!-- /shipped -->\n<!-- qat -->\nold\n<!-- /qat -->\n"
    assert readme.stale(block, here(tmp_path)) == ["shipped", "qat"]
    new = readme.render(block, here(tmp_path))
    shipped = new.split("<!-- /shipped -->")[0].splitlines()
    assert shipped[1] == "|  | mini-wall | mini-pusht | mini-wall-rssm |"
    assert "| FP open loop | 72% [58%, 83%] (36/50) | 72% [58%, 83%] (36/50) | 72% [58%, 83%] (36/50) |" in shipped
    assert shipped[-1].endswith("| MPC >= 80%: not measured; probe <= 0.5: met (0.200) |")
    assert "| mini-wall-qat-w4 | mini-wall | 1 | 2 | 1.5 | 5.0 |" in new
    assert readme.stale(new, here(tmp_path)) == []


def test_the_planning_block_is_the_benchmarks_record_or_says_how_to_measure(tmp_path):
    block = "<!-- planning -->\nold\n<!-- /planning -->\n"
    assert readme.content("planning", here(tmp_path)) == f"Not measured yet: `{readme.BENCH_COMMAND}`.\n"
    (tmp_path / "plan.json").write_text(json.dumps({
        "machine": {"cpu": "AMD EPYC", "capability": "AVX2", "cores": 2, "threads": 2, "torch": "2.13.0+cpu"},
        "device": "cpu", "model": "mini-wall", "episodes": 8, "samples": 300, "opt_steps": 3, "chunk": 1024,
        "gemm_gflops": 136.0, "same_shape_gflops": 80.0, "batched_over_loop": 1.1, "date": "2026-12-07",
        "paths": {"eager": {"achieved_gflops": 56.0, "seconds": {"FP": 2.0, "W8A8 per-token": 2.74},
                            "over_fp": {"FP": 1.0, "W8A8 per-token": 1.37}}}}))
    new = readme.render(block, here(tmp_path))
    lines = new.splitlines()
    assert lines[1:3] == ["| measure | value |", "| --- | --- |"]
    assert "| machine | AMD EPYC (AVX2), 2 cores, 2 torch threads, cpu, measured 2026-12-07 |" in lines
    assert "| large-GEMM fp32 / same-shape matmul peak | 136.0 / 80.0 GFLOP/s |" in lines
    assert "| predictor while planning (eager) | 56.0 GFLOP/s = 70% of the same-shape peak |" in lines
    assert "| W8A8 per-token / FP (eager) | 1.37x |" in lines and "| FP / FP (eager) | 1.00x |" not in lines
    assert "| DINO-WM-style loop / batched planner | 1.10x |" in lines
    assert readme.stale(new, here(tmp_path)) == []


def test_the_floor_block_is_the_floor_benchmarks_record_with_its_total_or_says_how_to_measure(tmp_path):
    block = "<!-- floor -->\nold\n<!-- /floor -->\n"
    assert readme.content("floor", here(tmp_path)) == f"Not measured yet: `{readme.FLOOR_COMMAND}`.\n"
    machine = {"cpu": "AMD EPYC", "capability": "AVX2", "cores": 2, "threads": 2, "torch": "2.13.0+cpu"}
    (tmp_path / "floor.json").write_text(json.dumps({
        "machine": machine, "date": "2026-12-08", "profile": "full", "gemm_gflops": 136.0,
        "notebooks": [{"notebook": "00_baseline", "settings": 12, "candidate_calls": 2.0e6, "gflop": 62000.0,
                       "floor_s": 500.0, "measured_s": 1600.0, "counted": {"open loop": 12}},
                      {"notebook": "01_granularity", "settings": 3, "candidate_calls": 1.0e6, "gflop": 31000.0,
                       "floor_s": 250.0, "measured_s": 400.0, "counted": {"open loop": 3}}],
        "models": {"mini-wall": {"mflop_per_rollout": 31.0, "same_shape_gflops": 124.0},
                   "mini-pusht": {"mflop_per_rollout": 31.0, "same_shape_gflops": 124.0},
                   "big": {"mflop_per_rollout": 900.0, "same_shape_gflops": 140.0}}}))
    new = readme.render(block, here(tmp_path))
    lines = new.splitlines()
    assert lines[1] == ("| notebook | settings | candidate rollouts | predictor GFLOP | floor s | measured s | "
                        "floor / measured |")
    assert "| 00_baseline | 12 | 2.00 M | 62,000 | 500 | 1,600 | 0.31 |" in lines
    assert "| all | 15 | 3.00 M | 93,000 | 750 | 2,000 | 0.38 |" in lines  # 750 / 2000, summed by hand
    assert ("AMD EPYC (AVX2), 2 cores, 2 torch threads, measured 2026-12-08 (large-GEMM fp32 136.0 GFLOP/s); "
            "mini-wall, mini-pusht 31.0 MFLOP per rollout at 124.0 GFLOP/s; big 900.0 MFLOP per rollout at "
            "140.0 GFLOP/s.") in lines  # models with the same figures are named together
    assert readme.stale(new, here(tmp_path)) == []
