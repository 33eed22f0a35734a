"""The shipped small world models: loadable by short name, sized as documented, a rollout of the right shape."""

import json

import pytest
import torch

from wmqlib.models import available_checkpoints, load_world_model, resolve_checkpoint
from wmqlib.quant import find_points

SHIPPED = {"mini-wall": ("wall", 2), "mini-pusht": ("pusht", 4)}


def test_both_models_are_shipped():
    assert set(SHIPPED) <= set(available_checkpoints())


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_model_loads_and_rolls_out(name):
    env, proprio_dim = SHIPPED[name]
    model = load_world_model(name)
    c = model.config
    assert (c.env, c.proprio_dim, c.frameskip) == (env, proprio_dim, 5)
    folder = resolve_checkpoint(name)
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 10 * 2**20
    card = json.loads((folder / "card.json").read_text())
    assert card["architecture"] == c.to_dict()
    for run in ("open_loop", "mpc", "visual_only"):  # the card's diagnostics on the 50 protocol episodes
        assert card["planning"][run]["episodes"] == 50 and len(card["planning"][run]["ci95"]) == 2, run
    assert card["probe"]["error_over_tolerance"] > 0
    frames = torch.zeros(2, 1, c.img_size, c.img_size, 3, dtype=torch.uint8)
    visual, proprio = model.prepare_obs(frames, torch.zeros(2, 1, proprio_dim))
    z0 = model.encode_obs(visual, proprio)
    out = model.rollout(z0, torch.zeros(6, 5, model.action_dim))
    assert out["visual"].shape == (6, 6, c.num_patches, c.encoder_dim)
    assert out["proprio"].shape == (6, 6, c.proprio_emb_dim)
    assert torch.isfinite(out["visual"]).all()


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_models_have_the_papers_quantization_points(name):
    model = load_world_model(name)
    points = find_points(model)
    c = model.config
    roles = {}
    for linear in points.linears:
        roles.setdefault((linear.split(".")[0], points.role(linear)), []).append(linear)
    for part, depth in (("encoder", c.encoder_depth), ("predictor", c.predictor_depth)):
        for role in ("qkv", "proj", "fc1", "fc2"):
            assert len(roles[(part, role)]) == depth, (part, role)


def test_the_shipped_rssm_loads_plans_on_its_card_and_declares_its_own_points():
    model = load_world_model("mini-wall-rssm")
    c = model.config
    assert (c.architecture, c.env, c.frameskip) == ("rssm", "wall", 5)
    folder = resolve_checkpoint("mini-wall-rssm")
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 10 * 2**20
    card = json.loads((folder / "card.json").read_text())
    assert card["architecture"] == c.to_dict()
    for run in ("open_loop", "mpc", "visual_only"):  # the card level the architecture comparison reads
        assert card["planning"][run]["episodes"] == 50 and len(card["planning"][run]["ci95"]) == 2, run
    frames = torch.zeros(2, 1, c.img_size, c.img_size, 3, dtype=torch.uint8)
    z0 = model.encode_obs(*model.prepare_obs(frames, torch.zeros(2, 1, c.proprio_dim)))
    out = model.rollout(z0, torch.zeros(6, 5, model.action_dim))
    assert out["visual"].shape == (6, 6, 1, c.embed_dim) and torch.isfinite(out["visual"]).all()
    points = find_points(model)
    assert {points.part(p) for p in points.linears} == {"encoder", "predictor"}
    assert any(p.startswith("encoder.convs.") for p in points.linears)
