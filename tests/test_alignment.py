"""wmqlib.alignment: per-episode rank agreement of the planning loss with the true outcome of candidate plans."""

import pytest
import torch
from test_evaluate import OracleWall

from wmqlib.alignment import ALIGNMENT_COLUMNS, candidate_alignment, candidate_plans
from wmqlib.envs import make_env, sample_episodes
from wmqlib.plan import CEMConfig


class ScrambledWall(OracleWall):
    """The oracle with its imagined end state replaced by noise: a loss that knows nothing of the outcome."""

    def rollout(self, z0, actions):
        out = super().rollout(z0, actions)
        gen = torch.Generator().manual_seed(int(actions.abs().sum() * 1000) % 2**31)
        out["visual"] = torch.randn(out["visual"].shape, generator=gen)
        out["proprio"] = torch.randn(out["proprio"].shape, generator=gen)
        return out


@pytest.fixture(scope="module")
def setup():
    env = make_env("wall", render_size=64)
    return env, sample_episodes("wall", 6, seed=99)


def test_the_oracle_loss_ranks_candidates_by_their_true_outcome(setup):
    env, episodes = setup
    table = candidate_alignment(OracleWall(env), env, episodes, CEMConfig(), samples=32)
    assert list(table.columns) == list(ALIGNMENT_COLUMNS) and len(table) == 6
    assert (table["rho"] > 0.8).all()
    assert (table["best_loss_distance"] <= table["best_distance"] + 5).all()  # its best-scored plan is near-best


def test_a_loss_blind_to_the_outcome_is_not_aligned(setup):
    env, episodes = setup
    table = candidate_alignment(ScrambledWall(env), env, episodes, CEMConfig(), samples=32)
    assert table["rho"].abs().mean() < 0.35


def test_every_model_scores_the_same_candidates(setup):
    env, episodes = setup
    oracle = OracleWall(env)
    a, b = candidate_plans(oracle, episodes, CEMConfig(), 8), candidate_plans(oracle, episodes, CEMConfig(), 8)
    assert torch.equal(a, b) and a.shape == (6, 8, 5, oracle.action_dim)
    assert not torch.equal(a, candidate_plans(oracle, episodes, CEMConfig(), 8, seed=1))
    assert not torch.equal(a[0], a[1])  # episodes draw their own plans


def test_fewer_than_two_candidates_are_refused(setup):
    env, episodes = setup
    with pytest.raises(ValueError, match="samples"):
        candidate_alignment(OracleWall(env), env, episodes, CEMConfig(), samples=1)
