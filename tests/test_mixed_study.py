"""sensitivity_for on a shipped model (tiny sizes), and the candidates it scores: CEM's first iteration."""

from __future__ import annotations

import pytest
import torch

from wmqlib.mixed_study import initial_candidates, sensitivity_for
from wmqlib.plan import CEMConfig, cem, make_generators
from wmqlib.quant import RTN, PerGroup
from wmqlib.setting import Setting


def test_the_candidates_are_cems_first_iteration():
    cfg = CEMConfig(horizon=3, samples=6, topk=2, opt_steps=1, var_scale=0.7)
    seen = []

    def cost_fn(actions):  # records what CEM scores; (E, S, H, Da) -> (E, S)
        seen.append(actions.clone())
        return actions.pow(2).sum(dim=(2, 3))
    cem(cost_fn, cfg, make_generators([11, 12]), action_dim=4)
    ours = initial_candidates(make_generators([11, 12]), cfg, 4, n_sequences=6)
    assert ours.shape == (2, 6, 3, 4) and torch.equal(ours, seen[0])
    assert (ours[:, 0] == 0).all()
    with pytest.raises(ValueError, match="n_sequences must be an int >= 2"):
        initial_candidates(make_generators([11]), cfg, 4, n_sequences=1)


def test_sensitivity_for_a_shipped_model(caches):
    setting = Setting("mini-wall", recipe=RTN(4, PerGroup(32)), n_calib=1, device="cpu",
                      planner=CEMConfig(samples=8, topk=2, opt_steps=1))
    layers = ["encoder.blocks.0.attn.qkv", "predictor.transformer.layers.2.1.net.4"]
    table = sensitivity_for(setting, bits=(2, 16), n_sequences=6, caches=caches, names=layers)
    assert list(table["name"]) == [layers[0]] * 2 + [layers[1]] * 2 and list(table["bits"]) == [2, 16, 2, 16]
    exact = table[table["bits"] == 16]
    assert (exact["sensitivity"] == 0).all() and (exact["shift"] == 0).all() and (exact["rank_corr"] == 1).all()
    # the encoder layer moves the objective too: start and goal are encoded by the quantized model
    assert (table[table["bits"] == 2]["sensitivity"] > 0).all()
    assert table[["checkpoint", "env", "method", "n_calib", "n_sequences"]].drop_duplicates().values.tolist() == [
        ["mini-wall", "wall", "RTN", 1, 6]]


def test_sensitivity_for_needs_a_method():
    with pytest.raises(ValueError, match="needs setting.recipe"):
        sensitivity_for(Setting("mini-wall", device="cpu"), bits=(2,), n_sequences=4)
