"""Sensitivity-driven mixed precision: allocations derived by hand, the budget as a property, the sensitivity of a
tiny world model's planning objective, and the errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from wmqlib.plan import Objective
from wmqlib.quant import RTN, PerChannel, quantize
from wmqlib.quant.mixed import COLUMNS, allocate_bits, average_bits, layer_sensitivity, mixed_overrides, spearman

from .conftest import rssm_inputs


def table_of(layers: dict[str, tuple[int, dict[int, float]]]) -> pd.DataFrame:
    """{name: (params, {bits: sensitivity})} -> a table shaped like layer_sensitivity's."""
    return pd.DataFrame([{"name": name, "params": params, "bits": b, "sensitivity": s}
                         for name, (params, curve) in layers.items() for b, s in curve.items()])


# ----- allocation, by hand ------------------------------------------------------------------------------------------

def test_the_ten_times_more_sensitive_layer_gets_the_bits():
    # Equal sizes P. From (2, 2): a 2->3 gains 5/P, a 2->4 4.5/P, b 2->3 0.5/P: a -> 3 (avg 2.5); then a 3->4 gains
    # 4/P, b 2->3 0.5/P: a -> 4 (avg 3 = budget); b's upgrade no longer fits.
    table = table_of({"a": (100, {2: 10.0, 3: 5.0, 4: 1.0}), "b": (100, {2: 1.0, 3: 0.5, 4: 0.1})})
    bits = allocate_bits(table, 3.0, choices=(2, 3, 4))
    assert bits == {"a": 4, "b": 2} and average_bits(bits, table) == 3.0
    assert allocate_bits(table, 3.5, choices=(2, 3, 4)) == {"a": 4, "b": 3}


def test_equal_sensitivity_spends_bits_on_the_smaller_layer():
    # Same drop 1.0 for both: per bit-weight the 100-weight layer gives 1/200, the 900-weight one 1/1800. Budget 2.2
    # leaves 0.2 * 1000 = 200 bit-weights: exactly the small layer's 2 -> 4.
    table = table_of({"big": (900, {2: 1.0, 4: 0.0}), "small": (100, {2: 1.0, 4: 0.0})})
    bits = allocate_bits(table, 2.2, choices=(2, 4))
    assert bits == {"big": 2, "small": 4} and average_bits(bits, table) == pytest.approx(2.2)


def test_equal_layers_split_a_budget_between_choices_in_model_order():
    # Equal sizes and curves: 3.5 average = one layer at 4, one at 3; the tie goes to the first layer.
    curve = {2: 4.0, 3: 2.0, 4: 1.0}
    table = table_of({"first": (10, curve), "second": (10, curve)})
    assert allocate_bits(table, 3.5, choices=(2, 3, 4)) == {"first": 4, "second": 3}


def test_a_budget_between_what_the_choices_reach():
    # Equal sizes n, choices (2, 4, 8), 8 unmeasured = 0; budget 3.5 leaves 4.5n bit-weights. Gains per bit-weight:
    # a 2->4 6/2n = 3/n (best; a 2->8 only 9/6n), then b 2->4 2/n (a 4->8 would cost 4n > 2.5n left); 0.5n left
    # fits nothing: (4, 4, 2), 10/3 average bits.
    table = table_of({"a": (7, {2: 9.0, 4: 3.0}), "b": (7, {2: 6.0, 4: 2.0}), "c": (7, {2: 3.0, 4: 1.0})})
    bits = allocate_bits(table, 3.5, choices=(2, 4, 8))
    assert bits == {"a": 4, "b": 4, "c": 2} and average_bits(bits, table) == pytest.approx(10 / 3)
    assert allocate_bits(table, 8.0, choices=(2, 4, 8)) == {"a": 8, "b": 8, "c": 8}
    assert allocate_bits(table, 2.0, choices=(2, 4, 8)) == {"a": 2, "b": 2, "c": 2}


def test_a_layer_that_breaks_the_model_is_fixed_first_at_the_cheapest_finite_width():
    # inf at 2 and 3 bits (NaN costs): any finite width is an infinite drop; the cheapest (4) is taken first.
    table = table_of({"ok": (10, {2: 1.0, 3: 0.5, 4: 0.2}), "nan": (10, {2: np.inf, 3: np.inf, 4: 0.3})})
    assert allocate_bits(table, 3.0, choices=(2, 3, 4, 8)) == {"ok": 2, "nan": 4}


def test_min_bits_floors_layers():
    table = table_of({"encoder.x": (10, {2: 0.0, 3: 0.0, 4: 0.0}), "predictor.y": (10, {2: 5.0, 3: 1.0, 4: 0.5})})
    assert allocate_bits(table, 3.0, choices=(2, 3, 4)) == {"encoder.x": 2, "predictor.y": 4}
    assert allocate_bits(table, 3.0, choices=(2, 3, 4), min_bits={"encoder": 3}) == {"encoder.x": 3, "predictor.y": 3}
    assert allocate_bits(table, 4.0, choices=(2, 3, 4), min_bits=4) == {"encoder.x": 4, "predictor.y": 4}


def test_the_allocation_is_not_monotone_in_the_budget():
    # Documents a property greedy lacks. big: 10 weights, gain 100 for 2 -> 4 (5 per bit-weight); small: 1 weight,
    # gain 1 (0.5). Budget 2.5 (5.5 bit-weights free): big's upgrade (20) does not fit, small's (2) does. Budget 3.9
    # (20.9 free): big takes 20, and small's 2 no longer fit - small gets FEWER bits under the larger budget.
    table = table_of({"big": (10, {2: 100.0, 4: 0.0}), "small": (1, {2: 1.0, 4: 0.0})})
    assert allocate_bits(table, 2.5, choices=(2, 4)) == {"big": 2, "small": 4}
    assert allocate_bits(table, 3.9, choices=(2, 4)) == {"big": 4, "small": 2}


# ----- allocation, properties over random tables --------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(25))
def test_the_budget_is_met_and_no_single_upgrade_still_fits(seed):
    rng = np.random.default_rng(seed)
    choices = (2, 3, 4, 8)
    n = int(rng.integers(1, 12))
    layers = {}
    for i in range(n):
        s2 = float(rng.exponential())
        s3, s4 = s2 * rng.uniform(0, 1), s2 * rng.uniform(0, 1) * rng.uniform(0, 1)  # not always monotone: noise
        layers[f"l{i}"] = (int(rng.integers(1, 2000)), {2: s2, 3: s3, 4: s4})
    table = table_of(layers)
    budget = float(rng.uniform(2, 8))
    bits = allocate_bits(table, budget, choices=choices)
    assert list(bits) == list(layers) and set(bits.values()) <= set(choices)
    assert average_bits(bits, table) <= budget + 1e-12
    params = {name: p for name, (p, _) in layers.items()}
    room = budget * sum(params.values()) - sum(params[k] * b for k, b in bits.items())
    assert all(params[k] * (c - b) > room for k, b in bits.items() for c in choices if c > b)


@pytest.mark.parametrize("seed", range(10))
def test_more_sensitive_layers_of_equal_size_never_get_fewer_bits(seed):
    # Curves c_l * f(b) with f convex (diminishing returns per bit) and equal sizes: at equal bits the larger c_l
    # always has the larger gain per bit-weight, so greedy never lets a less sensitive layer overtake it.
    rng = np.random.default_rng(100 + seed)
    f = {2: 1.0, 3: 0.5, 4: 0.25}  # and f(8) = 0: gains per bit 0.5, 0.25, 0.0625
    scale = rng.permutation(np.geomspace(0.1, 10.0, 8))
    table = table_of({f"l{i}": (50, {b: float(c * v) for b, v in f.items()}) for i, c in enumerate(scale)})
    bits = allocate_bits(table, float(rng.uniform(2, 8)), choices=(2, 3, 4, 8))
    order = np.argsort(scale)
    got = [bits[f"l{i}"] for i in order]
    assert got == sorted(got)


# ----- overrides and average bits -----------------------------------------------------------------------------------

def test_mixed_overrides_realise_the_allocation_exactly(tiny_planning_model):
    model = tiny_planning_model()
    names = ["predictor.transformer.layers.0.0.to_qkv", "encoder.blocks.0.mlp.fc2"]
    overrides = mixed_overrides({names[0]: 3, names[1]: 8}, lambda b: RTN(b, PerChannel()))
    assert list(overrides) == names and overrides[names[0]] == RTN(3) and overrides[names[1]] == RTN(8)
    _, report = quantize(model, RTN(16), overrides=overrides)
    by_name = report.table.set_index("module")["w_bits"]
    assert by_name[names[0]] == 3 and by_name[names[1]] == 8 and (by_name.drop(names) == 16).all()


def test_average_bits_weights_by_parameters():
    table = table_of({"a": (100, {2: 1.0}), "b": (300, {2: 1.0})})
    assert average_bits({"a": 8, "b": 4}, table) == (800 + 1200) / 400
    with pytest.raises(ValueError, match="absent from the table"):
        average_bits({"c": 4}, table)


# ----- errors -------------------------------------------------------------------------------------------------------

def test_bad_budgets_choices_and_tables_are_refused():
    table = table_of({"a": (10, {2: 1.0, 3: 0.5, 4: 0.2}), "b": (10, {2: 2.0, 3: 1.0, 4: 0.1})})
    with pytest.raises(ValueError, match=r"allocate_bits.budget must be a number in \[2, 8\], got 1.5"):
        allocate_bits(table, 1.5)
    with pytest.raises(ValueError, match=r"allocate_bits.budget must be a number in \[2, 4\], got 4.5"):
        allocate_bits(table, 4.5, choices=(2, 3, 4))
    with pytest.raises(ValueError, match="allocate_bits.choices must hold bit widths from"):
        allocate_bits(table, 4.0, choices=(2, 9))
    with pytest.raises(ValueError, match="distinct"):
        allocate_bits(table, 4.0, choices=(2, 2, 4))
    with pytest.raises(ValueError, match=r"lacks the sensitivity at bits \[5, 6\]"):
        allocate_bits(table, 4.0, choices=(2, 4, 5, 6, 8))
    with pytest.raises(ValueError, match="min_bits already needs 4.000 average bits"):
        allocate_bits(table, 3.0, choices=(2, 3, 4), min_bits=4)
    with pytest.raises(ValueError, match=r"allocate_bits.min_bits must be an int in 2..4"):
        allocate_bits(table, 3.0, choices=(2, 3, 4), min_bits=8)
    with pytest.raises(ValueError, match="min_bits key='decoder' matches none"):
        allocate_bits(table, 3.0, choices=(2, 3, 4), min_bits={"decoder": 3})
    with pytest.raises(ValueError, match="sensitivity must be >= 0"):
        allocate_bits(table.assign(sensitivity=np.nan), 3.0, choices=(2, 3, 4))
    with pytest.raises(ValueError, match="missing columns"):
        allocate_bits(table.drop(columns="params"), 3.0)
    with pytest.raises(ValueError, match=r"several rows for one \(name, bits\)"):
        allocate_bits(pd.concat([table, table]), 3.0, choices=(2, 3, 4))
    with pytest.raises(ValueError, match=r"make_recipe\(4\) must return a recipe with w_bits=4"):
        mixed_overrides({"a": 4}, lambda b: RTN(8))


# ----- sensitivity of a tiny world model's planning objective -------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_objective(tiny_planning_model):
    """(FP tiny model, objective_fn): 3 episodes x 16 random sequences; start and goal encoded by the model scored."""
    model = tiny_planning_model()
    g = torch.Generator().manual_seed(7)
    c = model.config
    obs = [(torch.rand(3, 1, 3, c.img_size, c.img_size, generator=g) * 2 - 1, torch.randn(3, 1, c.proprio_dim,
                                                                                          generator=g))
           for _ in range(2)]
    actions = torch.randn(3, 16, 4, model.action_dim, generator=g)

    def objective_fn(m):
        return Objective(m, m.encode_obs(*obs[0]), m.encode_obs(*obs[1]))(actions)
    return model, objective_fn


def test_sixteen_bits_changes_nothing(tiny_objective):
    model, fn = tiny_objective
    table = layer_sensitivity(model, fn, lambda b: RTN(b), bits=(16,))
    assert (table["sensitivity"] == 0.0).all() and (table["rank_corr"] == 1.0).all()


def test_two_bits_perturbs_every_layer_more_than_eight(tiny_objective):
    # Holds layer by layer on this model, not as a theorem: the symmetric 2-bit grid's step (max|w| / 1) is 127x the
    # 8-bit one's (max|w| / 127), and the objective responds smoothly to weight noise of these sizes. Every layer,
    # encoder ones included, matters at 2 bits because the objective encodes start and goal with the quantized model.
    model, fn = tiny_objective
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = layer_sensitivity(model, fn, lambda b: RTN(b, PerChannel()), bits=(2, 8))
    assert list(table.columns) == list(COLUMNS) and len(table) == 2 * 12
    wide = table.pivot(index="name", columns="bits", values="sensitivity")
    assert (wide[2] >= wide[8]).all() and (wide[2] > 0).all()
    corr = table.pivot(index="name", columns="bits", values="rank_corr")
    assert (corr[8] > 0.99).all()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the FP model is untouched
    first = table.iloc[0]
    assert (first["name"], first["part"], first["block"], first["role"], first["params"]) == (
        "encoder.blocks.0.attn.qkv", "encoder", 0, "qkv", 48 * 16)
    last = table.iloc[-1]
    assert (last["part"], last["block"], last["role"]) == ("predictor", 1, "fc2")


def test_a_change_shared_by_every_candidate_is_shift_not_sensitivity(tiny_planning_model):
    # J(m) = base + sum(W_L): quantizing L moves every candidate by the same d = sum(Q(W_L)) - sum(W_L), which CEM's
    # ranking ignores: sensitivity 0, shift d^2 / mean variance; other layers change nothing.
    model = tiny_planning_model()
    layer = "predictor.transformer.layers.0.1.net.1"
    base = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 2.0, 4.0]], dtype=torch.float64)

    def objective_fn(m):
        return base + m.get_submodule(layer).weight.double().sum()
    table = layer_sensitivity(model, objective_fn, lambda b: RTN(b), bits=(3,), names="predictor.transformer.layers.0")
    row = table.set_index("name").loc[layer]
    qmodel, _ = quantize(model, RTN(3), scope=[layer])
    d = (qmodel.get_submodule(layer).weight.double().sum() - model.get_submodule(layer).weight.double().sum()).item()
    variance = (1.25 + 1.5) / 2  # population variances of the two rows
    assert row["sensitivity"] == pytest.approx(0.0, abs=1e-12) and row["shift"] == pytest.approx(d * d / variance)
    assert row["rank_corr"] == 1.0 and d != 0
    others = table[table["name"] != layer]
    assert (others["sensitivity"] == 0).all() and (others["shift"] == 0).all()


def test_sensitivity_and_shift_add_up_to_the_mean_squared_change(tiny_objective):
    model, fn = tiny_objective
    layer = "predictor.transformer.layers.1.0.to_qkv"
    row = layer_sensitivity(model, fn, lambda b: RTN(b), bits=(2,), names=layer).iloc[0]
    with torch.no_grad():
        fp, q = fn(model).double(), fn(quantize(model, RTN(2), scope=[layer])[0]).double()
    plain = ((q - fp) ** 2).mean() / fp.var(dim=1, unbiased=False).mean()
    assert row["sensitivity"] + row["shift"] == pytest.approx(plain.item(), rel=1e-9)
    assert 0 < row["sensitivity"] < plain.item()


def test_sensitivity_is_deterministic_and_scoped(tiny_objective):
    model, fn = tiny_objective
    one = layer_sensitivity(model, fn, lambda b: RTN(b), bits=(3,), names="predictor.transformer.layers.1")
    two = layer_sensitivity(model, fn, lambda b: RTN(b), bits=(3,), names="predictor.transformer.layers.1")
    pd.testing.assert_frame_equal(one, two)
    assert len(one) == 4 and (one["block"] == 1).all()


def test_sensitivity_errors(tiny_objective):
    model, fn = tiny_objective
    with pytest.raises(ValueError, match=r"recipe_for_bits\(3\) must return a recipe with w_bits=3"):
        layer_sensitivity(model, fn, lambda b: RTN(4), bits=(3,))
    with pytest.raises(ValueError, match="constant over the sequences"):
        layer_sensitivity(model, lambda m: torch.ones(2, 5), lambda b: RTN(b), bits=(3,))
    with pytest.raises(ValueError, match=r"must return a tensor \(S,\) or \(E, S\)"):
        layer_sensitivity(model, lambda m: torch.ones(2, 2, 2), lambda b: RTN(b), bits=(3,))
    with pytest.raises(ValueError, match="names='decoder' matches none"):
        layer_sensitivity(model, fn, lambda b: RTN(b), bits=(3,), names="decoder")


def test_spearman_by_hand():
    fp = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    assert spearman(fp, fp) == 1.0 and spearman(fp, -fp) == -1.0
    assert spearman(fp, np.ones_like(fp)) == 0.0  # no ranking information
    # NaN ranks last, as CEM counts it +inf: [1, 2, nan, 4] ranks (1, 2, 4, 3) vs (1, 2, 3, 4): rho = 1 - 6*2/60
    assert spearman(fp[:1], np.array([[1.0, 2.0, np.nan, 4.0]])) == pytest.approx(0.8)


def test_rssm_layers_are_measured_by_part_and_floored_by_part(tiny_rssm):
    """On the RSSM the "encoder" part is the conv encoder and the posterior (its layout's scope), by name and in a
    floor of allocate_bits."""
    model = tiny_rssm()
    visual, proprio, actions = rssm_inputs(model, episodes=1, samples=6)

    def objective(m):
        with torch.no_grad():
            out = m.rollout(m.encode_obs(visual, proprio), actions)
        return (out["visual"][:, -1, 0] - out["visual"][:1, 0, 0]).pow(2).mean(-1)  # (S,)

    table = layer_sensitivity(model, objective, lambda b: RTN(b), bits=(2, 4), names=["encoder.fc", "posterior",
                                                                                      "cell"])
    parts = table.drop_duplicates("name").set_index("name")["part"].to_dict()
    assert parts == {"encoder.fc": "encoder", "posterior.fc1": "encoder", "posterior.fc2": "encoder",
                     "cell.ih": "predictor", "cell.hh": "predictor"}
    params = table.drop_duplicates("name").set_index("name")["params"]
    floor_only = {n: 4 if parts[n] == "encoder" else 2 for n in parts}  # the budget leaves no room above the floor
    budget = sum(params[n] * b for n, b in floor_only.items()) / params.sum()
    assert allocate_bits(table, budget, choices=(2, 4), min_bits={"encoder": 4}) == floor_only


def test_the_sensitivity_interval_resamples_episodes_within_the_per_episode_ratios(tiny_objective):
    # A resample's ratio sum(num) / sum(spread) lies between the smallest and largest per-episode num_e / spread_e
    # (the mediant inequality), so the whole interval does; the point estimate is the ratio over all episodes.
    model, fn = tiny_objective
    layer = "predictor.transformer.layers.1.0.to_qkv"
    row = layer_sensitivity(model, fn, lambda b: RTN(b), bits=(2,), names=layer).iloc[0]
    with torch.no_grad():
        fp, q = fn(model).double(), fn(quantize(model, RTN(2), scope=[layer])[0]).double()
    change = q - fp
    num = ((change - change.mean(dim=1, keepdim=True)) ** 2).mean(dim=1)
    ratios = (num / fp.var(dim=1, unbiased=False)).numpy()
    low, high = ratios.min() * (1 - 1e-9), ratios.max() * (1 + 1e-9)  # a resample of one episode: its ratio
    assert low <= row["sensitivity_low"] <= row["sensitivity"] <= row["sensitivity_high"] <= high
    assert row["sensitivity_low"] < row["sensitivity_high"]  # three episodes that differ: a real interval
    still = layer_sensitivity(model, fn, lambda b: RTN(b), bits=(16,), names=layer).iloc[0]
    assert still["sensitivity_low"] == still["sensitivity_high"] == 0.0
