"""Exact evaluation: Bellman, occupancy flow, J identities, closed forms."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

import refpg
from refpg import strategies as rst
from refpg.envs.classic import two_state_values
from tests.helpers import assert_identity, uniform


def dense_P_pi(mdp, pi):
    return np.einsum("sat,sa->st", mdp.dense_P(), pi)


@given(st.data(), rst.mdps(max_states=6, max_actions=4))
def test_bellman_residual_is_below_1e_10(data, mdp):
    pi = data.draw(rst.policies(mdp))
    ev = refpg.evaluate(mdp, pi)
    r_pi = (pi * mdp.r).sum(1)
    assert_identity(r_pi + mdp.gamma * dense_P_pi(mdp, pi) @ ev.V, ev.V)
    assert_identity(mdp.r + mdp.gamma * mdp.dense_P() @ ev.V, ev.Q)
    assert_identity((pi * ev.A).sum(1), np.zeros(mdp.n_states), scale=max(1, np.abs(ev.Q).max()))


@given(st.data(), rst.mdps(max_states=6, max_actions=4))
def test_occupancy_sums_to_one_and_satisfies_its_flow_equation(data, mdp):
    pi = data.draw(rst.policies(mdp))
    ev = refpg.evaluate(mdp, pi)
    assert_identity(ev.d.sum(), 1.0)
    assert (ev.d >= 0).all()
    # d = (1 - gamma) rho + gamma P_pi^T d
    assert_identity((1 - mdp.gamma) * mdp.rho + mdp.gamma * dense_P_pi(mdp, pi).T @ ev.d, ev.d)


@given(st.data(), rst.mdps(max_states=6, max_actions=4))
def test_J_equals_rho_V_equals_occupancy_weighted_reward(data, mdp):
    pi = data.draw(rst.policies(mdp))
    ev = refpg.evaluate(mdp, pi)
    r_pi = (pi * mdp.r).sum(1)
    assert_identity(ev.J, mdp.rho @ ev.V)
    assert_identity(ev.J, ev.d @ r_pi / (1 - mdp.gamma), scale=max(1, np.abs(ev.V).max()))


@given(st.data(), rst.mdps(max_states=6, max_actions=3))
def test_unreachable_states_have_exactly_zero_occupancy(data, mdp):
    pi = data.draw(rst.policies(mdp))
    ev = refpg.evaluate(mdp, pi)
    # Reachability by matrix powers of the support pattern, independent of refpg's BFS.
    adj = (dense_P_pi(mdp, pi) > 0).astype(int)
    reach = mdp.rho > 0
    if mdp.gamma > 0:
        for _ in range(mdp.n_states):
            reach = reach | (adj.T @ reach > 0)
    np.testing.assert_array_equal(ev.support, reach)
    assert (ev.d[~reach] == 0.0).all()
    # Reachable states have d > 0 in exact arithmetic; a discount like 1e-300
    # can underflow gamma^t Pr(s_t = s) to 0, so strict positivity is only
    # asserted where it cannot underflow.
    assert (ev.d[reach] >= 0).all()
    if mdp.gamma >= 1e-3:
        assert (ev.d[reach] > 0).all()


@given(st.data(), rst.mdps(max_states=6, max_actions=3))
def test_sparse_and_dense_storage_give_the_same_evaluation(data, mdp):
    pi = data.draw(rst.policies(mdp))
    S, A = mdp.n_states, mdp.n_actions
    sparse = refpg.TabularMDP(sp.csr_array(mdp.dense_P().reshape(S * A, S)), mdp.r, mdp.rho,
                              mdp.gamma, mdp.terminal)
    a, b = refpg.evaluate(mdp, pi), refpg.evaluate(sparse, pi)
    for name in ("V", "Q", "A", "d"):
        assert_identity(getattr(b, name), getattr(a, name), err_msg=name)
    assert_identity(b.J, a.J)
    np.testing.assert_array_equal(b.support, a.support)


@given(st.data(), rst.mdps(min_states=2, max_states=6, max_actions=3, episodic=True,
                           min_gamma=1.0, max_gamma=1.0))
def test_gamma_one_uses_expected_visits_and_episode_length(data, mdp):
    pi = data.draw(rst.policies(mdp))
    ev = refpg.evaluate(mdp, pi)
    live = ~mdp.terminal
    P_pi = dense_P_pi(mdp, pi)[np.ix_(live, live)]
    r_pi = (pi * mdp.r).sum(1)
    # Visits mu = rho + P^T mu on live states; H = sum mu; J = sum mu r_pi.
    mu = ev.horizon * ev.d
    assert_identity(mdp.rho[live] + P_pi.T @ mu[live], mu[live])
    assert (ev.d[mdp.terminal] == 0).all() and (ev.V[mdp.terminal] == 0).all()
    # support means d > 0 for gamma = 1 too (terminal states are never visited),
    # so a max KL "over states with d > 0" cannot pick a terminal state.
    np.testing.assert_array_equal(ev.support, ev.d > 0)
    assert_identity(ev.J, mu @ r_pi)
    assert_identity(ev.V[live], r_pi[live] + P_pi @ ev.V[live])


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("q", [0.0, 0.2, 0.9, 1.0])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9, 0.99])
def test_two_state_matches_its_closed_form(p, q, gamma):
    mdp = refpg.envs.two_state(gamma)
    ev = refpg.evaluate(mdp, [[p, 1 - p], [q, 1 - q]])
    V, d = two_state_values(p, q, gamma)
    assert_identity(ev.V, V)
    assert_identity(ev.d, d)
    assert_identity(ev.J, V[0])


@pytest.mark.parametrize("gamma", [0.3, 0.9])
def test_two_state_optimum_matches_its_closed_form(gamma):
    opt = refpg.optimal_policy(refpg.envs.two_state(gamma))
    assert_identity(opt.V, [max(1, 2 * gamma) / (1 - gamma), 2 / (1 - gamma)])


@given(st.lists(st.integers(-100, 100), min_size=1, max_size=6), st.data())
def test_bandit_J_is_pi_dot_r(rewards, data):
    r = np.array(rewards) / 10
    mdp = refpg.envs.bandit(r)
    pi = data.draw(rst.policies(mdp))
    assert_identity(refpg.evaluate(mdp, pi).J, pi[0] @ r)


def test_gridworld_values_match_a_hand_count():
    # 1 x 3 corridor, no slip: the goal is 2 steps right, reward 1 on entering.
    mdp = refpg.envs.gridworld(1, 3, gamma=0.9)
    right = np.zeros((3, 4))
    right[:, 1] = 1.0
    ev = refpg.evaluate(mdp, right)
    assert_identity(ev.V, [0.9, 1.0, 0.0])


def test_frozen_lake_non_slippery_optimum_is_gamma_to_the_path_length():
    mdp = refpg.envs.frozen_lake("4x4", slippery=False, gamma=0.99)
    # Six moves from S to G; the reward arrives on the sixth (discount 0.99^5).
    assert_identity(refpg.optimal_policy(mdp).J, 0.99 ** 5)


def test_sparse_gridworld_equals_dense_gridworld():
    a = refpg.envs.gridworld(5, 6, slip=0.2, sparse=False)
    b = refpg.envs.gridworld(5, 6, slip=0.2, sparse=True)
    pi = uniform(a)
    assert_identity(refpg.evaluate(b, pi).V, refpg.evaluate(a, pi).V)


def test_garnet_is_deterministic_in_its_seed_and_has_b_successors():
    a = refpg.envs.garnet(30, 4, 3, seed=7)
    b = refpg.envs.garnet(30, 4, 3, seed=7)
    np.testing.assert_array_equal(a.P, b.P)
    np.testing.assert_array_equal(a.r, b.r)
    assert ((a.P > 0).sum(axis=2) <= 3).all() and ((a.P > 0).sum(axis=2) >= 1).all()
    assert not np.array_equal(refpg.envs.garnet(30, 4, 3, seed=8).P, a.P)


def test_mdp_is_immutable_and_does_not_alias_input():
    P = np.ones((1, 2, 1))
    r = np.zeros((1, 2))
    mdp = refpg.TabularMDP(P, r, [1.0], 0.5)
    P[0, 0, 0] = 5.0
    assert mdp.P[0, 0, 0] == 1.0
    assert P.flags.writeable
    with pytest.raises(ValueError):
        mdp.P[0, 0, 0] = 2.0
    with pytest.raises(AttributeError):
        mdp.gamma = 0.1


@pytest.mark.parametrize("sparse", [False, True])
def test_gamma_just_below_one_with_terminal_states_is_not_singular(sparse):
    # Regression: pi's terminal row rounds so that P_pi[t, t] = 1 + 2^-52, which
    # made the terminal row of I - gamma P_pi exactly zero (found by Hypothesis).
    P = np.zeros((2, 3, 2))
    P[:, :, 1] = 1
    if sparse:
        P = sp.csr_array(P.reshape(6, 2))
    mdp = refpg.TabularMDP(P, np.zeros((2, 3)), [1.0, 0.0], 1 - 2 ** -53, terminal=[False, True])
    pol = refpg.TabularSoftmax(2, 3)
    theta = np.array([[0, 0, 0], [0, 2.625, -2.8125]])
    ev = refpg.evaluate(mdp, pol.probs(theta))
    assert np.isfinite(ev.V).all() and np.isfinite(ev.d).all()
    assert_identity(ev.d.sum(), 1.0)
    assert np.isfinite(refpg.policy_gradient(mdp, pol, theta)).all()


def test_singular_system_raises_a_refpg_error_not_a_nan():
    # Unreachable through a validated MDP (I - gamma P_pi is nonsingular for
    # gamma < 1 and on the live states of a proper MDP); the guard makes a
    # future validation gap fail loudly instead of returning inf or NaN.
    from refpg.evaluation import solve_pair

    with pytest.raises(refpg.errors.RefpgError, match="singular"):
        solve_pair(np.eye(3), 1.0, np.ones(3), np.ones(3) / 3)


def test_solve_pair_agrees_with_numpy_solves_without_touching_its_input():
    from refpg.evaluation import solve_pair

    rng = np.random.default_rng(0)
    P_pi = rng.dirichlet(np.ones(5), size=5)
    r_pi, rho = rng.normal(size=5), rng.dirichlet(np.ones(5))
    before = P_pi.copy()
    V, mu = solve_pair(P_pi, 0.9, r_pi, rho)
    M = np.eye(5) - 0.9 * before
    assert_identity(V, np.linalg.solve(M, r_pi))
    assert_identity(mu, np.linalg.solve(M.T, rho))
    assert np.array_equal(P_pi, before)


def test_gamma_too_close_to_one_warns_that_accuracy_is_lost():
    # Backward stable, forward inaccurate: kappa(I - gamma P_pi) ~ 1/(1 - gamma).
    pi = np.full((20, 3), 1 / 3)
    with pytest.warns(refpg.errors.RefpgWarning, match=r"d sums to 1 - .* at gamma = 0.999999999999: .*ill-conditioned"):
        refpg.evaluate(refpg.envs.garnet(20, 3, 3, seed=0, gamma=1 - 1e-12), pi)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refpg.evaluate(refpg.envs.garnet(20, 3, 3, seed=0, gamma=0.999), pi)
