"""Planning speed against references measured in the same run: a large GEMM, the DINO-WM loop, and FP planning.

    python benchmarks/bench_plan.py --device cpu --model mini-wall --episodes 8 --opt-steps 3
    python benchmarks/bench_plan.py --paths eager,compiled,math-attention  # the speed paths against each other
    python benchmarks/bench_plan.py --profile full --settings 120          # price of one setting, and of the grid

Time nothing else while it runs: every ratio is taken within this run, but load from another process still moves
the planning and the references by different amounts. Measurements (best of ``--repeats``, variants interleaved
round-robin so drift hits them alike):

0. The machine's reference: FLOP/s of one large square fp32 GEMM (``--gemm``, 2048^3), timed before and after the
   planning (both printed; the higher is the reference). On CUDA also TF32 and bf16.
1. CEM planning of N episodes: wmq (all episodes in one batched planner, start and goal encoded once) vs a
   DINO-WM-style loop (one episode at a time, the start frame re-encoded for every sample at every iteration).
2. Predictor FLOP/s achieved during planning (FLOPs counted by FlopCounterMode on one objective call, times the
   calls of a run, over the whole planning time) vs the large-GEMM peak, and vs matmuls of exactly the predictor's
   linear shapes (the "same-shape" figure: what these small matrices can reach at best).
3. Planning time of fake-quantized models (RTN W8 weight-only; W8A8 dynamic per-token; W8A8 static per-tensor)
   vs FP, for every speed path in ``--paths`` (see PATHS: ``wmqlib.models.predictor.ATTENTION`` and
   ``WorldModel.compile_rollout``).
   ``--chunk-sweep 256,1024,4096`` also times FP and W8A8 per-token planning at several Objective chunk sizes
   (smaller rollout blocks keep the activations in cache; the study's default is ``wmqlib.plan.CHUNK``).
4. ``--profile NAME [NAME ...]``: one FP setting of that study profile (``profile.setting(checkpoint, env)``:
   its episodes, CEM sizes and iterations, traced) run by the study's ``run_setting``, and the grid extrapolated as
   ``--settings`` x that time. Stated as what it is: settings that trace longer, run MPC rounds or calibrate cost
   more than this one, so the extrapolation is a floor for such grids.

The goal lines (issue 14) end in "ok" or "MISSED"; a goal that needs a GPU says so on a CPU. ``--record FILE`` also
writes what [0]-[3] measured as JSON (the README's "Planning cost" table is rendered from
``data/results/bench/plan.json`` by ``python -m wmqlib.readme``).

--model takes a checkpoint name or path (load_world_model), a wmqlib.train preset name ("mini-wall", "mini-pusht",
"tiny": random weights at the shipped size when no checkpoint is present), "dinowm-wall" / "dinowm-pusht" (paper
size, random weights; for GPUs) or a JSON file of WorldModelConfig fields. Random weights plan meaningless paths,
but the compute per plan is the same as with trained ones.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import wmqlib.models.predictor as predictor_module
from wmqlib.envs import make_env, sample_episodes
from wmqlib.models import WorldModel, WorldModelConfig, available_checkpoints, dinowm_config, load_world_model
from wmqlib.cost import machine
from wmqlib.plan import CHUNK, CEMConfig, Objective, cem, encode_observations, latent_mse, make_generators
from wmqlib.quant import RTN, PerChannel, PerTensor, PerToken, capture_calibration, quantize
from wmqlib.validate import atomic_write

# Speed paths: values of the switches. "eager" is the library's default (SDPA attention, eager rollout);
# "math-attention" is DINO-WM's explicit softmax attention; "compiled" adds torch.compile of the rollout.
PATHS: dict[str, dict[str, object]] = {
    "eager": dict(ATTENTION="sdpa", compile=False),
    "compiled": dict(ATTENTION="sdpa", compile=True),
    "math-attention": dict(ATTENTION="math", compile=False),
}
GOALS = {"predictor / large-GEMM peak": 0.75, "W8 weight-only / FP": 1.02, "W8A8 per-token / FP": 1.2,
         "W8A8 per-tensor / FP": 1.2, "batched / loop (GPU, mini size)": 5.0}


@contextlib.contextmanager
def speed_path(name: str, models: list[nn.Module]) -> Iterator[None]:
    """Set the switches of ``PATHS[name]`` (and compile the models' rollouts if asked); restore them afterwards."""
    path = PATHS[name]
    saved = predictor_module.ATTENTION
    try:
        predictor_module.ATTENTION = path["ATTENTION"]
        for model in models:
            model.compile_rollout(bool(path["compile"]))
        yield
    finally:
        predictor_module.ATTENTION = saved
        for model in models:
            model.compile_rollout(False)


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
    from wmqlib.recipes import PRESETS

    if spec not in PRESETS:
        raise SystemExit(f"--model must be a checkpoint, a preset {sorted(PRESETS)}, dinowm-wall/pusht or a .json")
    return WorldModel(PRESETS[spec].model_config(), seed=0).to(device).eval(), \
        f"random weights, shipped size (preset {spec}; no checkpoint found)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def once(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time in seconds of one call."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall time in seconds of ``repeats`` calls after one warm-up call."""
    fn()
    return min(once(fn, device) for _ in range(repeats))


def interleaved(fns: dict[Hashable, Callable[[], object]], device: torch.device, repeats: int
                ) -> dict[Hashable, float]:
    """Best time of each function over ``repeats`` round-robin rounds (after one warm-up call each)."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], once(fn, device))
    return best


def gemm_peaks(device: torch.device, n: int, repeats: int) -> dict[str, float]:
    """FLOP/s of an n x n x n matmul: fp32 always; on CUDA also TF32 and bf16 (2 n^3 FLOPs per call)."""
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen, device=device) for _ in range(2))
    kinds = {"fp32": (torch.float32, False)}
    if device.type == "cuda":
        kinds |= {"tf32": (torch.float32, True), "bf16": (torch.bfloat16, False)}
    peaks = {}
    for label, (dtype, tf32) in kinds.items():
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            x, y = a.to(dtype), b.to(dtype)
            peaks[label] = 2 * n**3 / timed(lambda: torch.mm(x, y), device, repeats)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
    return peaks


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


def goal_line(label: str, value: float, unit: str = "x", gpu_only: bool = False, device: torch.device | None = None
              ) -> str:
    """``label  value  (goal <= / >= target)  ok | MISSED`` for a goal of GOALS."""
    target = GOALS[label]
    at_least = label.startswith(("predictor", "batched"))
    met = value >= target if at_least else value <= target
    shown = f"{value:8.1%}" if unit == "%" else f"{value:8.3f}x"
    goal = f"{'>=' if at_least else '<='} {target:.0%}" if unit == "%" else f"{'>=' if at_least else '<='} {target}x"
    verdict = "ok" if met else "MISSED"
    if gpu_only and device is not None and device.type != "cuda":
        verdict = "(GPU goal; report only)"
    return f"    GOAL {label:34s} {shown}  (goal {goal})  {verdict}"


def profile_rows(names: list[str], checkpoint: str, device: torch.device, settings: int | None, episodes: int | None
                 ) -> None:
    """[4] Time one FP setting of each profile with the study's run_setting; extrapolate the grid."""
    from wmqlib import profiles, study
    from wmqlib.caches import CACHES

    print(f"\n[4] study cost per profile (one FP setting of checkpoint {checkpoint}, run by {study.__name__}"
          ".run_setting; extrapolated, not measured, beyond it)")
    for name in names:
        profile = profiles.make_profile(name, n_evals=episodes)
        setting = profile.setting(checkpoint, CACHES.checkpoint(checkpoint).env, device=str(device))
        steps = setting.planner.opt_steps
        sync(device)
        t0 = time.perf_counter()
        table = study.run_setting(setting)
        sync(device)
        seconds = time.perf_counter() - t0
        planning = float(table["seconds"].iloc[0])  # run_setting's own clock: planning and scoring only
        per = seconds / (setting.n_evals * steps)
        print(f"    profile {name:6s} 1 setting = {setting.n_evals} episodes x CEM {setting.planner.samples}/"
              f"{setting.planner.topk} x {steps} iterations (traced): {seconds:8.1f} s wall, of which "
              f"{planning:.1f} s planning and scoring ({per * 1e3:.1f} ms per episode-iteration)")
        print(f"        each extra {setting.n_evals} episodes per setting adds {seconds:.0f} s per setting; an MPC "
              f"setting of R rounds costs about R x this (one replanning per round)")
        if settings is not None:
            print(f"        grid of {settings} settings like this one: {settings * seconds / 3600:6.2f} h "
                  f"(a floor when the grid holds longer traces, MPC or calibrated methods)")


def parse_paths(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in PATHS]
    if not names or unknown:
        raise SystemExit(f"--paths must be a comma-separated list of {list(PATHS)}, got {text!r}")
    return names


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
    parser.add_argument("--chunk", type=int, default=CHUNK, help="max sequences per rollout call (wmq; default the "
                        "study's, wmqlib.plan.CHUNK)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (best is reported)")
    parser.add_argument("--gemm", type=int, default=2048, help="size n of the n^3 reference GEMM")
    parser.add_argument("--paths", default="eager", help=f"comma-separated speed paths of {list(PATHS)}")
    parser.add_argument("--chunk-sweep", default="", help="comma-separated chunk sizes to time FP and W8A8 "
                        "per-token planning at (library defaults; smaller blocks keep activations in cache)")
    parser.add_argument("--skip-loop", action="store_true", help="skip the (slow) DINO-WM-style loop")
    parser.add_argument("--profile", nargs="*", default=[], help="study profiles to price (full, paper, smoke)")
    parser.add_argument("--profile-checkpoint", default=None,
                        help="checkpoint of the priced setting (default: --model)")
    parser.add_argument("--profile-episodes", type=int, default=None, help="episodes of the priced setting "
                        "(default: the profile's n_evals, 50 in full and paper)")
    parser.add_argument("--settings", type=int, default=None, help="settings in the profile's grid, to extrapolate")
    parser.add_argument("--record", default=None, help="also write what [0]-[3] measured to this JSON file")
    args = parser.parse_args()
    paths = parse_paths(args.paths)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    torch.manual_seed(0)
    model, origin = build_model(args.model, device)
    model = model.to(getattr(torch, args.dtype))
    cfg = CEMConfig(horizon=args.horizon, samples=args.samples, topk=args.topk, opt_steps=args.opt_steps)
    c = model.config
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, dtype {args.dtype}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"model {args.model}: {origin}; {c.num_patches} tokens x {c.num_hist} frames, predictor "
          f"{c.predictor_depth}x{c.predictor_heads}x{c.predictor_dim_head} mlp {c.predictor_mlp_dim}, latent "
          f"{c.latent_dim}, encoder {c.encoder_depth}x{c.encoder_dim}")
    print(f"CEM: {args.episodes} episodes x {cfg.samples} samples x {cfg.opt_steps} iterations, horizon {cfg.horizon}; "
          f"speed paths {paths}")
    start_obs, goal_obs = observations(model, args.episodes)

    # 0. the machine's reference, before the planning
    peaks_before = gemm_peaks(device, args.gemm, args.repeats)

    # 1. batched vs DINO-WM-style loop (library defaults)
    t_wmq = timed(wmq_planner(model, start_obs, goal_obs, cfg, args.chunk, device), device, args.repeats)
    print(f"\n[1] wmq batched planning:        {t_wmq:8.3f} s  ({t_wmq / args.episodes * 1e3:.1f} ms/episode)")
    if not args.skip_loop:
        t_loop = timed(dinowm_loop(model, start_obs, goal_obs, cfg, device), device, 1)
        print(f"    DINO-WM-style loop:          {t_loop:8.3f} s  ({t_loop / args.episodes * 1e3:.1f} ms/episode)")
        print(goal_line("batched / loop (GPU, mini size)", t_loop / t_wmq, gpu_only=True, device=device))

    # 3. fake-quantized planning vs FP on every speed path (interleaved)
    with torch.no_grad():
        objective = Objective(model, encode_observations(model, start_obs), encode_observations(model, goal_obs),
                              chunk=args.chunk)
    actions = torch.randn(args.episodes, cfg.samples, cfg.horizon, model.action_dim, device=device)
    with torch.no_grad(), capture_calibration(model, max_tokens=256, max_sequences=0) as calib:
        encode_observations(model, start_obs)  # encoder ranges
        objective(actions[:, :8])  # predictor ranges
    recipes = {"FP": (None, None),
               "W8 weight-only": (RTN(8, PerChannel()), None),
               "W8A8 per-token": (RTN(8, PerChannel(), a_bits=8, a_granularity=PerToken()), None),
               "W8A8 per-tensor": (RTN(8, PerChannel(), a_bits=8, a_granularity=PerTensor()), calib)}
    models = {label: model if recipe is None else quantize(model, recipe, calibration)[0]
              for label, (recipe, calibration) in recipes.items()}
    times: dict[tuple[str, str], float] = {}
    for path in paths:
        with speed_path(path, list(models.values())):
            if PATHS[path]["compile"]:  # compile outside the timing; report what it cost
                first = {label: once(wmq_planner(m, start_obs, goal_obs, cfg, args.chunk, device), device)
                         for label, m in models.items()}
                print(f"\n    [{path}] first (compiling) runs: "
                      + ", ".join(f"{label} {t:.1f} s" for label, t in first.items()))
            best = interleaved({label: wmq_planner(m, start_obs, goal_obs, cfg, args.chunk, device)
                                for label, m in models.items()}, device, args.repeats)
        times.update({(path, label): t for label, t in best.items()})

    # 2. predictor FLOP/s during planning vs the large GEMM and the same-shape matmuls
    flops_call, shapes = predictor_flops_and_shapes(model, objective, actions)
    calls = cfg.opt_steps + 1 / cfg.samples  # a full call per iteration + the final loss of E plans (1 sample)
    same_shape = matmul_peak(shapes, model.dtype, device, args.repeats)
    peaks_after = gemm_peaks(device, args.gemm, args.repeats)
    peak = max(peaks_before["fp32"], peaks_after["fp32"])
    print(f"\n[0] large-GEMM reference ({args.gemm}^3): "
          + "; ".join(f"{k} {peaks_before[k] / 1e9:.1f} before / {peaks_after[k] / 1e9:.1f} after GFLOP/s"
                      for k in peaks_before) + f"  -> reference fp32 {peak / 1e9:.1f} GFLOP/s")
    print(f"\n[2] predictor FLOPs per CEM iteration (FlopCounterMode, attention included): "
          f"{flops_call / 1e9:.2f} GFLOP ({len(shapes)} linear calls, e.g. rows x in x out = {shapes[0]})")
    print(f"    matmul peak, same shapes:    {same_shape / 1e9:8.1f} GFLOP/s = {same_shape / peak:.1%} of the large "
          "GEMM")
    for path in paths:
        achieved = flops_call * calls / times[(path, "FP")]
        print(f"    [{path}] achieved during planning: {achieved / 1e9:8.1f} GFLOP/s (whole planning time, encoder "
              f"included) = {achieved / same_shape:.1%} of same-shape")
        print(goal_line("predictor / large-GEMM peak", achieved / peak, unit="%"))
        if device.type == "cuda" and model.dtype == torch.bfloat16:
            print(f"    [{path}] vs bf16 GEMM peak: {achieved / max(peaks_before['bf16'], peaks_after['bf16']):.1%}")
        elif device.type == "cuda":
            print(f"    [{path}] vs TF32 GEMM peak: {achieved / max(peaks_before['tf32'], peaks_after['tf32']):.1%}")

    print("\n[3] planning time per speed path (s), and ratios to FP on the same path")
    print(f"    {'path':16s}" + "".join(f"{label:>18s}" for label in recipes))
    for path in paths:
        print(f"    {path:16s}" + "".join(f"{times[(path, label)]:18.3f}" for label in recipes))
    for path in paths:
        fp = times[(path, "FP")]
        print(f"    [{path}]")
        for label in ("W8 weight-only", "W8A8 per-token", "W8A8 per-tensor"):
            print(goal_line(f"{label} / FP", times[(path, label)] / fp))
    if len(paths) > 1:
        print(f"    speed-up of each path over {paths[0]!r}, same model: " + "; ".join(
            f"{path}: " + ", ".join(f"{label} {times[(paths[0], label)] / times[(path, label)]:.2f}x"
                                    for label in recipes) for path in paths[1:]))

    if args.record:
        record = {"machine": machine(), "device": str(device), "model": args.model, "episodes": args.episodes,
                  "samples": cfg.samples, "opt_steps": cfg.opt_steps, "chunk": args.chunk,
                  "gemm_gflops": round(peak / 1e9, 1), "same_shape_gflops": round(same_shape / 1e9, 1),
                  "batched_over_loop": None if args.skip_loop else round(t_loop / t_wmq, 3),
                  "paths": {path: {"achieved_gflops": round(flops_call * calls / times[(path, "FP")] / 1e9, 1),
                                   "seconds": {label: round(times[(path, label)], 4) for label in recipes},
                                   "over_fp": {label: round(times[(path, label)] / times[(path, "FP")], 3)
                                               for label in recipes}} for path in paths},
                  "date": time.strftime("%Y-%m-%d")}
        Path(args.record).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.record, json.dumps(record, indent=1) + "\n")
        print(f"\nrecorded in {args.record}")

    if args.chunk_sweep:
        chunks = [int(c) for c in args.chunk_sweep.split(",") if c.strip()]
        sweep = interleaved({(label, chunk): wmq_planner(models[label], start_obs, goal_obs, cfg, chunk, device)
                             for label in ("FP", "W8A8 per-token") for chunk in chunks}, device, args.repeats)
        print("\n[3b] planning time (s) by Objective chunk (sequences per rollout call), library defaults")
        for label in ("FP", "W8A8 per-token"):
            print(f"    {label:16s}" + "".join(f"  chunk {chunk}: {sweep[(label, chunk)]:.3f}" for chunk in chunks))

    if args.profile:
        checkpoint = args.profile_checkpoint or args.model
        if checkpoint not in available_checkpoints() and not Path(checkpoint).is_dir():
            raise SystemExit(f"--profile needs a wmq checkpoint (--profile-checkpoint or --model), got {checkpoint!r}")
        profile_rows(args.profile, checkpoint, device, args.settings, args.profile_episodes)


if __name__ == "__main__":
    main()
