"""The linear-Gaussian policy's sample-level interface, and the same interface on the tabular parameterisations.

log pi against scipy's multivariate normal; the two Jacobian products against
central differences and torch autograd; sampling against its declared moments
(refpg.stats.mean_test, alpha 1e-6, fixed seeds), with the log-std-as-log-variance
mistake (stable-baselines #1058) rejected by the same test.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

import refpg
from refpg import strategies as rst
from refpg.errors import InvalidInputError, ShapeError
from refpg.lqr import LOG_STD_BOUND, LinearGaussian
from refpg.stats import mean_test
from tests.helpers import central_difference

torch = pytest.importorskip("torch")


def _floats(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


@st.composite
def gaussian_samples(draw, *, max_batch=4):
    """(policy, theta, states (b, n), actions (b, m)); shrinks towards n = m = 1, theta = 0, x = u = 0."""
    n, m = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    b = draw(st.integers(1, max_batch))
    pol = LinearGaussian(n, m)
    K = draw(hnp.arrays(np.float64, (m, n), elements=_floats(-2.0, 2.0)))
    log_std = draw(hnp.arrays(np.float64, (m,), elements=_floats(-2.0, 1.5)))
    X = draw(hnp.arrays(np.float64, (b, n), elements=_floats(-3.0, 3.0)))
    U = draw(hnp.arrays(np.float64, (b, m), elements=_floats(-3.0, 3.0)))
    return pol, pol.pack(K, log_std), X, U


def test_theta_is_vec_k_column_major_then_log_std():
    pol = LinearGaussian(state_dim=3, action_dim=2)
    K = np.arange(6.0).reshape(2, 3)
    theta = pol.pack(K, [7.0, 8.0])
    np.testing.assert_array_equal(theta, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0, 7.0, 8.0])
    np.testing.assert_array_equal(theta[:6], K.ravel(order="F"))
    K2, log_std = pol.unpack(theta)
    np.testing.assert_array_equal(K2, K)
    np.testing.assert_array_equal(log_std, [7.0, 8.0])
    assert pol.theta_shape == (8,) and pol.n_params == 8
    assert pol == LinearGaussian(3, 2) and hash(pol) == hash(LinearGaussian(3, 2)) and pol != LinearGaussian(2, 3)


@given(gaussian_samples())
def test_log_probs_are_scipys_multivariate_normal_summed_over_action_dimensions(case):
    pol, theta, X, U = case
    K, log_std = pol.unpack(theta)
    expected = [stats.multivariate_normal(-K @ x, np.diag(np.exp(2 * log_std))).logpdf(u) for x, u in zip(X, U)]
    np.testing.assert_allclose(pol.sample_log_probs(theta, X, U), expected, rtol=1e-12, atol=1e-12)


@given(gaussian_samples(), st.data())
def test_log_prob_jvp_matches_central_differences_and_torch(case, data):
    pol, theta, X, U = case
    v = data.draw(hnp.arrays(np.float64, pol.theta_shape, elements=_floats(-1.0, 1.0)))
    jvp = pol.sample_log_prob_jvp(theta, v, X, U)
    for i in range(len(X)):
        fd = central_difference(lambda th: pol.sample_log_probs(th, X[i], U[i]), theta) @ v
        np.testing.assert_allclose(jvp[i], fd, rtol=1e-6, atol=1e-8 * max(1.0, abs(fd)))
    th = torch.tensor(theta, requires_grad=True)
    n, m = pol.state_dim, pol.action_dim
    # theta[:mn].reshape(n, m) is K^T (vec(K) column-major), so the mean -K x is -X @ that
    jac = torch.autograd.functional.jacobian(
        lambda t: torch.distributions.Normal(-torch.tensor(X) @ t[:m * n].reshape(n, m), torch.exp(t[m * n:]))
        .log_prob(torch.tensor(U)).sum(-1), th).numpy()
    np.testing.assert_allclose(jvp, jac @ v, rtol=1e-10, atol=1e-10 * max(1.0, np.abs(jac @ v).max()))
    np.testing.assert_allclose(pol.sample_log_prob_jacobian(theta, X, U), jac, rtol=1e-10,
                               atol=1e-10 * max(1.0, np.abs(jac).max()))


@given(gaussian_samples(), st.data())
def test_log_prob_vjp_is_the_adjoint_of_the_jvp_and_keeps_leading_axes(case, data):
    pol, theta, X, U = case
    v = data.draw(hnp.arrays(np.float64, pol.theta_shape, elements=_floats(-1.0, 1.0)))
    W = data.draw(hnp.arrays(np.float64, (2, len(X)), elements=_floats(-1.0, 1.0)))
    g = pol.sample_log_prob_vjp(theta, W, X, U)
    assert g.shape == (2, pol.n_params)
    jac = pol.sample_log_prob_jacobian(theta, X, U)
    np.testing.assert_allclose(g, W @ jac, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(W @ jac).max()))
    lhs = W[0] @ pol.sample_log_prob_jvp(theta, v, X, U)
    np.testing.assert_allclose(lhs, g[0] @ v, rtol=1e-10, atol=1e-10 * max(1.0, abs(lhs)))
    # batch axes of any shape: a (b,) batch reshaped to (b, 1) gives the same sums
    np.testing.assert_allclose(pol.sample_log_prob_vjp(theta, W[:, :, None], X[:, None], U[:, None]), g,
                               rtol=1e-12, atol=1e-12 * max(1.0, np.abs(g).max()))


@given(gaussian_samples())
def test_entropy_is_torchs_summed_over_dimensions(case):
    pol, theta, _, _ = case
    _, log_std = pol.unpack(theta)
    expected = float(torch.distributions.Normal(torch.zeros(len(log_std)), torch.tensor(np.exp(log_std)))
                     .entropy().sum())
    np.testing.assert_allclose(pol.entropy(theta), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_sampled_actions_have_the_declared_mean_and_variance_and_a_log_variance_reading_is_rejected(seed):
    pol = LinearGaussian(2, 2)
    K, log_std = np.array([[0.5, -1.0], [0.2, 0.3]]), np.array([0.4, -0.7])
    theta = pol.pack(K, log_std)
    X = np.random.default_rng(100 + seed).standard_normal((20_000, 2))
    U = pol.sample_actions(theta, X, np.random.default_rng(seed))
    noise = U + X @ K.T
    samples = np.concatenate([noise, noise ** 2], axis=1)
    result = mean_test(samples, np.concatenate([np.zeros(2), np.exp(2 * log_std)]), alpha=1e-6)
    assert not result.rejected, str(result)
    # log_std read as a log-variance: variance exp(log_std) instead of exp(2 log_std)
    assert mean_test(samples, np.concatenate([np.zeros(2), np.exp(log_std)]), alpha=1e-6).rejected


@pytest.mark.parametrize("call, error, match", [
    (lambda p, th: p.sample_log_probs(th, np.zeros((3, 2)), np.zeros((3, 1))), ShapeError, r"states should have shape \(\.\.\., 3\)"),
    (lambda p, th: p.sample_log_probs(th, np.zeros((3, 3)), np.zeros((2, 1))), ShapeError, "same batch shape"),
    (lambda p, th: p.sample_log_probs(th, np.zeros((3, 3)), np.zeros((3, 2))), ShapeError, r"actions should have shape \(\.\.\., 1\)"),
    (lambda p, th: p.sample_log_probs(th, np.full((1, 3), np.nan), np.zeros((1, 1))), InvalidInputError, r"states\[0, 0\] is nan"),
    (lambda p, th: p.sample_log_prob_vjp(th, np.zeros(2), np.zeros((3, 3)), np.zeros((3, 1))), ShapeError, r"w should have shape \(\.\.\., 3\)"),
    (lambda p, th: p.sample_log_prob_jvp(th, np.zeros(3), np.zeros((3, 3)), np.zeros((3, 1))), ShapeError, r"v should have shape \(4,\)"),
    (lambda p, th: p.sample_log_probs(th[:3], np.zeros((3, 3)), np.zeros((3, 1))), ShapeError, r"theta should have shape \(4,\)"),
    (lambda p, th: p.sample_log_probs(np.r_[th[:3], LOG_STD_BOUND + 1], np.zeros((1, 3)), np.zeros((1, 1))),
     InvalidInputError, r"theta\[3\] \(log_std\[0\]\) is 101.0; expected \|log_std\| <= 100"),
    (lambda p, th: p.sample_actions(th, np.zeros((2, 2)), 0), ShapeError, "states should have shape"),
    (lambda p, th: LinearGaussian(0, 1), InvalidInputError, "state_dim should be >= 1"),
])
def test_bad_inputs_to_the_policy_are_refused_by_name(call, error, match):
    pol = LinearGaussian(3, 1)
    with pytest.raises(error, match=match):
        call(pol, np.zeros(4))


# -- the same interface on the tabular parameterisations --------------------------------------------

@settings(max_examples=30)
@given(rst.mdp_policy_theta(kinds=("tabular", "log_linear"), max_states=4, max_actions=3), st.data())
def test_tabular_sample_methods_index_the_tables(case, data):
    mdp, pol, theta = case
    S, A = pol.n_states, pol.n_actions
    b = data.draw(st.integers(1, 6))
    s = data.draw(hnp.arrays(np.int64, (b,), elements=st.integers(0, S - 1)))
    a = data.draw(hnp.arrays(np.int64, (b,), elements=st.integers(0, A - 1)))
    v = data.draw(rst.thetas(pol))
    w = data.draw(hnp.arrays(np.float64, (2, b), elements=_floats(-1.0, 1.0)))
    np.testing.assert_array_equal(pol.sample_log_probs(theta, s, a), pol.log_probs(theta)[s, a])
    np.testing.assert_allclose(pol.sample_log_prob_jvp(theta, v, s, a), pol.log_prob_jvp(theta, v)[s, a],
                               rtol=1e-12, atol=1e-12)
    jac = pol.log_prob_jacobian(theta)[s * A + a]          # one row per sample
    g = pol.sample_log_prob_vjp(theta, w, s, a)
    assert g.shape == (2,) + pol.theta_shape
    np.testing.assert_allclose(g.reshape(2, -1), w @ jac, rtol=1e-12, atol=1e-12)


def test_tabular_sample_vjp_adds_repeated_samples():
    pol = refpg.TabularSoftmax(2, 2)
    theta = np.array([[0.3, -0.1], [1.0, 0.0]])
    once = pol.sample_log_prob_vjp(theta, np.array([2.0]), np.array([1]), np.array([0]))
    twice = pol.sample_log_prob_vjp(theta, np.array([1.0, 1.0]), np.array([1, 1]), np.array([0, 0]))
    np.testing.assert_allclose(twice, once, rtol=1e-15)


@pytest.mark.parametrize("states, actions, w, error, match", [
    ([0, 2], [0, 1], None, InvalidInputError, r"states\[1\] is 2 but the policy has 2 states"),
    ([0, 1], [0, -1], None, InvalidInputError, r"actions\[1\] is -1 but the policy has 2 actions"),
    ([0.0, 1.0], [0, 1], None, InvalidInputError, "states should be an integer array, actual dtype float64"),
    ([0, 1], [True, False], None, InvalidInputError, "actions should be an integer array, actual dtype bool"),
    ([0, 1], [0], None, ShapeError, "states and actions should have the same shape"),
    ([0, 1], [0, 1], np.zeros(3), ShapeError, r"w should have shape \(\.\.\., 2\)"),
])
def test_tabular_sample_methods_refuse_bad_samples_by_name(states, actions, w, error, match):
    pol = refpg.TabularSoftmax(2, 2)
    theta = np.zeros((2, 2))
    with pytest.raises(error, match=match):
        if w is None:
            pol.sample_log_probs(theta, np.asarray(states), np.asarray(actions))
        else:
            pol.sample_log_prob_vjp(theta, w, np.asarray(states), np.asarray(actions))


# -- per-segment sums (one gradient per episode) ------------------------------------------------------

def _segment_case(pol, theta, states, actions, rng):
    batch = np.shape(states) if isinstance(pol, refpg.Parameterization) else np.shape(states)[:-1]
    w = rng.standard_normal(batch)
    seg = rng.integers(-1, 3, size=batch)
    per = pol.sample_log_prob_vjp(theta, w, states, actions, segments=seg, n_segments=4)
    expected = np.stack([pol.sample_log_prob_vjp(theta, np.where(seg == e, w, 0.0), states, actions)
                         for e in range(4)])
    return per, expected


@pytest.mark.parametrize("kind", ["gaussian", "tabular", "log_linear"])
def test_segment_sums_are_the_masked_sums_and_segment_minus_one_is_left_out(kind):
    rng = np.random.default_rng(7)
    if kind == "gaussian":
        pol = LinearGaussian(3, 2)
        theta = pol.pack(rng.standard_normal((2, 3)), [-0.3, 0.4])
        states, actions = rng.standard_normal((5, 4, 3)), rng.standard_normal((5, 4, 2))
    else:
        pol = refpg.TabularSoftmax(3, 2) if kind == "tabular" else refpg.LogLinear(rng.standard_normal((3, 2, 4)))
        theta = rng.standard_normal(pol.theta_shape)
        states, actions = rng.integers(0, 3, (5, 4)), rng.integers(0, 2, (5, 4))
    per, expected = _segment_case(pol, theta, states, actions, rng)
    assert per.shape == (4,) + pol.theta_shape
    np.testing.assert_allclose(per, expected, rtol=1e-12, atol=1e-12)
    assert np.all(per[3] == 0.0)  # segment 3 drew no sample: rng.integers(-1, 3) < 3


@pytest.mark.parametrize("pol, theta, states, actions", [
    (LinearGaussian(1, 1), np.zeros(2), np.zeros((3, 1)), np.zeros((3, 1))),
    (refpg.TabularSoftmax(2, 2), np.zeros((2, 2)), np.array([0, 1, 1]), np.array([1, 0, 1])),
], ids=["gaussian", "tabular"])
def test_bad_segments_are_refused_by_name(pol, theta, states, actions):
    w = np.ones(3)
    with pytest.raises(InvalidInputError, match="segments and n_segments go together"):
        pol.sample_log_prob_vjp(theta, w, states, actions, segments=np.zeros(3, dtype=int))
    with pytest.raises(InvalidInputError, match=r"segments\[2\] is 2; expected -1 \(left out\) or 0 <= segment < n_segments = 2"):
        pol.sample_log_prob_vjp(theta, w, states, actions, segments=np.array([0, 1, 2]), n_segments=2)
    with pytest.raises(InvalidInputError, match="segments should be an integer array"):
        pol.sample_log_prob_vjp(theta, w, states, actions, segments=np.zeros(3), n_segments=2)
    with pytest.raises(ShapeError, match="segments should have the shape"):
        pol.sample_log_prob_vjp(theta, w, states, actions, segments=np.zeros(2, dtype=int), n_segments=2)
    with pytest.raises(ShapeError, match="w should have the"):
        pol.sample_log_prob_vjp(theta, np.ones((2, 3)), states, actions, segments=np.zeros(3, dtype=int), n_segments=2)
