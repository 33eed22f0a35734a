"""evaluate / baselines / collect_calibration on the real Wall env with an ORACLE world model (no training)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from wmqlib.envs import Episode, make_env, sample_episodes
from wmqlib.envs.wall import wall_step
from wmqlib.evaluate import BASELINES, EPISODE_COLUMNS, ROUND_COLUMNS, baselines, collect_calibration, evaluate
from wmqlib.models import WorldModel, WorldModelConfig
from wmqlib.plan import CEMConfig, GDConfig, MPCConfig, Objective, PlanningModel, encode_observations

SCALE = 64.0  # pixels -> latent units


class OracleWall(nn.Module):
    """A perfect "world model" of the Wall implementing the PlanningModel protocol.

    Latents are true positions: proprio latent (x, y) / 64; visual latent (B, T, 1, 3) = (x, y, s * d) / 64 with d
    the distance to the door centre and s = -1 left / +1 right of the wall, so the latent MSE to a goal across the
    wall grows with the path length through the door. Rollout runs the env's own vectorised dynamics
    (``wall_step``) on all B sequences at once. Actions: frameskip 5, z-score mean 0, std 1 (raw = z).
    """

    frameskip = 5

    def __init__(self, env) -> None:
        super().__init__()
        self.layout = env.layout
        self.register_buffer("action_mean", torch.zeros(2))
        self.register_buffer("action_std", torch.ones(2))
        self.rollout_calls = 0

    @property
    def action_dim(self) -> int:
        return 2 * self.frameskip

    def prepare_obs(self, frames, proprio):
        return frames.permute(0, 1, 4, 2, 3).float() / 127.5 - 1, proprio.float()  # proprio = position (raw)

    def _latents(self, pos: torch.Tensor) -> dict:  # pos (B, T, 2) px
        door = torch.tensor([float(self.layout.wall_x), float(self.layout.door_y)], dtype=pos.dtype)
        side = torch.where(pos[..., :1] >= self.layout.wall_x, 1.0, -1.0)
        signed = side * (pos - door).norm(dim=-1, keepdim=True)
        return {"visual": torch.cat([pos, signed], dim=-1)[:, :, None] / SCALE, "proprio": pos / SCALE}

    def encode_obs(self, visual, proprio):
        return self._latents(proprio)

    def rollout(self, z0, actions):
        self.rollout_calls += 1
        b, horizon = actions.shape[:2]
        pos = (z0["proprio"][:, 0] * SCALE).repeat_interleave(b // z0["proprio"].shape[0], 0).double().numpy()
        raw = self.actions_to_env(actions).detach().double().numpy()  # (B, H * 5, 2); not differentiable
        visited = [pos]
        for t in range(raw.shape[1]):
            pos = wall_step(pos, raw[:, t], self.layout)
            if (t + 1) % self.frameskip == 0:
                visited.append(pos)
        return self._latents(torch.as_tensor(np.stack(visited, 1), dtype=torch.float32))

    def actions_to_env(self, actions):
        raw = actions.reshape(*actions.shape[:-1], self.frameskip, 2) * self.action_std + self.action_mean
        return raw.flatten(-3, -2)


class NaNWall(OracleWall):
    """Produces NaN latents for rollouts that start right of the wall (a model that blows up on some inputs)."""

    def rollout(self, z0, actions):
        out = super().rollout(z0, actions)
        right = (z0["proprio"][:, 0, 0] * SCALE >= self.layout.wall_x).repeat_interleave(
            actions.shape[0] // z0["proprio"].shape[0])
        out["visual"][right] = float("nan")
        return out


def small_world_model() -> WorldModel:
    """A random (untrained) real WorldModel for the Wall: 16 px images, 4 tokens, one layer each."""
    sizes = dict(img_size=16, patch_size=2, grid_size=2, encoder_dim=8, encoder_depth=1, encoder_heads=1,
                 encoder_mlp_dim=16, encoder_pos_grid=2, predictor_depth=1, predictor_heads=1, predictor_dim_head=8,
                 predictor_mlp_dim=16, proprio_emb_dim=2, action_emb_dim=2, decoder_channel=2,
                 decoder_res_blocks=1, decoder_res_channel=2, decoder_n_embed=4)
    return WorldModel(WorldModelConfig(env="wall", proprio_dim=2, **sizes), seed=5).eval()


@pytest.fixture(scope="module")
def env():
    return make_env("wall", render_size=8)


@pytest.fixture(scope="module")
def episodes():
    return sample_episodes("wall", 8, seed=99)


FAST_CEM = CEMConfig(opt_steps=5, samples=100, topk=10)


def test_oracle_implements_the_protocol(env):
    assert isinstance(OracleWall(env), PlanningModel)


def test_oracle_with_mpc_reaches_high_success(env, episodes):
    oracle = OracleWall(env)
    table = evaluate(oracle, env, FAST_CEM, episodes, mpc=MPCConfig(max_rounds=4))
    assert list(table.columns) == list(EPISODE_COLUMNS) and len(table) == 8
    assert table["success"].mean() >= 0.85
    assert not table["nan"].any()
    assert (table.loc[table.success, "state_dist"] < 4.5).all()
    assert (table["rounds"] >= 1).all() and (table["rounds"] <= 4).all()
    # visual_dist is the latent MSE of the final real frame: tiny for successes, larger for failures
    assert (table.loc[table.success, "visual_dist"] < (4.5 / SCALE) ** 2 * 2).all()
    np.testing.assert_array_equal(table["seed"], [ep.seed for ep in episodes])
    # every success rate is shown next to baselines: the oracle planner must beat all of them
    base = baselines(env, episodes, steps=FAST_CEM.horizon * 5 * 4)
    assert set(base["baseline"]) == set(BASELINES) and len(base) == 3 * 8
    assert (base.groupby("baseline")["success"].mean() < table["success"].mean()).all()


def test_baselines_behave_as_named(env):
    """Same side of the wall, 20 px apart: the straight line arrives, standing still does not."""
    eps = [Episode(np.array([15.0, 20.0]), np.array([15.0 + dx, 40.0]), seed=s, env="wall")
           for s, dx in ((1, 0), (2, 8))]
    table = baselines(env, eps, steps=25).set_index(["baseline", "episode"])
    assert table.loc["straight_line", "success"].all()
    assert not table.loc["no_action", "success"].any()
    np.testing.assert_allclose(table.loc["no_action", "state_dist"], [20.0, np.hypot(8, 20)])
    again = baselines(env, eps, steps=25, kinds=["random"]).set_index(["baseline", "episode"])
    pd.testing.assert_frame_equal(again, table.loc[["random"]])  # seeded per episode
    other = baselines(env, eps, steps=25, seed=1, kinds=["random"])
    assert not np.allclose(other["state_dist"], again["state_dist"])


def test_trace_iteration_k_equals_a_run_with_k_plus_1_steps(env, episodes):
    oracle = OracleWall(env)
    trace = evaluate(oracle, env, FAST_CEM, episodes[:4], trace=True)
    assert len(trace) == 4 * FAST_CEM.opt_steps
    assert set(trace["iteration"]) == set(range(FAST_CEM.opt_steps))
    short = evaluate(oracle, env, CEMConfig(opt_steps=3, samples=100, topk=10), episodes[:4])
    at2 = trace[trace.iteration == 2].reset_index(drop=True)
    np.testing.assert_array_equal(at2["success"], short["success"])
    np.testing.assert_allclose(at2["state_dist"], short["state_dist"])
    np.testing.assert_allclose(at2["plan_loss"], short["plan_loss"], rtol=1e-5)
    last = trace[trace.iteration == FAST_CEM.opt_steps - 1].reset_index(drop=True)
    np.testing.assert_array_equal(last["episode_success"], last["success"])  # open loop: last iteration = outcome


SLOW_MPC = MPCConfig(max_rounds=4, execute_steps=1)  # one model step per round: successes spread over rounds


def _final_round_equals(rows: pd.DataFrame, table: pd.DataFrame) -> None:
    last = rows[rows["round"] == rows["round"].max()].reset_index(drop=True)
    for col in ("episode", "seed", "success", "state_dist", "plan_loss", "nan"):
        np.testing.assert_array_equal(last[col].to_numpy(), table[col].to_numpy(), err_msg=col)  # bit for bit
    np.testing.assert_array_equal(last["episode_success"].to_numpy(), table["success"].to_numpy())


def test_per_round_rows_are_latched_monotone_and_end_at_the_untraced_result(env, episodes):
    oracle = OracleWall(env)
    rows = evaluate(oracle, env, FAST_CEM, episodes, mpc=SLOW_MPC, per_round=True)
    table = evaluate(oracle, env, FAST_CEM, episodes, mpc=SLOW_MPC)
    assert list(rows.columns) == list(ROUND_COLUMNS) and len(rows) == 8 * 4
    assert set(rows["round"]) == {1, 2, 3, 4}
    wide = rows.pivot(index="episode", columns="round", values="success").to_numpy()
    assert (np.diff(wide.astype(int), axis=1) >= 0).all()  # latched: once a success, always a success
    assert wide[:, 0].sum() < wide[:, -1].sum()  # this setting does improve over rounds
    planned = rows.pivot(index="episode", columns="round", values="planned").to_numpy()
    assert planned[:, 0].all()
    # an episode is planned in round r exactly when it had not succeeded after round r - 1
    np.testing.assert_array_equal(planned[:, 1:], ~wide[:, :-1])
    np.testing.assert_array_equal(planned.sum(axis=1), table["rounds"])
    _final_round_equals(rows, table)
    # round r of a run with R rounds is the final result of a run with r rounds
    two = evaluate(oracle, env, FAST_CEM, episodes, mpc=MPCConfig(max_rounds=2, execute_steps=1))
    at2 = rows[rows["round"] == 2].reset_index(drop=True)
    for col in ("success", "state_dist", "plan_loss"):
        np.testing.assert_array_equal(at2[col].to_numpy(), two[col].to_numpy(), err_msg=col)


def test_per_round_with_nan_and_open_loop(env, episodes):
    model = NaNWall(env)
    rows = evaluate(model, env, FAST_CEM, episodes, mpc=MPCConfig(max_rounds=2), per_round=True)
    _final_round_equals(rows, evaluate(model, env, FAST_CEM, episodes, mpc=MPCConfig(max_rounds=2)))
    nan = rows.pivot(index="episode", columns="round", values="nan").to_numpy()
    assert nan.any() and (np.diff(nan.astype(int), axis=1) >= 0).all() and not rows.loc[rows.nan, "success"].any()
    one = evaluate(OracleWall(env), env, FAST_CEM, episodes, per_round=True)  # open loop = one round
    assert set(one["round"]) == {1} and one["planned"].all()
    _final_round_equals(one, evaluate(OracleWall(env), env, FAST_CEM, episodes))
    with pytest.raises(ValueError, match="trace=True .* per_round=True"):
        evaluate(model, env, FAST_CEM, episodes, trace=True, per_round=True)


class RecordingEnv:
    """The Wall env, recording every ``rollout_actions`` call (start states, raw actions)."""

    def __init__(self, env) -> None:
        self.env, self.calls = env, []

    def __getattr__(self, name):
        return getattr(self.env, name)

    def rollout_actions(self, states, actions):
        self.calls.append((np.array(states), np.array(actions)))
        return self.env.rollout_actions(states, actions)


def test_replay_executes_every_action_so_far_from_the_start(env, episodes):
    """DINO-WM's evaluator: round r replays all r rounds' actions from the start state (``MPCConfig.replay``)."""
    starts = np.stack([ep.start_state for ep in episodes])
    steps = 5  # one model step of frameskip 5 per round
    tables = {}
    for replay in (True, False):
        rec = RecordingEnv(env)
        tables[replay] = evaluate(OracleWall(env), rec, FAST_CEM, episodes,
                                  mpc=MPCConfig(max_rounds=3, execute_steps=1, replay=replay), per_round=True)
        planned = tables[replay].pivot(index="episode", columns="round", values="planned").to_numpy()
        calls = rec.calls  # only the executor runs the env (no trace here)
        assert len(calls) == planned.any(axis=0).sum()
        for r, (states, actions) in enumerate(calls):
            active = np.flatnonzero(planned[:, r])
            if replay:
                np.testing.assert_array_equal(states, starts[active])
                assert actions.shape[1] == (r + 1) * steps
                if r:  # the earlier rounds' actions are replayed unchanged
                    prev = calls[r - 1][1][np.isin(np.flatnonzero(planned[:, r - 1]), active)]
                    np.testing.assert_array_equal(actions[:, :r * steps], prev)
            else:
                assert actions.shape[1] == steps
                if r:
                    assert not np.array_equal(states, starts[active])
    # on the Wall re-entering a state is exact, so both semantics give the same run bit for bit
    pd.testing.assert_frame_equal(tables[True], tables[False])


def test_pusht_reentry_differs_from_replay():
    """Why replay matters on PushT: re-entering a state restarts the physics with one extra 10 ms tick."""
    pusht = make_env("pusht", render_size=8)
    ep = sample_episodes("pusht", 1, seed=99)[0]
    actions = np.random.default_rng(0).uniform(-0.5, 0.5, size=(1, 10, 2))
    replayed = pusht.rollout_actions(ep.start_state[None], actions)
    resumed = pusht.rollout_actions(pusht.rollout_actions(ep.start_state[None], actions[:, :5]), actions[:, 5:])
    assert not np.array_equal(replayed, resumed)
    assert np.abs(replayed[0, :2] - resumed[0, :2]).max() < 15  # the agent ends up close, not at the same point


def test_batched_evaluation_equals_one_episode_at_a_time(env, episodes):
    oracle = OracleWall(env)
    together = evaluate(oracle, env, FAST_CEM, episodes[:3], mpc=MPCConfig(max_rounds=2, execute_steps=2))
    alone = pd.concat([evaluate(oracle, env, FAST_CEM, [ep], mpc=MPCConfig(max_rounds=2, execute_steps=2))
                       for ep in episodes[:3]], ignore_index=True)
    for col in ("success", "rounds"):
        np.testing.assert_array_equal(together[col], alone[col])
    np.testing.assert_allclose(together["state_dist"], alone["state_dist"])


def test_nan_model_fails_its_episodes_and_evaluation_continues(env, episodes):
    model = NaNWall(env)
    right = np.array([ep.start_state[0] >= env.layout.wall_x for ep in episodes])
    assert right.any() and (~right).any()
    table = evaluate(model, env, FAST_CEM, episodes)  # open loop: NaN exactly for the right-side starts
    np.testing.assert_array_equal(table["nan"], right)
    assert not table.loc[right, "success"].any()
    clean = evaluate(OracleWall(env), env, FAST_CEM, episodes)  # NaN episodes do not disturb the others
    pd.testing.assert_frame_equal(table[~right], clean[~right])
    # with MPC a left start that lands right of the wall without success meets the NaN in its next round
    closed = evaluate(model, env, FAST_CEM, episodes, mpc=MPCConfig(max_rounds=2))
    assert closed.loc[right, "nan"].all() and not closed.loc[closed.nan, "success"].any()
    traced = evaluate(model, env, FAST_CEM, episodes, trace=True)
    assert traced.loc[traced.episode.isin(np.flatnonzero(right)), "nan"].all()
    assert not traced.loc[traced.nan, "success"].any()


def test_gd_needs_a_differentiable_model(env, episodes):
    """The oracle's rollout runs numpy dynamics: GD must say so instead of failing deep inside autograd."""
    with pytest.raises(TypeError, match="differentiable"):
        evaluate(OracleWall(env), env, GDConfig(opt_steps=2), episodes[:2])


def test_bad_input(env, episodes):
    oracle = OracleWall(env)
    with pytest.raises(ValueError, match="env"):
        evaluate(oracle, env, FAST_CEM, sample_episodes("pusht", 1, seed=99))
    with pytest.raises(TypeError, match="planner"):
        evaluate(oracle, env, {"opt_steps": 3}, episodes)
    with pytest.raises(TypeError, match="mpc"):
        evaluate(oracle, env, FAST_CEM, episodes, mpc=3)
    with pytest.raises(ValueError, match="at least one"):
        evaluate(oracle, env, FAST_CEM, [])
    with pytest.raises(ValueError, match="steps"):
        baselines(env, episodes, steps=0)
    with pytest.raises(ValueError, match="kinds"):
        baselines(env, episodes, steps=5, kinds=["teleport"])
    with pytest.raises(ValueError, match="calib"):
        collect_calibration(oracle, env, episodes, FAST_CEM)


def test_collect_calibration_sees_every_quantization_point(env):
    model = small_world_model()
    calib_eps = sample_episodes("wall", 2, seed=99, split="calib")
    calib = collect_calibration(model, env, calib_eps, FAST_CEM, mpc_rounds=2, render_size=16, max_tokens=64)
    names = calib.linears
    assert any(n.startswith("encoder.") for n in names) and any(n.startswith("predictor.") for n in names)
    # the predictor saw every CEM candidate: at least samples * iterations * horizon forwards of 4 tokens
    qkv = next(n for n in names if n.startswith("predictor.") and n.endswith("to_qkv"))
    assert calib.tokens_seen(qkv) >= 2 * FAST_CEM.samples * FAST_CEM.opt_steps * FAST_CEM.horizon * 4
    assert calib.rows(qkv).shape[0] == 64


def test_gd_with_a_real_world_model(env, episodes):
    model = small_world_model()
    table = evaluate(model, env, GDConfig(opt_steps=3, samples=2), episodes[:2], render_size=16)
    assert len(table) == 2 and np.isfinite(table["plan_loss"]).all() and not table["nan"].any()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.cuda
def test_evaluate_on_cuda(env, episodes):
    """Device comes from the model: costs on CUDA equal the CPU's on the same actions, and a traced CUDA
    evaluation runs end to end (CUDA generators draw other numbers than CPU ones, so plans differ)."""
    model = small_world_model()
    obs = [env.observe(np.stack([getattr(ep, f) for ep in episodes[:3]]), 16) for f in ("start_state", "goal_state")]
    actions = torch.randn(3, 7, 5, 10, generator=torch.Generator().manual_seed(0))
    cpu_cost = Objective(model, *(encode_observations(model, o) for o in obs))(actions)
    gpu_model = small_world_model().to("cuda")
    gpu_cost = Objective(gpu_model, *(encode_observations(gpu_model, o) for o in obs))(actions.cuda())
    assert gpu_cost.device.type == "cuda"
    torch.testing.assert_close(gpu_cost.cpu(), cpu_cost, rtol=1e-3, atol=1e-5)
    table = evaluate(gpu_model, env, FAST_CEM, episodes[:3], mpc=MPCConfig(max_rounds=2), render_size=16, trace=True)
    assert len(table) == 3 * FAST_CEM.opt_steps and np.isfinite(table["plan_loss"]).all()
    assert not table["nan"].any()


def test_collect_calibration_names_its_sources_and_their_inputs(env):
    model = small_world_model()
    calib_eps = sample_episodes("wall", 1, seed=99, split="calib")
    with pytest.raises(ValueError, match=r"source must be one of \['planning', 'dataset', 'random'\], got 'x'"):
        collect_calibration(model, env, calib_eps, FAST_CEM, source="x")
    with pytest.raises(ValueError, match="mpc_rounds must be an int >= 1"):
        collect_calibration(model, env, calib_eps, FAST_CEM, mpc_rounds=0)
    with pytest.raises(ValueError, match="source='dataset' records the trajectories in `data` alone"):
        collect_calibration(model, env, calib_eps, FAST_CEM, source="dataset")
    with pytest.raises(TypeError, match="data must be a wmqlib.envs TrajectoryData"):
        collect_calibration(model, source="dataset")
    with pytest.raises(ValueError, match="source='random' needs env, episodes and planner"):
        collect_calibration(model, env, calib_eps, source="random")
    with pytest.raises(TypeError, match="planner \\(source='random'\\) must be a CEMConfig"):
        collect_calibration(model, env, calib_eps, GDConfig(opt_steps=1), source="random")
    with pytest.raises(ValueError, match="calib"):  # random rollouts leak evaluation episodes as planning would
        collect_calibration(model, env, sample_episodes("wall", 1, seed=99), FAST_CEM, source="random")
