"""Planner-level parity of the fast paths: SDPA vs DINO-WM's explicit attention, and ``WorldModel.compile_rollout``
(torch.compile) - each against the eager reference, for FP and for W8A8 with per-token and per-tensor activations.

The check is what planning sees: CEM (fixed per-episode generators) on a tiny random world model whose predictor
window holds three frames (so the frame-causal mask is used). Plans and per-iteration losses must agree within 1e-5
(float32). Tests that compile are marked ``slow`` and ``compile`` (inductor's C++ needs about two minutes on a 2-core
CPU): ``make test`` leaves them out, ``make test-compile`` runs them, and CI runs both.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import pytest
import torch
from torch._dynamo.utils import counters

import wmqlib.models.predictor as predictor
import wmqlib.models.world_model as world_model
from wmqlib.models import WorldModel
from wmqlib.plan import CEMConfig, Objective, cem, make_generators
from wmqlib.quant import RTN, PerChannel, PerTensor, PerToken, capture_calibration, quantize

CEM = CEMConfig(horizon=4, samples=12, topk=3, opt_steps=3)
EPISODES = 2
SETTINGS = ["FP", "W8A8 per-token", "W8A8 per-tensor"]


@contextlib.contextmanager
def attention(impl: str) -> Iterator[None]:
    """Set the predictor's attention implementation, restoring it afterwards."""
    saved = predictor.ATTENTION
    try:
        predictor.ATTENTION = impl
        yield
    finally:
        predictor.ATTENTION = saved


def start_and_goal(model: WorldModel) -> tuple[dict, dict]:
    """Encoded random observations of EPISODES episodes: (E, 1, P, Dv) visual and (E, 1, Ep) proprio latents."""
    g = torch.Generator().manual_seed(7)
    c = model.config

    def encoded() -> dict:
        visual = torch.rand(EPISODES, 1, 3, c.img_size, c.img_size, generator=g) * 2 - 1
        proprio = torch.randn(EPISODES, 1, c.proprio_dim, generator=g)
        return model.encode_obs(visual.to(model.device), proprio.to(model.device))
    with torch.no_grad():
        return encoded(), encoded()


@pytest.fixture(scope="module")
def models(tiny_planning_model) -> dict[str, WorldModel]:
    """FP and two W8A8 copies of the predictor of one tiny model (static ranges calibrated on FP rollouts)."""
    fp = tiny_planning_model()
    start, goal = start_and_goal(fp)
    actions = torch.randn(EPISODES, 6, CEM.horizon, fp.action_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), capture_calibration(fp, max_tokens=64, max_sequences=0) as calib:
        Objective(fp, start, goal)(actions)
    token = RTN(8, PerChannel(), a_bits=8, a_granularity=PerToken())
    tensor = RTN(8, PerChannel(), a_bits=8, a_granularity=PerTensor())
    return {"FP": fp, "W8A8 per-token": quantize(fp, token, scope="predictor")[0],
            "W8A8 per-tensor": quantize(fp, tensor, calib, scope="predictor")[0]}


def plan(model: WorldModel) -> tuple[torch.Tensor, torch.Tensor]:
    """CEM plans (iters, E, H, Da) and losses (iters, E) for the fixed episodes and generators."""
    start, goal = start_and_goal(model)
    with torch.no_grad():
        result = cem(Objective(model, start, goal), CEM, make_generators([11, 12], model.device), model.action_dim)
    return result.plans.cpu(), result.losses.cpu()


def assert_same_plan(got: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("setting", SETTINGS)
def test_sdpa_plans_like_the_explicit_attention_of_dino_wm(models, setting):
    with attention("math"):
        ref = plan(models[setting])
    with attention("sdpa"):
        got = plan(models[setting])
    assert_same_plan(got, ref)
    assert bool(torch.isfinite(ref[1]).all()) and ref[1].std() > 0  # a real search, not a degenerate one


@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.parametrize("setting", SETTINGS)
def test_compiled_rollout_plans_like_eager(models, setting):
    model = models[setting]
    with attention("math"):
        ref = plan(model)
    graphs = counters["stats"]["unique_graphs"]
    try:
        with attention("sdpa"), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = plan(model.compile_rollout())
    finally:
        model.compile_rollout(False)
    fallback = [str(w.message) for w in caught if "torch.compile is unavailable" in str(w.message)]
    if fallback:
        pytest.skip(fallback[0])
    assert counters["stats"]["unique_graphs"] > graphs  # this model's rollout really ran compiled code
    assert_same_plan(got, ref)


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.parametrize("setting", SETTINGS)
def test_fast_and_compiled_paths_plan_like_eager_on_cuda(models, setting):
    model = models[setting].to("cuda")
    try:
        with attention("math"):
            ref = plan(model)
        with attention("sdpa"):
            assert_same_plan(plan(model), ref)  # SDPA kernels
            got = plan(model.compile_rollout())  # inductor / Triton
    finally:
        model.compile_rollout(False).to("cpu")
    assert_same_plan(got, ref)


def test_failed_compilation_warns_once_and_runs_eager(models, monkeypatch):
    model = models["FP"]

    def broken(fn, **options):
        def call(*args):
            raise RuntimeError("no working C++ compiler\nsecond line of the compiler's complaint")
        return call
    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(world_model, "_COMPILED", {})  # this process's real compilations are not the broken one
    ref = plan(model)
    try:
        with pytest.warns(RuntimeWarning, match=r"torch.compile is unavailable here \(RuntimeError: no working C\+\+ "
                                                r"compiler\); the rollout runs eager"):
            got = plan(model.compile_rollout(mode="max-autotune"))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            again = plan(model)  # the failure is remembered: no second warning, still eager
    finally:
        model.compile_rollout(False)
    assert torch.equal(got[0], ref[0]) and torch.equal(again[1], ref[1])


def test_compile_rollout_checks_its_arguments_and_switches_back(models):
    model = models["FP"]
    assert model.rollout_compile is None
    with pytest.raises(TypeError, match="enabled must be True or False"):
        model.compile_rollout("yes")
    with pytest.raises(TypeError, match="mode must be a torch.compile mode string"):
        model.compile_rollout(mode=3)
    with pytest.raises(TypeError, match="dynamic must be True, False or None"):
        model.compile_rollout(dynamic="auto")
    assert model.compile_rollout(mode="reduce-overhead").rollout_compile == {"mode": "reduce-overhead", "dynamic": None}
    assert model.compile_rollout(False).rollout_compile is None
    assert "rollout_compile" not in str(model.state_dict().keys())
