"""Train a small DINO-WM world model end to end, the way DINO-WM trains its predictor (``python -m wmqlib.train``);
or, with objective "rssm", the recurrent architecture (below).

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

An RSSM recipe (an ``RSSMConfig`` model, objective "rssm") replaces steps 2-4: the encoder and the state-space
model trained together on ``wmqlib.rssm_loss``'s objective, then the state-space model alone on the frozen
embedding, then the decoder on the frozen encoder (figures only); steps 1, 5 and 6 are the same.

The recipe is a ``wmqlib.recipes.TrainConfig`` (the shipped ones are its ``PRESETS``), each stage a function of
``wmqlib.stages``. Everything runs on the CPU; a run is deterministic for a given seed, device and torch build.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmqlib.card import fp_planning_summary, write_model_card
from wmqlib.envs import TrajectoryData, env_names, generate_dataset
from wmqlib.fitting import freeze_encoder
from wmqlib.models import WorldModelBase, resolve_device, save_world_model
from wmqlib.models.checkpoint import MODEL_TYPES
from wmqlib.online import STAGE as ONLINE_STAGE, retrain
from wmqlib.paths import DATASETS_DIR
from wmqlib.recipes import (PRESETS, TrainConfig, apply_overrides, data_policy, dataset_path, online_seed,
                            parse_overrides, regenerate_command)
from wmqlib.resume import RunState
from wmqlib.stages import (RSSM_DYNAMICS, RSSM_JOINT, finetune_rollout, pretrain_encoder, train_decoder,
                           train_joint, train_predictor, train_rssm, train_rssm_dynamics)


# the card's name for each objective's stages -> the stage names ``fitting.fit`` records them under
STAGES = {"autoencoder": {"encoder": "encoder (autoencoder)", "predictor": "predictor",
                          "finetune": "rollout fine-tune"},
          "joint": {"encoder": "joint embedding", "predictor": "predictor", "finetune": "rollout fine-tune",
                    "decoder": "decoder"},
          "rssm": {"encoder": RSSM_JOINT, "predictor": RSSM_DYNAMICS, "decoder": "decoder"}}


def train(cfg: TrainConfig, out: str | Path, progress: bool = True, evaluate_fp: bool = True,
          data_dir: str | Path = DATASETS_DIR, device: str = "cpu", resume: bool = False,
          save_every_s: float = 120.0) -> WorldModelBase:
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
    model = MODEL_TYPES[type(cfg.model)](cfg.model_config(), seed=cfg.seed).to(device)
    model.set_normalization(data.action_mean, data.action_std, data.proprio_mean, data.proprio_std)
    if run.model_state() is not None:
        model.load_state_dict(run.model_state())
    model.train()
    if cfg.objective == "rssm":
        enc_losses = train_rssm(model, data, cfg, gen, progress, run)
        latents = freeze_encoder(model, data) if cfg.predictor_steps else None
        pred_losses = train_rssm_dynamics(model, data, latents, cfg, gen, progress, run)
        tune_losses: list[float] = []
    else:
        if cfg.objective == "joint":
            enc_losses = train_joint(model, data, cfg, gen, progress, run)
        else:
            enc_losses = pretrain_encoder(model, data, cfg, gen, progress, run)
        latents = freeze_encoder(model, data)
        pred_losses = train_predictor(model, data, latents, dataclasses.replace(cfg, rollout_steps=0,
                                                                                finetune_steps=0),
                                      gen, progress, run)
        tune_losses = finetune_rollout(model, data, latents, cfg, progress, run, gen_tune)
    model.requires_grad_(False)
    if cfg.objective in ("joint", "rssm"):
        model.decoder.requires_grad_(True)
        dec_losses = train_decoder(model, data, cfg, gen, progress, run)
        model.requires_grad_(False)
    model.eval()
    online_losses = retrain(model, data, cfg, gen_online, run, progress) if cfg.online_rounds else []

    first, last = (lambda x: x[0] if x else None), (lambda x: float(np.mean(x[-100:])) if x else None)
    losses = {"encoder": enc_losses, "predictor": pred_losses, "finetune": tune_losses,
              **({"decoder": dec_losses} if cfg.objective in ("joint", "rssm") else {}),
              **({"online": online_losses} if cfg.online_rounds else {})}
    card: dict[str, Any] = {
        "recipe": cfg.to_dict(),
        "architecture": model.config.to_dict(),
        "parameters": {name: sum(p.numel() for p in part.parameters()) for name, part in model.named_children()},
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
        cfg = apply_overrides(cfg, parse_overrides(args.set, type(cfg.model)))
    except ValueError as error:
        parser.error(str(error))
    train(cfg, args.out, progress=not args.quiet, evaluate_fp=not args.no_eval, device=args.device,
          resume=args.resume, save_every_s=args.save_every)
    print((Path(args.out) / "MODEL_CARD.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
