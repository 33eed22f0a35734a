"""CUDA: device-agnostic rollout and loading, and released checkpoints saved on CUDA loading on the CPU.

Skipped where torch sees no CUDA device (tests/conftest.py).
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from wmqlib.models import WorldModel, load_world_model, save_world_model

pytestmark = pytest.mark.cuda


def test_rollout_on_cuda_matches_cpu(tiny_model: WorldModel) -> None:
    g = torch.Generator().manual_seed(0)
    visual = torch.rand(1, 1, 3, 16, 16, generator=g) * 2 - 1
    proprio, actions = torch.randn(1, 1, 4, generator=g), torch.randn(6, 5, 4, generator=g)
    with torch.no_grad():
        ref = tiny_model.rollout(tiny_model.encode_obs(visual, proprio), actions)
        gpu = copy.deepcopy(tiny_model).to("cuda")
        out = gpu.rollout(gpu.encode_obs(visual.to("cuda"), proprio.to("cuda")), actions.to("cuda"))
    assert out["visual"].device.type == "cuda"
    torch.testing.assert_close(out["visual"].cpu(), ref["visual"], atol=5e-3, rtol=5e-3)  # TF32 convolutions
    masks = gpu.predictor.transformer.layers[0][0]._masks
    assert any(device.type == "cuda" for _, device in masks)  # built on the input's device
    assert all(mask.device == device for (_, device), mask in masks.items())
    half = gpu.to(torch.bfloat16)
    with torch.no_grad():
        out = half.rollout(half.encode_obs(visual.to("cuda"), proprio.to("cuda")), actions.to("cuda"))
    assert out["visual"].dtype == torch.bfloat16 and half.proprio_std.dtype == torch.float32
    assert half.proprio_std.is_cuda
    torch.testing.assert_close(out["visual"].float().cpu(), ref["visual"], atol=0.1, rtol=0.05)


def test_load_onto_cuda(tiny_model: WorldModel, tmp_path: Path) -> None:
    model = load_world_model(save_world_model(tiny_model, tmp_path / "m"), device="cuda")
    assert model.device.type == "cuda" and model.action_mean.is_cuda
    visual, proprio = model.prepare_obs(torch.zeros(1, 1, 16, 16, 3, dtype=torch.uint8), torch.zeros(1, 1, 4))
    assert visual.is_cuda and proprio.is_cuda
    assert model.actions_to_env(torch.zeros(1, 2, 4, device="cuda")).is_cuda


@pytest.mark.parametrize("real_accelerate", [False, True])
def test_cuda_saved_release_loads_on_cpu(released_builder, tmp_path: Path, real_accelerate: bool) -> None:
    """DINO-WM saved on CUDA (whole modules, CUDA masks, optimizer state): load on the CPU without a GPU copy."""
    if real_accelerate and importlib.util.find_spec("accelerate") is None:
        pytest.skip("accelerate is not installed")
    released = released_builder(tmp_path, device="cuda", real_accelerate=real_accelerate)
    model = load_world_model(released["folder"], device="cpu", dinov2_weights=released["dinov2_path"])
    assert "models" not in sys.modules and not any(str(tmp_path) in str(getattr(m, "__file__", None))
                                                   for m in sys.modules.values())
    assert all(t.device.type == "cpu" for t in model.state_dict().values())
    with torch.no_grad():
        got = model.predictor(released["inputs"]["tokens"])
    torch.testing.assert_close(got, released["expected"]["predictor"], atol=1e-4, rtol=1e-4)
    on_gpu = load_world_model(released["folder"], device="cuda", dinov2_weights=released["dinov2_path"])
    assert on_gpu.device.type == "cuda"
