"""Fixtures for the planner tests: seeded quadratic costs and a tiny hand-built world model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn


class QuadraticCost:
    """cost(a)[e, s] = sum_{h, d} w[e, h, d] * (a[e, s, h, d] - target[e, h, d])^2, optimum at ``target``.

    Episode e's target and weights come from seed ``seeds[e]`` alone, so any subset of episodes is the same problem.
    """

    def __init__(self, seeds: list[int], horizon: int = 5, action_dim: int = 4, w_range=(0.2, 0.8)) -> None:
        targets, weights = [], []
        for s in seeds:
            g = torch.Generator().manual_seed(1000 + s)
            targets.append(torch.randn(horizon, action_dim, generator=g).clamp(-1.5, 1.5))
            weights.append(w_range[0] + (w_range[1] - w_range[0]) * torch.rand(horizon, action_dim, generator=g))
        self.target, self.weight = torch.stack(targets), torch.stack(weights)

    def __call__(self, actions: torch.Tensor) -> torch.Tensor:  # (E, S, H, Da) -> (E, S)
        return (self.weight[:, None] * (actions - self.target[:, None]) ** 2).sum(dim=(2, 3))


class TinyWorldModel(nn.Module):
    """A hand-built world model implementing the PlanningModel protocol on 8x8 images.

    4 patches of 4x4 pixels -> visual latents (B, T, 4, 6); proprio (2,) -> (B, T, 3); frameskip 2, env action 2,
    so Da = 4. Rollout: residual MLP step on [visual | proprio | action] per patch.
    """

    frameskip, env_action_dim = 2, 2

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Linear(3 * 4 * 4, 6)
        self.proprio_encoder = nn.Linear(2, 3)
        self.action_encoder = nn.Linear(self.action_dim, 5)
        self.predictor = nn.Sequential(nn.Linear(6 + 3 + 5, 16), nn.GELU(), nn.Linear(16, 9))
        self.register_buffer("action_mean", torch.tensor([0.1, -0.2]))
        self.register_buffer("action_std", torch.tensor([2.0, 0.5]))
        self.register_buffer("proprio_mean", torch.tensor([30.0, 30.0]))
        self.register_buffer("proprio_std", torch.tensor([10.0, 10.0]))
        self.rollout_batches: list[tuple[int, int]] = []  # (B0, B) of every rollout call, for tests

    @property
    def action_dim(self) -> int:
        return self.frameskip * self.env_action_dim

    def prepare_obs(self, frames, proprio):
        visual = frames.permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
        return visual, (proprio.float() - self.proprio_mean) / self.proprio_std

    def encode_obs(self, visual, proprio):
        b, t = visual.shape[:2]
        patches = visual.reshape(b, t, 3, 2, 4, 2, 4).permute(0, 1, 3, 5, 2, 4, 6).reshape(b, t, 4, 48)
        return {"visual": self.encoder(patches), "proprio": self.proprio_encoder(proprio)}

    def rollout(self, z0, actions):
        b = actions.shape[0]
        self.rollout_batches.append((z0["visual"].shape[0], b))
        repeat = b // z0["visual"].shape[0]  # B0 divides B, episode-major, as WorldModel.rollout
        vis = z0["visual"][:, 0].repeat_interleave(repeat, dim=0)
        pro = z0["proprio"][:, 0].repeat_interleave(repeat, dim=0)
        vis_seq, pro_seq = [vis], [pro]
        for t in range(actions.shape[1]):
            act = self.action_encoder(actions[:, t])
            x = torch.cat([vis, pro[:, None].expand(-1, 4, -1), act[:, None].expand(-1, 4, -1)], dim=-1)
            delta = self.predictor(x)
            vis, pro = vis + delta[..., :6], pro + delta[..., 6:].mean(dim=1)
            vis_seq.append(vis)
            pro_seq.append(pro)
        return {"visual": torch.stack(vis_seq, 1), "proprio": torch.stack(pro_seq, 1)}

    def actions_to_env(self, actions):
        raw = actions.reshape(*actions.shape[:-1], self.frameskip, self.env_action_dim)
        raw = raw * self.action_std + self.action_mean
        return raw.flatten(-3, -2)


@pytest.fixture
def quadratic():
    return QuadraticCost


@pytest.fixture
def tiny_model():
    return TinyWorldModel(seed=0)


@pytest.fixture
def tiny_obs():
    """Start and goal observations of 3 episodes for the tiny model: uint8 (3, 8, 8, 3), proprio (3, 2)."""
    g = torch.Generator().manual_seed(7)
    def obs():
        return {"visual": torch.randint(0, 256, (3, 8, 8, 3), generator=g, dtype=torch.uint8).numpy(),
                "proprio": (torch.rand(3, 2, generator=g) * 60).numpy()}
    return obs(), obs()


@pytest.fixture
def wall_world_model():
    """A real (random, untrained) wmqlib WorldModel for the Wall, 4 tokens, 2 predictor layers: fast on CPU."""
    from wmqlib.models import WorldModel, WorldModelConfig

    cfg = WorldModelConfig(env="wall", proprio_dim=2, num_hist=1, frameskip=5, img_size=16, patch_size=4,
                           grid_size=2, encoder_dim=16, encoder_depth=1, encoder_heads=2, encoder_mlp_dim=32,
                           encoder_pos_grid=2, predictor_depth=2, predictor_heads=2, predictor_dim_head=8,
                           predictor_mlp_dim=32, predictor_dropout=0.0, proprio_emb_dim=4, action_emb_dim=4,
                           decoder_channel=4, decoder_res_blocks=1, decoder_res_channel=4, decoder_n_embed=8)
    return WorldModel(cfg, seed=1).eval()


@pytest.fixture
def wall_obs():
    """Start and goal observations of 3 Wall episodes for ``wall_world_model``: uint8 (3, 16, 16, 3), proprio (3, 2)."""
    from wmqlib.envs import make_env, sample_episodes

    env = make_env("wall", render_size=16)
    eps = sample_episodes("wall", 3, seed=99)
    return tuple(env.observe(np.stack([getattr(ep, f) for ep in eps])) for f in ("start_state", "goal_state"))
