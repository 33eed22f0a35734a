"""Planning speed: wmq's batched CEM vs a DINO-WM-style loop, predictor FLOP/s vs matmul peak, quantized vs FP.

    python benchmarks/bench_plan.py --device auto --model mini-wall --episodes 8 --opt-steps 3

Three measurements, every ratio taken within this one run on this machine:

1. CEM planning of N episodes: wmq (all episodes in one batched planner, start and goal encoded once) vs a
   DINO-WM-style loop (one episode at a time, the start frame re-encoded for every sample at every iteration, as
   the released planner does). Same model, same CEM settings. Goal: >= 5x.
2. Predictor FLOP/s achieved during wmq planning (FLOPs counted by torch's FlopCounterMode on one objective call)
   vs the matmul throughput measured on exactly the predictor's linear-layer shapes. Goal: >= 50%.
3. Planning time of fake-quantized models (RTN W8 weight-only; W8A8 dynamic per-token; W8A8 static per-tensor)
   vs FP. Goals: weight-only <= 1.05x, W8A8 <= 1.5x.

--model takes a checkpoint name or path (load_world_model), a wmqlib.train preset name ("mini-wall", "mini-pusht",
"tiny": random weights at the shipped size when no checkpoint is present), "dinowm-wall" / "dinowm-pusht" (paper
size, random weights; for GPUs) or a JSON file of WorldModelConfig fields. Random weights plan meaningless paths,
but the compute per plan is the same as with trained ones.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from wmqlib.envs import make_env, sample_episodes
from wmqlib.models import WorldModel, WorldModelConfig, available_checkpoints, dinowm_config, load_world_model
from wmqlib.plan import CEMConfig, Objective, cem, encode_observations, latent_mse, make_generators
from wmqlib.quant import RTN, PerChannel, PerTensor, PerToken, capture_calibration, quantize


def build_model(spec: str, device: torch.device) -> tuple[WorldModel, str]:
    """The model named by --model and a description of where it came from."""
    if spec in available_checkpoints() or Path(spec).is_dir():
        return load_world_model(spec, device=device), f"checkpoint {spec}"
    if spec.endswith(".json"):
        return WorldModel(WorldModelConfig.from_dict(json.loads(Path(spec).read_text())), seed=0).to(device).eval(), \
            f"random weights, config {spec}"
    if spec.startswith("dinowm-"):
        return WorldModel(dinowm_config(spec.removeprefix("dinowm-")), seed=0).to(device).eval(), \
            "random weights, paper-size DINO-WM"
    from wmqlib.train import PRESETS

    if spec not in PRESETS:
        raise SystemExit(f"--model must be a checkpoint, a preset {sorted(PRESETS)}, dinowm-wall/pusht or a .json")
    return WorldModel(PRESETS[spec].model_config(), seed=0).to(device).eval(), \
        f"random weights, shipped size (preset {spec}; no checkpoint found)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall time in seconds of ``repeats`` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def observations(model: WorldModel, n: int) -> tuple[dict, dict]:
    """Start and goal observations of n evaluation episodes of the model's env, at the model's image size."""
    env = make_env(model.config.env, render_size=model.config.img_size)
    eps = sample_episodes(model.config.env, n, seed=99)
    return tuple(env.observe(np.stack([getattr(ep, f) for ep in eps])) for f in ("start_state", "goal_state"))


def range_seeds(n: int) -> list[int]:
    """Planner seeds of the n episodes (the evaluation episode seeds), shared by both planners."""
    return [99 * k + 1 for k in range(n)]


def wmq_planner(model: nn.Module, start_obs: dict, goal_obs: dict, cfg: CEMConfig, chunk: int,
                device: torch.device) -> Callable[[], object]:
    """All episodes in one batched CEM run; start and goal encoded once per episode."""
    n = len(start_obs["proprio"])

    def run():
        with torch.no_grad():
            objective = Objective(model, encode_observations(model, start_obs), encode_observations(model, goal_obs),
                                  chunk=chunk)
            return cem(objective, cfg, make_generators(range_seeds(n), device), model.action_dim, device=device)
    return run


def dinowm_loop(model: WorldModel, start_obs: dict, goal_obs: dict, cfg: CEMConfig,
                device: torch.device) -> Callable[[], object]:
    """DINO-WM's structure: episodes one by one; every cost call re-encodes the start frame once per sample."""
    n = len(start_obs["proprio"])

    def run():
        with torch.no_grad():
            for e in range(n):
                frames = torch.as_tensor(start_obs["visual"][e:e + 1, None], device=device)
                proprio = torch.as_tensor(start_obs["proprio"][e:e + 1, None], device=device)
                visual0, proprio0 = model.prepare_obs(frames, proprio)
                goal = encode_observations(model, {k: v[e:e + 1] for k, v in goal_obs.items()})

                def cost(actions, visual0=visual0, proprio0=proprio0, goal=goal):
                    s = actions.shape[1]
                    z0 = model.encode_obs(visual0.expand(s, -1, -1, -1, -1), proprio0.expand(s, -1, -1))
                    return latent_mse(model.rollout(z0, actions[0]), goal)[None]

                cem(cost, cfg, make_generators(range_seeds(n)[e:e + 1], device), model.action_dim, device=device)
    return run


def predictor_flops_and_shapes(model: WorldModel, objective: Objective, actions: torch.Tensor
                               ) -> tuple[int, list[tuple[int, int, int]]]:
    """FLOPs of the predictor in one objective call, and the (rows, in, out) of every predictor linear call."""
    shapes: list[tuple[int, int, int]] = []
    linears = [m for m in model.predictor.modules() if isinstance(m, nn.Linear)]
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append((i[0].numel() // i[0].shape[-1],
                                                                    m.in_features, m.out_features)))
             for m in linears]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        objective(actions)
    for h in hooks:
        h.remove()
    per_module = counter.get_flop_counts()
    key = next((k for k in per_module if k.endswith(".predictor") or k == "predictor"), None)
    flops = sum(per_module[key].values()) if key else counter.get_total_flops()
    return int(flops), shapes


def matmul_peak(shapes: list[tuple[int, int, int]], dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """FLOP/s of plain matmuls with exactly these (rows, in, out) shapes, run back to back."""
    gen = torch.Generator(device=device).manual_seed(0)
    mats = [(torch.randn(r, i, generator=gen, device=device).to(dtype),
             torch.randn(i, o, generator=gen, device=device).to(dtype)) for r, i, o in shapes]
    flops = sum(2 * r * i * o for r, i, o in shapes)

    def run():
        for a, b in mats:
            torch.mm(a, b)
    return flops / timed(run, device, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    parser.add_argument("--model", default="mini-wall", help="checkpoint name/path, preset, dinowm-<env> or .json")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--topk", type=int, default=30)
    parser.add_argument("--horizon", type=int, default=5)
    parser.add_argument("--opt-steps", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model weights dtype")
    parser.add_argument("--chunk", type=int, default=4096, help="max sequences per rollout call (wmq)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats (best is reported)")
    parser.add_argument("--skip-loop", action="store_true", help="skip the (slow) DINO-WM-style loop")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    torch.manual_seed(0)
    model, origin = build_model(args.model, device)
    model = model.to(getattr(torch, args.dtype))
    cfg = CEMConfig(horizon=args.horizon, samples=args.samples, topk=args.topk, opt_steps=args.opt_steps)
    c = model.config
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, dtype {args.dtype}")
    print(f"model {args.model}: {origin}; {c.num_patches} tokens, predictor {c.predictor_depth}x"
          f"{c.predictor_heads}x{c.predictor_dim_head} mlp {c.predictor_mlp_dim}, latent {c.latent_dim}, "
          f"encoder {c.encoder_depth}x{c.encoder_dim}")
    print(f"CEM: {args.episodes} episodes x {cfg.samples} samples x {cfg.opt_steps} iterations, horizon {cfg.horizon}")
    start_obs, goal_obs = observations(model, args.episodes)

    # 1. batched vs DINO-WM-style loop
    t_wmq = timed(wmq_planner(model, start_obs, goal_obs, cfg, args.chunk, device), device, args.repeats)
    print(f"\n[1] wmq batched planning:        {t_wmq:8.3f} s  ({t_wmq / args.episodes * 1e3:.1f} ms/episode)")
    if not args.skip_loop:
        t_loop = timed(dinowm_loop(model, start_obs, goal_obs, cfg, device), device, 1)
        print(f"    DINO-WM-style loop:          {t_loop:8.3f} s  ({t_loop / args.episodes * 1e3:.1f} ms/episode)")
        print(f"    speed-up batched / loop:     {t_loop / t_wmq:8.2f} x   (goal >= 5x)")

    # 2. predictor FLOP/s during planning vs matmul peak at the same shapes
    with torch.no_grad():
        objective = Objective(model, encode_observations(model, start_obs), encode_observations(model, goal_obs),
                              chunk=args.chunk)
    actions = torch.randn(args.episodes, cfg.samples, cfg.horizon, model.action_dim, device=device)
    flops_call, shapes = predictor_flops_and_shapes(model, objective, actions)
    calls = cfg.opt_steps + 1 / cfg.samples  # a full call per iteration + the final loss of E plans (1 sample)
    achieved = flops_call * calls / t_wmq
    peak = matmul_peak(shapes, model.dtype, device, args.repeats)
    print(f"\n[2] predictor FLOPs per CEM iteration (FlopCounterMode, attention included): "
          f"{flops_call / 1e9:.2f} GFLOP ({len(shapes)} linear calls, e.g. rows x in x out = {shapes[0]})")
    print(f"    achieved during planning:    {achieved / 1e9:8.1f} GFLOP/s (whole planning time, encoder included)")
    print(f"    matmul peak, same shapes:    {peak / 1e9:8.1f} GFLOP/s")
    print(f"    achieved / peak:             {achieved / peak:8.1%}   (goal >= 50%)")

    # 3. fake-quantized planning vs FP
    with torch.no_grad(), capture_calibration(model, max_tokens=256, max_sequences=0) as calib:
        encode_observations(model, start_obs)  # encoder ranges
        objective(actions[:, :8])  # predictor ranges
    recipes = {"W8 weight-only (RTN per-channel)": (RTN(8, PerChannel()), None),
               "W8A8 dynamic per-token": (RTN(8, PerChannel(), a_bits=8, a_granularity=PerToken()), None),
               "W8A8 static per-tensor": (RTN(8, PerChannel(), a_bits=8, a_granularity=PerTensor()), calib)}
    print(f"\n[3] planning time vs FP ({t_wmq:.3f} s):")
    for label, (recipe, calibration) in recipes.items():
        qmodel, _ = quantize(model, recipe, calibration)
        t_q = timed(wmq_planner(qmodel, start_obs, goal_obs, cfg, args.chunk, device), device, args.repeats)
        goal = "<= 1.05" if recipe.a_bits is None else "<= 1.5"
        print(f"    {label:34s} {t_q:8.3f} s  ratio {t_q / t_wmq:6.3f}  (goal {goal})")


if __name__ == "__main__":
    main()
