"""The algorithms end to end through the driver: the seed article's cliff, and convergence."""

import numpy as np
import pytest

import refpg
from refpg.algorithms import run

#: The documented FrozenLake budgets (sampled mode, default SampleConfig:
#: 64 envs x 64 steps = 4096 transitions per iteration, batch critic, GAE lambda 0.95).
FROZEN_LAKE_BUDGET = {
    "trpo": dict(n_iters=50, options=dict(max_kl=0.05)),
    "ppo": dict(n_iters=60, options=dict(lr=0.02, normalize_advantages="batch")),
}


def cliff_case():
    """The seed article's cliff, concretely: chain(5) with log-linear features.

    Features: 2 per (s, a), drawn N(0, 1) from numpy's default_rng(28); the
    parameters are shared across states, so one step in theta moves every
    state's policy at once. From theta = 0, J = 1.2050.
    """
    mdp = refpg.envs.chain(5)
    policy = refpg.LogLinear(np.random.default_rng(28).normal(size=(5, 2, 2)))
    return mdp, policy, np.zeros(2)


def test_a_large_reinforce_step_falls_off_the_cliff():
    mdp, pol, theta = cliff_case()
    small = run("reinforce", mdp, pol, theta, n_iters=1, lr=1.0)
    large = run("reinforce", mdp, pol, theta, n_iters=1, lr=30.0)
    assert small.J[1] > small.J[0]          # the gradient is an ascent direction...
    assert large.J[1] < 0.8 * large.J[0]    # ...but 30 times its length loses over 20% of J
    assert large.records[0].mean_kl > 0.1   # a big jump in behaviour space


def test_trpo_from_the_same_start_does_not_fall():
    mdp, pol, theta = cliff_case()
    history = run("trpo", mdp, pol, theta, n_iters=10, max_kl=0.01)
    J = history.J
    assert np.all(np.diff(J) >= -1e-12 * np.abs(J[:-1]).max())
    assert J[-1] > 4 * J[0]
    for rec in history.records:
        assert rec.mean_kl <= 0.01 + 1e-12


def test_exact_npg_reaches_99_9_percent_of_optimal_on_frozen_lake():
    mdp = refpg.envs.frozen_lake()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    J_star = refpg.optimal_policy(mdp).J
    history = run("npg", mdp, pol, np.zeros(pol.theta_shape), n_iters=20, eta=1.0)
    assert history.J[-1] >= 0.999 * J_star
    assert np.all(np.diff(history.J) >= -1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("algorithm", ["trpo", "ppo"])
def test_sampled_trpo_and_ppo_reach_90_percent_of_optimal_on_frozen_lake(algorithm, seed):
    mdp = refpg.envs.frozen_lake()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    J_star = refpg.optimal_policy(mdp).J
    budget = FROZEN_LAKE_BUDGET[algorithm]
    history = run(algorithm, mdp, pol, np.zeros(pol.theta_shape), n_iters=budget["n_iters"],
                  mode="sampled", seed=seed, **budget["options"])
    assert history.J[-1] >= 0.9 * J_star, history.J / J_star


def test_driver_is_deterministic_in_its_seed():
    mdp = refpg.envs.frozen_lake()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    a = run("ppo", mdp, pol, np.zeros(pol.theta_shape), n_iters=3, mode="sampled", seed=5, lr=0.02)
    b = run("ppo", mdp, pol, np.zeros(pol.theta_shape), n_iters=3, mode="sampled", seed=5, lr=0.02)
    c = run("ppo", mdp, pol, np.zeros(pol.theta_shape), n_iters=3, mode="sampled", seed=6, lr=0.02)
    np.testing.assert_array_equal(a.theta, b.theta)
    np.testing.assert_array_equal(a.J, b.J)
    assert not np.array_equal(a.theta, c.theta)


def test_driver_history_records_exact_diagnostics():
    mdp = refpg.envs.garnet(6, 3, 2, seed=0, gamma=0.9)
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta0 = np.random.default_rng(0).normal(size=pol.theta_shape)
    history = run("trpo", mdp, pol, theta0, n_iters=4, max_kl=0.02)
    theta = theta0
    for rec, res in zip(history.records, history.results):
        assert rec.J_before == pytest.approx(refpg.objective(mdp, pol, theta), rel=1e-12)
        assert rec.mean_kl == pytest.approx(refpg.kl_divergence(mdp, pol, res.theta, theta_old=theta), rel=1e-10, abs=1e-15)
        ratio = pol.probs(res.theta) / pol.probs(theta)
        assert rec.ratio_min == pytest.approx(ratio.min(), rel=1e-10)
        assert rec.ratio_max == pytest.approx(ratio.max(), rel=1e-10)
        assert rec.accepted == res.accepted and rec.step_fraction == res.step_fraction
        theta = res.theta
    np.testing.assert_array_equal(history.theta, theta)
    assert history.column("J").shape == (4,)


def test_driver_bad_input():
    mdp = refpg.envs.two_state()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    with pytest.raises(refpg.errors.InvalidInputError, match="algorithm should be one of"):
        run("a2c", mdp, pol, np.zeros((2, 2)), n_iters=1)
    with pytest.raises(refpg.errors.InvalidInputError, match="n_iters should be >= 1"):
        run("npg", mdp, pol, np.zeros((2, 2)), n_iters=0, eta=1.0)
    with pytest.raises(refpg.errors.ShapeError, match="theta0 should have shape"):
        run("npg", mdp, pol, np.zeros(3), n_iters=1, eta=1.0)
