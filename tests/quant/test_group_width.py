"""A group at least as wide as a row is per-channel: same numbers, and described and reported as per-channel."""

from __future__ import annotations

import torch

from wmqlib.quant import RTN, PerChannel, PerGroup, PerTensor, QuantSpec, fake_quantize, quantize
from wmqlib.quant.report import describe
from wmqlib.quant.spec import effective_granularity, scale_shape


def test_effective_granularity() -> None:
    assert effective_granularity((8, 40), PerGroup(40)) == PerChannel()  # exactly one group per row
    assert effective_granularity((8, 40), PerGroup(512)) == PerChannel()
    assert effective_granularity((8, 4, 10), PerGroup(40)) == PerChannel()  # rows are the flattened trailing dims
    assert effective_granularity((8, 40), PerGroup(39)) == PerGroup(39)  # 39 + 1: two groups
    assert effective_granularity((8, 40), PerTensor()) == PerTensor()
    assert scale_shape((8, 40), PerGroup(512)) == scale_shape((8, 40), PerChannel()) == (8, 1)


def test_wide_groups_quantize_like_per_channel() -> None:
    x = torch.randn(8, 40, generator=torch.Generator().manual_seed(0))
    for symmetric in (False, True):
        assert torch.equal(fake_quantize(x, QuantSpec(3, PerGroup(64), symmetric)),
                           fake_quantize(x, QuantSpec(3, PerChannel(), symmetric)))


def test_describe_and_report_say_per_channel(toy_model) -> None:
    assert describe(PerGroup(512)) == "per-group(512)"  # without a shape: the recipe as written
    assert describe(PerGroup(512), (8, 40)) == "per-channel" and describe(PerGroup(16), (8, 40)) == "per-group(16)"
    widest = max(m.in_features for m in toy_model.modules() if isinstance(m, torch.nn.Linear))
    _, wide = quantize(toy_model, RTN(4, PerGroup(widest)))
    _, channel = quantize(toy_model, RTN(4, PerChannel()))
    assert wide.w_granularities == ("per-channel",) and (wide.table.w_granularity == "per-channel").all()
    assert (wide.table.n_groups == wide.table.out_features).all()
    assert wide.effective_bits == channel.effective_bits
    assert wide.table.weight_mse.tolist() == channel.table.weight_mse.tolist()
    _, mixed = quantize(toy_model, RTN(4, PerGroup(40)))  # rows of 40 columns are per-channel, wider ones grouped
    widths = set(mixed.table.in_features)
    assert 40 in widths and max(widths) > 40
    assert mixed.w_granularities == ("per-channel", "per-group(40)")
    assert (mixed.table.w_granularity == mixed.table.in_features.map(
        lambda i: "per-channel" if i <= 40 else "per-group(40)")).all()
