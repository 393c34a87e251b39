"""REINFORCE estimators against the exact gradient, statistically (docs/conventions.md).

Each test declares its family-wise false-alarm rate (refpg.stats.DEFAULT_ALPHA
= 1e-6, Bonferroni over coordinates), runs on fixed seeds, and shows power by
rejecting a deliberately wrong estimator with the same samples. Every episode
of `episodic_garnet` terminates, so no truncation bias exists to hide.
"""

import numpy as np
import pytest

import refpg
from refpg.estimators import (
    empirical_fisher_estimate,
    empirical_fisher_vector_product,
    gamma_free_gradient,
    reinforce_estimates,
    reinforce_gradient_estimate,
)
from refpg.sampling import sample_episodes, sample_steps
from refpg.stats import mean_test
from tests.helpers import assert_identity, episodic_garnet, high_signal_episodic

N_EPISODES = 200_000
BIAS = 1.05  # the "few percent" wrong estimator each test must reject


def setup(kind):
    mdp = high_signal_episodic()
    rng = np.random.default_rng(0)
    if kind == "tabular":
        pol = refpg.TabularSoftmax.for_mdp(mdp)
    else:
        pol = refpg.LogLinear(rng.normal(size=(mdp.n_states, mdp.n_actions, 4)))
    theta = 0.3 * rng.normal(size=pol.theta_shape)
    batch = sample_episodes(mdp, pol.probs(theta), N_EPISODES, rng=np.random.default_rng(1))
    return mdp, pol, theta, batch


@pytest.fixture(scope="module", params=["tabular", "log_linear"])
def case(request):
    return setup(request.param)


VARIANTS = {
    "reward_to_go": dict(variant="reward_to_go"),
    "total_return": dict(variant="total"),
    "reward_to_go_with_V_baseline": dict(variant="reward_to_go", baseline="V"),
    "total_return_with_V_baseline": dict(variant="total", baseline="V"),
    "reward_to_go_with_arbitrary_baseline": dict(variant="reward_to_go", baseline="noise"),
}


def _kwargs(spec, mdp, pol, theta):
    kw = dict(spec)
    if kw.get("baseline") == "V":
        kw["baseline"] = refpg.evaluate(mdp, pol.probs(theta)).V
    elif kw.get("baseline") == "noise":
        kw["baseline"] = np.random.default_rng(9).normal(size=mdp.n_states) * 0.5
    return kw


@pytest.mark.parametrize("name", VARIANTS)
def test_reinforce_with_gamma_t_is_unbiased_and_a_biased_copy_is_caught(case, name):
    mdp, pol, theta, batch = case
    est = reinforce_estimates(pol, theta, batch, mdp.gamma, **_kwargs(VARIANTS[name], mdp, pol, theta))
    assert est.shape == (N_EPISODES, *pol.theta_shape)
    exact = refpg.policy_gradient(mdp, pol, theta)
    result = mean_test(est, exact)
    assert not result.rejected, str(result)
    # Power: the same samples reject an estimator biased by 5%.
    assert mean_test(BIAS * est, exact).rejected


def test_gamma_free_estimator_is_biased_by_exactly_the_computed_amount(case):
    mdp, pol, theta, batch = case
    est = reinforce_estimates(pol, theta, batch, mdp.gamma, discount_weighting=False)
    exact = refpg.policy_gradient(mdp, pol, theta)
    biased_mean = gamma_free_gradient(mdp, pol, theta)
    bias = biased_mean - exact
    # Its mean is the computed expectation, not the gradient of J...
    assert not mean_test(est, biased_mean).rejected
    assert mean_test(est, exact).rejected
    # ...and the bias is large: a sizeable fraction of the gradient itself.
    assert np.linalg.norm(bias) > 0.1 * np.linalg.norm(exact)


def test_gamma_free_expectation_equals_gradient_when_gamma_is_one():
    mdp = episodic_garnet(seed=4, gamma=1.0)
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta = np.random.default_rng(1).normal(size=pol.theta_shape)
    assert_identity(gamma_free_gradient(mdp, pol, theta), refpg.policy_gradient(mdp, pol, theta))


def test_state_value_baseline_reduces_variance():
    """Documented case: high_signal_episodic(), tabular softmax, theta = 0.3 N(0, 1), seed 0.

    Total variance (trace of the covariance) of the per-episode reward-to-go
    estimator with and without b = V^pi; printed with -s.
    """
    mdp, pol, theta, batch = setup("tabular")
    V = refpg.evaluate(mdp, pol.probs(theta)).V
    plain = reinforce_estimates(pol, theta, batch, mdp.gamma)
    based = reinforce_estimates(pol, theta, batch, mdp.gamma, baseline=V)
    var_plain = plain.reshape(len(plain), -1).var(axis=0, ddof=1).sum()
    var_based = based.reshape(len(based), -1).var(axis=0, ddof=1).sum()
    print(f"\nREINFORCE total variance per episode: no baseline {var_plain:.4f}, "
          f"V baseline {var_based:.4f}, ratio {var_based / var_plain:.3f}")
    assert var_based < 0.7 * var_plain


def test_reinforce_gradient_estimate_is_the_mean_of_episode_estimates():
    mdp, pol, theta, batch = setup("tabular")
    est = reinforce_estimates(pol, theta, batch, mdp.gamma)
    assert_identity(reinforce_gradient_estimate(pol, theta, batch, mdp.gamma), est.mean(axis=0))


def test_episodes_from_the_step_sampler_give_the_same_estimates_as_a_list():
    """A continuing batch is split at dones; its complete episodes are estimated one by one."""
    mdp = episodic_garnet(seed=3)
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta = np.random.default_rng(0).normal(size=pol.theta_shape)
    batch = sample_steps(mdp, pol.probs(theta), 4, 40, rng=np.random.default_rng(5))
    est = reinforce_estimates(pol, theta, batch, mdp.gamma)
    eps = batch.episodes()
    assert len(eps) == est.shape[0]
    pi = pol.probs(theta)
    for k, ep in enumerate(eps):
        g = np.zeros(pol.theta_shape)
        T = len(ep.rewards)
        for t in range(T):
            G_t = sum(mdp.gamma ** (j - t) * ep.rewards[j] for j in range(t, T))
            score = -pi[ep.states[t]].copy()
            score[ep.actions[t]] += 1.0
            g[ep.states[t]] += mdp.gamma ** t * G_t * score
        assert_identity(est[k], g)


def test_empirical_fisher_is_unbiased_for_the_batch_state_distribution():
    mdp = episodic_garnet(seed=3)
    pol = refpg.LogLinear(np.random.default_rng(2).normal(size=(mdp.n_states, mdp.n_actions, 3)))
    theta = np.random.default_rng(3).normal(size=3)
    pi = pol.probs(theta)
    batch = sample_steps(mdp, pi, 200, 50, rng=np.random.default_rng(4), max_episode_steps=30)
    F_hat = empirical_fisher_estimate(pol, theta, batch)
    v = np.array([1.0, -2.0, 0.5])
    assert_identity(empirical_fisher_vector_product(pol, theta, batch, v), F_hat @ v)
    # With every action sampled at each visited state in proportion pi, the
    # empirical Fisher equals sum_s w(s) Cov_pi(score): check with the
    # state frequencies of the batch itself.
    w = np.bincount(batch.states[batch.valid], minlength=mdp.n_states) / batch.valid.sum()
    jac = pol.log_prob_jacobian(theta).reshape(mdp.n_states, mdp.n_actions, -1)
    F_states = np.einsum("s,sa,sad,sae->de", w, pi, jac, jac)
    np.testing.assert_allclose(F_hat, F_states, atol=0.05 * np.abs(F_states).max())
    assert np.linalg.eigvalsh(F_hat).min() > -1e-12


def test_bad_inputs():
    mdp, pol, theta, batch = episodic_garnet(), None, None, None
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta = np.zeros(pol.theta_shape)
    batch = sample_episodes(mdp, pol.probs(theta), 10, rng=np.random.default_rng(0))
    with pytest.raises(refpg.errors.InvalidInputError, match="variant should be one of"):
        reinforce_estimates(pol, theta, batch, 0.9, variant="sum")
    with pytest.raises(refpg.errors.ShapeError, match=r"baseline should have shape \(6,\)"):
        reinforce_estimates(pol, theta, batch, 0.9, baseline=np.zeros((6, 3)))
    with pytest.raises(refpg.errors.InvalidDiscountError, match="gamma should be in"):
        reinforce_estimates(pol, theta, batch, 1.5)
    with pytest.raises(refpg.errors.InvalidInputError, match="batch should be a refpg.sampling.Batch"):
        reinforce_estimates(pol, theta, {"states": 1}, 0.9)
    with pytest.raises(refpg.errors.InvalidInputError, match="but the policy has 2 states"):
        reinforce_estimates(refpg.TabularSoftmax(2, 3), np.zeros((2, 3)), batch, 0.9)
