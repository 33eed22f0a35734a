"""wmqlib.qat: LSQ fine-tuning lowers the quantized model's latent loss, saves weights on the learned grid, and is
deterministic; the straight-through gradients are LSQ's (hand-derived values); bad input is refused by name."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from wmqlib.models import CheckpointError, load_world_model, save_world_model
from wmqlib.qat import LSQWeight, attach_lsq, bake, finetune, main
from wmqlib.quant import PerChannel, QuantSpec, fake_quantize, find_points
from wmqlib.validate import InvalidValue

BITS = 3


@pytest.fixture(scope="module")
def qat(tiny, tmp_path_factory):
    """The tiny Wall model fine-tuned at W3 for 40 steps and saved: (returned model, its folder)."""
    out = tmp_path_factory.mktemp("qat") / "tiny-qat-w3"
    torch.set_num_threads(1)
    model = finetune(tiny, BITS, steps=40, lr=1e-3, batch_size=8, seed=0, out=out, progress=False)
    return model, out


def test_qat_lowers_the_held_out_loss_below_rtn(qat):
    card = json.loads((qat[1] / "card.json").read_text())
    loss = card["heldout_loss"]
    assert set(loss) == {"fp", f"rtn_w{BITS}", f"qat_w{BITS}"}
    assert loss[f"qat_w{BITS}"]["prediction"] < loss[f"rtn_w{BITS}"]["prediction"]
    assert loss["fp"]["encoder"] == 0.0  # the FP model's latents are the targets
    assert card["train_loss"]["last20"] < card["train_loss"]["first"]


def test_saved_weights_lie_on_a_grid_of_at_most_2_to_the_b_values_per_row(qat, tiny):
    model = load_world_model(qat[1])
    base = load_world_model(tiny)
    names = find_points(model).linears
    assert len(names) == 8  # tiny: 1 encoder block + 1 predictor layer, 4 linears each
    for name in names:
        weight = model.get_submodule(name).weight
        for row in weight:
            assert len(torch.unique(row)) <= 2**BITS - 1  # narrow symmetric grid: codes -3..3
        assert not torch.equal(weight, base.get_submodule(name).weight)
    for part in ("decoder", "proprio_encoder"):  # frozen
        for (key, value), (_, ref) in zip(getattr(model, part).state_dict().items(),
                                          getattr(base, part).state_dict().items()):
            assert torch.equal(value, ref), key


def test_saved_checkpoint_round_trips_and_its_card_names_the_base(qat, tiny):
    model, out = qat
    loaded = load_world_model(out)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    card = json.loads((out / "card.json").read_text())
    sha = hashlib.sha256((Path(tiny) / "model.safetensors").read_bytes()).hexdigest()
    assert card["base"] == {"checkpoint": Path(tiny).name, "sha256": sha}
    assert loaded.provenance["base_sha256"] == sha and loaded.provenance["trained_by"] == "wmqlib.qat"
    assert (card["w_bits"], card["steps"], card["lr"], card["batch_size"], card["seed"]) == (BITS, 40, 1e-3, 8, 0)
    assert card["command"] == (f"python -m wmqlib.qat --checkpoint {tiny} --bits {BITS} --steps 40 --lr 0.001 "
                               f"--batch-size 8 --seed 0 --device cpu --out {out}")
    text = (out / "MODEL_CARD.md").read_text()
    assert f"| qat_w{BITS} | {card['heldout_loss'][f'qat_w{BITS}']['prediction']:.5g} |" in text
    assert not list(out.glob("*.tmp"))


def test_same_seed_same_weights_other_seed_other_weights(tiny):
    runs = [finetune(tiny, 4, steps=3, lr=1e-3, batch_size=4, seed=seed, progress=False) for seed in (5, 5, 6)]
    states = [run.state_dict() for run in runs]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_step_sizes_start_on_rtns_grid():
    weight = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    for bits in (2, 4, 8):
        expected = fake_quantize(weight, QuantSpec(bits, PerChannel(), symmetric=True))
        assert torch.equal(LSQWeight(weight, bits)(weight), expected)


def test_straight_through_gradients_are_lsqs():
    # 2 bits: codes -1..1 (Q = 1); step 0.5; w / s = [0.4, -0.6, 2, -6]: the first two inside, the last two clipped.
    weight = torch.tensor([[0.2, -0.3, 1.0, -3.0]], requires_grad=True)
    lsq = LSQWeight(weight, 2)
    with torch.no_grad():
        lsq.step.fill_(0.5)
    w_hat = lsq(weight)
    assert torch.equal(w_hat, torch.tensor([[0.0, -0.5, 0.5, -0.5]]))
    (w_hat * torch.tensor([[1.0, 2.0, 3.0, 4.0]])).sum().backward()
    assert torch.equal(weight.grad, torch.tensor([[1.0, 2.0, 0.0, 0.0]]))  # passes inside, zero outside
    # d w_hat / ds: round(w/s) - w/s inside (-0.4, -0.4), +-Q outside (+1, -1); LSQ scale g = 1 / sqrt(4 * 1)
    expected = (1 * -0.4 + 2 * -0.4 + 3 * 1 + 4 * -1) * 0.5
    assert lsq.step.grad.item() == pytest.approx(expected, abs=1e-6)


def test_bake_restores_the_plain_state_dict_keys(tiny):
    model = load_world_model(tiny)
    keys = set(model.state_dict())
    names = attach_lsq(model, 4)
    state = model.state_dict()
    assert f"{names[0]}.parametrizations.weight.original" in state and f"{names[0]}.weight" not in state
    bake(model)
    assert set(model.state_dict()) == keys  # the order may differ: safetensors and load_state_dict go by key


@pytest.mark.parametrize("bits", [1, 9, 16])
def test_bits_outside_2_to_8_are_refused(tiny, bits):
    with pytest.raises(InvalidValue, match="w_bits"):
        finetune(tiny, bits, steps=1, progress=False)


@pytest.mark.parametrize("field, kwargs", [("steps", {"steps": 0}), ("lr", {"steps": 1, "lr": 0.0}),
                                           ("batch_size", {"steps": 1, "batch_size": 0})])
def test_bad_optimisation_settings_are_refused(tiny, field, kwargs):
    with pytest.raises(InvalidValue, match=field):
        finetune(tiny, 4, progress=False, **kwargs)


def test_a_path_that_is_not_a_checkpoint_is_refused(tmp_path, tiny):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        finetune(tmp_path / "absent", 4, steps=1, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a wmq checkpoint"):
        finetune(tmp_path / "empty", 4, steps=1, progress=False)
    model = load_world_model(tiny)
    model.provenance = {}  # e.g. a converted DINO-WM release: nothing says how its training data were made
    save_world_model(model, tmp_path / "no-recipe")
    with pytest.raises(CheckpointError, match="no training recipe"):
        finetune(tmp_path / "no-recipe", 4, steps=1, progress=False)


def test_cli_reports_bad_bits_by_name(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", tiny, "--bits", "9", "--steps", "1", "--out", str(tmp_path / "x"), "--quiet"])
    assert exit_info.value.code == 2
    assert "w_bits" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
