"""The study's settings in worker processes (one torch thread each) against one process using every core.

    python benchmarks/bench_workers.py --checkpoint mini-wall mini-pusht --episodes 16 --repeats 2

Time nothing else while it runs. The same small design (per checkpoint: FP, RTN W4 and RTN W8A8 per-token, each
open-loop CEM sized by the full profile, ``--episodes`` episodes) is run by ``wmqlib.study.run_study`` into a fresh
temporary cache, recomputing everything, three ways:

- ``serial, N threads``: one process, torch with every core (the full profile's threads=None on this machine);
- ``serial, 1 thread``: one process, one torch thread;
- ``local:N, 1 thread``: a Dask LocalCluster of N worker processes with one torch thread each (``wmqlib.cluster``),
  its start and stop included.

After one untimed run (imports, first loads), variants run round-robin, ``--repeats`` times; the least wall time of each is printed with its ratio to the first.
Then the successes: the worker run against the one-thread serial run (one thread per setting in both: they must
be identical) and the every-core run against the one-thread run (torch's reductions split differently across
threads, so a plan can differ): the count of (setting, episode, iteration) successes that differ.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import pandas as pd
import torch

from wmqlib import profiles, study
from wmqlib.caches import CACHES
from wmqlib.quant import RTN, PerChannel, PerToken


def design(checkpoints: list[str], episodes: int) -> list:
    """FP, RTN W4 and RTN W8A8 per-token settings of every checkpoint, full profile sizes, ``episodes`` episodes."""
    profile = profiles.make_profile("full", n_evals=episodes)
    recipes = [None, RTN(4, PerChannel()), RTN(8, PerChannel(), a_bits=8, a_granularity=PerToken())]
    return [profile.setting(ck, CACHES.checkpoint(ck).env, device="cpu", recipe=r)
            for ck in checkpoints for r in recipes]


def run(settings: list, threads: int, executor: str | None) -> tuple[float, pd.DataFrame]:
    """Wall seconds of ``run_study`` on a fresh cache, and its table."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        table = study.run_study(settings, "bench", recompute=True, cache_dir=tmp, progress=False, executor=executor)
        return time.perf_counter() - start, table


def differing(a: pd.DataFrame, b: pd.DataFrame) -> int:
    """How many (setting, episode, iteration) successes differ between two tables of the same design."""
    keys = [c for c in ("config_key", "episode", "iteration") if c in a.columns]
    joined = a[[*keys, "success"]].merge(b[[*keys, "success"]], on=keys, suffixes=("_a", "_b"), validate="1:1")
    if len(joined) != len(a) or len(joined) != len(b):
        raise RuntimeError(f"the two tables hold different rows ({len(a)}, {len(b)}, {len(joined)} in common)")
    return int((joined["success_a"] != joined["success_b"]).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", nargs="+", default=["mini-wall", "mini-pusht"])
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    settings = design(args.checkpoint, args.episodes)
    cores = torch.get_num_threads()
    variants = {f"serial, {cores} threads": (cores, None), "serial, 1 thread": (1, None),
                f"local:{args.workers}, 1 thread": (1, f"local:{args.workers}")}
    print(f"{len(settings)} settings ({', '.join(args.checkpoint)}; FP, RTN W4, W8A8 per-token; {args.episodes} "
          f"episodes, full-profile CEM); torch {torch.__version__}, {os.cpu_count()} CPUs")
    run(settings, 1, None)  # warm-up: imports and first loads, not timed
    best: dict[str, float] = {}
    tables: dict[str, pd.DataFrame] = {}
    for r in range(args.repeats):
        for name, (threads, executor) in variants.items():
            seconds, tables[name] = run(settings, threads, executor)
            best[name] = min(best.get(name, float("inf")), seconds)
            print(f"  repeat {r}: {name:22s} {seconds:8.1f} s")
    first = next(iter(best.values()))
    for name, seconds in best.items():
        print(f"{name:22s} best {seconds:8.1f} s  ratio to the first {seconds / first:.3f}")
    names = list(variants)
    print(f"successes differing, {names[2]} vs {names[1]}: {differing(tables[names[2]], tables[names[1]])} "
          f"of {len(tables[names[1]])} (must be 0)")
    print(f"successes differing, {names[0]} vs {names[1]}: {differing(tables[names[0]], tables[names[1]])} "
          f"of {len(tables[names[1]])}")


if __name__ == "__main__":
    main()
