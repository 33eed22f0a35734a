"""wmqlib.setting: a Setting is validated and reads nothing; resolved against its checkpoint it gives the keys of its
results, calibration and quantized copy, and those keys are the ones computed before later fields existed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from wmqlib.envs import PushT, Wall
from wmqlib.plan import CEMConfig, GDConfig, MPCConfig, ObjectiveConfig
from wmqlib.quant import AWQ, RTN, PerGroup, PerTensor, SmoothQuant
from wmqlib.setting import Setting, resolve_setting
from wmqlib.sweep import canonical, config_key

SMALL = CEMConfig(samples=12, topk=3, opt_steps=2)
FAKE_SHA = "feedfacecafebeef"


def resolved(s: Setting, env: str = "wall"):
    """``s`` resolved against a checkpoint of ``env`` with a fixed fingerprint: keys without any weights."""
    return resolve_setting(s, Path("/nowhere") / s.checkpoint, env, FAKE_SHA)


def keys(s: Setting) -> tuple[str, str, str]:
    run = resolved(s)
    return config_key(run.identity), run.calibration_key, run.quantized_key


@pytest.mark.parametrize("kw, error, match", [
    (dict(scope="decoder"), ValueError, "scope must be one of"),
    (dict(scope="encoder"), ValueError, "must be 'all' for the full-precision"),
    (dict(recipe="RTN"), TypeError, "recipe must be"),
    (dict(checkpoint=3), TypeError, "checkpoint must be"),
    (dict(planner="CEM"), TypeError, "planner must be"),
    (dict(mpc=5), TypeError, "mpc must be"),
    (dict(n_evals=0), ValueError, "n_evals"),
    (dict(seed=1), ValueError, "seed"),
    (dict(trace=1), TypeError, "trace"),
    (dict(calib_planner=GDConfig()), TypeError, "calib_planner"),
    (dict(device="tpu"), ValueError, "device"),
    (dict(calib_source="x"), ValueError, r"calib_source must be one of \['planning', 'dataset', 'random'\], got 'x'"),
    (dict(calib_rounds=0), ValueError, "calib_rounds must be an int >= 1, got 0"),
    (dict(calib_rounds=2.0), TypeError, "calib_rounds must be an int"),
    (dict(overrides={"encoder": RTN(8)}), ValueError, "overrides needs a recipe: recipe=None is the full-precision"),
    (dict(recipe=RTN(4), overrides={"encoder": "RTN"}), TypeError,
     r"overrides\['encoder'\] must be a wmqlib.quant recipe \(AWQ, .*RTN.*\), got str"),
    (dict(recipe=RTN(4), overrides={3: RTN(8)}), TypeError, "overrides pattern must be a module-name pattern"),
    (dict(recipe=RTN(4), overrides=RTN(8)), TypeError, "overrides must be a mapping from module-name pattern"),
    (dict(recipe=RTN(4), overrides=[("encoder", RTN(8), 1)]), TypeError, "not a pair"),
    (dict(recipe=RTN(4), overrides=[("encoder", RTN(8)), ("encoder", RTN(6))]), ValueError, "more than once"),
])
def test_setting_rejects_bad_fields(tiny, kw, error, match):
    with pytest.raises(error, match=match):
        Setting(**{"checkpoint": tiny, **kw})


def test_overrides_are_stored_as_ordered_pairs_and_keep_the_setting_hashable(tiny):
    pairs = (("encoder", RTN(8)), ("encoder.blocks.0", RTN(3)))
    from_dict = Setting(tiny, recipe=RTN(4), overrides=dict(pairs))
    from_list = Setting(tiny, recipe=RTN(4), overrides=[list(p) for p in pairs])
    assert from_dict.overrides == from_list.overrides == pairs
    assert hash(from_dict) == hash(from_list) and len({from_dict, from_list}) == 1
    assert Setting(tiny, recipe=RTN(4), overrides={}).overrides is None  # nothing overridden = the default
    assert dataclasses.replace(from_dict, n_evals=3).overrides == pairs  # re-validated from the stored form
    s = Setting(tiny, calib_rounds=5, calib_source="random")
    assert (s.calib_rounds, s.calib_source) == (5, "random")


def test_a_setting_reads_no_file():
    assert Setting("/not/yet/there").checkpoint == "/not/yet/there"


def test_needs_calibration_follows_the_recipe_and_the_overrides():
    assert not Setting("x").needs_calibration and not Setting("x", recipe=RTN(4)).needs_calibration
    assert Setting("x", recipe=AWQ(4, PerGroup(8))).needs_calibration
    assert Setting("x", recipe=SmoothQuant(8, a_bits=8, a_granularity=PerTensor())).needs_calibration  # static range
    assert Setting("x", recipe=RTN(4), overrides={"predictor": AWQ(4, PerGroup(8))}).needs_calibration


def test_resolving_fills_in_the_calibration_planner_and_the_sampler():
    cem = resolved(Setting("x", planner=SMALL))
    assert cem.calib_planner == SMALL and cem.sampler == "random_state"
    assert (cem.env, cem.model_sha) == ("wall", FAKE_SHA)
    assert resolved(Setting("x", planner=GDConfig())).calib_planner == CEMConfig(opt_steps=Wall.plan_opt_steps)
    assert resolved(Setting("x"), "pusht").sampler == PushT.default_sampler
    with pytest.raises(ValueError, match="sampler .*must be one of"):
        resolved(Setting("x", sampler="demo"))


# ----- keys: unchanged since before the later fields (overrides, calibration options, planner seed, ...) -----

def key_settings() -> dict[str, Setting]:
    return {
        "fp": Setting("fake", device="cpu"),
        "sq": Setting("fake", recipe=SmoothQuant(8, a_bits=8, a_granularity=PerTensor()), planner=SMALL, n_evals=3,
                      n_calib=2, calib_planner=SMALL, device="cpu"),
        "awq": Setting("fake", recipe=AWQ(4, PerGroup(8)), scope="predictor", mpc=MPCConfig(max_rounds=5),
                       device="cpu"),
    }


def test_keys_at_the_default_options_are_those_computed_before_the_options_existed():
    """Values computed with the code before overrides / calib_rounds / calib_source were added (same fake sha)."""
    before = {  # (result key, calibration key, quantized-copy key)
        "fp": ("78e4e54539bade98", "0cfd0b3bdd0c7245", "74ee2f0a33339bda"),
        "sq": ("16fd126245138029", "fc9a98f89b11230d", "f953f666ffebfedf"),
        "awq": ("5d1df2193c20a50a", "0cfd0b3bdd0c7245", "74b477fad3b69c1c"),
    }
    for name, s in key_settings().items():
        explicit = dataclasses.replace(s, overrides=None, calib_rounds=2, calib_source="planning", planner_seed=0,
                                       objective=None, sampler="random_state")
        for same in (s, explicit):
            assert keys(same) == before[name], name
        assert not {"overrides", "calib_rounds", "calib_source", "planner_seed", "objective", "sampler"} & \
            set(resolved(s).identity)


def test_overrides_and_calibration_options_change_the_keys_they_should():
    base = key_settings()["awq"]
    variants = {
        "overrides": dataclasses.replace(base, overrides={"predictor.transformer.layers.0": RTN(8)}),
        "other overrides": dataclasses.replace(base, overrides={"predictor.transformer.layers.0": RTN(6)}),
        "rounds": dataclasses.replace(base, calib_rounds=5),
        "random": dataclasses.replace(base, calib_source="random"),
        "dataset": dataclasses.replace(base, calib_source="dataset"),
    }
    calib = {k: resolved(s).calibration_key for k, s in {"base": base, **variants}.items()}
    quant = {k: resolved(s).quantized_key for k, s in {"base": base, **variants}.items()}
    results = {k: config_key(resolved(s).identity) for k, s in {"base": base, **variants}.items()}
    assert len(set(quant.values())) == len(quant) and len(set(results.values())) == len(results)
    # overrides change the quantized copy, not what the calibration records
    assert calib["overrides"] == calib["other overrides"] == calib["base"]
    assert len({calib[k] for k in ("base", "rounds", "random", "dataset")}) == 4
    # training data need no planner, episodes or rounds: those do not split their calibration
    dataset = variants["dataset"]
    for other in (dataclasses.replace(dataset, calib_rounds=5), dataclasses.replace(dataset, goal_H=3),
                  dataclasses.replace(dataset, calib_planner=SMALL)):
        assert resolved(other).calibration_key == calib["dataset"]
    assert resolved(dataclasses.replace(dataset, n_calib=3)).calibration_key != calib["dataset"]
    assert resolved(variants["overrides"]).identity["overrides"] == [
        ["predictor.transformer.layers.0", canonical(RTN(8))]]


def test_planner_seed_objective_and_sampler_are_keyed_only_off_their_old_values():
    base = key_settings()["fp"]
    seeded = dataclasses.replace(base, planner_seed=1)
    visual = dataclasses.replace(base, objective=ObjectiveConfig(alpha=0.0))
    assert len({keys(s)[0] for s in (base, seeded, visual)}) == 3
    assert keys(seeded)[1:] == keys(base)[1:]  # the planner's draws do not change the calibration
    demo, scripted = (resolved(dataclasses.replace(base, sampler=k), "pusht") for k in ("demo", "scripted"))
    assert demo.identity["sampler"] == "demo"  # keyed: PushT's default since the sampler field exists
    assert "sampler" not in scripted.identity  # PushT's unkeyed sampler: the episodes results were computed on
    assert demo.calibration["sampler"] == "demo" and scripted.calibration["sampler"] == "scripted"
