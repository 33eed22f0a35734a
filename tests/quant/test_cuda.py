"""On CUDA, every method runs where the model lives and agrees with the CPU run (skipped without CUDA)."""

from __future__ import annotations

import copy

import pytest
import torch

from wmqlib.quant import (AWQ, GPTQ, OMSE, RTN, OmniQuant, PerGroup, PerTensor, PerToken, QuantLinear, SmoothQuant,
                          capture_calibration, quantize)

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

RECIPES = [
    RTN(4, PerGroup(16), a_bits=8, a_granularity=PerToken()),
    OMSE(4, PerGroup(16), clip_steps=11),
    AWQ(4, PerGroup(16)),
    SmoothQuant(8, a_bits=8, a_granularity=PerTensor()),
    OmniQuant(4, PerGroup(16), epochs=2),
    GPTQ(4, PerGroup(16), act_order=True),
]


def relative_mse(model, qmodel, x) -> float:
    with torch.no_grad():
        y = model(x).float()
        return ((qmodel(x).float() - y).pow(2).mean() / y.pow(2).mean()).item()


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: type(r).__name__)
def test_cuda_run_agrees_with_cpu(toy_model, calib_inputs, eval_inputs, recipe):
    device = torch.device("cuda")
    results = {}
    for dev in (torch.device("cpu"), device):
        model = copy.deepcopy(toy_model).to(dev)
        with torch.no_grad(), capture_calibration(model, max_tokens=256, max_sequences=8) as calib:
            model(calib_inputs.to(dev))
        qmodel, report = quantize(model, recipe, calib)
        assert all(p.device.type == dev.type for p in qmodel.parameters())
        assert all(m.weight.device.type == dev.type for m in qmodel.modules() if isinstance(m, QuantLinear))
        results[dev.type] = relative_mse(model, qmodel, eval_inputs.to(dev)), report.effective_bits
    (cpu_err, cpu_bits), (gpu_err, gpu_bits) = results["cpu"], results["cuda"]
    assert cpu_bits == gpu_bits
    assert abs(gpu_err - cpu_err) <= 0.25 * cpu_err + 1e-7, (cpu_err, gpu_err)


def test_cuda_gradient_and_bf16(toy_model, calib_inputs, eval_inputs):
    device = torch.device("cuda")
    model = copy.deepcopy(toy_model).to(device)
    with torch.no_grad(), capture_calibration(model) as calib:
        model(calib_inputs.to(device))
    qmodel, _ = quantize(model, SmoothQuant(4, a_bits=8, a_granularity=PerTensor()), calib)
    x = eval_inputs.to(device).requires_grad_()
    qmodel(x).pow(2).sum().backward()
    assert bool(torch.isfinite(x.grad).all()) and x.grad.abs().sum() > 0
    bf16 = copy.deepcopy(toy_model).to(device, torch.bfloat16)
    qbf16, _ = quantize(bf16, RTN(8, a_bits=8, a_granularity=PerToken()))
    assert relative_mse(bf16, qbf16, eval_inputs.to(device, torch.bfloat16)) < 0.05
