"""Every bad input of docs/conventions.md gets a refpg error naming the argument and entry.

One test per case; each asserts the exception class and the message.
"""

import re

import numpy as np
import pytest
import scipy.sparse as sp

import refpg
from refpg import errors


def good():
    """A valid 2-state, 2-action MDP's arrays."""
    P = np.zeros((2, 2, 2))
    P[0, 0, 0] = P[1, 0, 1] = P[0, 1, 1] = P[1, 1, 0] = 1.0
    r = np.array([[1.0, 0.0], [2.0, 0.0]])
    return P, r, np.array([1.0, 0.0])


def raises(exc, msg):
    return pytest.raises(exc, match=re.escape(msg))


# -- transitions --------------------------------------------------------------

def test_P_row_not_summing_to_one_names_the_row():
    P, r, rho = good()
    P[1, 0] = [0.0, 0.98]
    with raises(errors.NotADistributionError, "P[1, 0, :] sums to 0.98; expected 1 within atol=1e-12"):
        refpg.TabularMDP(P, r, rho, 0.9)


def test_P_negative_entry_names_the_entry():
    P, r, rho = good()
    P[0, 1] = [-0.25, 1.25]
    with raises(errors.NegativeEntryError, "P[0, 1, 0] is -0.25; expected a probability >= 0"):
        refpg.TabularMDP(P, r, rho, 0.9)


def test_P_nan_names_the_entry():
    P, r, rho = good()
    P[1, 1, 0] = np.nan
    with raises(errors.NonFiniteError, "P[1, 1, 0] is nan"):
        refpg.TabularMDP(P, r, rho, 0.9)


def test_P_infinite_names_the_entry():
    P, r, rho = good()
    P[0, 0, 1] = np.inf
    with raises(errors.NonFiniteError, "P[0, 0, 1] is inf"):
        refpg.TabularMDP(P, r, rho, 0.9)


def test_P_wrong_shape():
    P, r, rho = good()
    with raises(errors.ShapeError, "P should have shape (2, 2, 2), actual shape (2, 2, 3)"):
        refpg.TabularMDP(np.concatenate([P, np.zeros((2, 2, 1))], axis=2), r, rho, 0.9)


def test_P_wrong_ndim():
    _, r, rho = good()
    with raises(errors.ShapeError, "P should have 3 dimensions, actual shape (2, 2)"):
        refpg.TabularMDP(np.eye(2), r, rho, 0.9)


def test_P_non_numeric():
    _, r, rho = good()
    with raises(errors.InvalidInputError, "P should be a real numeric array"):
        refpg.TabularMDP(np.full((2, 2, 2), "x"), r, rho, 0.9)


def test_sparse_P_row_not_summing_to_one():
    P, r, rho = good()
    P[1, 1] = [0.5, 0.0]
    rows = sp.csr_array(P.reshape(4, 2))
    with raises(errors.NotADistributionError, "P[1, 1, :] sums to 0.5; expected 1"):
        refpg.TabularMDP(rows, r, rho, 0.9)


def test_sparse_P_negative_entry():
    P, r, rho = good()
    P[1, 0] = [-0.5, 1.5]
    rows = sp.csr_array(P.reshape(4, 2))
    with raises(errors.NegativeEntryError, "P[1, 0, 0] is -0.5"):
        refpg.TabularMDP(rows, r, rho, 0.9)


def test_sparse_P_wrong_shape():
    _, r, rho = good()
    with raises(errors.ShapeError, "sparse P should have shape (S*A, S)"):
        refpg.TabularMDP(sp.csr_array(np.ones((3, 2)) / 2), r, rho, 0.9)


# -- rewards --------------------------------------------------------------------

def test_r_infinite_names_the_entry():
    P, r, rho = good()
    r[1, 0] = -np.inf
    with raises(errors.NonFiniteError, "r[1, 0] is -inf"):
        refpg.TabularMDP(P, r, rho, 0.9)


def test_r_nan_in_transition_reward():
    P, r, rho = good()
    R = np.zeros((2, 2, 2))
    R[0, 1, 1] = np.nan
    with raises(errors.NonFiniteError, "r[0, 1, 1] is nan"):
        refpg.TabularMDP(P, R, rho, 0.9)


def test_r_wrong_shape():
    P, _, rho = good()
    with raises(errors.ShapeError, "r should have shape (2, 2) or (2, 2, 2), actual shape (2,)"):
        refpg.TabularMDP(P, np.zeros(2), rho, 0.9)


def test_r_wrong_second_axis():
    P, _, rho = good()
    with raises(errors.ShapeError, "r should have shape (2, 2), actual shape (2, 3)"):
        refpg.TabularMDP(P, np.zeros((2, 3)), rho, 0.9)


# -- rho ------------------------------------------------------------------------------

def test_rho_not_a_distribution():
    P, r, _ = good()
    with raises(errors.NotADistributionError, "rho[:] sums to 0.5; expected 1 within atol=1e-12"):
        refpg.TabularMDP(P, r, [0.25, 0.25], 0.9)


def test_rho_negative():
    P, r, _ = good()
    with raises(errors.NegativeEntryError, "rho[1] is -0.5"):
        refpg.TabularMDP(P, r, [1.5, -0.5], 0.9)


def test_rho_nan():
    P, r, _ = good()
    with raises(errors.NonFiniteError, "rho[0] is nan"):
        refpg.TabularMDP(P, r, [np.nan, 1.0], 0.9)


def test_rho_wrong_shape():
    P, r, _ = good()
    with raises(errors.ShapeError, "rho should have shape (2,), actual shape (3,)"):
        refpg.TabularMDP(P, r, [1.0, 0.0, 0.0], 0.9)


# -- gamma ----------------------------------------------------------------------

@pytest.mark.parametrize("gamma", [1.5, -0.1, float("nan"), float("inf")])
def test_gamma_outside_unit_interval(gamma):
    P, r, rho = good()
    with raises(errors.InvalidDiscountError, f"gamma should be in [0, 1], actual {gamma!r}"):
        refpg.TabularMDP(P, r, rho, gamma)


@pytest.mark.parametrize("gamma", ["0.9", True, None, [0.9]])
def test_gamma_not_a_number(gamma):
    P, r, rho = good()
    with raises(errors.InvalidDiscountError, "gamma should be a real number"):
        refpg.TabularMDP(P, r, rho, gamma)


def test_gamma_one_on_improper_mdp():
    P, r, rho = good()  # no terminal state: every policy runs forever
    with raises(errors.ImproperMDPError, "gamma = 1 requires a proper MDP, but from state 0"):
        refpg.TabularMDP(P, r, rho, 1.0)


def test_gamma_one_improper_through_a_trap_reachable_from_rho():
    # State 0 can go to the terminal state 2 or to state 1, which can stay forever.
    P = np.zeros((3, 2, 3))
    P[0, 0, 2] = P[0, 1, 1] = 1.0
    P[1, 0, 1] = P[1, 1, 2] = 1.0
    P[2, :, 2] = 1.0
    terminal = np.array([False, False, True])
    # State 0 is a trap too: play a=1 there, then stay in state 1.
    with raises(errors.ImproperMDPError, "from state 0 (reachable from rho) some policy never reaches "
                                         "a terminal state (2 such states in all)"):
        refpg.TabularMDP(P, np.zeros((3, 2)), [1.0, 0.0, 0.0], 1.0, terminal)


def test_gamma_one_on_proper_mdp_is_accepted():
    P = np.zeros((2, 1, 2))
    P[0, 0] = [0.5, 0.5]
    P[1, 0, 1] = 1.0
    mdp = refpg.TabularMDP(P, [[1.0], [0.0]], [1.0, 0.0], 1.0, [False, True])
    ev = refpg.evaluate(mdp, [[1.0], [1.0]])
    # Geometric number of steps with mean 2, reward 1 each.
    np.testing.assert_allclose(ev.J, 2.0, rtol=1e-14)
    np.testing.assert_allclose(ev.horizon, 2.0, rtol=1e-14)


# -- terminal ---------------------------------------------------------------------

def test_terminal_not_absorbing():
    P, r, rho = good()
    with raises(errors.TerminalStateError, "P[1, 1, 1] is 0.0 but state 1 is terminal; expected 1"):
        refpg.TabularMDP(P, np.zeros((2, 2)), rho, 0.9, [False, True])


def test_terminal_with_reward():
    P, _, rho = good()
    P[1, 1] = [0.0, 1.0]
    r = np.array([[0.0, 0.0], [0.0, 3.0]])
    with raises(errors.TerminalStateError, "r[1, 1] is 3.0 but state 1 is terminal; expected 0"):
        refpg.TabularMDP(P, r, rho, 0.9, [False, True])


def test_terminal_not_boolean():
    P, r, rho = good()
    with raises(errors.InvalidInputError, "terminal should be a boolean array, actual dtype int64"):
        refpg.TabularMDP(P, r, rho, 0.9, np.array([0, 1]))


# -- policies and theta --------------------------------------------------------------

def test_theta_wrong_shape():
    mdp = refpg.envs.two_state()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    with raises(errors.ShapeError, "theta should have shape (2, 2), actual shape (2, 3)"):
        refpg.policy_gradient(mdp, pol, np.zeros((2, 3)))


def test_theta_nan():
    mdp = refpg.envs.two_state()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta = np.zeros((2, 2))
    theta[1, 0] = np.nan
    with raises(errors.NonFiniteError, "theta[1, 0] is nan"):
        refpg.natural_gradient(mdp, pol, theta)


def test_theta_old_wrong_shape_is_named_theta_old():
    mdp = refpg.envs.two_state()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    with raises(errors.ShapeError, "theta_old should have shape (2, 2)"):
        refpg.kl_divergence(mdp, pol, np.zeros((2, 2)), theta_old=np.zeros(4))


def test_log_linear_theta_wrong_shape():
    mdp = refpg.envs.two_state()
    pol = refpg.LogLinear(np.ones((2, 2, 3)))
    with raises(errors.ShapeError, "theta should have shape (3,), actual shape (4,)"):
        refpg.policy_gradient(mdp, pol, np.zeros(4))


def test_fisher_vector_wrong_shape():
    mdp = refpg.envs.two_state()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    with raises(errors.ShapeError, "v should have shape (2, 2)"):
        refpg.fisher_vector_product(mdp, pol, np.zeros((2, 2)), np.zeros(4))


def test_features_nan():
    phi = np.zeros((2, 2, 1))
    phi[0, 1, 0] = np.nan
    with raises(errors.NonFiniteError, "features[0, 1, 0] is nan"):
        refpg.LogLinear(phi)


def test_policy_of_the_wrong_size():
    mdp = refpg.envs.two_state()
    with raises(errors.InvalidInputError, "policy has (n_states, n_actions) = (3, 2) but mdp has (2, 2)"):
        refpg.policy_gradient(mdp, refpg.TabularSoftmax(3, 2), np.zeros((3, 2)))


def test_policy_not_a_parameterization():
    mdp = refpg.envs.two_state()
    with raises(errors.InvalidInputError, "policy should be a refpg parameterization"):
        refpg.policy_gradient(mdp, "softmax", np.zeros((2, 2)))


def test_mdp_not_an_mdp():
    with raises(errors.InvalidInputError, "mdp should be a refpg.TabularMDP, actual dict"):
        refpg.evaluate({}, np.ones((2, 2)) / 2)


def test_pi_row_not_a_distribution():
    mdp = refpg.envs.two_state()
    with raises(errors.NotADistributionError, "pi[1, :] sums to 0.9"):
        refpg.evaluate(mdp, [[0.5, 0.5], [0.4, 0.5]])


def test_pi_negative():
    mdp = refpg.envs.two_state()
    with raises(errors.NegativeEntryError, "pi[0, 0] is -0.5"):
        refpg.evaluate(mdp, [[-0.5, 1.5], [0.5, 0.5]])


def test_evaluation_of_another_policy_is_refused():
    mdp = refpg.envs.two_state()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    ev = refpg.evaluate(mdp, pol.probs(np.zeros((2, 2))))
    with raises(errors.EvaluationMismatchError, "evaluation was computed for another policy"):
        refpg.policy_gradient(mdp, pol, np.ones((2, 2)) * [[1.0, 0.0]], evaluation=ev)


def test_kl_reduction_unknown():
    mdp = refpg.envs.two_state()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    with raises(errors.InvalidInputError, "reduction should be one of ('mean', 'max', 'none'), actual 'sum'"):
        refpg.kl_divergence(mdp, pol, np.zeros((2, 2)), theta_old=np.zeros((2, 2)), reduction="sum")


def test_an_array_where_a_choice_belongs_is_a_clear_error_not_an_ambiguous_truth_value():
    # `value in choices` compares an array elementwise and raises NumPy's
    # "truth value of an array is ambiguous"; every choice goes through check_choice.
    from refpg.algorithms import run
    from refpg.conformance import check_gae
    from refpg.returns import gae

    mdp = refpg.envs.two_state()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    with raises(errors.InvalidInputError, "reduction should be one of ('mean', 'max', 'none'), actual array("):
        refpg.kl_divergence(mdp, pol, np.zeros((2, 2)), theta_old=np.zeros((2, 2)), reduction=np.array(["mean", "max"]))
    with raises(errors.InvalidInputError, "convention should be one of"):
        check_gae(gae, convention=np.array(["sb3", "refpg"]))
    with raises(errors.InvalidInputError, "algorithm should be one of"):
        run(np.array(["npg", "trpo"]), mdp, pol, np.zeros((2, 2)), n_iters=1)


def test_dense_fisher_too_large():
    mdp = refpg.envs.garnet(2600, 8, 2, seed=0, sparse=True)
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    with raises(errors.ProblemTooLargeError, "policy has 20800 parameters"):
        refpg.fisher_matrix(mdp, pol, np.zeros(pol.theta_shape))


@pytest.mark.parametrize("n_states, n_actions, too_large", [(10_000, 2, False), (6_667, 3, True)])
def test_dense_fisher_limit_is_20000_parameters_inclusive(n_states, n_actions, too_large):
    # The size check comes first, so a wrong mdp shows whether 20000 and 20001 parameters pass it
    # without building a 20000 x 20000 matrix.
    pol = refpg.TabularSoftmax(n_states, n_actions)
    assert pol.n_params == refpg.fisher.DENSE_FISHER_MAX_PARAMS + too_large == 20_000 + too_large
    expected = errors.ProblemTooLargeError if too_large else errors.InvalidInputError
    with pytest.raises(expected) as info:
        refpg.fisher_matrix("not an mdp", pol, np.zeros(pol.theta_shape))
    assert type(info.value) is expected


# -- environment builders -------------------------------------------------------------

def test_bandit_without_arms():
    with raises(errors.InvalidInputError, "rewards should hold at least one arm"):
        refpg.envs.bandit([])


def test_garnet_branching_too_large():
    with raises(errors.InvalidInputError, "branching should be <= n_states = 3, actual 4"):
        refpg.envs.garnet(3, 2, 4, seed=0)


def test_gridworld_single_cell():
    with raises(errors.InvalidInputError, "gridworld needs at least 2 cells"):
        refpg.envs.gridworld(1, 1)


def test_chain_slip_outside_unit_interval():
    with raises(errors.InvalidInputError, "slip should be <= 1.0, actual 1.5"):
        refpg.envs.chain(4, slip=1.5)


def test_errors_are_value_errors():
    assert issubclass(errors.InvalidInputError, ValueError)
    assert issubclass(errors.ConformanceError, AssertionError)


@pytest.mark.parametrize("build", ["high_signal", "episodic_garnet"])
@pytest.mark.parametrize("p_end", [0.0, 1.5, float("nan")])
def test_episodic_builders_reject_a_bad_exit_probability(build, p_end):
    with pytest.raises(errors.InvalidInputError, match="p_end"):
        getattr(refpg.envs, build)(p_end=p_end)


@pytest.mark.parametrize("build", ["high_signal", "episodic_garnet"])
def test_episodic_builders_terminate_under_every_policy(build):
    mdp = getattr(refpg.envs, build)()
    assert mdp.terminal[-1] and mdp.is_proper()


# -- found by the second review of the exact core --------------------------------

def test_gamma_one_improper_through_an_unreachable_trap():
    # State 2 is never reached from rho, but V must be finite there too: an
    # endless self-loop with reward 1 has no value at gamma = 1.
    P = np.zeros((3, 2, 3))
    P[0, :, 1] = P[1, :, 1] = P[2, :, 2] = 1.0
    r = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    with raises(errors.ImproperMDPError, "from state 2 (unreachable from rho, but V must be finite there too)"):
        refpg.TabularMDP(P, r, [1.0, 0.0, 0.0], 1.0, [False, True, False])


def test_rho_on_a_terminal_state_names_the_state():
    P = np.zeros((2, 2, 2))
    P[:, :, 1] = 1.0
    with raises(errors.TerminalStateError, "rho[1] is 0.5 but state 1 is terminal; expected 0"):
        refpg.TabularMDP(P, [[1.0, 0.0], [0.0, 0.0]], [0.5, 0.5], 0.9, [False, True])


def test_values_that_overflow_float64_are_an_error_not_inf_or_nan():
    P = np.zeros((2, 2, 2))
    P[:, :, 0] = 1.0
    mdp = refpg.TabularMDP(P, np.full((2, 2), 1.7e308), [1.0, 0.0], 0.9)
    with np.errstate(over="ignore", invalid="ignore"), \
            pytest.raises(errors.NonFiniteError, match=r"V\[0\] is (inf|nan): the exact values overflow float64"):
        refpg.evaluate(mdp, np.full((2, 2), 0.5))


def test_logits_that_overflow_are_an_error_not_nan():
    pol = refpg.LogLinear(np.full((2, 2, 1), 1e200))
    with np.errstate(over="ignore", invalid="ignore"), \
            raises(errors.NonFiniteError, "logits[0, 0] is inf for a finite theta"):
        pol.probs(np.array([1e200]))


@pytest.mark.parametrize("theta, exc, msg", [
    (np.zeros(3), errors.ShapeError, "theta should have shape (2, 2), actual shape (3,)"),
    (np.full((2, 2), np.nan), errors.NonFiniteError, "theta[0, 0] is nan"),
])
def test_policy_probs_validate_theta(theta, exc, msg):
    with raises(exc, msg):
        refpg.TabularSoftmax(2, 2).probs(theta)


@pytest.mark.parametrize("args, msg", [
    ((-1.0, 0.9), "max_abs_advantage should be >= 0.0, actual -1.0"),
    ((float("nan"), 0.9), "max_abs_advantage should be a finite real number, actual nan"),
    ((1.0, 2.0), "gamma should be in [0, 1], actual 2.0"),
    ((1.0, -0.5), "gamma should be in [0, 1], actual -0.5"),
])
def test_trpo_constant_arguments(args, msg):
    with raises(errors.InvalidInputError, msg):
        refpg.trpo_constant(*args)


@pytest.mark.parametrize("rcond, msg", [
    (float("nan"), "rcond should be a finite real number, actual nan"),
    (2.0, "rcond should be <= 1.0, actual 2.0"),
    (-1.0, "rcond should be >= 0.0, actual -1.0"),
])
def test_natural_gradient_rcond(rcond, msg):
    mdp = refpg.envs.two_state()
    pol = refpg.LogLinear(np.ones((2, 2, 1)))
    with raises(errors.InvalidInputError, msg):
        refpg.natural_gradient(mdp, pol, np.zeros(1), rcond=rcond)


def test_optimal_policy_max_iter():
    with raises(errors.InvalidInputError, "max_iter should be >= 1, actual 0"):
        refpg.optimal_policy(refpg.envs.two_state(), max_iter=0)


def test_run_names_an_unknown_option_and_the_close_one():
    from refpg.algorithms import run

    mdp = refpg.envs.two_state()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    with raises(errors.InvalidInputError, "'max_kll' is not an option of 'trpo'; did you mean 'max_kl'?"):
        run("trpo", mdp, pol, np.zeros((2, 2)), n_iters=1, max_kll=0.1)
    with raises(errors.InvalidInputError, "'npg' needs the option(s) eta"):
        run("npg", mdp, pol, np.zeros((2, 2)), n_iters=1)


def test_a_misspelt_choice_gets_the_closest_valid_one():
    from refpg.algorithms import run

    mdp = refpg.envs.bandit([1.0, 0.0])
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    with pytest.raises(errors.InvalidInputError, match=r"algorithm should be one of .*, actual 'npgg'; did you mean 'npg'\?$"):
        run("npgg", mdp, pol, np.zeros(pol.theta_shape), n_iters=1, eta=1.0)
    with pytest.raises(errors.InvalidInputError, match=r"actual 'zzz'$"):  # nothing close: no guess
        run("zzz", mdp, pol, np.zeros(pol.theta_shape), n_iters=1, eta=1.0)
