"""The training stages of ``wmqlib.train``, each one ``fitting.fit`` of its own loss: the autoencoder encoder, the
joint-embedding stage, the teacher-forced predictor, its rollout fine-tune and the decoder of the joint recipe; for
the RSSM, its joint stage and its dynamics stage on the frozen embedding (``wmqlib.rssm_loss``).
Every stage takes the model, the recipe's data, the ``TrainConfig`` and its batch generator, and returns its
per-step losses; a ``RunState`` makes it resumable."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from wmqlib.envs import TrajectoryData, env_class
from wmqlib.fitting import (Windows, background_frame, dynamics_parameters, fit, foreground_weights, latent_losses,
                            uint8_to_visual)
from wmqlib.joint import InverseDynamics, JointWeights, regularisers
from wmqlib.models import RSSM, WorldModel, WorldModelBase
from wmqlib.rssm_loss import RSSMWeights, rssm_losses
from wmqlib.recipes import TrainConfig
from wmqlib.resume import RunState


def state_readout(model: WorldModel, data: TrajectoryData, cfg: TrainConfig) -> tuple[torch.nn.Linear, torch.Tensor]:
    """The linear state read-out of ``cfg.state_weight``: a map from the flattened visual tokens (P * Dv) of one
    frame to the env's ``state_features`` z-scored over the data, drawn from a generator seeded ``cfg.seed + 2`` (the
    global torch generator is left alone) and discarded after training; returns it and its targets (N, T+1, F) on
    the model's device."""
    states = data.states.reshape(-1, data.states.shape[-1])
    features = env_class(cfg.env).state_features(states)  # (N*(T+1), F)
    features = (features - features.mean(axis=0)) / np.maximum(features.std(axis=0), 1e-6)
    targets = torch.from_numpy(features.astype(np.float32)).to(model.device).reshape(*data.states.shape[:2], -1)
    c = model.config
    readout = torch.nn.Linear(c.num_patches * c.encoder_dim, targets.shape[-1]).to(model.device)
    with torch.no_grad():
        init = torch.Generator().manual_seed(cfg.seed + 2)
        readout.weight.copy_(torch.randn(readout.weight.shape, generator=init) / math.sqrt(readout.in_features))
        readout.bias.zero_()
    return readout, targets


def pretrain_encoder(model: WorldModel, data: TrajectoryData, cfg: TrainConfig, gen: torch.Generator,
                     progress: bool = True, run: RunState | None = None) -> list[float]:
    """Train encoder + decoder as an autoencoder on single frames; returns per-step losses.

    The loss is the pixel MSE of ``decode(encode(x))``, weighted by :func:`foreground_weights` when
    ``cfg.foreground_weight > 0`` (normalised by the batch's mean weight, so it stays an MSE in scale), plus
    ``cfg.state_weight`` times the MSE of a linear state read-out from the tokens when that is > 0 (the read-out is
    built from a generator seeded ``cfg.seed + 2`` and is not part of the saved model).
    """
    frames = torch.from_numpy(data.frames.reshape(-1, *data.frames.shape[2:])).to(model.device)  # (N*(T+1), H, W, 3)
    proprio = torch.zeros(cfg.encoder_batch, 1, model.config.proprio_dim, device=model.device)
    background = torch.from_numpy(background_frame(data.frames.reshape(-1, *data.frames.shape[2:]), cfg.seed))
    background = background.to(model.device)
    readout, targets = state_readout(model, data, cfg)
    targets = targets.flatten(0, 1)  # (N*(T+1), F)

    def loss_fn(_: torch.Tensor) -> torch.Tensor:
        idx = torch.randint(0, len(frames), (cfg.encoder_batch,), generator=gen).to(model.device)
        x = uint8_to_visual(frames[idx])[:, None]  # (B, 1, 3, H, W)
        tokens = model.encode_obs(x, proprio)["visual"]  # (B, 1, P, Dv)
        if cfg.foreground_weight:
            w = foreground_weights(frames[idx], background, cfg.foreground_weight)  # (B, 1, 1, H, W)
            loss = (w * (model.decode(tokens) - x) ** 2).mean() / w.mean()
        else:
            loss = F.mse_loss(model.decode(tokens), x)
        if cfg.state_weight:
            loss = loss + cfg.state_weight * F.mse_loss(readout(tokens.flatten(1)), targets[idx])
        return loss

    params = list(model.encoder.parameters()) + list(model.decoder.parameters())
    if cfg.state_weight:
        params += list(readout.parameters())
    return fit(params, loss_fn, cfg.encoder_steps, cfg.encoder_lr, cfg.weight_decay, gen, "encoder (autoencoder)",
                progress, run, model)


def train_predictor(model: WorldModel, data: TrajectoryData, latents: torch.Tensor, cfg: TrainConfig,
                    gen: torch.Generator, progress: bool = True, run: RunState | None = None,
                    stage: str = "predictor") -> list[float]:
    """DINO-WM's teacher-forced latent MSE over windows of frames ``frameskip`` env steps apart.

    latents: frozen visual latents (N, T+1, P, Dv). Trains the predictor and the action encoder. The loss is the
    MSE between predicted and encoded next frames over the visual and proprio slices of the latent; with
    ``cfg.rollout_steps = k > 0`` the same MSE of a k-step open-loop ``model.rollout`` from the window's first
    frame is added (the computation planning runs), so errors that compound over the horizon are trained too.
    """
    c = model.config
    windows = Windows(data, max(c.num_hist, cfg.rollout_steps) + 1, c.frameskip, model.device)

    def loss_fn(_: torch.Tensor) -> torch.Tensor:
        traj, start = windows.draw(cfg.predictor_batch, gen)
        frames, actions, proprio = windows.gather(traj, start)
        with torch.no_grad():
            pemb = model.proprio_encoder(proprio)  # (B, L, Ep), the fixed embedding
        return latent_losses(model, latents[traj.to(model.device)[:, None], frames], pemb, actions, cfg.rollout_steps)

    params = list(model.predictor.parameters()) + list(model.action_encoder.parameters())
    return fit(params, loss_fn, cfg.predictor_steps, cfg.predictor_lr, cfg.weight_decay, gen, stage, progress,
                run, model)


def finetune_rollout(model: WorldModel, data: TrajectoryData, latents: torch.Tensor, cfg: TrainConfig,
                     progress: bool = True, run: RunState | None = None, gen: torch.Generator | None = None
                     ) -> list[float]:
    """Second predictor stage: teacher forcing plus the ``cfg.rollout_steps``-step rollout loss (no-op when
    ``cfg.finetune_steps`` is 0).
    ``gen``: its batch generator (default: a fresh one seeded ``cfg.seed + 1``; a resumable run passes its own)."""
    if not cfg.finetune_steps:
        return []
    gen = gen if gen is not None else torch.Generator().manual_seed(cfg.seed + 1)
    stage = dataclasses.replace(cfg, predictor_steps=cfg.finetune_steps, predictor_lr=cfg.finetune_lr)
    return train_predictor(model, data, latents, stage, gen, progress, run, "rollout fine-tune")


def train_joint(model: WorldModel, data: TrajectoryData, cfg: TrainConfig, gen: torch.Generator,
                progress: bool = True, run: RunState | None = None) -> list[float]:
    """Encoder, predictor and action encoder trained together with ``wmqlib.joint``'s loss; returns per-step
    losses. The inverse-dynamics head is drawn from ``cfg.seed + 3`` and discarded afterwards."""
    c = model.config
    windows = Windows(data, max(c.num_hist, cfg.rollout_steps, 1) + 1, c.frameskip, model.device)
    idm = InverseDynamics(c.num_patches, c.encoder_dim, c.action_dim, seed=cfg.seed + 3).to(model.device)
    weights = JointWeights(cfg.var_weight, cfg.cov_weight, cfg.idm_weight, cfg.rank_weight)
    zeros = torch.zeros(cfg.joint_batch, windows.length, c.proprio_dim, device=model.device)
    readout, targets = state_readout(model, data, cfg)  # (N, T+1, F) targets; used when cfg.state_weight > 0

    def loss_fn(_: torch.Tensor) -> torch.Tensor:
        traj, start = windows.draw(cfg.joint_batch, gen)
        frames, actions, proprio = windows.gather(traj, start)
        vis = model.encode_obs(uint8_to_visual(windows.pixels(traj, frames)), zeros)["visual"]  # (B, L, P, Dv)
        with torch.no_grad():
            pemb = model.proprio_encoder(proprio)  # (B, L, Ep), the fixed embedding
        loss = latent_losses(model, vis, pemb, actions, cfg.rollout_steps)
        if cfg.state_weight:
            rows = (traj.to(model.device)[:, None], frames)
            loss = loss + cfg.state_weight * F.mse_loss(readout(vis.flatten(2)), targets[rows])
        return loss + sum(regularisers(vis, idm, actions, weights).values())

    params = [*model.encoder.parameters(), *model.predictor.parameters(), *model.action_encoder.parameters(),
              *idm.parameters(), *(readout.parameters() if cfg.state_weight else ())]
    return fit(params, loss_fn, cfg.joint_steps, cfg.joint_lr, cfg.weight_decay, gen, "joint embedding", progress,
                run, model)


def train_decoder(model: WorldModelBase, data: TrajectoryData, cfg: TrainConfig, gen: torch.Generator,
                  progress: bool = True, run: RunState | None = None) -> list[float]:
    """The conv decoder trained on the frozen encoder's latents (pixel MSE), for the imagined-frame figures only:
    it never shapes the latent. Returns per-step losses."""
    frames = torch.from_numpy(data.frames.reshape(-1, *data.frames.shape[2:])).to(model.device)  # (N*(T+1),H,W,3)
    proprio = torch.zeros(cfg.encoder_batch, 1, model.config.proprio_dim, device=model.device)

    def loss_fn(_: torch.Tensor) -> torch.Tensor:
        idx = torch.randint(0, len(frames), (cfg.encoder_batch,), generator=gen).to(model.device)
        x = uint8_to_visual(frames[idx])[:, None]  # (B, 1, 3, H, W)
        with torch.no_grad():
            tokens = model.encode_obs(x, proprio)["visual"]  # (B, 1, P, Dv)
        return F.mse_loss(model.decode(tokens), x)

    return fit(list(model.decoder.parameters()), loss_fn, cfg.decoder_steps, cfg.encoder_lr, cfg.weight_decay, gen,
                "decoder", progress, run, model)


RSSM_JOINT, RSSM_DYNAMICS = "RSSM joint", "RSSM dynamics"  # the RSSM's stage names (``fitting.fit``'s desc)


def train_rssm(model: RSSM, data: TrajectoryData, cfg: TrainConfig, gen: torch.Generator, progress: bool = True,
               run: RunState | None = None) -> list[float]:
    """The RSSM's encoder and state-space model trained together on ``wmqlib.rssm_loss``'s objective, over windows of
    ``cfg.rollout_steps + 1`` frames, ``cfg.joint_steps`` steps at batch ``joint_batch`` and peak rate ``joint_lr``;
    returns per-step losses. The proprio encoder stays fixed; the inverse-dynamics head is drawn from
    ``cfg.seed + 3`` and discarded afterwards; batches and the posterior's noise come from ``gen``."""
    c = model.config
    windows = Windows(data, cfg.rollout_steps + 1, c.frameskip, model.device)
    idm = InverseDynamics(1, c.embed_dim, c.action_dim, seed=cfg.seed + 3).to(model.device)
    joint = JointWeights(cfg.var_weight, cfg.cov_weight, cfg.idm_weight, cfg.rank_weight)
    weights = RSSMWeights(cfg.kl_weight, cfg.free_bits)
    model.proprio_encoder.requires_grad_(False)

    def loss_fn(_: torch.Tensor) -> torch.Tensor:
        traj, start = windows.draw(cfg.joint_batch, gen)
        frames, actions, proprio = windows.gather(traj, start)
        e = model.encode_obs(uint8_to_visual(windows.pixels(traj, frames)), proprio)["visual"][:, :, 0]  # (B, L, Dv)
        with torch.no_grad():
            p = model.proprio_encoder(proprio)  # (B, L, Ep), the fixed embedding
        return sum(rssm_losses(model, e, p, actions, gen, weights, idm, joint).values())

    params = [*model.encoder.parameters(), *dynamics_parameters(model), *idm.parameters()]
    return fit(params, loss_fn, cfg.joint_steps, cfg.joint_lr, cfg.weight_decay, gen, RSSM_JOINT, progress, run,
               model)


def train_rssm_dynamics(model: RSSM, data: TrajectoryData, latents: torch.Tensor | None, cfg: TrainConfig,
                        gen: torch.Generator, progress: bool = True, run: RunState | None = None) -> list[float]:
    """The RSSM's state-space model (``fitting.DYNAMICS_PARTS``) on the frozen embedding: ``wmqlib.rssm_loss``'s
    roll, filter and KL terms for ``cfg.predictor_steps`` steps at batch ``predictor_batch`` and peak rate
    ``predictor_lr`` (no-op at 0 steps). latents: the frozen embeddings (N, T+1, 1, Dv) (``fitting.freeze_encoder``).
    Returns per-step losses."""
    if not cfg.predictor_steps:
        return []
    windows = Windows(data, cfg.rollout_steps + 1, model.config.frameskip, model.device)
    weights = RSSMWeights(cfg.kl_weight, cfg.free_bits)

    def loss_fn(_: torch.Tensor) -> torch.Tensor:
        traj, start = windows.draw(cfg.predictor_batch, gen)
        frames, actions, proprio = windows.gather(traj, start)
        e = latents[traj.to(model.device)[:, None], frames][:, :, 0]  # (B, L, Dv)
        with torch.no_grad():
            p = model.proprio_encoder(proprio)  # (B, L, Ep)
        return sum(rssm_losses(model, e, p, actions, gen, weights).values())

    return fit(dynamics_parameters(model), loss_fn, cfg.predictor_steps, cfg.predictor_lr, cfg.weight_decay, gen,
               RSSM_DYNAMICS, progress, run, model)
