"""Where planning time goes: torch.profiler over one planning run, time attributed to the parts of the pipeline.

    python benchmarks/bench_profile.py --device cpu --model mini-wall --episodes 8 --opt-steps 1
    python benchmarks/bench_profile.py --paths before,after     # the same table for each speed path

One profiled run = what ``evaluate`` does for one open-loop episode batch: render the start and goal (env), encode
them (encoder), ``--opt-steps`` CEM iterations over E x S candidates (+ the final loss), execute the plan and score
it (env; encoding the final frame counts as encoder). With the default single iteration the per-iteration parts
(predictor, fake quant, objective, CEM) are what one more iteration costs; the encoder and env parts are paid once
per episode batch whatever the iterations. Variants: FP, W8A8 per-token (dynamic), W8A8 per-tensor (static).

Attribution: forward pre/post hooks open a ``record_function`` per module, and every profiled op's SELF time goes to
its innermost labelled ancestor:

    predictor linears      nn.Linear / QuantLinear GEMMs of the predictor (QuantLinear minus its input quantizer)
    fake quant             the predictor's ActQuantizers (activation fake quantization; weights were quantized
                           once, at build; the encoder's count as encoder)
    attention              the predictor's Attention minus its norm and linears: SDPA (or the explicit path) and
                           the q/k/v reshapes
    norms & activations    LayerNorm, GELU (or AWQ's scaled GELU), Dropout of the predictor
    predictor other        residual adds, position embedding, the module call overhead of the blocks
    embeddings             action / proprio encoders (Conv1d)
    rollout buffer         WorldModel.rollout's own ops: the latent buffer writes, window views
    objective              latent_mse
    encoder                the ViT encoder (start, goal and final frames)
    env                    rendering, executing the plan, scoring
    planner (CEM) & glue   everything else: sampling, top-k, elite refit, Objective's chunking and casts

Hooks and the profiler add overhead per op, so the shares are approximate and the absolute times exceed
bench_plan's; compare shares and variants within one run. On CUDA the device (kernel) self time is attributed the
same way and printed beside the CPU time. Time nothing else while it runs.

Conclusions: to be written here after the profile is measured on a quiet machine (issue 14, item 2).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from collections import defaultdict
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

import wmqlib.plan.objective as objective_module
from bench_plan import PATHS, build_model, observations, parse_paths, range_seeds, speed_path
from wmqlib.envs import make_env, sample_episodes
from wmqlib.models.predictor import Attention
from wmqlib.plan import CEMConfig, Objective, cem, encode_observations, make_generators
from wmqlib.quant import RTN, ActQuantizer, PerChannel, PerTensor, PerToken, QuantLinear, ScaledActivation
from wmqlib.quant import capture_calibration, quantize

PREFIX = "wmq::"
CATEGORIES = ("predictor linears", "fake quant", "attention", "norms & activations", "predictor other",
              "embeddings", "rollout buffer", "objective", "encoder", "env", "planner (CEM) & glue")
DEFAULT = "planner (CEM) & glue"


def module_category(module: nn.Module) -> str:
    """Category of a predictor submodule (see the module docstring)."""
    if isinstance(module, ActQuantizer):
        return "fake quant"
    if isinstance(module, (nn.Linear, QuantLinear)):
        return "predictor linears"
    if isinstance(module, Attention):
        return "attention"
    if isinstance(module, (nn.LayerNorm, nn.GELU, nn.Dropout, ScaledActivation)):
        return "norms & activations"
    return "predictor other"


@contextlib.contextmanager
def labelled(model: nn.Module, env: object) -> Iterator[None]:
    """Label the model's modules and methods, the objective and the env with ``record_function`` ranges."""
    handles, stack = [], []

    def enter(label: str, *_: object) -> None:
        ctx = record_function(PREFIX + label)
        ctx.__enter__()
        stack.append(ctx)

    def leave(*_: object) -> None:
        stack.pop().__exit__(None, None, None)

    targets = [(m, module_category(m)) for m in model.predictor.modules()]
    targets += [(model.action_encoder, "embeddings"), (model.proprio_encoder, "embeddings"), (model.encoder, "encoder")]
    for module, label in targets:
        handles.append(module.register_forward_pre_hook(functools.partial(enter, label)))
        handles.append(module.register_forward_hook(leave))

    def wrap(fn: Callable, label: str) -> Callable:
        @functools.wraps(fn)
        def inner(*args: object, **kwargs: object) -> object:
            with record_function(PREFIX + label):
                return fn(*args, **kwargs)
        return inner

    patched = [(model, "rollout", "rollout buffer"), (objective_module, "latent_mse", "objective")]
    patched += [(env, name, "env") for name in ("observe", "rollout_actions", "eval_state")]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patched]
    try:
        for owner, name, label in patched:
            setattr(owner, name, wrap(getattr(owner, name), label))
        yield
    finally:
        for owner, name, original in originals:
            if owner is model or owner is env:
                delattr(owner, name)  # drop the instance attribute; the class method shows through again
            else:
                setattr(owner, name, original)
        for handle in handles:
            handle.remove()


def planning_run(model: nn.Module, env: object, states: tuple[np.ndarray, np.ndarray], cfg: CEMConfig,
                 device: torch.device) -> None:
    """Render, encode, plan, execute and score one batch of episodes (see the module docstring)."""
    starts, goals = states
    with torch.no_grad():
        start, goal = (encode_observations(model, env.observe(s)) for s in (starts, goals))
        result = cem(Objective(model, start, goal), cfg, make_generators(range_seeds(len(starts)), device),
                     model.action_dim, device=device)
        final = env.rollout_actions(starts, model.actions_to_env(result.plan).cpu().numpy())
        env.eval_state(goals, final)
        encode_observations(model, env.observe(final))


def attribute(prof: profile) -> tuple[dict[str, float], dict[str, float]]:
    """Self CPU and self device time (ms) per category: each event goes to its innermost labelled ancestor."""
    cpu, dev = defaultdict(float), defaultdict(float)
    for event in prof.events():
        node, label = event, None
        while node is not None:
            if node.name.startswith(PREFIX):
                label = node.name[len(PREFIX):]
                break
            node = node.cpu_parent
        label = label or DEFAULT
        cpu[label] += event.self_cpu_time_total / 1e3
        dev[label] += getattr(event, "self_device_time_total", 0.0) / 1e3
    return dict(cpu), dict(dev)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    parser.add_argument("--model", default="mini-wall", help="checkpoint name/path, preset, dinowm-<env> or .json")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--topk", type=int, default=30)
    parser.add_argument("--horizon", type=int, default=5)
    parser.add_argument("--opt-steps", type=int, default=1)
    parser.add_argument("--paths", default="after", help=f"comma-separated speed paths of {list(PATHS)}")
    args = parser.parse_args()
    paths = parse_paths(args.paths)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    model, origin = build_model(args.model, device)
    cfg = CEMConfig(horizon=args.horizon, samples=args.samples, topk=args.topk, opt_steps=args.opt_steps)
    env = make_env(model.config.env, render_size=model.config.img_size)
    start_obs, goal_obs = observations(model, args.episodes)  # rendered from the same episodes as `states`
    eps = sample_episodes(model.config.env, args.episodes, seed=99)
    states = tuple(np.stack([getattr(ep, f) for ep in eps]) for f in ("start_state", "goal_state"))
    with torch.no_grad(), capture_calibration(model, max_tokens=256, max_sequences=0) as calib:
        objective = Objective(model, encode_observations(model, start_obs), encode_observations(model, goal_obs))
        objective(torch.randn(args.episodes, 8, cfg.horizon, model.action_dim, device=device))
    variants = {"FP": model,
                "W8A8 per-token": quantize(model, RTN(8, PerChannel(), a_bits=8, a_granularity=PerToken()))[0],
                "W8A8 per-tensor": quantize(model, RTN(8, PerChannel(), a_bits=8, a_granularity=PerTensor()),
                                            calib)[0]}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; model {args.model} "
          f"({origin}); {args.episodes} episodes x CEM {cfg.samples}/{cfg.topk} x {cfg.opt_steps} iterations, "
          f"horizon {cfg.horizon}")
    for path in paths:
        results = {}
        with speed_path(path, list(variants.values())):
            for label, m in variants.items():
                planning_run(m, env, states, cfg, device)  # warm-up (allocator, lazy inits, compilation)
                with labelled(m, env), profile(activities=activities) as prof:
                    planning_run(m, env, states, cfg, device)
                results[label] = attribute(prof)
        print(f"\n[{path}] self time per category, ms (share of the run)")
        print(f"    {'category':24s}" + "".join(f"{label:>26s}" for label in variants))
        totals = {label: sum(cpu.values()) for label, (cpu, _) in results.items()}
        for category in CATEGORIES:
            cells = []
            for label, (cpu, dev) in results.items():
                ms = cpu.get(category, 0.0)
                cell = f"{ms:9.1f} ({ms / totals[label]:5.1%})"
                if device.type == "cuda":
                    cell += f" gpu {dev.get(category, 0.0):7.1f}"
                cells.append(f"{cell:>26s}")
            print(f"    {category:24s}" + "".join(cells))
        print(f"    {'total (CPU self time)':24s}" + "".join(f"{totals[label]:>26.1f}" for label in variants))


if __name__ == "__main__":
    main()
