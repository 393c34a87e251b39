"""The public Jacobian products of the parameterizations, against a dense Jacobian.

The exact Fisher-vector product only sees ``log_prob_jvp`` through
``E_pi[u]``-centred quantities, so a jvp that is wrong by a per-state constant
(``u[s, a] + c[s]``) passes every F v test. Here ``log_prob_jvp`` and
``log_prob_vjp`` are compared directly with ``log_prob_jacobian`` and with
central finite differences of ``log_probs``, in directions that include
per-state constants, and the leading batch axes of ``log_prob_vjp`` and the
``pi=None`` defaults are exercised. The rest of the parameterization's
contract (log-softmax, sizes, shapes and the entry named in each refusal,
LogLinear's private read-only features) follows at the end.
"""

import re
import types

import numpy as np
import pytest

from refpg import errors
from refpg.policies import Parameterization
from refpg.policies import LogLinear, TabularSoftmax, log_softmax

S, A, D = 3, 4, 5
FD_STEP = 1e-5
#: Central differences of log pi (entries O(1), third derivatives O(1)) are
#: accurate to about FD_STEP**2 + eps / FD_STEP ~ 1e-10.
FD_ATOL = 1e-8
EXACT_RTOL = 1e-13


def tabular():
    theta = np.random.default_rng(0).normal(size=(S, A))
    return TabularSoftmax(S, A), theta


def log_linear():
    rng = np.random.default_rng(1)
    return LogLinear(rng.normal(size=(S, A, D))), rng.normal(size=D)


POLICIES = [pytest.param(tabular, id="TabularSoftmax"), pytest.param(log_linear, id="LogLinear")]


def fd_jacobian(policy, theta):
    """Central finite differences of log_probs, shape (S*A, n_params)."""
    flat = theta.ravel()
    cols = []
    for i in range(flat.size):
        e = np.zeros_like(flat)
        e[i] = FD_STEP
        plus = policy.log_probs((flat + e).reshape(theta.shape))
        minus = policy.log_probs((flat - e).reshape(theta.shape))
        cols.append(((plus - minus) / (2 * FD_STEP)).ravel())
    return np.stack(cols, axis=1)


def directions(policy, theta):
    """Tangents in theta: random ones, unit vectors, and per-state constants.

    For the tabular policy a per-state constant ``v[s, :] = c[s]`` leaves pi
    unchanged, so its jvp is exactly 0; for the one-hot-like directions of the
    log-linear policy a feature that is constant over the actions of a state
    behaves the same way.
    """
    rng = np.random.default_rng(2)
    dirs = [rng.normal(size=theta.shape) for _ in range(3)]
    dirs += [np.eye(theta.size)[i].reshape(theta.shape) for i in range(theta.size)]
    if isinstance(policy, TabularSoftmax):
        dirs.append(np.broadcast_to(rng.normal(size=(S, 1)), (S, A)).copy())
    return dirs


def weights(rng):
    """Weights over (s, a): random, and per-state constants (whose vjp is 0)."""
    return [rng.normal(size=(S, A)), np.broadcast_to(rng.normal(size=(S, 1)), (S, A)).copy(),
            np.eye(S * A)[5].reshape(S, A)]


@pytest.mark.parametrize("make", POLICIES)
def test_dense_jacobian_equals_finite_differences_of_log_probs(make):
    policy, theta = make()
    jac = policy.log_prob_jacobian(theta)
    assert jac.shape == (S * A, theta.size)
    np.testing.assert_allclose(jac, fd_jacobian(policy, theta), rtol=0, atol=FD_ATOL)


@pytest.mark.parametrize("make", POLICIES)
def test_jvp_equals_jacobian_times_v_including_per_state_constants(make):
    policy, theta = make()
    jac = policy.log_prob_jacobian(theta)
    fd = fd_jacobian(policy, theta)
    for v in directions(policy, theta):
        u = policy.log_prob_jvp(theta, v)
        assert u.shape == (S, A)
        np.testing.assert_allclose(u.ravel(), jac @ v.ravel(), rtol=EXACT_RTOL, atol=1e-13)
        np.testing.assert_allclose(u.ravel(), fd @ v.ravel(), rtol=0, atol=10 * FD_ATOL)


def test_tabular_jvp_of_a_per_state_constant_is_zero_and_of_a_unit_vector_is_its_column():
    policy, theta = tabular()
    pi = policy.probs(theta)
    c = np.arange(1.0, S + 1)[:, None] * np.ones((1, A))
    np.testing.assert_allclose(policy.log_prob_jvp(theta, c), np.zeros((S, A)), rtol=0, atol=1e-14)
    # d log pi(a|s) / d theta[1, 2] = 1[s = 1] (1[a = 2] - pi(2|1)).
    v = np.zeros((S, A))
    v[1, 2] = 1.0
    desired = np.zeros((S, A))
    desired[1] = -pi[1, 2]
    desired[1, 2] += 1.0
    np.testing.assert_allclose(policy.log_prob_jvp(theta, v), desired, rtol=EXACT_RTOL, atol=1e-15)


def test_log_linear_jvp_of_a_feature_constant_over_actions_is_zero():
    # A feature equal for all actions of a state moves every logit of that
    # state by the same amount: pi does not change. A jvp that forgot to centre
    # (u = phi @ v) returns the constant itself.
    rng = np.random.default_rng(3)
    phi = rng.normal(size=(S, A, 2))
    phi[:, :, 1] = rng.normal(size=(S, 1))
    policy = LogLinear(phi)
    theta = rng.normal(size=2)
    u = policy.log_prob_jvp(theta, np.array([0.0, 1.0]))
    np.testing.assert_allclose(u, np.zeros((S, A)), rtol=0, atol=1e-14)


@pytest.mark.parametrize("make", POLICIES)
def test_vjp_equals_jacobian_transpose_times_w_including_per_state_constants(make):
    policy, theta = make()
    jac = policy.log_prob_jacobian(theta)
    fd = fd_jacobian(policy, theta)
    for w in weights(np.random.default_rng(4)):
        g = policy.log_prob_vjp(theta, w)
        assert g.shape == theta.shape
        np.testing.assert_allclose(g.ravel(), jac.T @ w.ravel(), rtol=EXACT_RTOL, atol=1e-13)
        np.testing.assert_allclose(g.ravel(), fd.T @ w.ravel(), rtol=0, atol=10 * FD_ATOL)


@pytest.mark.parametrize("make", POLICIES)
def test_vjp_and_jvp_are_adjoint(make):
    # <w, J v> = <J^T w, v> for every pair: a sign or index slip in one of
    # the two breaks it.
    policy, theta = make()
    rng = np.random.default_rng(5)
    for _ in range(5):
        v, w = rng.normal(size=theta.shape), rng.normal(size=(S, A))
        lhs = float(np.sum(w * policy.log_prob_jvp(theta, v)))
        rhs = float(np.sum(policy.log_prob_vjp(theta, w) * v))
        np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("batch", [(2,), (2, 3)])
@pytest.mark.parametrize("make", POLICIES)
def test_vjp_keeps_leading_batch_axes_and_maps_each_batch_entry_separately(make, batch):
    policy, theta = make()
    w = np.random.default_rng(6).normal(size=batch + (S, A))
    g = policy.log_prob_vjp(theta, w)
    assert g.shape == batch + theta.shape
    for idx in np.ndindex(*batch):
        np.testing.assert_allclose(g[idx], policy.log_prob_vjp(theta, w[idx]),
                                   rtol=EXACT_RTOL, atol=1e-14, err_msg=f"batch index {idx}")


@pytest.mark.parametrize("make", POLICIES)
def test_pi_none_defaults_equal_passing_pi_explicitly(make):
    policy, theta = make()
    pi = policy.probs(theta)
    rng = np.random.default_rng(7)
    v, w = rng.normal(size=theta.shape), rng.normal(size=(2, S, A))
    np.testing.assert_array_equal(policy.log_prob_jvp(theta, v), policy.log_prob_jvp(theta, v, pi))
    np.testing.assert_array_equal(policy.log_prob_vjp(theta, w), policy.log_prob_vjp(theta, w, pi))
    np.testing.assert_array_equal(policy.log_prob_jacobian(theta), policy.log_prob_jacobian(theta, pi))
    # ... and pi is really used when given: another policy's pi changes the result.
    other = policy.probs(theta + rng.normal(size=theta.shape))
    assert not np.allclose(policy.log_prob_jvp(theta, v, other), policy.log_prob_jvp(theta, v))
    assert not np.allclose(policy.log_prob_vjp(theta, w, other), policy.log_prob_vjp(theta, w))


# -- LogLinear's features: a private, read-only copy -------------------------------------

def test_log_linear_features_do_not_alias_the_callers_array():
    rng = np.random.default_rng(8)
    phi = rng.normal(size=(S, A, D))
    theta = rng.normal(size=D)
    original = phi.copy()
    policy = LogLinear(phi)
    before = policy.log_probs(theta).copy()
    phi[...] = 0.0
    np.testing.assert_array_equal(policy.features, original)
    np.testing.assert_array_equal(policy.log_probs(theta), before)
    assert not np.shares_memory(policy.features, phi)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
def test_log_linear_stored_features_are_read_only(dtype):
    phi = np.arange(S * A * 2, dtype=dtype).reshape(S, A, 2)
    policy = LogLinear(phi)
    assert not policy.features.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        policy.features[0, 0, 0] = 1.0
    assert not np.shares_memory(policy.features, phi)


# -- the rest of a parameterization's contract --------------------------------------------

def raises(exc, msg):
    return pytest.raises(exc, match=re.escape(msg))


def test_log_softmax_is_exact_for_logits_far_apart():
    # Without subtracting the row maximum exp(1000) overflows; subtracting the
    # minimum instead overflows too.
    actual = log_softmax(np.array([[1000.0, 0.0], [-1000.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(actual, [[0.0, -1000.0], [-1000.0, 0.0], [-np.log(2), -np.log(2)]],
                               rtol=1e-15, atol=0)


@pytest.mark.parametrize("make", POLICIES)
def test_probs_are_the_softmax_of_the_logits(make):
    policy, theta = make()
    z = policy.logits(theta)
    desired = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(policy.probs(theta), desired, rtol=1e-14)
    np.testing.assert_allclose(policy.log_probs(theta), np.log(desired), rtol=1e-14)


def test_float32_theta_is_computed_in_float64():
    policy, theta = tabular()
    theta32 = theta.astype(np.float32)
    out = policy.log_probs(theta32)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, policy.log_probs(theta32.astype(np.float64)))


@pytest.mark.parametrize("make", POLICIES)
def test_n_params_is_the_size_of_theta(make):
    policy, theta = make()
    assert policy.n_params == theta.size
    assert policy.theta_shape == theta.shape


def test_theta_of_the_wrong_shape_is_refused_naming_theta():
    policy = TabularSoftmax(S, A)
    msg = f"theta should have shape {(S, A)}, actual shape {(A, S)}"
    with raises(errors.ShapeError, msg):
        policy.log_probs(np.zeros((A, S)))
    with raises(errors.ShapeError, f"theta should have shape {(S, A)}, actual shape {(S * A,)}"):
        policy.validate_theta(np.zeros(S * A))


def test_a_nan_in_theta_is_named_in_theta_not_in_the_logits():
    policy, theta = tabular()
    theta[1, 2] = np.nan
    with raises(errors.NonFiniteError, "theta[1, 2] is nan; expected a finite number"):
        policy.log_probs(theta)


def test_of_several_overflowing_logits_the_first_is_named():
    phi = np.zeros((S, A, 1))
    phi[1, 3, 0] = phi[2, 0, 0] = 1e300
    with np.errstate(over="ignore"), \
            raises(errors.NonFiniteError, "logits[1, 3] is inf for a finite theta"):
        LogLinear(phi).log_probs(np.array([1e10]))


@pytest.mark.parametrize("args, msg", [
    ((0, 2), "n_states should be >= 1, actual 0"),
    ((2, 0), "n_actions should be >= 1, actual 0"),
    ((True, 2), "n_states should be an integer, actual True"),
    ((2, 1.5), "n_actions should be an integer, actual 1.5"),
])
@pytest.mark.parametrize("build", [TabularSoftmax, LogLinear.one_hot], ids=["TabularSoftmax", "one_hot"])
def test_sizes_are_checked_naming_the_argument(build, args, msg):
    with raises(errors.InvalidInputError, msg):
        build(*args)


@pytest.mark.parametrize("shape, msg", [
    ((2, 0, 3), "features should have shape (S, A, d) with S, A, d >= 1, actual shape (2, 0, 3)"),
    ((0, 2, 3), "features should have shape (S, A, d) with S, A, d >= 1, actual shape (0, 2, 3)"),
    ((2, 3, 0), "features should have shape (S, A, d) with S, A, d >= 1, actual shape (2, 3, 0)"),
    ((2, 3), "features should have 3 dimensions, actual shape (2, 3)"),
])
def test_features_of_a_bad_shape_are_refused(shape, msg):
    with raises(errors.ShapeError, msg):
        LogLinear(np.zeros(shape))


def test_one_hot_log_linear_is_tabular_softmax_with_states_and_actions_in_order():
    theta = np.random.default_rng(9).normal(size=(S, A))  # S != A
    one_hot = LogLinear.one_hot(S, A)
    assert (one_hot.n_states, one_hot.n_actions) == (S, A)
    np.testing.assert_allclose(one_hot.log_probs(theta.ravel()), TabularSoftmax(S, A).log_probs(theta),
                               rtol=1e-15, atol=1e-15)


def test_for_mdp_takes_states_then_actions():
    policy = TabularSoftmax.for_mdp(types.SimpleNamespace(n_states=S, n_actions=A))
    assert policy.theta_shape == (S, A)


def test_tabular_equality_and_hash_follow_the_sizes():
    assert TabularSoftmax(S, A) == TabularSoftmax(S, A)
    assert hash(TabularSoftmax(S, A)) == hash(TabularSoftmax(S, A))
    assert TabularSoftmax(S, A) != TabularSoftmax(A, S)
    assert hash(TabularSoftmax(S, A)) != hash(TabularSoftmax(A, S))
    # Another kind of object with the same theta shape is not equal.
    assert TabularSoftmax(S, A) != types.SimpleNamespace(theta_shape=(S, A))
    assert TabularSoftmax(S, A) != LogLinear.one_hot(S, A)


# -- the base class ------------------------------------------------------------------------

@pytest.mark.parametrize("method, call", [
    ("theta_shape", lambda p: p.theta_shape),
    ("theta_shape", lambda p: p.n_params),
    ("logits", lambda p: p.logits(np.zeros(2))),
    ("log_prob_jvp", lambda p: p.log_prob_jvp(np.zeros(2), np.zeros(2))),
    ("log_prob_vjp", lambda p: p.log_prob_vjp(np.zeros(2), np.zeros((1, 2)))),
    ("log_prob_jacobian", lambda p: p.log_prob_jacobian(np.zeros(2))),
])
def test_a_parameterization_subclass_missing_a_method_says_which(method, call):
    class Bare(Parameterization):
        n_states, n_actions = 1, 2

    with pytest.raises(NotImplementedError, match=f"^Bare does not define {method}, which a refpg.Parameterization"):
        call(Bare())
