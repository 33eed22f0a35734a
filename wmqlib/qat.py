"""Quantization-aware fine-tuning (QAT) of a wmq world model, LSQ style (``python -m wmqlib.qat``).

Every quantization-point linear of the encoder and the predictor (``quant.points``: qkv, proj, fc1, fc2 of every
block) gets a learnable step size per output row, and its weight is fake-quantized on that grid in every forward
(LSQ, Esser et al. 2020, "Learned Step Size Quantization"), on RTN's default weight format (symmetric,
per-channel, narrow grid; ``quant.spec``):

    w_hat = clamp(round(w / s), -Q, Q) * s,      Q = 2^(b-1) - 1,      s: (O, 1), one step per output row.

- Initialisation: ``s = max_i |w_i| / Q`` per row, RTN's absmax grid, so step 0 is exactly RTN W<b>.
- Gradients (LSQ eq. 3): rounding is straight-through (``spec.round_ste``), so ``dw_hat / dw = 1`` inside the
  range ``|w / s| <= Q`` and ``0`` outside it (the clamp); ``dw_hat / ds = round(w / s) - w / s`` inside and ``+-Q``
  outside. Both follow from autograd through ``spec.quantize_dequantize``.
- LSQ's gradient scale (LSQ eq. 4): the gradient of each step is multiplied by ``g = 1 / sqrt(N Q)``, ``N`` the
  weights sharing it (the row length). The optimiser is Adam: it divides each tensor's gradient by its running
  RMS, so a constant factor ``g`` changes Adam's steps only where the gradient is not much larger than Adam's
  eps; it is kept so the steps' gradients are LSQ's, whatever optimiser is used.

Loss: DINO-WM's teacher-forced latent prediction MSE (``stages.train_predictor``), over the visual and proprio
slices of the latent, with the quantized model's encoder giving the input latents and its predictor the prediction,
against the next frame's latent from the FP base model's encoder (the frozen targets ``train.py`` trains on); plus
the same MSE between the quantized encoder's latents of the input frames and the FP ones, so the goal latents a
planner compares predictions with stay where the predictor aims. Trained: the weights and steps of the quantized
linears and every other parameter of encoder, predictor and action encoder (LayerNorms, biases, embeddings).
Frozen: the proprio encoder (as in ``train.py``) and the decoder (not used for planning). The data are the base
model's own training set (its recipe, regenerated into data/datasets when missing); the held-out loss is measured
on a separate dataset of the same recipe drawn with seed ``recipe seed + HELDOUT_SEED_OFFSET``.

The result is saved as a normal wmq checkpoint whose quantized linears hold ``w_hat`` (each row takes at most
2^b - 1 distinct values), so loading it and planning in FP IS the QAT model; card.json / MODEL_CARD.md record how it
was made and the held-out loss of the FP base, RTN W<b> of the base and the QAT model. Quantizing it again with
RTN W<b> is not the identity: a row whose learned step grew so that no weight uses the top code gets RTN's finer grid.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from wmqlib.card import write_qat_card
from wmqlib.envs import TrajectoryData, generate_dataset
from wmqlib.models import CheckpointError, WorldModel, load_world_model, resolve_checkpoint, resolve_device, \
    save_world_model
from wmqlib.paths import DATASETS_DIR
from wmqlib.quant import PerChannel, QuantSpec, RTN, find_points, quantize
from wmqlib.quant.spec import SCALE_EPS, quantize_dequantize
from wmqlib.fitting import Windows, fit, uint8_to_visual
from wmqlib.recipes import TrainConfig, data_policy, dataset_path
from wmqlib.training_data import checkpoint_recipe
from wmqlib.validate import check_float, check_int, check_type

HELDOUT_SEED_OFFSET = 1000  # the held-out dataset: the base recipe's, drawn with seed + this
HELDOUT_TRAJ = 64  # trajectories in the held-out dataset (at most the recipe's n_traj)
HELDOUT_WINDOWS = 512  # teacher-forcing windows the held-out loss averages over
TRAINED_PARTS = ("encoder", "predictor", "action_encoder")


class _GradScale(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``g`` (LSQ's gradient scale)."""

    @staticmethod
    def forward(ctx, x: Tensor, g: float) -> Tensor:  # noqa: D102
        ctx.g = g
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return grad * ctx.g, None


def grad_scale(x: Tensor, g: float) -> Tensor:
    """``x`` whose gradient is multiplied by ``g``."""
    return _GradScale.apply(x, g)


class LSQWeight(nn.Module):
    """Parametrization ``w -> w_hat = clamp(round(w / s), -Q, Q) * s`` with a learnable step ``s (O, 1)``.

    weight: the FP weight ``(O, I)`` the steps are initialised from (RTN's absmax grid); w_bits: 2..8.
    """

    def __init__(self, weight: Tensor, w_bits: int) -> None:
        super().__init__()
        self.spec = QuantSpec(w_bits, PerChannel(), symmetric=True, role="weight")
        absmax = weight.detach().float().abs().amax(dim=1, keepdim=True)  # (O, 1)
        self.step = nn.Parameter((absmax / self.spec.qmax).clamp(min=SCALE_EPS))
        self.g = 1.0 / math.sqrt(weight.shape[1] * self.spec.qmax)  # LSQ eq. 4, N = the row length

    def forward(self, weight: Tensor) -> Tensor:
        """``weight (O, I)`` -> ``w_hat (O, I)`` on the learned grid (straight-through rounding)."""
        step = grad_scale(self.step, self.g).clamp(min=SCALE_EPS)
        return quantize_dequantize(weight.float(), step, torch.zeros_like(step), self.spec).to(weight.dtype)


def attach_lsq(model: WorldModel, w_bits: int) -> list[str]:
    """Put an ``LSQWeight`` on the weight of every quantization-point linear of ``model`` (in place); returns
    their names in model order. ``bake`` removes them again."""
    names = find_points(model).linears
    modules = dict(model.named_modules())
    for name in names:
        parametrize.register_parametrization(modules[name], "weight", LSQWeight(modules[name].weight, w_bits))
    return names


def bake(model: WorldModel) -> None:
    """Replace every LSQ-parametrized weight by its fake-quantized value ``w_hat`` (in place); the model is again a
    plain WorldModel whose state_dict has the FP checkpoint's keys."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def _dataset(cfg: TrainConfig, data_dir: Path, progress: bool) -> tuple[TrajectoryData, Path]:
    path = dataset_path(cfg, data_dir)
    if not path.exists():
        generate_dataset(cfg.env, cfg.n_traj, cfg.traj_len, cfg.seed, cfg.img_size, path, progress=progress,
                         policy=data_policy(cfg))
    return TrajectoryData.load(path), path


def batch(windows: Windows, traj: Tensor, start: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The windows (trajectory ``traj``, first frame ``start``, each (B,)) as ``latent_losses`` takes them: frames
    uint8 (B, L, H, W, 3), z-scored proprio (B, L, p) and actions (B, L, frameskip * a) on the windows' device."""
    frames, actions, prop = windows.gather(traj, start)
    return windows.pixels(traj, frames), prop, actions


def _visual_latents(model: WorldModel, frames: Tensor) -> Tensor:
    """uint8 frames (B, T, H, W, 3) -> visual latents (B, T, P, Dv)."""
    b, t = frames.shape[:2]
    x = uint8_to_visual(frames.reshape(b * t, 1, *frames.shape[2:]))  # (B*T, 1, 3, H, W)
    zeros = torch.zeros(b * t, 1, model.config.proprio_dim, device=frames.device)
    return model.encode_obs(x, zeros)["visual"].reshape(b, t, model.config.num_patches, model.config.encoder_dim)


def latent_losses(model: WorldModel, fp: WorldModel, frames: Tensor, prop: Tensor, actions: Tensor
                  ) -> tuple[Tensor, Tensor]:
    """(prediction, encoder) MSEs of ``model`` on one batch, both against the FP base ``fp``'s latents.

    frames uint8 (B, L, H, W, 3), prop z-scored (B, L, p), actions (B, L, f*a), L = num_hist + 1. prediction: the
    teacher-forced MSE of ``model.predict`` on ``model``'s own latents of frames 0..L-2 against ``fp``'s latents of
    frames 1..L-1 (visual and proprio slices, as train.py); encoder: MSE of ``model``'s visual latents of frames
    0..L-2 against ``fp``'s. For ``model`` = ``fp`` the first is train.py's loss and the second 0.
    """
    c = model.config
    h, dv, ep = c.num_hist, c.encoder_dim, c.proprio_emb_dim
    with torch.no_grad():
        target = _visual_latents(fp, frames)  # (B, L, P, Dv)
        pemb = fp.proprio_encoder(prop)  # (B, L, Ep), the fixed proprio embedding
    vis = _visual_latents(model, frames[:, :h])  # (B, h, P, Dv)
    p = vis.shape[2]
    aemb = model.action_encoder(actions[:, :h])  # (B, h, Ea)
    z = torch.cat([vis, pemb[:, :h, None].expand(-1, -1, p, -1), aemb[:, :, None].expand(-1, -1, p, -1)], -1)
    goal = torch.cat([target[:, 1:], pemb[:, 1:, None].expand(-1, -1, p, -1)], -1)  # (B, h, P, Dv+Ep)
    pred = model.predict(z)[..., :dv + ep]
    return F.mse_loss(pred, goal), F.mse_loss(vis, target[:, :h])


@torch.no_grad()
def heldout_losses(model: WorldModel, fp: WorldModel, windows: Windows, n: int, batch_size: int, seed: int
                   ) -> dict[str, float]:
    """Mean prediction / encoder loss (``latent_losses``) of ``model`` over ``n`` held-out windows drawn by
    ``seed`` (the same windows for every model)."""
    traj, start = windows.draw(n, torch.Generator().manual_seed(seed))
    totals = np.zeros(2)
    for lo in range(0, n, batch_size):
        sel = slice(lo, lo + batch_size)
        losses = latent_losses(model, fp, *batch(windows, traj[sel], start[sel]))
        totals += np.array([loss.item() for loss in losses]) * len(traj[sel])
    return {"prediction": float(totals[0] / n), "encoder": float(totals[1] / n)}


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def command(checkpoint: str, w_bits: int, steps: int, lr: float, batch_size: int, seed: int, out: Path | str,
            device: str) -> str:
    """The CLI call that makes this QAT model."""
    return (f"python -m wmqlib.qat --checkpoint {checkpoint} --bits {w_bits} --steps {steps} --lr {lr} "
            f"--batch-size {batch_size} --seed {seed} --device {device} --out {out}")


def finetune(checkpoint: str | Path, w_bits: int, steps: int, lr: float = 3e-4, batch_size: int = 32, seed: int = 0,
             out: str | Path | None = None, progress: bool = True, device: str = "cpu",
             data_dir: str | Path = DATASETS_DIR) -> WorldModel:
    """LSQ fine-tune of ``checkpoint`` at W``w_bits`` (module docstring); returns the baked QAT model (eval, CPU).

    checkpoint: a shipped model's short name or a wmq checkpoint folder whose card holds its training recipe;
    w_bits: 2..8; steps: >= 1 Adam steps at peak ``lr`` (cosine decay after a 5% warm-up, train.py's schedule) on
    batches of ``batch_size`` windows drawn by a generator seeded ``seed``; out: when given, the checkpoint folder
    written with card.json / MODEL_CARD.md (held-out losses of FP, RTN and QAT). Same arguments, same weights.
    The default lr 3e-4 was picked among 1e-4, 3e-4 and 1e-3 on mini-wall W3 (300 steps, batch 32): held-out
    prediction loss 0.00390, 0.00320, 0.00315, encoder loss 1.9e-4, 1.6e-4, 2.6e-4.
    """
    w_bits = check_int("w_bits", w_bits, 2, 8, why="QAT quantizes weights to 2..8 bits")
    steps = check_int("steps", steps, 1)
    lr = check_float("lr", lr, 0.0, 1.0, strict=True)
    batch_size = check_int("batch_size", batch_size, 1)
    seed = check_int("seed", seed, 0)
    check_type("checkpoint", checkpoint, (str, Path), "a checkpoint name or folder")
    device = resolve_device(device)
    t0 = time.perf_counter()
    folder = resolve_checkpoint(checkpoint)
    fp = load_world_model(folder, device)
    if fp.architecture != "dinowm":
        raise CheckpointError(f"checkpoint {folder} is an {type(fp).__name__} (architecture {fp.architecture!r}); "
                              "wmqlib.qat fine-tunes DINO-WM's teacher-forced predictor on its patch tokens and "
                              "only takes architecture 'dinowm'")
    fp.requires_grad_(False)
    cfg = checkpoint_recipe(fp.provenance, folder)
    data, train_path = _dataset(cfg, Path(data_dir), progress)
    held_cfg = dataclasses.replace(cfg, seed=cfg.seed + HELDOUT_SEED_OFFSET, n_traj=min(cfg.n_traj, HELDOUT_TRAJ))
    held, held_path = _dataset(held_cfg, Path(data_dir), progress)
    train_windows, held_windows = (Windows(d, fp.config.num_hist + 1, fp.config.frameskip, fp.device,
                                           fp.normalization()) for d in (data, held))
    stats = np.concatenate([data.action_mean, data.action_std, data.proprio_mean, data.proprio_std])
    if not np.allclose(stats, np.concatenate([fp.normalization()[k] for k in ("action_mean", "action_std",
                                                                               "proprio_mean", "proprio_std")]),
                       rtol=1e-4, atol=1e-6):
        raise CheckpointError(f"{train_path} does not have the statistics stored in {folder}/config.json: it is not "
                              f"the data the base model was trained on")
    t_data = time.perf_counter() - t0

    eval_seed = seed + HELDOUT_SEED_OFFSET
    rtn, _ = quantize(fp, RTN(w_bits))
    before = {"fp": heldout_losses(fp, fp, held_windows, HELDOUT_WINDOWS, batch_size, eval_seed),
              f"rtn_w{w_bits}": heldout_losses(rtn, fp, held_windows, HELDOUT_WINDOWS, batch_size, eval_seed)}
    del rtn

    model = copy.deepcopy(fp)
    names = attach_lsq(model, w_bits)
    for part in TRAINED_PARTS:
        getattr(model, part).requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(_: Tensor) -> Tensor:  # windows are drawn from `gen` (not from fit's step seed), as always
        pred_loss, enc_loss = latent_losses(model, fp, *batch(train_windows, *train_windows.draw(batch_size, gen)))
        return pred_loss + enc_loss

    t1 = time.perf_counter()  # Adam: fitting.fit's AdamW without weight decay, its warm-up + cosine schedule
    losses = fit(params, loss_fn, steps, lr, 0.0, torch.Generator(), f"QAT W{w_bits} {folder.name}", progress)
    t_train = time.perf_counter() - t1
    model.requires_grad_(False)
    bake(model)
    model.eval()
    after = heldout_losses(model, fp, held_windows, HELDOUT_WINDOWS, batch_size, eval_seed)
    model = model.cpu()
    base_sha = file_sha256(folder / "model.safetensors")
    model.provenance = {"trained_by": "wmqlib.qat", "base_checkpoint": folder.name, "base_sha256": base_sha,
                        "w_bits": w_bits, "base_provenance": fp.provenance}
    if out is None:
        return model
    out = Path(out)
    card: dict[str, Any] = {
        "kind": "qat", "base": {"checkpoint": folder.name, "sha256": base_sha},
        "architecture": model.config.to_dict(), "w_bits": w_bits,
        "grid": f"symmetric per-channel, narrow (codes -{2 ** (w_bits - 1) - 1}..{2 ** (w_bits - 1) - 1}), one "
                "learned step per output row, initialised from RTN's absmax / qmax",
        "quantized_linears": names, "steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed,
        "optimizer": "Adam, linear warm-up over 5% of the steps then cosine decay to 0; LSQ gradient scale on steps",
        "trained": list(TRAINED_PARTS), "frozen": ["proprio_encoder", "decoder"],
        "data": {"train": {"path": train_path.name, **data.meta}, "heldout": {"path": held_path.name, **held.meta},
                 "heldout_windows": HELDOUT_WINDOWS},
        "train_loss": {"first": losses[0], "last20": float(np.mean(losses[-20:]))},
        "heldout_loss": {**before, f"qat_w{w_bits}": after},
        "command": command(str(checkpoint), w_bits, steps, lr, batch_size, seed, out, str(device)),
        "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "seconds": {"data": round(t_data, 1), "training": round(t_train, 1),
                    "total": round(time.perf_counter() - t0, 1)},
    }
    save_world_model(model, out)
    write_qat_card(card, out)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wmqlib.qat", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="base checkpoint: a shipped name or a wmq folder")
    parser.add_argument("--bits", type=int, required=True, help="weight bits, 2..8")
    parser.add_argument("--steps", type=int, required=True, help="fine-tuning steps (>= 1)")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak Adam learning rate (default 3e-4)")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per step (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch draws (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        finetune(args.checkpoint, args.bits, args.steps, args.lr, args.batch_size, args.seed, args.out,
                 progress=not args.quiet, device=args.device)
    except ValueError as error:  # InvalidValue and CheckpointError are ValueErrors with the field in the message
        parser.error(str(error))
    print((Path(args.out) / "MODEL_CARD.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
