"""wmqlib.sweep: caching, resume after a real SIGKILL, corrupt-file handling, stale temporary files, config hashing."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sweep_child import make_configs, rows
from wmqlib.sweep import (
    OMIT_AT_DEFAULT, SweepError, added_field, canonical, config_key, flatten_config, inventory, record_reads, served,
    sweep, without_defaults,
)
from wmqlib.sweep import main as sweep_main
from wmqlib.validate import HOST

CHILD = Path(__file__).with_name("sweep_child.py")  # the sweep a test SIGKILLs, and its configs and rows


def _counting(calls: list):
    def run(cfg):
        calls.append(cfg)
        return rows(cfg)
    return run


def test_sweep_table_has_config_in_every_row_and_caches(tmp_path):
    configs = make_configs()
    calls: list = []
    table = sweep(configs, _counting(calls), "demo", cache_dir=tmp_path, progress=False)
    assert len(calls) == len(configs) and len(table) == 4 * len(configs)
    assert list(table.columns[:5]) == ["config_key", "method", "bits", "planner.opt_steps", "episode"]
    assert (table.groupby("config_key").size() == 4).all()
    assert table.loc[table.method == "fp", "bits"].eq(16).all()
    again = sweep(configs, _counting(calls), "demo", cache_dir=tmp_path, progress=False)
    assert len(calls) == len(configs)  # nothing rerun
    pd.testing.assert_frame_equal(table, again)
    assert len(list((tmp_path / "demo").glob("*.json"))) == len(configs)
    sweep(configs[:1], _counting(calls), "demo", cache_dir=tmp_path, recompute=True, progress=False)
    assert len(calls) == len(configs) + 1


def test_sigkilled_sweep_resumes_to_the_uninterrupted_table(tmp_path):
    marker = tmp_path / "started"
    child = subprocess.Popen([sys.executable, str(CHILD), str(tmp_path / "a"), str(marker), "2"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "child sweep never reached config 2"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert len(list((tmp_path / "a" / "killed").glob("*.json"))) == 2  # configs 0 and 1 finished

    configs = make_configs()
    calls: list = []
    resumed = sweep(configs, _counting(calls), "killed", cache_dir=tmp_path / "a", progress=False)
    assert calls == configs[2:]  # finished work is not redone
    fresh = sweep(configs, rows, "killed", cache_dir=tmp_path / "b", progress=False)
    pd.testing.assert_frame_equal(resumed, fresh)
    assert resumed.duplicated(["config_key", "episode"]).sum() == 0


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_cache_file_is_reported_and_recomputed(tmp_path, damage):
    configs = make_configs()
    reference = sweep(configs, rows, "c", cache_dir=tmp_path, progress=False)
    victim = tmp_path / "c" / f"{config_key(configs[1])}.json"
    text = victim.read_text()
    victim.write_text({"truncate": text[: len(text) // 2],
                       "flip": text.replace("true", "false", 1),  # parseable, wrong content
                       "garbage": "\x00not json"}[damage])
    calls: list = []
    with pytest.warns(RuntimeWarning, match=f"corrupt cache file .*{victim.name}"):
        table = sweep(configs, _counting(calls), "c", cache_dir=tmp_path, progress=False)
    assert calls == [configs[1]]  # only the damaged config reran; the other rows came from the cache
    pd.testing.assert_frame_equal(table, reference)
    assert victim.with_name(victim.name + ".corrupt").exists()


@dataclasses.dataclass(frozen=True)
class _Recipe:
    w_bits: int
    scope: tuple = ("encoder",)


@dataclasses.dataclass(frozen=True)
class _Other:
    w_bits: int
    scope: tuple = ("encoder",)


def test_config_key_is_stable_and_type_aware():
    a = {"recipe": _Recipe(4), "seed": 1}
    assert config_key(a) == config_key({"seed": 1, "recipe": _Recipe(4, ("encoder",))})  # key order irrelevant
    assert config_key(a) != config_key({"recipe": _Other(4), "seed": 1})  # type name is part of the key
    assert config_key(a) != config_key({"recipe": _Recipe(8), "seed": 1})
    assert canonical(a) == {"recipe": {"__type__": "_Recipe", "w_bits": 4, "scope": ["encoder"]}, "seed": 1}
    assert flatten_config(a) == {"recipe": "_Recipe", "recipe.w_bits": 4, "recipe.scope": '["encoder"]', "seed": 1}
    assert config_key(np.int64(3)) == config_key(3)
    assert len(config_key(a)) == 16 and json.dumps(canonical(a))


@dataclasses.dataclass(frozen=True)
class _Grown:
    """_Recipe after a field was added: the new field is keyed only when it leaves its default."""
    w_bits: int
    scope: tuple = ("encoder",)
    rotation: str = added_field("none")


def test_an_added_field_keeps_old_keys():
    assert canonical(_Grown(4)) == {"__type__": "_Grown", "w_bits": 4, "scope": ["encoder"]}
    assert config_key({"recipe": _Grown(4)}) == config_key({"recipe": _Grown(4, ("encoder",), "none")})
    assert config_key({"recipe": _Grown(4, rotation="hadamard")}) != config_key({"recipe": _Grown(4)})
    assert canonical(_Grown(4, rotation="hadamard"))["rotation"] == "hadamard"
    assert flatten_config({"recipe": _Grown(4)}) == {"recipe": "_Grown", "recipe.w_bits": 4,
                                                     "recipe.scope": '["encoder"]'}
    assert dataclasses.fields(_Grown)[2].metadata[OMIT_AT_DEFAULT]


def test_a_dict_of_key_fields_leaves_out_the_same_way():
    fields = {"env": "wall", "source": "planning", "rounds": 2}
    assert without_defaults(fields, {"source": "planning"}) == {"env": "wall", "rounds": 2}
    assert without_defaults({**fields, "source": "random"}, {"source": "planning"})["source"] == "random"
    assert list(without_defaults(fields, {})) == ["env", "source", "rounds"]  # order kept


def test_sweep_bad_input(tmp_path):
    with pytest.raises(ValueError, match="duplicates"):
        sweep([{"a": 1}, {"a": 1}], rows, "d", cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="name"):
        sweep([{"a": 1}], rows, "../escape", cache_dir=tmp_path, progress=False)
    with pytest.raises(TypeError, match="object"):
        config_key({"model": object()})
    with pytest.raises(ValueError, match="collide"):
        sweep([{"bits": 4}], lambda cfg: {"bits": 5}, "d", cache_dir=tmp_path, progress=False)
    with pytest.raises(SweepError, match="run_fn must return"), pytest.warns(RuntimeWarning, match="failed"):
        sweep([{"x": 4}], lambda cfg: 3.0, "d", cache_dir=tmp_path, progress=False)


def test_key_config_and_provenance(tmp_path):
    """The key comes from key_config (so a config may stay cheap to build); provenance is recorded, not keyed."""
    configs = [{"bits": 4}, {"bits": 8}]
    identity = lambda c: {**c, "weights": "sha-a"}
    calls: list = []
    table = sweep(configs, _counting(calls), "prov", cache_dir=tmp_path, progress=False, key_config=identity,
                  provenance={"torch": "2.13.0", "threads": 2})
    assert set(table["weights"]) == {"sha-a"} and set(table["provenance.threads"]) == {2}
    assert list(table["config_key"].unique()) == [config_key(identity(c)) for c in configs]
    again = sweep(configs, _counting(calls), "prov", cache_dir=tmp_path, progress=False, key_config=identity,
                  provenance={"torch": "other", "threads": 1})
    assert len(calls) == 2  # other provenance, same key: read back, with the provenance it was computed under
    pd.testing.assert_frame_equal(table, again)
    sweep(configs, _counting(calls), "prov", cache_dir=tmp_path, progress=False,
          key_config=lambda c: {**c, "weights": "sha-b"})
    assert len(calls) == 4  # other weights: other keys, recomputed


def test_sweep_removes_stale_temporary_files_only(tmp_path, stale_tmp):
    folder = tmp_path / "stale"
    stale = stale_tmp(folder / "abc.json")
    live = folder / f"abc.json.{os.getpid()}@{HOST}.tmp"
    live.write_text("{half")
    sweep([{"bits": 4}], _counting([]), "stale", cache_dir=tmp_path, progress=False)
    assert not stale.exists() and live.exists()


def test_the_inventory_names_the_files_no_recorded_reader_asked_for(tmp_path, capsys):
    def run(config):
        return {"value": config * 2}
    sweep([1, 2, 3], run, "inv", cache_dir=tmp_path, progress=False)
    folder = tmp_path / "inv"
    assert {config_key(c) for c in (1, 2, 3)} <= served(folder)
    (folder / "stale.json").write_text("{}")  # a file of a setting nobody asks for any more
    assert record_reads("01_reader", [folder, tmp_path / "unused"]) == [folder.resolve() / "reads" / "01_reader.json"]
    table = inventory(folder)
    assert table.set_index("key")["readers"].to_dict() == {**{config_key(c): "01_reader" for c in (1, 2, 3)},
                                                           "stale": ""}
    assert sweep_main(["--inventory", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "4 files, read by ['01_reader']; 1 read by none:" in out and out.rstrip().endswith("stale.json")
    assert sweep_main(["--inventory", str(tmp_path / "missing")]) == 2
    with pytest.raises(ValueError, match="reader"):
        record_reads("../x", [folder])
