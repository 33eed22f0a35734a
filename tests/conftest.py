"""Project-wide pytest hooks (tests marked ``cuda`` are skipped where torch sees no CUDA device), the session's
tiny trained world models (DINO-WM and RSSM), the tiny random ones (DINO-WM and RSSM) the planning and quantization
tests share, and the stale temporary file a killed writer leaves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

from wmqlib.models import RSSM, RSSMConfig, WorldModel, WorldModelConfig
from wmqlib.recipes import PRESETS
from wmqlib.train import train

# A tiny random world model whose predictor window holds three frames (so the frame-causal mask is used); widths
# 16 / 32 in the encoder and 24 = 12 * 2 (a Paley I Hadamard order) / 16 / 32 in the predictor.
TINY_PLANNING = dict(
    env="pusht", proprio_dim=4, num_hist=3, frameskip=2, env_action_dim=2,
    img_size=16, patch_size=4, grid_size=2, encoder_dim=16, encoder_depth=1, encoder_heads=2, encoder_mlp_dim=32,
    encoder_pos_grid=2, predictor_depth=2, predictor_heads=2, predictor_dim_head=8, predictor_mlp_dim=32,
    predictor_dropout=0.0, proprio_emb_dim=3, action_emb_dim=5,
    decoder_channel=4, decoder_res_blocks=1, decoder_res_channel=4, decoder_n_embed=8,
)

# A tiny random RSSM for the Wall: 16 px images, two convolutions (4 and 8 channels, 4 x 4 maps), a 12-wide
# embedding, state 8 + 4, MLPs 16 wide (16 and 12 are Hadamard orders, so rotations use Hadamard matrices there).
TINY_RSSM = dict(env="wall", proprio_dim=2, frameskip=5, img_size=16, encoder_channels=4, encoder_layers=2,
                 embed_dim=12, proprio_emb_dim=3, deter_dim=8, stoch_dim=4, hidden_dim=16)


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


@pytest.fixture(scope="session")
def tiny_rssm_trained(tmp_path_factory) -> str:
    """A tiny Wall RSSM trained end to end by wmqlib.train (``tiny-rssm``, a few seconds), with its card."""
    root = tmp_path_factory.mktemp("tiny-rssm")
    torch.set_num_threads(1)
    train(PRESETS["tiny-rssm"], root / "tiny-rssm", progress=False, evaluate_fp=False, data_dir=root / "data")
    return str(root / "tiny-rssm")


@pytest.fixture(scope="session")
def tiny_planning_model():
    """Builds a fresh ``TINY_PLANNING`` world model in eval mode (random weights, seed 5) at every call."""
    return lambda: WorldModel(WorldModelConfig(**TINY_PLANNING), seed=5).eval()


@pytest.fixture(scope="session")
def tiny_rssm():
    """Builds a fresh ``TINY_RSSM`` model in eval mode (random weights, seed ``seed``, default 7) at every call."""
    return lambda seed=7: RSSM(RSSMConfig(**TINY_RSSM), seed=seed).eval()


@pytest.fixture()
def calib_dir(tmp_path):
    """A calibration folder of the test's own."""
    return tmp_path / "calibration"


@pytest.fixture()
def caches(calib_dir):
    """Study caches writing calibrations into ``calib_dir`` (never the repository's)."""
    from wmqlib.caches import Caches

    return Caches(calib_dir)


@pytest.fixture()
def stale_tmp() -> Callable[[Path], Path]:
    """Writes, for a target path, the temporary file an atomic write of it leaves when its process is killed:
    ``<name>.<pid>@<host>.tmp`` of this host and of a process that has exited. Returns that file's path."""
    from wmqlib.validate import HOST

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)

    def write(target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        leftover = target.with_name(f"{target.name}.{int(done.stdout)}@{HOST}.tmp")
        leftover.write_bytes(b"half a file")
        return leftover

    return write
