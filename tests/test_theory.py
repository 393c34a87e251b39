"""Policy-improvement theory, exactly: the performance-difference lemma and TRPO's Theorem 1."""

import numpy as np
from hypothesis import given, note
from hypothesis import strategies as st

import refpg
from refpg import strategies as rst
from tests.helpers import assert_identity


@given(st.data(), rst.mdps(max_states=6, max_actions=4))
def test_performance_difference_lemma_holds(data, mdp):
    pi_old = data.draw(rst.policies(mdp))
    pi_new = data.draw(rst.policies(mdp))
    lhs = refpg.evaluate(mdp, pi_new).J - refpg.evaluate(mdp, pi_old).J
    rhs = refpg.performance_difference(mdp, pi_new=pi_new, pi_old=pi_old)
    scale = max(1.0, np.abs(refpg.evaluate(mdp, pi_old).Q).max(), np.abs(refpg.evaluate(mdp, pi_new).Q).max())
    assert_identity(rhs, lhs, scale=scale)


@given(st.data(), rst.mdps(min_states=2, max_states=6, max_actions=3, episodic=True,
                           min_gamma=1.0, max_gamma=1.0))
def test_performance_difference_lemma_holds_for_gamma_one(data, mdp):
    pi_old = data.draw(rst.policies(mdp))
    pi_new = data.draw(rst.policies(mdp))
    lhs = refpg.evaluate(mdp, pi_new).J - refpg.evaluate(mdp, pi_old).J
    scale = max(1.0, np.abs(refpg.evaluate(mdp, pi_old).Q).max(), np.abs(refpg.evaluate(mdp, pi_new).Q).max())
    assert_identity(refpg.performance_difference(mdp, pi_new=pi_new, pi_old=pi_old), lhs, scale=scale)


@given(rst.mdp_policy_theta(kinds=("tabular", "log_linear"), max_abs=2.0, max_states=6, max_actions=3),
       st.data())
def test_trpo_theorem_1_lower_bound_holds(case, data):
    mdp, pol, theta_old = case
    theta = data.draw(rst.thetas(pol, max_abs=2.0))
    b = refpg.trpo_bound(mdp, pol, theta, theta_old=theta_old)
    note(repr(b))
    assert_identity(b.J, refpg.objective(mdp, pol, theta))
    assert b.C == 4 * b.epsilon * mdp.gamma / (1 - mdp.gamma) ** 2
    # J >= L - C maxKL, up to round-off in J and L.
    assert b.J >= b.lower_bound - 1e-10 * max(1.0, abs(b.J), abs(b.surrogate))


def test_trpo_bound_is_tight_to_first_order_near_theta_old():
    # Along a small step the slack is O(step^2) (L matches J to first order).
    mdp = refpg.envs.garnet(8, 3, 3, seed=2, gamma=0.9)
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta_old = np.random.default_rng(0).normal(size=pol.theta_shape)
    direction = refpg.policy_gradient(mdp, pol, theta_old)
    gaps = []
    for eps in (1e-2, 1e-3):
        b = refpg.trpo_bound(mdp, pol, theta_old + eps * direction, theta_old=theta_old)
        gaps.append(abs(b.J - b.surrogate))
    assert gaps[1] < gaps[0] / 50  # quadratic: a 10x smaller step gives a ~100x smaller gap
