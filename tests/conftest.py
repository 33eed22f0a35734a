"""Project-wide pytest hooks (tests marked ``cuda`` are skipped where torch sees no CUDA device) and the session's
tiny trained world model."""

from __future__ import annotations

import pytest
import torch

from wmqlib.train import PRESETS, train


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.cuda`` tests without a CUDA device ."""
    cuda_items = [item for item in items if item.get_closest_marker("cuda")]
    if not cuda_items or torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; torch.cuda.is_available() is False")
    for item in cuda_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> str:
    """A tiny Wall world model trained end to end by wmqlib.train (a few seconds)."""
    out = tmp_path_factory.mktemp("tiny") / "tiny-wall"
    torch.set_num_threads(1)
    train(PRESETS["tiny"], out, progress=False, evaluate_fp=False)
    return str(out)


@pytest.fixture()
def calib_dir(tmp_path):
    """A calibration folder of the test's own."""
    return tmp_path / "calibration"


@pytest.fixture()
def caches(calib_dir):
    """Study caches writing calibrations into ``calib_dir`` (never the repository's)."""
    from wmqlib.caches import Caches

    return Caches(calib_dir)
