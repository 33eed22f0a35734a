"""wmqlib.card: the model card's two files hold the same facts, and the command that regenerates the model."""

import json
from pathlib import Path

import pytest

from wmqlib.card import planning_gate, qat_table, read_card, shipped_table, targets, write_model_card


def test_card_files_round_trip_and_name_the_command(tiny, tmp_path):
    card = json.loads((Path(tiny) / "card.json").read_text())
    write_model_card(card, tmp_path, "python -m wmqlib.train --preset tiny --out x")
    command = "python -m wmqlib.train --preset tiny --out x"
    assert json.loads((tmp_path / "card.json").read_text()) == {**card, "regenerate": command}
    text = (tmp_path / "MODEL_CARD.md").read_text()
    assert text.startswith(f"# {tmp_path.name}") and "Regenerate: `python -m wmqlib.train --preset tiny --out x`." in text
    assert f"| encoder parameters | {card['parameters']['encoder']:,} |" in text
    assert not list(tmp_path.glob("*.tmp"))


def run(k: int, n: int = 50) -> dict:
    return {"success_rate": k / n, "successes": k, "episodes": n, "ci95": [max(k / n - 0.1, 0), min(k / n + 0.1, 1)]}


def diagnosed(folder: Path, env: str, planning: dict, probe: float, references: dict | None = None,
              architecture: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    card = {"architecture": {"env": env, **(architecture or {})}, "seconds": {"total": 100.4}, "threads": 1, "device": "cpu",
            "diagnostics": {"planning": planning, "probe": {"error_over_tolerance": probe},
                            "references": references or {}}}
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def test_targets_are_met_missed_or_not_measured_by_the_cards_numbers(tmp_path):
    # wall: MPC 45/50 = 90% meets 90%; open loop 37/50 = 74% misses 75%; visual-only MPC was never run
    folder = diagnosed(tmp_path / "w", "wall", {"mpc": run(45), "open_loop": run(37)}, probe=0.51)
    assert targets(read_card(folder)) == ["MPC >= 90%: met (90%)", "open loop >= 75%: missed (74%)",
                                          "MPC, visual latent only >= 75%: not measured",
                                          "probe <= 0.5: missed (0.510)"]
    folder = diagnosed(tmp_path / "p", "pusht", {"mpc": run(30), "open_loop": run(20), "visual_only": run(19)}, 0.5)
    assert targets(read_card(folder)) == ["MPC >= 60%: met (60%)", "open loop >= 40%: met (40%)",
                                          "MPC, visual latent only >= 40%: missed (38%)", "probe <= 0.5: met (0.500)"]


def test_an_rssm_is_held_to_the_architecture_comparisons_target(tmp_path):
    folder = diagnosed(tmp_path / "r", "wall", {"mpc": run(39), "open_loop": run(30)}, 0.13, architecture={
        "architecture": "rssm"})
    assert targets(read_card(folder)) == ["MPC >= 80%: missed (78%)", "probe <= 0.5: met (0.130)"]


def test_shipped_table_puts_the_models_side_by_side_with_their_best_baseline(tmp_path):
    refs = {"no_action": run(0), "straight_line": run(13), "random": run(1), "simulator_open_loop": run(39)}
    a = diagnosed(tmp_path / "mini-wall", "wall", {"open_loop": run(36), "mpc": run(45)}, 0.03, refs)
    b = diagnosed(tmp_path / "mini-pusht", "pusht", {"open_loop": run(21)}, 0.9)
    table = shipped_table([a, b])
    assert list(table.columns) == ["mini-wall", "mini-pusht"]
    assert table.loc["FP open loop", "mini-wall"] == "72% [62%, 82%] (36/50)"
    assert table.loc["FP MPC", "mini-pusht"] == "not measured"
    assert table.loc["best trivial baseline (open loop)", "mini-wall"] == "straight line 26% [16%, 36%] (13/50)"
    assert table.loc["best trivial baseline (open loop)", "mini-pusht"] == "not measured"
    assert table.loc["simulator planner, open loop / MPC", "mini-wall"] == "78% [68%, 88%] (39/50) / not measured"
    assert table.loc["training", "mini-wall"] == "100 s (1 thread(s), cpu)"
    with pytest.raises(FileNotFoundError, match="no card.json with diagnostics"):
        shipped_table([tmp_path / "missing"])


def test_qat_table_reads_the_held_out_losses_at_the_cards_bits(tmp_path):
    folder = tmp_path / "m-qat-w3"
    folder.mkdir()
    loss = {"fp": {"prediction": 0.002}, "rtn_w3": {"prediction": 0.0377}, "qat_w3": {"prediction": 0.00278}}
    (folder / "card.json").write_text(json.dumps({"kind": "qat", "w_bits": 3, "base": {"checkpoint": "m"},
                                                  "heldout_loss": loss, "seconds": {"total": 54.2}}))
    table = qat_table([folder])
    assert table.to_dict("records") == [{"checkpoint": "m-qat-w3", "base": "m", "FP base": "0.002",
                                         "RTN of the base": "0.0377", "QAT": "0.00278", "seconds": 54.2}]
    with pytest.raises(FileNotFoundError, match="no QAT card"):
        qat_table([tmp_path])


def test_the_planning_gate_passes_a_card_at_the_bar_and_says_why_it_stops_one(tmp_path):
    assert planning_gate(read_card(diagnosed(tmp_path / "a", "wall", {"mpc": run(40)}, 0.1))) is None  # 80%
    assert planning_gate(read_card(diagnosed(tmp_path / "b", "wall", {"mpc": run(39)}, 0.1))) == \
        "its card's MPC success 78% [68%, 88%] (39/50) is below 80%"
    assert planning_gate(read_card(diagnosed(tmp_path / "c", "wall", {"open_loop": run(45)}, 0.1))) == \
        "its card has no MPC success (the findings need >= 80%)"
    assert planning_gate(None) == "its card has no MPC success (the findings need >= 80%)"
    assert planning_gate(read_card(tmp_path / "c"), target=0.9, run="open_loop") is None
