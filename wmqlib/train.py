"""Train a small DINO-WM world model end to end, the way DINO-WM trains its predictor (``python -m wmqlib.train``).

Pipeline (each stage seeded from ``TrainConfig.seed``):

1. data: scripted trajectories of the env (``wmqlib.envs.generate_dataset``), rendered at ``img_size``;
2. encoder pre-training: the DINOv2-style ViT encoder and the conv decoder are trained together as an
   autoencoder (pixel MSE of ``decode(encode(x))``), our stand-in for DINOv2's self-supervised pre-training,
   since no DINOv2 weights can be downloaded here; the decoder doubles as DINO-WM's visualisation decoder;
3. freeze: the encoder is frozen and every frame of the dataset is encoded once;
4. predictor: the ViT predictor and the action encoder are trained with DINO-WM's teacher-forced loss, the MSE
   between the predicted and the encoded next frame over the visual and proprio slices of the latent. The proprio
   encoder stays at its seeded initialisation (a fixed linear embedding): trained jointly against targets it
   produces itself it could shrink towards zero and make the proprio term of the planning objective vanish;
5. evaluation: FP CEM planning on the DINO-WM protocol episodes, written into the model card;
6. a wmq checkpoint folder (config.json + model.safetensors) with MODEL_CARD.md and card.json.

``PRESETS`` holds the shipped models' recipes (``mini-wall``, ``mini-pusht``) and a seconds-long ``tiny`` one for
tests. Everything runs on the CPU; a run is deterministic for a given seed, device and torch build.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wmqlib.card import fp_planning_summary, write_model_card
from wmqlib.envs import TrajectoryData, env_class, env_names, generate_dataset
from wmqlib.fitting import (Windows, background_frame, fit, foreground_weights, freeze_encoder, latent_losses,
                            uint8_to_visual)
from wmqlib.joint import InverseDynamics, JointWeights, regularisers
from wmqlib.models import WorldModel, WorldModelConfig, resolve_device, save_world_model
from wmqlib.online import PLANNER as ONLINE_PLANNER, STAGE as ONLINE_STAGE, retrain
from wmqlib.paths import DATASETS_DIR
from wmqlib.resume import RunState
from wmqlib.validate import check_float, check_int, check_type


def small_model(env: str, **changes: Any) -> WorldModelConfig:
    """The shipped models' DINO-WM-shaped architecture (64 px frames, 16 tokens of 64 features, a 3-layer predictor)
    for ``env``, with its proprio size from the env class and ``changes`` applied (e.g. ``num_hist=3``)."""
    sizes: dict[str, Any] = dict(
        env=env, proprio_dim=env_class(env).proprio_dim, num_hist=1, frameskip=5, img_size=64, patch_size=16,
        grid_size=4, encoder_dim=64, encoder_depth=4, encoder_heads=4, encoder_mlp_dim=256, encoder_pos_grid=4,
        predictor_depth=3, predictor_heads=4, predictor_dim_head=16, predictor_mlp_dim=256, predictor_dropout=0.0,
        predictor_emb_dropout=0.0, decoder_channel=32, decoder_res_blocks=1, decoder_res_channel=16,
        decoder_n_embed=16)
    sizes.update(changes)
    return WorldModelConfig(**sizes)


OBJECTIVES = ("autoencoder", "joint")


@dataclass(frozen=True)
class TrainConfig:
    """One training recipe: the architecture (a ``WorldModelConfig``), data and optimisation; validated on
    construction.

    model: the world model to train (its env, img_size, num_hist and frameskip also set the data and the windows).
    Data: n_traj trajectories of traj_len env steps of the env's data policy ``data_policy`` (None = the env class's
        ``default_data_policy``), rendered at ``model.img_size`` px.
    Optimisation: encoder_steps / predictor_steps AdamW steps at batch sizes encoder_batch / predictor_batch and
        peak learning rates encoder_lr / predictor_lr (cosine decay, 5% warm-up), weight_decay;
        foreground_weight: 0 = plain pixel MSE for the autoencoder; w > 0 weights pixels that differ from the
        data's background (the per-pixel median frame) 1 + w times, so small moving objects count;
        state_weight: 0 = reconstruction alone; w > 0 adds w times the MSE of a linear read-out (trained with the
        encoder, then discarded) from the flattened visual tokens to the z-scored ``state_features`` of the env
        (the parts of the state that decide success), so the latent carries the state linearly (with objective
        "joint", in the joint stage; planning still sees pixels only);
        rollout_steps: 0 = DINO-WM's teacher forcing alone; k > 0 adds a k-step open-loop rollout loss to a
        second predictor stage of finetune_steps steps at peak rate finetune_lr (drawn from a generator seeded
        seed + 1, so the first stage's result does not depend on it).
    objective: how the encoder is trained. "autoencoder": stage 2 above (encoder_* and the two weights);
        "joint": encoder, predictor and action encoder are trained together for joint_steps steps at batch
        joint_batch and peak rate joint_lr with the joint-embedding loss of ``wmqlib.joint`` (teacher forcing, the
        rollout_steps-step rollout loss, VICReg terms var_weight / cov_weight, inverse dynamics idm_weight, temporal
        ranking rank_weight), then
        the encoder is frozen, the predictor stages run on its latents as above, and the decoder is trained on the
        frozen latents for decoder_steps steps (encoder_batch, encoder_lr) for the imagined-frame figures only.
    Online rounds (last, ``wmqlib.online``; 0 = none): online_rounds times, the model plans online_episodes
        training episodes, the plans are executed in the simulator, and the predictor trains online_steps steps at
        peak rate online_lr on the recipe's data plus every round's executed plans (batches from a generator seeded
        seed + 4; the rollout loss over at most horizon - 1 steps, what a plan's window holds).
    Evaluation: eval_episodes FP CEM episodes (seed 99, goal_H 5, the env's default sampler) with eval_opt_steps
        iterations.
    """

    model: WorldModelConfig
    seed: int = 0
    n_traj: int = 1000
    traj_len: int = 25
    data_policy: str | None = None
    encoder_steps: int = 3000
    encoder_batch: int = 64
    encoder_lr: float = 1e-3
    foreground_weight: float = 0.0
    state_weight: float = 0.0
    predictor_steps: int = 6000
    predictor_batch: int = 128
    predictor_lr: float = 1e-3
    weight_decay: float = 1e-4
    rollout_steps: int = 0
    finetune_steps: int = 0
    finetune_lr: float = 3e-4
    objective: str = "autoencoder"
    joint_steps: int = 0
    joint_batch: int = 64
    joint_lr: float = 1e-3
    var_weight: float = 1.0
    cov_weight: float = 0.04
    idm_weight: float = 1.0
    rank_weight: float = 0.0
    decoder_steps: int = 0
    online_rounds: int = 0
    online_episodes: int = 200
    online_steps: int = 1000
    online_lr: float = 3e-4
    eval_episodes: int = 50
    eval_opt_steps: int = 10

    def __post_init__(self) -> None:
        check_type("TrainConfig.model", self.model, WorldModelConfig, "a WorldModelConfig")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                check_int(f"TrainConfig.{f.name}", value, minimum=0)
            elif f.type == "float":
                check_float(f"TrainConfig.{f.name}", value, minimum=0.0)
        if self.data_policy is not None:
            env_class(self.env).check_data_policy(self.data_policy)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"TrainConfig.objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.objective == "joint" and not (self.joint_steps and self.joint_batch > 1):
            raise ValueError("TrainConfig.objective 'joint' needs joint_steps > 0 and joint_batch > 1 (the variance "
                             f"term needs a batch), got {self.joint_steps} and {self.joint_batch}")
        if self.finetune_steps and not self.rollout_steps or self.objective == "autoencoder" and bool(
                self.rollout_steps) != bool(self.finetune_steps):
            raise ValueError("TrainConfig.rollout_steps and finetune_steps must be both 0 (teacher forcing only) or "
                             "both > 0 (with objective 'joint', rollout_steps > 0 may also train the joint stage "
                             f"alone), got {self.rollout_steps} and {self.finetune_steps}")
        window = (max(self.model.num_hist, self.rollout_steps) + 1) * self.model.frameskip
        horizon = ONLINE_PLANNER.horizon
        if self.online_rounds and not (self.online_episodes and self.online_steps and self.model.num_hist < horizon
                                       and horizon * self.model.frameskip <= self.traj_len):
            raise ValueError(f"TrainConfig.online_rounds > 0 needs online_episodes and online_steps > 0, num_hist "
                             f"below the online plans' {horizon} steps and those plans "
                             f"({horizon * self.model.frameskip} env steps) no longer than traj_len ({self.traj_len})")
        if self.traj_len < window:
            raise ValueError(f"TrainConfig.traj_len ({self.traj_len}) must be >= (max(model.num_hist, rollout_steps) "
                             f"+ 1) * model.frameskip = {window} to hold one training window")

    @property
    def env(self) -> str:
        """The environment the model is trained on (``model.env``)."""
        return self.model.env

    @property
    def img_size(self) -> int:
        """Frame side of the data in pixels (``model.img_size``)."""
        return self.model.img_size

    def model_config(self) -> WorldModelConfig:
        """The architecture this recipe trains (``self.model``)."""
        return self.model

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; ``model`` is the architecture's own dict."""
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "model": self.model.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Inverse of ``to_dict``; unknown keys raise ValueError naming them and the allowed ones."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"TrainConfig got unknown fields {unknown}; allowed: {allowed}")
        return cls(**{**data, "model": WorldModelConfig.from_dict(data["model"])})


PRESETS: dict[str, TrainConfig] = {
    "mini-wall": TrainConfig(model=small_model("wall"), n_traj=1000, traj_len=25, rollout_steps=3,
                             finetune_steps=1500),
    # the first shipped PushT model: the exploratory pusher's data, num_hist 1, teacher forcing only
    "mini-pusht": TrainConfig(model=small_model("pusht"), n_traj=600, traj_len=50, data_policy="pusher",
                              eval_opt_steps=30),
    # demonstrations mixed with the pusher, an encoder objective that weights the moving objects and reads the state
    # out linearly, and the rollout fine-tune; num_hist stays 1 (PushT has no momentum: frame + proprio is the state)
    "mini-pusht-v2": TrainConfig(model=small_model("pusht"), n_traj=300, traj_len=100, data_policy="mixed",
                                 encoder_steps=3000, foreground_weight=20.0, state_weight=1.0, predictor_steps=5000,
                                 rollout_steps=3, finetune_steps=1000, eval_opt_steps=30),
    # seconds-long end-to-end smoke recipe for tests
    "tiny": TrainConfig(model=small_model("wall", img_size=32, patch_size=8, grid_size=4, encoder_dim=16,
                                          encoder_depth=1, encoder_heads=2, encoder_mlp_dim=32, predictor_depth=1,
                                          predictor_heads=2, predictor_dim_head=8, predictor_mlp_dim=32,
                                          decoder_channel=8, decoder_res_channel=4),
                        n_traj=8, traj_len=10, encoder_steps=3, encoder_batch=8, predictor_steps=3,
                        predictor_batch=8, eval_episodes=2, eval_opt_steps=1),
}
# the same, with the joint-embedding objective (tests)
PRESETS["tiny-joint"] = dataclasses.replace(PRESETS["tiny"], objective="joint", joint_steps=3, joint_batch=4,
                                            rollout_steps=1, finetune_steps=2, decoder_steps=2)


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


def train_decoder(model: WorldModel, data: TrajectoryData, cfg: TrainConfig, gen: torch.Generator,
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


def data_policy(cfg: TrainConfig) -> str:
    """The data policy a recipe uses: its own, or the env class's default."""
    return env_class(cfg.env).check_data_policy(cfg.data_policy)


def dataset_path(cfg: TrainConfig, data_dir: str | Path = DATASETS_DIR) -> Path:
    """Where a recipe's dataset is cached (regenerated deterministically when missing)."""
    return Path(data_dir) / (f"{cfg.env}-{data_policy(cfg)}-n{cfg.n_traj}-t{cfg.traj_len}-s{cfg.seed}-"
                             f"{cfg.img_size}px.npz")


def train(cfg: TrainConfig, out: str | Path, progress: bool = True, evaluate_fp: bool = True,
          data_dir: str | Path = DATASETS_DIR, device: str = "cpu", resume: bool = False,
          save_every_s: float = 120.0) -> WorldModel:
    """Run the whole pipeline and write a wmq checkpoint folder with its model card to ``out``.

    The dataset is generated into ``data_dir`` on first use and reused afterwards (same recipe, same file).
    ``device``: "cpu", "cuda" or "auto"; random draws come from a CPU generator, so the batches are the same on
    every device (the arithmetic of CUDA kernels may still differ in the last bits).
    Resumable: the run's state is saved to ``out/training_state.pt`` at least every ``save_every_s`` seconds and at
    every stage's end (``wmqlib.resume``); ``resume=True`` continues from it, with the weights an uninterrupted run
    gives. The file is removed once the model is saved.
    """
    device = resolve_device(device)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    gen_tune = torch.Generator().manual_seed(cfg.seed + 1)
    gen_online = torch.Generator().manual_seed(online_seed(cfg))
    path = dataset_path(cfg, data_dir)
    if not path.exists():
        generate_dataset(cfg.env, cfg.n_traj, cfg.traj_len, cfg.seed, cfg.img_size, path, progress=progress,
                         policy=data_policy(cfg))
    data = TrajectoryData.load(path)
    t_data = time.perf_counter() - t0

    out = Path(out)
    run = RunState(out, {"batches": gen, "fine-tune batches": gen_tune, "online batches": gen_online}, cfg.to_dict(),
                   save_every_s, resume,
                   same_recipe=lambda saved: isinstance(saved, dict) and TrainConfig.from_dict(saved) == cfg)
    model = WorldModel(cfg.model_config(), seed=cfg.seed).to(device)
    model.set_normalization(data.action_mean, data.action_std, data.proprio_mean, data.proprio_std)
    if run.model_state() is not None:
        model.load_state_dict(run.model_state())
    model.train()
    if cfg.objective == "joint":
        enc_losses = train_joint(model, data, cfg, gen, progress, run)
    else:
        enc_losses = pretrain_encoder(model, data, cfg, gen, progress, run)

    latents = freeze_encoder(model, data)
    pred_losses = train_predictor(model, data, latents, dataclasses.replace(cfg, rollout_steps=0, finetune_steps=0),
                                  gen, progress, run)
    tune_losses = finetune_rollout(model, data, latents, cfg, progress, run, gen_tune)
    model.requires_grad_(False)
    if cfg.objective == "joint":
        model.decoder.requires_grad_(True)
        dec_losses = train_decoder(model, data, cfg, gen, progress, run)
        model.requires_grad_(False)
    model.eval()
    online_losses = retrain(model, data, cfg, gen_online, run, progress) if cfg.online_rounds else []

    first, last = (lambda x: x[0] if x else None), (lambda x: float(np.mean(x[-100:])) if x else None)
    losses = {"encoder": enc_losses, "predictor": pred_losses, "finetune": tune_losses,
              **({"decoder": dec_losses} if cfg.objective == "joint" else {}),
              **({"online": online_losses} if cfg.online_rounds else {})}
    card: dict[str, Any] = {
        "recipe": cfg.to_dict(),
        "architecture": model.config.to_dict(),
        "parameters": {name: sum(p.numel() for p in getattr(model, name).parameters())
                       for name in ("encoder", "predictor", "action_encoder", "proprio_encoder", "decoder")},
        "data": {"path": path.name, **data.meta},
        "losses": {f"{name}_{which}": fn(values) for name, values in losses.items()
                   for which, fn in (("first", first), ("last100", last))},
        "seconds": {"data": round(t_data, 1),
                    **{name: round(run.seconds(stage), 1) for name, stage in STAGES[cfg.objective].items()},
                    **({"online": round(sum(run.seconds(ONLINE_STAGE.format(k=k))
                                            for k in range(1, cfg.online_rounds + 1)), 1)}
                       if cfg.online_rounds else {})},
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
    }
    model.provenance = {"trained_by": "wmqlib.train", "recipe": cfg.to_dict()}
    if evaluate_fp:
        card["fp_planning"] = fp_planning_summary(model, cfg.env, cfg.eval_episodes, cfg.eval_opt_steps)
    # stage times include earlier processes of a resumed run; the rest (data, encoding, evaluation) is this one's
    card["seconds"]["total"] = round(sum(card["seconds"].values()) + card.get("fp_planning", {}).get("seconds", 0.0), 1)
    model = model.cpu()
    save_world_model(model, out)
    write_model_card(card, out, regenerate_command(cfg, out))
    run.remove()
    return model


# the card's name for each objective's stages -> the stage names ``fitting.fit`` records them under
STAGES = {"autoencoder": {"encoder": "encoder (autoencoder)", "predictor": "predictor",
                          "finetune": "rollout fine-tune"},
          "joint": {"encoder": "joint embedding", "predictor": "predictor", "finetune": "rollout fine-tune",
                    "decoder": "decoder"}}


def online_seed(cfg: TrainConfig) -> int:
    """The seed of the online rounds' batch generator (``wmqlib.online``)."""
    return cfg.seed + 4


def regenerate_command(cfg: TrainConfig, out: Path) -> str:
    """The CLI call that retrains ``cfg``: its preset's name, plus ``--set`` for every field that differs from the
    env's ``mini-<env>`` preset (``--set model.<field>=...`` for the architecture)."""
    name = next((n for n, p in PRESETS.items() if p == cfg), None)
    if name is not None:
        return f"python -m wmqlib.train --preset {name} --out {out}"
    base = PRESETS[f"mini-{cfg.env}"]
    changed = [f"--set {f.name}={getattr(cfg, f.name)}" for f in dataclasses.fields(cfg)
               if f.name != "model" and getattr(cfg, f.name) != getattr(base, f.name)]
    changed += [f"--set model.{f.name}={getattr(cfg.model, f.name)}" for f in dataclasses.fields(cfg.model)
                if getattr(cfg.model, f.name) != getattr(base.model, f.name)]
    return " ".join([f"python -m wmqlib.train --preset mini-{cfg.env}", *changed, f"--out {out}"])


_KINDS = {"int": int, "float": float, "str": str, "str | None": str}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["predictor_steps=9000", "model.encoder_dim=128"]`` -> typed values: ``{"predictor_steps": 9000,
    "model": {"encoder_dim": 128}}``; unknown fields raise ValueError naming the allowed ones."""
    top = {f.name: f.type for f in dataclasses.fields(TrainConfig) if f.name != "model"}
    nested = {f"model.{f.name}": f.type for f in dataclasses.fields(WorldModelConfig)}
    fields = {**top, **nested}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--set expects FIELD=VALUE with FIELD one of {sorted(fields)}, got {item!r}")
        kind = _KINDS[fields[name]]
        try:
            typed = kind(value)
        except ValueError:
            raise ValueError(f"--set {name} needs a {kind.__name__}, got {value!r}") from None
        if name in nested:
            out.setdefault("model", {})[name.removeprefix("model.")] = typed
        else:
            out[name] = typed
    return out


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """``cfg`` with the values of :func:`parse_overrides` applied (validated)."""
    changes = {k: v for k, v in overrides.items() if k != "model"}
    if "model" in overrides:
        changes["model"] = cfg.model.replace(**overrides["model"])
    return dataclasses.replace(cfg, **changes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wmqlib.train", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe (default: mini-<env>)")
    parser.add_argument("--env", choices=env_names(), help="environment (when no preset is given)")
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--seed", type=int, help="override the recipe's seed")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override one TrainConfig field of the preset (repeatable), e.g. --set predictor_steps=9000"
                             " or --set model.encoder_dim=128")
    parser.add_argument("--no-eval", action="store_true", help="skip the FP planning evaluation")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/training_state.pt (saved every --save-every seconds) if present")
    parser.add_argument("--save-every", type=float, default=120.0, metavar="SECONDS",
                        help="least seconds between two saves of the training state (default 120)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.preset is None and args.env is None:
        parser.error("give --preset or --env")
    cfg = PRESETS[args.preset or f"mini-{args.env}"]
    if args.env and cfg.env != args.env:
        parser.error(f"--env {args.env} contradicts preset {args.preset} (env {cfg.env})")
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    try:
        cfg = apply_overrides(cfg, parse_overrides(args.set))
    except ValueError as error:
        parser.error(str(error))
    train(cfg, args.out, progress=not args.quiet, evaluate_fp=not args.no_eval, device=args.device,
          resume=args.resume, save_every_s=args.save_every)
    print((Path(args.out) / "MODEL_CARD.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
