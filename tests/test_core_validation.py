"""Validation of the exact core that mutation testing found unreached (issue #14).

Each test asserts the exception class and the argument and entry its message
names, so deleting the check, or naming the wrong entry, fails it. Also: the
TRPO bound term by term, `Evaluation`'s immutability, and numerical details
(terminal-state occupancy, `rcond`, zeros in pi_old).
"""

import dataclasses
import math
import re
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import refpg
from refpg import errors


def raises(exc, msg):
    return pytest.raises(exc, match=re.escape(msg))


def two_state():
    mdp = refpg.envs.two_state()
    return mdp, refpg.TabularSoftmax.for_mdp(mdp), np.zeros((2, 2))


THETA_1 = np.array([[1.0, 0.0], [0.0, 0.5]])


# -- a non-MDP reaches check_mdp in prepare --------------------------------------

@pytest.mark.parametrize("call", [
    lambda pol, th: refpg.objective({}, pol, th),
    lambda pol, th: refpg.policy_gradient({}, pol, th),
    lambda pol, th: refpg.fisher_matrix({}, pol, th),
    lambda pol, th: refpg.fisher_vector_product({}, pol, th, th),
    lambda pol, th: refpg.natural_gradient({}, pol, th),
    lambda pol, th: refpg.surrogate({}, pol, th, theta_old=th),
    lambda pol, th: refpg.surrogate_gradient({}, pol, th, theta_old=th),
    lambda pol, th: refpg.trpo_bound({}, pol, th, theta_old=th),
    lambda pol, th: refpg.kl_divergence({}, pol, th, theta_old=th),
    lambda pol, th: refpg.kl_gradient({}, pol, th, theta_old=th),
    lambda pol, th: refpg.performance_difference({}, pi_new=np.full((2, 2), 0.5), pi_old=np.full((2, 2), 0.5)),
], ids=["objective", "policy_gradient", "fisher_matrix", "fisher_vector_product", "natural_gradient",
        "surrogate", "surrogate_gradient", "trpo_bound", "kl_divergence", "kl_gradient",
        "performance_difference"])
def test_a_non_mdp_is_a_refpg_error_not_an_attribute_error(call):
    _, pol, theta = two_state()
    with raises(errors.InvalidInputError, "mdp should be a refpg.TabularMDP, actual dict"):
        call(pol, theta)


# -- an Evaluation of another MDP or another policy ------------------------------

def other_two_state(**change):
    mdp = refpg.envs.two_state()
    args = dict(P=mdp.P, r=mdp.r, rho=mdp.rho, gamma=mdp.gamma)
    args.update(change)
    return refpg.TabularMDP(args["P"], args["r"], args["rho"], args["gamma"])


def test_an_evaluation_of_an_mdp_with_other_rewards_names_the_reward_entry():
    mdp, pol, theta = two_state()
    r = np.array(mdp.r)
    r[1, 0] += 0.5
    ev = refpg.evaluate(other_two_state(r=r), pol.probs(theta))
    assert mdp.r[1, 0] == 2.0
    msg = "evaluation was computed on a different mdp: evaluation.mdp.r[1, 0] is 2.5 but mdp.r[1, 0] is 2.0"
    with raises(errors.EvaluationMismatchError, msg):
        refpg.policy_gradient(mdp, pol, theta, evaluation=ev)


def test_an_evaluation_of_an_mdp_with_another_gamma_names_gamma():
    mdp, pol, theta = two_state()
    ev = refpg.evaluate(other_two_state(gamma=0.5), pol.probs(theta))
    with raises(errors.EvaluationMismatchError,
                f"evaluation_old was computed on a different mdp: evaluation_old.mdp.gamma is 0.5 "
                f"but mdp.gamma is {mdp.gamma!r}"):
        refpg.surrogate(mdp, pol, theta, theta_old=theta, evaluation_old=ev)


def test_an_evaluation_of_an_mdp_with_other_transitions_names_the_transition_entry():
    mdp, pol, theta = two_state()
    P = np.array(mdp.P)
    s, a = 1, 1
    P[s, a] = P[s, a, ::-1]
    s2 = int(np.flatnonzero(P[s, a] != mdp.P[s, a])[0])
    ev = refpg.evaluate(other_two_state(P=P), pol.probs(theta))
    with raises(errors.EvaluationMismatchError,
                f"evaluation_old.mdp.P[1, 1, {s2}] is {float(P[s, a, s2])!r} "
                f"but mdp.P[1, 1, {s2}] is {float(mdp.P[s, a, s2])!r}"):
        refpg.kl_divergence(mdp, pol, theta, theta_old=theta, evaluation_old=ev)


def test_an_evaluation_of_an_mdp_of_another_size_names_the_sizes():
    mdp, pol, theta = two_state()
    ev = refpg.evaluate(refpg.envs.bandit([1.0, 0.0]), [[0.5, 0.5]])
    with raises(errors.EvaluationMismatchError,
                "evaluation_old was computed on a different mdp: evaluation_old.mdp has (n_states, n_actions) = (1, 2) "
                "but mdp has (2, 2)"):
        refpg.trpo_bound(mdp, pol, theta, theta_old=theta, evaluation_old=ev)


def test_an_evaluation_of_a_sparse_mdp_with_other_transitions_names_the_transition_entry():
    mdp = refpg.envs.garnet(4, 2, 2, gamma=0.9, seed=0, sparse=True)
    rows = mdp.P.toarray()
    rows[5] = rows[5][::-1]  # P[2, 1, :] reversed
    s2 = int(np.flatnonzero(rows[5] != mdp.P.toarray()[5])[0])
    other = refpg.TabularMDP(sp.csr_matrix(rows), mdp.r, mdp.rho, mdp.gamma)
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    ev = refpg.evaluate(other, pol.probs(np.zeros((4, 2))))
    with raises(errors.EvaluationMismatchError,
                f"evaluation.mdp.P[2, 1, {s2}] is {float(rows[5, s2])!r} "
                f"but mdp.P[2, 1, {s2}] is {float(mdp.P.toarray()[5, s2])!r}"):
        refpg.policy_gradient(mdp, pol, np.zeros((4, 2)), evaluation=ev)


def test_an_evaluation_of_the_same_mdp_stored_densely_names_the_storage():
    sparse = refpg.envs.garnet(4, 2, 2, gamma=0.9, seed=0, sparse=True)
    dense = refpg.TabularMDP(sparse.dense_P(), sparse.r, sparse.rho, sparse.gamma)
    pol = refpg.TabularSoftmax.for_mdp(sparse)
    ev = refpg.evaluate(dense, pol.probs(np.zeros((4, 2))))
    with raises(errors.EvaluationMismatchError,
                "evaluation.mdp stores P dense but mdp stores it sparse"):
        refpg.policy_gradient(sparse, pol, np.zeros((4, 2)), evaluation=ev)


@pytest.mark.parametrize("field, msg", [
    ("rho", "evaluation.mdp.rho[0] is 0.5 but mdp.rho[0] is 1.0"),
    ("terminal", "evaluation.mdp.terminal[2] is True but mdp.terminal[2] is False"),
])
def test_an_evaluation_of_an_mdp_with_another_rho_or_terminal_set_names_the_entry(field, msg):
    P = np.zeros((3, 2, 3))
    P[0, :, 1] = P[1, :, 2] = P[2, :, 2] = 1.0
    r = [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    mdp = refpg.TabularMDP(P, r, [1.0, 0.0, 0.0], 0.9)
    other = (refpg.TabularMDP(P, r, [0.5, 0.5, 0.0], 0.9) if field == "rho"
             else refpg.TabularMDP(P, r, [1.0, 0.0, 0.0], 0.9, [False, False, True]))
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    ev = refpg.evaluate(other, pol.probs(np.zeros((3, 2))))
    with raises(errors.EvaluationMismatchError, msg):
        refpg.fisher_matrix(mdp, pol, np.zeros((3, 2)), evaluation=ev)


def test_an_evaluation_of_an_equal_copy_of_the_mdp_is_accepted_and_gives_the_same_numbers():
    mdp, pol, theta = two_state()
    ev = refpg.evaluate(other_two_state(), pol.probs(THETA_1))
    np.testing.assert_array_equal(refpg.policy_gradient(mdp, pol, THETA_1, evaluation=ev),
                                  refpg.policy_gradient(mdp, pol, THETA_1))
    sparse = refpg.envs.garnet(4, 2, 2, gamma=0.9, seed=0, sparse=True)
    copy = refpg.TabularMDP(sp.csr_matrix(sparse.P), sparse.r, sparse.rho, sparse.gamma)
    pol = refpg.TabularSoftmax.for_mdp(sparse)
    ev = refpg.evaluate(copy, pol.probs(np.zeros((4, 2))))
    np.testing.assert_array_equal(refpg.natural_gradient(sparse, pol, np.zeros((4, 2)), evaluation=ev),
                                  refpg.natural_gradient(sparse, pol, np.zeros((4, 2))))


@pytest.mark.parametrize("call, ev_name, theta_name", [
    (lambda m, p, th, ev: refpg.policy_gradient(m, p, th, evaluation=ev), "evaluation", "theta"),
    (lambda m, p, th, ev: refpg.fisher_matrix(m, p, th, evaluation=ev), "evaluation", "theta"),
    (lambda m, p, th, ev: refpg.natural_gradient(m, p, th, evaluation=ev), "evaluation", "theta"),
    (lambda m, p, th, ev: refpg.surrogate(m, p, th + 1, theta_old=th, evaluation_old=ev),
     "evaluation_old", "theta_old"),
    (lambda m, p, th, ev: refpg.kl_gradient(m, p, th + 1, theta_old=th, evaluation_old=ev),
     "evaluation_old", "theta_old"),
    (lambda m, p, th, ev: refpg.trpo_bound(m, p, th + 1, theta_old=th, evaluation_old=ev),
     "evaluation_old", "theta_old"),
], ids=["policy_gradient", "fisher_matrix", "natural_gradient", "surrogate", "kl_gradient", "trpo_bound"])
@pytest.mark.parametrize("logit, a, want", [
    (2.0, 1, np.exp(2.0) / (np.exp(2.0) + 2.0)),  # pi[1, 1] moves most, +0.45 (the others -0.23)
    (-2.0, 0, np.exp(-2.0) / (np.exp(-2.0) + 2.0)),  # pi[1, 0] moves most, -0.27, though pi[1, 1] is larger
], ids=["up", "down"])
def test_an_evaluation_of_another_theta_names_the_probability_that_differs_most(call, ev_name, theta_name,
                                                                               logit, a, want):
    mdp = refpg.envs.garnet(2, 3, 2, gamma=0.9, seed=0)
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta = np.zeros((2, 3))  # row 0 agrees with the evaluation's
    theta[1, a] = logit
    ev = refpg.evaluate(mdp, pol.probs(np.zeros((2, 3))))
    msg = (f"{ev_name} was computed for another policy: {ev_name}.pi[1, {a}] is {1 / 3!r} but the policy of "
           f"{theta_name} gives ")
    with raises(errors.EvaluationMismatchError, msg) as info:
        call(mdp, pol, theta, ev)
    np.testing.assert_allclose(float(str(info.value).rsplit(" ", 1)[1]), want, rtol=1e-15)


def test_an_evaluation_argument_that_is_not_an_evaluation_is_named():
    mdp, pol, theta = two_state()
    with raises(errors.InvalidInputError, "evaluation_old should be a refpg.Evaluation, actual dict"):
        refpg.kl_divergence(mdp, pol, theta, theta_old=theta, evaluation_old={})


# -- the new theta of the surrogate, the KL and the TRPO bound -------------------

BAD_THETAS = [
    (np.zeros((2, 2), dtype=bool), errors.InvalidInputError, "theta should be a real numeric array, actual dtype bool"),
    (np.zeros((2, 2), dtype=complex), errors.InvalidInputError,
     "theta should be a real numeric array, actual dtype complex128"),
    (np.array([[0.0, 0.0], [0.0, np.nan]]), errors.NonFiniteError, "theta[1, 1] is nan"),
    (np.zeros((2, 3)), errors.ShapeError, "theta should have shape (2, 2), actual shape (2, 3)"),
]
NEW_THETA_CALLS = {
    "surrogate": lambda m, p, th, old: refpg.surrogate(m, p, th, theta_old=old),
    "surrogate_gradient": lambda m, p, th, old: refpg.surrogate_gradient(m, p, th, theta_old=old),
    "kl_divergence": lambda m, p, th, old: refpg.kl_divergence(m, p, th, theta_old=old),
    "kl_divergence_max": lambda m, p, th, old: refpg.kl_divergence(m, p, th, theta_old=old, reduction="max"),
    "kl_gradient": lambda m, p, th, old: refpg.kl_gradient(m, p, th, theta_old=old),
    "trpo_bound": lambda m, p, th, old: refpg.trpo_bound(m, p, th, theta_old=old),
}


@pytest.mark.parametrize("name", list(NEW_THETA_CALLS))
@pytest.mark.parametrize("theta, exc, msg", BAD_THETAS, ids=["bool", "complex", "nan", "shape"])
def test_a_bad_new_theta_is_refused_and_named_theta(name, theta, exc, msg):
    # Refused before any use: no ComplexWarning from casting it on the way.
    mdp, pol, theta_old = two_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with raises(exc, msg):
            NEW_THETA_CALLS[name](mdp, pol, theta, theta_old)


@pytest.mark.parametrize("name", list(NEW_THETA_CALLS))
@pytest.mark.filterwarnings("error")
def test_a_bad_new_theta_of_a_log_linear_policy_is_refused(name):
    # A log-linear policy computes features @ theta, which a bool theta would survive.
    mdp = refpg.envs.two_state()
    pol = refpg.LogLinear(np.arange(8.0).reshape(2, 2, 2) / 8)
    with raises(errors.InvalidInputError, "theta should be a real numeric array, actual dtype bool"):
        NEW_THETA_CALLS[name](mdp, pol, np.array([True, False]), np.zeros(2))
    with raises(errors.InvalidInputError, "theta should be a real numeric array, actual dtype complex128"):
        NEW_THETA_CALLS[name](mdp, pol, np.array([1j, 0.0]), np.zeros(2))


# -- reduction --------------------------------------------------------------------

def test_kl_gradient_refuses_reduction_none_rather_than_taking_the_max():
    mdp, pol, theta = two_state()
    with raises(errors.InvalidInputError, "reduction should be one of ('mean', 'max'), actual 'none'"):
        refpg.kl_gradient(mdp, pol, THETA_1, theta_old=theta, reduction="none")


def test_kl_gradient_max_and_mean_differ_and_max_is_the_gradient_of_the_worst_state():
    mdp, pol, theta = two_state()
    per_state = refpg.kl_divergence(mdp, pol, THETA_1, theta_old=theta, reduction="none")
    worst = int(np.argmax(per_state))
    g_max = refpg.kl_gradient(mdp, pol, THETA_1, theta_old=theta, reduction="max")
    # Tabular softmax: d KL(s) / d theta[s] = pi_new(s) - pi_old(s) on the worst row only.
    expected = np.zeros((2, 2))
    expected[worst] = pol.probs(THETA_1)[worst] - pol.probs(theta)[worst]
    np.testing.assert_allclose(g_max, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("kl", [refpg.kl_divergence, refpg.kl_gradient], ids=["kl_divergence", "kl_gradient"])
def test_kl_names_a_bad_policy_before_a_bad_reduction(kl):
    # Cheap arguments are checked in argument order, before theta_old is evaluated.
    mdp, _, theta = two_state()
    with raises(errors.InvalidInputError, "policy should be a refpg parameterization"):
        kl(mdp, "softmax", theta, theta_old=theta, reduction="sum")
    with raises(errors.InvalidInputError, "policy has (n_states, n_actions) = (3, 2) but mdp has (2, 2)"):
        kl(mdp, refpg.TabularSoftmax(3, 2), np.zeros((3, 2)), theta_old=np.zeros((3, 2)), reduction="sum")


# -- policy_kl ----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(pi_old=[[0.5, 0.5], [0.5, 0.4]], pi_new=[[0.5, 0.5], [0.5, 0.5]]),
     errors.NotADistributionError, "pi_old[1, :] sums to 0.9"),
    (dict(pi_old=[[0.5, 0.5], [0.5, 0.5]], pi_new=[[0.5, 0.5], [1.1, -0.1]]),
     errors.NegativeEntryError, "pi_new[1, 1] is -0.1"),
    (dict(pi_old=[[-0.5, 1.5]], pi_new=[[0.5, 0.5]]), errors.NegativeEntryError, "pi_old[0, 0] is -0.5"),
    (dict(pi_old=[[0.5, 0.5]], pi_new=[[0.5, 0.6]]), errors.NotADistributionError, "pi_new[0, :] sums to 1.1"),
    (dict(pi_old=[[0.5, np.nan]], pi_new=[[0.5, 0.5]]), errors.NonFiniteError, "pi_old[0, 1] is nan"),
    (dict(pi_old=[[0.5, 0.5]], pi_new=[[0.5, 0.5], [0.5, 0.5]]), errors.ShapeError,
     "pi_new should have shape (1, 2), actual shape (2, 2)"),
    (dict(pi_old=[0.5, 0.5], pi_new=[0.5, 0.5]), errors.ShapeError,
     "pi_old should have shape (*, *), actual shape (2,)"),
    (dict(pi_old=np.full((1, 2, 2), 0.5), pi_new=np.full((1, 2, 2), 0.5)), errors.ShapeError,
     "pi_old should have shape (*, *), actual shape (1, 2, 2)"),
    (dict(pi_old=np.full((2, 2), 0.5), pi_new=np.full((1, 2, 2), 0.5)), errors.ShapeError,
     "pi_new should have shape (2, 2), actual shape (1, 2, 2)"),
], ids=["old-sum", "new-negative", "old-negative", "new-sum", "old-nan", "new-shape", "1-D", "3-D", "new-3-D"])
def test_policy_kl_refuses_a_table_that_is_not_an_S_by_A_policy(kwargs, exc, msg):
    with raises(exc, msg):
        refpg.policy_kl(**kwargs)


def test_policy_kl_with_zeros_in_pi_old_counts_those_actions_as_zero():
    pi_old = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.25, 0.75]])
    pi_new = np.array([[0.5, 0.5], [0.25, 0.75], [0.0, 1.0], [0.0, 1.0]])
    expected = [math.log(2.0), 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75), 0.0, math.inf]
    np.testing.assert_allclose(refpg.policy_kl(pi_old=pi_old, pi_new=pi_new), expected, rtol=1e-15, atol=0)


# -- performance_difference ----------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(pi_new=[[0.5, 0.5], [0.5, 0.4]], pi_old=np.full((2, 2), 0.5)),
     errors.NotADistributionError, "pi_new[1, :] sums to 0.9"),
    (dict(pi_new=np.full((2, 2), 0.5), pi_old=[[0.5, 0.5], [1.5, -0.5]]),
     errors.NegativeEntryError, "pi_old[1, 1] is -0.5"),
    (dict(pi_new=np.full((2, 3), 1 / 3), pi_old=np.full((2, 2), 0.5)),
     errors.ShapeError, "pi_new should have shape (2, 2), actual shape (2, 3)"),
    (dict(pi_new=np.full((2, 2), 0.5), pi_old=np.full(2, 0.5)),
     errors.ShapeError, "pi_old should have shape (2, 2), actual shape (2,)"),
    (dict(pi_new=[[0.5, 0.5], [np.inf, 0.5]], pi_old=np.full((2, 2), 0.5)),
     errors.NonFiniteError, "pi_new[1, 0] is inf"),
    (dict(pi_new=np.full((2, 2), 0.5), pi_old=[[0.5, 0.5], [0.5, 0.6]]),
     errors.NotADistributionError, "pi_old[1, :] sums to 1.1"),
], ids=["new-sum", "old-negative", "new-shape", "old-shape", "new-inf", "old-sum"])
def test_performance_difference_names_the_bad_policy_and_entry(kwargs, exc, msg):
    with raises(exc, msg):
        refpg.performance_difference(refpg.envs.two_state(), **kwargs)


def test_performance_difference_is_antisymmetric_and_equals_the_difference_of_J():
    mdp = refpg.envs.two_state()
    a, b = np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.3, 0.7], [0.6, 0.4]])
    forward = refpg.performance_difference(mdp, pi_new=a, pi_old=b)
    np.testing.assert_allclose(forward, refpg.evaluate(mdp, a).J - refpg.evaluate(mdp, b).J, rtol=1e-12)
    np.testing.assert_allclose(refpg.performance_difference(mdp, pi_new=b, pi_old=a), -forward, rtol=1e-12)
    assert forward != 0.0


# -- Evaluation is frozen ------------------------------------------------------------

@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(refpg.Evaluation)])
def test_evaluation_fields_cannot_be_assigned(field):
    ev = refpg.evaluate(refpg.envs.two_state(), np.full((2, 2), 0.5))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(ev, field, getattr(ev, field))


def test_evaluations_compare_and_hash_by_identity():
    # A generated field-wise __eq__ would raise on the arrays, and a generated __hash__ on their hashing.
    mdp, pi = refpg.envs.two_state(), np.full((2, 2), 0.5)
    ev, again = refpg.evaluate(mdp, pi), refpg.evaluate(mdp, pi)
    assert ev == ev and ev != again
    assert {ev: 1, again: 2}[ev] == 1


# -- TRPO's bound, term by term ------------------------------------------------------

def independent_bound_terms(mdp, pol, theta, theta_old):
    """Every term of Theorem 1 from `evaluate` and `policy_kl` alone, without trpo_bound's code path."""
    pi, pi_old = pol.probs(theta), pol.probs(theta_old)
    ev_old = refpg.evaluate(mdp, pi_old)
    eps = np.abs(ev_old.A).max()
    L = ev_old.J + np.sum(ev_old.d[:, None] * pi * ev_old.A) / (1 - mdp.gamma)
    max_kl = refpg.policy_kl(pi_old=pi_old, pi_new=pi)[ev_old.d > 0].max()
    C = 4 * eps * mdp.gamma / (1 - mdp.gamma) ** 2
    return dict(J=refpg.evaluate(mdp, pi).J, J_old=ev_old.J, surrogate=L, max_kl=max_kl, epsilon=eps, C=C,
                lower_bound=L - C * max_kl)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9])
def test_trpo_bound_terms_equal_their_definitions(gamma):
    mdp = refpg.envs.garnet(5, 3, 2, gamma=gamma, seed=3)
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    rng = np.random.default_rng(0)
    theta_old, theta = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    b = refpg.trpo_bound(mdp, pol, theta, theta_old=theta_old)
    want = independent_bound_terms(mdp, pol, theta, theta_old)
    for name, value in want.items():
        np.testing.assert_allclose(getattr(b, name), value, rtol=1e-12, atol=1e-14, err_msg=name)
    np.testing.assert_allclose(b.slack, want["J"] - want["lower_bound"], rtol=1e-12, atol=1e-14)
    assert b.slack >= 0.0
    assert b.max_kl > 0.0 and (gamma == 0.0 or b.C > 0.0)


def test_trpo_bound_epsilon_is_the_largest_absolute_advantage_even_when_it_is_negative():
    # two_state at a theta where the largest |A| is a negative advantage: max(A) would be wrong.
    mdp, pol, _ = two_state()
    theta_old = np.array([[3.0, 0.0], [0.0, 3.0]])
    A = refpg.evaluate(mdp, pol.probs(theta_old)).A
    assert np.abs(A).max() > A.max()
    b = refpg.trpo_bound(mdp, pol, THETA_1, theta_old=theta_old)
    assert b.epsilon == np.abs(A).max()


def episodic_chain():
    """0 -> 1 (action 0) or stay (action 1), 1 terminal: proper, so gamma = 1 is allowed."""
    P = np.zeros((2, 2, 2))
    P[0, 0, 1] = 1.0
    P[0, 1, 0] = P[0, 1, 1] = 0.5
    P[1, :, 1] = 1.0
    return refpg.TabularMDP(P, [[1.0, 0.0], [0.0, 0.0]], [1.0, 0.0], 1.0, [False, True])


def test_trpo_bound_at_gamma_one_is_the_surrogate_where_the_policies_agree_not_nan():
    mdp = episodic_chain()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta = np.zeros((2, 2))
    b = refpg.trpo_bound(mdp, pol, theta, theta_old=theta)
    assert b.C == math.inf and b.max_kl == 0.0
    assert b.lower_bound == b.surrogate == b.J == b.J_old
    assert b.slack == 0.0


def test_trpo_bound_at_gamma_one_is_minus_inf_where_the_policies_differ():
    mdp = episodic_chain()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    b = refpg.trpo_bound(mdp, pol, np.array([[1.0, 0.0], [0.0, 0.0]]), theta_old=np.zeros((2, 2)))
    assert b.C == math.inf and b.max_kl > 0.0
    assert b.lower_bound == -math.inf and b.slack == math.inf
    assert math.isfinite(b.surrogate) and math.isfinite(b.J)


# -- occupancy of terminal states for gamma < 1 --------------------------------------

def test_terminal_states_keep_the_mass_that_enters_them_for_gamma_below_one():
    # States 0, 1 live; 2, 3 terminal. 0 -> 1; 1 -> 2 w.p. 1/4, -> 3 w.p. 3/4.
    # rho = (1/2, 1/2), gamma = 0.8. Visits mu = rho + gamma * inflow on live states,
    # (rho_t + gamma * inflow) / (1 - gamma) on terminal ones:
    #   mu0 = 0.5, mu1 = 0.5 + 0.8 * 0.5 = 0.9,
    #   mu2 = 0.8 * 0.9 * 0.25 / 0.2 = 0.9, mu3 = 0.8 * 0.9 * 0.75 / 0.2 = 2.7;
    # d = (1 - gamma) mu = (0.1, 0.18, 0.18, 0.54), which sums to 1.
    P = np.zeros((4, 2, 4))
    P[0, :, 1] = 1.0
    P[1, :, 2], P[1, :, 3] = 0.25, 0.75
    P[2, :, 2] = P[3, :, 3] = 1.0
    mdp = refpg.TabularMDP(P, [[1.0, 0.0], [0.0, 2.0], [0, 0], [0, 0]], [0.5, 0.5, 0, 0], 0.8,
                           [False, False, True, True])
    ev = refpg.evaluate(mdp, np.full((4, 2), 0.5))
    np.testing.assert_allclose(ev.d, [0.1, 0.18, 0.18, 0.54], rtol=1e-14, atol=0)
    np.testing.assert_array_equal(ev.support, [True, True, True, True])
    np.testing.assert_allclose(ev.visits, [0.5, 0.9, 0.9, 2.7], rtol=1e-14, atol=0)


# -- rcond ------------------------------------------------------------------------------

def test_a_valid_rcond_that_cuts_a_tiny_singular_value_changes_the_natural_gradient():
    # Two features, the second scaled by 1e-5: F's singular values differ by ~1e-10,
    # so rcond = 1e-6 drops the second direction and the default (eps * n) keeps it.
    mdp = refpg.envs.garnet(3, 2, 2, gamma=0.9, seed=1)
    rng = np.random.default_rng(2)
    phi = rng.normal(size=(3, 2, 2))
    phi[..., 1] *= 1e-5
    pol = refpg.LogLinear(phi)
    theta = np.array([0.3, -0.2])
    F = refpg.fisher_matrix(mdp, pol, theta)
    g = refpg.policy_gradient(mdp, pol, theta)
    s = np.linalg.svd(F, compute_uv=False)
    assert 1e-12 < s[-1] / s[0] < 1e-6  # the case the test is about

    kept = refpg.natural_gradient(mdp, pol, theta)
    cut = refpg.natural_gradient(mdp, pol, theta, rcond=1e-6)
    np.testing.assert_allclose(kept, np.linalg.solve(F, g), rtol=1e-6)
    np.testing.assert_allclose(cut, np.linalg.pinv(F, rcond=1e-6) @ g, rtol=1e-9)
    assert np.linalg.norm(cut - kept) > 1e3 * np.linalg.norm(cut)


def test_the_ill_conditioned_warning_points_at_the_caller_of_evaluate():
    pi = np.full((20, 3), 1 / 3)
    with pytest.warns(errors.RefpgWarning, match="ill-conditioned") as record:
        refpg.evaluate(refpg.envs.garnet(20, 3, 3, seed=0, gamma=1 - 1e-12), pi)
    assert [w.filename for w in record] == [__file__]


# -- probability tolerance and the 1e-10 identities -------------------------------------

def _rows_off_by(excess):
    P = np.array([[[0.5, 0.5], [0.25, 0.75]], [[0.75, 0.25], [0.5, 0.5]]])
    P[0, 0, 0] += excess
    return P


def test_a_transition_row_off_by_5e_10_is_refused_naming_the_row():
    # Accepted at the old atol 1e-9: at gamma = 0.99 it put sum(d) off by ~5e-8, far outside 1e-10.
    with pytest.raises(errors.NotADistributionError, match=r"P\[0, 0, :\] sums to 1.0000000005; expected 1 within "
                                                           r"atol=1e-12"):
        refpg.TabularMDP(_rows_off_by(5e-10), np.zeros((2, 2)), [0.5, 0.5], 0.99)


def test_a_policy_row_off_by_5e_10_is_refused_naming_the_row():
    with pytest.raises(errors.NotADistributionError, match=r"pi\[1, :\] sums to 1.0000000005"):
        refpg.evaluate(refpg.envs.two_state(), [[0.5, 0.5], [0.5, 0.5 + 5e-10]])


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.99])
def test_rows_accepted_at_the_tolerance_keep_d_summing_to_one_within_1e_10_up_to_horizon_100(gamma):
    mdp = refpg.TabularMDP(_rows_off_by(0.99e-12), np.ones((2, 2)), [0.5, 0.5], gamma)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ev = refpg.evaluate(mdp, [[1.0, 0.0], [0.0, 1.0]])
    assert abs(ev.d.sum() - 1) <= 1e-10


def test_a_long_horizon_over_rows_off_by_an_accepted_amount_is_blamed_on_the_rows_not_the_solve():
    # sum(d) - 1 = gamma * sum_s mu(s) delta(s) exactly: 0.999 * mu(0) * 9e-13, with mu(0) = d(0) * 1000.
    mdp = refpg.TabularMDP(_rows_off_by(9e-13), np.ones((2, 2)), [1.0, 0.0], 0.999)
    with pytest.warns(errors.RefpgWarning, match=r"d sums to 1 \+ .* at gamma = 0.999: the rows of P_pi and rho sum "
                                                 r"to 1 within atol but not exactly") as record:
        ev = refpg.evaluate(mdp, [[1.0, 0.0], [1.0, 0.0]])
    message = str(record[0].message)
    assert "ill-conditioned" not in message
    expected = 0.999 * 1000 * ev.d[0] * 9e-13
    assert ev.d.sum() - 1 == pytest.approx(expected, rel=1e-3)
    # The warning's own account of the rows' share is that same figure.
    assert f"turns that into {expected:+.2g} on sum(d)" in message


@pytest.mark.parametrize("ulps, blamed_on_rows", [(64, False), (65, True)])
def test_rows_off_by_up_to_64_ulps_count_as_rounding_and_beyond_as_the_inputs(ulps, blamed_on_rows):
    # A row summing to 1 + ulps * 2**-52 exactly; the horizon 1e5 lifts it above 1e-10 on sum(d).
    P = _rows_off_by(0.0)
    P[0, 0, 0] = 0.5 + ulps * 2.0**-52
    assert P[0, 0].sum() - 1.0 == ulps * 2.0**-52
    mdp = refpg.TabularMDP(P, np.ones((2, 2)), [1.0, 0.0], 1 - 1e-5)
    with pytest.warns(errors.RefpgWarning, match="d sums to 1") as record:
        refpg.evaluate(mdp, [[1.0, 0.0], [1.0, 0.0]])
    message = str(record[0].message)
    assert ("the rows of P_pi and rho sum to 1 within atol but not exactly" in message) is blamed_on_rows, message
    assert ("ill-conditioned" in message) is not blamed_on_rows, message
