"""Forward-time cost of fake quantization on a toy ViT world model, measured in one run.

Prints the forward time of the FP model and of quantized copies, and each ratio to FP:
weight-only (goal <= 1.05: weights are quantized once, the forward is a plain ``F.linear``), W8A8 with static
per-tensor activations (goal <= 1.5; one fused fake-quant kernel per linear input) and W8A8 with dynamic per-token
activations (min / max per row at run time, no goal).  Repetitions are interleaved round-robin and the median is
reported, so machine-load drift hits every variant alike.  With ``--omniquant`` it also times OmniQuant's default
training (10 epochs over 32 captured sequences per unit).

    .venv/bin/python benchmarks/bench_quant.py [--device cpu|cuda] [--batch 8] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.quant.toy import ToyWorldModel  # noqa: E402
from wmqlib.quant import RTN, OmniQuant, PerGroup, PerTensor, PerToken, capture_calibration, quantize  # noqa: E402

GOALS = {"W4A16 g128 (weight-only)": 1.05, "W8A8 per-tensor static": 1.5}


def build(device: torch.device, tokens: int, batch: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A ViT-S-like encoder (192 wide) and a DINO-WM-like predictor (204 wide: ragged g128 groups), 4 blocks each."""
    model = ToyWorldModel(in_dim=48, enc_dim=192, enc_depth=4, enc_heads=6, pred_dim=204, pred_depth=4,
                          pred_heads=4, dim_head=64, hidden=816, seed=0).to(device)
    g = torch.Generator().manual_seed(0)
    calib_x = torch.randn(32, tokens, 48, generator=g).to(device)
    x = torch.randn(batch, tokens, 48, generator=g).to(device)
    return model, calib_x, x


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forwards(models: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per forward of each model, repetitions interleaved across models."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():  # warm-up
            model(x)
        for _ in range(repeats):
            for name, model in models.items():
                sync(x.device)
                start = time.perf_counter()
                model(x)
                sync(x.device)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=196)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--omniquant", action="store_true", help="also time OmniQuant's default training")
    args = parser.parse_args()
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        raise SystemExit(f"--device must be 'cpu' or 'cuda' (with CUDA available), got {args.device!r}")
    device = torch.device(args.device)
    model, calib_x, x = build(device, args.tokens, args.batch)
    with torch.no_grad(), capture_calibration(model, max_tokens=512, max_sequences=32) as calib:
        for chunk in calib_x.split(8):
            model(chunk)
    models = {
        "FP32": model,
        "W4A16 g128 (weight-only)": quantize(model, RTN(4, PerGroup(128), w_symmetric=False))[0],
        "W8A8 per-tensor static": quantize(model, RTN(8, a_bits=8, a_granularity=PerTensor()), calib)[0],
        "W8A8 per-token dynamic": quantize(model, RTN(8, a_bits=8, a_granularity=PerToken()))[0],
    }
    seconds = time_forwards(models, x, args.repeats)
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} tokens={args.tokens} "
          f"repeats={args.repeats} (median)")
    for name, t in seconds.items():
        ratio = t / seconds["FP32"]
        goal = GOALS.get(name)
        verdict = "" if goal is None else f"  goal <= {goal:.2f}: {'met' if ratio <= goal else 'MISSED'}"
        print(f"  {name:28s} {t * 1e3:9.2f} ms  ratio {ratio:5.3f}{verdict}")
    if args.omniquant:
        start = time.perf_counter()
        quantize(model, OmniQuant(4, PerGroup(128)), calib)
        sync(device)
        print(f"  OmniQuant W4 g128 default training (10 epochs x 32 sequences, 8 units): "
              f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
