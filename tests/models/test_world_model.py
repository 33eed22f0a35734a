"""WorldModel: latent layout, rollout semantics and equivalences, normalisation, dtype and input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wmqlib.models import WorldModel, WorldModelConfig


def observations(model: WorldModel, batch: int, frames: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random visual (B, T, 3, img, img) in [-1, 1] and z-scored proprio (B, T, p)."""
    g = torch.Generator().manual_seed(seed)
    c = model.config
    visual = torch.rand(batch, frames, 3, c.img_size, c.img_size, generator=g) * 2 - 1
    return visual, torch.randn(batch, frames, c.proprio_dim, generator=g)


def manual_rollout(model: WorldModel, visual: torch.Tensor, proprio: torch.Tensor, actions: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """DINO-WM's loop written out: encode the start with the first action, then H predictor calls on the last
    num_hist frames, each prediction's action slice replaced by the next action."""
    c = model.config
    b, horizon = actions.shape[:2]
    dv, ep = c.encoder_dim, c.proprio_emb_dim
    act = model.action_encoder(actions)
    frames = [model.encode(visual.expand(b, -1, -1, -1, -1), proprio.expand(b, -1, -1), actions[:, :1])[:, 0]]
    for t in range(horizon):
        pred = model.predict(torch.stack(frames[-c.num_hist:], dim=1))[:, -1]
        if t + 1 < horizon:
            pred = torch.cat([pred[..., :dv + ep], act[:, t + 1, None].expand(-1, c.num_patches, -1)], dim=-1)
        frames.append(pred)
    z = torch.stack(frames, dim=1)
    return z[..., :dv], z[:, :, 0, dv:dv + ep]


@pytest.mark.parametrize("num_hist, horizon", [(3, 5), (1, 4), (2, 1)])
def test_rollout_equals_manual_predictor_calls(tiny_config: WorldModelConfig, num_hist: int, horizon: int) -> None:
    model = WorldModel(tiny_config.replace(num_hist=num_hist), seed=1).eval()
    visual, proprio = observations(model, 1)
    actions = torch.randn(4, horizon, model.action_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model.rollout(model.encode_obs(visual, proprio), actions)
        ref_visual, ref_proprio = manual_rollout(model, visual, proprio, actions)
    assert out["visual"].shape == (4, horizon + 1, 4, 16) and out["proprio"].shape == (4, horizon + 1, 3)
    torch.testing.assert_close(out["visual"], ref_visual, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out["proprio"], ref_proprio, atol=1e-6, rtol=1e-6)


def test_rollout_gradients_equal_manual_path(tiny_model: WorldModel) -> None:
    visual, proprio = observations(tiny_model, 1)
    actions = torch.randn(3, 4, tiny_model.action_dim, generator=torch.Generator().manual_seed(3))
    grads = []
    for run in ("buffer", "manual"):
        a = actions.clone().requires_grad_(True)
        if run == "buffer":
            out = tiny_model.rollout(tiny_model.encode_obs(visual, proprio), a)
            loss = out["visual"][:, -1].square().mean() + out["proprio"][:, -1].square().mean()
        else:
            v, p = manual_rollout(tiny_model, visual, proprio, a)
            loss = v[:, -1].square().mean() + p[:, -1].square().mean()
        (grad,) = torch.autograd.grad(loss, a)
        grads.append(grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_encode_once_equals_per_sample_encoding(tiny_model: WorldModel) -> None:
    visual, proprio = observations(tiny_model, 1)
    actions = torch.randn(5, 3, tiny_model.action_dim, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        once = tiny_model.rollout(tiny_model.encode_obs(visual, proprio), actions)
        per_sample = [tiny_model.encode_obs(visual, proprio) for _ in range(5)]  # what DINO-WM's CEM does
        z0 = {k: torch.cat([z[k] for z in per_sample]) for k in ("visual", "proprio")}
        repeated = tiny_model.rollout(z0, actions)
    assert torch.equal(once["visual"], repeated["visual"]) and torch.equal(once["proprio"], repeated["proprio"])
    assert torch.equal(once["visual"][:, 0], z0["visual"][:, 0])  # index 0 is the start itself


def test_grouped_starts_are_episode_major(tiny_model: WorldModel) -> None:
    """B0 starts and B = B0 * S sequences: sequence b rolls out from start b // S."""
    visual, proprio = observations(tiny_model, 2)
    actions = torch.randn(6, 2, tiny_model.action_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        z0 = tiny_model.encode_obs(visual, proprio)
        grouped = tiny_model.rollout(z0, actions)
        for episode in range(2):
            alone = tiny_model.rollout({k: v[episode:episode + 1] for k, v in z0.items()},
                                       actions[3 * episode:3 * episode + 3])
            torch.testing.assert_close(grouped["visual"][3 * episode:3 * episode + 3], alone["visual"])
    with pytest.raises(ValueError, match="2 start latents do not divide 5 action sequences"):
        tiny_model.rollout(z0, actions[:5])


def test_encode_layout_and_split(tiny_model: WorldModel) -> None:
    visual, proprio = observations(tiny_model, 2, frames=3)
    action = torch.randn(2, 3, tiny_model.action_dim)
    with torch.no_grad():
        z = tiny_model.encode(visual, proprio, action)
        obs = tiny_model.encode_obs(visual, proprio)
        parts = tiny_model.split_latent(z)
    assert z.shape == (2, 3, 4, 16 + 3 + 5)
    assert torch.equal(parts["visual"], obs["visual"]) and torch.equal(parts["proprio"], obs["proprio"])
    assert torch.equal(parts["action"], tiny_model.action_encoder(action).detach())
    assert torch.equal(z[..., 16:19], obs["proprio"][:, :, None].expand(-1, -1, 4, -1))  # tiled on every token


def test_predict_is_the_forward_pass_and_checks_the_window(tiny_model: WorldModel) -> None:
    visual, proprio = observations(tiny_model, 1, frames=3)
    action = torch.randn(1, 3, tiny_model.action_dim)
    with torch.no_grad():
        assert torch.equal(tiny_model(visual, proprio, action),
                           tiny_model.predict(tiny_model.encode(visual, proprio, action)))
    with pytest.raises(ValueError, match="4 frames, the predictor window is num_hist=3"):
        tiny_model.predict(torch.zeros(1, 4, 4, 24))


def test_decode_returns_images_of_img_size(tiny_model: WorldModel) -> None:
    visual, proprio = observations(tiny_model, 2, frames=3)
    with torch.no_grad():
        images = tiny_model.decode(tiny_model.encode_obs(visual, proprio)["visual"])
    assert images.shape == (2, 3, 3, 16, 16)


def test_prepare_obs_scales_pixels_and_zscores_proprio(tiny_model: WorldModel) -> None:
    frames = np.full((1, 2, 20, 20, 3), 255, dtype=np.uint8)
    frames[0, 0] = 0
    raw = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 7.0, 0.0]]])
    visual, proprio = tiny_model.prepare_obs(frames, raw)
    assert visual.shape == (1, 2, 3, 16, 16)  # resized from 20 px to img_size
    assert (visual[0, 0] == -1).all() and torch.allclose(visual[0, 1], torch.ones(3, 16, 16))
    assert torch.equal(proprio, torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1.0, -2.0, 2.0, -1.0]]]))


def test_env_actions_round_trip(tiny_model: WorldModel) -> None:
    raw = torch.tensor([[0.6, -2.2], [0.1, -0.2], [1.1, 1.8], [0.1, 3.8]])  # 4 env steps, frameskip 2
    actions = tiny_model.env_to_actions(raw)
    assert torch.allclose(actions, torch.tensor([[1.0, -1.0, 0.0, 0.0], [2.0, 1.0, 0.0, 2.0]]))
    torch.testing.assert_close(tiny_model.actions_to_env(actions), raw)
    z = torch.randn(2, 7, 3, 4)
    torch.testing.assert_close(tiny_model.env_to_actions(tiny_model.actions_to_env(z)), z)


def test_bf16_keeps_float32_statistics_and_tracks_fp32(tiny_model: WorldModel) -> None:
    visual, proprio = observations(tiny_model, 1)
    actions = torch.randn(4, 3, tiny_model.action_dim, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = tiny_model.rollout(tiny_model.encode_obs(visual, proprio), actions)
        stats = tiny_model.normalization()
        model = tiny_model.to(torch.bfloat16)
        out = model.rollout(model.encode_obs(visual, proprio), actions)  # float32 inputs are cast
    assert model.dtype == torch.bfloat16 and model.action_mean.dtype == torch.float32
    assert model.normalization() == stats
    assert out["visual"].dtype == torch.bfloat16
    torch.testing.assert_close(out["visual"].float(), ref["visual"], atol=0.1, rtol=0.05)


def test_seeded_construction_is_deterministic_and_leaves_global_rng(tiny_config: WorldModelConfig) -> None:
    state = torch.get_rng_state()
    a, b, c = WorldModel(tiny_config, seed=7), WorldModel(tiny_config, seed=7), WorldModel(tiny_config, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.predictor.pos_embedding, c.predictor.pos_embedding)


@pytest.mark.parametrize("call, message", [
    (lambda m: m.rollout({"visual": torch.zeros(1, 1, 4, 16), "proprio": torch.zeros(1, 1, 3)}, torch.zeros(2, 3, 5)),
     r"actions must have shape \(\*, \*, 4\), got \(2, 3, 5\)"),
    (lambda m: m.rollout({"visual": torch.zeros(1, 2, 4, 16), "proprio": torch.zeros(1, 1, 3)}, torch.zeros(2, 3, 4)),
     r"z0\['visual'\] must have shape \(\*, 1, 4, 16\)"),
    (lambda m: m.encode_obs(torch.zeros(1, 1, 3, 8, 8), torch.zeros(1, 1, 4)),
     r"visual must have shape \(\*, \*, 3, 16, 16\)"),
    (lambda m: m.encode_obs(torch.zeros(1, 1, 3, 16, 16), torch.zeros(1, 2, 4)), r"proprio must have shape \(1, 1, 4\)"),
    (lambda m: m.encode_obs(np.zeros((1, 1, 3, 16, 16)), torch.zeros(1, 1, 4)), "visual must be a torch.Tensor"),
    (lambda m: m.rollout({"visual": torch.zeros(1, 1, 4, 16, device="meta"), "proprio": torch.zeros(1, 1, 3)},
                         torch.zeros(2, 3, 4)), "is on meta but the model is on cpu"),
    (lambda m: m.set_normalization(action_std=[1.0, 0.0]), r"action_std must be finite and > 0"),
    (lambda m: m.set_normalization(proprio_mean=[1.0, 2.0]), r"proprio_mean must have shape \(4,\), got \(2,\)"),
    (lambda m: m.actions_to_env(torch.zeros(3, 5)), r"actions must have shape \(\.\.\., T, 4\)"),
])
def test_bad_inputs_raise_clear_errors(tiny_model: WorldModel, call, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        call(tiny_model)
