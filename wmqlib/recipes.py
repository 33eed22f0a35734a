"""A training recipe of a small world model: ``TrainConfig``, the shipped models' ``PRESETS``, the ``--set``
overrides of the command line and the command that retrains a recipe (``wmqlib.train`` runs it).

    cfg = apply_overrides(PRESETS["mini-wall"], parse_overrides(["joint_steps=9000"]))
    regenerate_command(cfg, Path("out"))   # "python -m wmqlib.train --preset mini-wall --set joint_steps=9000 ..."

``PRESETS`` holds the shipped models' recipes (``mini-wall``, ``mini-pusht``; ``mini-wall-rssm``, the recurrent
architecture's) and seconds-long ``tiny`` ones for tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wmqlib.envs import env_class
from wmqlib.models import RSSMConfig, WorldModelConfig, config_from_dict
from wmqlib.paths import DATASETS_DIR
from wmqlib.plan import CEMConfig
from wmqlib.validate import check_float, check_int, check_type

# the online rounds' planner (``wmqlib.online``): the study's CEM, cheap enough to plan hundreds of episodes
ONLINE_PLANNER = CEMConfig(samples=100, topk=10, opt_steps=10)


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


def small_rssm(env: str, **changes: Any) -> RSSMConfig:
    """The shipped RSSM's architecture (``mini-<env>-rssm``: 64 px frames, four convolutions of 16-128 channels, a
    128-wide embedding, state 128 + 32, MLPs 256 wide) for ``env``, its proprio size from the env class, with
    ``changes`` applied."""
    sizes: dict[str, Any] = dict(env=env, proprio_dim=env_class(env).proprio_dim, frameskip=5, img_size=64,
                                 encoder_channels=16, encoder_layers=4, embed_dim=128, proprio_emb_dim=10,
                                 deter_dim=128, stoch_dim=32, hidden_dim=256)
    sizes.update(changes)
    return RSSMConfig(**sizes)


# how the encoder is trained; "rssm" is the RSSM's objective and the only one it takes (``wmqlib.rssm_loss``)
OBJECTIVES = ("autoencoder", "joint", "rssm")
MODEL_CONFIGS = (WorldModelConfig, RSSMConfig)


@dataclass(frozen=True)
class TrainConfig:
    """One training recipe: the architecture (a ``WorldModelConfig`` or an ``RSSMConfig``), data and optimisation;
    validated on construction.

    model: the world model to train (its env, img_size, num_hist and frameskip also set the data and the windows);
        an ``RSSMConfig`` takes objective "rssm" (below) and no other.
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
        "rssm" (an RSSMConfig model): encoder and state-space model trained together for joint_steps steps
        (joint_batch, joint_lr) on ``wmqlib.rssm_loss``'s objective over windows of rollout_steps + 1 frames
        (rollout_steps >= 1 imagined steps, open loop), with the VICReg / inverse-dynamics / ranking weights above
        and the KL(posterior || prior) term at weight kl_weight with free_bits nats per step; then, when
        predictor_steps > 0, the state-space model alone on the frozen embedding for predictor_steps steps
        (predictor_batch, predictor_lr; the same objective without the embedding's regularisers); then the decoder
        as for "joint". The autoencoder and fine-tune fields are not used (finetune_steps, state_weight and
        online_rounds must be 0).
    Online rounds (last, ``wmqlib.online``; 0 = none): online_rounds times, the model plans online_episodes
        training episodes, the plans are executed in the simulator, and the predictor trains online_steps steps at
        peak rate online_lr on the recipe's data plus every round's executed plans (batches from a generator seeded
        seed + 4; the rollout loss over at most horizon - 1 steps, what a plan's window holds).
    Evaluation: eval_episodes FP CEM episodes (seed 99, goal_H 5, the env's default sampler) with eval_opt_steps
        iterations.
    """

    model: WorldModelConfig | RSSMConfig
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
    kl_weight: float = 0.1
    free_bits: float = 1.0
    decoder_steps: int = 0
    online_rounds: int = 0
    online_episodes: int = 200
    online_steps: int = 1000
    online_lr: float = 3e-4
    eval_episodes: int = 50
    eval_opt_steps: int = 10

    def __post_init__(self) -> None:
        check_type("TrainConfig.model", self.model, MODEL_CONFIGS, "a WorldModelConfig or an RSSMConfig")
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
        if (self.objective == "rssm") != isinstance(self.model, RSSMConfig):
            raise ValueError(f"TrainConfig.objective must be 'rssm' for an RSSMConfig model and one of "
                             f"{list(OBJECTIVES[:2])} for a WorldModelConfig, got {self.objective!r} for a "
                             f"{type(self.model).__name__}")
        if self.objective in ("joint", "rssm") and not (self.joint_steps and self.joint_batch > 1):
            raise ValueError(f"TrainConfig.objective {self.objective!r} needs joint_steps > 0 and joint_batch > 1 "
                             f"(the variance term needs a batch), got {self.joint_steps} and {self.joint_batch}")
        if self.objective == "rssm":
            unused = {name: getattr(self, name) for name in ("finetune_steps", "state_weight", "online_rounds")
                      if getattr(self, name)}
            if not self.rollout_steps or unused:
                raise ValueError(f"TrainConfig.objective 'rssm' needs rollout_steps >= 1 (the imagined steps of its "
                                 f"windows) and takes no fine-tune stage, state read-out or online rounds (they "
                                 f"train DINO-WM's predictor or tokens); got rollout_steps={self.rollout_steps}"
                                 + "".join(f", {k}={v}" for k, v in unused.items()))
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

    def model_config(self) -> WorldModelConfig | RSSMConfig:
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
        return cls(**{**data, "model": config_from_dict(data["model"])})


PRESETS: dict[str, TrainConfig] = {
    # the shipped models (README "Shipped models": the search that chose them): joint-embedding encoders, the
    # temporal-ranking term on Wall, 5- and 3-step rollout losses, PushT's demonstrations mixed with the pusher, its
    # linear state read-out and two online rounds on its own plans
    "mini-wall": TrainConfig(model=small_model("wall"), traj_len=30, encoder_steps=0, predictor_steps=3000,
                             rollout_steps=5, finetune_steps=1500, objective="joint", joint_steps=6000,
                             rank_weight=1.0, decoder_steps=2000),
    "mini-pusht": TrainConfig(model=small_model("pusht"), n_traj=300, traj_len=100, data_policy="mixed",
                              encoder_steps=0, state_weight=5.0, predictor_steps=3000, rollout_steps=3,
                              finetune_steps=1000, objective="joint", joint_steps=6000, decoder_steps=2000,
                              online_rounds=2, eval_opt_steps=30),
    # the first shipped models (reconstruction autoencoders): Wall's steers by proprioception; PushT's on the
    # exploratory pusher's data, num_hist 1, teacher forcing only
    "mini-wall-ae": TrainConfig(model=small_model("wall"), n_traj=1000, traj_len=25, rollout_steps=3,
                                finetune_steps=1500),
    "mini-pusht-ae": TrainConfig(model=small_model("pusht"), n_traj=600, traj_len=50, data_policy="pusher",
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
    # the recurrent architecture (issue 28): a PlaNet / Dreamer-style RSSM on wmqlib.rssm_loss's objective with the
    # data, windows (3 imagined steps), weights and stage lengths of the best Wall joint recipe (wall-joint-b: rank
    # 1), then the dynamics on the frozen embedding and the decoder. 1.29 M parameters (5.1 MB); about 1 CPU-hour on
    # one thread: 3,640 s of stages, each stage's GFLOP per step (torch's FlopCounterMode: joint 11.9, dynamics 1.9,
    # decoder 3.7) at the seconds per GFLOP wall-joint-b's card recorded for its stages on this machine
    "mini-wall-rssm": TrainConfig(model=small_rssm("wall"), n_traj=1000, traj_len=25, objective="rssm",
                                  joint_steps=6000, joint_batch=64, joint_lr=1e-3, rollout_steps=3, rank_weight=1.0,
                                  predictor_steps=3000, predictor_batch=128, decoder_steps=2000),
}
# the same, with the joint-embedding objective (tests)
PRESETS["tiny-joint"] = dataclasses.replace(PRESETS["tiny"], objective="joint", joint_steps=3, joint_batch=4,
                                            rollout_steps=1, finetune_steps=2, decoder_steps=2)
# a seconds-long RSSM recipe (tests): 16 px frames, two convolutions, every stage a few steps
PRESETS["tiny-rssm"] = dataclasses.replace(
    PRESETS["mini-wall-rssm"], model=small_rssm("wall", img_size=16, encoder_channels=4, encoder_layers=2,
                                                embed_dim=12, proprio_emb_dim=3, deter_dim=8, stoch_dim=4,
                                                hidden_dim=16),
    n_traj=8, traj_len=15, joint_steps=3, joint_batch=4, rollout_steps=2, predictor_steps=2, predictor_batch=4,
    decoder_steps=2, encoder_batch=8, eval_episodes=2, eval_opt_steps=1)


def data_policy(cfg: TrainConfig) -> str:
    """The data policy a recipe uses: its own, or the env class's default."""
    return env_class(cfg.env).check_data_policy(cfg.data_policy)


def dataset_path(cfg: TrainConfig, data_dir: str | Path = DATASETS_DIR) -> Path:
    """Where a recipe's dataset is cached (regenerated deterministically when missing)."""
    return Path(data_dir) / (f"{cfg.env}-{data_policy(cfg)}-n{cfg.n_traj}-t{cfg.traj_len}-s{cfg.seed}-"
                             f"{cfg.img_size}px.npz")


def online_seed(cfg: TrainConfig) -> int:
    """The seed of the online rounds' batch generator (``wmqlib.online``)."""
    return cfg.seed + 4


def base_preset(cfg: TrainConfig) -> str:
    """The preset a recipe's command line starts from: the env's ``mini-<env>`` of its architecture
    (``mini-<env>-rssm`` for an RSSM), else the first shipped ``mini-`` preset of that architecture."""
    suffix = "-rssm" if isinstance(cfg.model, RSSMConfig) else ""
    same = [n for n, p in PRESETS.items() if n.startswith("mini-") and type(p.model) is type(cfg.model)]
    return f"mini-{cfg.env}{suffix}" if f"mini-{cfg.env}{suffix}" in PRESETS else same[0]


def regenerate_command(cfg: TrainConfig, out: Path) -> str:
    """The CLI call that retrains ``cfg``: its preset's name, plus ``--set`` for every field that differs from
    ``base_preset`` (``--set model.<field>=...`` for the architecture)."""
    name = next((n for n, p in PRESETS.items() if p == cfg), None)
    if name is not None:
        return f"python -m wmqlib.train --preset {name} --out {out}"
    start = base_preset(cfg)
    base = PRESETS[start]
    changed = [f"--set {f.name}={getattr(cfg, f.name)}" for f in dataclasses.fields(cfg)
               if f.name != "model" and getattr(cfg, f.name) != getattr(base, f.name)]
    changed += [f"--set model.{f.name}={getattr(cfg.model, f.name)}" for f in dataclasses.fields(cfg.model)
                if getattr(cfg.model, f.name) != getattr(base.model, f.name)]
    return " ".join([f"python -m wmqlib.train --preset {start}", *changed, f"--out {out}"])


_KINDS = {"int": int, "float": float, "str": str, "str | None": str}


def parse_overrides(items: list[str], architecture: type = WorldModelConfig) -> dict[str, Any]:
    """``["predictor_steps=9000", "model.encoder_dim=128"]`` -> typed values: ``{"predictor_steps": 9000,
    "model": {"encoder_dim": 128}}``; ``model.`` fields are those of ``architecture`` (the preset's config type,
    ``WorldModelConfig`` or ``RSSMConfig``); unknown fields raise ValueError naming the allowed ones."""
    top = {f.name: f.type for f in dataclasses.fields(TrainConfig) if f.name != "model"}
    nested = {f"model.{f.name}": f.type for f in dataclasses.fields(architecture)}
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
