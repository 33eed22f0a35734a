"""The report: hand-derived storage costs and weight errors."""

from __future__ import annotations

import math

import pytest
import torch

from wmqlib.quant import RTN, PerChannel, PerGroup, PerTensor, QuantLinear, QuantSpec, quantize, sqnr_db
from wmqlib.quant.report import describe, weight_storage_bits


@pytest.mark.parametrize("spec,bits,groups", [
    (QuantSpec(4, PerGroup(16)), 240 * 4 + 18 * (16 + 4), 18),            # (6, 40): 3 groups per row, one ragged
    (QuantSpec(8, PerChannel(), symmetric=True), 240 * 8 + 6 * 16, 6),    # symmetric: no zero point
    (QuantSpec(3, PerTensor()), 240 * 3 + 16 + 3, 1),
    (QuantSpec(16), 240 * 16, 0),                                          # pass-through: FP16 storage
])
def test_storage_bits_by_hand(spec, bits, groups):
    assert weight_storage_bits((6, 40), spec) == (bits, groups)


def test_report_rows_and_totals(toy_model):
    qmodel, report = quantize(toy_model, RTN(4, PerGroup(16), w_symmetric=False))
    table = report.table
    assert len(table) == 16 and list(table.columns[:5]) == ["module", "method", "w_bits", "w_granularity", "w_symmetric"]
    row = table.set_index("module").loc["predictor.transformer.layers.0.0.to_qkv"]
    assert (row.out_features, row.in_features, row.n_groups) == (96, 40, 96 * 3)
    assert row.weight_bytes == (96 * 40 * 4 + 96 * 3 * 20) / 8 and row.fp_weight_bytes == 96 * 40 * 4
    w = toy_model.get_submodule("predictor.transformer.layers.0.0.to_qkv").weight
    w_hat = qmodel.get_submodule("predictor.transformer.layers.0.0.to_qkv").weight
    assert row.weight_mse == pytest.approx((w - w_hat).pow(2).mean().item())
    assert row.sqnr_db == pytest.approx(sqnr_db(w, w_hat))
    n = table.n_weights.sum()
    assert report.weight_bytes == pytest.approx(table.weight_bytes.sum())
    assert report.effective_bits == pytest.approx(8 * table.weight_bytes.sum() / n)
    assert 4 < report.effective_bits < 6 and report.fp_weight_bytes == 4 * n
    assert (table.a_bits == 16).all() and (table.a_granularity == "-").all()


def test_sqnr_and_descriptions():
    x = torch.tensor([3.0, 4.0])
    assert sqnr_db(x, x) == math.inf
    assert sqnr_db(x, x * 0.9) == pytest.approx(20.0)  # noise is 1% of the signal power
    assert [describe(g) for g in (PerTensor(), PerChannel(), PerGroup(128), None)] == [
        "per-tensor", "per-channel", "per-group(128)", "-"]


def test_quantized_layers_are_quantlinear(toy_model):
    qmodel, _ = quantize(toy_model, RTN(8), scope="predictor")
    kinds = {type(qmodel.get_submodule(n)).__name__ for n in ("predictor.transformer.layers.1.1.net.4",
                                                                 "encoder.blocks.0.mlp.fc2")}
    assert kinds == {"QuantLinear", "Linear"}
    assert isinstance(qmodel.predictor.transformer.layers[0][0].to_out[0], QuantLinear)
