"""A released-DINO-WM-layout folder written from scratch, for the model tests (their fixtures: conftest.py).

The released layout is reproduced the way DINO-WM wrote it: a temporary package named ``models`` (vit.py,
proprio.py, vqvae.py with DINO-WM's attribute layouts) and a stand-in ``accelerate`` package are written to disk,
their modules are pickled whole into ``checkpoints/model_latest.pth`` with ``torch.save`` next to a
``hydra.yaml``, the expected outputs are computed, and both packages are removed from sys.path and sys.modules
before any test loads the folder (``build_released``).
"""

from __future__ import annotations

import functools
import math
import pickle
import sys
import textwrap
import types
from pathlib import Path

import torch
import yaml

FIXTURE_MODULES = {
    "models/__init__.py": "",
    "models/vit.py": '''
        import torch
        from torch import nn

        def block_causal(patches, frames):
            frame = torch.arange(patches * frames) // patches
            return (frame[:, None] >= frame[None, :]).float()[None, None]

        class FeedForward(nn.Module):
            def __init__(self, dim, hidden_dim, dropout=0.0):
                super().__init__()
                self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden_dim), nn.GELU(),
                                         nn.Dropout(dropout), nn.Linear(hidden_dim, dim), nn.Dropout(dropout))

            def forward(self, x):
                return self.net(x)

        class Attention(nn.Module):
            def __init__(self, dim, heads, dim_head, dropout, patches, frames):
                super().__init__()
                inner = heads * dim_head
                self.heads, self.scale = heads, dim_head ** -0.5
                self.norm = nn.LayerNorm(dim)
                self.attend = nn.Softmax(dim=-1)
                self.dropout = nn.Dropout(dropout)
                self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
                self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
                self.bias = block_causal(patches, frames)  # a plain attribute, not a buffer, as released

            def forward(self, x):
                b, n, _ = x.shape
                q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2)
                           for t in self.to_qkv(self.norm(x)).chunk(3, dim=-1))
                dots = (q @ k.transpose(-1, -2)) * self.scale
                dots = dots.masked_fill(self.bias[:, :, :n, :n] == 0, float("-inf"))
                out = self.dropout(self.attend(dots)) @ v
                return self.to_out(out.transpose(1, 2).reshape(b, n, -1))

        class Transformer(nn.Module):
            def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout, patches, frames):
                super().__init__()
                self.norm = nn.LayerNorm(dim)
                self.layers = nn.ModuleList([
                    nn.ModuleList([Attention(dim, heads, dim_head, dropout, patches, frames),
                                   FeedForward(dim, mlp_dim, dropout)])
                    for _ in range(depth)])

            def forward(self, x):
                for attn, ff in self.layers:
                    x = attn(x) + x
                    x = ff(x) + x
                return self.norm(x)

        class ViTPredictor(nn.Module):
            def __init__(self, *, num_patches, num_frames, dim, depth, heads, mlp_dim, pool="mean", dim_head=64,
                         dropout=0.0, emb_dropout=0.0):
                super().__init__()
                self.pos_embedding = nn.Parameter(torch.randn(1, num_frames * num_patches, dim))
                self.dropout = nn.Dropout(emb_dropout)
                self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout, num_patches,
                                               num_frames)
                self.pool = pool

            def forward(self, x):
                return self.transformer(self.dropout(x + self.pos_embedding[:, :x.shape[1]]))
    ''',
    "models/proprio.py": '''
        from torch import nn

        class ProprioceptiveEmbedding(nn.Module):
            def __init__(self, num_frames=16, tubelet_size=1, in_chans=8, emb_dim=384, use_3d_pos=False):
                super().__init__()
                self.num_frames, self.tubelet_size, self.in_chans, self.emb_dim = (num_frames, tubelet_size,
                                                                                     in_chans, emb_dim)
                self.patch_embed = nn.Conv1d(in_chans, emb_dim, kernel_size=tubelet_size, stride=tubelet_size)

            def forward(self, x):
                return self.patch_embed(x.permute(0, 2, 1)).permute(0, 2, 1)
    ''',
    "models/vqvae.py": '''
        import torch
        from torch import nn

        class Quantize(nn.Module):
            def __init__(self, dim, n_embed):
                super().__init__()
                embed = torch.randn(dim, n_embed)
                self.register_buffer("embed", embed)
                self.register_buffer("cluster_size", torch.zeros(n_embed))
                self.register_buffer("embed_avg", embed.clone())

        class ResBlock(nn.Module):
            def __init__(self, in_channel, channel):
                super().__init__()
                self.conv = nn.Sequential(nn.ReLU(), nn.Conv2d(in_channel, channel, 3, padding=1),
                                          nn.ReLU(inplace=True), nn.Conv2d(channel, in_channel, 1))

            def forward(self, x):
                return self.conv(x) + x

        class Decoder(nn.Module):
            def __init__(self, in_channel, out_channel, channel, n_res_block, n_res_channel, stride):
                super().__init__()
                blocks = [nn.Conv2d(in_channel, channel, 3, padding=1)]
                blocks += [ResBlock(channel, n_res_channel) for _ in range(n_res_block)]
                blocks += [nn.ReLU(inplace=True),
                           nn.ConvTranspose2d(channel, channel // 2, 4, stride=2, padding=1),
                           nn.ReLU(inplace=True),
                           nn.ConvTranspose2d(channel // 2, out_channel, 4, stride=2, padding=1)]
                self.blocks = nn.Sequential(*blocks)

            def forward(self, x):
                return self.blocks(x)

        class VQVAE(nn.Module):
            def __init__(self, in_channel=3, channel=128, n_res_block=2, n_res_channel=32, emb_dim=64,
                         n_embed=512, quantize=True):
                super().__init__()
                self.quantize = quantize
                self.quantize_b = Quantize(emb_dim, n_embed)
                self.upsample_b = Decoder(emb_dim, emb_dim, channel, n_res_block, n_res_channel, stride=4)
                self.dec = Decoder(emb_dim, in_channel, channel, n_res_block, n_res_channel, stride=4)

            def forward(self, x):
                b, t, p, e = x.shape
                side = int(p ** 0.5)
                grid = x.reshape(b * t, side, side, e).permute(0, 3, 1, 2)
                return self.dec(self.upsample_b(grid)), torch.zeros(1)
    ''',
    "accelerate/__init__.py": "",
    "accelerate/utils/__init__.py": "",
    "accelerate/utils/dataclasses.py": '''
        import enum

        class DistributedType(str, enum.Enum):
            NO = "NO"
            MULTI_GPU = "MULTI_GPU"
    ''',
    "accelerate/state.py": '''
        import torch
        from accelerate.utils.dataclasses import DistributedType

        class AcceleratorState:
            def __init__(self):
                self.distributed_type = DistributedType.MULTI_GPU
                self.device = torch.device("cpu")
                self.mixed_precision = "no"

        class GradientState:
            def __init__(self):
                self.sync_gradients = True
                self.plugin_kwargs = {"num_steps": 1}
    ''',
    "accelerate/optimizer.py": '''
        from accelerate.state import AcceleratorState, GradientState

        class AcceleratedOptimizer:
            def __init__(self, optimizer):
                self.optimizer = optimizer
                self.scaler = None
                self.accelerator_state = AcceleratorState()
                self.gradient_state = GradientState()
    ''',
}

RELEASED_SIZES = dict(dinov2_dim=64, dinov2_depth=2, dinov2_mlp=96, patch=4, pos_grid=5, img_size=64,
                      pred_depth=2, pred_heads=2, pred_dim_head=8, pred_mlp=32, num_hist=3, frameskip=5,
                      emb=10, proprio_dim=4, dec_channel=8, dec_res_blocks=1, dec_res_channel=4, dec_n_embed=16)


def dinov2_layout_state_dict(dim: int, depth: int, mlp: int, patch: int, pos_grid: int,
                             seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the exact keys and shapes of a DINOv2 ViT ``*_pretrain.pth`` (written out by hand)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, 1 + pos_grid**2, dim), "mask_token": (1, dim),
              "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,),
              "norm.weight": (dim,), "norm.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({
            b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
            b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
            b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,), b + "ls1.gamma": (dim,),
            b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
            b + "mlp.fc1.weight": (mlp, dim), b + "mlp.fc1.bias": (mlp,),
            b + "mlp.fc2.weight": (dim, mlp), b + "mlp.fc2.bias": (dim,), b + "ls2.gamma": (dim,),
        })
    state = {}
    for key, shape in shapes.items():
        fan_in = shape[-1] if len(shape) == 2 else math.prod(shape[1:]) if len(shape) == 4 else 1
        scale = 1.0 / math.sqrt(fan_in) if key.endswith("weight") and len(shape) > 1 else 0.1
        base = 1.0 if key.endswith(("norm1.weight", "norm2.weight", "norm.weight")) else 0.0
        state[key] = base + scale * torch.randn(shape, generator=g)
    return state


def released_hydra(s: dict, env: str = "pusht") -> dict:
    """A resolved DINO-WM training config with the fields planning reads (as train.py writes hydra.yaml)."""
    return {
        "env": {"name": env, "args": [], "kwargs": {"with_velocity": True}},
        "encoder": {"_target_": "models.dino.DinoV2Encoder", "name": "dinov2_vits14",
                    "feature_key": "x_norm_patchtokens"},
        "predictor": {"_target_": "models.vit.ViTPredictor", "depth": s["pred_depth"], "heads": s["pred_heads"],
                      "mlp_dim": s["pred_mlp"], "dropout": 0.1, "emb_dropout": 0, "pool": "mean"},
        "decoder": {"_target_": "models.vqvae.VQVAE", "channel": s["dec_channel"], "n_embed": s["dec_n_embed"],
                    "n_res_block": s["dec_res_blocks"], "n_res_channel": s["dec_res_channel"], "quantize": False},
        "action_encoder": {"_target_": "models.proprio.ProprioceptiveEmbedding", "num_frames": 1,
                           "tubelet_size": 1, "use_3d_pos": False},
        "proprio_encoder": {"_target_": "models.proprio.ProprioceptiveEmbedding", "num_frames": 1,
                            "tubelet_size": 1, "use_3d_pos": False},
        "img_size": s["img_size"], "frameskip": s["frameskip"], "concat_dim": 1, "num_hist": s["num_hist"],
        "num_pred": 1, "action_emb_dim": s["emb"], "proprio_emb_dim": s["emb"], "num_action_repeat": 1,
        "num_proprio_repeat": 1, "training": {"seed": 0, "batch_size": 32},
    }


def write_packages(root: Path, files: dict[str, str]) -> None:
    """Write ``{relative path: source}`` under ``root``."""
    for rel, source in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))


class TemporaryPackages:
    """Context manager: put ``root`` first on sys.path for ``names``; afterwards remove it and every module of those
    top-level packages from sys.modules, restoring any that were imported before."""

    def __init__(self, root: Path, names: tuple[str, ...]) -> None:
        self.root, self.names, self.saved = str(root), names, {}

    def _take(self) -> dict:
        return {n: sys.modules.pop(n) for n in list(sys.modules) if n.split(".")[0] in self.names}

    def __enter__(self) -> None:
        self.saved = self._take()
        sys.path.insert(0, self.root)

    def __exit__(self, *exc) -> None:
        sys.path.remove(self.root)
        self._take()
        sys.modules.update(self.saved)


class ConvertOutputsToFp32:
    """accelerate's wrapper of a mixed-precision forward (outputs cast back to float32), named like the forward."""

    def __init__(self, forward):
        self.forward = forward
        functools.update_wrapper(self, forward)

    def __call__(self, *args, **kwargs):
        out = self.forward(*args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) else out

    def __getstate__(self):
        raise pickle.PicklingError("accelerate refuses to pickle a mixed-precision forward")


def patch_forward_like_accelerate(module: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
    """What ``Accelerator(mixed_precision=...).prepare(module)`` does to a module (accelerate 0.26.1): keep the bound
    forward as ``_original_forward`` and replace ``forward`` by a bound method running it under autocast with fp32
    outputs. Both are bound methods in the module's __dict__, pickled as ``getattr(module, "forward")``."""
    module._original_forward = module.forward
    forward = module.forward.__func__

    @functools.wraps(forward)
    def autocast_forward(*args, **kwargs):
        with torch.autocast(device_type="cpu", dtype=dtype):
            return forward(*args, **kwargs)

    module.forward = types.MethodType(autocast_forward, module)
    module.forward = types.MethodType(ConvertOutputsToFp32(module.forward.__func__), module)


def build_released(root: Path, device: str = "cpu", real_accelerate: bool = False,
                   mixed_precision: bool = False) -> dict:
    """Write outputs/pusht (hydra.yaml, checkpoints/model_{latest,7,8}.pth; 8 has no decoder) under ``root`` the way
    DINO-WM's train.py saves, with modules on ``device``; plus DINOv2 weights and the modules' expected outputs.

    real_accelerate: wrap the optimizer with the installed accelerate (Accelerator().prepare) instead of the
    stand-in package written here. mixed_precision: patch every saved module's forward as accelerate's mixed
    precision does (``patch_forward_like_accelerate``) before saving; the weights and the expected outputs (of the
    original forwards) are the same as without it.
    """
    s = RELEASED_SIZES
    src = root / "src"
    names = ("models",) if real_accelerate else ("models", "accelerate")
    write_packages(src, {k: v for k, v in FIXTURE_MODULES.items() if k.split("/")[0] in names})
    with TemporaryPackages(src, names):
        import models.proprio  # the fixture package written above
        import models.vit
        import models.vqvae

        torch.manual_seed(0)
        patches = (s["img_size"] // 16) ** 2
        dim = s["dinov2_dim"] + 2 * s["emb"]
        predictor = models.vit.ViTPredictor(num_patches=patches, num_frames=s["num_hist"], dim=dim,
                                            depth=s["pred_depth"], heads=s["pred_heads"], mlp_dim=s["pred_mlp"],
                                            dim_head=s["pred_dim_head"], dropout=0.1)
        action_encoder = models.proprio.ProprioceptiveEmbedding(num_frames=1, in_chans=2 * s["frameskip"],
                                                                emb_dim=s["emb"])
        proprio_encoder = models.proprio.ProprioceptiveEmbedding(num_frames=1, in_chans=s["proprio_dim"],
                                                                 emb_dim=s["emb"])
        decoder = models.vqvae.VQVAE(channel=s["dec_channel"], n_res_block=s["dec_res_blocks"],
                                     n_res_channel=s["dec_res_channel"], emb_dim=s["dinov2_dim"],
                                     n_embed=s["dec_n_embed"], quantize=False)
        modules = {"predictor": predictor, "decoder": decoder, "action_encoder": action_encoder,
                   "proprio_encoder": proprio_encoder}
        for module in modules.values():
            module.to(device)
        for layer in predictor.transformer.layers:
            layer[0].bias = layer[0].bias.to(device)  # DINO-WM created its masks on CUDA
        optimizer = torch.optim.AdamW(predictor.parameters(), lr=1e-3)
        predictor(torch.randn(2, patches, dim, device=device)).square().mean().backward()
        optimizer.step()  # a non-empty optimizer state, as in a real checkpoint
        if real_accelerate:
            import accelerate

            optimizer = accelerate.Accelerator().prepare(optimizer)
        else:
            import accelerate.optimizer

            optimizer = accelerate.optimizer.AcceleratedOptimizer(optimizer)
        payload = {"epoch": 7, **modules, "predictor_optimizer": optimizer}
        folder = root / "outputs" / "pusht"
        (folder / "checkpoints").mkdir(parents=True)
        if mixed_precision:
            for module in modules.values():
                patch_forward_like_accelerate(module)
        torch.save(payload, folder / "checkpoints" / "model_latest.pth")
        torch.save(payload, folder / "checkpoints" / "model_7.pth")
        torch.save({k: v for k, v in payload.items() if k != "decoder"}, folder / "checkpoints" / "model_8.pth")
        for module in modules.values():  # back to the original forwards for the expected outputs
            module.__dict__.pop("forward", None)
            module.__dict__.pop("_original_forward", None)
        (folder / "hydra.yaml").write_text(yaml.safe_dump(released_hydra(s)))

        g = torch.Generator().manual_seed(1)
        inputs = {"tokens": torch.randn(3, s["num_hist"] * patches, dim, generator=g),
                  "action": torch.randn(3, 4, 2 * s["frameskip"], generator=g),
                  "proprio": torch.randn(3, 4, s["proprio_dim"], generator=g),
                  "latents": torch.randn(2, 1, patches, s["dinov2_dim"], generator=g)}
        with torch.no_grad():
            for module in modules.values():
                module.eval()
            on = {k: v.to(device) for k, v in inputs.items()}
            expected = {"predictor": predictor(on["tokens"]),
                        "action_encoder": action_encoder(on["action"]),
                        "proprio_encoder": proprio_encoder(on["proprio"]),
                        "decoder": decoder(on["latents"])[0]}
            expected = {k: v.cpu() for k, v in expected.items()}
    dinov2 = dinov2_layout_state_dict(s["dinov2_dim"], s["dinov2_depth"], s["dinov2_mlp"], s["patch"],
                                      s["pos_grid"])
    dinov2_path = root / "dinov2_tiny_pretrain.pth"
    torch.save(dinov2, dinov2_path)
    return {"folder": folder, "dinov2_path": dinov2_path, "dinov2": dinov2, "inputs": inputs,
            "expected": expected, "sizes": s, "root": root}
