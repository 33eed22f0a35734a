"""Convert a released DINO-WM folder (or any loadable checkpoint) to wmq's format, so later loads never unpickle.

    python -m wmqlib.models.convert outputs/pusht data/checkpoints/dinowm-pusht \
        --dinov2-weights dinov2_vits14_pretrain.pth [--epoch latest] [--normalization stats.json]

``stats.json`` holds {"action_mean": [...], "action_std": [...], "proprio_mean": [...], "proprio_std": [...]}
in env units (required for Wall, whose statistics DINO-WM does not publish; for PushT the statistics it leaves out
are DINO-WM's published constants). Exit status 0 on success, 2 with a one-line message (never a traceback) for any
failure: bad arguments, an unreadable, hostile or malformed file, or weights holding NaN or inf.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from wmqlib.models.checkpoint import load_world_model, save_world_model
from wmqlib.models.errors import NonFiniteWeightsWarning


def _epoch(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad input or unreadable checkpoint)."""
    parser = argparse.ArgumentParser(prog="python -m wmqlib.models.convert", description=__doc__.split("\n")[0])
    parser.add_argument("src", help="released DINO-WM folder (hydra.yaml + checkpoints/) or any checkpoint")
    parser.add_argument("dst", help="output folder (config.json + model.safetensors)")
    parser.add_argument("--dinov2-weights", default=None, help="local dinov2_vits14_pretrain.pth")
    parser.add_argument("--epoch", type=_epoch, default="latest", help="'latest' (default) or an epoch number")
    parser.add_argument("--normalization", type=Path, default=None, help="JSON file of z-score statistics")
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            # A converted checkpoint is what later runs trust: NaN / inf weights stop the conversion.
            warnings.simplefilter("error", NonFiniteWeightsWarning)
            model = load_world_model(args.src, "cpu", args.dinov2_weights, args.epoch,
                                     normalization=args.normalization)
        folder = save_world_model(model, args.dst, provenance={"converted_from": str(Path(args.src).resolve())})
    except NonFiniteWeightsWarning as error:
        print(f"error: {error}; refusing to convert (fix or retrain the model)", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, MemoryError, RecursionError) as error:  # CheckpointError: a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    size = sum(p.numel() for p in model.parameters())
    print(f"wrote {folder} ({model.config.env}, {size / 1e6:.1f} M parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
