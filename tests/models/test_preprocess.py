"""Image, z-score and frameskip transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wmqlib.models.preprocess import frames_to_visual, stack_frameskip, unstack_frameskip, unzscore, zscore


def test_stack_frameskip_concatenates_consecutive_env_actions() -> None:
    env = torch.arange(12.0).reshape(1, 6, 2)  # env actions (0,1), (2,3), ..., (10,11)
    stacked = stack_frameskip(env, 3)
    assert torch.equal(stacked, torch.tensor([[[0.0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]]))
    assert torch.equal(unstack_frameskip(stacked, 3), env)


def test_frameskip_errors_name_the_sizes() -> None:
    with pytest.raises(ValueError, match="5 env steps is not a multiple of frameskip 2"):
        stack_frameskip(torch.zeros(5, 2), 2)
    with pytest.raises(ValueError, match="action width 5 is not a multiple of frameskip 2"):
        unstack_frameskip(torch.zeros(1, 5), 2)


def test_zscore_round_trip() -> None:
    mean, std = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 4.0])
    x = torch.tensor([[2.0, 2.0]])
    assert torch.equal(zscore(x, mean, std), torch.tensor([[2.0, 1.0]]))
    assert torch.equal(unzscore(zscore(x, mean, std), mean, std), x)


def test_frames_to_visual_maps_uint8_to_unit_range() -> None:
    frames = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    frames[1] = 255
    visual = frames_to_visual(frames, 4)
    assert visual.shape == (2, 3, 4, 4) and visual.dtype == torch.float32
    assert (visual[0] == -1).all() and (visual[1] == 1).all()
    resized = frames_to_visual(frames, 8, dtype=torch.bfloat16)
    assert resized.shape == (2, 3, 8, 8) and resized.dtype == torch.bfloat16 and (resized[1] == 1).all()


def test_frames_to_visual_rejects_bad_frames() -> None:
    with pytest.raises(TypeError, match="frames must be uint8"):
        frames_to_visual(np.zeros((4, 4, 3), dtype=np.float32), 4)
    with pytest.raises(ValueError, match=r"square RGB .*got shape \(4, 5, 3\)"):
        frames_to_visual(np.zeros((4, 5, 3), dtype=np.uint8), 4)
