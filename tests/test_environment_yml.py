"""Tests for environment.yml: no conda exists on the CI machines, so it is checked structurally against pyproject.

The conda environment must carry exactly pyproject's runtime and dev dependencies (under conda-forge names), plus
python and pip, and install the package itself editable through its pip section.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# PyPI name -> conda-forge name, where they differ.
CONDA_NAMES = {"torch": "pytorch"}
# conda packages that are not pyproject dependencies: the interpreter and the installer of the pip section.
CONDA_ONLY = {"python", "pip"}


def normalize(name: str) -> str:
    """PEP 503 name normalization (conda-forge names follow it too): lower case, runs of -_. become -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def conda_name(spec: str) -> str:
    """The package name of a conda match spec such as ``python>=3.10`` or ``numpy 1.26.*``."""
    return normalize(re.split(r"[\s<>=!~]", spec, maxsplit=1)[0])


def load_environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def load_pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_conda_name_and_normalize():
    assert conda_name("python>=3.10") == "python"
    assert conda_name("numpy 1.26.*") == "numpy"
    assert conda_name("Typing_Extensions") == "typing-extensions"


def test_environment_yml_structure():
    env = load_environment()
    assert env["name"] == "wmq"
    assert env["channels"] == ["conda-forge"]
    specs = [d for d in env["dependencies"] if isinstance(d, str)]
    sections = [d for d in env["dependencies"] if not isinstance(d, str)]
    assert sections == [{"pip": ["-e ."]}], "one pip section that installs the package editable"
    names = [conda_name(s) for s in specs]
    assert len(names) == len(set(names)), f"duplicate packages in environment.yml: {names}"
    assert "pip" in names, "the pip section needs pip itself"


def test_environment_yml_python_matches_requires_python():
    specs = [d for d in load_environment()["dependencies"] if isinstance(d, str)]
    (python,) = [s for s in specs if conda_name(s) == "python"]
    assert python.removeprefix("python").strip() == load_pyproject()["requires-python"]


def test_environment_yml_carries_exactly_pyprojects_dependencies():
    project = load_pyproject()
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    wanted = {CONDA_NAMES.get(normalize(Requirement(r).name), normalize(Requirement(r).name)) for r in requirements}
    specs = [d for d in load_environment()["dependencies"] if isinstance(d, str)]
    present = {conda_name(s) for s in specs} - CONDA_ONLY
    assert not wanted - present, f"missing from environment.yml: {sorted(wanted - present)}"
    assert not present - wanted, f"in environment.yml but not in pyproject.toml: {sorted(present - wanted)}"
