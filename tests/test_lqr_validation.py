"""Bad input to refpg.lqr is refused with an error that names the argument and the offending entry."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import refpg
from refpg import lqr
from refpg.errors import (
    InvalidDiscountError,
    InvalidInputError,
    NonFiniteError,
    ProblemTooLargeError,
    RefpgDeprecationWarning,
    ShapeError,
)
from refpg.lqr import LinearGaussian, LQRSystem

GOOD = dict(A=[[0.5, 0.1], [0.0, 0.4]], B=[[0.0], [1.0]], Q=np.eye(2), R=[[1.0]], W=0.1 * np.eye(2),
            mu0=[1.0, 0.0], Sigma0=np.eye(2), gamma=0.9)


def system(**changes):
    return LQRSystem(**{**GOOD, **changes})


@pytest.mark.parametrize("changes, error, match", [
    (dict(A=[[1.0, 0.0]]), ShapeError, r"A should be square with at least one row, actual shape \(1, 2\)"),
    (dict(A=np.zeros((0, 0))), ShapeError, "A should be square with at least one row"),
    (dict(A=[1.0, 2.0]), ShapeError, "A should have 2 dimensions"),
    (dict(B=[[1.0], [1.0], [1.0]]), ShapeError, r"B should have shape \(2, m\) with m >= 1"),
    (dict(B=np.zeros((2, 0))), ShapeError, r"B should have shape \(2, m\) with m >= 1"),
    (dict(Q=np.eye(3)), ShapeError, r"Q should have shape \(2, 2\)"),
    (dict(Q=[[1.0, 1.0], [2.0, 1.0]]), InvalidInputError,
     r"^Q should be symmetric, actual Q\[0, 1\] = 1.0 != Q\[1, 0\] = 2.0"),
    (dict(Q=[[1.0, 0.0], [0.0, -1.0]]), InvalidInputError,
     r"Q should be positive semidefinite, actual Q\[1, 1\] = -1.0 < 0"),
    (dict(Q=[[1.0, 2.0], [2.0, 1.0]]), InvalidInputError,
     r"Q should be positive semidefinite, actual smallest eigenvalue -1.0"),
    (dict(R=[[0.0]]), InvalidInputError, r"R should be positive definite, actual smallest eigenvalue 0.0"),
    (dict(B=np.eye(2), R=[[1.0, 1.0], [1.0, 1.0]]), InvalidInputError, "R should be positive definite"),
    (dict(B=np.eye(2), R=[[1.0, 0.5], [0.4, 1.0]]), InvalidInputError, r"R should be symmetric, actual R\[0, 1\]"),
    (dict(R=[[-1.0]]), InvalidInputError, r"R should be positive definite, actual R\[0, 0\] = -1.0 < 0"),
    (dict(W=[[1.0, 0.0], [0.0, -0.5]]), InvalidInputError, r"W should be positive semidefinite, actual W\[1, 1\]"),
    (dict(W=[[0.0, 0.1], [0.0, 0.0]]), InvalidInputError, r"W should be symmetric, actual W\[0, 1\] = 0.1"),
    (dict(Sigma0=[[1.0, 3.0], [3.0, 1.0]]), InvalidInputError,
     "Sigma0 should be positive semidefinite, actual smallest eigenvalue -2.0"),
    (dict(mu0=[1.0]), ShapeError, r"mu0 should have shape \(2,\)"),
    (dict(A=[[0.5, np.nan], [0.0, 0.4]]), NonFiniteError, r"A\[0, 1\] is nan"),
    (dict(Q=[[np.inf, 0.0], [0.0, 1.0]]), NonFiniteError, r"Q\[0, 0\] is inf"),
    (dict(B=np.array([[True], [False]])), InvalidInputError, "B should be a real numeric array, actual dtype bool"),
    (dict(gamma=0.0), InvalidDiscountError, r"gamma should be in \(0, 1\), actual 0.0"),
    (dict(gamma=1.0), InvalidDiscountError, r"gamma should be in \(0, 1\), actual 1.0"),
    (dict(gamma=1.5), InvalidDiscountError, r"gamma should be in \(0, 1\)"),
    (dict(gamma=float("nan")), InvalidDiscountError, r"gamma should be in \(0, 1\)"),
    (dict(gamma=True), InvalidDiscountError, "gamma should be a real number in"),
    (dict(gamma="0.9"), InvalidDiscountError, "gamma should be a real number in"),
])
def test_a_bad_system_is_refused_by_name(changes, error, match):
    with pytest.raises(error, match=match):
        system(**changes)


def test_symmetry_is_accepted_within_its_tolerance_and_the_symmetric_part_is_stored():
    Q = np.array([[1.0, 0.5], [0.5 + 1e-14, 1.0]])
    sys1 = system(Q=Q)
    np.testing.assert_array_equal(sys1.Q, sys1.Q.T)
    with pytest.raises(InvalidInputError, match="Q should be symmetric"):
        system(Q=np.array([[1.0, 0.5], [0.5 + 1e-9, 1.0]]))


def test_the_system_is_immutable_and_owns_copies():
    A = np.array(GOOD["A"])
    sys1 = system(A=A)
    A[0, 0] = 100.0
    assert sys1.A[0, 0] == 0.5
    with pytest.raises(ValueError):
        sys1.A[0, 0] = 1.0
    with pytest.raises(AttributeError, match="immutable"):
        sys1.gamma = 0.5
    np.testing.assert_array_equal(sys1.initial_second_moment, np.eye(2) + np.outer([1.0, 0.0], [1.0, 0.0]))
    assert repr(sys1) == "LQRSystem(state_dim=2, action_dim=1, gamma=0.9)"


UNSTABLE = np.array([[-10.0, 0.0]])  # A - B K = [[0.5, 0.1], [10, 0.4]]: spectral radius 1.38 after sqrt(0.9)


def test_an_unstable_gain_is_refused_with_its_spectral_radius():
    sys1 = system()
    radius = sys1.spectral_radius(UNSTABLE)
    assert radius > 1
    with pytest.raises(InvalidInputError, match=rf"K does not stabilise the system: the spectral radius of "
                                                rf"sqrt\(gamma\) \(A - B K\) is {radius!r}; expected < 1"):
        lqr.cost(sys1, UNSTABLE, [0.0])


def _calls(sys1, K, log_std):
    pol = LinearGaussian.for_system(sys1)
    theta = pol.pack(K, log_std)
    good = pol.pack(np.zeros((1, 2)), log_std)
    x, u = np.zeros(2), np.zeros(1)
    return {
        "evaluate": lambda: lqr.evaluate(sys1, K, log_std),
        "value_matrix": lambda: lqr.value_matrix(sys1, K),
        "value_constant": lambda: lqr.value_constant(sys1, K, log_std),
        "state_value": lambda: lqr.state_value(sys1, K, log_std, x),
        "action_value": lambda: lqr.action_value(sys1, K, log_std, x, u),
        "advantage": lambda: lqr.advantage(sys1, K, log_std, x, u),
        "second_moment": lambda: lqr.second_moment(sys1, K, log_std),
        "cost": lambda: lqr.cost(sys1, K, log_std),
        "cost_from_second_moment": lambda: lqr.cost_from_second_moment(sys1, K, log_std),
        "gain_error": lambda: lqr.gain_error(sys1, K),
        "cost_gradient": lambda: lqr.cost_gradient(sys1, K, log_std),
        "natural_cost_gradient": lambda: lqr.natural_cost_gradient(sys1, K, log_std),
        "objective": lambda: lqr.objective(sys1, pol, theta),
        "policy_gradient": lambda: lqr.policy_gradient(sys1, pol, theta),
        "fisher_matrix": lambda: lqr.fisher_matrix(sys1, pol, theta),
        "fisher_vector_product": lambda: lqr.fisher_vector_product(sys1, pol, theta, theta),
        "natural_gradient": lambda: lqr.natural_gradient(sys1, pol, theta),
        "surrogate": lambda: lqr.surrogate(sys1, pol, good, theta_old=theta),
        "surrogate_gradient": lambda: lqr.surrogate_gradient(sys1, pol, good, theta_old=theta),
        "kl_divergence": lambda: lqr.kl_divergence(sys1, pol, good, theta_old=theta),
        "kl_gradient": lambda: lqr.kl_gradient(sys1, pol, good, theta_old=theta),
    }


@pytest.mark.parametrize("name", list(_calls(system(), np.zeros((1, 2)), np.zeros(1))))
def test_every_infinite_horizon_quantity_refuses_an_unstable_gain_and_takes_a_stable_one(name):
    sys1 = system()
    _calls(sys1, np.zeros((1, 2)), np.zeros(1))[name]()  # a stable gain: no error
    with pytest.raises(InvalidInputError, match=r"does not stabilise the system: the spectral radius of sqrt\(gamma\)"):
        _calls(sys1, UNSTABLE, np.zeros(1))[name]()


@pytest.mark.parametrize("K, log_std, error, match", [
    (np.zeros((2, 2)), [0.0], ShapeError, r"K should have shape \(1, 2\)"),
    ([[np.nan, 0.0]], [0.0], NonFiniteError, r"K\[0, 0\] is nan"),
    (np.zeros((1, 2)), [0.0, 0.0], ShapeError, r"log_std should have shape \(1,\)"),
    (np.zeros((1, 2)), [101.0], InvalidInputError, r"log_std\[0\] is 101.0; expected \|log_std\| <= 100"),
    (np.zeros((1, 2)), [-101.0], InvalidInputError, r"expected \|log_std\| <= 100"),
    (np.zeros((1, 2)), [np.inf], NonFiniteError, r"log_std\[0\] is inf"),
])
def test_a_bad_gain_or_log_std_is_refused_by_name(K, log_std, error, match):
    with pytest.raises(error, match=match):
        lqr.cost(system(), K, log_std)


def test_bad_states_and_actions_are_refused_by_name():
    sys1, K, log_std = system(), np.zeros((1, 2)), np.zeros(1)
    with pytest.raises(ShapeError, match=r"states should have shape \(\.\.\., 2\), actual shape \(3,\)"):
        lqr.state_value(sys1, K, log_std, np.zeros(3))
    with pytest.raises(ShapeError, match="states and actions should have the same batch shape"):
        lqr.action_value(sys1, K, log_std, np.zeros((4, 2)), np.zeros((3, 1)))
    with pytest.raises(ShapeError, match=r"actions should have shape \(\.\.\., 1\)"):
        lqr.advantage(sys1, K, log_std, np.zeros((4, 2)), np.zeros((4, 2)))


def test_the_theta_level_functions_refuse_a_mismatched_policy_or_system():
    sys1 = system()
    with pytest.raises(InvalidInputError, match="policy should be a refpg.lqr.LinearGaussian, actual TabularSoftmax"):
        lqr.objective(sys1, refpg.TabularSoftmax(2, 1), np.zeros((2, 1)))
    with pytest.raises(ShapeError, match="policy has state_dim=3, action_dim=1 but the system has state_dim=2"):
        lqr.objective(sys1, LinearGaussian(3, 1), np.zeros(4))
    with pytest.raises(InvalidInputError, match="system should be a refpg.lqr.LQRSystem, actual TabularMDP"):
        lqr.cost(refpg.envs.two_state(), np.zeros((1, 2)), [0.0])
    pol = LinearGaussian.for_system(sys1)
    with pytest.raises(ShapeError, match=r"theta should have shape \(3,\)"):
        lqr.policy_gradient(sys1, pol, np.zeros(4))
    with pytest.raises(InvalidInputError, match=r"K \(from theta_old\) does not stabilise"):
        lqr.kl_divergence(sys1, pol, np.zeros(3), theta_old=pol.pack(UNSTABLE, [0.0]))
    with pytest.raises(ShapeError, match=r"v should have shape \(3,\)"):
        lqr.fisher_vector_product(sys1, pol, np.zeros(3), np.zeros(2))


def test_theta_old_by_position_still_works_with_a_deprecation_warning():
    sys1 = system()
    pol = LinearGaussian.for_system(sys1)
    theta, theta_old = np.array([0.1, 0.2, -0.3]), np.zeros(3)
    for fn in (lqr.surrogate, lqr.surrogate_gradient, lqr.kl_divergence, lqr.kl_gradient):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            expected = fn(sys1, pol, theta, theta_old=theta_old)
        with pytest.warns(RefpgDeprecationWarning, match=rf"{fn.__name__}\(system, policy, theta, theta_old=theta_old\)"):
            np.testing.assert_array_equal(fn(sys1, pol, theta, theta_old), expected)


def test_the_dense_fisher_matrix_is_refused_when_too_large_before_any_work():
    big = lqr.random_system(0, 200, 100)  # 20,100 parameters
    pol = LinearGaussian.for_system(big)
    with pytest.raises(ProblemTooLargeError, match="20100 parameters, more than DENSE_FISHER_MAX_PARAMS"):
        lqr.fisher_matrix(big, pol, np.zeros(pol.n_params))


def test_the_kl_functions_take_the_policies_by_name_and_check_their_shapes():
    K, l = np.zeros((1, 2)), np.zeros(1)
    with pytest.raises(TypeError):
        lqr.mean_kl(K, l, K, l, np.eye(2))
    with pytest.raises(ShapeError, match=r"K_new should have shape \(1, 2\)"):
        lqr.mean_kl(K_old=K, log_std_old=l, K_new=np.zeros((2, 2)), log_std_new=l, second_moment=np.eye(2))
    with pytest.raises(ShapeError, match=r"second_moment should have shape \(2, 2\)"):
        lqr.mean_kl(K_old=K, log_std_old=l, K_new=K, log_std_new=l, second_moment=np.eye(3))
    with pytest.raises(ShapeError, match=r"log_std_new should have shape \(1,\)"):
        lqr.state_kl(np.zeros(2), K_old=K, log_std_old=l, K_new=K, log_std_new=np.zeros(2))
    with pytest.raises(ShapeError, match=r"states should have shape \(\.\.\., 2\)"):
        lqr.state_kl(np.zeros(3), K_old=K, log_std_old=l, K_new=K, log_std_new=l)


def test_finite_horizon_takes_any_gain_but_refuses_a_bad_horizon_or_an_overflow():
    sys1 = system()
    fh = lqr.finite_horizon(sys1, UNSTABLE, [0.0], 5)  # a finite horizon needs no stability
    assert np.isfinite(fh.cost)
    for horizon, match in ((0, "horizon should be >= 1"), (2.0, "horizon should be an integer"),
                           (True, "horizon should be an integer")):
        with pytest.raises(InvalidInputError, match=match):
            lqr.finite_horizon_cost(sys1, UNSTABLE, [0.0], horizon)
    with pytest.raises(InvalidInputError, match=r"overflows float64 at horizon=2000.*spectral radius of A - B K is"):
        lqr.finite_horizon_cost_gradient(sys1, 100 * UNSTABLE, [0.0], 2000)


def test_the_optimal_gain_refuses_an_unstabilisable_system_naming_the_mode():
    # The first state is unstable after the discount (2 sqrt(0.9) > 1) and B cannot move it.
    sys1 = system(A=[[2.0, 0.0], [0.0, 0.5]], B=[[0.0], [1.0]])
    with pytest.raises(InvalidInputError, match=r"not stabilisable under the discount: the mode of sqrt\(gamma\) A "
                                                r"with eigenvalue 1.89737.* is not controllable through B"):
        lqr.optimal_gain(sys1)
    # stable but uncontrollable modes are fine
    K = lqr.optimal_gain(system(A=[[0.9, 0.0], [0.0, 0.5]], B=[[0.0], [1.0]])).K
    assert np.isfinite(K).all()


def test_the_optimal_gain_refuses_a_riccati_equation_without_a_stabilising_solution():
    # sqrt(gamma) A has its eigenvalue on the unit circle and Q does not see it.
    g = 0.81
    sys1 = LQRSystem(A=[[1 / np.sqrt(g)]], B=[[1.0]], Q=[[0.0]], R=[[1.0]], W=[[0.0]], mu0=[0.0], Sigma0=[[1.0]],
                     gamma=g)
    with pytest.raises(InvalidInputError, match=r"no stabilising solution: policy iteration settles on a gain with "
                                                r"spectral radius of sqrt\(gamma\) \(A - B K\) = 0.99999"):
        lqr.optimal_gain(sys1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(state_dim=0, action_dim=1), "state_dim should be >= 1"),
    (dict(state_dim=2, action_dim=1, gamma=1.0), r"gamma should be in \(0, 1\)"),
    (dict(state_dim=2, action_dim=1, radius=1.0), r"radius should be a real number in \[0, 1\)"),
])
def test_random_system_refuses_bad_arguments(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        lqr.random_system(0, **kwargs)


def test_random_system_has_the_requested_open_loop_radius():
    sys1 = lqr.random_system(3, 4, 2, gamma=0.8, radius=0.7)
    np.testing.assert_allclose(sys1.spectral_radius(np.zeros((2, 4))), 0.7, rtol=1e-12)


@pytest.mark.parametrize("M, match", [
    ([[1.0, 0.0], [0.0, -5.0]], r"second_moment should be positive semidefinite, actual second_moment\[1, 1\] = -5.0"),
    ([[1.0, 3.0], [-3.0, 1.0]], r"second_moment should be symmetric, actual second_moment\[0, 1\] = 3.0"),
    ([[1.0, 2.0], [2.0, 1.0]], "second_moment should be positive semidefinite, actual smallest eigenvalue -1.0"),
])
def test_mean_kl_refuses_a_second_moment_that_is_not_one(M, match):
    # Such an M gives a negative or meaningless "KL" (-2.0 for the first): never a silent number.
    with pytest.raises(InvalidInputError, match=match):
        lqr.mean_kl(K_old=np.zeros((1, 2)), log_std_old=np.zeros(1), K_new=np.ones((1, 2)),
                    log_std_new=np.zeros(1), second_moment=M)
