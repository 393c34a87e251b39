"""NPG (Agarwal et al. 2021, Lemma 5.2 and Theorem 5.3) and REINFORCE steps, exact and sampled."""

import math
import re

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

import refpg
from refpg import errors
from refpg import strategies as rst
from refpg.algorithms import SampleConfig, collect
from refpg.algorithms.npg import npg_bound, npg_step
from refpg.algorithms.reinforce import reinforce_step
from refpg.sampling import sample_episodes, sample_steps
from tests.helpers import assert_identity, high_signal_episodic

CASES = rst.mdp_policy_theta(kinds=("tabular", "log_linear"), max_states=5, max_actions=3)
ETAS = st.sampled_from([0.01, 0.1, 1.0, 10.0, 100.0])
# Continuing and episodic MDPs; gamma = 1 (proper MDPs) for the monotonicity lemma only,
# since Theorem 5.3's bound is infinite there.
MDPS = st.one_of(rst.mdps(max_states=5, max_actions=3), rst.mdps(max_states=5, max_actions=3, episodic=True))
MDPS_WITH_GAMMA_ONE = st.one_of(MDPS, rst.mdps(max_states=5, max_actions=3, episodic=True, max_gamma=1.0))


def cosine(x, y):
    x, y = np.ravel(x), np.ravel(y)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


# -- NPG, exact mode ---------------------------------------------------------------

@given(st.data(), MDPS_WITH_GAMMA_ONE, ETAS)
def test_npg_tabular_improves_V_in_every_state(data, mdp, eta):
    # [Agarwal2021] Lemma 5.2: V^{t+1}(s) >= V^t(s) for every s, any eta > 0.
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta = data.draw(rst.thetas(pol))
    V = refpg.evaluate(mdp, pol.probs(theta)).V
    for t in range(3):
        theta = npg_step(mdp, pol, theta, eta=eta).theta
        V_new = refpg.evaluate(mdp, pol.probs(theta)).V
        note(f"step {t}: V {V} -> {V_new}")
        scale = max(1.0, float(np.abs(V).max()))
        assert np.all(V_new >= V - 1e-10 * scale)
        V = V_new


@given(MDPS, ETAS)
def test_npg_tabular_meets_agarwal_theorem_5_3_from_the_uniform_policy(mdp, eta):
    # V*(s) - V^T(s) <= log|A|/(eta T) + R/((1-gamma)^2 T) for rho and every
    # state reachable from it (the minimum-norm update never touches the others).
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta = np.zeros(pol.theta_shape)
    opt = refpg.optimal_policy(mdp)
    reachable = refpg.evaluate(mdp, pol.probs(theta)).support
    scale = max(1.0, float(np.abs(opt.V).max()))
    for T in range(1, 31):
        theta = npg_step(mdp, pol, theta, eta=eta).theta
        ev = refpg.evaluate(mdp, pol.probs(theta))
        bound = npg_bound(mdp, eta, T)
        note(f"T={T}: V*-V^T = {opt.V - ev.V}, bound {bound}")
        assert opt.J - ev.J <= bound + 1e-10 * scale
        assert np.all((opt.V - ev.V)[reachable] <= bound + 1e-10 * scale)


def test_npg_leaves_states_unreachable_from_rho_unchanged_yet_improves_their_value():
    # State 1 is never reached from rho = e_0 (state 0 is absorbing), so its
    # d is 0 and the minimum-norm natural gradient is 0 there.
    P = np.zeros((3, 2, 3))
    P[0, :, 0] = 1.0
    P[1, 0, 2] = P[1, 1, 0] = 1.0
    P[2, :, 2] = 1.0
    r = np.array([[1.0, 0.0], [0.0, 0.5], [0.0, 1.0]])
    mdp = refpg.TabularMDP(P, r, [1.0, 0.0, 0.0], 0.9)
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta = np.zeros(pol.theta_shape)
    res = npg_step(mdp, pol, theta, eta=1.0)
    assert not res.direction[1:].any() and np.array_equal(res.theta[1:], theta[1:])
    assert res.direction[0, 0] > res.direction[0, 1]
    V_old = refpg.evaluate(mdp, pol.probs(theta)).V
    V_new = refpg.evaluate(mdp, pol.probs(res.theta)).V
    assert np.all(V_new >= V_old)


@given(CASES, ETAS)
def test_npg_exact_step_is_theta_plus_eta_times_the_natural_gradient(case, eta):
    mdp, pol, theta = case
    res = npg_step(mdp, pol, theta, eta=eta)
    nat = refpg.natural_gradient(mdp, pol, theta)
    assert np.array_equal(res.direction, nat) and np.array_equal(res.theta, theta + eta * nat)
    assert np.array_equal(res.gradient, refpg.policy_gradient(mdp, pol, theta))
    assert res.cg is None and res.data is None and res.mode == "exact" and res.eta == eta
    assert res.J_before == refpg.objective(mdp, pol, theta)
    assert res.J_after == refpg.objective(mdp, pol, res.theta)


# -- NPG, sampled mode --------------------------------------------------------------

def garnet_case(kind, seed=0, critic="batch", n_envs=8):
    mdp = refpg.envs.garnet(5, 3, 2, seed=seed, gamma=0.9)
    rng = np.random.default_rng(seed)
    pol = refpg.TabularSoftmax.for_mdp(mdp) if kind == "tabular" else refpg.LogLinear(rng.normal(size=(5, 3, 3)))
    theta = 0.5 * rng.normal(size=pol.theta_shape)
    data = collect(mdp, pol.probs(theta), SampleConfig(n_envs=n_envs, n_steps=64, critic=critic), rng=rng)
    return mdp, pol, theta, data


@pytest.mark.parametrize("kind", ["tabular", "log_linear"])
@pytest.mark.parametrize("fisher", ["empirical", "kl_hessian"])
def test_npg_sampled_direction_solves_the_batch_fisher_system(kind, fisher):
    mdp, pol, theta, data = garnet_case(kind)
    res = npg_step(mdp, pol, theta, eta=0.5, mode="sampled", data=data, fisher=fisher, cg_iters=pol.n_params)
    M = data.states.size
    jac = pol.log_prob_jacobian(theta)
    scores = jac[data.states * pol.n_actions + data.actions]
    H = 1 / (1 - mdp.gamma)  # the policy gradient theorem's factor: res.gradient estimates grad J
    np.testing.assert_allclose(res.gradient.ravel(), H * scores.T @ data.advantages / M, rtol=1e-10, atol=1e-12)
    if fisher == "empirical":
        F = refpg.empirical_fisher_estimate(pol, theta, data.batch)
    else:
        pi = pol.probs(theta).ravel()
        w = np.repeat(np.bincount(data.states, minlength=mdp.n_states) / M, mdp.n_actions) * pi
        F = jac.T @ (w[:, None] * jac)
    assert res.cg.converged
    np.testing.assert_allclose(F @ res.direction.ravel(), res.gradient.ravel(), rtol=0,
                               atol=1e-8 * np.abs(res.gradient).max())
    assert np.array_equal(res.theta, theta + 0.5 * res.direction)
    assert res.data is data


def test_npg_sampled_direction_estimates_the_exact_natural_gradient():
    # Tabular NPG is per-state, so the batch's state distribution does not
    # matter; the batch gradient carries 1/(1-gamma), so x ~ F^+ grad J.
    mdp, pol, theta, data = garnet_case("tabular", critic="exact", n_envs=256)
    x = npg_step(mdp, pol, theta, eta=1.0, mode="sampled", data=data, cg_iters=pol.n_params).direction
    x = x - x.mean(axis=1, keepdims=True)  # the null space: per-state constants
    y = refpg.natural_gradient(mdp, pol, theta)
    assert cosine(x, y) > 0.99 and 0.9 < np.linalg.norm(x) / np.linalg.norm(y) < 1.1


def test_npg_sampled_with_rng_is_reproducible():
    mdp, pol, theta, _ = garnet_case("log_linear")
    a = npg_step(mdp, pol, theta, eta=0.1, mode="sampled", rng=np.random.default_rng(5), damping=0.1)
    b = npg_step(mdp, pol, theta, eta=0.1, mode="sampled", rng=np.random.default_rng(5), damping=0.1)
    assert np.array_equal(a.theta, b.theta) and a.cg.residual_norms == b.cg.residual_norms


# -- NPG bound ----------------------------------------------------------------------

def test_npg_bound_is_agarwal_theorem_5_3_with_the_reward_span():
    mdp = refpg.envs.garnet(4, 3, 2, seed=1, gamma=0.8)  # rewards in [0, 1]
    R = float(mdp.r.max() - mdp.r.min())
    assert_identity(npg_bound(mdp, 0.5, 7), math.log(3) / (0.5 * 7) + R / (0.2 ** 2 * 7))
    assert_identity(npg_bound(mdp, 0.5, 7, reward_span=1.0), math.log(3) / 3.5 + 1 / (0.04 * 7))
    proper = high_signal_episodic(gamma=1.0)
    assert npg_bound(proper, 1.0, 1) == math.inf


@pytest.mark.parametrize("kwargs, message", [
    (dict(eta=0.0, T=1), "eta should be > 0.0, actual 0.0"),
    (dict(eta=1.0, T=0), "T should be >= 1, actual 0"),
    (dict(eta=1.0, T=1.5), "T should be an integer, actual 1.5"),
    (dict(eta=1.0, T=1, reward_span=-1.0), "reward_span should be >= 0.0, actual -1.0"),
])
def test_npg_bound_refuses_bad_arguments(kwargs, message):
    with pytest.raises(errors.InvalidInputError, match=re.escape(message)):
        npg_bound(refpg.envs.garnet(3, 2, 2, seed=0), **kwargs)


# -- REINFORCE ----------------------------------------------------------------------

@given(st.one_of(CASES, rst.mdp_policy_theta(max_states=5, max_actions=3, episodic=True, max_gamma=1.0)),
       st.sampled_from([1e-3, 0.1, 10.0]))
def test_reinforce_exact_step_is_theta_plus_lr_times_the_policy_gradient(case, lr):
    mdp, pol, theta = case
    res = reinforce_step(mdp, pol, theta, lr=lr)
    g = refpg.policy_gradient(mdp, pol, theta)
    assert np.array_equal(res.gradient, g) and np.array_equal(res.theta, theta + lr * g)
    assert res.batch is None and res.mode == "exact"
    assert res.J_before == refpg.objective(mdp, pol, theta)
    assert res.J_after == refpg.objective(mdp, pol, res.theta)


@pytest.mark.parametrize("kind", ["tabular", "log_linear"])
@pytest.mark.parametrize("baseline", [None, "exact"])
def test_reinforce_sampled_direction_agrees_with_the_exact_gradient(kind, baseline):
    mdp = high_signal_episodic()
    rng = np.random.default_rng(0)
    pol = refpg.TabularSoftmax.for_mdp(mdp) if kind == "tabular" else refpg.LogLinear(
        rng.normal(size=(mdp.n_states, mdp.n_actions, 4)))
    theta = 0.3 * rng.normal(size=pol.theta_shape)
    res = reinforce_step(mdp, pol, theta, lr=0.1, mode="sampled", rng=np.random.default_rng(1),
                         n_episodes=10_000, baseline=baseline)
    g = refpg.policy_gradient(mdp, pol, theta)
    # About 0.9998 on these seeds; 0.99 leaves room for any seed.
    assert cosine(res.gradient, g) > 0.99
    assert np.array_equal(res.theta, theta + 0.1 * res.gradient)


def test_reinforce_on_a_given_step_batch_uses_its_complete_episodes():
    mdp = high_signal_episodic()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta = np.zeros(pol.theta_shape)
    batch = sample_steps(mdp, pol.probs(theta), 16, 50, rng=np.random.default_rng(2))
    V = refpg.evaluate(mdp, pol.probs(theta)).V
    res = reinforce_step(mdp, pol, theta, lr=0.5, mode="sampled", batch=batch, baseline=V)
    expected = refpg.reinforce_gradient_estimate(pol, theta, batch, mdp.gamma, baseline=V)
    assert np.array_equal(res.gradient, expected)
    assert res.batch is batch
    exact_baseline = reinforce_step(mdp, pol, theta, lr=0.5, mode="sampled", batch=batch, baseline="exact")
    assert np.array_equal(exact_baseline.gradient, expected)


def test_reinforce_sampled_with_rng_is_reproducible():
    mdp = high_signal_episodic()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta = np.zeros(pol.theta_shape)
    a = reinforce_step(mdp, pol, theta, lr=1.0, mode="sampled", rng=np.random.default_rng(3))
    batch = sample_episodes(mdp, pol.probs(theta), 100, rng=np.random.default_rng(3))
    b = reinforce_step(mdp, pol, theta, lr=1.0, mode="sampled", batch=batch)
    assert np.array_equal(a.theta, b.theta)


# -- bad input ----------------------------------------------------------------------

def _case():
    mdp = high_signal_episodic()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    return mdp, pol, np.zeros(pol.theta_shape)


@pytest.mark.parametrize("kwargs, message", [
    (dict(eta=0.0), "eta should be > 0.0, actual 0.0"),
    (dict(eta=-1.0), "eta should be > 0.0, actual -1.0"),
    (dict(eta=1.0, mode="bogus"), "mode should be one of ('exact', 'sampled'), actual 'bogus'"),
    (dict(eta=1.0, mode="sampled"), "rng is required in mode='sampled'"),
    (dict(eta=1.0, rng=np.random.default_rng(0)), "rng is only used in mode='sampled'"),
    (dict(eta=1.0, fisher="kl"), "fisher should be one of ('kl_hessian', 'empirical'), actual 'kl'"),
    (dict(eta=1.0, cg_iters=0), "cg_iters should be >= 1, actual 0"),
    (dict(eta=1.0, damping=-1.0), "damping should be >= 0.0, actual -1.0"),
])
def test_npg_step_refuses_bad_arguments_naming_them(kwargs, message):
    mdp, pol, theta = _case()
    with pytest.raises(errors.InvalidInputError, match=re.escape(message)):
        npg_step(mdp, pol, theta, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=0.0), "lr should be > 0.0, actual 0.0"),
    (dict(lr=math.inf), "lr should be a finite real number, actual inf"),
    (dict(lr=1.0, mode="bogus"), "mode should be one of ('exact', 'sampled'), actual 'bogus'"),
    (dict(lr=1.0, mode="sampled"), "rng is required in mode='sampled' (np.random.default_rng(seed)) "
                                   "unless batch is given"),
    (dict(lr=1.0, rng=np.random.default_rng(0)), "rng is only used in mode='sampled'"),
    (dict(lr=1.0, baseline="exact"), "baseline is only used in mode='sampled'"),
    (dict(lr=1.0, n_episodes=10), "n_episodes is only used in mode='sampled'"),
    (dict(lr=1.0, variant="total"), "variant is only used in mode='sampled'"),
    (dict(lr=1.0, mode="sampled", rng=np.random.default_rng(0), baseline="V"),
     "baseline should be an array (S,), 'exact' or None, actual 'V'"),
    (dict(lr=1.0, mode="sampled", rng=np.random.default_rng(0), baseline=np.zeros(2)),
     "baseline should have shape (4,), actual shape (2,)"),
    (dict(lr=1.0, mode="sampled", rng=np.random.default_rng(0), n_episodes=0), "n_episodes should be >= 1, actual 0"),
])
def test_reinforce_step_refuses_bad_arguments_naming_them(kwargs, message):
    mdp, pol, theta = _case()
    with pytest.raises(errors.InvalidInputError, match=re.escape(message)):
        reinforce_step(mdp, pol, theta, **kwargs)


def test_reinforce_step_refuses_a_batch_from_another_policy():
    mdp, pol, theta = _case()
    other = pol.probs(theta + np.array([[2.0, 0.0, 0.0]] * 4))
    batch = sample_episodes(mdp, other, 50, rng=np.random.default_rng(0))
    with pytest.raises(errors.InvalidInputError, match="batch should be sampled under theta"):
        reinforce_step(mdp, pol, theta, lr=1.0, mode="sampled", batch=batch)
    with pytest.raises(errors.InvalidInputError, match="cannot be combined with a given batch"):
        reinforce_step(mdp, pol, theta, lr=1.0, mode="sampled",
                       batch=sample_episodes(mdp, pol.probs(theta), 5, rng=np.random.default_rng(0)),
                       n_episodes=5)
