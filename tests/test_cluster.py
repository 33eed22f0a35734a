"""wmqlib.cluster and sweep's executor seam on a local 2-worker Dask cluster (127.0.0.1 only, no dashboard).

Tables equal to the serial run (cheap deterministic run functions, and once the real ``run_setting`` on a tiny
model), results written by the driver in completion order, a worker SIGKILLed mid-task, the driver SIGKILLed
mid-run, a config that raises. Every test is bounded by an alarm. The workers are spawned with this process's
``sys.path``, so they import this module's run functions by name; it imports torch only inside the study test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wmqlib.cluster import check_scheduler, parse_spec
from wmqlib.sweep import SweepError, config_key, sweep

distributed = pytest.importorskip("distributed", reason="Dask distributed is not installed: pip install 'wmq[cluster]'")

TEST_LIMIT_S = 150  # per test, alarm-enforced: a hung cluster fails the test instead of the suite
CONFIGS = [{"method": m, "bits": b, "seed": 3 + i} for i, (m, b) in enumerate(
    [("rtn", 4), ("rtn", 8), ("awq", 4), ("awq", 8), ("fp", 16), ("omse", 3)])]


def rows(cfg: dict) -> list[dict]:
    """Three deterministic rows of a config (floats from its seed, so equality is bit for bit)."""
    rng = np.random.default_rng(cfg["seed"])
    return [{"episode": e, "success": bool(rng.random() < 0.5), "state_dist": float(rng.normal()) / cfg["bits"]}
            for e in range(3)]


def failing_rows(cfg: dict) -> list[dict]:
    if cfg["method"] == "awq" and cfg["bits"] == 4:
        raise ValueError("AWQ W4 diverged")
    return rows(cfg)


def omp_threads() -> str:
    return os.environ["OMP_NUM_THREADS"]


def killing_rows(cfg: dict, marker: str) -> list[dict]:
    """``rows``; the first attempt at config 2 SIGKILLs its own worker process mid-task (its pid -> ``marker``)."""
    if CONFIGS.index(cfg) == 2 and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return rows(cfg)


@pytest.fixture(autouse=True)
def bounded():
    def expire(signum, frame):
        raise TimeoutError(f"test ran past {TEST_LIMIT_S} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def scheduler() -> str:
    """A 2-worker LocalCluster (one thread, one OpenMP thread each) shared by the module: its dask:// spec."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, env={"OMP_NUM_THREADS": "1"}) as cluster:
        yield "dask://" + cluster.scheduler_address.removeprefix("tcp://")


def serial(tmp_path: Path, name: str = "ref") -> pd.DataFrame:
    return sweep(CONFIGS, rows, name, cache_dir=tmp_path / "serial", progress=False)


def cache_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json"))


# ----- specs and the generic executor seam (no cluster) -----

def test_parse_spec_accepts_the_two_forms_and_names_them_otherwise():
    assert parse_spec("local:2") == ("local", 2)
    assert parse_spec("dask://10.0.0.5:8786") == ("dask", "tcp://10.0.0.5:8786")
    assert parse_spec("dask://node-3.cluster:80") == ("dask", "tcp://node-3.cluster:80")
    for bad in ["local:0", "local:", "local:two", "dask://host", "dask://host:0", "dask://host:70000",
                "tcp://host:8786", "threads:2", ""]:
        with pytest.raises(ValueError, match="'local:N'.*'dask://HOST:PORT'|worker count"):
            parse_spec(bad)
    with pytest.raises(TypeError, match="executor spec must be a string"):
        parse_spec(2)


def test_check_scheduler_names_the_address_and_the_cause():
    check_scheduler("local:2")  # nothing to reach
    with pytest.raises(OSError, match="^cannot connect to 127.0.0.1:1: Connection refused$"):
        check_scheduler("dask://127.0.0.1:1")
    with socket.create_server(("127.0.0.1", 0)) as server:  # accepts connections, never answers
        port = server.getsockname()[1]
        with pytest.raises(OSError, match=f"^127.0.0.1:{port} accepts connections but no Dask scheduler answered "
                                          "within 1 s"):
            check_scheduler(f"dask://127.0.0.1:{port}", timeout=1)


def test_bad_executor_is_rejected_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="executor must be 'local:N'"):
        sweep(CONFIGS, rows, "bad", cache_dir=tmp_path, progress=False, executor="local2")
    with pytest.raises(TypeError, match="concurrent.futures.Executor"):
        sweep(CONFIGS, rows, "bad", cache_dir=tmp_path, progress=False, executor=2)
    assert cache_files(tmp_path / "bad") == []


class ReversedExecutor(Executor):
    """Runs every task when it is submitted but completes the futures one at a time, last submitted first: the last
    submission completes the first future, and the driver asking for a future's outcome completes the next, so
    results come back in the reverse of the config order with no timing involved. ``n``: the tasks to expect;
    ``written()``: the result files there are, recorded in ``seen`` each time the driver asks for an outcome."""

    def __init__(self, n: int, written: Callable[[], set[str]]) -> None:
        self.n, self.written, self.held, self.seen = n, written, [], []

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future = _Handed(self)
        self.held.append((future, fn(*args, **kwargs)))
        if len(self.held) == self.n:
            self.complete_next()
        return future

    def complete_next(self) -> None:
        if self.held:
            future, result = self.held.pop()
            future.set_result(result)


class _Handed(Future):
    """A future that completes the executor's next one once the driver has asked for its outcome."""

    def __init__(self, executor: ReversedExecutor) -> None:
        super().__init__()
        self.executor, self.asked = executor, False

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self.asked:
            self.asked = True
            self.executor.seen.append(self.executor.written())
            self.executor.complete_next()
        return super().exception(timeout)


def test_executor_results_are_written_in_completion_order_table_in_config_order(tmp_path):
    folder = tmp_path / "reversed"
    executor = ReversedExecutor(len(CONFIGS), lambda: {p.stem for p in cache_files(folder)})
    table = sweep(CONFIGS, rows, "reversed", cache_dir=tmp_path, progress=False, executor=executor)
    pd.testing.assert_frame_equal(table, serial(tmp_path))
    seen = executor.seen + [executor.written()]  # as the driver took each result, and at the end
    assert seen[0] == set() and all(len(after - before) == 1 for before, after in zip(seen, seen[1:]))
    order = [(after - before).pop() for before, after in zip(seen, seen[1:])]
    assert order == [config_key(c) for c in reversed(CONFIGS)]


def test_progress_counts_cached_and_finished_configs(tmp_path, capsys):
    sweep(CONFIGS[:2], rows, "bar", cache_dir=tmp_path, progress=False)
    with ThreadPoolExecutor(2) as pool:
        sweep(CONFIGS, rows, "bar", cache_dir=tmp_path, executor=pool)
    err = capsys.readouterr().err
    assert "2/6" in err and "6/6" in err  # starts at the cached count, ends with every config


def test_serial_sweep_imports_no_dask(tmp_path):
    code = ("import sys; from wmqlib.sweep import sweep; "
            f"sweep([1, 2], lambda c: {{'y': c}}, 'plain', cache_dir={str(tmp_path)!r}, progress=False); "
            "print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_failing_config_serially_is_reported_the_others_finish(tmp_path):
    with pytest.warns(RuntimeWarning, match="failed"), pytest.raises(SweepError) as err:
        sweep(CONFIGS, failing_rows, "fail", cache_dir=tmp_path, progress=False, label=lambda c: c["method"])
    assert list(err.value.failures) == [config_key(CONFIGS[2])]
    assert len(cache_files(tmp_path / "fail")) == len(CONFIGS) - 1


def test_spec_is_not_opened_when_everything_is_cached(tmp_path, monkeypatch):
    import wmqlib.cluster

    serial(tmp_path)
    monkeypatch.setattr(wmqlib.cluster, "open_executor", lambda spec: pytest.fail("opened a cluster for nothing"))
    table = sweep(CONFIGS, rows, "ref", cache_dir=tmp_path / "serial", progress=False, executor="local:2")
    pd.testing.assert_frame_equal(table, serial(tmp_path))


# ----- on the 2-worker cluster -----

def test_check_scheduler_passes_a_running_scheduler_and_refuses_a_worker(scheduler):
    check_scheduler(scheduler)
    with distributed.Client(scheduler.replace("dask://", "tcp://")) as client:
        worker = next(iter(client.scheduler_info()["workers"]))
    with pytest.raises(OSError, match="is a Dask Worker, not a scheduler"):
        check_scheduler(worker.replace("tcp://", "dask://"))


def test_two_workers_give_the_serial_table_and_the_same_files(tmp_path, scheduler):
    table = sweep(CONFIGS, rows, "ref", cache_dir=tmp_path / "dask", progress=False, executor=scheduler)
    pd.testing.assert_frame_equal(table, serial(tmp_path))
    files = cache_files(tmp_path / "dask" / "ref")
    assert [p.read_bytes() for p in files] == [p.read_bytes() for p in cache_files(tmp_path / "serial" / "ref")]


def test_failing_config_on_the_cluster_names_it_and_the_rest_are_cached(tmp_path, scheduler):
    label = lambda c: f"{c['method']} W{c['bits']}"
    with pytest.warns(RuntimeWarning, match=f"config {config_key(CONFIGS[2])} \\(awq W4\\) failed"), \
            pytest.raises(SweepError, match=r"1 of 6 configurations failed") as err:
        sweep(CONFIGS, failing_rows, "fail", cache_dir=tmp_path, progress=False, executor=scheduler, label=label)
    assert f"{config_key(CONFIGS[2])} (awq W4): ValueError: AWQ W4 diverged" in str(err.value)
    assert isinstance(err.value.__cause__, ValueError)
    assert len(cache_files(tmp_path / "fail")) == len(CONFIGS) - 1
    calls: list = []
    table = sweep(CONFIGS, lambda c: calls.append(c) or rows(c), "fail", cache_dir=tmp_path, progress=False)
    assert calls == [CONFIGS[2]]  # a rerun retries only the failed config
    pd.testing.assert_frame_equal(table, serial(tmp_path, "fail"))


def test_worker_killed_mid_task_is_retried_and_every_config_lands_once(tmp_path, scheduler):
    marker = tmp_path / "killed-pid"
    table = sweep(CONFIGS, partial(killing_rows, marker=str(marker)), "ref", cache_dir=tmp_path / "dask",
                  progress=False, executor=scheduler)
    assert marker.exists(), "config 2 never ran on a worker"  # so its first worker was killed mid-task
    assert table["config_key"].value_counts().eq(3).all() and table["config_key"].nunique() == len(CONFIGS)
    pd.testing.assert_frame_equal(table, serial(tmp_path))
    assert len(cache_files(tmp_path / "dask" / "ref")) == len(CONFIGS)


DRIVER = '''
import pathlib, sys, time
import numpy as np
from wmqlib.sweep import sweep
CONFIGS = {configs!r}
cache, marker = sys.argv[1], pathlib.Path(sys.argv[2])

def run(cfg):
    if CONFIGS.index(cfg) == 4:  # blocks until the driver is killed
        marker.write_text("started")
        time.sleep(300)
    rng = np.random.default_rng(cfg["seed"])
    return [{{"episode": e, "success": bool(rng.random() < 0.5), "state_dist": float(rng.normal()) / cfg["bits"]}}
            for e in range(3)]

if __name__ == "__main__":
    sweep(CONFIGS, run, "ref", cache_dir=cache, progress=False, executor="local:2")
'''


@pytest.mark.slow
def test_driver_killed_mid_run_resumes_with_nothing_lost_or_duplicated(tmp_path):
    """The child drives its own "local:2" cluster; it is SIGKILLed once all configs but the blocking one are cached."""
    marker, folder = tmp_path / "started", tmp_path / "dask" / "ref"
    child = subprocess.Popen([sys.executable, "-c", DRIVER.format(configs=CONFIGS), str(tmp_path / "dask"),
                              str(marker)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and len(cache_files(folder)) == len(CONFIGS) - 1):
            assert child.poll() is None, child.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the child's cluster never finished the other configs"
            time.sleep(0.1)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        try:  # the child's worker processes, if any outlived it (same session, started here)
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait()
    assert child.returncode == -signal.SIGKILL
    calls: list = []
    resumed = sweep(CONFIGS, lambda c: calls.append(c) or rows(c), "ref", cache_dir=tmp_path / "dask",
                    progress=False)
    assert calls == [CONFIGS[4]]  # the finished work is kept, only the killed task reruns
    pd.testing.assert_frame_equal(resumed, serial(tmp_path))
    assert resumed.duplicated(["config_key", "episode"]).sum() == 0
    assert not list(folder.glob("*.tmp"))


def test_open_executor_local_gives_each_worker_the_threads_asked():
    """OMP_NUM_THREADS is set before the worker imports anything: torch's intra-op thread count follows it."""
    from wmqlib.cluster import open_executor

    with open_executor("local:1", threads=2) as ex:
        assert ex.submit(omp_threads).result(timeout=120) == "2"


# ----- the study on the cluster -----

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """A tiny Wall world model trained end to end by wmqlib.train (a few seconds)."""
    import torch
    from wmqlib.recipes import PRESETS
    from wmqlib.train import train

    out = tmp_path_factory.mktemp("tiny") / "tiny-wall"
    torch.set_num_threads(1)  # the workers' count: provenance and float reduction order match
    train(PRESETS["tiny"], out, progress=False, evaluate_fp=False)
    return str(out)


@pytest.mark.slow
def test_run_study_on_two_workers_equals_the_serial_run(tmp_path, tiny, scheduler):
    from wmqlib import study as st
    from wmqlib.models import CheckpointError
    from wmqlib.plan import CEMConfig
    from wmqlib.quant import AWQ, RTN, PerChannel

    small = CEMConfig(samples=12, topk=3, opt_steps=2)
    settings = [st.Setting(tiny, recipe=r, planner=small, n_evals=2, n_calib=2, device="cpu")
                for r in (None, RTN(4, PerChannel()), AWQ(4, PerChannel()))]
    here = st.run_study(settings, "tiny", cache_dir=tmp_path / "serial", progress=False)
    there = st.run_study(settings, "tiny", cache_dir=tmp_path / "dask", progress=False, executor=scheduler)
    pd.testing.assert_frame_equal(here.drop(columns="seconds"), there.drop(columns="seconds"))
    assert set(there["provenance.threads"]) == {1}
    assert len(list((tmp_path / "dask" / "calibration").glob("*.safetensors"))) == 1  # AWQ's, by a worker
    with pytest.raises(CheckpointError, match="has weights .*, the driver's have 0000"):  # a stale copy there
        st.run_setting_in(settings[0], str(tmp_path / "dask" / "calibration"), {tiny: "0" * 16})
