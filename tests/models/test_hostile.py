"""A corpus of hostile and malformed files: every one ends in the expected error, in bounded time and memory.

Each case builds its file(s) here, then loads them in a process of its own, under limits: a helper process imports
wmqlib once (and runs nothing), then forks one child per case; the child caps its address space (``RLIMIT_AS``:
what it holds after the imports plus ``CHILD_EXTRA_MEMORY``) and CPU time (``RLIMIT_CPU``) with
``resource.setrlimit``, runs the load and writes one JSON result (exception type and message, modules the load
imported, whether a marker file appeared). The helper kills a child still running after ``CHILD_WALL_SECONDS``.
The test asserts the expected error type and message; a child killed by a limit or by the wall clock fails its
test, so no case can pass by timing out.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import select
import subprocess
import sys
import tarfile
import types
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

import wmqlib
from wmqlib.models import save_world_model

REPO = Path(wmqlib.__file__).resolve().parent.parent
CHILD_EXTRA_MEMORY = 1 << 30  # bytes a case may allocate beyond the imported libraries
CHILD_CPU_SECONDS = 30
CHILD_WALL_SECONDS = 120  # generous for a loaded machine; every case needs well under a second of CPU

HELPER = r"""
import contextlib, io, json, os, resource, signal, sys, time, traceback, warnings
import wmqlib.models, wmqlib.models.convert, wmqlib.quant.calibration, yaml  # imported once, before any fork
from wmqlib.models.safe_pickle import load_pickled_checkpoint, load_tensor_dict

CALLS = {"pickle": load_pickled_checkpoint, "tensors": load_tensor_dict, "world_model": wmqlib.models.load_world_model,
         "calibration": wmqlib.quant.calibration.Calibration.load, "convert": wmqlib.models.convert.main,
         "allocate": bytes}  # the last one checks the sandbox itself


def run(job):
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + job["extra_memory"],) * 2)
    resource.setrlimit(resource.RLIMIT_CPU, (job["cpu_seconds"],) * 2)
    before = set(sys.modules)
    result, err = {"outcome": "ok"}, io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(err):
            warnings.simplefilter("always")
            value = CALLS[job["call"]](*job["args"], **job["kwargs"])
            result["rc"] = value if job["call"] == "convert" else None
            result["warnings"] = [str(w.message) for w in caught]
    except BaseException as error:
        result = {"outcome": "error", "type": type(error).__name__,
                  "mro": [c.__name__ for c in type(error).__mro__], "message": str(error),
                  "traceback": traceback.format_exc()[-2000:]}
    result["stderr"] = err.getvalue()
    result["new_modules"] = sorted(set(sys.modules) - before)
    result["marker_exists"] = bool(job["marker"]) and os.path.exists(job["marker"])
    with open(job["result"], "w") as fh:
        json.dump(result, fh)


for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            run(job)
        except BaseException:
            code = 3
        os._exit(code)
    deadline, status = time.monotonic() + job["wall_seconds"], None
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = raw
        elif time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = "timeout"
        else:
            time.sleep(0.01)
    print(json.dumps({"status": status if status == "timeout" else os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Sandbox:
    """The helper process; ``run(call, *args, marker=None, **kwargs)`` loads in a fresh limited child."""

    def __init__(self, tmp: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        self.tmp, self.count = tmp, 0
        self.proc = subprocess.Popen([sys.executable, "-c", HELPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=REPO)

    def run(self, call: str, *args, marker: Path | None = None, **kwargs) -> dict:
        self.count += 1
        result = self.tmp / f"result-{self.count}.json"
        job = {"call": call, "args": [str(a) if isinstance(a, Path) else a for a in args],
               "kwargs": {k: str(v) if isinstance(v, Path) else v for k, v in kwargs.items()},
               "extra_memory": CHILD_EXTRA_MEMORY, "cpu_seconds": CHILD_CPU_SECONDS,
               "wall_seconds": CHILD_WALL_SECONDS, "marker": str(marker) if marker else None, "result": str(result)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        # The helper answers within CHILD_WALL_SECONDS once it runs; its own start (imports) may take a while.
        ready, _, _ = select.select([self.proc.stdout], [], [], CHILD_WALL_SECONDS + 300)
        if not ready:
            pytest.fail("the sandbox helper did not answer")
        status = json.loads(self.proc.stdout.readline())["status"]
        if status == "timeout":
            pytest.fail(f"{call}{tuple(job['args'])} still ran after {CHILD_WALL_SECONDS} s: the bound failed")
        if status != 0 or not result.is_file():
            pytest.fail(f"the child of {call}{tuple(job['args'])} died (status {status}: a limit or a crash)")
        return json.loads(result.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory):
    """One helper process for this module's cases (each case still runs in its own forked, limited child)."""
    box = Sandbox(tmp_path_factory.mktemp("sandbox"))
    yield box
    box.close()


def expect_error(result: dict, kind: str, pattern: str) -> None:
    """The child ended in an exception of type ``kind`` (or a subclass) whose message matches ``pattern``."""
    assert result["outcome"] == "error", f"expected {kind}, the load succeeded: {result}"
    assert kind in result["mro"], f"expected {kind}, got {result['type']}: {result['message']}"
    assert re.search(pattern, result["message"], re.S), result["message"]


def test_the_memory_limit_holds(sandbox: Sandbox) -> None:
    """The sandbox itself: a child asking for 4 GiB more than the limit gets a MemoryError, not the memory."""
    expect_error(sandbox.run("allocate", CHILD_EXTRA_MEMORY + (4 << 30)), "MemoryError", "")


# ----- building the corpus -------------------------------------------------------------------------------------------

def torch_zip(path: Path, data_pkl: bytes, records: dict[str, bytes] | None = None, top: str = "archive",
              compression: int = zipfile.ZIP_STORED) -> Path:
    """A zip laid out like torch.save's (top/data.pkl, top/version, top/data/<key>) holding a chosen pickle."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr(f"{top}/data.pkl", data_pkl)
        archive.writestr(f"{top}/byteorder", b"little")
        for key, value in (records or {}).items():
            archive.writestr(f"{top}/data/{key}", value)
        archive.writestr(f"{top}/version", b"3\n")
    return path


class Call:
    """Pickles as ``function(*args)``."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@contextmanager
def fake_classes(*qualnames: str):
    """Classes importable under ``qualnames`` while pickling (module objects put in sys.modules, then removed)."""
    made, added = {}, []
    for qualname in qualnames:
        module_name, name = qualname.rsplit(".", 1)
        parts = module_name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix not in sys.modules:
                sys.modules[prefix] = types.ModuleType(prefix)
                added.append(prefix)
        cls = type(name, (), {"__module__": module_name, "__qualname__": name})
        setattr(sys.modules[module_name], name, cls)
        made[qualname] = cls
    try:
        yield made
    finally:
        for prefix in added:
            del sys.modules[prefix]


def fake_module(cls: type, children: dict | None = None, parameters: dict | None = None):
    """An instance of ``cls`` with the __dict__ layout of a torch module."""
    obj = cls.__new__(cls)
    obj.__dict__.update(_modules=dict(children or {}), _parameters=dict(parameters or {}), _buffers={},
                        _non_persistent_buffers_set=set(), training=False)
    return obj


@pytest.fixture
def folder(released: dict, tmp_path: Path) -> Path:
    """A released-layout folder (the fixture's hydra.yaml) whose checkpoint each test replaces."""
    out = tmp_path / "outputs" / "pusht"
    (out / "checkpoints").mkdir(parents=True)
    (out / "hydra.yaml").write_text((released["folder"] / "hydra.yaml").read_text())
    (out / "checkpoints" / "model_latest.pth").write_bytes(
        (released["folder"] / "checkpoints" / "model_latest.pth").read_bytes())
    return out


def set_hydra(folder: Path, **changes) -> None:
    hydra = yaml.safe_load((folder / "hydra.yaml").read_text())
    hydra.update(changes)
    (folder / "hydra.yaml").write_text(yaml.safe_dump(hydra))


# ----- the restricted unpickler: code never runs, nothing is imported ------------------------------------------------

def classic_payloads(marker: Path) -> dict[str, object]:
    import builtins
    import importlib
    import runpy

    write = f"open({str(marker)!r}, 'w').write('pwned')"
    return {
        "posix.system": Call(os.system, f"touch {marker}"),
        "builtins.eval": Call(builtins.eval, write),
        "builtins.exec": Call(builtins.exec, write),
        "subprocess.Popen": Call(subprocess.Popen, ["touch", str(marker)]),
        "runpy.run_path": Call(runpy.run_path, str(marker)),
        "importlib.import_module": Call(importlib.import_module, "antigravity"),
        "pickle.loads": Call(pickle.loads, pickle.dumps(Call(os.system, f"touch {marker}"))),  # nested pickle
        "torch.hub.load": Call(torch.hub.load, "evil/repo", "model"),
    }


@pytest.mark.parametrize("name", ["posix.system", "builtins.eval", "builtins.exec", "subprocess.Popen",
                                  "runpy.run_path", "importlib.import_module", "pickle.loads", "torch.hub.load"])
def test_classic_payloads_are_refused_without_running(sandbox: Sandbox, tmp_path: Path, name: str) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 1, "predictor": [classic_payloads(marker)[name]]}, path)
    result = sandbox.run("pickle", path, marker=marker)
    expect_error(result, "UnsafeCheckpointError", rf"refused to unpickle '{name}' in .*ckpt.pth")
    assert not result["marker_exists"]


@pytest.mark.parametrize("opcodes", [
    b"(S'touch {m}'\nios\nsystem\n.",  # INST: protocol 0 class + call in one opcode
    b"(cos\nsystem\nS'touch {m}'\no.",  # OBJ
])
def test_inst_and_obj_opcodes_are_refused(sandbox: Sandbox, tmp_path: Path, opcodes: bytes) -> None:
    marker = tmp_path / "marker"
    path = torch_zip(tmp_path / "ckpt.pth", opcodes.replace(b"{m}", str(marker).encode()))
    result = sandbox.run("pickle", path, marker=marker)
    expect_error(result, "UnsafeCheckpointError", r"refused to unpickle 'os.system'")
    assert not result["marker_exists"]


def test_refusing_a_lazy_torch_global_imports_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    """``torch._dynamo`` is loaded lazily by torch.__getattr__ (hundreds of modules): a refusal must not touch it."""
    path = torch_zip(tmp_path / "ckpt.pth", b"\x80\x02ctorch\n_dynamo\n.")
    result = sandbox.run("pickle", path)
    expect_error(result, "UnsafeCheckpointError", r"refused to unpickle 'torch._dynamo'")
    assert not [m for m in result["new_modules"] if m.startswith(("torch._dynamo", "torch.onnx", "torch._inductor"))]


def test_build_on_an_allowlisted_function_changes_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    """BUILD with slot state setattr()s on its target: on a rebuild function it must not reach torch's own."""
    from wmqlib.models import CheckpointError
    from wmqlib.models.safe_pickle import load_pickled_checkpoint

    pkl = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"  # the function, then BUILD (None, {'__defaults__': (1,)})
           b"N}X\x0c\x00\x00\x00__defaults__K\x01\x85s\x86b.")
    path = torch_zip(tmp_path / "ckpt.pth", pkl)
    expect_error(sandbox.run("pickle", path), "CheckpointError",
                 r"holds a bare reference to the function '_rebuild_tensor_v2' as data")
    defaults = torch._utils._rebuild_tensor_v2.__defaults__
    with pytest.raises(CheckpointError, match="bare reference"):
        load_pickled_checkpoint(path)  # in this process too: torch's function keeps its defaults
    assert torch._utils._rebuild_tensor_v2.__defaults__ == defaults


@pytest.mark.parametrize("call, pattern", [
    (Call(bytes, 10**11), r"'builtins.bytes'.*asked to allocate 100000000000 bytes"),
    (Call(bytearray, 1 << 40), r"'builtins.bytearray'.*asked to allocate"),
    (Call(list, "x" * 1000), r"'builtins.list'.*only rebuilds containers from pickled data"),
    (Call(int, "9" * 5000), r"'builtins.int'.*to parse"),
])
def test_allowlisted_builtins_cannot_allocate_beyond_the_file(sandbox: Sandbox, tmp_path: Path, call: Call,
                                                              pattern: str) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save({"predictor": call}, path)
    expect_error(sandbox.run("pickle", path), "UnsafeCheckpointError", pattern)


def test_codecs_encode_is_only_a_bytes_literal(sandbox: Sandbox, tmp_path: Path) -> None:
    import _codecs

    path = tmp_path / "ckpt.pth"
    torch.save({"x": Call(_codecs.encode, "x", "zlib_codec")}, path)
    expect_error(sandbox.run("pickle", path), "UnsafeCheckpointError",
                 r"'_codecs.encode'.*only encode\(text, 'latin1'\)")


def test_malformed_persistent_id(sandbox: Sandbox, tmp_path: Path) -> None:
    """torch raises AssertionError for it; wmq reports the file."""
    result = sandbox.run("pickle", torch_zip(tmp_path / "ckpt.pth", b"\x80\x02Pabc\n."))
    expect_error(result, "CheckpointError", r"ckpt.pth could not be read \(AssertionError: saved_id must be a tuple")


def test_storage_larger_than_its_record(sandbox: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "real.pth"
    torch.save({"w": torch.zeros(1000)}, path)
    with zipfile.ZipFile(path) as archive:
        pkl = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    result = sandbox.run("pickle", torch_zip(tmp_path / "ckpt.pth", pkl, {"0": b"\x00" * 16}))
    expect_error(result, "CheckpointError", r"ckpt.pth could not be read")


def test_deeply_nested_pickle(sandbox: Sandbox, tmp_path: Path) -> None:
    depth = 200_000
    pkl = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."  # [[[...]]] without recursion in the pickler
    result = sandbox.run("pickle", torch_zip(tmp_path / "ckpt.pth", pkl))
    expect_error(result, "CheckpointError", r"ckpt.pth nests objects more than 100 levels deep")


def test_expanded_tensor_view(sandbox: Sandbox, tmp_path: Path) -> None:
    """4 bytes of storage viewed as 2^26 floats: a later copy would allocate 256 MiB."""
    path = tmp_path / "dinov2.pth"
    torch.save({"cls_token": torch.zeros(1).expand(1 << 26)}, path)
    expect_error(sandbox.run("tensors", path), "CheckpointError", r"views only 4 bytes of storage")


def test_shared_submodules_are_bounded(sandbox: Sandbox, folder: Path, released: dict) -> None:
    """25 levels of a module whose two children are one module: 2^25 paths from a few hundred bytes."""
    with fake_classes("models.vit.ViTPredictor", "models.vit.Transformer",
                      "models.proprio.ProprioceptiveEmbedding") as cls:
        node = fake_module(cls["models.vit.Transformer"], parameters={"w": torch.zeros(1)})
        for _ in range(25):
            node = fake_module(cls["models.vit.Transformer"], {"a": node, "b": node})
        embed = fake_module(cls["models.proprio.ProprioceptiveEmbedding"])
        torch.save({"predictor": fake_module(cls["models.vit.ViTPredictor"], {"transformer": node}),
                    "action_encoder": embed, "proprio_encoder": embed}, folder / "checkpoints" / "model_latest.pth")
    result = sandbox.run("world_model", folder, dinov2_weights=released["dinov2_path"])
    expect_error(result, "CheckpointError", r"checkpoint\['predictor'\] nests more than 32 levels of submodules "
                                            r"or holds more than 100000")


# ----- accelerate's mixed-precision forwards: getattr for exactly those names -----------------------------------------

@pytest.mark.parametrize("target, name, default, pattern", [
    ("module", "__init__", False, r"getattr\(torch.nn.modules.linear.Linear, '__init__'\)"),
    ("module", "forward", True, r"getattr\(torch.nn.modules.linear.Linear, 'forward'\)"),  # with a default
    ("dict", "forward", False, r"getattr\(a dict, 'forward'\)"),
    ("os", "system", False, r"refused to unpickle 'builtins.getattr'|refused to unpickle 'os"),
])
def test_other_uses_of_getattr_are_refused(sandbox: Sandbox, tmp_path: Path, target: str, name: str, default: bool,
                                           pattern: str) -> None:
    obj = {"module": nn.Linear(2, 2), "dict": {"a": 1}, "os": os}[target]
    call = Call(getattr, obj, name, None) if default else Call(getattr, obj, name)
    path = tmp_path / "ckpt.pth"
    try:
        torch.save({"predictor": call}, path)
    except (TypeError, pickle.PicklingError):  # a module object cannot be pickled: spell it by hand
        path = torch_zip(tmp_path / "ckpt.pth", b"\x80\x02cbuiltins\ngetattr\ncos\nsystem\nX\x06\x00\x00\x00system"
                                                b"\x86R.")
    expect_error(sandbox.run("pickle", path), "UnsafeCheckpointError", pattern)


def test_encoder_key_gets_a_hint(sandbox: Sandbox, tmp_path: Path) -> None:
    """DINO-WM trained with train_encoder=True also pickles its DINOv2 encoder: the refusal says what to do."""
    with fake_classes("models.dino.DinoV2Encoder") as cls:
        torch.save({"encoder": fake_module(cls["models.dino.DinoV2Encoder"])}, tmp_path / "ckpt.pth")
    result = sandbox.run("pickle", tmp_path / "ckpt.pth")
    expect_error(result, "UnsafeCheckpointError", r"'models.dino.DinoV2Encoder'.*under the key 'encoder' when "
                                                  r"trained with train_encoder=True.*del ckpt\['encoder'\]")


# ----- containers: legacy formats, zips torch.save would not write --------------------------------------------------

def test_legacy_bare_pickle(sandbox: Sandbox, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "ckpt.pth"
    path.write_bytes(pickle.dumps(Call(os.system, f"touch {marker}"), protocol=2))
    result = sandbox.run("pickle", path, marker=marker)
    expect_error(result, "CheckpointError", r"legacy serialization format.*Re-save it")
    assert not result["marker_exists"]


def test_legacy_tar_with_a_symlink(sandbox: Sandbox, tmp_path: Path) -> None:
    """torch < 0.4's tar format; its reader would follow the symlinked member. Refused before it is opened."""
    (tmp_path / "secret").write_text("secret")
    (tmp_path / "storages").symlink_to(tmp_path / "secret")
    with tarfile.open(tmp_path / "ckpt.pth", "w") as archive:
        archive.add(tmp_path / "storages", arcname="storages")
    expect_error(sandbox.run("tensors", tmp_path / "ckpt.pth"), "CheckpointError", r"legacy serialization format")


@pytest.mark.parametrize("kind, pattern", [
    ("deflated", r"zip member 'archive/data.pkl' is compressed"),
    ("traversal", r"zip member '../../etc/passwd' has a path outside the archive's folder"),
    ("symlink", r"zip member 'archive/data/0' is a symbolic link"),
    ("no pickle", r"does not hold one folder with a data.pkl"),
    ("not a zip", r"is not a torch checkpoint"),
])
def test_zips_torch_save_would_not_write(sandbox: Sandbox, tmp_path: Path, kind: str, pattern: str) -> None:
    path = tmp_path / "ckpt.pth"
    pkl = pickle.dumps({"a": 1}, protocol=2)
    if kind == "deflated":
        torch_zip(path, pkl, compression=zipfile.ZIP_DEFLATED)
    elif kind == "traversal":
        torch_zip(path, pkl)
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr("../../etc/passwd", b"x")
    elif kind == "symlink":
        torch_zip(path, pkl)
        info = zipfile.ZipInfo("archive/data/0")
        info.external_attr = (0o120777 << 16)
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr(info, "/etc/passwd")
    elif kind == "no pickle":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/version", b"3\n")
    else:
        path.write_bytes(b"GARBAGE" * 100)
    expect_error(sandbox.run("pickle", path), "CheckpointError", pattern)


# ----- hydra.yaml -------------------------------------------------------------------------------------------------

def billion_laughs() -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\nenv: {name: *a9}\n"


@pytest.mark.parametrize("text, pattern", [
    (billion_laughs(), r"its aliases expand to more than 100000 nodes"),
    ("env: &a [*a]\n", r"an alias refers to a node containing it"),
    ("env: " + "[" * 5000 + "]" * 5000 + "\n", r"it nests more than 32 levels"),
    ("env: {name: pusht}\n" + "# pad\n" * 300_000, r"bytes; a DINO-WM training config is a few KB"),
    ("env: [unclosed\n", r"is not valid YAML"),
])
def test_hostile_hydra_yaml(sandbox: Sandbox, folder: Path, released: dict, text: str, pattern: str) -> None:
    (folder / "hydra.yaml").write_text(text)
    result = sandbox.run("world_model", folder, dinov2_weights=released["dinov2_path"])
    expect_error(result, "CheckpointError", r"hydra.yaml .*" + pattern)


@pytest.mark.parametrize("field, value, pattern", [
    ("frameskip", 0, r"hydra.yaml: frameskip must be an int in 1..64, got 0"),
    ("frameskip", [5], r"hydra.yaml: frameskip must be an int in 1..64, got \[5\]"),
    ("frameskip", "5", r"hydra.yaml: frameskip must be an int in 1..64, got '5'"),
    ("num_hist", 10**9, r"hydra.yaml: num_hist must be an int in 1..64, got 1000000000"),
    ("img_size", 6.5, r"hydra.yaml: img_size must be an int in 16..4096, got 6.5"),
    ("env", {"name": ["pusht"]}, r"hydra.yaml env.name is a list; wmq supports released models for envs"),
    ("predictor", {"depth": 2, "heads": 2, "mlp_dim": 32, "dropout": "0.1"},
     r"hydra.yaml: predictor.dropout must be a number in \[0"),
])
def test_hydra_values_are_checked(sandbox: Sandbox, folder: Path, released: dict, field: str, value,
                                  pattern: str) -> None:
    set_hydra(folder, **{field: value})
    result = sandbox.run("world_model", folder, dinov2_weights=released["dinov2_path"])
    expect_error(result, "CheckpointError", pattern)


# ----- wmq's own files: config.json, model.safetensors, calibration caches --------------------------------------------

@pytest.fixture
def wmq_folder(tiny_model, tmp_path: Path) -> Path:
    return save_world_model(tiny_model, tmp_path / "m")


@pytest.mark.parametrize("damage, pattern", [
    (lambda f: (f / "config.json").write_text(json.dumps({**json.loads((f / "config.json").read_text()),
                                                          "config": {k: v for k, v in json.loads(
                                                              (f / "config.json").read_text())["config"].items()
                                                              if k != "frameskip"}})),
     r"config.json config has no \['frameskip'\]; a saved checkpoint records every WorldModelConfig field"),
    (lambda f: (f / "config.json").write_text(json.dumps({k: v for k, v in json.loads(
        (f / "config.json").read_text()).items() if k != "dtype"})),
     r"config.json has no field \['dtype'\]"),
    (lambda f: (f / "config.json").write_text((f / "config.json").read_text().replace('"predictor_depth": 2',
                                                                                      '"predictor_depth": 10000000')),
     r"describes 10000003 blocks but .*model.safetensors holds only \d+ tensors"),
    (lambda f: (f / "config.json").write_text("[" * 100_000 + "]" * 100_000),
     r"config.json is not valid JSON \(RecursionError"),
    (lambda f: (f / "config.json").write_text(" " * (2 << 20)), r"config.json is \d+ bytes"),
    (lambda f: (f / "model.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{" * 100),
     r"model.safetensors could not be read"),
])
def test_hostile_wmq_folders(sandbox: Sandbox, wmq_folder: Path, damage, pattern: str) -> None:
    damage(wmq_folder)
    expect_error(sandbox.run("world_model", wmq_folder), "CheckpointError", pattern)


def test_hostile_calibration_files(sandbox: Sandbox, tmp_path: Path) -> None:
    from wmqlib.quant.calibration import FORMAT

    (tmp_path / "garbage.safetensors").write_bytes(b"\xff" * 64)
    expect_error(sandbox.run("calibration", tmp_path / "garbage.safetensors"), "CheckpointError",
                 r"calibration file .*garbage.safetensors could not be read")
    meta = {"format": FORMAT, "config": json.dumps({"max_tokens": 4, "max_sequences": 2, "seed": 0}),
            "linears": "[]", "units": json.dumps({"unit": 10**9})}
    save_file({"generator_state": torch.Generator().get_state()}, str(tmp_path / "units.safetensors"), metadata=meta)
    expect_error(sandbox.run("calibration", tmp_path / "units.safetensors"), "CheckpointError",
                 r"units.safetensors is damaged or was edited .*claims 1000000000 sequences")
    save_file({"generator_state": torch.Generator().get_state()}, str(tmp_path / "cfg.safetensors"),
              metadata={**meta, "config": "{not json"})
    expect_error(sandbox.run("calibration", tmp_path / "cfg.safetensors"), "CheckpointError",
                 r"cfg.safetensors is damaged or was edited \(JSONDecodeError")


# ----- convert: exit 2 with the message, never a traceback -----------------------------------------------------------

def test_convert_exits_2_on_a_hostile_checkpoint(sandbox: Sandbox, folder: Path, released: dict,
                                                 tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    torch.save({"predictor": Call(os.system, f"touch {marker}")}, folder / "checkpoints" / "model_latest.pth")
    result = sandbox.run("convert", [str(folder), str(tmp_path / "out"), "--dinov2-weights",
                                  str(released["dinov2_path"])], marker=marker)
    assert result["outcome"] == "ok" and result["rc"] == 2 and not result["marker_exists"]
    assert "error: refused to unpickle 'posix.system'" in result["stderr"] and "Traceback" not in result["stderr"]


@pytest.mark.parametrize("content, pattern", [
    ("{not json", r"error: normalization file .*stats.json is not valid JSON"),
    ('["a list"]', r"error: normalization file .*stats.json must hold a JSON object"),
    ('{"action_mean": [1.0, 2.0, 3.0]}', r"error: normalization \(read from .*stats.json\) action_mean must have "
                                          r"shape \(2,\), got \(3,\)"),
    ('{"action_mean": ["a", "b"]}', r"error: normalization \(read from .*stats.json\) action_mean must be a list"),
    ('{"action_sd": [1.0, 1.0]}', r"error: normalization \(read from .*stats.json\) has unknown keys \['action_sd'\]"),
])
def test_convert_names_a_bad_normalization_file(sandbox: Sandbox, released: dict, tmp_path: Path, content: str,
                                                pattern: str) -> None:
    (tmp_path / "stats.json").write_text(content)
    result = sandbox.run("convert", [str(released["folder"]), str(tmp_path / "out"), "--dinov2-weights",
                                  str(released["dinov2_path"]), "--normalization", str(tmp_path / "stats.json")])
    assert result["outcome"] == "ok" and result["rc"] == 2, result
    assert re.search(pattern, result["stderr"]) and "Traceback" not in result["stderr"], result["stderr"]


def test_convert_refuses_nonfinite_weights(sandbox: Sandbox, tiny_model, tmp_path: Path) -> None:
    with torch.no_grad():
        tiny_model.predictor.pos_embedding[0, 0, 0] = float("nan")
    with pytest.warns(UserWarning, match="hold NaN or inf"):
        src = save_world_model(tiny_model, tmp_path / "nan")
    result = sandbox.run("convert", [str(src), str(tmp_path / "out")])
    assert result["outcome"] == "ok" and result["rc"] == 2, result
    assert re.search(r"error: .*1 weight tensors hold NaN or inf values: predictor.pos_embedding \(1\); refusing",
                     result["stderr"]), result["stderr"]
    assert not (tmp_path / "out").exists()

