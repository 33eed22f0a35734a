"""wmqlib.card: the model card's two files hold the same facts, and the command that regenerates the model."""

import json
from pathlib import Path

from wmqlib.card import write_model_card


def test_card_files_round_trip_and_name_the_command(tiny, tmp_path):
    card = json.loads((Path(tiny) / "card.json").read_text())
    write_model_card(card, tmp_path, "python -m wmqlib.train --preset tiny --out x")
    command = "python -m wmqlib.train --preset tiny --out x"
    assert json.loads((tmp_path / "card.json").read_text()) == {**card, "regenerate": command}
    text = (tmp_path / "MODEL_CARD.md").read_text()
    assert text.startswith(f"# {tmp_path.name}") and "Regenerate: `python -m wmqlib.train --preset tiny --out x`." in text
    assert f"| encoder parameters | {card['parameters']['encoder']:,} |" in text
    assert not list(tmp_path.glob("*.tmp"))
