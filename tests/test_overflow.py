"""Overflow of one entry at a time: the NonFiniteError names that entry, not the first one.

tests/test_errors.py overflows every entry at once, where naming entry 0 is
right by accident. Here a single V[s], Q[s, a] or logits[s, a] overflows
while the others stay finite (issue #14).
"""

import re

import numpy as np
import pytest
import scipy.sparse as sp

import refpg
from refpg import errors

BIG = 1.7e308  # within float64 (max ~1.798e308); gamma * V on top of it is not


def raises(exc, msg):
    return pytest.raises(exc, match=re.escape(msg))


def single_overflowing_value(s_big):
    """Three absorbing states; only `s_big` earns BIG per step, so only V[s_big] = BIG / (1 - gamma) overflows."""
    P = np.zeros((3, 2, 3))
    for s in range(3):
        P[s, :, s] = 1.0
    r = np.zeros((3, 2))
    r[s_big] = BIG
    rho = np.zeros(3)
    rho[(s_big + 1) % 3] = 1.0
    return refpg.TabularMDP(P, r, rho, 0.9)


@pytest.mark.parametrize("s_big", [0, 1, 2])
def test_a_single_overflowing_state_value_is_named(s_big):
    # The LU back-substitution used to spread the overflow as NaN (0 * inf) over
    # the states solved after it, and the error named V[0] for s_big = 1 or 2.
    mdp = single_overflowing_value(s_big)
    with np.errstate(over="ignore", invalid="ignore"), \
            raises(errors.NonFiniteError, f"V[{s_big}] is inf: the exact values overflow float64"):
        refpg.evaluate(mdp, np.full((3, 2), 0.5))


def test_a_single_overflowing_state_value_is_named_with_terminal_states_and_sparse_P():
    mdp = single_overflowing_value(1)
    P = np.array(mdp.P)
    P[2] = 0.0
    P[2, :, 2] = 1.0
    r = np.array(mdp.r)
    sparse = refpg.TabularMDP(sp.csr_matrix(P.reshape(6, 3)), r, [1.0, 0.0, 0.0], 0.9, [False, False, True])
    with np.errstate(over="ignore", invalid="ignore"), \
            raises(errors.NonFiniteError, "V[1] is inf: the exact values overflow float64"):
        refpg.evaluate(sparse, np.full((3, 2), 0.5))


def finite_values_one_overflowing_action_value():
    """V stays finite everywhere while Q[0, 0] alone overflows.

    State 0: action 0 earns +BIG and moves to state 1 (V = 1e308); action 1
    earns -BIG and moves to state 2 (V = 0). Under the uniform policy
    r_pi(0) = 0 and V(0) = 0.9 * 0.5 * 1e308, finite, but
    Q[0, 0] = BIG + 0.9 * 1e308 overflows and Q[0, 1] = -BIG does not.
    """
    P = np.zeros((3, 2, 3))
    P[0, 0, 1] = P[0, 1, 2] = 1.0
    P[1, :, 1] = P[2, :, 2] = 1.0
    r = np.array([[BIG, -BIG], [1e307, 1e307], [0.0, 0.0]])
    return refpg.TabularMDP(P, r, [1.0, 0.0, 0.0], 0.9)


def test_finite_values_with_one_overflowing_action_value_name_that_action_value():
    mdp = finite_values_one_overflowing_action_value()
    pi = np.full((3, 2), 0.5)
    # V is checked first, so naming Q says that V was finite.
    with np.errstate(over="ignore", invalid="ignore"), \
            raises(errors.NonFiniteError, "Q[0, 0] is inf: the exact values overflow float64"):
        refpg.evaluate(mdp, pi)


def test_an_overflowing_action_value_is_refused_by_the_gradient_too():
    mdp = finite_values_one_overflowing_action_value()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    with np.errstate(over="ignore", invalid="ignore"), \
            raises(errors.NonFiniteError, "Q[0, 0] is inf"):
        refpg.policy_gradient(mdp, pol, np.zeros((3, 2)))


@pytest.mark.parametrize("s, a", [(0, 1), (1, 0), (2, 1)])
def test_a_single_overflowing_logit_of_a_log_linear_policy_is_named(s, a):
    mdp = refpg.envs.garnet(3, 2, 2, gamma=0.9, seed=0)
    phi = np.ones((3, 2, 1))
    phi[s, a, 0] = 1e200
    pol = refpg.LogLinear(phi)
    theta = np.array([1e200])
    msg = f"logits[{s}, {a}] is inf for a finite theta"
    with np.errstate(over="ignore", invalid="ignore"):
        with raises(errors.NonFiniteError, msg):
            pol.probs(theta)
        with raises(errors.NonFiniteError, msg):
            refpg.policy_gradient(mdp, pol, theta)
        with raises(errors.NonFiniteError, msg):
            refpg.kl_divergence(mdp, pol, theta, theta_old=np.zeros(1))
        with raises(errors.NonFiniteError, msg):
            refpg.surrogate(mdp, pol, theta, theta_old=np.zeros(1))


def test_a_single_logit_overflowing_to_minus_inf_is_named():
    phi = np.ones((3, 2, 1))
    phi[2, 0, 0] = -1e200
    with np.errstate(over="ignore", invalid="ignore"), \
            raises(errors.NonFiniteError, "logits[2, 0] is -inf for a finite theta"):
        refpg.LogLinear(phi).probs(np.array([1e200]))
