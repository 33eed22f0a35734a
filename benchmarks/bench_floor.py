"""The study's compute floor on this machine: its candidate rollouts' predictor FLOPs at the same-shape matmul peak.

    python benchmarks/bench_floor.py                     # notebooks 00-04, full profile, this machine
    python benchmarks/bench_floor.py --only 03 05

Time nothing else while it runs (about a minute). Per notebook, in the runner's order (a setting an earlier
notebook computes is not counted again, as in ``python -m wmqlib.reproduce``), the planning of its settings is
counted in predictor calls on one candidate sequence:

- open-loop CEM: ``E * (S * I + 1)`` (I iterations of S candidates, then the final plan's loss);
- MPC: the same per episode and round it planned in, read from the setting's cached per-round table (``planned``);
  a setting not in the cache counts one round (its first, which every episode plans);
- GD: ``E * S * steps * 3`` (a forward and a backward of about twice its FLOPs per update).

Calibration, alignment, sensitivity, probes, the encoder, the env and the planner's own work are left out, so the
floor is a lower bound: the time planning alone would take if every predictor FLOP ran at the speed of plain matmuls
of the predictor's own linear shapes (``bench_plan``'s "same-shape" peak), measured here in the same run, with
FLOPs per candidate counted by FlopCounterMode on one objective call of the study's block size (attention
included). Beside it: the runner's measured time of the notebook (``data/results/runs/<profile>.json``) and the
floor's share of it. ``--record FILE`` writes the table as JSON (the README's "floor" block is rendered from
``data/results/bench/floor.json`` by ``python -m wmqlib.readme``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bench_plan import gemm_peaks, matmul_peak, observations, predictor_flops_and_shapes
from wmqlib import study as st
from wmqlib.caches import CACHES
from wmqlib.cost import RUNS_DIR, machine, machine_name
from wmqlib.designs import DESIGNS, of_notebook, setup_of
from wmqlib.models import load_world_model
from wmqlib.paths import RESULTS_DIR
from wmqlib.plan import CEMConfig, GDConfig, Objective, encode_observations
from wmqlib.reproduce import declared_parameters, discover, select
from wmqlib.setting import Setting
from wmqlib.sweep import cached
from wmqlib.validate import atomic_write

REPEATS = 10  # timed repeats of the matmul peak (best counts)


def candidate_calls(setting: Setting, results: str) -> tuple[float, str]:
    """Predictor calls on one candidate sequence that planning ``setting`` makes, and how they were counted."""
    plan = setting.planner
    if isinstance(plan, GDConfig):
        return setting.n_evals * plan.samples * plan.opt_steps * 3.0, "GD"
    per_plan = plan.samples * plan.opt_steps + 1
    if setting.mpc is None:
        return setting.n_evals * per_plan, "open loop"
    if not cached([setting], results, RESULTS_DIR, lambda s: CACHES.resolved(s).identity)[0]:
        return setting.n_evals * per_plan, "MPC, first round only (not cached)"
    rounds = st.run_study([setting], results, progress=False)  # read from the cache (checked), nothing runs
    return int(rounds["planned"].sum()) * per_plan, "MPC, planned rounds from the cache"


def flops_per_candidate(checkpoint: str, samples: int, peaks: dict[tuple, float], episodes: int = 10
                        ) -> tuple[float, float]:
    """Predictor FLOPs of one candidate rollout of ``checkpoint``'s model, and the same-shape matmul peak (FLOP/s)
    of its linears, from one objective call of ``episodes`` x ``samples`` candidates (a block of the study's size).
    The peak is measured once per distinct set of linear shapes and dtype (``peaks``: models of one architecture
    and size share it)."""
    model = load_world_model(CACHES.checkpoint(checkpoint).folder, device="cpu").eval()
    start_obs, goal_obs = observations(model, episodes)
    with torch.no_grad():
        objective = Objective(model, encode_observations(model, start_obs), encode_observations(model, goal_obs))
    actions = torch.randn(episodes, samples, CEMConfig().horizon, model.action_dim,
                          generator=torch.Generator().manual_seed(0))
    flops, shapes = predictor_flops_and_shapes(model, objective, actions)
    signature = (tuple(shapes), model.dtype)
    if signature not in peaks:
        peaks[signature] = matmul_peak(shapes, model.dtype, torch.device("cpu"), REPEATS)
    return flops / (episodes * samples), peaks[signature]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="full")
    parser.add_argument("--only", nargs="*", default=["00", "01", "02", "03", "04"])
    parser.add_argument("--record", type=Path, help="also write the table as JSON to this file")
    args = parser.parse_args(argv)
    notebooks = select(discover("notebooks"), args.only)
    runs_file = RUNS_DIR / f"{args.profile}.json"
    runs = json.loads(runs_file.read_text()) if runs_file.is_file() else {}
    print(f"{machine_name(machine())}; torch {torch.__version__}; profile {args.profile}")
    gemm = gemm_peaks(torch.device("cpu"), 2048, 3)["fp32"]
    print(f"large-GEMM reference: {gemm / 1e9:.1f} GFLOP/s")
    rows = []
    seen: set[str] = set()
    per_model: dict[str, tuple[float, float]] = {}
    peaks: dict[tuple, float] = {}
    total_floor = total_measured = 0.0
    print(f"{'notebook':28s} {'settings':>8s} {'candidate calls':>16s} {'GFLOP':>9s} {'floor s':>8s} "
          f"{'measured s':>10s} {'floor/measured':>14s}")
    for path in notebooks:
        if path.stem not in DESIGNS:
            continue
        parameters = {**declared_parameters(path), "profile": args.profile}
        with contextlib.redirect_stdout(io.StringIO()):
            S = setup_of(parameters)
            design = of_notebook(path.stem, S, parameters)
        calls = flops = floor = 0.0
        counted = 0
        kinds: dict[str, int] = {}
        for setting in design.settings:
            key = st.result_key(setting)
            if key in seen:
                continue
            seen.add(key)
            checkpoint = str(setting.checkpoint)
            if checkpoint not in per_model:
                per_model[checkpoint] = flops_per_candidate(checkpoint, S.profile.samples, peaks)
            per_call, peak = per_model[checkpoint]
            n, how = candidate_calls(setting, S.results)
            kinds[how] = kinds.get(how, 0) + 1
            counted += 1
            calls += n
            flops += n * per_call
            floor += n * per_call / peak
        measured = runs.get(path.stem, {}).get("measured_s", float("nan"))
        total_floor += floor
        total_measured += measured
        rows.append({"notebook": path.stem, "settings": counted, "candidate_calls": calls, "gflop": flops / 1e9,
                     "floor_s": floor, "measured_s": measured, "counted": kinds})
        print(f"{path.stem:28s} {counted:8d} {calls:16.3g} {flops / 1e9:9.0f} {floor:8.0f} {measured:10.0f} "
              f"{floor / measured:14.2f}   ({', '.join(f'{k}: {v}' for k, v in sorted(kinds.items()))})")
    print(f"{'all':28s} {'':8s} {'':16s} {'':9s} {total_floor:8.0f} {total_measured:10.0f} "
          f"{total_floor / total_measured:14.2f}")
    for checkpoint, (per_call, peak) in sorted(per_model.items()):
        print(f"  {checkpoint}: {per_call / 1e6:.1f} MFLOP per candidate rollout, same-shape matmul peak "
              f"{peak / 1e9:.1f} GFLOP/s")
    if args.record:
        record = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "profile": args.profile,
                  "gemm_gflops": round(gemm / 1e9, 1), "notebooks": rows,
                  "models": {ck: {"mflop_per_rollout": round(per_call / 1e6, 2),
                                  "same_shape_gflops": round(peak / 1e9, 1)}
                             for ck, (per_call, peak) in sorted(per_model.items())}}
        atomic_write(args.record, json.dumps(record, indent=1))
        print(f"recorded in {args.record}")


if __name__ == "__main__":
    main()
