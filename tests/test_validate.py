"""wmqlib.validate: checks name the field and the allowed values; atomic writes leave whole files or none."""

import os

import numpy as np
import pytest

from wmqlib.validate import (
    HOST, InvalidValue, atomic_path, atomic_write, check_bool, check_choice, check_float, check_int, check_type,
    remove_stale_tmp,
)


def test_check_int_accepts_and_normalises():
    assert check_int("n", 3, 1) == 3
    assert type(check_int("n", np.int64(4), 1, 8)) is int


@pytest.mark.parametrize("value, message", [
    (True, "n must be an int in 1..8, got True"), (2.0, "n must be an int in 1..8, got 2.0"),
    (0, "n must be an int in 1..8, got 0"), (9, "n must be an int in 1..8, got 9"), ("3", "got '3'")])
def test_check_int_refuses(value, message):
    with pytest.raises(InvalidValue, match=message):
        check_int("n", value, 1, 8)


def test_invalid_value_is_both_type_and_value_error():
    for err in (TypeError, ValueError):
        with pytest.raises(err):
            check_int("n", "x", 0)


def test_check_float():
    assert check_float("lr", 1, 0, strict=True) == 1.0
    for bad in (0, float("nan"), float("inf"), True, "1", 2.5):
        with pytest.raises(InvalidValue, match=r"lr must be a number in \(0, 2\]"):
            check_float("lr", bad, 0, 2, strict=True)


def test_check_float_one_bound():
    with pytest.raises(InvalidValue, match=r"x must be a finite number >= 0, got -1"):
        check_float("x", -1, 0)
    with pytest.raises(InvalidValue, match=r"x must be a finite number <= 1, got nan"):
        check_float("x", float("nan"), maximum=1)


def test_check_bool_choice_type():
    assert check_bool("flag", np.bool_(True)) is True
    with pytest.raises(InvalidValue, match="flag must be True or False, got 1"):
        check_bool("flag", 1)
    assert check_choice("env", "wall", ("wall", "pusht")) == "wall"
    with pytest.raises(InvalidValue, match=r"env must be one of \['wall', 'pusht'\], got 'moon'"):
        check_choice("env", "moon", ("wall", "pusht"))
    with pytest.raises(InvalidValue, match="must be one of"):
        check_choice("env", ["unhashable"], {"wall"})
    with pytest.raises(InvalidValue, match="x must be a path, got int"):
        check_type("x", 3, (str, os.PathLike), "a path")


def test_atomic_write_replaces_whole_file(tmp_path):
    path = atomic_write(tmp_path / "sub" / "a.json", "one")
    assert path.read_text() == "one"
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_atomic_path_removes_tmp_on_error(tmp_path):
    target = tmp_path / "b.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_remove_stale_tmp_keeps_live_writers_and_other_hosts(tmp_path, stale_tmp):
    stale = stale_tmp(tmp_path / "k.json")
    pid = stale.name.split(".")[2].split("@")[0]
    live = tmp_path / f"k.json.{os.getpid()}@{HOST}.tmp"
    elsewhere = tmp_path / f"k.json.{pid}@another-host.tmp"  # its pid cannot be checked from here
    foreign = tmp_path / f"report.{pid}.tmp"  # not a name wmq writes
    other = tmp_path / "k.json"
    for p in (live, elsewhere, foreign, other):
        p.write_text("x")
    assert remove_stale_tmp(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, elsewhere, foreign, other))
    assert remove_stale_tmp(tmp_path / "missing") == []


def test_every_atomic_write_removes_the_stale_tmp_in_its_folder(tmp_path, stale_tmp):
    leftovers = [stale_tmp(tmp_path / "a.json"), stale_tmp(tmp_path / "b.safetensors")]
    atomic_write(tmp_path / "a.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert not any(p.exists() for p in leftovers)
