"""Dask distributed behind ``sweep``: an executor spec string -> a ``concurrent.futures.Executor``.

    with open_executor("local:2") as ex:            # a LocalCluster: 2 worker processes on 127.0.0.1
        table = sweep(configs, run_fn, "demo", executor=ex)
    sweep(configs, run_fn, "demo", executor="dask://10.0.0.5:8786")   # the same, opened and closed for you

Specs (``parse_spec`` checks them without importing Dask):
    "local:N"          a ``distributed.LocalCluster`` with N worker processes, one thread each, listening on
                       127.0.0.1 only, no dashboard; each worker process starts with ``OMP_NUM_THREADS`` (and MKL's,
                       OpenBLAS's) = ``threads``, so torch plans with that many intra-op threads;
    "dask://HOST:PORT" a running scheduler (``dask scheduler``, ``dask-jobqueue``, ``dask-kubernetes``); its workers
                       keep the settings they were started with (Dask's nanny gives them one OpenMP thread).

``check_scheduler(spec)`` connects to a dask:// scheduler and disconnects (a 5 s timeout on the TCP connection and
another on Dask's handshake): the runner calls it before any notebook runs, so a bad address fails in seconds, not
after the notebook's serial work and the 30 s connect timeout.

Faults are Dask's: a worker that dies mid-task is restarted by its nanny and the task resubmitted (up to the
scheduler's ``allowed-failures``, 3 by default); the results travel back to the driver, which alone writes the cache.
Tasks are submitted impure (``pure=False``): a recomputed configuration really runs again.
Only this module imports Dask, and only when a spec is opened or checked (``pip install 'wmq[cluster]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Iterator
from concurrent.futures import Executor

from wmqlib.validate import check_int

SPEC_FORMS = "'local:N' (N worker processes on this machine) or 'dask://HOST:PORT' (a running scheduler)"
CONNECT_TIMEOUT_S = 30  # how long to wait for a dask:// scheduler to answer
CHECK_TIMEOUT_S = 5  # how long check_scheduler waits (the runner checks a dask:// address before any notebook)


def parse_spec(spec: str) -> tuple[str, int | str]:
    """("local", N) or ("dask", "tcp://HOST:PORT") for an executor spec; ValueError naming the allowed forms."""
    if not isinstance(spec, str):
        raise TypeError(f"executor spec must be a string, {SPEC_FORMS}; got {type(spec).__name__}")
    local = re.fullmatch(r"local:(\d+)", spec)
    if local:
        workers = int(local.group(1))
        check_int("executor 'local:N' worker count N", workers, 1)
        return "local", workers
    remote = re.fullmatch(r"dask://([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):(\d+)", spec)
    if remote and 1 <= int(remote.group(2)) <= 65535:
        return "dask", f"tcp://{remote.group(1)}:{int(remote.group(2))}"
    raise ValueError(f"executor must be {SPEC_FORMS}, got {spec!r}")


def check_scheduler(spec: str, timeout: float = CHECK_TIMEOUT_S) -> None:
    """Connect to the scheduler a "dask://HOST:PORT" spec names and ask who it is; nothing to check for "local:N".

    First a plain TCP connection (a refused port or an unknown host fails at once), then Dask's ``identity`` call,
    bounded by ``timeout`` as a whole (Dask's own handshake waits forever on a port that accepts and never answers).
    Not for a running event loop (it runs its own). Raises ValueError for a bad spec, ImportError without Dask,
    OSError naming the address and the cause when no Dask scheduler answers there within ``timeout`` seconds.
    """
    kind, target = parse_spec(spec)
    if kind != "dask":
        return
    address = target.removeprefix("tcp://")
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        cause = f"no answer within {timeout:g} s" if isinstance(err, TimeoutError) else err.strerror or str(err)
        raise OSError(f"cannot connect to {address}: {cause}") from err
    try:
        identity = asyncio.run(asyncio.wait_for(_identity(target, timeout), timeout))
    except Exception as err:  # noqa: BLE001 - whatever the server said or did not say, it is no scheduler
        raise OSError(f"{address} accepts connections but no Dask scheduler answered within {timeout:g} s "
                      f"({type(err).__name__}{': ' if str(err) else ''}{err})") from err
    if identity.get("type") != "Scheduler":
        raise OSError(f"{address} is a Dask {identity.get('type', 'server')}, not a scheduler")


async def _identity(target: str, timeout: float) -> dict:
    """The ``identity`` answer of the Dask server at ``target`` ("tcp://HOST:PORT"): its ``type``, ``id``, ..."""
    from distributed.core import rpc

    async with rpc(target, timeout=timeout) as server:
        return await server.identity()


@contextlib.contextmanager
def open_executor(spec: str, threads: int = 1) -> Iterator[Executor]:
    """A ``concurrent.futures.Executor`` running on the Dask cluster ``spec`` names; closed (the local cluster's
    worker processes stopped, the client disconnected) on exit.

    threads: torch / OpenMP threads per worker process of a "local:N" cluster (a dask:// cluster's workers keep
    their own). Raises ValueError for a bad spec, ImportError when Dask is not installed, OSError (Dask's
    TimeoutError) when the scheduler does not answer within CONNECT_TIMEOUT_S.
    """
    kind, target = parse_spec(spec)
    check_int("threads", threads, 1)
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise ImportError(f"executor={spec!r} needs Dask distributed: pip install 'wmq[cluster]' "
                          f"(or 'dask[distributed]>=2024.1')") from err
    with contextlib.ExitStack() as stack:
        if kind == "local":
            env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
            cluster = stack.enter_context(LocalCluster(n_workers=target, threads_per_worker=1, processes=True,
                                                       host="127.0.0.1", dashboard_address=None, env=env))
            client = stack.enter_context(Client(cluster))
        else:
            client = stack.enter_context(Client(target, timeout=CONNECT_TIMEOUT_S))
        yield client.get_executor(pure=False)
