"""Exact derivatives against finite differences, torch autograd and closed forms."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import refpg
from refpg import strategies as rst
from tests.helpers import assert_identity, central_difference

torch_ref = pytest.importorskip("tests.torch_reference")

both = ("tabular", "log_linear")


def setting(**kw):
    return rst.mdp_policy_theta(kinds=both, max_abs=2.0, max_states=5, max_actions=3, **kw)


# -- policy gradient -----------------------------------------------------------------

@given(setting(max_gamma=0.9))
def test_policy_gradient_matches_central_differences(case):
    mdp, pol, theta = case
    fd = central_difference(lambda t: refpg.objective(mdp, pol, t), theta)
    g = refpg.policy_gradient(mdp, pol, theta)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8 * max(1.0, np.abs(fd).max()))


@given(setting())
def test_policy_gradient_matches_torch_autograd(case):
    mdp, pol, theta = case
    g = refpg.policy_gradient(mdp, pol, theta)
    g_torch = torch_ref.gradient(mdp, pol, theta)
    np.testing.assert_allclose(g, g_torch, rtol=1e-9, atol=1e-12 * max(1.0, np.abs(g_torch).max()))


@given(setting(episodic=True, min_states=2, min_gamma=1.0, max_gamma=1.0))
def test_policy_gradient_matches_torch_autograd_for_gamma_one(case):
    mdp, pol, theta = case
    g = refpg.policy_gradient(mdp, pol, theta)
    g_torch = torch_ref.gradient(mdp, pol, theta)
    np.testing.assert_allclose(g, g_torch, rtol=1e-9, atol=1e-12 * max(1.0, np.abs(g_torch).max()))


@given(rst.mdp_policy_theta(kinds=("tabular",), max_states=5, max_actions=3))
def test_tabular_policy_gradient_is_d_pi_A_over_one_minus_gamma(case):
    mdp, pol, theta = case
    ev = refpg.evaluate(mdp, pol.probs(theta))
    expected = ev.d[:, None] * ev.pi * ev.A / (1 - mdp.gamma)
    assert_identity(refpg.policy_gradient(mdp, pol, theta), expected)


@given(st.data(), rst.mdps(max_states=4, max_actions=3))
def test_one_hot_log_linear_equals_tabular_softmax(data, mdp):
    tab = refpg.TabularSoftmax.for_mdp(mdp)
    lin = refpg.LogLinear.one_hot(mdp.n_states, mdp.n_actions)
    theta = data.draw(rst.thetas(tab))
    assert_identity(lin.probs(theta.ravel()), tab.probs(theta))
    assert_identity(refpg.policy_gradient(mdp, lin, theta.ravel()),
                    refpg.policy_gradient(mdp, tab, theta).ravel())
    assert_identity(refpg.fisher_matrix(mdp, lin, theta.ravel()), refpg.fisher_matrix(mdp, tab, theta))
    # The least-squares solve of the log-linear path cuts singular values below
    # rcond * max, so a state visited with d(s) ~ 1e-40 (gamma ~ 1e-38) is, to
    # it, unvisited; the tabular closed form still sees d > 0. Compare where
    # every visited state's occupancy is resolvable.
    ev = refpg.evaluate(mdp, tab.probs(theta))
    assume(ev.d[ev.support].min() > 1e-8)
    assert_identity(refpg.natural_gradient(mdp, lin, theta.ravel()),
                    refpg.natural_gradient(mdp, tab, theta).ravel(),
                    scale=max(1, np.abs(refpg.evaluate(mdp, tab.probs(theta)).A).max() / (1 - mdp.gamma)),
                    rtol=1e-8)


# -- Fisher matrix ------------------------------------------------------------------------

@given(setting())
def test_fisher_matrix_is_symmetric_psd_and_matches_autograd_outer_products(case):
    mdp, pol, theta = case
    F = refpg.fisher_matrix(mdp, pol, theta)
    np.testing.assert_array_equal(F, F.T)
    assert np.linalg.eigvalsh(F).min() >= -1e-12 * max(1.0, np.abs(F).max())
    assert_identity(F, torch_ref.fisher_outer_products(mdp, pol, theta))


@given(setting())
def test_fisher_matrix_is_the_hessian_of_mean_kl_at_theta_old(case):
    mdp, pol, theta = case
    assert_identity(refpg.fisher_matrix(mdp, pol, theta), torch_ref.mean_kl_hessian(mdp, pol, theta))


@given(setting(), st.data())
def test_fisher_vector_product_equals_dense_fisher_times_vector(case, data):
    mdp, pol, theta = case
    v = data.draw(rst.thetas(pol))
    Fv = refpg.fisher_vector_product(mdp, pol, theta, v)
    F = refpg.fisher_matrix(mdp, pol, theta)
    assert_identity(Fv.ravel(), F @ v.ravel())


# -- natural gradient ----------------------------------------------------------------------

@given(rst.mdp_policy_theta(kinds=("tabular",), max_states=5, max_actions=3))
def test_tabular_natural_gradient_is_the_pseudo_inverse_solution(case):
    mdp, pol, theta = case
    ev = refpg.evaluate(mdp, pol.probs(theta))
    # numpy's pinv cuts singular values below rcond * max: a state with
    # d(s) ~ 1e-13 (gamma ~ 1e-12) is unvisited to it, not to the closed form.
    assume(ev.d[ev.support].min() > 1e-8)
    x = refpg.natural_gradient(mdp, pol, theta)
    expected = np.where(ev.d[:, None] > 0, (ev.A - ev.A.mean(1, keepdims=True)) / (1 - mdp.gamma), 0.0)
    assert_identity(x, expected)
    # Moore-Penrose: F x = g, and x lies in the row space of F (minimum norm).
    F = refpg.fisher_matrix(mdp, pol, theta)
    g = refpg.policy_gradient(mdp, pol, theta)
    scale = max(1.0, np.abs(x).max())
    assert_identity(F @ x.ravel(), g.ravel(), scale=scale * max(1.0, np.abs(F).max()))
    np.testing.assert_allclose(x.ravel(), np.linalg.pinv(F, rcond=1e-12, hermitian=True) @ g.ravel(),
                               rtol=1e-6, atol=1e-6 * scale)


@given(rst.mdp_policy_theta(kinds=("tabular",), max_states=5, max_actions=3), st.sampled_from([0.1, 1.0, 10.0]))
def test_natural_step_and_advantage_step_give_the_same_policy(case, eta):
    mdp, pol, theta = case
    ev = refpg.evaluate(mdp, pol.probs(theta))
    a = pol.probs(theta + eta * refpg.natural_gradient(mdp, pol, theta))
    b = pol.probs(theta + eta * ev.A / (1 - mdp.gamma))
    assert_identity(a[ev.support], b[ev.support])


@given(rst.mdp_policy_theta(kinds=("log_linear",), max_states=5, max_actions=3))
def test_log_linear_natural_gradient_is_minimum_norm_solution(case):
    mdp, pol, theta = case
    ev = refpg.evaluate(mdp, pol.probs(theta))
    assume(ev.d[ev.support].min() > 1e-8)  # see the tabular test above
    F = refpg.fisher_matrix(mdp, pol, theta)
    g = refpg.policy_gradient(mdp, pol, theta)
    x = refpg.natural_gradient(mdp, pol, theta)
    scale = max(1.0, np.abs(x).max()) * max(1.0, np.abs(F).max())
    assert_identity(F @ x, g, scale=scale, rtol=1e-9)
    # No component along the null space of F.
    w, U = np.linalg.eigh(F)
    null = U[:, w <= 1e-12 * max(1.0, w.max())]
    assert_identity(null.T @ x, np.zeros(null.shape[1]), scale=max(1.0, np.abs(x).max()), rtol=1e-8)


# -- surrogate and KL ------------------------------------------------------------------------

@given(setting(), st.data())
def test_surrogate_matches_J_and_its_gradient_at_theta_old(case, data):
    mdp, pol, theta_old = case
    J = refpg.objective(mdp, pol, theta_old)
    assert_identity(refpg.surrogate(mdp, pol, theta_old, theta_old=theta_old), J)
    assert_identity(refpg.surrogate_gradient(mdp, pol, theta_old, theta_old=theta_old),
                    refpg.policy_gradient(mdp, pol, theta_old))
    theta = data.draw(rst.thetas(pol, max_abs=2.0))
    fd = central_difference(lambda t: refpg.surrogate(mdp, pol, t, theta_old=theta_old), theta)
    np.testing.assert_allclose(refpg.surrogate_gradient(mdp, pol, theta, theta_old=theta_old), fd,
                               rtol=1e-6, atol=1e-8 * max(1.0, np.abs(fd).max()))


@given(setting(), st.data())
def test_kl_is_zero_at_theta_old_and_its_gradient_matches_differences(case, data):
    mdp, pol, theta_old = case
    assert refpg.kl_divergence(mdp, pol, theta_old, theta_old=theta_old) == 0.0
    assert refpg.kl_divergence(mdp, pol, theta_old, theta_old=theta_old, reduction="max") == 0.0
    theta = data.draw(rst.thetas(pol, max_abs=2.0))
    assert refpg.kl_divergence(mdp, pol, theta, theta_old=theta_old) >= 0.0
    # The max KL is not differentiable where two visited states tie for the
    # maximum (kl_gradient then returns one subgradient): check it only where
    # the maximiser is unique by a margin the finite difference cannot cross.
    per_state = refpg.kl_divergence(mdp, pol, theta, theta_old=theta_old, reduction="none")
    visited = np.sort(per_state[refpg.evaluate(mdp, pol.probs(theta_old)).support])[::-1]
    unique_max = visited.size == 1 or visited[0] - visited[1] > 1e-6 * max(1.0, visited[0])
    for reduction in ("mean", "max") if unique_max else ("mean",):
        fd = central_difference(lambda t: refpg.kl_divergence(mdp, pol, t, theta_old=theta_old, reduction=reduction),
                                theta, h=1e-4)
        g = refpg.kl_gradient(mdp, pol, theta, theta_old=theta_old, reduction=reduction)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8 * max(1.0, np.abs(fd).max()),
                                   err_msg=reduction)


# -- numerical stability -----------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1e2, 1e3])
def test_softmax_is_stable_for_logits_up_to_1e3(scale):
    rng = np.random.default_rng(0)
    theta = scale * rng.choice([-1.0, 1.0], size=(6, 4)) * rng.random((6, 4))
    theta[0] = [scale, -scale, scale, -scale]
    pol = refpg.TabularSoftmax(6, 4)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        logp = pol.log_probs(theta)
        pi = pol.probs(theta)
    assert np.isfinite(logp).all() and np.isfinite(pi).all()
    np.testing.assert_allclose(pi.sum(1), 1.0, rtol=0, atol=1e-15)
    # Ties at the maximum get exactly equal mass.
    assert pi[0, 0] == pi[0, 2] == 0.5
    mdp = refpg.envs.garnet(6, 4, 2, seed=1)
    for fn in (refpg.policy_gradient, refpg.natural_gradient, refpg.fisher_matrix):
        assert np.isfinite(fn(mdp, pol, theta)).all()


def test_log_linear_is_stable_for_large_logits():
    phi = np.array([[[1.0], [-1.0], [0.0]]])
    pol = refpg.LogLinear(phi)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        logp = pol.log_probs(np.array([1e3]))
    np.testing.assert_allclose(logp[0], [0.0, -2e3, -1e3], rtol=1e-15)


@given(rst.mdp_policy_theta())
def test_kl_gradient_is_exactly_zero_at_theta_old(mpt):
    # Not merely ~1e-17: Adam divides by sqrt(v), so round-off here would move
    # parameters by O(lr) in exact-mode PPO with a KL penalty.
    mdp, policy, theta = mpt
    for reduction in ("mean", "max"):
        g = refpg.kl_gradient(mdp, policy, theta, theta_old=theta, reduction=reduction)
        assert (g == 0.0).all(), (reduction, g)


def test_max_kl_at_gamma_one_ignores_terminal_states():
    # 0 -> terminal 1 under every action; only the terminal row of theta changes.
    P = np.zeros((2, 2, 2))
    P[:, :, 1] = 1.0
    mdp = refpg.TabularMDP(P, np.zeros((2, 2)), [1.0, 0.0], 1.0, [False, True])
    pol = refpg.TabularSoftmax(2, 2)
    theta_old, theta = np.zeros((2, 2)), np.array([[0.0, 0.0], [3.0, -3.0]])
    assert refpg.kl_divergence(mdp, pol, theta, theta_old=theta_old, reduction="max") == 0.0
    assert (refpg.kl_gradient(mdp, pol, theta, theta_old=theta_old, reduction="max") == 0.0).all()
    assert refpg.trpo_bound(mdp, pol, theta, theta_old=theta_old).max_kl == 0.0
