"""wmqlib.caches: what a run derives from a checkpoint (env, fingerprint), calibrations on disk (from planning, random
rollouts or the training data), quantized copies with per-layer overrides, provenance."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import torch
import pytest

from wmqlib import study as st
from wmqlib.caches import Caches, provenance, training_data_recipe, training_sample
from wmqlib.envs import TrajectoryData, Wall, generate_dataset
from wmqlib.models import CheckpointError, load_world_model, save_world_model
from wmqlib.plan import CEMConfig, GDConfig, MPCConfig
from wmqlib.quant import AWQ, RTN, PerGroup, PerTensor, SmoothQuant, find_points
from wmqlib.sweep import canonical, config_key
from wmqlib.train import PRESETS

SMALL = CEMConfig(samples=12, topk=3, opt_steps=2)


def setting(tiny: str, **kw) -> st.Setting:
    base = dict(planner=SMALL, n_evals=3, n_calib=2, calib_planner=SMALL, device="cpu")
    return st.Setting(tiny, **{**base, **kw})


def test_setting_reads_no_file_and_the_caches_derive_env_and_fingerprint(tiny, caches, tmp_path):
    assert st.Setting(str(tmp_path / "not-yet-there")).checkpoint.endswith("not-yet-there")  # building reads nothing
    s = st.Setting(tiny)
    identity = caches.identity(s)
    assert identity["env"] == "wall" and len(identity["model_sha"]) == 16
    assert s.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert s.calib_planner == s.planner  # a CEM planner calibrates with itself
    assert caches.calib_planner(st.Setting(tiny, planner=GDConfig())) == CEMConfig(opt_steps=Wall.plan_opt_steps)
    assert config_key(caches.identity(st.Setting(tiny))) == config_key(identity)
    assert caches.identity(dataclasses.replace(s, n_evals=7))["model_sha"] == identity["model_sha"]


def test_fingerprint_follows_the_weights(tiny, tmp_path, caches):
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    assert caches.checkpoint(copy)[2] == caches.checkpoint(tiny)[2]
    model = load_world_model(copy)
    with torch.no_grad():
        model.predictor.transformer.layers[0][1].net[1].weight.add_(1e-3)
    save_world_model(model, copy)
    assert caches.checkpoint(copy)[2] != caches.checkpoint(tiny)[2]


def test_unknown_and_foreign_checkpoints_fail_when_a_run_needs_them(tmp_path, caches):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        caches.identity(st.Setting("no-such-model"))
    (tmp_path / "hydra.yaml").write_text("env: {name: wall}\n")
    with pytest.raises(CheckpointError, match="convert"):
        st.run_setting(st.Setting(str(tmp_path)), caches)


def test_calibration_is_cached_on_disk_and_recomputed_on_request(tiny, calib_dir, stale_tmp):
    s = setting(tiny, recipe=SmoothQuant(8, a_bits=8, a_granularity=PerTensor()))
    leftover = stale_tmp(calib_dir / "0123456789abcdef.safetensors")  # a calibration killed mid-write
    first = Caches(calib_dir).calibration(s)
    files = list(calib_dir.glob("*.safetensors"))
    assert len(files) == 1 and not list(calib_dir.glob("*.tmp")) and not leftover.exists()
    caches = Caches(calib_dir)
    loaded = caches.calibration(s)  # from the file
    assert loaded is not first and loaded.linears == first.linears
    name = first.linears[0]
    torch.testing.assert_close(loaded.absmax(name), first.absmax(name))
    # another recipe with the same model, episodes and calibration planner shares the file
    caches.calibration(dataclasses.replace(s, recipe=AWQ(4, PerGroup(8))))
    assert list(calib_dir.glob("*.safetensors")) == files
    mtime = files[0].stat().st_mtime_ns
    again = caches.calibration(s, recompute=True)
    assert files[0].stat().st_mtime_ns != mtime
    torch.testing.assert_close(again.absmax(name), first.absmax(name))  # collection is deterministic
    assert caches.calibration(s, recompute=True) is again  # recomputed once per process


def test_provenance_names_torch_threads_and_cpu():
    info = provenance()
    assert info["torch"] == torch.__version__ and info["threads"] == torch.get_num_threads()
    assert isinstance(info["cpu"], str) and info["cpu"]


# ----- mixed precision (Setting.overrides) and calibration options (calib_rounds, calib_source) -----

FAKE_SHA = "feedfacecafebeef"


@pytest.fixture()
def fake_caches(tmp_path, monkeypatch):
    """Caches whose every checkpoint is a Wall model with a fixed fingerprint: keys without reading weights."""
    caches = Caches(tmp_path / "calibration")
    monkeypatch.setattr(caches, "checkpoint", lambda checkpoint: (tmp_path, "wall", FAKE_SHA))
    return caches


def key_settings() -> dict[str, st.Setting]:
    return {
        "fp": st.Setting("fake", device="cpu"),
        "sq": st.Setting("fake", recipe=SmoothQuant(8, a_bits=8, a_granularity=PerTensor()), planner=SMALL, n_evals=3,
                         n_calib=2, calib_planner=SMALL, device="cpu"),
        "awq": st.Setting("fake", recipe=AWQ(4, PerGroup(8)), scope="predictor", mpc=MPCConfig(max_rounds=5),
                          device="cpu"),
    }


def test_keys_at_the_default_options_are_those_computed_before_the_options_existed(fake_caches):
    """Values computed with the code before overrides / calib_rounds / calib_source were added (same fake sha)."""
    before = {  # (result key, calibration key, quantized-copy key)
        "fp": ("78e4e54539bade98", "0cfd0b3bdd0c7245", "74ee2f0a33339bda"),
        "sq": ("16fd126245138029", "fc9a98f89b11230d", "f953f666ffebfedf"),
        "awq": ("5d1df2193c20a50a", "0cfd0b3bdd0c7245", "74b477fad3b69c1c"),
    }
    for name, s in key_settings().items():
        explicit = dataclasses.replace(s, overrides=None, calib_rounds=2, calib_source="planning")
        for same in (s, explicit):
            keys = (config_key(fake_caches.identity(same)), config_key(fake_caches._calibration_fields(same)),
                    fake_caches.quantized_key(same))
            assert keys == before[name], name
        assert not {"overrides", "calib_rounds", "calib_source"} & set(fake_caches.identity(s))


def test_overrides_and_calibration_options_change_the_keys_they_should(fake_caches):
    base = key_settings()["awq"]
    variants = {
        "overrides": dataclasses.replace(base, overrides={"predictor.transformer.layers.0": RTN(8)}),
        "other overrides": dataclasses.replace(base, overrides={"predictor.transformer.layers.0": RTN(6)}),
        "rounds": dataclasses.replace(base, calib_rounds=5),
        "random": dataclasses.replace(base, calib_source="random"),
        "dataset": dataclasses.replace(base, calib_source="dataset"),
    }
    calib = {k: config_key(fake_caches._calibration_fields(s)) for k, s in {"base": base, **variants}.items()}
    quant = {k: fake_caches.quantized_key(s) for k, s in {"base": base, **variants}.items()}
    results = {k: config_key(fake_caches.identity(s)) for k, s in {"base": base, **variants}.items()}
    assert len(set(quant.values())) == len(quant) and len(set(results.values())) == len(results)
    # overrides change the quantized copy, not what the calibration records
    assert calib["overrides"] == calib["other overrides"] == calib["base"]
    assert len({calib[k] for k in ("base", "rounds", "random", "dataset")}) == 4
    # training data need no planner, episodes or rounds: those do not split their calibration
    dataset = variants["dataset"]
    for other in (dataclasses.replace(dataset, calib_rounds=5), dataclasses.replace(dataset, goal_H=3),
                  dataclasses.replace(dataset, calib_planner=SMALL)):
        assert config_key(fake_caches._calibration_fields(other)) == calib["dataset"]
    assert config_key(fake_caches._calibration_fields(dataclasses.replace(dataset, n_calib=3))) != calib["dataset"]
    assert fake_caches.identity(variants["overrides"])["overrides"] == [
        ["predictor.transformer.layers.0", canonical(RTN(8))]]


def test_a_setting_with_overrides_quantizes_those_layers_with_their_recipe(tiny, caches):
    s = setting(tiny, recipe=RTN(4, PerGroup(8)), overrides=[("encoder", RTN(8)), ("encoder.blocks.0.mlp", RTN(3))])
    model, report = caches.quantized(s)
    bits = dict(zip(report.table["module"], report.table["w_bits"]))
    names = list(bits)
    assert all(bits[n] == 4 for n in names if n.startswith("predictor."))
    encoder = [n for n in names if n.startswith("encoder.")]
    assert all(bits[n] == (3 if n.startswith("encoder.blocks.0.mlp.") else 8) for n in encoder)
    assert any(n.startswith("encoder.blocks.0.mlp.") for n in names)  # the later pattern won where both match
    plain_model, plain = caches.quantized(dataclasses.replace(s, overrides=None))
    assert plain_model is not model and set(plain.table["w_bits"]) == {4}
    assert caches.quantized(s)[0] is model  # the in-memory copy is keyed by its overrides
    # an override pattern outside the scope matches nothing: quantize's message names it
    with pytest.raises(ValueError, match=r"overrides key \(within the scope\)='encoder' matches none"):
        caches.quantized(dataclasses.replace(s, scope="predictor", overrides={"encoder": RTN(8)}))
    with pytest.raises(ValueError, match="overrides key .*'decoder.*' matches none"):
        caches.quantized(dataclasses.replace(s, overrides={"decoder.*": RTN(8)}))


def test_an_override_that_needs_calibration_calibrates(tiny, caches, calib_dir):
    s = setting(tiny, recipe=RTN(4), n_calib=1, overrides={"predictor": AWQ(4, PerGroup(8))})
    _, report = caches.quantized(s)
    assert set(report.table.loc[report.table["module"].str.startswith("predictor."), "method"]) == {"AWQ"}
    assert len(list(calib_dir.glob("*.safetensors"))) == 1


def encoder_and_predictor_qkv(calib) -> tuple[str, str]:
    enc = next(n for n in calib.linears if n.startswith("encoder.") and n.endswith("attn.qkv"))
    pred = next(n for n in calib.linears if n.startswith("predictor.") and n.endswith("to_qkv"))
    return enc, pred


def test_each_calibration_source_covers_every_linear_with_the_tokens_it_should(tiny, caches):
    base = setting(tiny, recipe=AWQ(4, PerGroup(8)), n_calib=2)
    model = caches.model(base)
    c = model.config
    enc_tokens, pred_tokens = c.num_patches + 1, c.num_patches  # the encoder adds its CLS token
    calibs = {src: caches.calibration(dataclasses.replace(base, calib_source=src))
              for src in ("planning", "random", "dataset")}
    for src, calib in calibs.items():
        assert calib.linears == find_points(model).linears, src
    enc, pred = encoder_and_predictor_qkv(calibs["planning"])
    # random: goals + starts of both rounds + final states through the encoder; samples * opt_steps sequences of
    # horizon steps per episode and round through the predictor (num_hist 1: one frame of tokens per step)
    frames = 2 * (1 + 2 + 1)
    assert calibs["random"].tokens_seen(enc) == frames * enc_tokens
    assert calibs["random"].tokens_seen(pred) == 2 * 2 * SMALL.samples * SMALL.opt_steps * SMALL.horizon * pred_tokens
    # planning sees as many encoder frames and about as many predictor sequences
    assert calibs["planning"].tokens_seen(enc) == frames * enc_tokens
    assert 0.5 < calibs["planning"].tokens_seen(pred) / calibs["random"].tokens_seen(pred) < 2
    # dataset: every frame of 2 training trajectories once; every teacher-forcing window's input frame
    data = caches.training_sample(dataclasses.replace(base, calib_source="dataset"))
    assert len(data) == 2 and data.img_size == c.img_size
    windows = data.traj_len - (c.num_hist + 1) * c.frameskip + 1
    assert calibs["dataset"].tokens_seen(enc) == 2 * (data.traj_len + 1) * enc_tokens
    assert calibs["dataset"].tokens_seen(pred) == 2 * windows * c.num_hist * pred_tokens
    for src in ("random", "dataset"):
        for name in (enc, pred):
            assert not torch.allclose(calibs[src].absmean(name), calibs["planning"].absmean(name)), (src, name)


def test_calibration_rounds_record_more_planning(tiny, caches):
    base = setting(tiny, recipe=AWQ(4, PerGroup(8)), n_calib=1, calib_rounds=1)
    one, three = caches.calibration(base), caches.calibration(dataclasses.replace(base, calib_rounds=3))
    enc, pred = encoder_and_predictor_qkv(one)
    assert three.tokens_seen(enc) > one.tokens_seen(enc) and three.tokens_seen(pred) > one.tokens_seen(pred)


def test_training_sample_is_the_checkpoints_training_data(tiny, caches):
    recipe = training_data_recipe(tiny)
    cfg = PRESETS["tiny"]
    assert recipe == {"env": "wall", "n_traj": cfg.n_traj, "traj_len": cfg.traj_len, "seed": cfg.seed,
                      "img_size": cfg.img_size, "policy": "walks"}
    norm = caches.model(setting(tiny)).normalization()
    sample = training_sample(tiny, norm, 3, seed=99)
    again = training_sample(tiny, norm, 3, seed=99)
    np.testing.assert_array_equal(sample.frames, again.frames)  # deterministic
    full = TrajectoryData.load(generate_dataset("wall", cfg.n_traj, cfg.traj_len, cfg.seed, cfg.img_size,
                                                caches.calib_dir / "train.npz", progress=False))
    pick = sample.meta["trajectories"]
    assert len(pick) == 3 and pick == sorted(pick)
    np.testing.assert_array_equal(sample.frames, full.frames[pick])
    np.testing.assert_array_equal(sample.actions, full.actions[pick])
    np.testing.assert_allclose(sample.action_std, full.action_std)
    assert training_sample(tiny, norm, 3, seed=100).meta["trajectories"] != pick
    with pytest.raises(ValueError, match=r"n \(Setting.n_calib\) must be an int in 1..8"):
        training_sample(tiny, norm, 9, seed=99)
    wrong = {**norm, "action_std": [2 * x for x in norm["action_std"]]}
    with pytest.raises(CheckpointError, match="action_std"):
        training_sample(tiny, wrong, 2, seed=99)


def test_training_data_recipes_of_fine_tuned_and_early_checkpoints(tiny, tmp_path):
    model = load_world_model(tiny)
    expected = training_data_recipe(tiny)
    nested = model.provenance["recipe"]
    cfg = PRESETS["tiny"]
    flat = {"env": "wall", "n_traj": cfg.n_traj, "traj_len": cfg.traj_len, "seed": cfg.seed, "img_size": cfg.img_size}

    def saved(name: str, prov: dict):
        model.provenance = prov
        return save_world_model(model, tmp_path / name)

    # a fine-tuned copy names its base's recipe; an early (flat) recipe is the preset named like the folder / base
    fine_tuned = saved("qat", {"base_checkpoint": "x", "base_provenance": {"recipe": nested}})
    assert training_data_recipe(fine_tuned) == expected
    assert training_data_recipe(saved("tiny", {"recipe": flat})) == expected
    assert training_data_recipe(saved("qat-of-tiny", {"base_checkpoint": "tiny",
                                                      "base_provenance": {"recipe": flat}})) == expected
    for name, prov in [("no-recipe", {"converted_from": "somewhere"}), ("other-name", {"recipe": flat}),
                             ("other/tiny", {"recipe": {**flat, "n_traj": 9}})]:  # not the preset's data
        with pytest.raises(CheckpointError, match="its training data cannot be regenerated"):
            training_data_recipe(saved(name, prov))
