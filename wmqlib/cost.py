"""What a study notebook will cost before it runs: this machine's measured rates, and a design priced with them.

    rates = cost.rates(S, "mini-wall")      # measured once per (weights, sizes, machine), kept under data/results/cost
    table = cost.price(design, S)           # one row per piece of work: what, cached, predicted seconds

``python -m wmqlib.reproduce --dry-run`` prints the priced designs of the selected notebooks; a real run prints the
prediction beside each notebook's measured time.

The model. Planning cost is counted in candidate rollouts (one candidate plan of one episode rolled out over the
horizon, in one CEM iteration) and priced with ``Rates.rollout``, measured on this machine with the profile's CEM on a
few episodes at 1 and 10 iterations (the slope; the intercept is ``Rates.episode``, the per-episode work of
encoding, executing and scoring a plan). An open-loop CEM setting of E episodes, S samples and I iterations costs
``E * (S * I * rollout + episode)``; MPC the same per round for the episodes still planning, whose share per round
is measured with FP's MPC (``Rates.active``), times what that measured MPC run cost over this price of it
(``Rates.mpc``: replays, new starts encoded each round, the smaller batches of later rounds); a quantized model that
succeeds less keeps more episodes planning, so its MPC setting scales FP's successes per round by its open-loop
success over FP's when both are already on disk (an earlier notebook's results, ``_success_ratio``; FP's rounds
otherwise, an under-price where quantization hurts); GD ``E * (steps * gd_step + episode)``. Activation
quantization scales the planning by ``Rates.act``; a quantized setting adds its quantization (``Rates.quantize`` per
method, once per quantized model) and its calibration run (FP planning on the calibration episodes, once per
calibration not on disk). A probe costs
``Rates.probe``, an alignment run ``E * candidates * (rollout + execute)``, a layer sensitivity
``(linears * bit widths + 1) * n_calib * sequences * rollout``, and every notebook ``Rates.notebook`` (kernel, imports,
figures). Cached work costs nothing.

The record. ``record_run`` keeps, per profile and notebook, the runner's latest run that computed something: its
prediction, measured seconds, settings, executor, machine (``machine``: CPU, its capability, cores, torch, threads)
and the load average when it started, in ``<RUNS_DIR>/<profile>.json``; a re-plot from the cache leaves the entry
as it was. ``run_table`` reads it back (the README's measured times are that table).

With an executor (the notebook's ``executor`` parameter "local:N"), the settings run as tasks on N worker processes
of one torch thread each (``wmqlib.cluster``): each setting, with the quantization and calibration it is the first
to need, is one task (``task`` column), priced with rates measured on one thread, and the tasks are list-scheduled
in design order on the N workers (a task starts on the first worker to free up, as Dask hands them out); the rest
(probes, alignment, sensitivity, the kernel) runs in the notebook's kernel at its rates. ``predicted`` adds the
kernel's work to the tasks' makespan. A "dask://" cluster's size is not known here: its notebooks are priced as if
serial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from wmqlib import study as st
from wmqlib.caches import CACHES, Caches, provenance
from wmqlib.cluster import parse_spec
from wmqlib.designs import DESIGNS, Design, of_notebook, setup_of
from wmqlib.envs import make_env
from wmqlib.paths import RESULTS_DIR
from wmqlib.plan import CEMConfig, GDConfig
from wmqlib.plan.mpc import MPCConfig
from wmqlib.profiles import Setup
from wmqlib.quant import find_points, quantize, recipe_types
from wmqlib.setting import Setting
from wmqlib.sweep import cached, config_key
from wmqlib.validate import atomic_write

COST_DIR = RESULTS_DIR / "cost"  # measured rates, one JSON per (weights, sizes, machine)
RUNS_DIR = RESULTS_DIR / "runs"  # the runner's record of computing runs, one JSON per profile (committed)
EPISODES = 8  # episodes of each timed planning run
MPC_EPISODES = 24  # episodes of the MPC run that measures the share still planning per round
ITERATIONS = (1, 10)  # CEM iterations of the two timed runs (the slope is the rollouts' cost, the rest the episode's)
REPEATS = 3  # a planning run is timed this many times, the least counts (the first also warms up)
# Part of the rates' key: raised when planning's speed or what is measured changes, so rates kept by earlier code are
# measured again (2: ``Rates.mpc``).
RATES_VERSION = 2
ROTATED = ("RTN+hadamard", "GPTQ+hadamard")  # rotated methods timed besides the registered ones


@dataclass(frozen=True)
class Rates:
    """One checkpoint's measured costs on this machine (seconds).

    rollout: per candidate rollout (open-loop CEM, FP, traced). episode: per episode and plan, beyond its rollouts.
    gd_step: per GD update of one episode. act: planning time over FP's with W8A8 activations, by granularity.
    active: FP's MPC, the share of episodes still planning at each round (1.0 first). mpc: that MPC run's measured
    planning time over its price by ``rollout``, ``episode`` and ``active`` (what a round costs beyond an open-loop
    plan of its episodes: replaying the actions so far, encoding the new starts, the smaller batches of later
    rounds); every MPC setting's price is multiplied by it. quantize: making the quantized
    model at W4 per channel, by method (``ROTATED`` included). execute: executing one plan in the env. probe: one
    state-probe table (its scripted frames included). linears: the model's quantizable linears. notebook: starting
    a kernel with the study's imports.
    """

    rollout: float
    episode: float
    gd_step: float
    act: dict[str, float]
    active: tuple[float, ...]
    quantize: dict[str, float]
    execute: float
    probe: float
    linears: int
    notebook: float
    mpc: float = 1.0


def machine() -> dict[str, Any]:
    """What a measured time belongs to: torch, its threads, the CPU's name, the kernels torch picks for it (its CPU
    capability: one CPU name can hide AVX2 and AVX-512 machines of very different speed) and the core count."""
    facts = {k: v for k, v in provenance().items() if k in ("torch", "threads", "cpu")}
    return {**facts, "capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count()}


def machine_name(facts: Mapping[str, Any]) -> str:
    """A ``machine()`` record as "<cpu> (<capability>), <cores> cores, <threads> torch threads"."""
    return f"{facts['cpu']} ({facts['capability']}), {facts['cores']} cores, {facts['threads']} torch threads"


def _identity(S: Setup, checkpoint: str) -> dict[str, Any]:
    """What the rates of ``checkpoint`` depend on: its weights, the profile's sizes, the device, the machine and how
    they are measured."""
    P = S.profile
    return {"model_sha": CACHES.checkpoint(checkpoint).model_sha, "samples": P.samples, "topk": P.topk,
            "mpc_rounds": P.mpc_rounds, "n_calib": P.n_calib, "device": S.device, "machine": machine(),
            "method_options": {k: dict(v) for k, v in P.method_options.items()},
            "procedure": {"version": RATES_VERSION, "episodes": EPISODES, "mpc_episodes": MPC_EPISODES,
                          "iterations": list(ITERATIONS), "repeats": REPEATS}}


def _timed(fn: Any, *args: Any, repeats: int = 1, **kwargs: Any) -> float:
    """The least wall time of ``repeats`` calls of ``fn(*args, **kwargs)`` (seconds)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times)


def measure(S: Setup, checkpoint: str) -> Rates:
    """Time the pieces of ``Rates`` for ``checkpoint`` with the setup's profile (a minute or two on the shipped
    models; nothing lands in the results caches)."""
    P = S.profile
    env_name = S.envs[S.checkpoints.index(checkpoint)]
    fp = S.fp_settings()[env_name]
    with tempfile.TemporaryDirectory() as tmp:
        caches = Caches(Path(tmp))
        base = dataclasses.replace(fp, n_evals=EPISODES, calib_source="random")

        def plan(setting: Setting, steps: int) -> float:
            s = dataclasses.replace(setting, planner=CEMConfig(horizon=setting.planner.horizon, samples=P.samples,
                                                               topk=P.topk, opt_steps=steps))
            st.prepare(s, caches, calibrate=s.needs_calibration)  # model, episodes, calibration: not timed
            return _timed(st.run_setting, s, caches, repeats=REPEATS)

        few, many = ITERATIONS
        short, long = plan(base, few), plan(base, many)
        rollout = max(long - short, 1e-9) / ((many - few) * EPISODES * P.samples)
        episode = max(short / EPISODES - few * P.samples * rollout, 0.0)
        act = {gran: plan(dataclasses.replace(base, recipe=P.recipe("RTN", 8, "per-channel", a_bits=8,
                                                                      a_granularity=gran)), many) / long
               for gran in ("per-tensor", "per-token")}
        gd = dataclasses.replace(base, planner=GDConfig(horizon=base.planner.horizon, opt_steps=20), trace=False)
        st.prepare(gd, caches)
        gd_step = max(_timed(st.run_setting, gd, caches) / EPISODES - episode, 1e-9) / 20
        mpc = dataclasses.replace(base, planner=P.cem(env_name), mpc=MPCConfig(max_rounds=P.mpc_rounds), trace=True,
                                  n_evals=MPC_EPISODES)
        st.prepare(mpc, caches)  # its episodes: not timed
        rounds = st.run_setting(mpc, caches)
        active = tuple(float(rounds[rounds["round"] == r]["planned"].mean()) for r in range(1, P.mpc_rounds + 1))
        p = st.prepare(base, caches, calibrate=True)
        recipes = {m: P.recipe(m, 4, "per-channel") for m in [*sorted(recipe_types()), *ROTATED]}
        quantize_s = {m: _timed(quantize, p.fp, r, p.calibration) for m, r in recipes.items()}
        env = make_env(p.run.env, render_size=p.fp.config.img_size)
        starts = np.stack([e.start_state for e in p.episodes])
        actions = np.zeros((len(starts), fp.planner.horizon * p.fp.config.frameskip, env.action_dim))
        execute = _timed(env.rollout_actions, starts, actions) / len(starts)
        probe = _timed(st.probe_table, fp, *P.probe_trajectories, caches=caches)
        linears = len(find_points(p.fp).linears)
    notebook = _timed(subprocess.run, [sys.executable, "-c", "import wmqlib.study, wmqlib.plots, wmqlib.findings"],
                      check=True)
    measured = Rates(rollout, episode, gd_step, act, active, quantize_s, execute, probe, linears, notebook)
    return dataclasses.replace(measured, mpc=float(rounds["seconds"].iloc[0]) / _planning(mpc, measured))


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Any:
    """torch's intra-op thread count set to ``threads`` inside the block (None: unchanged), restored after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rates(S: Setup, checkpoint: str, folder: Path = COST_DIR, threads: int | None = None) -> Rates:
    """``measure(S, checkpoint)``, measured once and kept as ``<folder>/<key>.json`` (key: ``_identity``, which holds
    the thread count: ``threads`` measures with that many torch threads, as a worker process of "local:N" runs)."""
    with _torch_threads(threads):
        identity = _identity(S, checkpoint)
        path = Path(folder) / f"{config_key(identity)}.json"
        if path.is_file():
            data = json.loads(path.read_text())["rates"]
            return Rates(**{**data, "active": tuple(data["active"])})
        measured = measure(S, checkpoint)
    atomic_write(path, json.dumps({"identity": identity, "rates": dataclasses.asdict(measured)}, indent=1))
    return measured


def _method(setting: Setting) -> str:
    """The ``Rates.quantize`` key of a quantized setting: its method, with ``+<rotation>`` when rotated."""
    r = setting.recipe
    rotation = getattr(r, "rotation", None)
    return type(r).__name__ + (f"+{rotation}" if rotation not in (None, "none") else "")


def _planning(setting: Setting, r: Rates, success_ratio: float = 1.0) -> float:
    """Seconds of planning ``setting`` (not counting its quantization and calibration). An MPC setting plans, in
    round k, the episodes not yet successful: FP's share (``Rates.active``) with FP's successes scaled by
    ``success_ratio`` (the setting's model's open-loop success over FP's, ``_success_ratio``; 1 = FP's rounds), each
    round at ``Rates.mpc`` times an open-loop plan's price."""
    plan = setting.planner
    act = 1.0 if setting.recipe is None or setting.recipe.a_bits is None else r.act[setting.recipe.a_granularity.name]
    if isinstance(plan, GDConfig):
        per_plan = plan.opt_steps * plan.samples * r.gd_step * act + r.episode
    else:
        per_plan = plan.samples * plan.opt_steps * r.rollout * act + r.episode
    if setting.mpc is None:
        return setting.n_evals * per_plan
    active = [*r.active, *[r.active[-1]] * max(0, setting.mpc.max_rounds - len(r.active))][:setting.mpc.max_rounds]
    rounds = sum(1.0 - min(1.0, (1.0 - a) * success_ratio) for a in active)
    return setting.n_evals * per_plan * rounds * r.mpc


def _open_loop_success(model: Setting, settings: Sequence[Setting], on_disk: Sequence[bool], S: Setup,
                       caches: Caches, cache_dir: str | os.PathLike) -> float | None:
    """Success rate at the env's budget of the first of ``settings`` kept on disk that plans open loop with CEM with
    ``model``'s model (checkpoint, recipe, scope, overrides) on its episodes (seed, sampler) and objective; None when
    none is kept."""
    same = ("checkpoint", "recipe", "scope", "overrides", "seed", "sampler", "objective")
    for s, kept in zip(settings, on_disk):
        if kept and s.mpc is None and isinstance(s.planner, CEMConfig) and all(
                getattr(s, f) == getattr(model, f) for f in same):
            table = st.run_study([s], S.results, cache_dir=cache_dir, caches=caches, progress=False)
            return float(st.per_episode(table, S.budget)["success"].mean())
    return None


def _success_ratio(setting: Setting, settings: Sequence[Setting], on_disk: Sequence[bool], S: Setup,
                   caches: Caches, cache_dir: str | os.PathLike) -> float:
    """For a quantized MPC setting, its model's open-loop success over FP's (``_open_loop_success``, read from
    results of ``settings`` already on disk, e.g. an earlier notebook's), which scales FP's successes per MPC round
    in its price: a W3 model that plans few episodes keeps most of them planning every round. 1.0 (FP's rounds) for
    FP, open-loop settings, or when either success is not on disk or FP's is 0."""
    if setting.mpc is None or setting.recipe is None or S.recompute:
        return 1.0
    fp = dataclasses.replace(setting, recipe=None, scope="all", overrides=None)
    quantized, full = (_open_loop_success(m, settings, on_disk, S, caches, cache_dir) for m in (setting, fp))
    return 1.0 if quantized is None or not full else quantized / full


def _calibration(setting: Setting, planner: CEMConfig, r: Rates) -> float:
    """Seconds of collecting ``setting``'s calibration: FP planning with ``planner`` on ``n_calib`` episodes over
    ``calib_rounds`` MPC rounds ("planning"), one pass of random candidates per round ("random"), none for
    "dataset" (a sample of training windows)."""
    rounds = setting.calib_rounds
    if setting.calib_source == "dataset":
        return 0.0
    if setting.calib_source == "random":
        return setting.n_calib * rounds * (planner.samples * r.rollout + r.episode)
    return _planning(dataclasses.replace(setting, recipe=None, planner=planner, n_evals=setting.n_calib,
                                         mpc=MPCConfig(max_rounds=rounds)), r)


def price(design: Design, S: Setup, measured: Mapping[str, Rates] | None = None, planned: set[str] | None = None,
          caches: Caches = CACHES, cache_dir: str | os.PathLike = RESULTS_DIR, workers: int = 1,
          task_measured: Mapping[str, Rates] | None = None) -> pd.DataFrame:
    """One row per piece of ``design``'s work: ``kind`` (setting, calibration, quantize, probe, alignment,
    sensitivity, notebook), ``what``, ``cached``, predicted ``seconds`` (0 when cached) and ``task`` (the setting's
    index in the design for a setting and the quantization / calibration it brings, -1 for the kernel's work).
    ``measured``: checkpoint -> Rates (default: ``rates`` of each checkpoint, measured here when not kept yet). When
    every setting, alignment and sensitivity is cached nothing is measured and the probes and the notebook itself
    are priced NaN (small: a re-plot). ``planned``: result and calibration keys that earlier notebooks of the same
    run compute (counted as cached here); this design's are added to it. cache_dir: the results folder.
    workers: the settings' worker processes ("local:N"; 1 = in the kernel): with more than one, the tasks are priced
    with ``task_measured`` (default: ``rates`` on one torch thread) and ``predicted`` schedules them on that many
    workers (``table.attrs["workers"]``)."""
    planned = set() if planned is None else planned

    def done(keys: list[str], on_disk: list[bool]) -> list[bool]:  # a key met twice runs once, unless recomputed
        seen, out = set(planned), []
        for k, c in zip(keys, on_disk):
            out.append(not S.recompute and (c or k in seen))
            seen.add(k)
        return out

    identity = lambda s: caches.resolved(s).identity  # noqa: E731
    alignment = lambda s: {"alignment": identity(s), "samples": design.candidates, "candidate_seed": 0}  # noqa: E731
    keys = [config_key(identity(s)) for s in design.settings]
    on_disk = cached(design.settings, S.results, cache_dir, identity)
    done_settings = done(keys, on_disk)
    align_keys = [config_key(alignment(s)) for s in design.alignment]
    done_aligned = done(align_keys, cached(design.alignment, S.results, cache_dir, alignment))
    todo = [s for s, c in zip(design.settings, done_settings) if not c]
    todo += [s for s, c in zip(design.alignment, done_aligned) if not c]
    measured = dict(measured or {})
    if todo or design.sensitivity:
        for ck in {str(s.checkpoint) for s in todo + design.probes + design.timed +
                   [s for s, _, _ in design.sensitivity]}:
            if ck not in measured:
                measured[ck] = rates(S, _base_checkpoint(S, ck))
    tasks = measured if workers == 1 else dict(task_measured or {})
    for ck in {str(s.checkpoint) for s, c in zip(design.settings, done_settings) if not c} - set(tasks):
        tasks[ck] = rates(S, _base_checkpoint(S, ck), threads=1)  # workers run one torch thread each
    unknown = Rates(*(float("nan"),) * 3, {}, (float("nan"),), {}, *(float("nan"),) * 2, 0, float("nan"))
    rows, quantized, calibrated = [], set(), set()

    def once(setting: Setting, r: Rates, task: int = -1) -> None:  # the quantization and calibration it brings
        run = caches.resolved(setting)
        if setting.recipe is not None and run.quantized_key not in quantized:
            quantized.add(run.quantized_key)
            rows.append(("quantize", _method(setting), False,
                         r.quantize.get(_method(setting), max(r.quantize.values(), default=float("nan"))), task))
        if setting.needs_calibration and run.calibration_key not in calibrated:
            calibrated.add(run.calibration_key)
            on_disk = not S.recompute and (run.calibration_key in caches.calibrations or run.calibration_key in planned)
            planned.add(run.calibration_key)
            cost = 0.0 if on_disk else _calibration(setting, run.calib_planner, r)
            rows.append(("calibration", f"{run.env} x{setting.calib_rounds}", on_disk, cost, task))

    for i, (s, c) in enumerate(zip(design.settings, done_settings)):
        label = f"{s.checkpoint}: {st.describe(s)['label']}, {st.describe(s)['search']}"
        if not c:
            once(s, tasks[str(s.checkpoint)], i)
        ratio = 1.0 if c else _success_ratio(s, design.settings, on_disk, S, caches, cache_dir)
        rows.append(("setting", label, c, 0.0 if c else _planning(s, tasks[str(s.checkpoint)], ratio), i))
    for s, c in zip(design.alignment, done_aligned):
        r = measured.get(str(s.checkpoint), unknown)
        if not c:
            once(s, r)
        rows.append(("alignment", st.describe(s)["label"], c,
                     0.0 if c else s.n_evals * design.candidates * (r.rollout + r.execute), -1))
    planned.update(keys + align_keys)
    for s in design.probes:
        r = measured.get(str(s.checkpoint), unknown)
        if s.recipe is not None:
            once(s, r)
        rows.append(("probe", st.describe(s)["label"], False, r.probe, -1))
    for s in design.timed:
        r = measured.get(str(s.checkpoint), unknown)
        rows.append(("quantize", f"{_method(s)} (timed)", False,
                     r.quantize.get(_method(s), max(r.quantize.values(), default=float("nan"))), -1))
    for s, bit_widths, sequences in design.sensitivity:
        r = measured[str(s.checkpoint)]
        rows.append(("sensitivity", caches.resolved(s).env, False,
                     (r.linears * len(bit_widths) + 1) * s.n_calib * sequences * r.rollout, -1))
    notebook = next(iter(measured.values()), unknown).notebook
    rows.append(("notebook", "kernel, imports, figures", False, notebook, -1))
    table = pd.DataFrame(rows, columns=["kind", "what", "cached", "seconds", "task"])
    table.attrs["workers"] = workers
    return table


def price_notebook(stem: str, parameters: Mapping[str, Any], planned: set[str] | None = None
                   ) -> pd.DataFrame | str | None:
    """``price`` of notebook ``stem``'s design for its ``parameters`` (the parameters cell with the runner's
    values), its setup's printout suppressed; None for a notebook without a design (``designs.DESIGNS``), and the
    error as a string when pricing fails (a bad parameter: the notebook itself will name it), so a runner never
    stops for its cost model. An ``executor`` parameter "local:N" prices the settings on N workers."""
    if stem not in DESIGNS:
        return None
    try:
        spec = parameters.get("executor")
        kind, target = parse_spec(spec) if spec is not None else ("serial", 1)
        with contextlib.redirect_stdout(io.StringIO()):
            S = setup_of(parameters)
            return price(of_notebook(stem, S, parameters), S, planned=planned,
                         workers=target if kind == "local" else 1)
    except Exception as error:  # noqa: BLE001 - reported, the run goes on
        return f"{type(error).__name__}: {error}"


def summary(table: pd.DataFrame | str | None) -> str:
    """One line for a priced notebook (``price_notebook``'s result): its settings (how many to compute), the
    predicted seconds (``predicted``; "on N workers" when the settings run on several) and the work by kind."""
    if table is None:
        return "not priced (no design in wmqlib.designs)"
    if isinstance(table, str):
        return f"not priced ({table})"
    settings = table[table["kind"] == "setting"]
    todo = table[~table["cached"]]
    parts = todo.groupby("kind", sort=False)["seconds"].sum()
    shown = ", ".join(f"{kind} {seconds:.0f} s" for kind, seconds in parts.items() if seconds > 0)
    workers = table.attrs.get("workers", 1)
    total = predicted(table)
    on = f" on {workers} workers" if workers > 1 else ""
    text = "a re-plot (everything cached)" if pd.isna(total) else f"predicted {total:.0f} s{on} ({shown})"
    return f"{len(settings)} settings, {int((~settings['cached']).sum())} to compute; {text}"


def _base_checkpoint(S: Setup, checkpoint: str) -> str:
    """The setup's checkpoint a setting's checkpoint prices like (a QAT checkpoint of the same architecture plans
    at its base model's rates): itself when it is one of the setup's, else the setup's checkpoint of its env."""
    if checkpoint in S.checkpoints:
        return checkpoint
    env = CACHES.checkpoint(checkpoint).env
    return S.checkpoints[S.envs.index(env)]


def predicted(table: pd.DataFrame | str | None) -> float:
    """The seconds a ``price_notebook`` result predicts in all (NaN when it is not priced or all unknown): the
    kernel's work plus the settings' tasks list-scheduled in design order on ``table.attrs["workers"]`` workers."""
    if not isinstance(table, pd.DataFrame):
        return float("nan")
    workers, table = table.attrs.get("workers", 1), table[~table["cached"]]
    kernel = table[table["task"] < 0]["seconds"].sum(min_count=1)
    durations = table[table["task"] >= 0].groupby("task", sort=True)["seconds"].sum()
    free = [0.0] * workers  # when each worker is next free
    for seconds in durations:
        free[free.index(min(free))] += seconds
    return float(pd.Series([kernel, max(free) if len(durations) else float("nan")]).sum(min_count=1))


def record_run(profile: str, notebook: str, table: pd.DataFrame | str | None, seconds: float, executor: str | None,
               load: float, folder: Path = RUNS_DIR) -> bool:
    """Keep notebook ``notebook``'s run in ``<folder>/<profile>.json`` when it computed something (``table``, its
    ``price_notebook``, has settings to compute, or could not be priced; None, a notebook without a design, is not
    kept): predicted and measured seconds, settings and how many were computed, the executor ("serial" for none)
    and the machine, ``load`` being the 1-minute load average when the notebook started, and the cost model that
    predicted it (``cost_model``: ``RATES_VERSION``). Returns whether it was kept."""
    if table is None:
        return False
    if isinstance(table, pd.DataFrame):
        settings = table[table["kind"] == "setting"]
        if settings["cached"].all():
            return False
        counts = {"settings": len(settings), "computed": int((~settings["cached"]).sum())}
    else:
        counts = {"settings": None, "computed": None}
    path = Path(folder) / f"{profile}.json"
    runs = json.loads(path.read_text()) if path.is_file() else {}
    guess = predicted(table)
    runs[notebook] = {"predicted_s": None if math.isnan(guess) else round(guess, 1), "measured_s": round(seconds, 1),
                      **counts,
                      "executor": executor or "serial", "machine": machine(),
                      "load": None if math.isnan(load) else round(load, 2), "date": time.strftime("%Y-%m-%d"),
                      "cost_model": RATES_VERSION}
    atomic_write(path, json.dumps(dict(sorted(runs.items())), indent=1) + "\n")
    return True


def run_table(profile: str, folder: Path = RUNS_DIR) -> pd.DataFrame:
    """The kept runs of ``profile`` (``record_run``), one row per notebook: notebook, settings, computed, predicted_s,
    measured_s, measured / predicted, executor, machine ("<cpu> (<capability>), <cores> cores, <threads> torch
    threads"), load, date and cost model (the ``RATES_VERSION`` that predicted it; 1 for a record from before the
    field); empty when none is kept."""
    path = Path(folder) / f"{profile}.json"
    runs = json.loads(path.read_text()) if path.is_file() else {}
    rows = [{"notebook": name, "settings": r["settings"], "computed": r["computed"], "predicted_s": r["predicted_s"],
             "measured_s": r["measured_s"], "measured / predicted": round(r["measured_s"] / r["predicted_s"], 2)
             if r["predicted_s"] else None, "executor": r["executor"],
             "machine": machine_name(r["machine"]),
             "load": r["load"], "date": r["date"], "cost model": r.get("cost_model", 1)} for name, r in runs.items()]
    return pd.DataFrame(rows, columns=["notebook", "settings", "computed", "predicted_s", "measured_s",
                                       "measured / predicted", "executor", "machine", "load", "date", "cost model"])
