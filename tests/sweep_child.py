"""What tests/test_sweep.py shares with the sweep it runs in a child process and SIGKILLs: six configs and a
deterministic run function. ``python tests/sweep_child.py CACHE MARKER BLOCK`` sweeps them into CACHE and, at config
BLOCK, writes MARKER and blocks until the test kills it."""

from __future__ import annotations

import pathlib
import sys
import time


def make_configs() -> list[dict]:
    return [{"method": m, "bits": b, "planner": {"opt_steps": 3}} for m in ("rtn", "awq") for b in (4, 8)][:5] \
        + [{"method": "fp", "bits": 16, "planner": {"opt_steps": 3}}]


def rows(cfg: dict) -> list[dict]:
    return [{"episode": e, "success": (e * cfg["bits"]) % 3 == 0, "state_dist": e / cfg["bits"] + 0.1}
            for e in range(4)]


def main(cache: str, marker: str, block: str) -> None:
    from wmqlib.sweep import sweep

    def run(cfg: dict) -> list[dict]:
        if make_configs().index(cfg) == int(block):
            pathlib.Path(marker).write_text("started")
            time.sleep(120)  # killed here
        return rows(cfg)

    sweep(make_configs(), run, "killed", cache_dir=cache, progress=False)


if __name__ == "__main__":
    main(*sys.argv[1:])
