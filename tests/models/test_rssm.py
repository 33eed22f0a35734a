"""The RSSM: its GRU cell, the planning API's shapes and semantics, wmq's format round trip, the architecture field,
and planning on the Wall with the unchanged planners and evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from wmqlib.envs import make_env, sample_episodes
from wmqlib.evaluate import evaluate
from wmqlib.models import (
    RSSM, CheckpointError, RSSMConfig, WorldModelConfig, config_from_dict, load_world_model, save_world_model,
)
from wmqlib.models.rssm import GRUCell
from wmqlib.plan import CEMConfig, GDConfig, MPCConfig, PlanningModel

B0, SAMPLES, HORIZON = 2, 3, 4


def inputs(model: RSSM, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Start images (B0, 1, 3, img, img), z-scored proprio (B0, 1, p) and actions (B0 * SAMPLES, HORIZON, Da)."""
    g = torch.Generator().manual_seed(seed)
    c = model.config
    visual = torch.rand(B0, 1, 3, c.img_size, c.img_size, generator=g) * 2 - 1
    proprio = torch.randn(B0, 1, c.proprio_dim, generator=g)
    actions = torch.randn(B0 * SAMPLES, HORIZON, model.action_dim, generator=g)
    return visual, proprio, actions


def test_gru_cell_computes_torch_gru_cell():
    cell, reference = GRUCell(5, 6), nn.GRUCell(5, 6)
    with torch.no_grad():
        reference.weight_ih.copy_(cell.ih.weight)
        reference.weight_hh.copy_(cell.hh.weight)
        reference.bias_ih.copy_(cell.ih.bias)
        reference.bias_hh.copy_(cell.hh.bias)
    x, h = torch.randn(7, 5), torch.randn(7, 6)
    torch.testing.assert_close(cell(x, h), reference(x, h))


def test_planning_api_shapes(tiny_rssm):
    model = tiny_rssm()
    c = model.config
    assert isinstance(model, PlanningModel)
    visual, proprio, actions = inputs(model)
    z = model.encode_obs(visual.expand(B0, 5, -1, -1, -1), proprio.expand(B0, 5, -1))
    assert z["visual"].shape == (B0, 5, 1, c.embed_dim) and z["proprio"].shape == (B0, 5, c.proprio_emb_dim)
    out = model.rollout(model.encode_obs(visual, proprio), actions)
    assert out["visual"].shape == (B0 * SAMPLES, HORIZON + 1, 1, c.embed_dim)
    assert out["proprio"].shape == (B0 * SAMPLES, HORIZON + 1, c.proprio_emb_dim)
    assert model.decode(out["visual"]).shape == (B0 * SAMPLES, HORIZON + 1, 3, c.img_size, c.img_size)
    with pytest.raises(ValueError, match=r"RSSM: z0\['visual'\] must have shape \(\*, 1, 1, 12\)"):
        model.rollout({"visual": z["visual"][:, :, None], "proprio": z["proprio"]}, actions)
    with pytest.raises(ValueError, match="2 start latents do not divide 5 action sequences"):
        model.rollout(model.encode_obs(visual, proprio), actions[:5])


def test_rollout_is_the_state_space_model_stepped_by_hand(tiny_rssm):
    """Index 0 is the start's embeddings; then h_0 = 0, s_0 = posterior mean, and per action the transition, GRU,
    prior mean and heads, each sequence from the start of its episode (episode-major)."""
    model = tiny_rssm()
    visual, proprio, actions = inputs(model)
    z0 = model.encode_obs(visual, proprio)
    with torch.no_grad():
        out = model.rollout(z0, actions)
        for b in range(B0 * SAMPLES):
            e, p = z0["visual"][b // SAMPLES, 0], z0["proprio"][b // SAMPLES]  # (1, Dv), (1, Ep)
            h = torch.zeros(1, model.config.deter_dim)
            mean, _ = model.posterior(torch.cat([h, e, p], -1)).chunk(2, -1)
            s, seen = mean, [(e, p)]
            for k in range(HORIZON):
                h = model.cell(model.transition(torch.cat([s, actions[b:b + 1, k]], -1)), h)
                s = model.prior(h).chunk(2, -1)[0]
                hs = torch.cat([h, s], -1)
                seen.append((model.visual_head(hs), model.proprio_head(hs)))
            torch.testing.assert_close(out["visual"][b, :, 0], torch.cat([v for v, _ in seen]))
            torch.testing.assert_close(out["proprio"][b], torch.cat([q for _, q in seen]))


def test_gaussian_std_is_softplus_plus_min_std(tiny_rssm):
    model = tiny_rssm()
    stats = torch.tensor([[0.5, -1.0, 0.0, 3.0, 0.0, -20.0, 1.0, 2.0]])
    mean, std = model.gaussian(stats)
    assert torch.equal(mean, stats[:, :4])
    torch.testing.assert_close(std, torch.log1p(torch.exp(stats[:, 4:])) + model.config.min_std)


def test_rollout_is_deterministic_and_differentiable_in_the_actions(tiny_rssm):
    model = tiny_rssm()
    visual, proprio, actions = inputs(model)
    z0 = model.encode_obs(visual, proprio)
    actions.requires_grad_(True)
    first = model.rollout(z0, actions)
    assert torch.equal(first["visual"], model.rollout(z0, actions)["visual"])
    first["visual"][:, -1].pow(2).sum().backward()
    assert torch.isfinite(actions.grad).all() and actions.grad[:, 0].abs().sum() > 0


def test_save_load_round_trip_is_bit_identical(tiny_rssm, tmp_path):
    model = tiny_rssm().set_normalization(action_mean=[0.1, -0.2], action_std=[0.5, 2.0], proprio_mean=[30.0, 32.0],
                                          proprio_std=[10.0, 12.0])
    folder = save_world_model(model, tmp_path / "rssm", provenance={"note": "test"})
    meta = json.loads((folder / "config.json").read_text())
    assert meta["config"]["architecture"] == "rssm" and meta["config"] == model.config.to_dict()
    loaded = load_world_model(folder)
    assert type(loaded) is RSSM and loaded.config == model.config and not loaded.training
    assert loaded.normalization() == model.normalization() and loaded.provenance["note"] == "test"
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    visual, proprio, actions = inputs(model)
    frames = ((visual[:, 0].permute(0, 2, 3, 1) + 1) * 127.5).to(torch.uint8)[:, None]
    raw = np.array([[[31.0, 33.0]], [[20.0, 50.0]]])
    with torch.no_grad():
        fp, again = (m.rollout(m.encode_obs(*m.prepare_obs(frames, raw)), actions) for m in (model, loaded))
        assert all(torch.equal(fp[k], again[k]) for k in ("visual", "proprio"))
        assert torch.equal(model.decode(fp["visual"]), loaded.decode(again["visual"]))


def test_a_dinowm_checkpoint_names_no_architecture(tmp_path):
    sizes = dict(env="wall", proprio_dim=2, img_size=16, patch_size=2, grid_size=2, encoder_dim=8, encoder_depth=1,
                 encoder_heads=1, encoder_mlp_dim=16, encoder_pos_grid=2, predictor_depth=1, predictor_heads=1,
                 predictor_dim_head=8, predictor_mlp_dim=16, decoder_channel=2, decoder_res_blocks=1,
                 decoder_res_channel=2, decoder_n_embed=4)
    from wmqlib.models import WorldModel

    folder = save_world_model(WorldModel(WorldModelConfig(**sizes)), tmp_path / "dinowm")
    saved = json.loads((folder / "config.json").read_text())["config"]
    assert "architecture" not in saved and type(config_from_dict(saved)) is WorldModelConfig
    assert type(config_from_dict({**saved, "architecture": "dinowm"})) is WorldModelConfig


def test_unknown_architecture_is_refused_naming_the_field(tiny_rssm, tmp_path):
    folder = save_world_model(tiny_rssm(), tmp_path / "rssm")
    path = folder / "config.json"
    meta = json.loads(path.read_text())
    meta["config"]["architecture"] = "transformer"
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"config.architecture must be one of \['dinowm', 'rssm'\], "
                                              r"got 'transformer'"):
        load_world_model(folder)
    with pytest.raises(ValueError, match=r"config.architecture must be one of \['dinowm', 'rssm'\], got 3"):
        config_from_dict({"architecture": 3})
    del meta["config"]["architecture"]  # an RSSM's fields read as DINO-WM's: refused, naming what is missing
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="records every WorldModelConfig field"):
        load_world_model(folder)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="RSSMConfig.architecture must be 'rssm', got 'dinowm'"):
        RSSMConfig(env="wall", proprio_dim=2, architecture="dinowm")
    with pytest.raises(ValueError, match="RSSMConfig.img_size must be divisible by 2 \\*\\* encoder_layers = 16"):
        RSSMConfig(env="wall", proprio_dim=2, img_size=40)
    with pytest.raises(ValueError, match="RSSMConfig.deter_dim must be a positive int, got 0"):
        RSSMConfig(env="wall", proprio_dim=2, deter_dim=0)
    with pytest.raises(ValueError, match="RSSMConfig.min_std must be a float > 0, got 0"):
        RSSMConfig(env="wall", proprio_dim=2, min_std=0)
    with pytest.raises(ValueError, match="RSSMConfig.env must be one of"):
        RSSMConfig(env="maze", proprio_dim=2)
    with pytest.raises(ValueError, match=r"RSSMConfig got unknown fields \['encoder_dim'\]"):
        RSSMConfig.from_dict({"env": "wall", "proprio_dim": 2, "encoder_dim": 8})
    with pytest.raises(TypeError, match="RSSM needs an RSSMConfig, got WorldModelConfig"):
        RSSM(WorldModelConfig(env="wall", proprio_dim=2))


@pytest.mark.parametrize("planner, mpc", [(CEMConfig(horizon=3, samples=16, topk=4, opt_steps=2), None),
                                          (CEMConfig(horizon=3, samples=16, topk=4, opt_steps=2), MPCConfig(2)),
                                          (GDConfig(horizon=3, opt_steps=2), None)],
                         ids=["CEM", "MPC-CEM", "GD"])
def test_the_unchanged_planners_and_evaluation_plan_the_wall(tiny_rssm, planner, mpc):
    env = make_env("wall", render_size=16)
    episodes = sample_episodes("wall", 2, seed=99)
    table = evaluate(tiny_rssm(), env, planner, episodes, mpc=mpc)
    assert len(table) == 2 and np.isfinite(table["visual_dist"]).all()
    assert set(table["success"]) <= {True, False}
